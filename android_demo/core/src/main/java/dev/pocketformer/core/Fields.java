package dev.pocketformer.core;

import java.util.Map;

/**
 * Typed values out of the maps the core reads (an adb start's intent extras, bundle and manifest JSON), with one
 * wording for a value that is missing, of the wrong type or out of range: the message names the key (or the
 * flag that sets it), so the app can write it into its result file and the host can show it.
 */
final class Fields {
    private Fields() {}

    /**
     * An integer in {@code min..max}, or {@code fallback} when absent. Integer and Long (intent extras, JSON
     * numbers) and decimal strings are taken; {@code flag} is how the user sets it, e.g. "--ei runs".
     */
    static int integer(Map<String, ?> map, String key, int fallback, int min, int max, String flag) {
        Object v = map.get(key);
        if (v == null) return fallback;
        long n;
        if (v instanceof Integer || v instanceof Long) {
            n = ((Number) v).longValue();
        } else if (v instanceof String) {
            try {
                n = Long.parseLong(((String) v).trim());
            } catch (NumberFormatException exc) {
                throw notInteger(key, v, flag);
            }
        } else {
            throw notInteger(key, v, flag);
        }
        if (n < min || n > max) throw new IllegalArgumentException(flag + " must be in " + min + ".." + max + ", got " + n);
        return (int) n;
    }

    private static IllegalArgumentException notInteger(String key, Object v, String flag) {
        return new IllegalArgumentException(key + " is not an integer: " + v + " (set it with " + flag + ")");
    }

    /** A number that must be there; {@code what} names the map, e.g. "a tolerance" (message: "a tolerance needs atol"). */
    static double number(Map<String, ?> map, String key, String what) {
        Double v = optionalNumber(map, key);
        if (v == null) throw new IllegalArgumentException(what + " needs " + key);
        return v;
    }

    /** A number as double; null when absent or JSON null. */
    static Double optionalNumber(Map<String, ?> map, String key) {
        Object v = map.get(key);
        return v instanceof Number ? ((Number) v).doubleValue() : null;
    }

    /** A non-empty string, or null when absent or empty. */
    static String text(Map<String, ?> map, String key) {
        Object v = map.get(key);
        return v instanceof String && !((String) v).isEmpty() ? (String) v : null;
    }
}
