package dev.pocketformer.core;

import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * What the app's BenchActivity does on an adb start, on the JVM: the stand-in adb of tests/test_android_core.py
 * runs this for `am start ... --es bundle P --ei runs N ...`, with the core's real launch, bundle, run and JSON
 * code and {@link ReplayRunner} in place of ExecuTorch or LiteRT. Arguments are am's extras, verbatim.
 */
public final class StandInApp {
    public static void main(String[] args) throws Exception {
        Map<String, Object> extras = new LinkedHashMap<>();
        String badExtra = null;
        for (int i = 0; i + 2 < args.length + 1; i++) {
            String flag = args[i];
            if (!flag.equals("--es") && !flag.equals("--ei") && !flag.equals("--ez")) continue;
            String key = args[i + 1], value = args[i + 2];
            if (flag.equals("--ei")) {
                try {
                    extras.put(key, Integer.parseInt(value));
                } catch (NumberFormatException exc) {  // am itself would refuse it; the app reports it
                    badExtra = "extra " + key + " is not an integer: " + value;
                }
            } else if (flag.equals("--ez")) {
                extras.put(key, Boolean.parseBoolean(value));
            } else {
                extras.put(key, value);
            }
            i += 2;
        }
        Object outExtra = extras.get(LaunchOptions.OUT);
        Path out = Paths.get(outExtra != null ? String.valueOf(outExtra) : extras.get(LaunchOptions.BUNDLE) + ".result.json");
        if (badExtra != null) {
            AppRun.writeError(out, "bad_input", new IllegalArgumentException(badExtra));
            return;
        }
        try {
            LaunchOptions options = LaunchOptions.fromExtras(extras);
            Map<String, Object> host = new LinkedHashMap<>();
            host.put("hostname", "stand-in");
            host.put("platform", "JVM " + System.getProperty("java.version") + " (stand-in for the Android app)");
            host.put("machine", System.getProperty("os.arch"));
            host.put("python", null);
            host.put("cpu", System.getProperty("os.arch"));
            host.put("cpus_usable", (long) Runtime.getRuntime().availableProcessors());
            host.put("numpy", null);
            AppRun run = options.appRun(System.getenv().getOrDefault("STANDIN_DEVICE", "adb"), host, new ProcMemory());
            Path cache = Files.createTempDirectory("pf-app-cache");
            double noise = Double.parseDouble(System.getenv().getOrDefault("STANDIN_NOISE", "0"));
            try (Bundle bundle = Bundle.open(Paths.get(options.bundle))) {
                run.runAndWrite(bundle, new ReplayRunner.Factory(bundle, noise), cache, Paths.get(options.out));
            }
        } catch (BundleException exc) {
            AppRun.writeError(out, "bad_bundle", exc);
        } catch (IllegalArgumentException exc) {
            AppRun.writeError(out, "bad_input", exc);
        } catch (Exception exc) {
            AppRun.writeError(out, "error", exc);
        }
    }
}
