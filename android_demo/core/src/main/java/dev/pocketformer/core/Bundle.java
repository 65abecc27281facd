package dev.pocketformer.core;

import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.ArrayList;
import java.util.Collections;
import java.util.Enumeration;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeSet;
import java.util.stream.Stream;
import java.util.zip.ZipEntry;
import java.util.zip.ZipFile;

/**
 * A Pocketformer bundle (BUNDLE FORMAT v1), opened from a folder or a zip of the same tree.
 *
 * <p>{@link #open} checks, before anything can run: bundle.json's schema and schema_version (a newer version is
 * refused, naming it), report.json's schema and version (as device_runtime/manifest.py), then every line of
 * SHA256SUMS against the bytes, that no file is missing and none is unlisted, and that each artifact's bytes
 * are the ones its manifest entry recorded. Every refusal names the file.
 */
public final class Bundle implements AutoCloseable {
    public static final String SCHEMA = "pocketformer.bundle";
    public static final int SCHEMA_VERSION = 1;
    public static final String MANIFEST_SCHEMA = "pocketformer.manifest";
    public static final int MANIFEST_SCHEMA_VERSION = 1;
    public static final String SUMS = "SHA256SUMS";

    /** One bundled artifact: its file, its manifest entry, where its expected outputs are, its tolerance. */
    public static final class Artifact {
        public final String file;           // "artifacts/model.tflite"
        public final Map<String, Object> entry;
        public final String expected;       // "expected/model.tflite"
        public final Tolerance tolerance;

        Artifact(String file, Map<String, Object> entry, String expected, Tolerance tolerance) {
            this.file = file;
            this.entry = entry;
            this.expected = expected;
            this.tolerance = tolerance;
        }

        public String precision() {
            return Json.str(entry, "precision");
        }

        public String name() {
            return file.substring(file.lastIndexOf('/') + 1);
        }
    }

    /** One real sample: its id, where it came from, and the tensors fed for it. */
    public static final class Sample {
        public final String id;
        public final String source;
        public final Map<String, String> inputs;  // input name -> "inputs/000/input_ids.npy"

        Sample(String id, String source, Map<String, String> inputs) {
            this.id = id;
            this.source = source;
            this.inputs = inputs;
        }
    }

    private final String label;
    private final Path folder;   // null for a zip
    private final ZipFile zip;   // null for a folder
    private final Map<String, Object> json;
    private final Map<String, Object> manifest;
    private final List<Artifact> artifacts = new ArrayList<>();
    private final List<Sample> samples = new ArrayList<>();
    private Map<String, String> sums;

    private Bundle(String label, Path folder, ZipFile zip) throws BundleException {
        this.label = label;
        this.folder = folder;
        this.zip = zip;
        this.json = readJson("bundle.json");
        checkSchema("bundle.json", json, SCHEMA, SCHEMA_VERSION, "update the app to one that reads it");
        verifyChecksums();
        this.manifest = readJson("report.json");
        checkSchema("report.json", manifest, MANIFEST_SCHEMA, MANIFEST_SCHEMA_VERSION, "re-bundle with this Pocketformer");
        parse();
    }

    /** Opens a bundle folder or .zip and verifies it; nothing in it is used before this returns. */
    public static Bundle open(Path path) throws BundleException {
        if (Files.isDirectory(path)) return new Bundle(path.toString(), path, null);
        if (!Files.isRegularFile(path)) throw new BundleException(null, "no bundle at " + path + " (push one with adb, or pick a folder or .zip)");
        ZipFile zip;
        try {
            zip = new ZipFile(path.toFile());
        } catch (IOException exc) {
            throw new BundleException(null, path + " is neither a bundle folder nor a readable zip: " + exc.getMessage());
        }
        try {
            return new Bundle(path.toString(), null, zip);
        } catch (BundleException | RuntimeException exc) {
            try {
                zip.close();
            } catch (IOException ignored) {
                // the refusal is the error worth reporting
            }
            throw exc;
        }
    }

    @Override
    public void close() throws IOException {
        if (zip != null) zip.close();
    }

    // -- contents ------------------------------------------------------------------------------------------
    public Map<String, Object> json() {
        return json;
    }

    public Map<String, Object> manifest() {
        return manifest;
    }

