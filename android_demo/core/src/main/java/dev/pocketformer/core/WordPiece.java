package dev.pocketformer.core;

import java.text.Normalizer;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;

/**
 * BERT's WordPiece tokenisation as the SDK runs it (models_zoo/data.py: Hugging Face tokenizers'
 * BertWordPieceTokenizer, then its own [CLS]/[SEP], truncation and padding), so the phone feeds the ids the
 * host verified with.
 *
 * <ul>
 *   <li>Normaliser (tokenizers' BertNormalizer): drop NUL, U+FFFD and control characters (Unicode categories C*,
 *       except tab, newline and carriage return), map whitespace to a space, put spaces around CJK ideographs,
 *       strip accents (NFD, drop non-spacing marks) when lower-casing unless configured otherwise, lower-case
 *       character by character (no final-sigma context, as Rust's char::to_lowercase).</li>
 *   <li>Pre-tokeniser (BertPreTokenizer): split on whitespace, and every punctuation character (ASCII punctuation
 *       or Unicode P*) is a token of its own.</li>
 *   <li>WordPiece: greedy longest match first, continuations prefixed "##", a word with no full cover (or over
 *       100 characters) is [UNK].</li>
 * </ul>
 */
public final class WordPiece {
    public static final int MAX_INPUT_CHARS_PER_WORD = 100;

    private final Map<String, Integer> vocab = new HashMap<>();
    private final boolean lowercase;
    private final boolean stripAccents;
    private final int unk, cls, sep;

    /** `vocabText`: one token per line, ids by line number (as tokenizers reads vocab.txt: right-trimmed). */
    public WordPiece(String vocabText, boolean lowercase, Boolean stripAccents) {
        String[] lines = vocabText.split("\n", -1);
        int n = vocabText.endsWith("\n") ? lines.length - 1 : lines.length;
        for (int i = 0; i < n; i++) vocab.put(rtrim(lines[i]), i);
        this.lowercase = lowercase;
        this.stripAccents = stripAccents != null ? stripAccents : lowercase;  // tokenizers: None follows lowercase
        this.unk = id("[UNK]");
        this.cls = id("[CLS]");
        this.sep = id("[SEP]");
    }

    private int id(String token) {
        Integer id = vocab.get(token);
        if (id == null) throw new IllegalArgumentException("the vocabulary has no " + token + " token: is it a BERT WordPiece vocab.txt?");
        return id;
    }

    private static String rtrim(String s) {
        int end = s.length();
        while (end > 0 && Character.isWhitespace(s.charAt(end - 1))) end--;
        return s.substring(0, end);
    }

    // -- character classes, as tokenizers' Rust code defines them ------------------------------------------------
    /** Rust's char::is_whitespace: the Unicode White_Space property. */
    static boolean isWhitespace(int c) {
        return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680
                || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
    }

    static boolean isControl(int c) {
        if (c == '\t' || c == '\n' || c == '\r') return false;
        int t = Character.getType(c);
        return t == Character.CONTROL || t == Character.FORMAT || t == Character.SURROGATE
                || t == Character.PRIVATE_USE || t == Character.UNASSIGNED;
    }

    static boolean isPunctuation(int c) {
        if (c < 0x80) return (c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) || (c >= 123 && c <= 126);
        int t = Character.getType(c);
        return t == Character.CONNECTOR_PUNCTUATION || t == Character.DASH_PUNCTUATION || t == Character.START_PUNCTUATION
                || t == Character.END_PUNCTUATION || t == Character.INITIAL_QUOTE_PUNCTUATION
                || t == Character.FINAL_QUOTE_PUNCTUATION || t == Character.OTHER_PUNCTUATION;
    }

    static boolean isChinese(int c) {
        return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF)
                || (c >= 0x2A700 && c <= 0x2B73F) || (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF)
                || (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
    }

    // -- the pipeline ------------------------------------------------------------------------------------------
    String normalize(String text) {
        StringBuilder sb = new StringBuilder();
        text.codePoints().forEach(c -> {
            if (c == 0 || c == 0xFFFD || isControl(c)) return;
            if (isWhitespace(c)) {
                sb.append(' ');
            } else if (isChinese(c)) {
                sb.append(' ').appendCodePoint(c).append(' ');
            } else {
                sb.appendCodePoint(c);
            }
        });
        String s = sb.toString();
        if (stripAccents) {
            StringBuilder out = new StringBuilder();
            Normalizer.normalize(s, Normalizer.Form.NFD).codePoints().forEach(c -> {
                if (Character.getType(c) != Character.NON_SPACING_MARK) out.appendCodePoint(c);
            });
            s = out.toString();
        }
        if (lowercase) {
            StringBuilder out = new StringBuilder();
            // per character: String.toLowerCase on a whole string would apply the final-sigma rule, Rust does not
            s.codePoints().forEach(c -> out.append(new String(Character.toChars(c)).toLowerCase(Locale.ROOT)));
            s = out.toString();
        }
        return s;
    }

    List<String> preTokenize(String text) {
        List<String> words = new ArrayList<>();
        StringBuilder word = new StringBuilder();
        text.codePoints().forEach(c -> {
            if (isWhitespace(c)) {
                flush(words, word);
            } else if (isPunctuation(c)) {
                flush(words, word);
                words.add(new String(Character.toChars(c)));
            } else {
                word.appendCodePoint(c);
            }
        });
        flush(words, word);
        return words;
    }

