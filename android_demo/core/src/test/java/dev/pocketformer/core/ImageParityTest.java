package dev.pocketformer.core;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertTrue;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.junit.Test;

/** The same photos give the SDK's input tensor within 1/255 per element (fixtures: models_zoo.data.preprocess_image). */
public class ImageParityTest {
    @Test
    @SuppressWarnings("unchecked")
    public void samePhotosSameTensors() throws Exception {
        Path dir = Fixtures.dir("images");
        List<Object> got = new ArrayList<>();
        for (Object o : Fixtures.cases(dir)) {
            Map<String, Object> c = (Map<String, Object>) o;
            Tensor expected = Npy.read(dir.resolve(Json.str(c, "expected")));
            Tensor mine = ImagePreprocessor.preprocess(Fixtures.readImage(dir.resolve(Json.str(c, "photo"))), Json.obj(c, "prep"));
            assertArrayEquals(expected.shape, mine.shape);
            double max = 0;
            int exact = 0;
            for (int i = 0; i < mine.floats.length; i++) {
                double d = Math.abs(mine.floats[i] - expected.floats[i]);
                max = Math.max(max, d);
                if (d == 0) exact++;
            }
            // 1/255 of the [0, 1] range, in normalised units: divided by the smallest std
            double minStd = 1;
            for (Object s : Json.list(Json.obj(c, "prep"), "std")) minStd = Math.min(minStd, ((Number) s).doubleValue());
            assertTrue(c.get("photo") + ": max abs difference " + max + " > 1/255 / std", max <= 1.0 / 255 / minStd + 1e-6);
            Map<String, Object> r = new LinkedHashMap<>();
            r.put("photo", c.get("photo"));
            r.put("max_abs_diff", max);
            r.put("exact_fraction", (double) exact / mine.floats.length);
            got.add(r);
            if (c.containsKey("save")) Npy.write(mine, java.nio.file.Paths.get(System.getProperty("pocketformer.out"), Json.str(c, "save")));
        }
        Map<String, Object> out = new LinkedHashMap<>();
        out.put("cases", got);
        Fixtures.record("images.json", out);
    }
}
