package dev.pocketformer.core;

import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;

/**
 * The sequence-length buckets of an artifact exported with {@code --seq-lens} (device_runtime/buckets.py), as its
 * manifest entry lists them ({@code details.buckets}: {@code lengths}, and {@code entry_points}, the method or
 * signature of each length, {@code seq{N}}). A tokenised request of any length up to the largest bucket is padded
 * to the smallest bucket that fits (ids 0 = [PAD], mask 0, token type 0: attention never sees the padding) and
 * runs that bucket's entry point; a longer one is refused naming the largest bucket, as BucketedSession does.
 */
public final class Buckets {
    /** (batch, sequence, ...): the BERT family's inputs and per-token outputs. */
    public static final int SEQUENCE_AXIS = 1;
    /** The entry point of one length, as device_runtime.buckets.ENTRY_POINT names it. */
    public static final String ENTRY_POINT = "seq%d";

    /** A request longer than the largest bucket (device_runtime's SequenceTooLongError). */
    public static final class SequenceTooLongException extends IllegalArgumentException {
        private static final long serialVersionUID = 1L;
        public final int length, largest;

        SequenceTooLongException(String message, int length, int largest) {
            super(message);
            this.length = length;
            this.largest = largest;
        }
    }

    /** One request padded to its bucket: its own length, the bucket, the entry point to run, and the feed. */
    public static final class Padded {
        public final int length, bucket;
        public final String entryPoint;  // null: the artifact takes every length through one entry point
        public final Map<String, Tensor> feed;

        Padded(int length, int bucket, String entryPoint, Map<String, Tensor> feed) {
            this.length = length;
            this.bucket = bucket;
            this.entryPoint = entryPoint;
            this.feed = feed;
        }
    }

    private final String artifact;
    private final List<Integer> lengths;
    private final Map<Integer, String> entryPoints;  // length -> method/signature; null: one entry point for all
    private final List<String> sequenceInputs;       // null: every input of rank >= 2

    public Buckets(String artifact, List<Integer> lengths, Map<Integer, String> entryPoints, List<String> sequenceInputs) {
        if (lengths.isEmpty()) throw new IllegalArgumentException(artifact + " lists no sequence buckets");
        List<Integer> sorted = new ArrayList<>(lengths);
        Collections.sort(sorted);
        this.artifact = artifact;
        this.lengths = Collections.unmodifiableList(sorted);
        this.entryPoints = entryPoints;
        this.sequenceInputs = sequenceInputs;
    }

    /** The buckets of a bundled artifact, or null when it was exported at one length. */
    public static Buckets of(Bundle bundle, Bundle.Artifact artifact) {
        return of(artifact.entry, artifact.name(), sequenceInputs(bundle.model()));
    }

    /**
     * From a manifest entry ({@code details.buckets}), or null when it lists no sequence lengths (a single-length
     * export, or buckets of another axis, e.g. batch sizes).
     */
    @SuppressWarnings("unchecked")
    public static Buckets of(Map<String, Object> entry, String artifact, List<String> sequenceInputs) {
        Map<String, Object> details = Json.obj(entry, "details");
        Map<String, Object> buckets = details != null ? Json.obj(details, "buckets") : null;
        List<Object> listed = buckets != null ? Json.list(buckets, "lengths") : null;
        if (listed == null || listed.isEmpty()) return null;
        String axis = Fields.text(buckets, "axis");
        if (axis != null && !axis.equals("sequence")) return null;
        List<Integer> lengths = new ArrayList<>();
        for (Object o : listed) {
            if (!(o instanceof Long) || (Long) o < 2) {
                throw new IllegalArgumentException(artifact + ": details.buckets.lengths holds " + o + ", not a sequence length");
            }
            lengths.add(((Long) o).intValue());
        }
        // A map names each length's method or signature (.pte, .tflite); a description ("one dynamic sequence
        // axis": ONNX, Ascend's profiles) means one entry point takes every length.
        Object points = buckets.get("entry_points");
        Map<Integer, String> names = points instanceof String ? null : new TreeMap<>();
        if (points instanceof Map) {
            for (Map.Entry<String, Object> e : ((Map<String, Object>) points).entrySet()) {
                names.put(Integer.parseInt(e.getKey().trim()), String.valueOf(e.getValue()));
            }
        }
        return new Buckets(artifact, lengths, names, sequenceInputs);
    }

    /** The inputs whose axis 1 is the sequence ("dynamic_axes": {"1": ...} in the model section), or null. */
    @SuppressWarnings("unchecked")
    static List<String> sequenceInputs(Map<String, Object> model) {
        List<Object> inputs = Json.list(model, "inputs");
        if (inputs == null) return null;
        List<String> names = new ArrayList<>();
        for (Object o : inputs) {
            if (!(o instanceof Map)) return null;
            Map<String, Object> input = (Map<String, Object>) o;
            Map<String, Object> axes = Json.obj(input, "dynamic_axes");
            if (axes != null && axes.containsKey(String.valueOf(SEQUENCE_AXIS))) names.add(String.valueOf(input.get("name")));
        }
        return names.isEmpty() ? null : names;
    }

    public List<Integer> lengths() {
        return lengths;
    }

