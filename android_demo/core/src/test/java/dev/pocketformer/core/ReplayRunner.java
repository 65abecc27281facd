package dev.pocketformer.core;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;

/**
 * A stand-in for the app's runtimes, for the JVM: it answers each bundled sample's inputs with the host's
 * expected outputs of the artifact (plus `noise` times the output's scale, to make a self-check fail on
 * purpose). Its timings measure nothing; it exists so the app's whole flow runs here without a phone.
 */
final class ReplayRunner implements ModelRunner {
    private final Bundle bundle;
    private final Bundle.Artifact artifact;
    private final double noise;

    ReplayRunner(Bundle bundle, Bundle.Artifact artifact, double noise) {
        this.bundle = bundle;
        this.artifact = artifact;
        this.noise = noise;
    }

    static final class Factory implements ModelRunner.Factory {
        private final Bundle bundle;
        private final double noise;

        Factory(Bundle bundle, double noise) {
            this.bundle = bundle;
            this.noise = noise;
        }

        @Override
        public ModelRunner load(String path, ArtifactFormat format, int threads) {
            for (Bundle.Artifact a : bundle.artifacts()) {
                if (path.endsWith(a.file)) return new ReplayRunner(bundle, a, noise);
            }
            throw new IllegalArgumentException("no bundled artifact at " + path);
        }
    }

    /** The entry points asked for, in order (null: the default one), shared by the runners of one factory. */
    static final List<String> ENTRY_POINTS = java.util.Collections.synchronizedList(new ArrayList<>());

    @Override
    public List<Tensor> run(String entryPoint, Map<String, Tensor> inputs) throws Exception {
        ENTRY_POINTS.add(entryPoint);
        return run(inputs);
    }

    @Override
    public List<Tensor> run(Map<String, Tensor> inputs) throws Exception {
        for (Bundle.Sample s : bundle.samples()) {
            Map<String, Tensor> feed = bundle.inputs(s);
            boolean same = feed.keySet().equals(inputs.keySet());
            for (String name : feed.keySet()) {
                same &= same && Arrays.equals(feed.get(name).asDoubles(), inputs.get(name).asDoubles());
            }
            if (!same) continue;
            List<Tensor> out = new ArrayList<>();
            for (Tensor t : bundle.expected(artifact, s)) {
                float[] v = t.asFloats();
                float scale = 0;
                for (float x : v) scale = Math.max(scale, Math.abs(x));
                for (int i = 0; i < v.length; i++) v[i] += (float) (noise * scale * ((i % 2 == 0) ? 1 : -1));
                out.add(Tensor.ofFloats(v, t.shape));
            }
            return out;
        }
        throw new IllegalArgumentException("inputs that are none of the bundle's samples");
    }

    @Override
    public String backend() {
        return "replay of the host's outputs (JVM stand-in)";
    }

    @Override
    public void close() {}
}
