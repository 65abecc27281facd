package dev.pocketformer.demo;

import android.app.Activity;
import android.os.Bundle;
import android.util.Log;
import android.widget.ScrollView;
import android.widget.TextView;
import dev.pocketformer.core.AppRun;
import dev.pocketformer.core.BundleException;
import dev.pocketformer.core.Json;
import dev.pocketformer.core.LaunchOptions;
import dev.pocketformer.core.ModelRunner;
import dev.pocketformer.core.ProcMemory;
import java.io.File;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

/**
 * Screen 3: benchmark and self-check. Shows load, first run, p50/p90/p99, peak memory and the self-check verdict
 * per artifact, and writes the JSON (schema pocketformer.bench/1). Started from the picker, or from adb without
 * a touch:
 *
 * <pre>adb shell am start -n dev.pocketformer.demo/.BenchActivity --es bundle PATH --es out RESULT.json --ei runs 50 --ei threads 4</pre>
 *
 * which is what `pocketformer bench BUNDLE --device adb:SERIAL --app` sends. The extras are read by the core's
 * LaunchOptions; bundle and result must lie inside the app's own folders.
 */
public class BenchActivity extends Activity {
    private static final String TAG = "Pocketformer";
    private TextView text;

    @Override
    protected void onCreate(Bundle state) {
        super.onCreate(state);
        text = new TextView(this);
        text.setTextIsSelectable(true);
        ScrollView scroll = new ScrollView(this);
        scroll.addView(text);
        setContentView(scroll);
        Map<String, Object> extras = new HashMap<>();
        Bundle given = getIntent().getExtras();
        if (given != null) for (String key : given.keySet()) extras.put(key, given.get(key));
        text.setText("Benchmarking " + extras.get("bundle") + "...");
        new Thread(() -> run(extras)).start();
    }

    private void run(Map<String, Object> extras) {
        Path out = null;
        try {
            LaunchOptions options = LaunchOptions.fromExtras(extras);
            out = Paths.get(options.out);
            if (!AndroidHost.inside(this, new File(options.bundle)) || !AndroidHost.inside(this, new File(options.out))) {
                throw new IllegalArgumentException("bundle and result must be inside " + AndroidHost.root(this) + " (push the bundle there)");
            }
            String device = "android";  // pocketformer bench --app replaces it with the adb serial it used
            AppRun run = options.appRun(device, AndroidHost.info(), new ProcMemory());
            try (dev.pocketformer.core.Bundle bundle = dev.pocketformer.core.Bundle.open(Paths.get(options.bundle))) {
                ModelRunner.Factory runtimes = new Runtimes(bundle.inputNames(), bundle.outputNames());
                Map<String, Object> doc = run.runAndWrite(bundle, runtimes, getCacheDir().toPath(), out);
                show(summary(doc) + "\nwritten " + out);
            }
        } catch (Exception exc) {
            Log.e(TAG, "benchmark failed", exc);
            show("Failed: " + exc.getMessage());
            if (out != null) {
                try {
                    AppRun.writeError(out, exc instanceof BundleException ? "bad_bundle"
                            : exc instanceof IllegalArgumentException ? "bad_input" : "error", exc);
                } catch (Exception writeFailed) {
                    Log.e(TAG, "cannot write the error document", writeFailed);
                }
            }
        }
    }

    @SuppressWarnings("unchecked")
    private static String summary(Map<String, Object> doc) {
        StringBuilder sb = new StringBuilder();
        for (Object o : (List<Object>) doc.get("results")) {
            Map<String, Object> r = (Map<String, Object>) o;
            Map<String, Object> lat = Json.obj(r, "latency"), check = Json.obj(r, "self_check");
            sb.append(String.format("%s (%s)%n  load %.1f ms, first run %.2f ms%n  p50 %.3f  p90 %.3f  p99 %.3f ms%n  peak RSS %.1f MB%n",
                    r.get("name"), r.get("backend"), Json.num(r, "load_time_ms"), Json.num(r, "first_run_ms"),
                    Json.num(lat, "p50"), Json.num(lat, "p90"), Json.num(lat, "p99"), Json.num(r, "peak_rss_mb")));
            Object passed = check.get("passed");
            sb.append("  self-check: ").append(passed == null ? "no tolerance" : Boolean.TRUE.equals(passed) ? "passed" : "FAILED " + check.get("failures"))
                    .append(String.format(" (max abs error vs the host %.3g)%n", Json.num(Json.obj(check, "lowering"), "max_abs_err")));
        }
        return sb.toString();
    }

    private void show(String s) {
        runOnUiThread(() -> text.setText(s));
    }
}
