"""ExecuTorch `.pte`: each family's tiny variant exports fp32 and int8, passes parity on real samples, and runs.

One model per family (as the other formats' matrices): a family's variants differ in size, not in the code
that exports them, and their tiny variants are the same model."""
from __future__ import annotations

import json

import numpy as np
import pytest

import device_runtime
from converters import get_converter, resolve_precision
from converters.parity import error_bound
from models_zoo import family_representatives, get_model

CONVERTER = get_converter("pte")
pytestmark = pytest.mark.skipif(CONVERTER.missing_toolchain() is not None,
                                reason=str(CONVERTER.missing_toolchain()))


# ExecuTorch int8 of these families is the slowest export of the suite (50-120 s each on CI's 2 cores: PT2E
# calibration and lowering of attention-heavy graphs); their int8 is verified in CI through LiteRT and ONNX
# (tests/test_tflite.py, tests/test_onnx.py), and through ExecuTorch with `pytest -m slow`.
SLOW_INT8_FAMILIES = {"mobileformer", "minivit", "tinyvit", "dynamicvit"}
CASES = [pytest.param(name, precision, marks=[pytest.mark.slow] if precision == "int8" and
                      get_model(name).family in SLOW_INT8_FAMILIES else [])
         for name in family_representatives() for precision in ("fp32", "int8")]


@pytest.mark.parametrize("name,precision", CASES)
def test_tiny_model_exports_verifies_and_runs(export_tiny, name, precision):
    result = export_tiny(name, "pte", precision)
    spec = get_model(name, tiny=True)
    assert result.passed is True and result.path.exists()
    assert result.precision == resolve_precision(spec, precision)

    report = json.loads(result.report_path.read_text())
    entry = report["artifacts"]["model.pte"]
    assert entry["parity"]["passed"] and entry["weights"]["source"] == "random"
    assert entry["tools"]["executorch"] == "1.5.1" and entry["size_bytes"] == result.path.stat().st_size
    assert report["model"]["inputs"][0]["name"] == spec.input_names[0]
    delegation = entry["details"]["delegation"]
    assert delegation["partitions"] >= 1 and delegation["delegated_ops"] > 0

    lowering = result.parity["lowering"]
    assert lowering["max_abs_err"] <= error_bound(spec.tolerance(result.precision), lowering)
    if precision == "fp32":
        assert lowering["max_abs_err"] < 1e-4 and result.parity["quantization"] is None
    else:
        quant = result.parity["quantization"]
        assert quant["sqnr_db"] >= spec.tolerance(result.precision).min_sqnr_db
        assert quant["max_abs_err"] > 0  # really quantized, not a float copy

    session = device_runtime.load(result.path)
    assert [t.name for t in session.get_inputs()] == list(spec.input_names)
    assert [t.name for t in session.get_outputs()] == list(spec.output_names)
    feed = spec.sample_inputs()[1]
    out, = session.run(None, feed)
    assert out.shape == ((1, 1000) if spec.task == "image-classification" else (1, getattr(spec, "embedding_dim", 2))) and np.isfinite(out).all()


def test_int8_vision_artifact_is_smaller_than_fp32(export_tiny):
    fp32 = export_tiny("mobilevit_s", "pte", "fp32")  # the family's representative: exported by the matrix above
    int8 = export_tiny("mobilevit_s", "pte", "int8")
    assert int8.precision == "int8-static"
    assert int8.size_bytes < 0.6 * fp32.size_bytes


def test_bert_int8_is_dynamic_and_quantizes_linear_layers(export_tiny):
    result = export_tiny("tinybert_4l_312d", "pte", "int8")
    assert result.precision == "int8-dynamic"
    assert result.parity["quantization"]["cosine"] > 0.99


def test_unsupported_precision_is_refused_before_any_work():
    spec = get_model("mobilevit_xxs", tiny=True)
    assert "fp16" in CONVERTER.unsupported_reason(spec, "fp16")
    assert CONVERTER.unsupported_reason(spec, "int8-static") is None
