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

    /** The `backend` string of the benchmark document, e.g. "executorch-android 1.0.0 (XNNPACK)". */
    String backend();

    @Override
    void close();

    interface Factory {
        /** Loads the artifact at `path`; `threads` <= 0 means the runtime's default. */
        ModelRunner load(String path, ArtifactFormat format, int threads) throws Exception;
    }
}
