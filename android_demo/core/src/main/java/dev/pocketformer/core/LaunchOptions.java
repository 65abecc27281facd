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
        String bundle = Fields.text(extras, BUNDLE);
        if (bundle == null) {
            throw new IllegalArgumentException("the start needs --es bundle PATH (a bundle folder or .zip on the phone)");
        }
        String out = Fields.text(extras, OUT);
        int runs = Fields.integer(extras, RUNS, 50, 1, 100000, "--ei runs");
        int warmup = Fields.integer(extras, WARMUP, 5, 0, 10000, "--ei warmup");
        int threads = Fields.integer(extras, THREADS, 0, 0, 64, "--ei threads (0: the runtime's default)");
        return new LaunchOptions(bundle, out != null ? out : bundle + ".result.json", Fields.text(extras, ARTIFACT), runs, warmup, threads);
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
