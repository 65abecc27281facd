package dev.pocketformer.core;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import org.junit.Test;

/** The core's pieces on hand-made inputs (no fixtures needed). */
public class CoreUnitTest {
    @Test
    public void jsonRoundTripKeepsOrderTypesAndNonFinite() {
        String text = "{\"b\": 1, \"a\": [1.5, -2e-3, NaN, Infinity, -Infinity, null, true], \"s\": \"caf\\u00e9 \\\"q\\\"\\n\"}";
        Map<String, Object> m = Json.parseObject(text);
        assertEquals(Arrays.asList("b", "a", "s"), Arrays.asList(m.keySet().toArray()));
        assertEquals(1L, m.get("b"));
        List<Object> a = Json.list(m, "a");
        assertEquals(-0.002, (Double) a.get(1), 0.0);
        assertTrue(Double.isNaN((Double) a.get(2)));
        assertEquals("café \"q\"\n", m.get("s"));
        assertEquals(m.toString(), Json.parseObject(Json.write(m)).toString());
        try {
            Json.parse("{\"a\": 1,}");
            fail("a trailing comma was accepted");
        } catch (IllegalArgumentException expected) {
            assertTrue(expected.getMessage().contains("offset"));
        }
    }

    @Test
    public void npyRoundTripAndRefusals() {
        Tensor f = Tensor.ofFloats(new float[] {1.5f, -2f, 3.25f, 0f, 1e-7f, 7f}, 2, 3);
        Tensor back = Npy.read(Npy.write(f));
        assertArrayEquals(f.floats, back.floats, 0f);
        assertArrayEquals(new long[] {2, 3}, back.shape);
        Tensor l = Npy.read(Npy.write(Tensor.ofLongs(new long[] {101, 7592, 102}, 3)));
        assertArrayEquals(new long[] {101, 7592, 102}, l.longs);
        byte[] bytes = Npy.write(f);
        assertEquals(0, (bytes.length - 24) % 64);  // data starts on a 64-byte boundary, as numpy writes
        byte[] cut = Arrays.copyOf(bytes, bytes.length - 4);
        try {
            Npy.read(cut);
            fail("a truncated .npy was accepted");
        } catch (IllegalArgumentException expected) {
            assertTrue(expected.getMessage(), expected.getMessage().contains("need"));
        }
    }

    @Test
    public void percentilesAreNumpysLinearMethod() {
        // numpy.percentile([1, 2, 3, 4], 50) == 2.5; percentile(range(1, 11), 90) == 9.1; p99 of 1..10 == 9.91
        assertEquals(2.5, Stats.percentile(new double[] {1, 2, 3, 4}, 50), 0.0);
        double[] ten = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
        assertEquals(9.1, Stats.percentile(ten, 90), 1e-12);
        assertEquals(9.91, Stats.percentile(ten, 99), 1e-12);
        assertEquals(7.0, Stats.percentile(new double[] {7}, 99), 0.0);
        Stats.Latency lat = Stats.fromSeconds(new double[] {0.001, 0.003});
        assertEquals(2.0, lat.mean, 1e-12);
        assertEquals(1.0, lat.std, 1e-12);
    }

    @Test
    public void wordPieceGreedyLongestMatch() {
        String vocab = "[PAD]\n[UNK]\n[CLS]\n[SEP]\nun\n##aff\n##able\nhello\n,\nworld\n!\n";
        WordPiece wp = new WordPiece(vocab, true, null);
        assertEquals(Arrays.asList(4, 5, 6, 8, 7, 9, 10, 1), wp.encode("UnAffáble, Hello   WORLD! zzz"));
        Map<String, Tensor> feed = wp.feed("hello world", "unaffable", 7);
        assertArrayEquals(new long[] {2, 7, 9, 3, 4, 5, 3}, feed.get("input_ids").longs);  // longer segment cut first
        assertArrayEquals(new long[] {0, 0, 0, 0, 1, 1, 1}, feed.get("token_type_ids").longs);
        assertArrayEquals(new long[] {2, 7, 3, 0, 0}, wp.feed("hello", null, 5).get("input_ids").longs);
        assertArrayEquals(new long[] {1, 1, 1, 0, 0}, wp.feed("hello", null, 5).get("attention_mask").longs);
    }

    @Test
    public void formatsAreSniffedFromTheFileIdentifier() {
        assertEquals(ArtifactFormat.TFLITE, ArtifactFormat.sniff(new byte[] {0x1c, 0, 0, 0, 'T', 'F', 'L', '3'}, "m"));
        assertEquals(ArtifactFormat.PTE, ArtifactFormat.sniff(new byte[] {0x1c, 0, 0, 0, 'E', 'T', '1', '2'}, "m"));
        try {
            ArtifactFormat.sniff(new byte[] {8, 7, 18, 7, 'p', 'y', 't', 'o'}, "model.onnx");
            fail("an ONNX file was taken for a runtime's format");
        } catch (IllegalArgumentException expected) {
            assertTrue(expected.getMessage().contains("model.onnx"));
        }
    }

    @Test
    public void launchExtrasAreCheckedAndNamed() {
        Map<String, Object> extras = new HashMap<>();
        extras.put("bundle", "/sdcard/b");
        extras.put("runs", 20);
        extras.put("threads", "4");
        LaunchOptions o = LaunchOptions.fromExtras(extras);
        assertEquals(20, o.runs);
        assertEquals(4, o.threads);
        assertEquals(5, o.warmup);
        assertEquals("/sdcard/b.result.json", o.out);
        extras.put("runs", 0);
        try {
            LaunchOptions.fromExtras(extras);
            fail("runs=0 was accepted");
        } catch (IllegalArgumentException expected) {
            assertTrue(expected.getMessage(), expected.getMessage().contains("--ei runs must be in 1..100000, got 0"));
        }
        extras.put("runs", 3);
        extras.put("warmup", "two");
        try {
            LaunchOptions.fromExtras(extras);
            fail("a non-integer warmup was accepted");
        } catch (IllegalArgumentException expected) {
            assertTrue(expected.getMessage(), expected.getMessage().contains("warmup is not an integer: two (set it with --ei warmup)"));
        }
        extras.remove("warmup");
        try {
            Tolerance.fromJson(Json.parseObject("{\"rtol\": 0.1}"));
            fail("a tolerance without atol was accepted");
        } catch (IllegalArgumentException expected) {
            assertEquals("a tolerance needs atol", expected.getMessage());
        }
        extras.remove("bundle");
        try {
            LaunchOptions.fromExtras(extras);
            fail("a start without a bundle was accepted");
        } catch (IllegalArgumentException expected) {
            assertTrue(expected.getMessage().contains("bundle"));
        }
    }

    @Test
    public void pythonStyleNumbersInVerdicts() {
        assertEquals("0.0001", Parity.g(1e-4, 6));
        assertEquals("1e-05", Parity.g(1e-5, 6));
        assertEquals("0.25", Parity.g(0.25, 6));
        assertEquals("0.123", Parity.g(0.12345, 3));
        assertEquals("18", Parity.g(18.0, 6));
        assertEquals("inf", Parity.g(Double.POSITIVE_INFINITY, 3));
    }
}
