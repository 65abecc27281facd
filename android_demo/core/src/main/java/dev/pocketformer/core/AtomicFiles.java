package dev.pocketformer.core;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;

/** Whole-file writes through a temporary file and a rename, so a reader never sees half a result. */
public final class AtomicFiles {
    private AtomicFiles() {}

    public static void write(Path path, byte[] bytes) throws IOException {
        Path parent = path.toAbsolutePath().getParent();
        Files.createDirectories(parent);
        Path tmp = Files.createTempFile(parent, "." + path.getFileName(), ".tmp");
        try {
            Files.write(tmp, bytes);
            Files.move(tmp, path, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
        } finally {
            Files.deleteIfExists(tmp);
        }
    }

    public static void writeString(Path path, String text) throws IOException {
        write(path, text.getBytes(StandardCharsets.UTF_8));
    }
}