    public int largest() {
        return lengths.get(lengths.size() - 1);
    }

    /** The entry point of a bucket: the manifest's name, else seq{N}; null where one entry point takes every length. */
    public String entryPoint(int bucket) {
        if (!lengths.contains(bucket)) throw new IllegalArgumentException(bucket + " is not a bucket of " + artifact + " " + lengths);
        if (entryPoints == null) return null;
        String name = entryPoints.get(bucket);
        return name != null ? name : String.format(ENTRY_POINT, bucket);
    }

    /** The smallest bucket holding {@code length} tokens; longer than the largest: {@link SequenceTooLongException}. */
    public int route(int length) {
        for (int bucket : lengths) {
            if (length <= bucket) return bucket;
        }
        StringBuilder all = new StringBuilder();
        for (int bucket : lengths) all.append(all.length() > 0 ? ", " : "").append(bucket);
        throw new SequenceTooLongException("a sequence of " + length + " tokens is longer than the largest bucket of " + artifact
                + ", " + largest() + " (buckets: " + all + "); tokenize with truncation at " + largest()
                + ", or re-export with a larger --seq-lens", length, largest());
    }

    /** The feed padded with zeros along the sequence axis to its bucket (inputs without that axis unchanged). */
    public Padded pad(Map<String, Tensor> feed) {
        Integer length = null;
        String first = null;
        for (Map.Entry<String, Tensor> e : feed.entrySet()) {
            if (!isSequence(e.getKey(), e.getValue())) continue;
            int n = (int) e.getValue().shape[SEQUENCE_AXIS];
            if (length == null) {
                length = n;
                first = e.getKey();
            } else if (n != length) {
                throw new IllegalArgumentException("input '" + e.getKey() + "' has " + n + " tokens, '" + first + "' has " + length + ": they must agree");
            }
        }
        if (length == null) throw new IllegalArgumentException(artifact + " has sequence buckets " + lengths + " but no input of the feed has a sequence axis");
        int bucket = route(length);
        Map<String, Tensor> out = new LinkedHashMap<>();
        for (Map.Entry<String, Tensor> e : feed.entrySet()) {
            out.put(e.getKey(), isSequence(e.getKey(), e.getValue()) ? padTo(e.getValue(), bucket) : e.getValue());
        }
        return new Padded(length, bucket, entryPoint(bucket), out);
    }

    private boolean isSequence(String name, Tensor t) {
        return t.shape.length > SEQUENCE_AXIS && (sequenceInputs == null || sequenceInputs.contains(name));
    }

    /** `t` with zeros appended along axis 1 up to `bucket` (C order: each outer row keeps its block, then zeros). */
    static Tensor padTo(Tensor t, int bucket) {
        int length = (int) t.shape[SEQUENCE_AXIS];
        if (length == bucket) return t;
        long outer = t.shape[0], inner = 1;
        for (int d = SEQUENCE_AXIS + 1; d < t.shape.length; d++) inner *= t.shape[d];
        long[] shape = t.shape.clone();
        shape[SEQUENCE_AXIS] = bucket;
        int block = (int) (length * inner), padded = (int) (bucket * inner), n = (int) (outer * padded);
        if (t.floats != null) {
            float[] out = new float[n];
            for (int o = 0; o < outer; o++) System.arraycopy(t.floats, o * block, out, o * padded, block);
            return Tensor.ofFloats(out, shape);
        }
        if (t.longs != null) {
            long[] out = new long[n];
            for (int o = 0; o < outer; o++) System.arraycopy(t.longs, o * block, out, o * padded, block);
            return Tensor.ofLongs(out, shape);
        }
        int[] out = new int[n];
        for (int o = 0; o < outer; o++) System.arraycopy(t.ints, o * block, out, o * padded, block);
        return Tensor.ofInts(out, shape);
    }

    /**
     * Outputs cut back to the request's length along the sequence axis: per-token outputs (rank 3 and up, e.g.
     * [1, tokens, hidden], whose axis 1 is the bucket) lose the padded positions; per-sentence outputs (logits,
     * pooled embeddings: rank 2) are returned as they are.
     */
    public static List<Tensor> cut(List<Tensor> outputs, Padded padded) {
        if (padded.length == padded.bucket) return outputs;
        List<Tensor> out = new ArrayList<>();
        for (Tensor t : outputs) out.add(t.shape.length > 2 && t.shape[SEQUENCE_AXIS] == padded.bucket ? cutTo(t, padded.length) : t);
        return out;
    }

    private static Tensor cutTo(Tensor t, int length) {
        long outer = t.shape[0], inner = 1;
        for (int d = SEQUENCE_AXIS + 1; d < t.shape.length; d++) inner *= t.shape[d];
        long[] shape = t.shape.clone();
        int bucket = (int) shape[SEQUENCE_AXIS];
        shape[SEQUENCE_AXIS] = length;
        int block = (int) (length * inner), full = (int) (bucket * inner);
        float[] out = new float[(int) (outer * block)];
        float[] src = t.asFloats();
        for (int o = 0; o < outer; o++) System.arraycopy(src, o * full, out, o * block, block);
        return Tensor.ofFloats(out, shape);
    }

    @Override
    public String toString() {
        return artifact + " buckets " + lengths;
    }
}
