"""MiniVLM (tiny) as a verified multi-artifact pipeline: `pocketformer export minivlm --tiny` writes one artifact per
stage, each verified alone against PyTorch on real inputs, and a pipeline.json the device's numpy glue runs, verified
end to end against `MiniVLM` on real photos and questions; `run` answers a question and captions a photo (saying the
weights are random); a stage in another precision re-exports that stage only; a bundle of the pipeline verifies
here and on the emulated arm64 board. ONNX at opset 17 (the TorchScript exporter: seconds, where the dynamo
exporter and the TFLite / ExecuTorch lowerings of the detector take about a minute each on 2 cores).
"""
from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import device_runtime
from device_runtime.errors import UsageError
from models_zoo import list_models
from models_zoo.data import CALIBRATION_PHOTOS, photo_paths
from sdk.cli.app import EXIT_BAD_INPUT, EXIT_OK, main
from sdk.export.api import export
from sdk.export.pipeline import E2E_TOLERANCES

STAGES = ("detector", "box_head", "fusion", "caption")
BOARD = Path(__file__).resolve().parents[1] / ".cache" / "arm64-board"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The tiny pipeline exported through the CLI, all stages ONNX fp32; returns (folder, printed)."""
    out = tmp_path_factory.mktemp("minivlm")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["export", "minivlm", "--tiny", "--to", "onnx", "--opset", "17", "--out", str(out), "--quiet"])
    assert code == EXIT_OK, printed.getvalue()
    return out / "minivlm-tiny", printed.getvalue()


@pytest.fixture(scope="module")
def tiny(exported):
    """The PyTorch model the export built (`prepare()` keeps it for the process: no second build here)."""
    from sdk.export.minivlm_pipeline import pipeline_model

    model, _ = pipeline_model("minivlm-tiny").prepare()
    return model


def _report(folder: Path) -> dict:
    return json.loads((folder / "report.json").read_text())


def test_export_verifies_the_pipeline_end_to_end_on_held_out_real_photos(exported):
    folder, printed = exported
    e2e = _report(folder)["end_to_end"]
    assert e2e["passed"] and e2e["tolerance"] == E2E_TOLERANCES["fp32"] and "passed" in printed
    # The photos: models_zoo.data's verification photos, never BatchNorm calibration ones; even-numbered only
    # (the odd ones calibrate an int8 stage).
    assert e2e["samples"] == 3 and not set(e2e["sources"]) & set(CALIBRATION_PHOTOS)
    assert e2e["sources"] == [p.name for p in photo_paths()[0::2]]
    # fp32 artifacts: float rounding only, the same NMS choices, regions and caption.
    assert e2e["fused"]["max_rel_err"] < 1e-4 and e2e["fused"]["cosine"] > 0.999999
    assert e2e["regions"]["agreement"] == 1.0 and e2e["regions"]["masks_equal"] == 3
    assert e2e["regions"]["max_box_err"] < 1e-4 and e2e["caption"]["identical"] == 3
    assert 0 < e2e["glue_share"] < 1 and {"detector", "rois", "caption"} <= {
        s["stage"] for s in e2e["timings"][0]["stages"]}
    assert "weights are random" in printed


def test_each_stage_is_exported_and_verified_alone(exported):
    folder, _ = exported
    stages = _report(folder)["stages"]
    assert list(stages) == list(STAGES)
    for stage, info in stages.items():
        manifest = json.loads((folder / info["report"]).read_text())
        (entry,) = manifest["artifacts"].values()
        assert entry["parity"]["passed"] and entry["parity"]["samples"].startswith("verification")
        assert entry["parity"]["lowering"]["samples"] == 3 and entry["parity"]["lowering"]["max_abs_err"] < 1e-3
        assert manifest["model"]["name"] == f"minivlm-tiny-{stage}" and info["format"] == "onnx"
        assert (folder / info["artifact"]).is_file() and info["precision"] == "fp32"


def test_pipeline_json_loads_and_matches_pytorch_on_another_photo_and_question(exported, tiny):
    """Independent of the export's own figures: a photo it did not verify on (coffee, odd-numbered), a new
    question, the pipeline loaded here vs MiniVLM.forward, regions() and caption() in PyTorch."""
    import torch

    from sdk.export.minivlm_pipeline import pipeline_model

    folder, _ = exported
    model = pipeline_model("minivlm-tiny")
    feed = model.feed(photo_paths(("coffee.png",))[0], "Is there a spoon on the saucer?")
    with device_runtime.load(folder) as session:
        assert [t.name for t in session.get_inputs()] == ["image", "image_hw", "input_ids", "attention_mask"]
        assert {s["format"] for s in session.info["stages"] if s["kind"] == "artifact"} == {"onnx"}
        glue = {s.glue for s in session.pipeline.stages if s.kind == "glue"}
        assert {"anchor_grid", "best_class", "multiscale_roi_align", "greedy_decode_fixed", "nms"} <= glue
        got = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))
    hw = tuple(int(v) for v in feed["image_hw"])
    image = torch.from_numpy(feed["image"])
    with torch.no_grad():
        vqa, score = tiny(image, torch.from_numpy(feed["input_ids"]), torch.from_numpy(feed["attention_mask"]), hw)
        regions = tiny.regions(image, hw)
        caption = tiny.caption(image, hw)
    assert hw != (128, 128) and np.ptp(vqa.numpy()) > 0.1  # a landscape photo: the valid area is not the input
    np.testing.assert_allclose(got["vqa_logits"], vqa.numpy(), atol=1e-4)
    np.testing.assert_allclose(got["retrieval_score"], score.numpy(), atol=1e-4)
    np.testing.assert_array_equal(got["region_mask"], regions["region_mask"].numpy())
    np.testing.assert_allclose(got["region_boxes"], regions["region_boxes"].numpy(), atol=1e-4)
    np.testing.assert_array_equal(got["caption_ids"], caption.numpy())


def test_run_answers_a_question_and_captions_a_photo(exported, capsys):
    folder, _ = exported
    photo = photo_paths(("astronaut.png",))[0]
    assert main(["run", str(folder), "--image", str(photo), "--text", "What is the woman holding?"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "question: What is the woman holding?" in out and "placeholder answer names" in out
    answers = [line for line in out.splitlines() if line.strip().startswith(("1. answer", "2. answer"))]
    assert len(answers) == 2 and "retrieval score" in out
    caption = next(line for line in out.splitlines() if line.startswith("caption: "))
    assert len(caption) > len("caption: ''")
    assert "weights are random" in out and "meaningless" in out
    # Both --image and --text are for a pipeline; a single artifact still takes one of them.
    assert main(["run", str(folder), "--image", str(photo)]) == EXIT_BAD_INPUT
    assert "needs both --image" in capsys.readouterr().err


def test_run_refuses_a_stage_artifact_modified_since_export(exported, tmp_path, capsys):
    folder, _ = exported
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy)
    detector = copy / _report(folder)["stages"]["detector"]["artifact"]
    detector.write_bytes(detector.read_bytes() + b"\0")
    photo = photo_paths(("astronaut.png",))[0]
    assert main(["run", str(copy), "--image", str(photo), "--text", "Who is this?"]) == EXIT_BAD_INPUT
    assert "modified since export" in capsys.readouterr().err


def test_a_stage_in_another_precision_reexports_that_stage_only(exported, tmp_path):
    """box_head in int8 (calibrated on the odd-numbered photos' RoI features), the rest kept: judged alone on the
    held-out ones and end to end with the quantized tolerance."""
    folder, _ = exported
    out = tmp_path / "out"
    shutil.copytree(folder, out / folder.name)
    kept = {s: (out / folder.name / i["artifact"]).stat().st_mtime_ns for s, i in _report(folder)["stages"].items()}
    (result,) = export("minivlm", ["onnx"], tiny=True, out_dir=out, opset=17, stages={"box_head": ("onnx", "int8")})
    report = _report(out / folder.name)
    assert result.passed and report["stages"]["box_head"]["precision"] == "int8-static"
    assert report["stages"]["box_head"]["parity"]["quantization"]["sqnr_db"] > 15
    for stage in ("detector", "fusion", "caption"):  # unchanged, verified: kept, not converted again
        assert (out / folder.name / report["stages"][stage]["artifact"]).stat().st_mtime_ns == kept[stage]
    e2e = report["end_to_end"]
    assert e2e["tolerance"] == E2E_TOLERANCES["quantized"] and e2e["passed"]
    assert e2e["fused"]["cosine"] > 0.99 and e2e["regions"]["agreement"] >= 0.5
    wired = json.loads((out / folder.name / "pipeline.json").read_text())["stages"]
    assert next(s for s in wired if s["name"] == "box_head")["artifact"].endswith("box_head/int8/model.onnx")


def test_refusals_name_the_problem(tmp_path):
    with pytest.raises(UsageError, match=r"no stage\(s\) \['decoder'\]; its stages are \['detector'"):
        export("minivlm", ["onnx"], tiny=True, out_dir=tmp_path, stages={"decoder": ("onnx", "fp32")})
    with pytest.raises(UsageError, match="one format for every stage, or two"):
        export("minivlm", ["onnx", "tflite", "pte"], tiny=True, out_dir=tmp_path)
    with pytest.raises(UsageError, match="--seq-len do not apply"):
        export("minivlm", ["onnx"], tiny=True, out_dir=tmp_path, seq_len=16)
    assert not any(tmp_path.iterdir())  # refused before any work
    assert "minivlm" not in list_models() and not any(m.startswith("minivlm") for m in list_models())


def test_bundle_verifies_here(exported, tmp_path, capsys):
    folder, _ = exported
    bundle = tmp_path / "minivlm.bundle.zip"
    assert main(["bundle", str(folder), "--out", str(bundle), "--zip"]) == EXIT_OK
    assert main(["verify", str(bundle), "--device", "local", "--report-dir", str(tmp_path)]) == EXIT_OK
    (written,) = tmp_path.glob("device_verify-*.json")
    (result,) = json.loads(written.read_text())["artifacts"]
    assert result["passed"] and result["vs_host"]["max_abs_err"] == 0 and result["file"] == "pipeline.json"
    capsys.readouterr()
    photo = photo_paths(("rocket.jpg",))[0]
    assert main(["run", str(bundle), "--image", str(photo), "--text", "Where is the rocket going?"]) == EXIT_OK
    assert "caption: " in capsys.readouterr().out


@pytest.mark.slow  # about 50 s under qemu here (3 photos, 7 caption steps each): run with -m slow
def test_bundle_verifies_on_the_emulated_arm64_board(exported, tmp_path, sshd):
    """The ONNX pipeline, glue and all, on the Debian 12 arm64 board (qemu, onnxruntime's aarch64 wheel) over the
    real SSH transport: the device's outputs must equal the host's (same NMS choices and caption)."""
    if shutil.which("qemu-aarch64-static") is None or not (BOARD / "READY").is_file():
        pytest.skip(f"no emulated arm64 board at {BOARD}: scripts/arm64_board.sh builds it (.ci/run does)")
    from sdk.device.bundles import write_bundle
    from sdk.device.verify import verify_on_device

    folder, _ = exported
    bundle = write_bundle([folder], tmp_path / "minivlm.bundle.zip", zip_=True)
    doc = verify_on_device(bundle, device=f"ssh://{sshd['user']}@127.0.0.1:{sshd['port']}",
                           ssh_key=sshd["key"], remote_python=str(BOARD / "bin" / "python"),
                           ssh_options=[f"UserKnownHostsFile={sshd['known_hosts']}", "StrictHostKeyChecking=yes"])
    (result,) = doc["artifacts"]
    assert doc["machine"]["machine"] == "aarch64" and doc["emulated"]
    assert result["passed"], result["failures"]
    assert result["vs_host"]["max_abs_err"] <= 1e-3 and result["backend"] == "pipeline"
