"""ONNX export (converters/onnx.py) and the ONNX Runtime backend (device_runtime/backends/onnxruntime.py).

Every family's tiny variant: export, onnx.checker, ORT parity on the real sample inputs (the pipeline's
verification), the family's int8 recipe with its SQNR, and ORT's per-node profile.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from converters.base import option_flags

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import device_runtime  # noqa: E402
from converters import get_converter, list_converters  # noqa: E402
from device_runtime.backends.onnxruntime import onnx_header_ok, parse_ort_profile  # noqa: E402
from models_zoo import get_model  # noqa: E402
from models_zoo import family_representatives  # noqa: E402
from conftest import SUITE_MODELS

FAMILIES = family_representatives(prefer=SUITE_MODELS)


def _graph_ops(path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def test_onnx_is_registered():
    assert "onnx" in list_converters()
    converter = get_converter("onnx")
    assert converter.artifact_name() == "model.onnx"
    assert converter.artifact_name(ort_optimize="extended") == "model.ort-extended.onnx"
    flags = [flag for flag in option_flags(converter.Options)]
    assert {"--opset", "--dynamic-shapes", "--ort-optimize"} <= set(flags)


@pytest.mark.parametrize("model", FAMILIES)
def test_fp32_export_checker_and_parity(export_tiny, model):
    result = export_tiny(model, "onnx", "fp32")
    assert result.passed is True
    onnx.checker.check_model(str(result.path), full_check=True)
    assert device_runtime.sniff_format(result.path) == "onnx"
    tolerance = get_model(model, tiny=True).tolerance("fp32").atol
    assert result.parity["lowering"]["max_abs_err"] <= tolerance
    assert result.parity["lowering"]["samples"] >= 6  # the spec's real photos / sentences, not zeros
    assert result.details["export"]["exporter"] == "dynamo" and result.details["graph"]["opset"] == 18


@pytest.mark.parametrize("model", FAMILIES)
def test_int8_recipe_per_family_and_sqnr(export_tiny, model):
    spec = get_model(model, tiny=True)
    result = export_tiny(model, "onnx", "int8")
    assert result.passed is True
    # ORT quantizes the graph itself: no PyTorch model of the quantized net, both figures are vs fp32.
    assert result.parity["reference"] == "fp32 PyTorch"
    sqnr = result.parity["quantization"]["sqnr_db"]
    assert sqnr >= spec.tolerance("int8").min_sqnr_db
    ops = _graph_ops(result.path)
    if spec.int8_scheme == "static":
        assert result.precision == "int8-static"
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ, calibrated
        assert result.details["quantization"]["calibration_samples"] == len(spec.calibration_inputs())
    else:
        assert result.precision == "int8-dynamic"
        assert "MatMulInteger" in ops or "DynamicQuantizeLinear" in ops


def test_fp16(export_tiny):
    model = FAMILIES[0]
    result = export_tiny(model, "onnx", "fp16")
    assert result.passed is True
    session = device_runtime.load(result.path)
    assert session.get_inputs()[0].dtype == np.float32  # float32 I/O kept: feeds need no cast
    weights = onnx.load(str(result.path)).graph.initializer
    assert any(w.data_type == onnx.TensorProto.FLOAT16 for w in weights)


def test_ort_offline_optimisation_is_its_own_verified_artifact(export_tiny):
    model = next(m for m in FAMILIES if get_model(m).int8_scheme == "dynamic")  # a BERT: many fusions
    result = export_tiny(model, "onnx", "fp32", ort_optimize="extended")
    assert result.path.name == "model.ort-extended.onnx"
    assert result.passed is True  # the pipeline ran the optimised graph against PyTorch
    info = result.details["ort_optimization"]
    assert info["fused_ops"], info  # e.g. com.microsoft:SkipLayerNormalization
    assert all(op.startswith("com.microsoft") for op in info["fused_ops"])
    assert info["nodes_before"] > 0 and info["nodes_after"] > 0
    assert info["agreement_vs_unoptimized"]["max_abs_err"] < 1e-4
    assert info["portable"] is True


def test_dynamic_sequence_axis_at_opset_11(export_tiny):
    import torch

    model = next(m for m in FAMILIES if get_model(m).int8_scheme == "dynamic")
    result = export_tiny(model, "onnx", "fp32", opset=11, dynamic_shapes=True)
    assert result.details["export"]["exporter"] == "torchscript"  # the dynamo exporter stops at opset 18
    session = device_runtime.load(result.path)
    ids = session.get_inputs()[0]
    assert ids.shape[1] is None and ids.dynamic_axes == {1: "sequence"}
    spec = get_model(model, tiny=True)
    feed = {k: v[:, :20] for k, v in spec.sample_inputs()[0].items()}  # a shorter sentence than exported
    module = spec.build()
    with torch.no_grad():
        expected = module(*[torch.from_numpy(feed[n]) for n in spec.input_names]).numpy()
    np.testing.assert_allclose(session.run(None, feed)[0], expected, atol=1e-4)


@pytest.mark.parametrize("model", FAMILIES)
def test_profile_per_node_table(export_tiny, model):
    result = export_tiny(model, "onnx", "fp32")
    session = device_runtime.load(result.path, num_threads=1)
    feed = get_model(model, tiny=True).sample_inputs()[0]
    profile = session.profile(feed, runs=5, warmup=1)
    assert len(profile) > 0 and profile.runs == 5
    row = profile[0]
    assert row.op_type and row.node and row.count >= 5 and row.total_us >= row.mean_us > 0
    assert [r.total_us for r in profile] == sorted((r.total_us for r in profile), reverse=True)
    # The rows sum to a share of ORT's measured run time: what they miss is ORT's executor/copy overhead and the
    # profiler's own bookkeeping, largest on these tiny models (~0.45-0.9 measured alone). Preemption between
    # nodes on a loaded CPU lowers it further (0.19 seen on CI's 2 cores under 3 processes), so the test asks
    # only for a real share: the figure itself is a measurement, not a property of the code.
    assert 0.05 <= profile.coverage <= 1.0 + 1e-9
    assert sum(r.share for r in profile) == pytest.approx(profile.coverage)
    graph_types = _graph_ops(result.path)
    assert {r.op_type for r in profile} & graph_types
    assert profile.unprofiled_mean_run_us > 0
    by_type = profile.by_op_type()
    assert sum(g["count"] for g in by_type) == sum(r.count for r in profile)
    json.dumps(profile.to_dict())


def test_parse_profile_drops_warmup_runs():
    matmul, add = {"op_name": "MatMul", "provider": "CPU"}, {"op_name": "Add", "provider": "CPU"}
    events = [
        {"cat": "Session", "name": "model_run", "ts": 0, "dur": 100},
        {"cat": "Node", "name": "a_kernel_time", "ts": 10, "dur": 50, "args": matmul},
        {"cat": "Session", "name": "model_run", "ts": 200, "dur": 100},
        {"cat": "Node", "name": "a_kernel_time", "ts": 210, "dur": 40, "args": matmul},
        {"cat": "Node", "name": "b_kernel_time", "ts": 260, "dur": 20, "args": add},
        {"cat": "Node", "name": "c_fence_before", "ts": 260, "dur": 1, "args": {}},
    ]
    table = parse_ort_profile(events, warmup=1)
    assert table.runs == 1 and table.run_time_us == 100
    rows = [(r.node, r.op_type, r.count, r.total_us) for r in table]
    assert rows == [("a", "MatMul", 1, 40.0), ("b", "Add", 1, 20.0)]
    assert table.coverage == pytest.approx(0.6)
    with pytest.raises(ValueError, match="warm-up"):
        parse_ort_profile(events, warmup=2)


def test_providers_explicit_and_threads(export_tiny):
    path = export_tiny(FAMILIES[0], "onnx", "fp32").path
    session = device_runtime.load(path, providers=["CPUExecutionProvider"], num_threads=1)
    assert session.info["providers"] == ["CPUExecutionProvider"]
    assert session.info["intra_op_num_threads"] == 1
    with pytest.raises(device_runtime.BackendUnavailableError, match="CPUExecutionProvider"):
        device_runtime.load(path, providers=["NoSuchExecutionProvider", "CPUExecutionProvider"])


def test_sniffing_and_corrupt_files(export_tiny, tmp_path):
    data = export_tiny(FAMILIES[0], "onnx", "fp32").path.read_bytes()
    assert onnx_header_ok(data[:16])
    assert not onnx_header_ok(b"\x1c\x00\x00\x00ET12")       # a .pte flatbuffer
    assert not onnx_header_ok(b"\x08\x99\x99\x99\x99\x99")   # ir_version varint out of range
    no_suffix = tmp_path / "exported_model"
    no_suffix.write_bytes(data)
    assert device_runtime.sniff_format(no_suffix) == "onnx"  # by its bytes
    tflite_named_onnx = tmp_path / "really_a_tflite.onnx"
    tflite_named_onnx.write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(64))
    try:  # another format's bytes are not claimed as a corrupt ONNX because of the suffix
        assert device_runtime.sniff_format(tflite_named_onnx) != "onnx"
    except device_runtime.UnknownFormatError:
        pass
    cases = {"truncated.onnx": data[: len(data) // 2], "header_only.onnx": data[:64],
             "garbage.onnx": b"not a model at all" * 10, "zeroed.onnx": data[:200] + bytes(4096) + data[4296:]}
    for name, payload in cases.items():
        path = tmp_path / name
        path.write_bytes(payload)
        with pytest.raises(device_runtime.CorruptArtifactError, match=name):
            device_runtime.load(path)


def test_unsupported_precision_is_a_query():
    converter = get_converter("onnx")
    spec = get_model(FAMILIES[0], tiny=True)
    assert "bf16" in converter.unsupported_reason(spec, "bf16")
    assert converter.unsupported_reason(spec, "fp32") is None