    /** The manifest's model block (name, family, task, inputs, outputs, preprocessing). */
    public Map<String, Object> model() {
        Map<String, Object> model = Json.obj(json, "model");
        return model != null ? model : Collections.emptyMap();
    }

    public Map<String, Object> preprocessing() {
        return Json.obj(model(), "preprocessing");
    }

    public String task() {
        return Json.str(model(), "task");
    }

    public boolean isClassifier() {
        String task = task();
        return task != null && task.endsWith("classification");
    }

    public List<String> outputNames() {
        List<String> names = new ArrayList<>();
        List<Object> outputs = Json.list(model(), "outputs");
        if (outputs != null) {
            for (Object o : outputs) names.add(o instanceof Map ? String.valueOf(((Map<?, ?>) o).get("name")) : String.valueOf(o));
        }
        return names;
    }

    public List<String> inputNames() {
        List<String> names = new ArrayList<>();
        List<Object> inputs = Json.list(model(), "inputs");
        if (inputs != null) {
            for (Object o : inputs) names.add(o instanceof Map ? String.valueOf(((Map<?, ?>) o).get("name")) : String.valueOf(o));
        }
        return names;
    }

    public List<Artifact> artifacts() {
        return Collections.unmodifiableList(artifacts);
    }

    public List<Sample> samples() {
        return Collections.unmodifiableList(samples);
    }

    public List<String> labels() throws BundleException {
        String file = Json.str(json, "labels");
        if (file == null || !exists(file)) return Collections.emptyList();
        List<String> labels = new ArrayList<>();
        for (String line : readText(file).split("\n", -1)) labels.add(line.replace("\r", ""));
        while (!labels.isEmpty() && labels.get(labels.size() - 1).isEmpty()) labels.remove(labels.size() - 1);
        return labels;
    }

    /** The bundle-relative path of the vocabulary (text models), or null. */
    public String vocab() {
        return Json.str(json, "vocab");
    }

    /** The raw photos (image models), bundle-relative. */
    public List<String> rawImages() {
        List<String> out = new ArrayList<>();
        Map<String, Object> raw = Json.obj(json, "raw");
        List<Object> images = raw != null ? Json.list(raw, "images") : null;
        if (images != null) for (Object o : images) out.add(String.valueOf(o));
        return out;
    }

    /** The raw sentences (text models), one per line, or an empty list. */
    public List<String> rawSentences() throws BundleException {
        Map<String, Object> raw = Json.obj(json, "raw");
        String file = raw != null ? Json.str(raw, "sentences") : null;
        List<String> out = new ArrayList<>();
        if (file == null) return out;
        for (String line : readText(file).split("\n")) {
            if (!line.isEmpty()) out.add(line);
        }
        return out;
    }

    public Tensor tensor(String relative) throws BundleException {
        try {
            return Npy.read(bytes(relative));
        } catch (IllegalArgumentException exc) {
            throw new BundleException(relative, relative + " in " + label + ": " + exc.getMessage());
        }
    }

    /** The inputs of one sample, in the model's input order. */
    public Map<String, Tensor> inputs(Sample sample) throws BundleException {
        Map<String, Tensor> feed = new LinkedHashMap<>();
        for (Map.Entry<String, String> e : sample.inputs.entrySet()) feed.put(e.getKey(), tensor(e.getValue()));
        return feed;
    }

    /** The host's outputs of `artifact` on `sample`, in the model's output order. */
    public List<Tensor> expected(Artifact artifact, Sample sample) throws BundleException {
        List<Tensor> out = new ArrayList<>();
        for (String name : outputNames()) out.add(tensor(artifact.expected + "/" + sample.id + "/" + name + ".npy"));
        return out;
    }

    /** PyTorch's fp32 outputs on `sample`. */
    public List<Tensor> reference(Sample sample) throws BundleException {
        List<Tensor> out = new ArrayList<>();
        for (String name : outputNames()) out.add(tensor("reference/" + sample.id + "/" + name + ".npy"));
        return out;
    }

    /**
     * A file of the bundle on disk, for runtimes that take a path: the file itself for a folder, else a copy
     * extracted into {@code cacheDir} (already verified: the zip's bytes were checked on open).
     */
    public Path file(String relative, Path cacheDir) throws BundleException, IOException {
        checkRelative(relative);
        if (folder != null) return folder.resolve(relative);
        Path out = cacheDir.resolve(relative);
        AtomicFiles.write(out, bytes(relative));
        return out;
    }

