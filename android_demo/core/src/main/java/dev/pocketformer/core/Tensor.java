package dev.pocketformer.core;

import java.util.Arrays;

/**
 * A dense C-order tensor as the bundle stores it: float32, int64 or int32 (the dtypes of .npy files in a
 * bundle), with its shape. Exactly one of the data arrays is set.
 */
public final class Tensor {
    public final String dtype;  // "float32", "int64" or "int32"
    public final long[] shape;
    public final float[] floats;
    public final long[] longs;
    public final int[] ints;

    private Tensor(String dtype, long[] shape, float[] floats, long[] longs, int[] ints) {
        this.dtype = dtype;
        this.shape = shape.clone();
        this.floats = floats;
        this.longs = longs;
        this.ints = ints;
        long n = 1;
        for (long d : shape) {
            if (d < 0) throw new IllegalArgumentException("negative dimension in shape " + Arrays.toString(shape));
            n *= d;
        }
        if (n != size()) {
            throw new IllegalArgumentException("shape " + Arrays.toString(shape) + " holds " + n + " elements, data has " + size());
        }
    }

    public static Tensor ofFloats(float[] data, long... shape) {
        return new Tensor("float32", shape, data, null, null);
    }

    public static Tensor ofLongs(long[] data, long... shape) {
        return new Tensor("int64", shape, null, data, null);
    }

    public static Tensor ofInts(int[] data, long... shape) {
        return new Tensor("int32", shape, null, null, data);
    }

    public int size() {
        return floats != null ? floats.length : longs != null ? longs.length : ints.length;
    }

    /** The values as doubles (for the self-check figures, computed in float64 as converters/parity.py does). */
    public double[] asDoubles() {
        double[] out = new double[size()];
        for (int i = 0; i < out.length; i++) {
            out[i] = floats != null ? floats[i] : longs != null ? longs[i] : ints[i];
        }
        return out;
    }

    /** Integer tensors as int64 (what token-id inputs hold); float tensors are refused. */
    public long[] asLongs() {
        if (floats != null) throw new IllegalStateException("a " + dtype + " tensor has no integer values");
        if (longs != null) return longs.clone();
        long[] out = new long[ints.length];
        for (int i = 0; i < ints.length; i++) out[i] = ints[i];
        return out;
    }

    /** Float tensors as float32; integer ones converted. */
    public float[] asFloats() {
        if (floats != null) return floats.clone();
        float[] out = new float[size()];
        for (int i = 0; i < out.length; i++) out[i] = longs != null ? longs[i] : ints[i];
        return out;
    }

    public String shapeString() {
        return Arrays.toString(shape);
    }
}
