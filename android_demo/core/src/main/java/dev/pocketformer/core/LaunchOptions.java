package dev.pocketformer.core;

import java.util.Map;

/**
 * What an adb start of the app asks for, read from its intent extras (the Android activity copies
 * {@code Intent.getExtras()} into a map; the host's `pocketformer bench --device adb:SERIAL --app` sends them):
 *
 * <pre>
 *   adb shell am start -n dev.pocketformer.demo/.BenchActivity \
 *       --es bundle /sdcard/Android/data/dev.pocketformer.demo/files/bundles/NAME \
 *       --es out /sdcard/Android/data/dev.pocketformer.demo/files/results/NAME.json \
 *       --ei runs 50 --ei warmup 5 --ei threads 4 [--es artifact model.tflite]
 * </pre>
 *
 * Ill-formed extras are an {@link IllegalArgumentException} naming the extra; the app writes it into the
 * result file, so the host reports it instead of waiting out its timeout.
 */
public final class LaunchOptions {
    public static final String BUNDLE = "bundle", OUT = "out", RUNS = "runs", WARMUP = "warmup", THREADS = "threads", ARTIFACT = "artifact";

    public final String bundle, out, artifact;
    public final int runs, warmup, threads;

    private LaunchOptions(String bundle, String out, String artifact, int runs, int warmup, int threads) {
        this.bundle = bundle;
        this.out = out;
        this.artifact = artifact;
        this.runs = runs;
        this.warmup = warmup;
        this.threads = threads;
    }

    public static LaunchOptions fromExtras(Map<String, ?> extras) {
        Object bundle = extras.get(BUNDLE);
        if (!(bundle instanceof String) || ((String) bundle).isEmpty()) {
            throw new IllegalArgumentException("the start needs --es bundle PATH (a bundle folder or .zip on the phone)");
        }
        Object out = extras.get(OUT);
        String outPath = out instanceof String && !((String) out).isEmpty() ? (String) out : bundle + ".result.json";
        Object artifact = extras.get(ARTIFACT);
        int runs = integer(extras, RUNS, 50), warmup = integer(extras, WARMUP, 5), threads = integer(extras, THREADS, 0);
        if (runs < 1 || runs > 100000) throw new IllegalArgumentException("--ei runs must be in 1..100000, got " + runs);
        if (warmup < 0 || warmup > 10000) throw new IllegalArgumentException("--ei warmup must be in 0..10000, got " + warmup);
        if (threads < 0 || threads > 64) throw new IllegalArgumentException("--ei threads must be in 0..64 (0: the runtime's default), got " + threads);
        return new LaunchOptions((String) bundle, outPath, artifact instanceof String ? (String) artifact : null, runs, warmup, threads);
    }

    private static int integer(Map<String, ?> extras, String key, int fallback) {
        Object v = extras.get(key);
        if (v == null) return fallback;
        if (v instanceof Integer || v instanceof Long) return ((Number) v).intValue();
        if (v instanceof String) {
            try {
                return Integer.parseInt(((String) v).trim());
            } catch (NumberFormatException exc) {
                throw new IllegalArgumentException("extra " + key + " is not an integer: " + v + " (send it with --ei)");
            }
        }
        throw new IllegalArgumentException("extra " + key + " is not an integer: " + v + " (send it with --ei)");
    }

    /** An AppRun configured from these options. */
    public AppRun appRun(String device, Map<String, Object> host, AppRun.Memory memory) {
        AppRun run = new AppRun();
        run.runs = runs;
        run.warmup = warmup;
        run.threads = threads;
        run.device = device;
        run.host = host;
        run.memory = memory;
        run.only = artifact;
        return run;
    }
}
