package dev.pocketformer.core;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNotNull;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.junit.Test;

/** Bundles the Python side wrote: the good ones open and run through the app's flow, tampered ones are refused naming the file. */
public class BundleParityTest {
    @Test
    @SuppressWarnings("unchecked")
    public void tamperedBundlesAreRefusedNamingTheFile() throws Exception {
        Path dir = Fixtures.dir("bundles");
        Map<String, Object> seen = new LinkedHashMap<>();
        for (Object o : Fixtures.cases(dir)) {
            Map<String, Object> c = (Map<String, Object>) o;
            Path path = dir.resolve(Json.str(c, "path"));
            String refusedFile = Json.str(c, "refused_file");
            try (Bundle b = Bundle.open(path)) {
                assertTrue(b.artifacts().size() > 0);
                if (refusedFile != null) fail(c.get("name") + ": the bundle was accepted; expected a refusal naming " + refusedFile);
                seen.put(Json.str(c, "name"), "accepted");
            } catch (BundleException exc) {
                if (refusedFile == null) throw exc;
                assertEquals(c.get("name") + ": " + exc.getMessage(), refusedFile, exc.file);
                assertTrue(exc.getMessage(), exc.getMessage().contains(refusedFile));
                seen.put(Json.str(c, "name"), exc.getMessage());
            }
        }
        Fixtures.record("bundles.json", seen);
    }

    @Test
    @SuppressWarnings("unchecked")
    public void goodBundleRunsThroughTheAppFlow() throws Exception {
        Path dir = Fixtures.dir("bundles");
        Map<String, Object> docs = new LinkedHashMap<>();
        for (Object o : Fixtures.cases(dir)) {
            Map<String, Object> c = (Map<String, Object>) o;
            if (c.get("refused_file") != null) continue;
            Path cache = Files.createTempDirectory("pf-cache");
            try (Bundle b = Bundle.open(dir.resolve(Json.str(c, "path")))) {
                assertTrue(b.samples().size() > 1);
                if (b.preprocessing() != null && "text".equals(b.preprocessing().get("kind"))) {
                    // the bundle's raw sentences, tokenised here, are the tensors it feeds
                    WordPiece wp = WordPiece.fromPreprocessing(b.readText(b.vocab()), b.preprocessing());
                    List<String> sentences = b.rawSentences();
                    for (int i = 0; i < b.samples().size(); i++) {
                        String[] parts = sentences.get(i).split("\t", 2);
                        Map<String, Tensor> feed = wp.feed(parts[0], parts.length > 1 ? parts[1] : null, b.preprocessing());
                        Map<String, Tensor> bundled = b.inputs(b.samples().get(i));
                        for (String name : bundled.keySet()) {
                            org.junit.Assert.assertArrayEquals(name + " of sample " + i, bundled.get(name).asLongs(), feed.get(name).longs);
                        }
                    }
                }
                if (b.preprocessing() != null && "image".equals(b.preprocessing().get("kind"))) {
                    // the bundle's raw photos, preprocessed here, are the tensors it feeds (within 1/255)
                    List<String> photos = b.rawImages();
                    for (int i = 0; i < b.samples().size(); i++) {
                        Path photo = Files.createTempFile(cache, "photo", ".png");
                        Files.write(photo, b.bytes(photos.get(i)));
                        Tensor mine = ImagePreprocessor.preprocess(Fixtures.readImage(photo), b.preprocessing());
                        Tensor bundled = b.inputs(b.samples().get(i)).values().iterator().next();
                        org.junit.Assert.assertArrayEquals(bundled.shape, mine.shape);
                        for (int k = 0; k < mine.floats.length; k++) {
                            assertTrue("sample " + i + " element " + k, Math.abs(mine.floats[k] - bundled.floats[k]) <= 1.0 / 255 / 0.225 + 1e-6);
                        }
                    }
                }
                ReplayRunner.ENTRY_POINTS.clear();
                AppRun run = new AppRun();
                run.runs = 7;
                run.warmup = 2;
                run.threads = 2;
                run.device = "adb:STANDIN";
                Map<String, Object> doc = run.run(b, new ReplayRunner.Factory(b, Json.num(c, "noise") != null ? Json.num(c, "noise") : 0.0), cache);
                List<Object> results = (List<Object>) doc.get("results");
                assertNotNull(results);
                Map<String, Object> check = Json.obj((Map<String, Object>) results.get(0), "self_check");
                assertEquals(c.get("name") + " " + check, c.get("passes"), check.get("passed"));
                Map<String, Object> recorded = new LinkedHashMap<>(doc);
                recorded.put("replayed_entry_points", new java.util.ArrayList<Object>(ReplayRunner.ENTRY_POINTS));
                docs.put(Json.str(c, "name"), recorded);
            }
        }
        Fixtures.record("apprun.json", docs);
    }
}
