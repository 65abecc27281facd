package dev.pocketformer.core;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.junit.Test;

/**
 * Sequence buckets (Buckets, BucketedRunner): hand-made entries, then the routing and padding device_runtime's
 * BucketedSession computed for real sentences (fixtures "buckets", written by tests/test_android_core.py).
 */
public class BucketsTest {
    /** A manifest entry as the .pte converter writes it for `export --seq-lens 8,16,32`. */
    static Map<String, Object> entry(String entryPoints) {
        return Json.parseObject("{\"file\": \"model.pte\", \"details\": {\"buckets\": {\"lengths\": [16, 8, 32], \"entry_points\": "
                + entryPoints + "}}}");
    }

    static Map<String, Tensor> tokens(int n) {
        long[] ids = new long[n], mask = new long[n], types = new long[n];
        for (int i = 0; i < n; i++) {
            ids[i] = 1000 + i;
            mask[i] = 1;
            types[i] = i % 2;
        }
        Map<String, Tensor> feed = new LinkedHashMap<>();
        feed.put("input_ids", Tensor.ofLongs(ids, 1, n));
        feed.put("attention_mask", Tensor.ofLongs(mask, 1, n));
        feed.put("token_type_ids", Tensor.ofLongs(types, 1, n));
        return feed;
    }

    @Test
    public void requestsArePaddedToTheSmallestBucketAndItsEntryPoint() {
        Buckets b = Buckets.of(entry("{\"8\": \"seq8\", \"16\": \"seq16\", \"32\": \"seq32\"}"), "model.pte", null);
        assertEquals(Arrays.asList(8, 16, 32), b.lengths());
        assertEquals(Arrays.asList(8, 8, 16, 16, 32), Arrays.asList(b.route(2), b.route(8), b.route(9), b.route(16), b.route(32)));
        Buckets.Padded p = b.pad(tokens(11));
        assertEquals(11, p.length);
        assertEquals(16, p.bucket);
        assertEquals("seq16", p.entryPoint);
        assertArrayEquals(new long[] {1, 16}, p.feed.get("input_ids").shape);
        long[] ids = p.feed.get("input_ids").longs, mask = p.feed.get("attention_mask").longs, types = p.feed.get("token_type_ids").longs;
        for (int i = 0; i < 16; i++) {
            assertEquals(i < 11 ? 1000 + i : 0, ids[i]);  // [PAD] = 0
            assertEquals(i < 11 ? 1 : 0, mask[i]);
            assertEquals(i < 11 ? i % 2 : 0, types[i]);
        }
        Buckets.Padded exact = b.pad(tokens(8));
        assertEquals(8, exact.bucket);
        assertArrayEquals(tokens(8).get("input_ids").longs, exact.feed.get("input_ids").longs);  // nothing to pad
    }

    @Test
    public void aRequestLongerThanTheLargestBucketIsRefusedNamingIt() {
        Buckets b = Buckets.of(entry("{\"8\": \"seq8\", \"16\": \"seq16\", \"32\": \"seq32\"}"), "model.pte", null);
        try {
            b.pad(tokens(33));
            fail("33 tokens were accepted by buckets up to 32");
        } catch (Buckets.SequenceTooLongException expected) {
            assertEquals(32, expected.largest);
            assertTrue(expected.getMessage(), expected.getMessage().contains("33 tokens is longer than the largest bucket of model.pte, 32"));
        }
        Map<String, Tensor> ragged = tokens(5);
        ragged.put("attention_mask", Tensor.ofLongs(new long[6], 1, 6));
        try {
            b.pad(ragged);
            fail("inputs of different lengths were accepted");
        } catch (IllegalArgumentException expected) {
            assertTrue(expected.getMessage(), expected.getMessage().contains("must agree"));
        }
    }

    @Test
    public void entryPointsDefaultToSeqNAndOneDynamicAxisHasNone() {
        assertEquals("seq8", Buckets.of(entry("{}"), "m", null).entryPoint(8));  // no names: seq{N}
        assertEquals("seq32", Buckets.of(entry("{\"8\": \"seq8\"}"), "m", null).entryPoint(32));
        assertNull(Buckets.of(entry("\"one dynamic sequence axis\""), "m.onnx", null).entryPoint(16));
        assertNull(Buckets.of(Json.parseObject("{\"details\": {}}"), "m", null));  // one length: no buckets
        assertNull(Buckets.of(Json.parseObject("{\"details\": {\"buckets\": {\"axis\": \"batch\", \"lengths\": [1, 2]}}}"), "m", null));
        // only the inputs with a sequence axis are padded
        Buckets named = Buckets.of(entry("{}"), "m", Arrays.asList("input_ids"));
        Map<String, Tensor> feed = tokens(3);
        Buckets.Padded p = named.pad(feed);
        assertEquals(8, p.feed.get("input_ids").shape[1]);
        assertEquals(3, p.feed.get("attention_mask").shape[1]);
    }

