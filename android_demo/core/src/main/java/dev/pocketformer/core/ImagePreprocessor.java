package dev.pocketformer.core;

import java.util.List;
import java.util.Map;

/**
 * models_zoo/data.py's preprocess_image (timm's eval transform) on an RGB image: resize the short side to
 * floor(min(size) / crop_pct) with Pillow's resampling (or, resize "stretch", each side to floor(its size /
 * crop_pct)), centre-crop to size, scale to [0, 1], normalise by mean/std, NCHW float32 with batch 1.
 *
 * <p>The resize is Pillow's (libImaging/Resample.c) re-implemented: separable convolution whose kernel support
 * widens by the scale when downscaling (the antialiasing), coefficients normalised per output pixel then turned
 * into 22-bit fixed point, a horizontal pass rounded to 8 bits, then a vertical pass. The result is Pillow's to
 * the byte on the same pixels, so the tensor equals the SDK's up to float rounding of the normalisation.
 */
public final class ImagePreprocessor {
    private static final int PRECISION_BITS = 32 - 8 - 2;

    /** An 8-bit RGB image, row-major, 3 bytes per pixel (decoded by the caller: Bitmap on Android, ImageIO here). */
    public static final class Rgb {
        public final int width, height;
        public final byte[] pixels;

        public Rgb(int width, int height, byte[] pixels) {
            if (width <= 0 || height <= 0 || pixels.length != width * height * 3) {
                throw new IllegalArgumentException("an RGB image of " + width + "x" + height + " needs " + (width * height * 3) + " bytes, got " + pixels.length);
            }
            this.width = width;
            this.height = height;
            this.pixels = pixels;
        }

        /** From packed 0xAARRGGBB ints (Android's Bitmap.getPixels, AWT's getRGB); alpha dropped as PIL's convert("RGB"). */
        public static Rgb fromArgb(int width, int height, int[] argb) {
            byte[] p = new byte[width * height * 3];
            for (int i = 0; i < width * height; i++) {
                p[3 * i] = (byte) (argb[i] >> 16);
                p[3 * i + 1] = (byte) (argb[i] >> 8);
                p[3 * i + 2] = (byte) argb[i];
            }
            return new Rgb(width, height, p);
        }
    }

    private interface Filter {
        double apply(double x);
    }

    private static double bicubic(double x) {
        final double a = -0.5;
        if (x < 0.0) x = -x;
        if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
        if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
        return 0.0;
    }

    private static double bilinear(double x) {
        if (x < 0.0) x = -x;
        return x < 1.0 ? 1.0 - x : 0.0;
    }

    /** Per output pixel: first input index, tap count, and the fixed-point taps (ksize per pixel). */
    private static final class Coeffs {
        int ksize;
        int[] bounds;
        int[] kk;
    }

    private static Coeffs precompute(int inSize, double in0, double in1, int outSize, Filter filter, double filterSupport) {
        double scale = (in1 - in0) / outSize;
        double filterscale = Math.max(scale, 1.0);
        double support = filterSupport * filterscale;
        int ksize = (int) Math.ceil(support) * 2 + 1;
        double[] kk = new double[outSize * ksize];
        int[] bounds = new int[outSize * 2];
        for (int xx = 0; xx < outSize; xx++) {
            double center = in0 + (xx + 0.5) * scale;
            double ww = 0.0;
            double ss = 1.0 / filterscale;
            int xmin = (int) (center - support + 0.5);  // C's truncation toward zero, as Pillow
            if (xmin < 0) xmin = 0;
            int xmax = (int) (center + support + 0.5);
            if (xmax > inSize) xmax = inSize;
            xmax -= xmin;
            for (int x = 0; x < xmax; x++) {
                double w = filter.apply((x + xmin - center + 0.5) * ss);
                kk[xx * ksize + x] = w;
                ww += w;
            }
            for (int x = 0; x < xmax; x++) {
                if (ww != 0.0) kk[xx * ksize + x] /= ww;
            }
            bounds[xx * 2] = xmin;
            bounds[xx * 2 + 1] = xmax;
        }
        Coeffs c = new Coeffs();
        c.ksize = ksize;
        c.bounds = bounds;
        c.kk = new int[kk.length];
        for (int i = 0; i < kk.length; i++) {
            c.kk[i] = (int) (kk[i] < 0 ? -0.5 + kk[i] * (1 << PRECISION_BITS) : 0.5 + kk[i] * (1 << PRECISION_BITS));
        }
        return c;
    }

