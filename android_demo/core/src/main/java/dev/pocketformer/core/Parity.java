package dev.pocketformer.core;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * The self-check's figures and verdict, computed as converters/parity.py computes them: {@link #compare} is its
 * {@code compare} (overall and per-output max/mean abs error, relative error, SQNR, cosine, top-1 agreement for
 * classifiers, figures in float64) and {@link #judge} its {@code judge} (the reasons an artifact misses its
 * tolerance; none: it passes). Outputs are a list (one per sample) of lists (one per model output).
 */
public final class Parity {
    private Parity() {}

    /** Thrown when shapes or counts differ, as parity.py's ParityError. */
    public static final class ShapeMismatch extends Exception {
        private static final long serialVersionUID = 1L;

        public ShapeMismatch(String message) {
            super(message);
        }
    }

    public static void checkShapes(List<List<Tensor>> reference, List<List<Tensor>> actual) throws ShapeMismatch {
        if (reference.size() != actual.size()) {
            throw new ShapeMismatch(actual.size() + " samples of outputs, the reference has " + reference.size());
        }
        for (int s = 0; s < reference.size(); s++) {
            List<Tensor> ref = reference.get(s), got = actual.get(s);
            if (ref.size() != got.size()) throw new ShapeMismatch("sample " + s + ": " + got.size() + " outputs, the reference has " + ref.size());
            for (int i = 0; i < ref.size(); i++) {
                if (!Arrays.equals(ref.get(i).shape, got.get(i).shape)) {
                    throw new ShapeMismatch("sample " + s + ", output " + i + ": shape " + got.get(i).shapeString()
                            + ", the reference's is " + ref.get(i).shapeString());
                }
            }
        }
    }

    private static double[] flat(List<List<Tensor>> outputs, int index) {
        List<double[]> parts = new ArrayList<>();
        int n = 0;
        for (List<Tensor> sample : outputs) {
            for (int i = 0; i < sample.size(); i++) {
                if (index < 0 || i == index) {
                    double[] d = sample.get(i).asDoubles();
                    parts.add(d);
                    n += d.length;
                }
            }
        }
        double[] out = new double[n];
        int k = 0;
        for (double[] d : parts) {
            System.arraycopy(d, 0, out, k, d.length);
            k += d.length;
        }
        return out;
    }

    static Map<String, Object> figures(double[] ref, double[] got) {
        Map<String, Object> m = new LinkedHashMap<>();
        if (ref.length == 0) {
            m.put("max_abs_err", 0.0);
            m.put("mean_abs_err", 0.0);
            m.put("max_rel_err", 0.0);
            m.put("sqnr_db", Double.POSITIVE_INFINITY);
            m.put("cosine", 1.0);
            m.put("reference_scale", 0.0);
            return m;
        }
        boolean finite = true;
        for (double g : got) if (!Double.isFinite(g)) finite = false;
        double[] err = new double[ref.length], absErr = new double[ref.length], sq = new double[ref.length];
        double[] refSq = new double[ref.length], gotSq = new double[ref.length], dot = new double[ref.length];
        double maxAbs = 0, scale = 0;
        for (int i = 0; i < ref.length; i++) {
            err[i] = got[i] - ref[i];
            absErr[i] = Math.abs(err[i]);
            sq[i] = err[i] * err[i];
            refSq[i] = ref[i] * ref[i];
            gotSq[i] = got[i] * got[i];
            dot[i] = ref[i] * got[i];
            maxAbs = Math.max(maxAbs, absErr[i]);
            scale = Math.max(scale, Math.abs(ref[i]));
        }
        double noise = finite ? Stats.sum(sq) : Double.POSITIVE_INFINITY;
        double signal = Stats.sum(refSq);
        double denom = finite ? Math.sqrt(signal) * Math.sqrt(Stats.sum(gotSq)) : 0.0;
        if (!finite) maxAbs = Double.POSITIVE_INFINITY;
        m.put("max_abs_err", maxAbs);
        m.put("mean_abs_err", finite ? Stats.sum(absErr) / ref.length : Double.POSITIVE_INFINITY);
        m.put("max_rel_err", scale != 0 ? maxAbs / scale : Double.POSITIVE_INFINITY);
        m.put("sqnr_db", finite ? (noise == 0 ? Double.POSITIVE_INFINITY : 10 * Math.log10(signal / noise)) : Double.NEGATIVE_INFINITY);
        m.put("cosine", denom != 0 ? Stats.sum(dot) / denom : 0.0);
        m.put("reference_scale", scale);
        return m;
    }