    public boolean exists(String relative) {
        if (folder != null) return Files.isRegularFile(folder.resolve(relative));
        ZipEntry e = zip.getEntry(relative);
        return e != null && !e.isDirectory();
    }

    public byte[] bytes(String relative) throws BundleException {
        checkRelative(relative);
        try {
            if (folder != null) return Files.readAllBytes(folder.resolve(relative));
            ZipEntry e = zip.getEntry(relative);
            if (e == null || e.isDirectory()) throw new IOException("not in the zip");
            try (InputStream in = zip.getInputStream(e)) {
                return Npy.readAll(in);
            }
        } catch (IOException exc) {
            throw new BundleException(relative, label + " lacks " + relative + " (" + exc.getMessage() + "): re-bundle it");
        }
    }

    public String readText(String relative) throws BundleException {
        return new String(bytes(relative), StandardCharsets.UTF_8);
    }

    // -- checks --------------------------------------------------------------------------------------------
    private static void checkRelative(String relative) throws BundleException {
        if (relative.isEmpty() || relative.startsWith("/") || relative.contains("\\")
                || ("/" + relative + "/").contains("/../") || ("/" + relative + "/").contains("/./")) {
            throw new BundleException(relative, "bundle path " + relative + " leaves the bundle or is not a plain relative path: refused");
        }
    }

    private Map<String, Object> readJson(String file) throws BundleException {
        if (!exists(file)) throw new BundleException(file, label + " has no " + file + ": it is not a Pocketformer bundle (write one with `pocketformer bundle`)");
        try {
            return Json.parseObject(readText(file));
        } catch (IllegalArgumentException exc) {
            throw new BundleException(file, file + " in " + label + " is not valid JSON: " + exc.getMessage());
        }
    }

    private void checkSchema(String file, Map<String, Object> doc, String schema, int version, String fix) throws BundleException {
        if (!schema.equals(doc.get("schema"))) {
            throw new BundleException(file, file + " in " + label + " is not a " + schema + " document (schema " + doc.get("schema") + ")");
        }
        Object v = doc.get("schema_version");
        if (!(v instanceof Long)) throw new BundleException(file, file + " in " + label + " has no integer schema_version");
        long got = (Long) v;
        if (got > version) {
            throw new BundleException(file, file + " in " + label + " has schema_version " + got + ", newer than the " + version + " this app reads: " + fix);
        }
        if (got < 1) {
            throw new BundleException(file, file + " in " + label + ": schema_version " + got + " is not a released version");
        }
    }

    private List<String> listFiles() throws BundleException {
        List<String> files = new ArrayList<>();
        if (folder != null) {
            try (Stream<Path> walk = Files.walk(folder)) {
                walk.filter(Files::isRegularFile).forEach(p -> files.add(folder.relativize(p).toString().replace('\\', '/')));
            } catch (IOException exc) {
                throw new BundleException(null, "cannot list " + label + ": " + exc.getMessage());
            }
        } else {
            for (Enumeration<? extends ZipEntry> e = zip.entries(); e.hasMoreElements(); ) {
                ZipEntry entry = e.nextElement();
                if (!entry.isDirectory()) files.add(entry.getName());
            }
        }
        return files;
    }

    private void verifyChecksums() throws BundleException {
        if (!exists(SUMS)) throw new BundleException(SUMS, label + " has no " + SUMS + ": its contents cannot be verified, refused");
        Map<String, String> listed = new LinkedHashMap<>();
        int n = 0;
        for (String line : readText(SUMS).split("\n")) {
            n++;
            line = line.replace("\r", "");
            if (line.trim().isEmpty()) continue;
            int space = line.indexOf(' ');
            if (space != 64 || line.length() < 67 || (line.charAt(65) != ' ' && line.charAt(65) != '*')) {
                throw new BundleException(SUMS, SUMS + " line " + n + " is not \"<sha256>  <path>\": " + line);
            }
            String path = line.substring(66);
            checkRelative(path);
            listed.put(path, line.substring(0, 64).toLowerCase());
        }
        TreeSet<String> present = new TreeSet<>(listFiles());
        present.remove(SUMS);
        // the Python reader's order (device_runtime/bundle.py): missing, then unlisted, then changed files
        for (String file : new TreeSet<>(listed.keySet())) {
            if (!present.contains(file)) {
                throw new BundleException(file, label + ": " + file + " is listed in " + SUMS + " but missing: re-push the whole bundle");
            }
        }
        for (String file : present) {
            if (!listed.containsKey(file)) {
                throw new BundleException(file, label + ": " + file + " is not listed in " + SUMS
                        + "; an unlisted file is never run or trusted: remove it or re-bundle");
            }
        }
        for (String file : new TreeSet<>(listed.keySet())) {
            String actual = sha256(bytes(file));
            if (!actual.equals(listed.get(file))) {
                throw new BundleException(file, label + ": " + file + " does not match its checksum in " + SUMS
                        + " (changed or corrupted since it was bundled): refused");
            }
        }
        for (String key : new String[] {"model", "artifacts", "samples"}) {
            Object v = json.get(key);
            if (v == null || (v instanceof java.util.Collection && ((java.util.Collection<?>) v).isEmpty())
                    || (v instanceof Map && ((Map<?, ?>) v).isEmpty())) {
                throw new BundleException("bundle.json", label + "/bundle.json has no '" + key + "'");
            }
        }
        this.sums = listed;
    }

