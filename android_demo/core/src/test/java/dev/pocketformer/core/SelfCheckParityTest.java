package dev.pocketformer.core;

import static org.junit.Assert.assertEquals;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.junit.Test;

/** Self-check figures and verdicts as converters/parity.py gives them, on the same outputs. */
public class SelfCheckParityTest {
    @SuppressWarnings("unchecked")
    private static List<List<Tensor>> outputs(Path dir, Object listed) throws Exception {
        if (listed == null) return null;
        List<List<Tensor>> out = new ArrayList<>();
        for (Object sample : (List<Object>) listed) {
            List<Tensor> s = new ArrayList<>();
            for (Object file : (List<Object>) sample) s.add(Npy.read(dir.resolve(String.valueOf(file))));
            out.add(s);
        }
        return out;
    }

    @Test
    @SuppressWarnings("unchecked")
    public void sameOutputsSameVerdicts() throws Exception {
        Path dir = Fixtures.dir("selfcheck");
        Map<String, Object> results = new LinkedHashMap<>();
        for (Object o : Fixtures.cases(dir)) {
            Map<String, Object> c = (Map<String, Object>) o;
            List<String> names = new ArrayList<>();
            for (Object n : Json.list(c, "output_names")) names.add(String.valueOf(n));
            Map<String, Object> verdict = SelfCheck.judge(outputs(dir, c.get("expected")), outputs(dir, c.get("fp32")),
                    outputs(dir, c.get("actual")), Boolean.TRUE.equals(c.get("classifier")), names,
                    Tolerance.fromJson(Json.obj(c, "tolerance")));
            Map<String, Object> python = Json.obj(c, "python");
            assertEquals(c.get("name") + ": verdict", python.get("passed"), verdict.get("passed"));
            assertEquals(c.get("name") + ": reasons", python.get("failures"), verdict.get("failures"));
            results.put(Json.str(c, "name"), verdict);
        }
        Fixtures.record("selfcheck.json", results);
    }
}
