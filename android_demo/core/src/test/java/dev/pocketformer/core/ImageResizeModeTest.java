package dev.pocketformer.core;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.Map;
import org.junit.Test;

/**
 * The preprocessing block's resize mode on a hand-made non-square image (no fixtures; the pixel parity with the
 * SDK on real photos is ImageParityTest's, run with stretch fixtures by tests/test_hf_image_folders.py).
 */
public class ImageResizeModeTest {
    private static ImagePreprocessor.Rgb gradient(int w, int h) {
        byte[] p = new byte[w * h * 3];
        for (int y = 0; y < h; y++) {
            for (int x = 0; x < w; x++) {
                int o = (y * w + x) * 3;
                p[o] = (byte) (x * 255 / (w - 1));
                p[o + 1] = (byte) (y * 255 / (h - 1));
                p[o + 2] = (byte) ((x + y) % 256);
            }
        }
        return new ImagePreprocessor.Rgb(w, h, p);
    }

    private static Map<String, Object> prep(Object resize) {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("kind", "image");
        m.put("size", Arrays.asList((Object) 16L, 16L));
        m.put("crop_pct", 1.0);
        m.put("interpolation", "bilinear");
        m.put("mean", Arrays.asList((Object) 0.5, 0.5, 0.5));
        m.put("std", Arrays.asList((Object) 0.5, 0.5, 0.5));
        if (resize != null) m.put("resize", resize);
        return m;
    }

    @Test
    public void absentModeIsTheShortSideResizeAndStretchKeepsTheWholeImage() {
        ImagePreprocessor.Rgb wide = gradient(48, 16);
        Tensor old = ImagePreprocessor.preprocess(wide, prep(null));
        assertArrayEquals(old.floats, ImagePreprocessor.preprocess(wide, prep("short-side")).floats, 0f);
        Tensor stretched = ImagePreprocessor.preprocess(wide, prep("stretch"));
        assertArrayEquals(new long[] {1, 3, 16, 16}, stretched.shape);
        assertFalse(Arrays.equals(old.floats, stretched.floats));
        // red runs 0..255 across the whole width: the stretch keeps both ends, the short-side crop only the middle third
        float left = stretched.floats[0], right = stretched.floats[15];
        assertTrue(left < -0.9f && right > 0.9f);
        assertTrue(old.floats[0] > -0.5f && old.floats[15] < 0.5f);
    }

    @Test
    public void anUnknownModeIsRefused() {
        try {
            ImagePreprocessor.preprocess(gradient(8, 8), prep("squash"));
            fail("resize squash was accepted");
        } catch (IllegalArgumentException expected) {
            assertTrue(expected.getMessage(), expected.getMessage().contains("resize squash"));
        }
        assertEquals(false, ImagePreprocessor.stretches(prep(null)));
    }
}