    private static int clip8(int in) {
        int v = in >> PRECISION_BITS;
        return v < 0 ? 0 : Math.min(v, 255);
    }

    /** Pillow's Image.resize((newW, newH), BICUBIC or BILINEAR) of an RGB image. */
    public static Rgb resize(Rgb in, int newW, int newH, String interpolation) {
        Filter filter;
        double support;
        if ("bicubic".equals(interpolation)) {
            filter = ImagePreprocessor::bicubic;
            support = 2.0;
        } else if ("bilinear".equals(interpolation)) {
            filter = ImagePreprocessor::bilinear;
            support = 1.0;
        } else {
            throw new IllegalArgumentException("interpolation " + interpolation + " is not one the SDK uses (bicubic, bilinear)");
        }
        if (newW == in.width && newH == in.height) return in;
        boolean horizontal = newW != in.width, vertical = newH != in.height;
        Coeffs ch = precompute(in.width, 0, in.width, newW, filter, support);
        Coeffs cv = precompute(in.height, 0, in.height, newH, filter, support);
        int yFirst = cv.bounds[0];
        int yLast = cv.bounds[newH * 2 - 2] + cv.bounds[newH * 2 - 1];
        Rgb current = in;
        int[] vb = cv.bounds.clone();
        if (horizontal) {
            // only the rows the vertical pass reads are resampled
            for (int i = 0; i < newH; i++) vb[i * 2] -= yFirst;
            int rows = yLast - yFirst;
            byte[] out = new byte[newW * rows * 3];
            for (int y = 0; y < rows; y++) {
                int src = (y + yFirst) * in.width * 3;
                for (int xx = 0; xx < newW; xx++) {
                    int xmin = ch.bounds[xx * 2], xmax = ch.bounds[xx * 2 + 1], k = xx * ch.ksize;
                    int s0 = 1 << (PRECISION_BITS - 1), s1 = s0, s2 = s0;
                    for (int x = 0; x < xmax; x++) {
                        int p = src + (x + xmin) * 3, w = ch.kk[k + x];
                        s0 += (in.pixels[p] & 0xff) * w;
                        s1 += (in.pixels[p + 1] & 0xff) * w;
                        s2 += (in.pixels[p + 2] & 0xff) * w;
                    }
                    int o = (y * newW + xx) * 3;
                    out[o] = (byte) clip8(s0);
                    out[o + 1] = (byte) clip8(s1);
                    out[o + 2] = (byte) clip8(s2);
                }
            }
            current = new Rgb(newW, rows, out);
        }
        if (!vertical) return current;
        int w = current.width;
        byte[] out = new byte[w * newH * 3];
        for (int yy = 0; yy < newH; yy++) {
            int ymin = vb[yy * 2], ymax = vb[yy * 2 + 1], k = yy * cv.ksize;
            for (int xx = 0; xx < w; xx++) {
                int s0 = 1 << (PRECISION_BITS - 1), s1 = s0, s2 = s0;
                for (int y = 0; y < ymax; y++) {
                    int p = ((y + ymin) * w + xx) * 3, wt = cv.kk[k + y];
                    s0 += (current.pixels[p] & 0xff) * wt;
                    s1 += (current.pixels[p + 1] & 0xff) * wt;
                    s2 += (current.pixels[p + 2] & 0xff) * wt;
                }
                int o = (yy * w + xx) * 3;
                out[o] = (byte) clip8(s0);
                out[o + 1] = (byte) clip8(s1);
                out[o + 2] = (byte) clip8(s2);
            }
        }
        return new Rgb(w, newH, out);
    }

    /** Python's round() for the crop offsets: halves to even. */
    private static int pyRound(double v) {
        return (int) Math.rint(v);
    }

