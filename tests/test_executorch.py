"""ExecuTorch `.pte`: each family's tiny variant exports fp32 and int8, passes parity on real samples, and runs.

One model per family (as the other formats' matrices): a family's variants differ in size, not in the code
that exports them, and their tiny variants are the same model."""
from __future__ import annotations

import json

import numpy as np
import pytest

import device_runtime
from converters import get_converter, resolve_precision
from converters.base import UnsupportedError
from converters.parity import error_bound
from models_zoo import family_representatives, get_model
from conftest import SUITE_MODELS

CONVERTER = get_converter("pte")
pytestmark = pytest.mark.skipif(CONVERTER.missing_toolchain() is not None,
                                reason=str(CONVERTER.missing_toolchain()))


# Every family's fp32 .pte is exported and verified in CI. ExecuTorch's int8 is one recipe per scheme (the
# XNNPACK quantizer, static for vision, dynamic for BERT) whatever the family, and its export is the slowest of
# the suite (25-120 s each on CI's 2 cores: PT2E calibration and lowering), so CI runs it on one family per
# scheme; every family's int8 is verified in CI through LiteRT and ONNX (tests/test_tflite.py,
# tests/test_onnx.py), and through ExecuTorch with `pytest -m slow`.
INT8_IN_CI = {"mobilevit", "tinybert"}
CASES = [pytest.param(name, precision, marks=[pytest.mark.slow] if precision == "int8" and
                      get_model(name).family not in INT8_IN_CI else [])
         for name in family_representatives(prefer=SUITE_MODELS) for precision in ("fp32", "int8")]


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
    fp32 = export_tiny("mobilevit_xxs", "pte", "fp32")  # the family's representative: exported by the matrix above
    int8 = export_tiny("mobilevit_xxs", "pte", "int8")
    assert int8.precision == "int8-static"
    assert int8.size_bytes < 0.6 * fp32.size_bytes


def test_bert_int8_is_dynamic_and_quantizes_linear_layers(export_tiny):
    result = export_tiny("tinybert_4l_312d", "pte", "int8")
    assert result.precision == "int8-dynamic"
    assert result.parity["quantization"]["cosine"] > 0.99


def test_unsupported_precision_is_refused_before_any_work():
    spec = get_model("mobilevit_xxs", tiny=True)
    assert "bf16" in CONVERTER.unsupported_reason(spec, "bf16")
    assert CONVERTER.unsupported_reason(spec, "fp16") is None
    with pytest.raises(UnsupportedError, match="--fp16-io applies to fp16 only"):
        CONVERTER.convert(None, spec, "fp32", [], None, fp16_io=True)


# -- fp16 ----------------------------------------------------------------------------------------------------
# One vision and one BERT-family model; the exports are conftest's cached ones, which tests/test_executorch_numpy.py
# (the numpy runtime) and tests/test_arm64_board.py (the Cortex-A76 board) reuse.
@pytest.mark.parametrize("name", ["mobilevit_xxs", "tinybert_4l_312d"])
def test_fp16_pte_matches_fp32_pytorch_and_runs_fp16_in_xnnpack(cached_export, name):
    (result,) = cached_export(name, "pte", "fp16")
    spec = get_model(name, tiny=True)
    assert result.passed is True and result.precision == "fp16"
    tolerance = spec.tolerance("fp16")
    lowering, vs_fp32 = result.parity["lowering"], result.parity["quantization"]
    assert result.parity["reference"] == "fp32 PyTorch"
    assert lowering["max_abs_err"] <= error_bound(tolerance, lowering) and vs_fp32["sqnr_db"] >= tolerance.min_sqnr_db
    # Really fp16: well above fp32 rounding (fp32 exports measure <= 1e-6 of the scale), far below the bound.
    assert vs_fp32["max_abs_err"] > 1e-5 * vs_fp32["reference_scale"] and vs_fp32["top1_agreement"] == 1.0
    print(f"{name} .pte fp16 vs fp32 PyTorch: max abs {vs_fp32['max_abs_err']:.3g} "
          f"({vs_fp32['max_abs_err'] / vs_fp32['reference_scale']:.2g} of the scale), {vs_fp32['sqnr_db']:.1f} dB")

    entry = json.loads(result.report_path.read_text())["artifacts"][result.path.name]
    fp16 = entry["details"]["fp16"]
    assert fp16["io"] == "float32" and fp16["portable_casts"]["outputs"] == 1 and not fp16["portable_fp32_ops"]
    # The compute is XNNPACK's, in fp16; fp32 only inside the LayerNorm islands (two casts each, portable).
    inside = fp16["xnnpack_ops_by_dtype"]
    assert inside["float16"] > inside.get("float32", 0) > 0
    assert fp16["portable_casts"]["between partitions (fp32 islands)"] >= 2
    if "input_ids" in spec.input_names:
        assert fp16["portable_fp16_ops"].get("aten.gelu.default")  # XNNPACK has no fp16 GELU

    session = device_runtime.load(result.path)  # float32 in and out: a feed needs no cast
    assert {t.dtype for t in session.get_inputs() if t.dtype.kind == "f"} <= {np.dtype(np.float32)}
    assert session.get_outputs()[0].dtype == np.float32
    outs = [session.run(None, feed)[0] for feed in spec.sample_inputs()[:3]]
    assert all(np.isfinite(o).all() and o.std() > 0 for o in outs)
    assert not np.allclose(outs[0], outs[1])  # the outputs follow the input


def test_fp16_pte_stores_two_bytes_a_weight(cached_export):
    """TinyBERT-tiny's fp16 program is its weights at 2 bytes each, plus the program (measured 0.505x the fp32
    file). MobileViT-tiny's is 0.70x its fp32 file, the same without the LayerNorm islands: not checked here."""
    result = cached_export("tinybert_4l_312d", "pte", "fp16")[0]
    weights = sum(p.numel() for p in get_model("tinybert_4l_312d", tiny=True).build().parameters())
    assert 2 * weights < result.size_bytes < 2.1 * weights + 64 * 1024


def test_fp16_io_keeps_float16_inputs_and_outputs(tmp_path):
    """`fp16_io=True` on a small module (conv, LayerNorm, SiLU, linear): float16 I/O, verified through adapt_io."""
    import torch

    from models_zoo.module_spec import spec_from_module
    from sdk.export.api import export

    torch.manual_seed(0)

    class Small(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 16, 3, stride=2)
            self.norm = torch.nn.LayerNorm(16)
            self.head = torch.nn.Linear(16, 5)

        def forward(self, x):
            y = torch.nn.functional.silu(self.conv(x)).mean((2, 3))
            return self.head(self.norm(y))

    rng = np.random.default_rng(0)
    feeds = [{"image": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(6)]
    spec = spec_from_module(Small().eval(), samples=feeds, task="image-classification", name="small")
    (result,) = export(spec, "pte", "fp16", out_dir=tmp_path, fp16_io=True)
    assert result.passed and result.path.name == "model.pte"
    session = device_runtime.load(result.path)
    assert session.get_inputs()[0].dtype == np.float16 and session.get_outputs()[0].dtype == np.float16
    with pytest.raises(device_runtime.errors.DTypeError, match="astype\\(np.float16\\)"):
        session.run(None, feeds[0])
    out = device_runtime.load(result.path, adapt_io=True).run(None, feeds[0])[0]
    assert out.dtype == np.float16 and np.isfinite(out).all() and out.std() > 0
