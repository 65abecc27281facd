package dev.pocketformer.core;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * NumPy's .npy format (version 1.0 written; 1.0, 2.0 and 3.0 read): little-endian float32, int64 and int32,
 * C order, which is what a bundle holds (see "BUNDLE FORMAT v1"). Anything else is refused with its dtype named,
 * rather than read wrongly.
 */
public final class Npy {
    private static final byte[] MAGIC = {(byte) 0x93, 'N', 'U', 'M', 'P', 'Y'};
    private static final Pattern DESCR = Pattern.compile("'descr'\\s*:\\s*'([^']*)'");
    private static final Pattern FORTRAN = Pattern.compile("'fortran_order'\\s*:\\s*(True|False)");
    private static final Pattern SHAPE = Pattern.compile("'shape'\\s*:\\s*\\(([^)]*)\\)");

    private Npy() {}

    public static Tensor read(Path path) throws IOException {
        try {
            return read(Files.readAllBytes(path));
        } catch (IllegalArgumentException exc) {
            throw new IllegalArgumentException(path + ": " + exc.getMessage(), exc);
        }
    }

    public static Tensor read(byte[] bytes) {
        if (bytes.length < 10) throw new IllegalArgumentException("not a .npy file (too short)");
        for (int i = 0; i < MAGIC.length; i++) {
            if (bytes[i] != MAGIC[i]) throw new IllegalArgumentException("not a .npy file (no \\x93NUMPY magic)");
        }
        int major = bytes[6] & 0xff;
        ByteBuffer buf = ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN);
        int headerLen, offset;
        if (major == 1) {
            headerLen = buf.getShort(8) & 0xffff;
            offset = 10;
        } else if (major == 2 || major == 3) {
            headerLen = buf.getInt(8);
            offset = 12;
        } else {
            throw new IllegalArgumentException(".npy format version " + major + " is not known (1.0-3.0 are)");
        }
        if (offset + headerLen > bytes.length) throw new IllegalArgumentException("truncated .npy header");
        String header = new String(bytes, offset, headerLen, major == 3 ? StandardCharsets.UTF_8 : StandardCharsets.ISO_8859_1);
        Matcher d = DESCR.matcher(header), f = FORTRAN.matcher(header), s = SHAPE.matcher(header);
        if (!d.find() || !f.find() || !s.find()) throw new IllegalArgumentException("unreadable .npy header: " + header.trim());
        if (f.group(1).equals("True")) throw new IllegalArgumentException("Fortran-order .npy is not supported (bundles are C order)");
        String[] parts = s.group(1).split(",");
        int count = 0;
        for (String p : parts) if (!p.trim().isEmpty()) count++;
        long[] shape = new long[count];
        long n = 1;
        int k = 0;
        for (String p : parts) {
            if (p.trim().isEmpty()) continue;
            shape[k] = Long.parseLong(p.trim());
            n *= shape[k++];
        }
        String descr = d.group(1);
        int itemSize = descr.endsWith("8") ? 8 : 4;
        int start = offset + headerLen;
        if ((long) start + n * itemSize != bytes.length) {
            throw new IllegalArgumentException("data of " + (bytes.length - start) + " bytes, shape and dtype " + descr + " need " + n * itemSize);
        }
        buf.position(start);
        switch (descr) {
            case "<f4": {
                float[] data = new float[(int) n];
                buf.asFloatBuffer().get(data);
                return Tensor.ofFloats(data, shape);
            }
            case "<i8": {
                long[] data = new long[(int) n];
                buf.asLongBuffer().get(data);
                return Tensor.ofLongs(data, shape);
            }
            case "<i4": {
                int[] data = new int[(int) n];
                buf.asIntBuffer().get(data);
                return Tensor.ofInts(data, shape);
            }
            default:
                throw new IllegalArgumentException("dtype " + descr + " is not one a bundle holds (<f4, <i8, <i4)");
        }
    }

    /** Version 1.0 bytes, header padded so the data starts on a 64-byte boundary (numpy's own layout). */
    public static byte[] write(Tensor t) {
        String descr = t.floats != null ? "<f4" : t.longs != null ? "<i8" : "<i4";
        StringBuilder shape = new StringBuilder();
        for (int i = 0; i < t.shape.length; i++) {
            shape.append(t.shape[i]);
            if (t.shape.length == 1 || i < t.shape.length - 1) shape.append(", ");
        }
        String dims = t.shape.length == 1 ? shape.toString().trim() : shape.toString();
        StringBuilder header = new StringBuilder("{'descr': '" + descr + "', 'fortran_order': False, 'shape': (" + dims + "), }");
        while ((10 + header.length() + 1) % 64 != 0) header.append(' ');
        header.append('\n');
        byte[] head = header.toString().getBytes(StandardCharsets.ISO_8859_1);
        int item = t.longs != null ? 8 : 4;
        ByteBuffer buf = ByteBuffer.allocate(10 + head.length + t.size() * item).order(ByteOrder.LITTLE_ENDIAN);
        buf.put(MAGIC).put((byte) 1).put((byte) 0).putShort((short) head.length).put(head);
        if (t.floats != null) for (float v : t.floats) buf.putFloat(v);
        else if (t.longs != null) for (long v : t.longs) buf.putLong(v);
        else for (int v : t.ints) buf.putInt(v);
        return buf.array();
    }

    public static void write(Tensor t, Path path) throws IOException {
        AtomicFiles.write(path, write(t));
    }

    static byte[] readAll(java.io.InputStream in) throws IOException {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        byte[] block = new byte[1 << 16];
        for (int n; (n = in.read(block)) > 0; ) out.write(block, 0, n);
        return out.toByteArray();
    }
}
