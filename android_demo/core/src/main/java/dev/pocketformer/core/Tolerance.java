package dev.pocketformer.core;

import java.util.LinkedHashMap;
import java.util.Map;

/** A model's tolerance at one precision, as models_zoo/spec.py's Tolerance (null fields: no such bound). */
public final class Tolerance {
    public final double atol;
    public final Double rtol;
    public final Double minSqnrDb;
    public final Double minCosine;
    public final Double minTop1;

    public Tolerance(double atol, Double rtol, Double minSqnrDb, Double minCosine, Double minTop1) {
        this.atol = atol;
        this.rtol = rtol;
        this.minSqnrDb = minSqnrDb;
        this.minCosine = minCosine;
        this.minTop1 = minTop1;
    }

    public static Tolerance fromJson(Map<String, Object> t) {
        return new Tolerance(Fields.number(t, "atol", "a tolerance"), Fields.optionalNumber(t, "rtol"),
                Fields.optionalNumber(t, "min_sqnr_db"), Fields.optionalNumber(t, "min_cosine"), Fields.optionalNumber(t, "min_top1"));
    }

    public Map<String, Object> toJson() {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("atol", atol);
        m.put("min_sqnr_db", minSqnrDb);
        m.put("rtol", rtol);
        m.put("min_cosine", minCosine);
        m.put("min_top1", minTop1);
        return m;
    }
}
