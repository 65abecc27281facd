package dev.pocketformer.demo;

import dev.pocketformer.core.ModelRunner;
import dev.pocketformer.core.Tensor;
import java.io.File;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import org.tensorflow.lite.DataType;
import org.tensorflow.lite.Interpreter;

/**
 * .tflite through LiteRT's Interpreter (com.google.ai.edge.litert:litert). Inputs and outputs go by the first
 * signature's names when they are the model's (as device_runtime's tflite backend does), else by position;
 * int64 token ids are narrowed to a model's int32 inputs, as the SDK's adapt_io does. A multi-length file
 * (`export --seq-lens`) has a signature per length (`seq16`, ...); core's BucketedRunner names one per request.
 */
final class LiteRtRunner implements ModelRunner {
    private final Interpreter interpreter;
    private final String signature;
    private final List<String> inputNames, outputNames;
    private final int threads;

    LiteRtRunner(String path, int threads, List<String> inputNames, List<String> outputNames) {
        Interpreter.Options options = new Interpreter.Options();
        if (threads > 0) options.setNumThreads(threads);
        this.interpreter = new Interpreter(new File(path), options);
        String[] keys = interpreter.getSignatureKeys();
        boolean named = keys.length > 0 && Arrays.asList(interpreter.getSignatureInputs(keys[0])).containsAll(inputNames);
        this.signature = named ? keys[0] : null;
        this.inputNames = inputNames;
        this.outputNames = outputNames;
        this.threads = threads;
    }

    private static ByteBuffer buffer(Tensor t, DataType type) {
        int n = t.size();
        int item = type == DataType.INT64 ? 8 : 4;
        ByteBuffer b = ByteBuffer.allocateDirect(n * item).order(ByteOrder.nativeOrder());
        if (type == DataType.FLOAT32) {
            for (float v : t.asFloats()) b.putFloat(v);
        } else if (type == DataType.INT64) {
            for (long v : t.asLongs()) b.putLong(v);
        } else if (type == DataType.INT32) {
            for (long v : t.asLongs()) b.putInt((int) v);
        } else {
            throw new IllegalArgumentException("input type " + type + " is not one the app feeds (float32, int64, int32)");
        }
        b.rewind();
        return b;
    }

    private static Tensor read(ByteBuffer b, org.tensorflow.lite.Tensor info) {
        b.rewind();
        int[] shape = info.shape();
        long[] dims = new long[shape.length];
        int n = 1;
        for (int i = 0; i < shape.length; i++) {
            dims[i] = shape[i];
            n *= shape[i];
        }
        float[] out = new float[n];
        for (int i = 0; i < n; i++) {
            DataType type = info.dataType();
            out[i] = type == DataType.FLOAT32 ? b.getFloat() : type == DataType.INT64 ? b.getLong() : b.getInt();
        }
        return Tensor.ofFloats(out, dims);
    }

    @Override
    public List<Tensor> run(Map<String, Tensor> inputs) {
        return run(null, inputs);
    }

    @Override
    public List<Tensor> run(String entryPoint, Map<String, Tensor> inputs) {
        List<Tensor> result = new ArrayList<>();
        String signature = entryPoint != null ? entryPoint : this.signature;
        if (entryPoint != null && !Arrays.asList(interpreter.getSignatureKeys()).contains(entryPoint)) {
            throw new IllegalArgumentException("the .tflite has no signature " + entryPoint + "; it has " + Arrays.toString(interpreter.getSignatureKeys()));
        }
        if (signature != null) {
            Map<String, Object> in = new HashMap<>();
            for (String name : inputNames) {
                in.put(name, buffer(inputs.get(name), interpreter.getInputTensorFromSignature(name, signature).dataType()));
            }
            String[] outs = interpreter.getSignatureOutputs(signature);
            List<String> order = Arrays.asList(outs).containsAll(outputNames) ? outputNames : Arrays.asList(outs);
            Map<String, Object> out = new HashMap<>();
            for (String name : order) {
                org.tensorflow.lite.Tensor info = interpreter.getOutputTensorFromSignature(name, signature);
                out.put(name, ByteBuffer.allocateDirect(info.numBytes()).order(ByteOrder.nativeOrder()));
            }
            interpreter.runSignature(in, out, signature);
            for (String name : order) result.add(read((ByteBuffer) out.get(name), interpreter.getOutputTensorFromSignature(name, signature)));
            return result;
        }
        Object[] in = new Object[interpreter.getInputTensorCount()];
        for (int i = 0; i < in.length; i++) in[i] = buffer(inputs.get(inputNames.get(i)), interpreter.getInputTensor(i).dataType());
        Map<Integer, Object> out = new HashMap<>();
        for (int i = 0; i < interpreter.getOutputTensorCount(); i++) {
            out.put(i, ByteBuffer.allocateDirect(interpreter.getOutputTensor(i).numBytes()).order(ByteOrder.nativeOrder()));
        }
        interpreter.runForMultipleInputsOutputs(in, out);
        for (int i = 0; i < out.size(); i++) result.add(read((ByteBuffer) out.get(i), interpreter.getOutputTensor(i)));
        return result;
    }

    @Override
    public String backend() {
        return "litert-android 1.4.0 (Interpreter" + (threads > 0 ? ", " + threads + " threads" : "") + ")";
    }

    @Override
    public void close() {
        interpreter.close();
    }
}
