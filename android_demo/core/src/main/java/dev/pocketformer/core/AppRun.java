package dev.pocketformer.core;

import java.io.IOException;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * What the app's benchmark screen and its adb start do, without the UI: open and verify the bundle, then per
 * artifact load it (timed), run the first sample once (first run), warm up, time `runs` runs, run every
 * bundled sample for the self-check, and put it all in one benchmark document.
 */
public final class AppRun {
    /** Where the app reads memory: VmHWM/VmRSS on Android's Linux; the core's tests pass a stub. */
    public interface Memory {
        double rssMb();

        double peakRssMb();

        /** Resets the peak mark (Linux /proc/self/clear_refs); false where it cannot be. */
        boolean resetPeak();
    }

    public int runs = 50, warmup = 5, threads = 0;
    public String device = "local";
    public Map<String, Object> host = new LinkedHashMap<>();
    public Memory memory;
    /** Only this artifact (its file name in the bundle); null: every artifact the app can run. */
    public String only;

    public Map<String, Object> run(Bundle bundle, ModelRunner.Factory factory, Path cacheDir) throws Exception {
        if (runs < 1 || warmup < 0) throw new IllegalArgumentException("need runs >= 1 and warmup >= 0, got runs=" + runs + ", warmup=" + warmup);
        if (bundle.samples().isEmpty()) throw new BundleException("bundle.json", "the bundle has no samples to run");
        BenchDocument doc = new BenchDocument();
        doc.device = device;
        doc.host = host;
        doc.runs = runs;
        doc.warmup = warmup;
        doc.threads = threads > 0 ? threads : null;
        doc.baselineRssMb = memory != null ? memory.rssMb() : null;
        boolean resettable = memory != null && memory.resetPeak();
        if (!resettable) doc.peakRssScope = "process peak RSS so far (the mark cannot be reset here)";
        List<Map<String, Tensor>> feeds = new ArrayList<>();
        for (Bundle.Sample s : bundle.samples()) feeds.add(bundle.inputs(s));
        List<Object> skipped = new ArrayList<>();
        for (Bundle.Artifact artifact : bundle.artifacts()) {
            if (only != null && !only.equals(artifact.name())) continue;
            ArtifactFormat format;
            byte[] head;
            try {
                if (!bundle.exists(artifact.file)) throw new IllegalArgumentException(artifact.file + " is a package folder, not a .pte or .tflite");
                head = bundle.bytes(artifact.file);
                format = ArtifactFormat.sniff(head, artifact.file);
            } catch (IllegalArgumentException exc) {  // a bundle may also carry ONNX or Core ML artifacts: not for this app
                Map<String, Object> skip = new LinkedHashMap<>();
                skip.put("file", artifact.file);
                skip.put("reason", exc.getMessage());
                skipped.add(skip);
                continue;
            }
            Path file = bundle.file(artifact.file, cacheDir);
            BenchDocument.Result r = new BenchDocument.Result();
            r.name = artifact.name();
            r.path = artifact.file;
            r.format = format.sdkName();
            r.numThreads = doc.threads;
            r.runs = runs;
            r.warmup = warmup;
            r.sizeBytes = (long) head.length;
            if (resettable) memory.resetPeak();
            double before = memory != null ? memory.rssMb() : Double.NaN;
            Buckets buckets = Buckets.of(bundle, artifact);  // sequence buckets (export --seq-lens), or null
            long t0 = System.nanoTime();
            ModelRunner loaded = factory.load(file.toString(), format, threads);
            try (ModelRunner runner = buckets != null ? new BucketedRunner(loaded, buckets) : loaded) {  // closes `loaded`
                r.loadTimeMs = (System.nanoTime() - t0) / 1e6;
                r.loadRssDeltaMb = memory != null ? memory.rssMb() - before : null;
                r.backend = runner.backend();
                Map<String, Tensor> feed = feeds.get(0);
                long t1 = System.nanoTime();
                runner.run(feed);
                r.firstRunMs = (System.nanoTime() - t1) / 1e6;
                for (int i = 0; i < warmup; i++) runner.run(feed);
                double[] samples = new double[runs];
                for (int i = 0; i < runs; i++) {
                    long t = System.nanoTime();
                    runner.run(feed);
                    samples[i] = (System.nanoTime() - t) / 1e9;
                }
                r.samplesSeconds = samples;
                r.peakRssMb = memory != null ? memory.peakRssMb() : 0.0;
                if (runner instanceof BucketedRunner) ((BucketedRunner) runner).clearRouted();
                List<List<Tensor>> actual = new ArrayList<>();
                for (Map<String, Tensor> f : feeds) actual.add(runner.run(f));
                r.extra.put("precision", artifact.precision());
                if (runner instanceof BucketedRunner) {  // which bucket each self-check sample ran in
                    Map<String, Object> routing = new LinkedHashMap<>();
                    routing.put("lengths", new ArrayList<Object>(buckets.lengths()));
                    routing.put("routed_to", new ArrayList<Object>(((BucketedRunner) runner).routed()));
                    r.extra.put("buckets", routing);
                }
                r.extra.put("self_check", SelfCheck.judge(bundle, artifact, actual));
            }
            doc.results.add(r);
        }
        if (doc.results.isEmpty()) {
            throw new IllegalArgumentException("the bundle holds no artifact this app runs (.pte or .tflite)"
                    + (only != null ? " named " + only : "") + "; skipped: " + skipped);
        }
        doc.extra.put("model", bundle.model().get("name"));
        doc.extra.put("skipped", skipped);
        return doc.toJson();
    }

    /** Runs and writes the document atomically to `out` (what the adb start pulls). */
    public Map<String, Object> runAndWrite(Bundle bundle, ModelRunner.Factory factory, Path cacheDir, Path out) throws Exception {
        Map<String, Object> doc = run(bundle, factory, cacheDir);
        AtomicFiles.writeString(out, Json.write(doc));
        return doc;
    }

    /** The document of a failed run, so the host's wait ends with the reason rather than a timeout. */
    public static void writeError(Path out, String kind, Throwable error) throws IOException {
        Map<String, Object> e = new LinkedHashMap<>();
        e.put("kind", kind);
        e.put("type", error.getClass().getSimpleName());
        e.put("message", error.getMessage() != null ? error.getMessage() : error.toString());
        if (error instanceof BundleException) e.put("file", ((BundleException) error).file);
        Map<String, Object> doc = new LinkedHashMap<>();
        doc.put("schema", BenchDocument.SCHEMA);
        doc.put("error", e);
        AtomicFiles.writeString(out, Json.write(doc));
    }
}
