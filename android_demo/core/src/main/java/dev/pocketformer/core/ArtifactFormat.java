package dev.pocketformer.core;

/**
 * An artifact's format from its first bytes, as device_runtime sniffs it: a flatbuffer's file identifier at
 * bytes 4..8 is "TFL3" for LiteRT (.tflite) and "ET" plus a two-digit schema version for ExecuTorch (.pte).
 */
public enum ArtifactFormat {
    PTE, TFLITE;

    public static ArtifactFormat sniff(byte[] head, String name) {
        if (head.length >= 8) {
            if (head[4] == 'T' && head[5] == 'F' && head[6] == 'L' && head[7] == '3') return TFLITE;
            if (head[4] == 'E' && head[5] == 'T' && Character.isDigit(head[6]) && Character.isDigit(head[7])) return PTE;
        }
        throw new IllegalArgumentException(name + " is neither an ExecuTorch .pte nor a LiteRT .tflite (file identifier "
                + (head.length >= 8 ? "'" + new String(head, 4, 4, java.nio.charset.StandardCharsets.ISO_8859_1) + "'" : "missing")
                + "): the app runs those two; bench other formats with `pocketformer bench --device`");
    }

    /** The `format` string of the SDK's documents. */
    public String sdkName() {
        return this == PTE ? "pte" : "tflite";
    }
}