    /** Fraction of samples (batch rows) whose arg-max of output `output` agrees. */
    public static double top1Agreement(List<List<Tensor>> reference, List<List<Tensor>> actual, int output) {
        int agree = 0, total = 0;
        for (int s = 0; s < reference.size(); s++) {
            Tensor r = reference.get(s).get(output), g = actual.get(s).get(output);
            int rows = r.shape.length > 0 ? (int) r.shape[0] : 1;
            double[] rd = r.asDoubles(), gd = g.asDoubles();
            int width = rows > 0 ? rd.length / rows : 0;
            for (int row = 0; row < rows; row++) {
                if (argmax(rd, row * width, width) == argmax(gd, row * width, width)) agree++;
                total++;
            }
        }
        return total == 0 ? 1.0 : (double) agree / total;
    }

    /** numpy's argmax: the first index of the maximum; a NaN wins (numpy treats NaN as the maximum). */
    static int argmax(double[] d, int start, int n) {
        int best = 0;
        for (int i = 0; i < n; i++) {
            double v = d[start + i];
            if (Double.isNaN(v)) return i;
            if (v > d[start + best]) best = i;
        }
        return best;
    }

    public static Map<String, Object> compare(List<List<Tensor>> reference, List<List<Tensor>> actual, boolean classifier,
                                              List<String> outputNames) throws ShapeMismatch {
        checkShapes(reference, actual);
        Map<String, Object> metrics = figures(flat(reference, -1), flat(actual, -1));
        metrics.put("samples", (long) reference.size());
        int count = reference.isEmpty() ? 0 : reference.get(0).size();
        if (count > 1) {
            Map<String, Object> per = new LinkedHashMap<>();
            for (int i = 0; i < count; i++) {
                String name = outputNames != null && i < outputNames.size() ? outputNames.get(i) : String.valueOf(i);
                per.put(name, figures(flat(reference, i), flat(actual, i)));
            }
            metrics.put("outputs", per);
        }
        if (classifier) metrics.put("top1_agreement", top1Agreement(reference, actual, 0));
        return metrics;
    }

    public static double errorBound(Tolerance t, Map<String, Object> figures) {
        Double scale = Json.num(figures, "reference_scale");
        return Math.max(t.atol, (t.rtol != null ? t.rtol : 0.0) * (scale != null ? scale : 0.0));
    }

    /** The reasons the figures miss the tolerance; empty when they pass (parity.py's judge, same wording). */
    public static List<String> judge(Map<String, Object> lowering, Map<String, Object> quantization, Tolerance t) {
        List<String> failures = new ArrayList<>();
        double err = Json.num(lowering, "max_abs_err");
        double bound = errorBound(t, lowering);
        if (!Double.isFinite(err) || err > bound) {
            String how = bound == t.atol ? g(t.atol) : g(bound, 3) + " (rtol " + g(t.rtol) + " of the reference's scale)";
            failures.add("max abs error vs its PyTorch reference " + g(err, 3) + " > " + how);
        }
        Map<String, Object> against = quantization != null ? quantization : lowering;
        String which = quantization != null ? "vs fp32" : "vs its PyTorch reference";
        if (quantization != null && t.minSqnrDb != null && !(Json.num(quantization, "sqnr_db") >= t.minSqnrDb)) {
            failures.add(String.format(java.util.Locale.ROOT, "SQNR vs fp32 %.1f dB < %s dB", Json.num(quantization, "sqnr_db"), g(t.minSqnrDb)));
        }
        if (t.minCosine != null && !(Json.num(against, "cosine") >= t.minCosine)) {
            failures.add(String.format(java.util.Locale.ROOT, "cosine %s %.4f < %s", which, Json.num(against, "cosine"), g(t.minCosine)));
        }
        if (t.minTop1 != null && against.containsKey("top1_agreement") && !(Json.num(against, "top1_agreement") >= t.minTop1)) {
            failures.add(String.format(java.util.Locale.ROOT, "top-1 agreement %s %.2f < %s", which, Json.num(against, "top1_agreement"), g(t.minTop1)));
        }
        return failures;
    }

    /** Python's "%g" of a float, for messages that read the same as the SDK's. */
    static String g(Double v) {
        return v == null ? "None" : g(v, 6);
    }

    /** Python's "%.{precision}g". */
    static String g(double v, int precision) {
        if (Double.isNaN(v)) return "nan";
        if (Double.isInfinite(v)) return v > 0 ? "inf" : "-inf";
        String s = String.format(java.util.Locale.ROOT, "%." + precision + "g", v);
        if (s.contains("e")) {
            String[] parts = s.split("e");
            String mant = parts[0].contains(".") ? parts[0].replaceAll("0+$", "").replaceAll("\\.$", "") : parts[0];
            int exp = Integer.parseInt(parts[1]);
            return mant + "e" + (exp < 0 ? "-" : "+") + (Math.abs(exp) < 10 ? "0" : "") + Math.abs(exp);
        }
        return s.contains(".") ? s.replaceAll("0+$", "").replaceAll("\\.$", "") : s;
    }
}
