package dev.pocketformer.demo;

import android.app.Activity;
import android.content.Intent;
import android.graphics.Bitmap;
import android.graphics.BitmapFactory;
import android.os.Bundle;
import android.provider.MediaStore;
import android.widget.Button;
import android.widget.EditText;
import android.widget.LinearLayout;
import android.widget.ScrollView;
import android.widget.TextView;
import dev.pocketformer.core.BucketedRunner;
import dev.pocketformer.core.ImagePreprocessor;
import dev.pocketformer.core.ModelRunner;
import dev.pocketformer.core.Tensor;
import dev.pocketformer.core.WordPiece;
import java.io.File;
import java.io.InputStream;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Map;

/**
 * Screen 2: run the bundle's model on a gallery or camera photo, or on typed sentences; show the top classes
 * (classifiers) or the cosine similarity of two sentences' embeddings (sentence-embedding models). Inputs are
 * made by the core exactly as the SDK makes them (ImagePreprocessor, WordPiece).
 */
public class RunActivity extends Activity {
    private static final int GALLERY = 1, CAMERA = 2;
    private dev.pocketformer.core.Bundle bundle;
    private ModelRunner runner;
    private WordPiece tokenizer;
    private List<String> labels = Collections.emptyList();
    private TextView result;
    private EditText first, second;

    @Override
    protected void onCreate(Bundle state) {
        super.onCreate(state);
        LinearLayout root = new LinearLayout(this);
        root.setOrientation(LinearLayout.VERTICAL);
        result = new TextView(this);
        result.setText("Opening and verifying the bundle...");
        root.addView(result);
        ScrollView scroll = new ScrollView(this);
        scroll.addView(root);
        setContentView(scroll);
        String path = getIntent().getStringExtra("bundle");
        new Thread(() -> {
            try {
                bundle = dev.pocketformer.core.Bundle.open(Paths.get(path));
                labels = bundle.labels();
                runner = Models.load(bundle, Models.runnable(bundle, null), getCacheDir(), 0);
                Map<String, Object> prep = bundle.preprocessing();
                if (prep != null && "text".equals(prep.get("kind"))) tokenizer = WordPiece.fromPreprocessing(bundle.readText(bundle.vocab()), prep);
                runOnUiThread(() -> controls(root));
            } catch (Exception exc) {
                runOnUiThread(() -> result.setText("Cannot use this bundle: " + exc.getMessage()));
            }
        }).start();
    }

    private void controls(LinearLayout root) {
        result.setText(bundle.model().get("name") + " (" + bundle.task() + ") via " + runner.backend());
        if (tokenizer == null) {
            Button gallery = new Button(this);
            gallery.setText("Photo from the gallery");
            gallery.setOnClickListener(v -> startActivityForResult(new Intent(Intent.ACTION_GET_CONTENT).setType("image/*"), GALLERY));
            root.addView(gallery);
            Button camera = new Button(this);
            camera.setText("Take a photo");
            camera.setOnClickListener(v -> startActivityForResult(new Intent(MediaStore.ACTION_IMAGE_CAPTURE), CAMERA));
            root.addView(camera);
            return;
        }
        first = new EditText(this);
        first.setHint("A sentence");
        root.addView(first);
        if ("sentence-embedding".equals(bundle.task())) {
            second = new EditText(this);
            second.setHint("Another sentence, to compare");
            root.addView(second);
        }
        Button run = new Button(this);
        run.setText("Run");
        run.setOnClickListener(v -> runText());
        root.addView(run);
    }

    private void runText() {
        String a = first.getText().toString(), b = second != null ? second.getText().toString() : null;
        new Thread(() -> {
            try {
                // a bucketed artifact takes the sentence unpadded (truncated at its largest bucket) and pads it itself
                boolean pad = !(runner instanceof BucketedRunner);
                List<Tensor> out = runner.run(tokenizer.feed(a, null, bundle.preprocessing(), pad));
                if (b == null) {
                    show(topClasses(out.get(0)));
                } else {
                    List<Tensor> other = runner.run(tokenizer.feed(b, null, bundle.preprocessing(), pad));
                    show(String.format("cosine similarity %.4f", cosine(out.get(0).floats, other.get(0).floats)));
                }
            } catch (Exception exc) {
                show("Run failed: " + exc.getMessage());
            }
        }).start();
    }

    @Override
    protected void onActivityResult(int request, int code, Intent data) {
        super.onActivityResult(request, code, data);
        if (code != RESULT_OK || data == null) return;
        new Thread(() -> {
            try {
                Bitmap bitmap;
                if (request == CAMERA) {
                    bitmap = (Bitmap) data.getExtras().get("data");  // the camera app's preview-sized photo
                } else {
                    try (InputStream in = getContentResolver().openInputStream(data.getData())) {
                        bitmap = BitmapFactory.decodeStream(in);
                    }
                }
                int w = bitmap.getWidth(), h = bitmap.getHeight();
                int[] argb = new int[w * h];
                bitmap.getPixels(argb, 0, w, 0, 0, w, h);
                Tensor pixels = ImagePreprocessor.preprocess(ImagePreprocessor.Rgb.fromArgb(w, h, argb), bundle.preprocessing());
                Map<String, Tensor> feed = Collections.singletonMap(bundle.inputNames().get(0), pixels);
                show(topClasses(runner.run(feed).get(0)));
            } catch (Exception exc) {
                show("Run failed: " + exc.getMessage());
            }
        }).start();
    }

    private String topClasses(Tensor logits) {
        float[] v = logits.floats;
        double max = Double.NEGATIVE_INFINITY, sum = 0;
        for (float x : v) max = Math.max(max, x);
        double[] p = new double[v.length];
        for (int i = 0; i < v.length; i++) sum += p[i] = Math.exp(v[i] - max);
        List<Integer> order = new ArrayList<>();
        for (int i = 0; i < v.length; i++) order.add(i);
        order.sort((x, y) -> Double.compare(p[y], p[x]));
        StringBuilder sb = new StringBuilder();
        for (int k = 0; k < Math.min(5, order.size()); k++) {
            int i = order.get(k);
            sb.append(String.format("%5.1f%%  %s%n", 100 * p[i] / sum, i < labels.size() ? labels.get(i) : "class " + i));
        }
        return sb.toString();
    }

    private static double cosine(float[] a, float[] b) {
        double dot = 0, na = 0, nb = 0;
        for (int i = 0; i < a.length; i++) {
            dot += a[i] * (double) b[i];
            na += a[i] * (double) a[i];
            nb += b[i] * (double) b[i];
        }
        return dot / Math.sqrt(na * nb);
    }

    private void show(String text) {
        runOnUiThread(() -> result.setText(text));
    }

    @Override
    protected void onDestroy() {
        if (runner != null) runner.close();
        try {
            if (bundle != null) bundle.close();
        } catch (Exception ignored) {
            // nothing left to report on a closing screen
        }
        super.onDestroy();
    }
}
