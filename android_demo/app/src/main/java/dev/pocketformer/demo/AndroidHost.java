package dev.pocketformer.demo;

import android.content.Context;
import android.os.Build;
import java.io.File;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/** What the app knows about the phone (the benchmark document's "host"), and where its bundles live. */
final class AndroidHost {
    private AndroidHost() {}

    static Map<String, Object> info() {
        Map<String, Object> host = new LinkedHashMap<>();
        host.put("hostname", Build.MANUFACTURER + " " + Build.MODEL);
        host.put("platform", "Android " + Build.VERSION.RELEASE + " (API " + Build.VERSION.SDK_INT + ")");
        host.put("machine", Build.SUPPORTED_ABIS.length > 0 ? Build.SUPPORTED_ABIS[0] : "unknown");
        host.put("python", null);
        host.put("cpu", Build.VERSION.SDK_INT >= 31 ? Build.SOC_MANUFACTURER + " " + Build.SOC_MODEL : Build.HARDWARE);
        host.put("cpus_usable", (long) Runtime.getRuntime().availableProcessors());
        host.put("numpy", null);
        host.put("app", "dev.pocketformer.demo 0.1.0");
        return host;
    }

    /** The app's external files folder: /sdcard/Android/data/dev.pocketformer.demo/files (adb can push there). */
    static File root(Context context) {
        File dir = context.getExternalFilesDir(null);
        return dir != null ? dir : context.getFilesDir();
    }

    /** Bundles found in the app's folders: folders holding bundle.json, and .zip files. */
    static List<File> bundles(Context context) {
        List<File> found = new ArrayList<>();
        collect(root(context), found, 3);
        collect(context.getFilesDir(), found, 3);
        return found;
    }

    private static void collect(File dir, List<File> found, int depth) {
        File[] children = dir.listFiles();
        if (children == null || depth < 0) return;
        for (File f : children) {
            if (f.isDirectory() && new File(f, "bundle.json").isFile()) found.add(f);
            else if (f.isFile() && f.getName().endsWith(".zip")) found.add(f);
            else if (f.isDirectory()) collect(f, found, depth - 1);
        }
    }

    /** Whether `file` lies inside one of the app's own folders (what an external start may name). */
    static boolean inside(Context context, File file) throws IOException {
        String path = file.getCanonicalPath();
        for (File dir : new File[] {root(context), context.getFilesDir(), context.getCacheDir()}) {
            if (path.startsWith(dir.getCanonicalPath() + File.separator)) return true;
        }
        return false;
    }

    static void copy(InputStream in, File dest) throws IOException {
        File tmp = new File(dest.getParentFile(), "." + dest.getName() + ".tmp");
        try (InputStream src = in; FileOutputStream out = new FileOutputStream(tmp)) {
            byte[] block = new byte[1 << 16];
            for (int n; (n = src.read(block)) > 0; ) out.write(block, 0, n);
        }
        if (!tmp.renameTo(dest)) throw new IOException("cannot move " + tmp + " to " + dest);
    }
}