    private void parse() throws BundleException {
        List<Object> list = Json.list(json, "artifacts");
        if (list == null || list.isEmpty()) throw new BundleException("bundle.json", "bundle.json in " + label + " lists no artifacts");
        Map<String, Object> manifestArtifacts = Json.obj(manifest, "artifacts");
        for (Object o : list) {
            if (!(o instanceof Map)) throw new BundleException("bundle.json", "bundle.json: an artifact is not an object");
            @SuppressWarnings("unchecked") Map<String, Object> a = (Map<String, Object>) o;
            String file = Json.str(a, "file");
            Map<String, Object> entry = Json.obj(a, "entry");
            if (file == null || entry == null) throw new BundleException("bundle.json", "bundle.json: an artifact lacks its file or entry");
            boolean folderArtifact = !sums.containsKey(file);
            if (folderArtifact) {  // a package folder (.mlpackage): its files are in SHA256SUMS under it
                boolean any = false;
                for (String listedFile : sums.keySet()) any |= listedFile.startsWith(file + "/");
                if (!any) throw new BundleException(file, label + "/bundle.json names " + file + ", which the bundle does not hold");
            }
            String name = file.substring(file.lastIndexOf('/') + 1);
            if (manifestArtifacts == null || !manifestArtifacts.containsKey(name)) {
                throw new BundleException("report.json", "report.json in " + label + " has no entry for " + name);
            }
            String sha = Json.str(entry, "sha256");
            if (!folderArtifact && (sha == null || !sha.equals(sums.get(file)))) {
                throw new BundleException(file, file + " in " + label + " is not the artifact its manifest entry recorded (sha256 differs): refused");
            }
            Map<String, Object> tol = Json.obj(a, "tolerance");
            String expected = Json.str(a, "expected");
            artifacts.add(new Artifact(file, entry, expected != null ? expected : "expected/" + name, tol != null ? Tolerance.fromJson(tol) : null));
        }
        List<Object> sampleList = Json.list(json, "samples");
        if (sampleList != null) {
            for (Object o : sampleList) {
                @SuppressWarnings("unchecked") Map<String, Object> s = (Map<String, Object>) o;
                Map<String, String> inputs = new LinkedHashMap<>();
                Map<String, Object> in = Json.obj(s, "inputs");
                if (in != null) {
                    for (Map.Entry<String, Object> e : in.entrySet()) {
                        String rel = String.valueOf(e.getValue());
                        if (!sums.containsKey(rel)) throw new BundleException(rel, label + "/bundle.json names " + rel + ", which the bundle does not hold");
                        inputs.put(e.getKey(), rel);
                    }
                }
                samples.add(new Sample(String.valueOf(s.get("id")), Json.str(s, "source"), inputs));
            }
        }
    }

    public static String sha256(byte[] bytes) {
        try {
            byte[] digest = MessageDigest.getInstance("SHA-256").digest(bytes);
            StringBuilder sb = new StringBuilder();
            for (byte b : digest) sb.append(String.format("%02x", b & 0xff));
            return sb.toString();
        } catch (NoSuchAlgorithmException exc) {
            throw new IllegalStateException("SHA-256 is part of every JVM", exc);
        }
    }

    @Override
    public String toString() {
        return label;
    }
}