    /**
     * The block's resize mode (models_zoo.data.RESIZE_MODES): "short-side" (the key absent: bundles made before it
     * existed) keeps the aspect ratio, "stretch" resizes each side on its own. Any other value is refused, not run
     * as a short-side resize: a tensor of the right shape but the wrong pixels would pass unnoticed.
     */
    public static boolean stretches(Map<String, Object> prep) {
        Object mode = prep.get("resize");
        if (mode == null || "short-side".equals(mode)) return false;
        if ("stretch".equals(mode)) return true;
        throw new IllegalArgumentException("image preprocessing resize " + mode + " is not one of short-side, stretch (a newer export than this app?)");
    }

    /**
     * The block's rounding (models_zoo.data.ROUNDINGS): "round" (the key absent) rounds the short-side resize's long
     * side and the crop offsets as Python's round(); "floor" (a Hugging Face folder's processor) truncates both.
     * Any other value is refused.
     */
    public static boolean floors(Map<String, Object> prep) {
        Object mode = prep.get("rounding");
        if (mode == null || "round".equals(mode)) return false;
        if ("floor".equals(mode)) return true;
        throw new IllegalArgumentException("image preprocessing rounding " + mode + " is not one of round, floor (a newer export than this app?)");
    }

    private static int toPixels(double v, boolean floor) {
        return floor ? (int) Math.floor(v) : pyRound(v);
    }

    /** The model's input tensor [1, 3, H, W] from an RGB image and the bundle's image preprocessing block. */
    public static Tensor preprocess(Rgb image, Map<String, Object> prep) {
        List<Object> size = Json.list(prep, "size");
        List<Object> mean = Json.list(prep, "mean"), std = Json.list(prep, "std");
        Double cropPct = Json.num(prep, "crop_pct");
        if (size == null || size.size() != 2 || mean == null || std == null || cropPct == null || mean.size() != 3 || std.size() != 3) {
            throw new IllegalArgumentException("the image preprocessing needs size [h, w], crop_pct, and 3 mean and std values");
        }
        int height = ((Number) size.get(0)).intValue(), width = ((Number) size.get(1)).intValue();
        int w = image.width, h = image.height, newW, newH;
        boolean floor = floors(prep);
        if (stretches(prep)) {
            // both sides to their own size / crop_pct, the aspect ratio not kept (a ViT processor's size {height, width})
            newW = (int) Math.floor(width / cropPct);
            newH = (int) Math.floor(height / cropPct);
        } else {
            int scaleSize = (int) Math.floor(Math.min(height, width) / cropPct);
            if (w < h) {
                newW = scaleSize;
                newH = toPixels(scaleSize * (double) h / w, floor);
            } else {
                newW = toPixels(scaleSize * (double) w / h, floor);
                newH = scaleSize;
            }
        }
        String interpolation = Json.str(prep, "interpolation");
        Rgb resized = resize(image, newW, newH, interpolation == null ? "bicubic" : interpolation);
        int left = toPixels((newW - width) / 2.0, floor), top = toPixels((newH - height) / 2.0, floor);
        float[] m = new float[3], s = new float[3];
        for (int c = 0; c < 3; c++) {
            m[c] = ((Number) mean.get(c)).floatValue();
            s[c] = ((Number) std.get(c)).floatValue();
        }
        float[] out = new float[3 * height * width];
        for (int y = 0; y < height; y++) {
            for (int x = 0; x < width; x++) {
                int sy = y + top, sx = x + left;
                for (int c = 0; c < 3; c++) {
                    // PIL's crop pads outside the image with zeros
                    int v = sy >= 0 && sy < resized.height && sx >= 0 && sx < resized.width
                            ? resized.pixels[(sy * resized.width + sx) * 3 + c] & 0xff : 0;
                    // float32 throughout, in numpy's order: /255, then -mean, then /std
                    float f = (float) v / 255.0f;
                    out[(c * height + y) * width + x] = (f - m[c]) / s[c];
                }
            }
        }
        return Tensor.ofFloats(out, 1, 3, height, width);
    }
}
