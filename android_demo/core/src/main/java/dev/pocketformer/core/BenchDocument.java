package dev.pocketformer.core;

import java.time.OffsetDateTime;
import java.time.ZoneOffset;
import java.time.format.DateTimeFormatter;
import java.time.temporal.ChronoUnit;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * The benchmark document of `pocketformer bench --json` (schema pocketformer.bench/1, written by
 * device_runtime/measure.py's benchmark_artifacts), built from the app's measurements so that a phone's run
 * joins the SDK's reports. Keys the phone cannot know (a Python version, per-runtime import time) are null.
 */
public final class BenchDocument {
    public static final String SCHEMA = "pocketformer.bench/1";

    /** One artifact's measurements, as the app took them. */
    public static final class Result {
        public String name, path, format, backend;
        public Integer numThreads;
        public double loadTimeMs, firstRunMs;
        public Double runtimeImportMs;
        public int runs, warmup;
        public double[] samplesSeconds = new double[0];
        public double peakRssMb;
        public Double loadRssDeltaMb;
        public Long sizeBytes;
        /** Extra keys (the self-check, the runtime's version), written after the standard ones. */
        public final Map<String, Object> extra = new LinkedHashMap<>();

        Map<String, Object> toJson() {
            Map<String, Object> m = new LinkedHashMap<>();
            m.put("name", name);
            m.put("path", path);
            m.put("format", format);
            m.put("backend", backend);
            m.put("num_threads", numThreads == null ? null : (long) numThreads);
            m.put("load_time_ms", loadTimeMs);
            m.put("runtime_import_ms", runtimeImportMs);
            m.put("first_run_ms", firstRunMs);
            m.put("runs", (long) runs);
            m.put("warmup", (long) warmup);
            m.put("latency", Stats.fromSeconds(samplesSeconds).toJson());
            m.put("peak_rss_mb", peakRssMb);
            m.put("load_rss_delta_mb", loadRssDeltaMb);
            m.put("size_bytes", sizeBytes);
            m.putAll(extra);
            return m;
        }
    }

    public String device = "local";
    public Map<String, Object> host = new LinkedHashMap<>();
    public int runs, warmup;
    public Integer threads;
    public String order = "sequential: the app runs each artifact's warm-up, then its timed runs";
    public Double baselineRssMb;
    public String peakRssScope = "per artifact: the app's peak RSS while that artifact ran";
    public String created = OffsetDateTime.now(ZoneOffset.UTC).truncatedTo(ChronoUnit.SECONDS).format(DateTimeFormatter.ISO_OFFSET_DATE_TIME);
    public final List<Result> results = new ArrayList<>();
    public final Map<String, Object> extra = new LinkedHashMap<>();

    public Map<String, Object> toJson() {
        if (results.isEmpty()) throw new IllegalStateException("a benchmark document needs at least one result");
        List<Object> rs = new ArrayList<>();
        double peak = 0;
        for (Result r : results) {
            rs.add(r.toJson());
            peak = Math.max(peak, r.peakRssMb);
        }
        Map<String, Object> doc = new LinkedHashMap<>();
        doc.put("schema", SCHEMA);
        doc.put("created", created.replace("Z", "+00:00"));  // Python's isoformat spelling
        doc.put("device", device);
        doc.put("host", host);
        doc.put("runs", (long) runs);
        doc.put("warmup", (long) warmup);
        doc.put("threads", threads == null ? null : (long) threads);
        doc.put("order", order);
        doc.put("block", (long) Math.max(1, runs));
        doc.put("settle", 0L);
        doc.put("peak_rss_scope", peakRssScope);
        doc.put("baseline_rss_mb", baselineRssMb);
        doc.put("process_peak_rss_mb", peak);
        doc.put("results", rs);
        addRatios(doc);
        doc.putAll(extra);
        return doc;
    }

    public String toJsonText() {
        return Json.write(toJson());
    }

    /** measure.add_ratios: each result's latency over the first's (p50 when every result has one, else mean). */
    @SuppressWarnings("unchecked")
    static void addRatios(Map<String, Object> doc) {
        List<Object> results = (List<Object>) doc.get("results");
        String basis = "p50";
        for (Object r : results) {
            Map<String, Object> lat = Json.obj((Map<String, Object>) r, "latency");
            if (lat == null || lat.get("p50") == null) basis = "mean";
        }
        Map<String, Object> first = (Map<String, Object>) results.get(0);
        Double base = Json.num(Json.obj(first, "latency"), basis);
        for (Object o : results) {
            Map<String, Object> r = (Map<String, Object>) o;
            Double value = Json.num(Json.obj(r, "latency"), basis);
            // Python's `if base` is false for 0 only (NaN is truthy)
            r.put("ratio_vs_first", value != null && base != null && base != 0.0 ? value / base : null);
        }
        doc.put("ratio_basis", basis);
        doc.put("baseline", first.get("name"));
    }
}