    @Test
    public void theBucketedRunnerRunsTheEntryPointAndCutsPerTokenOutputs() throws Exception {
        List<String> asked = new ArrayList<>();
        ModelRunner fake = new ModelRunner() {
            @Override
            public List<Tensor> run(Map<String, Tensor> inputs) {
                throw new AssertionError("the default entry point was run");
            }

            @Override
            public List<Tensor> run(String entryPoint, Map<String, Tensor> inputs) {
                asked.add(entryPoint);
                int n = (int) inputs.get("input_ids").shape[1];
                float[] hidden = new float[n * 2];
                for (int i = 0; i < hidden.length; i++) hidden[i] = i;
                return Arrays.asList(Tensor.ofFloats(new float[] {n, -n}, 1, 2), Tensor.ofFloats(hidden, 1, n, 2));
            }

            @Override
            public String backend() {
                return "fake";
            }

            @Override
            public void close() {}
        };
        try (BucketedRunner runner = new BucketedRunner(fake, Buckets.of(entry("{}"), "m", null))) {
            List<Tensor> out = runner.run(tokens(5));
            assertEquals(Arrays.asList("seq8"), asked);
            assertArrayEquals(new float[] {8, -8}, out.get(0).floats, 0f);  // per-sentence: as the bucket computed it
            assertArrayEquals(new long[] {1, 5, 2}, out.get(1).shape);     // per-token: cut back to the request
            assertArrayEquals(new float[] {0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, out.get(1).floats, 0f);
            runner.run(tokens(20));
            assertEquals(Arrays.asList(8, 32), runner.routed());
            assertTrue(runner.backend().contains("[8, 16, 32]"));
        }
        try {
            fake.run(null, tokens(2));  // null is the default entry point: this fake refuses it
            fail("the default entry point ran");
        } catch (AssertionError expected) {
            // as intended
        }
    }

    /** What BucketedSession did with real sentences, tokenised unpadded: the same bucket, entry point and arrays. */
    @Test
    @SuppressWarnings("unchecked")
    public void routingAndPaddingMatchBucketedSession() throws Exception {
        Path dir = Fixtures.dir("buckets");
        Map<String, Object> doc = Fixtures.json(dir.resolve("cases.json"));
        Buckets b = Buckets.of(Json.obj(doc, "entry"), "model.pte", Buckets.sequenceInputs(Json.obj(doc, "model")));
        WordPiece wp = WordPiece.fromPreprocessing(new String(java.nio.file.Files.readAllBytes(dir.resolve("vocab.txt")), "UTF-8"),
                Json.obj(doc, "preprocessing"));
        List<Object> seen = new ArrayList<>();
        for (Object o : Json.list(doc, "cases")) {
            Map<String, Object> c = (Map<String, Object>) o;
            int maxLen = (int) (long) (Long) c.get("max_len");
            Map<String, Tensor> feed = wp.feed(Json.str(c, "text"), Json.str(c, "pair"), maxLen, false);
            Map<String, Object> request = Json.obj(c, "request");
            for (String name : request.keySet()) {  // the tokenizer's unpadded feed is tokenize(..., pad=False)
                assertEquals(Json.str(c, "text") + " " + name, request.get(name).toString(), toList(feed.get(name).longs).toString());
            }
            Map<String, Object> mine = new LinkedHashMap<>();
            try {
                Buckets.Padded p = b.pad(feed);
                mine.put("bucket", p.bucket);
                mine.put("entry_point", p.entryPoint);
                Map<String, Object> arrays = new LinkedHashMap<>();
                for (String name : p.feed.keySet()) arrays.put(name, toList(p.feed.get(name).longs));
                mine.put("padded", arrays);
                assertEquals(Json.str(c, "text"), ((Number) c.get("bucket")).intValue(), p.bucket);
                assertEquals(c.get("entry_point"), p.entryPoint);
                assertEquals(Json.obj(c, "padded").toString(), arrays.toString());
            } catch (Buckets.SequenceTooLongException exc) {
                assertEquals(Json.str(c, "text") + ": refused here, routed by Python", "SequenceTooLongError", c.get("error"));
                mine.put("error", exc.getMessage());
            }
            seen.add(mine);
        }
        Fixtures.record("buckets.json", seen);
    }

    private static List<Object> toList(long[] values) {
        List<Object> out = new ArrayList<>();
        for (long v : values) out.add(v);
        return out;
    }
}