    private static void flush(List<String> words, StringBuilder word) {
        if (word.length() > 0) {
            words.add(word.toString());
            word.setLength(0);
        }
    }

    void wordPiece(String word, List<Integer> out) {
        int[] cps = word.codePoints().toArray();
        if (cps.length > MAX_INPUT_CHARS_PER_WORD) {
            out.add(unk);
            return;
        }
        List<Integer> pieces = new ArrayList<>();
        int start = 0;
        while (start < cps.length) {
            int end = cps.length;
            Integer found = null;
            while (start < end) {
                String sub = new String(cps, start, end - start);
                if (start > 0) sub = "##" + sub;
                Integer id = vocab.get(sub);
                if (id != null) {
                    found = id;
                    break;
                }
                end--;
            }
            if (found == null) {
                out.add(unk);
                return;
            }
            pieces.add(found);
            start = end;
        }
        out.addAll(pieces);
    }

    /** The ids of `text` without special tokens (tokenizer.encode(text, add_special_tokens=False).ids). */
    public List<Integer> encode(String text) {
        List<Integer> ids = new ArrayList<>();
        for (String word : preTokenize(normalize(text))) wordPiece(word, ids);
        return ids;
    }

    /**
     * The model's feed for one sentence or a pair (`pair` null: one sentence), as models_zoo/data.py's tokenize:
     * [CLS] a [SEP] (b [SEP]), the longer segment truncated first, padded with id 0, mask 0 and type 0 to seqLen.
     * Returns int64 tensors of shape [1, seqLen] keyed input_ids, attention_mask, token_type_ids.
     */
    public Map<String, Tensor> feed(String text, String pair, int seqLen) {
        return feed(text, pair, seqLen, true);
    }

    /**
     * As {@link #feed(String, String, int)}; with {@code pad} false the ids are truncated at seqLen but not padded
     * (tensors of shape [1, tokens]), as tokenize(..., pad=False) gives them: what an artifact with sequence
     * buckets takes ({@link Buckets} pads it to the smallest bucket that fits).
     */
    public Map<String, Tensor> feed(String text, String pair, int seqLen, boolean pad) {
        List<Integer> first = encode(text);
        List<Integer> ids = new ArrayList<>(), types = new ArrayList<>();
        if (pair == null) {
            ids.add(cls);
            ids.addAll(first.subList(0, Math.min(first.size(), Math.max(seqLen - 2, 0))));
            ids.add(sep);
            for (int i = 0; i < ids.size(); i++) types.add(0);
        } else {
            if (seqLen < 3) throw new IllegalArgumentException("a sentence pair needs a sequence length of at least 3, got " + seqLen);
            List<Integer> second = encode(pair);
            first = new ArrayList<>(first);
            second = new ArrayList<>(second);
            while (first.size() + second.size() > seqLen - 3) {
                if (first.size() >= second.size()) first.remove(first.size() - 1);
                else second.remove(second.size() - 1);
            }
            ids.add(cls);
            ids.addAll(first);
            ids.add(sep);
            ids.addAll(second);
            ids.add(sep);
            for (int i = 0; i < first.size() + 2; i++) types.add(0);
            for (int i = 0; i < second.size() + 1; i++) types.add(1);
        }
        int len = Math.min(ids.size(), seqLen);
        int width = pad ? seqLen : len;
        long[] idArr = new long[width], mask = new long[width], typeArr = new long[width];
        for (int i = 0; i < len; i++) {
            idArr[i] = ids.get(i);
            mask[i] = 1;
            typeArr[i] = types.get(i);
        }
        Map<String, Tensor> feed = new LinkedHashMap<>();
        feed.put("input_ids", Tensor.ofLongs(idArr, 1, width));
        feed.put("attention_mask", Tensor.ofLongs(mask, 1, width));
        feed.put("token_type_ids", Tensor.ofLongs(typeArr, 1, width));
        return feed;
    }

    /** The feed restricted to the model's inputs, in their order (the preprocessing's input_names). */
    public Map<String, Tensor> feed(String text, String pair, Map<String, Object> preprocessing) {
        return feed(text, pair, preprocessing, true);
    }

    /** As {@link #feed(String, String, Map)}, unpadded when {@code pad} is false (for a bucketed artifact). */
    public Map<String, Tensor> feed(String text, String pair, Map<String, Object> preprocessing, boolean pad) {
        int seqLen = (int) Fields.number(preprocessing, "seq_len", "the text preprocessing");
        Map<String, Tensor> all = feed(text, pair, seqLen, pad);
        List<Object> names = Json.list(preprocessing, "input_names");
        if (names == null) return all;
        Map<String, Tensor> out = new LinkedHashMap<>();
        for (Object n : names) {
            Tensor t = all.get(String.valueOf(n));
            if (t == null) throw new IllegalArgumentException("the tokenizer makes no input named " + n);
            out.put(String.valueOf(n), t);
        }
        return out;
    }

    /** From a bundle's preprocessing block ("lowercase", optional "strip_accents") and its vocabulary text. */
    public static WordPiece fromPreprocessing(String vocabText, Map<String, Object> preprocessing) {
        Object lower = preprocessing.get("lowercase");
        Object strip = preprocessing.get("strip_accents");
        return new WordPiece(vocabText, lower == null || Boolean.TRUE.equals(lower), strip instanceof Boolean ? (Boolean) strip : null);
    }
}
