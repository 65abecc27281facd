package dev.pocketformer.core;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * Resident memory from Linux's /proc/self (Android is Linux): VmRSS now, VmHWM the peak, reset by writing "5"
 * to /proc/self/clear_refs, as device_runtime/measure.py does on the host. Figures are NaN where /proc is
 * unreadable (some Android builds restrict clear_refs: {@link #resetPeak} then says false and the document says
 * the peak is the process's so far).
 */
public final class ProcMemory implements AppRun.Memory {
    private static double field(String name) {
        try {
            String status = new String(Files.readAllBytes(Paths.get("/proc/self/status")), StandardCharsets.UTF_8);
            Matcher m = Pattern.compile("^" + name + ":\\s+(\\d+)\\s+kB", Pattern.MULTILINE).matcher(status);
            return m.find() ? Long.parseLong(m.group(1)) / 1024.0 : Double.NaN;
        } catch (IOException | RuntimeException exc) {
            return Double.NaN;
        }
    }

    @Override
    public double rssMb() {
        return field("VmRSS");
    }

    @Override
    public double peakRssMb() {
        return field("VmHWM");
    }

    @Override
    public boolean resetPeak() {
        try {
            Files.write(Paths.get("/proc/self/clear_refs"), "5".getBytes(StandardCharsets.US_ASCII));
            return true;
        } catch (IOException | RuntimeException exc) {
            return false;
        }
    }
}
