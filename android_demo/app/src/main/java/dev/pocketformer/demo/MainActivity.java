package dev.pocketformer.demo;

import android.app.Activity;
import android.content.Intent;
import android.net.Uri;
import android.os.Bundle;
import android.widget.Button;
import android.widget.LinearLayout;
import android.widget.ScrollView;
import android.widget.TextView;
import java.io.File;
import java.io.InputStream;

/**
 * Screen 1: pick a bundle, one pushed with adb into the app's folder (listed here) or a .zip chosen from
 * storage (copied into the app's folder first), then run it (screen 2) or benchmark and self-check it (screen 3).
 */
public class MainActivity extends Activity {
    private static final int PICK_ZIP = 1;
    private LinearLayout list;
    private TextView status;

    @Override
    protected void onCreate(Bundle state) {
        super.onCreate(state);
        LinearLayout root = new LinearLayout(this);
        root.setOrientation(LinearLayout.VERTICAL);
        TextView help = new TextView(this);
        help.setText("Bundles in " + AndroidHost.root(this) + "\n(adb push my.bundle " + AndroidHost.root(this) + "/bundles/)");
        root.addView(help);
        Button pick = new Button(this);
        pick.setText("Open a bundle .zip from storage");
        pick.setOnClickListener(v -> {
            Intent intent = new Intent(Intent.ACTION_OPEN_DOCUMENT).addCategory(Intent.CATEGORY_OPENABLE).setType("application/zip");
            startActivityForResult(intent, PICK_ZIP);
        });
        root.addView(pick);
        status = new TextView(this);
        root.addView(status);
        list = new LinearLayout(this);
        list.setOrientation(LinearLayout.VERTICAL);
        root.addView(list);
        ScrollView scroll = new ScrollView(this);
        scroll.addView(root);
        setContentView(scroll);
    }

    @Override
    protected void onResume() {
        super.onResume();
        list.removeAllViews();
        for (File bundle : AndroidHost.bundles(this)) {
            LinearLayout row = new LinearLayout(this);
            TextView name = new TextView(this);
            name.setText(bundle.getName());
            row.addView(name, new LinearLayout.LayoutParams(0, LinearLayout.LayoutParams.WRAP_CONTENT, 1));
            Button run = new Button(this);
            run.setText("Run");
            run.setOnClickListener(v -> startActivity(new Intent(this, RunActivity.class).putExtra("bundle", bundle.getPath())));
            row.addView(run);
            Button bench = new Button(this);
            bench.setText("Bench");
            bench.setOnClickListener(v -> startActivity(new Intent(this, BenchActivity.class)
                    .putExtra("bundle", bundle.getPath()).putExtra("interactive", true)));
            row.addView(bench);
            list.addView(row);
        }
        if (list.getChildCount() == 0) {
            TextView none = new TextView(this);
            none.setText("No bundle yet: write one with `pocketformer bundle`, then push it or open its .zip.");
            list.addView(none);
        }
    }

    @Override
    protected void onActivityResult(int request, int result, Intent data) {
        super.onActivityResult(request, result, data);
        if (request != PICK_ZIP || result != RESULT_OK || data == null || data.getData() == null) return;
        Uri uri = data.getData();
        File dir = new File(AndroidHost.root(this), "bundles");
        dir.mkdirs();
        File dest = new File(dir, "picked-" + System.currentTimeMillis() + ".zip");
        new Thread(() -> {
            try (InputStream in = getContentResolver().openInputStream(uri)) {
                AndroidHost.copy(in, dest);  // verified when opened: SHA256SUMS, schema
            } catch (Exception exc) {
                runOnUiThread(() -> status.setText("Cannot copy the bundle: " + exc.getMessage()));
                return;
            }
            runOnUiThread(this::onResume);
        }).start();
    }
}
