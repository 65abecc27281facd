package dev.pocketformer.core;

import static org.junit.Assert.assertEquals;

import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import org.junit.Test;

/** The same latency samples give the SDK's statistics, and a benchmark document in its schema. */
public class LatencyParityTest {
    @Test
    @SuppressWarnings("unchecked")
    public void sameSamplesSameStatisticsAndDocument() throws Exception {
        Path dir = Fixtures.dir("latency");
        BenchDocument doc = new BenchDocument();
        doc.device = "adb:STANDIN";
        doc.runs = 0;
        int k = 0;
        for (Object o : Fixtures.cases(dir)) {
            Map<String, Object> c = (Map<String, Object>) o;
            List<Object> s = Json.list(c, "seconds");
            double[] seconds = new double[s.size()];
            for (int i = 0; i < seconds.length; i++) seconds[i] = ((Number) s.get(i)).doubleValue();
            Map<String, Object> mine = Stats.fromSeconds(seconds).toJson();
            Map<String, Object> want = Json.obj(c, "expected");
            for (String key : want.keySet()) {
                if (key.equals("unit")) continue;
                double w = Json.num(want, key), g = Json.num(mine, key);
                // the percentiles and extremes bit for bit; mean and std within float64 summation order
                double tol = key.equals("mean") || key.equals("std") ? Math.abs(w) * 1e-13 : 0.0;
                assertEquals("case " + k + " " + key, w, g, tol);
            }
            BenchDocument.Result r = new BenchDocument.Result();
            r.name = "case" + k;
            r.path = "artifacts/case" + k + ".tflite";
            r.format = "tflite";
            r.backend = "litert-android (stand-in)";
            r.numThreads = 2;
            r.loadTimeMs = 12.5;
            r.firstRunMs = 3.25;
            r.runs = seconds.length;
            r.warmup = 3;
            r.samplesSeconds = seconds;
            r.peakRssMb = 80.0 + k;
            r.loadRssDeltaMb = 4.0;
            r.sizeBytes = 1234L;
            doc.results.add(r);
            doc.runs = seconds.length;
            doc.warmup = 3;
            doc.threads = 2;
            k++;
        }
        Fixtures.record("bench.json", doc.toJson());
    }
}
