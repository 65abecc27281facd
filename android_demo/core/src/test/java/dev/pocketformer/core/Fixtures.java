package dev.pocketformer.core;

import static org.junit.Assume.assumeTrue;

import java.awt.image.BufferedImage;
import java.awt.image.IndexColorModel;
import java.awt.image.Raster;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.List;
import java.util.Map;
import javax.imageio.ImageIO;

/**
 * The fixtures the Python side writes during the test (tests/test_android_core.py), found through the system
 * property pocketformer.fixtures, and the folder (pocketformer.out) where these tests leave what they computed,
 * so the Python side checks the figures too. Without the property the parity tests are skipped (assumption).
 */
final class Fixtures {
    private Fixtures() {}

    static Path dir(String part) {
        String root = System.getProperty("pocketformer.fixtures");
        assumeTrue("no pocketformer.fixtures: run through tests/test_android_core.py", root != null);
        Path dir = Paths.get(root, part);
        assumeTrue("no fixture folder " + dir, Files.isDirectory(dir));
        return dir;
    }

    static Map<String, Object> json(Path path) throws IOException {
        return Json.parseObject(new String(Files.readAllBytes(path), StandardCharsets.UTF_8));
    }

    @SuppressWarnings("unchecked")
    static List<Object> cases(Path dir) throws IOException {
        return (List<Object>) json(dir.resolve("cases.json")).get("cases");
    }

    static void record(String name, Object value) throws IOException {
        String out = System.getProperty("pocketformer.out");
        if (out != null) AtomicFiles.writeString(Paths.get(out, name), Json.write(value));
    }

    /**
     * A photo as PIL's convert("RGB") sees it: grey replicated, alpha dropped (not composited), palettes
     * looked up. Samples are read from the raster: BufferedImage.getRGB would colour-convert grey images.
     */
    static ImagePreprocessor.Rgb readImage(Path path) throws IOException {
        BufferedImage img = ImageIO.read(path.toFile());
        if (img == null) throw new IOException("ImageIO cannot decode " + path);
        int w = img.getWidth(), h = img.getHeight();
        byte[] px = new byte[w * h * 3];
        Raster raster = img.getRaster();
        int bands = raster.getNumBands();
        boolean palette = img.getColorModel() instanceof IndexColorModel;
        for (int y = 0; y < h; y++) {
            for (int x = 0; x < w; x++) {
                int o = (y * w + x) * 3;
                if (palette) {
                    int argb = img.getRGB(x, y);
                    px[o] = (byte) (argb >> 16);
                    px[o + 1] = (byte) (argb >> 8);
                    px[o + 2] = (byte) argb;
                } else if (bands < 3) {
                    byte v = (byte) raster.getSample(x, y, 0);
                    px[o] = px[o + 1] = px[o + 2] = v;
                } else {
                    for (int c = 0; c < 3; c++) px[o + c] = (byte) raster.getSample(x, y, c);
                }
            }
        }
        return new ImagePreprocessor.Rgb(w, h, px);
    }
}
