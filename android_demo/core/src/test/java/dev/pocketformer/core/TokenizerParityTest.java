package dev.pocketformer.core;

import static org.junit.Assert.assertArrayEquals;

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.junit.Test;

/** The same sentences give the SDK's token ids, masks and types (fixtures: models_zoo.data.tokenize). */
public class TokenizerParityTest {
    @Test
    @SuppressWarnings("unchecked")
    public void sameSentencesSameIds() throws Exception {
        Path dir = Fixtures.dir("tokenizer");
        String vocab = new String(Files.readAllBytes(dir.resolve("vocab.txt")), StandardCharsets.UTF_8);
        Map<String, WordPiece> tokenizers = new LinkedHashMap<>();
        List<Object> got = new ArrayList<>();
        for (Object o : Fixtures.cases(dir)) {
            Map<String, Object> c = (Map<String, Object>) o;
            Map<String, Object> prep = Json.obj(c, "prep");
            String key = String.valueOf(prep.get("lowercase")) + prep.get("strip_accents");
            WordPiece wp = tokenizers.computeIfAbsent(key, k -> WordPiece.fromPreprocessing(vocab, prep));
            Map<String, Tensor> feed = wp.feed(Json.str(c, "text"), Json.str(c, "pair"), prep);
            Map<String, Object> expected = Json.obj(c, "expected");
            Map<String, Object> mine = new LinkedHashMap<>();
            for (Map.Entry<String, Object> e : expected.entrySet()) {
                List<Object> want = (List<Object>) e.getValue();
                long[] w = new long[want.size()];
                for (int i = 0; i < w.length; i++) w[i] = (Long) want.get(i);
                long[] g = feed.get(e.getKey()).longs;
                List<Object> gl = new ArrayList<>();
                for (long v : g) gl.add(v);
                mine.put(e.getKey(), gl);
                assertArrayEquals(e.getKey() + " of " + c.get("text") + " / " + c.get("pair"), w, g);
            }
            got.add(mine);
        }
        Map<String, Object> out = new LinkedHashMap<>();
        out.put("cases", got);
        Fixtures.record("tokenizer.json", out);
    }
}
