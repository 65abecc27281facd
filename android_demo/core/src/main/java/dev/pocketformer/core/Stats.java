package dev.pocketformer.core;

import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * Latency statistics as device_runtime/session.py's LatencyStats.from_seconds computes them with numpy, to the
 * last bit where the operations allow: samples in seconds are scaled to ms ({@code * 1e3}), percentiles are
 * numpy's default "linear" method (virtual index {@code (n-1) * p/100}, numpy's two-sided lerp), the mean and the
 * population std use numpy's pairwise summation.
 */
public final class Stats {
    private Stats() {}

    public static final class Latency {
        public final double p50, p90, p99, mean, std, min, max, p10, p95;

        Latency(double p10, double p50, double p90, double p95, double p99, double mean, double std, double min, double max) {
            this.p10 = p10;
            this.p50 = p50;
            this.p90 = p90;
            this.p95 = p95;
            this.p99 = p99;
            this.mean = mean;
            this.std = std;
            this.min = min;
            this.max = max;
        }

        /** The same keys, in the same order, as dataclasses.asdict(LatencyStats). */
        public Map<String, Object> toJson() {
            Map<String, Object> m = new LinkedHashMap<>();
            m.put("unit", "ms");
            m.put("p50", p50);
            m.put("p90", p90);
            m.put("p99", p99);
            m.put("mean", mean);
            m.put("std", std);
            m.put("min", min);
            m.put("max", max);
            m.put("p10", p10);
            m.put("p95", p95);
            return m;
        }
    }

    public static Latency fromSeconds(double[] seconds) {
        if (seconds.length == 0) throw new IllegalArgumentException("no latency samples");
        double[] ms = new double[seconds.length];
        for (int i = 0; i < ms.length; i++) ms[i] = seconds[i] * 1e3;
        double[] sorted = ms.clone();
        Arrays.sort(sorted);
        double mean = sum(ms) / ms.length;
        double[] dev = new double[ms.length];
        for (int i = 0; i < ms.length; i++) {
            double d = ms[i] - mean;
            dev[i] = d * d;
        }
        double std = Math.sqrt(sum(dev) / ms.length);
        return new Latency(percentile(sorted, 10), percentile(sorted, 50), percentile(sorted, 90), percentile(sorted, 95),
                percentile(sorted, 99), mean, std, sorted[0], sorted[sorted.length - 1]);
    }

    /** numpy.percentile(x, p) (method "linear") of ascending-sorted values. */
    public static double percentile(double[] sorted, double p) {
        int n = sorted.length;
        double q = p / 100.0;
        double virtual = (n - 1) * q;
        double below = Math.floor(virtual);
        int lo = (int) below;
        int hi = Math.min(lo + 1, n - 1);
        double gamma = virtual - below;
        double a = sorted[lo], b = sorted[hi];
        double diff = b - a;
        // numpy's _lerp: from the lower end below t = 0.5, from the upper end at or above it
        return gamma >= 0.5 ? b - diff * (1 - gamma) : a + diff * gamma;
    }

    /** numpy's pairwise summation of a contiguous float64 array (blocks of 128, eight accumulators). */
    public static double sum(double[] a) {
        return pairwise(a, 0, a.length);
    }

    private static double pairwise(double[] a, int start, int n) {
        if (n < 8) {
            double res = 0.;
            for (int i = 0; i < n; i++) res += a[start + i];
            return res;
        } else if (n <= 128) {
            double[] r = new double[8];
            for (int j = 0; j < 8; j++) r[j] = a[start + j];
            int i;
            for (i = 8; i < n - (n % 8); i += 8) {
                for (int j = 0; j < 8; j++) r[j] += a[start + i + j];
            }
            double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
            for (; i < n; i++) res += a[start + i];
            return res;
        } else {
            int n2 = n / 2;
            n2 -= n2 % 8;
            return pairwise(a, start, n2) + pairwise(a, start + n2, n - n2);
        }
    }
}
