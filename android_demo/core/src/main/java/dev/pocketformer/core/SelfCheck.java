package dev.pocketformer.core;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * The self-check of one artifact on the phone: its outputs on the bundle's inputs against the host's outputs
 * of the same artifact ({@code expected/}; the "lowering" figures) and, for a precision below fp32, against
 * PyTorch's fp32 outputs ({@code reference/}; the "quantization" figures), judged with the bundle's tolerance by
 * {@link Parity#judge}, the SDK's rule: the export pipeline compares the same way (sdk/export/api.py).
 */
public final class SelfCheck {
    private SelfCheck() {}

    /** The verdict on the bundle's samples; other output shapes or counts than the host's fail it, said plainly. */
    public static Map<String, Object> judge(Bundle bundle, Bundle.Artifact artifact, List<List<Tensor>> actual)
            throws BundleException {
        List<List<Tensor>> expected = new ArrayList<>(), reference = new ArrayList<>();
        boolean quantized = artifact.precision() != null && !artifact.precision().equals("fp32");
        for (Bundle.Sample s : bundle.samples()) {
            expected.add(bundle.expected(artifact, s));
            if (quantized) reference.add(bundle.reference(s));
        }
        try {
            return judge(expected, quantized ? reference : null, actual, bundle.isClassifier(), bundle.outputNames(), artifact.tolerance);
        } catch (Parity.ShapeMismatch exc) {
            Map<String, Object> out = new LinkedHashMap<>();
            out.put("against", "the host's outputs of this artifact");
            out.put("passed", false);
            List<Object> failures = new ArrayList<>();
            failures.add(exc.getMessage());
            out.put("failures", failures);
            return out;
        }
    }

    public static Map<String, Object> judge(List<List<Tensor>> expected, List<List<Tensor>> fp32, List<List<Tensor>> actual,
                                            boolean classifier, List<String> outputNames, Tolerance tolerance)
            throws Parity.ShapeMismatch {
        Map<String, Object> lowering = Parity.compare(expected, actual, classifier, outputNames);
        Map<String, Object> quantization = fp32 != null ? Parity.compare(fp32, actual, classifier, outputNames) : null;
        Map<String, Object> out = new LinkedHashMap<>();
        out.put("against", "the host's outputs of this artifact" + (fp32 != null ? "; fp32 PyTorch for quantization" : ""));
        out.put("lowering", lowering);
        out.put("quantization", quantization);
        if (tolerance == null) {
            out.put("tolerance", null);
            out.put("passed", null);
            out.put("failures", new ArrayList<>());
            return out;
        }
        // the reference here is the host's run of the same artifact: say so (as sdk/device/verify.py does)
        List<String> failures = new ArrayList<>();
        for (String f : Parity.judge(lowering, quantization, tolerance)) failures.add(f.replace("vs its PyTorch reference", "vs the host's outputs"));
        out.put("tolerance", tolerance.toJson());
        out.put("passed", failures.isEmpty());
        out.put("failures", new ArrayList<Object>(failures));
        return out;
    }
}
