package dev.pocketformer.demo;

import dev.pocketformer.core.ArtifactFormat;
import dev.pocketformer.core.BucketedRunner;
import dev.pocketformer.core.Buckets;
import dev.pocketformer.core.Bundle;
import dev.pocketformer.core.ModelRunner;
import java.io.File;

/** The first artifact of a bundle that this app can run, loaded through the runtime layer. */
final class Models {
    private Models() {}

    static Bundle.Artifact runnable(Bundle bundle, String only) throws Exception {
        for (Bundle.Artifact a : bundle.artifacts()) {
            if (only != null && !only.equals(a.name())) continue;
            if (!bundle.exists(a.file)) continue;  // a package folder (.mlpackage): not for this app
            try {
                ArtifactFormat.sniff(bundle.bytes(a.file), a.file);
                return a;
            } catch (IllegalArgumentException notOurs) {
                // ONNX, Core ML: bundles may carry them for other devices
            }
        }
        throw new IllegalArgumentException(bundle + " holds no .pte or .tflite artifact" + (only != null ? " named " + only : ""));
    }

    static ModelRunner load(Bundle bundle, Bundle.Artifact artifact, File cache, int threads) throws Exception {
        File file = bundle.file(artifact.file, cache.toPath()).toFile();
        ArtifactFormat format = ArtifactFormat.sniff(bundle.bytes(artifact.file), artifact.file);
        ModelRunner runner = new Runtimes(bundle.inputNames(), bundle.outputNames()).load(file.getPath(), format, threads);
        // an artifact with sequence buckets (export --seq-lens): each request padded to the bucket that fits
        Buckets buckets = Buckets.of(bundle, artifact);
        return buckets != null ? new BucketedRunner(runner, buckets) : runner;
    }
}
