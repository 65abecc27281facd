package dev.pocketformer.core;

import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Map;

/**
 * A runner over an artifact's sequence buckets: each request is padded to the smallest bucket that fits and run
 * through that bucket's entry point ({@link ModelRunner#run(String, Map)}), its per-token outputs cut back to the
 * request's length; a request longer than the largest bucket is refused naming it. The app's counterpart of
 * device_runtime's BucketedSession.
 */
public final class BucketedRunner implements ModelRunner {
    private final ModelRunner runner;
    private final Buckets buckets;
    private final List<Integer> routed = new ArrayList<>();

    public BucketedRunner(ModelRunner runner, Buckets buckets) {
        this.runner = runner;
        this.buckets = buckets;
    }

    public Buckets buckets() {
        return buckets;
    }

    @Override
    public List<Tensor> run(Map<String, Tensor> inputs) throws Exception {
        Buckets.Padded padded = buckets.pad(inputs);
        routed.add(padded.bucket);
        return Buckets.cut(runner.run(padded.entryPoint, padded.feed), padded);
    }

    /** The bucket of each run so far, in order (cleared by {@link #clearRouted}). */
    public List<Integer> routed() {
        return Collections.unmodifiableList(new ArrayList<>(routed));
    }

    public void clearRouted() {
        routed.clear();
    }

    @Override
    public String backend() {
        return runner.backend() + ", sequence buckets " + buckets.lengths();
    }

    @Override
    public void close() {
        runner.close();
    }
}
