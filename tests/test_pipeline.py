"""The export pipeline's guarantees: artifacts that miss their tolerance are never put in place, writes are
atomic, degenerate references are refused, and the report says what happened."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from converters import atomic_path, base, get_converter
from converters.onnx import OnnxConverter
from sdk.export.api import export
from converters.parity import DegenerateReferenceError, ParityError, check_spread, compare


class PerturbedConverter(OnnxConverter):
    """Exports a copy of the model with noisy weights: a stand-in for a toolchain that miscompiles. ONNX: the
    pipeline's guarantees do not depend on the format, and its export is the quickest."""

    format = "onnx-perturbed"

    def convert(self, module, spec, precision, calibration, path, **options):
        noisy = copy.deepcopy(module)
        with torch.no_grad():
            for p in noisy.parameters():
                p.add_(0.05 * torch.randn_like(p))
        conversion = super().convert(noisy, spec, precision, calibration, path, **options)
        conversion.reference = module
        return conversion


def test_a_miscompiled_artifact_fails_parity_and_is_not_written(tmp_path, monkeypatch):
    monkeypatch.setitem(base._CONVERTERS, "onnx-perturbed", PerturbedConverter())
    with pytest.raises(ParityError, match="max abs error"):
        export("mobilevit_xxs", "onnx-perturbed", "fp32", out_dir=tmp_path, tiny=True)
    folder = tmp_path / "mobilevit_xxs-tiny" / "fp32"
    assert not (folder / "model.onnx").exists()
    assert [p.name for p in folder.iterdir()] == ["report.json"]  # no temporary leftovers
    report = json.loads((folder / "report.json").read_text())
    assert report["artifacts"] == {}  # a failed attempt is kept apart, never as an artifact entry
    failed = report["failed"][-1]
    assert failed["file"] == "model.onnx" and failed["error"] == "ParityError"
    assert failed["parity"]["passed"] is False and failed["parity"]["failures"]


def test_atomic_path_leaves_the_old_artifact_on_failure(tmp_path):
    final = tmp_path / "model.pte"
    final.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(final) as tmp:
            tmp.write_bytes(b"half-writ")
            raise KeyboardInterrupt
    assert final.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["model.pte"]
    with atomic_path(final) as tmp:
        tmp.write_bytes(b"new")
    assert final.read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["model.pte"]


def test_flat_reference_outputs_are_refused():
    import numpy as np

    with pytest.raises(DegenerateReferenceError, match="no spread"):
        check_spread([[np.full((1, 10), 1e-40, np.float32)]], "bare-config model")
    with pytest.raises(DegenerateReferenceError, match="NaN"):
        check_spread([[np.array([[np.nan, 1.0]], np.float32)]], "broken")


def test_compare_measures_what_it_says():
    import numpy as np

    ref = [[np.array([[1.0, 2.0, 3.0]])], [np.array([[3.0, 1.0, 0.0]])]]
    got = [[np.array([[1.0, 2.0, 3.1]])], [np.array([[1.0, 3.0, 0.0]])]]
    m = compare(ref, got, classifier=True)
    assert m["max_abs_err"] == pytest.approx(2.0) and m["top1_agreement"] == 0.5
    assert compare(ref, ref, classifier=False)["sqnr_db"] == float("inf")


def test_unsupported_requests_fail_before_building(tmp_path):
    from converters import UnsupportedError

    with pytest.raises(UnsupportedError, match="int8-dynamic"):
        export("q8bert", "coreml", "int8-dynamic", out_dir=tmp_path)
    assert not any(tmp_path.iterdir())
    assert get_converter("pte").unsupported_reason(None, "int8-dynamic") is None


def test_user_calibration_data_is_used_and_reported(tmp_path):
    from PIL import Image

    from models_zoo.data import photo_paths

    images = tmp_path / "calib"
    images.mkdir()
    for i, path in enumerate(photo_paths()[:3]):
        Image.open(path).convert("RGB").save(images / f"{i}.jpg")
    (images / "notes.txt").write_text("not an image")
    result = export("mobilevit_xxs", "onnx", "int8", out_dir=tmp_path / "out", tiny=True, calibration=images)[0]
    entry = json.loads(result.report_path.read_text())["artifacts"]["model.onnx"]
    assert entry["calibration"] == {"source": str(images), "samples": 3}
    assert result.passed


def test_calibration_data_of_the_wrong_kind_is_refused(tmp_path):
    from models_zoo import get_model

    sentences = tmp_path / "sentences.txt"
    sentences.write_text("The first line.\n\nA second, longer line of real text.\n")
    feeds = get_model("tinybert_4l_312d", tiny=True).feeds_from(str(sentences))
    assert len(feeds) == 2 and feeds[1]["attention_mask"].sum() > feeds[0]["attention_mask"].sum()
    with pytest.raises(ValueError, match="folder of images"):
        get_model("mobilevit_xxs").feeds_from(str(sentences))
    with pytest.raises(ValueError, match="text file"):
        get_model("q8bert").feeds_from(str(tmp_path))


def test_an_artifact_its_runtime_cannot_run_is_a_conversion_error_not_a_crash(tmp_path, monkeypatch):
    from converters import ConversionError
    from device_runtime.backends.onnxruntime import OnnxRuntimeSession

    def failing(self, arrays):
        raise RuntimeError("method->execute() failed with error 0x1")  # what a delegate failure looks like

    monkeypatch.setattr(OnnxRuntimeSession, "_execute", failing)
    with pytest.raises(ConversionError, match="runtime cannot run.*0x1.*nothing was written"):
        export("tinybert_4l_312d", "onnx", "fp32", out_dir=tmp_path, tiny=True)
    assert not list(tmp_path.rglob("*.onnx"))


def test_session_run_names_the_backend_when_the_runtime_fails(monkeypatch, tmp_path):
    import device_runtime
    from device_runtime.backends.onnxruntime import OnnxRuntimeSession

    path = export("tinybert_4l_312d", "onnx", "fp32", out_dir=tmp_path, tiny=True)[0].path
    session = device_runtime.load(path)
    feed = session.example_feed()
    monkeypatch.setattr(OnnxRuntimeSession, "_execute", lambda self, arrays: 1 / 0)
    with pytest.raises(device_runtime.ExecutionError, match="onnxruntime failed while running .*ZeroDivisionError"):
        session.run(None, feed)
    with pytest.raises(device_runtime.MissingInputError):  # feed errors stay what they are
        session.run(None, {})
