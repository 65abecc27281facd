package dev.pocketformer.core;

import java.util.List;
import java.util.Map;

/**
 * The runtime layer: one loaded artifact that maps named input tensors to its outputs, in the model's output
 * order. The app implements it twice (ExecuTorch's Module for .pte, LiteRT's Interpreter for .tflite); the
 * core's tests implement it in plain Java. Threads are fixed at load ({@link Factory#load}).
 */
public interface ModelRunner extends AutoCloseable {
    List<Tensor> run(Map<String, Tensor> inputs) throws Exception;

    /**
     * Runs one entry point of a multi-length artifact (a .pte method, a .tflite signature: {@code seq16}, ...;
     * see {@link Buckets}); null is the artifact's default one, {@link #run(Map)}. A runtime with one entry point
     * refuses any other.
     */
    default List<Tensor> run(String entryPoint, Map<String, Tensor> inputs) throws Exception {
        if (entryPoint == null) return run(inputs);
        throw new UnsupportedOperationException(backend() + " runs one entry point; it has no " + entryPoint);
    }

    /** The `backend` string of the benchmark document, e.g. "executorch-android 1.0.0 (XNNPACK)". */
    String backend();

    @Override
    void close();

    interface Factory {
        /** Loads the artifact at `path`; `threads` <= 0 means the runtime's default. */
        ModelRunner load(String path, ArtifactFormat format, int threads) throws Exception;
    }
}
