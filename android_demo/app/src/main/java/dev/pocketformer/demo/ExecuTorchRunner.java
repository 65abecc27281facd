package dev.pocketformer.demo;

import dev.pocketformer.core.ModelRunner;
import dev.pocketformer.core.Tensor;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.pytorch.executorch.EValue;
import org.pytorch.executorch.Module;

/**
 * .pte through ExecuTorch's Android runtime (org.pytorch:executorch-android, XNNPACK). A multi-length program
 * (`export --seq-lens`) holds a method per length (`seq16`, ...; core's BucketedRunner picks one per request);
 * each is loaded on its first run.
 */
final class ExecuTorchRunner implements ModelRunner {
    private final Module module;
    private final List<String> inputNames;
    private final int threads;
    private final java.util.Set<String> loaded = new java.util.HashSet<>();

    ExecuTorchRunner(String path, int threads, List<String> inputNames) {
        // mmap: the program's weights stay file-backed, as an app would ship a large model
        this.module = Module.load(path, Module.LOAD_MODE_MMAP, Math.max(threads, 0));
        this.module.loadMethod("forward");  // planned memory allocated now, not inside the first timed run
        this.loaded.add("forward");
        this.inputNames = inputNames;
        this.threads = threads;
    }

    private static org.pytorch.executorch.Tensor toEt(Tensor t) {
        if (t.floats != null) return org.pytorch.executorch.Tensor.fromBlob(t.floats, t.shape);
        if (t.longs != null) return org.pytorch.executorch.Tensor.fromBlob(t.longs, t.shape);
        return org.pytorch.executorch.Tensor.fromBlob(t.ints, t.shape);
    }

    @Override
    public List<Tensor> run(Map<String, Tensor> inputs) {
        return run("forward", inputs);
    }

    @Override
    public List<Tensor> run(String method, Map<String, Tensor> inputs) {
        if (method == null) method = "forward";
        if (loaded.add(method)) module.loadMethod(method);
        // the program takes its inputs positionally, in the model's input order (as exported)
        EValue[] args = new EValue[inputNames.size()];
        for (int i = 0; i < args.length; i++) {
            Tensor t = inputs.get(inputNames.get(i));
            if (t == null) throw new IllegalArgumentException("no input named " + inputNames.get(i));
            args[i] = EValue.from(toEt(t));
        }
        List<Tensor> out = new ArrayList<>();
        for (EValue v : module.execute(method, args)) {
            org.pytorch.executorch.Tensor t = v.toTensor();
            out.add(Tensor.ofFloats(t.getDataAsFloatArray(), t.shape()));
        }
        return out;
    }

    @Override
    public String backend() {
        return "executorch-android 1.0.1 (XNNPACK" + (threads > 0 ? ", " + threads + " threads" : "") + ")";
    }

    @Override
    public void close() {
        module.destroy();
    }
}
