"""Accuracy on the user's own labelled data (`export --eval`), on a real task: the zoo's tiny MobileViT fine-tuned on
scikit-learn's handwritten digits (`models_zoo.tasks.digits_task`, about 40 s on 2 cores), exported with its
10-class checkpoint, judged on the 396 held-out digits it never saw in training or calibration.

Measured (2026-12-06, tiny MobileViT, 5 epochs, seed 0): fp32 PyTorch 97.2%; every fp32 artifact 97.2%;
int8-static ONNX 96.7% (-0.5 pt), LiteRT 96.5% (-0.8 pt), ExecuTorch 95.7% (-1.5 pt). The bound below, 4
points, is that worst drop with room for another machine's kernels; an artifact of the wrong weights scores ~10%.
"""
from __future__ import annotations

import json
import shutil

import pytest

from device_runtime.errors import UsageError
from models_zoo import get_model
from sdk.cli.app import EXIT_OK, main

INT8_MAX_DROP_POINTS = 4.0


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


def test_tune_keeps_only_artifacts_within_the_accuracy_drop(digits, tmp_path):
    from sdk.measure.tune import tune

    doc = tune("mobilevit_xxs", tmp_path, tiny=True, formats=["onnx"], precisions=["fp32", "int8"], runs=3, warmup=1,
               weights=str(digits.checkpoint), eval=digits.eval_dir, max_accuracy_drop=0.3, eager=False)
    # Measured: fp32 loses nothing, ONNX int8-static 0.5 points (test above): only fp32 stays a candidate.
    assert [c["precision"] for c in doc["candidates"]] == ["fp32"] and doc["pick"]["accuracy_drop_points"] <= 0.3
    (dropped,) = [r for r in doc["rejected"] if "--max-accuracy-drop" in r["reason"]]
    assert dropped["precision"] == "int8-static" and dropped["accuracy_drop_points"] > 0.3
    with pytest.raises(UsageError, match="--max-accuracy-drop needs --eval"):
        tune("mobilevit_xxs", tmp_path, tiny=True, max_accuracy_drop=1.0)
