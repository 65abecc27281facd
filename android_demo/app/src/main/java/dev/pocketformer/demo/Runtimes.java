package dev.pocketformer.demo;

import dev.pocketformer.core.ArtifactFormat;
import dev.pocketformer.core.ModelRunner;
import java.util.List;

/**
 * The runtime layer's factory: the implementation is chosen by the artifact's file identifier (core's
 * ArtifactFormat, the same sniffing as device_runtime), ExecuTorch for .pte and LiteRT for .tflite.
 */
final class Runtimes implements ModelRunner.Factory {
    private final List<String> inputNames, outputNames;

    Runtimes(List<String> inputNames, List<String> outputNames) {
        this.inputNames = inputNames;
        this.outputNames = outputNames;
    }

    @Override
    public ModelRunner load(String path, ArtifactFormat format, int threads) throws Exception {
        switch (format) {
            case PTE:
                return new ExecuTorchRunner(path, threads, inputNames);
            case TFLITE:
                return new LiteRtRunner(path, threads, inputNames, outputNames);
            default:
                throw new IllegalArgumentException("no runtime for " + format);
        }
    }
}
