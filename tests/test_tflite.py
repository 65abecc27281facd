"""TFLite / LiteRT: converter (fp32, fp16, int8-dynamic, int8-static), runtime backend, bad input.

Parity is checked by the export pipeline on each family's real sample inputs (it refuses references without
spread and raises ParityError past the model's tolerance); these tests re-assert the recorded figures with
margins that would catch a regression, and `test_parity_catches_a_corrupted_weight` shows the comparison
does fail on this format when the artifact is wrong.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest

from converters.base import option_flags

from models_zoo import family_representatives
from converters import get_converter, resolve_precision
from converters.base import ConversionError, UnsupportedError
from models_zoo import get_model
from conftest import SUITE_MODELS

FAMILIES = family_representatives(prefer=SUITE_MODELS)
VISION = [m for m in FAMILIES if get_model(m).int8_scheme == "static"]
BERT = [m for m in FAMILIES if get_model(m).int8_scheme == "dynamic"]
REPO = Path(__file__).resolve().parents[1]


def _export(export_tiny, model: str, precision: str, **options):
    spec = get_model(model, tiny=True)
    reason = get_converter("tflite").unsupported_reason(spec, resolve_precision(spec, precision))
    if reason:
        pytest.skip(reason)
    return export_tiny(model, "tflite", precision, **options)


@pytest.fixture(scope="module")
def fp32_vision(export_tiny):
    return _export(export_tiny, VISION[0], "fp32")


@pytest.fixture(scope="module")
def fp32_bert(export_tiny):
    return _export(export_tiny, BERT[0], "fp32")


def _load(path, **kw):
    import device_runtime

    return device_runtime.load(path, **kw)


# -- conversion and parity ---------------------------------------------------------------------------
def test_every_family_is_covered():
    # families come from the registry (one representative each); both int8 schemes are exercised
    assert VISION and BERT and len(FAMILIES) >= 4


@pytest.mark.parametrize("model", FAMILIES)
def test_fp32_parity(export_tiny, model):
    result = _export(export_tiny, model, "fp32")
    spec = get_model(model, tiny=True)
    low = result.parity["lowering"]
    assert result.passed is True
    assert low["max_abs_err"] <= spec.tolerance("fp32").atol
    assert low["sqnr_db"] > 80 and low.get("top1_agreement", 1.0) == 1.0
    # the report beside the artifact records the same figures and what XNNPACK took
    entry = json.loads(result.report_path.read_text())["artifacts"][result.path.name]
    assert entry["parity"]["lowering"]["max_abs_err"] == low["max_abs_err"]
    xnn = result.details["xnnpack"]
    assert xnn["delegated_ops"] + xnn["not_delegated_ops"] == result.details["ops"] == \
        sum(result.details["op_histogram"].values())
    assert xnn["partitions"] >= 1 and xnn["delegated_ops"] > 0.9 * result.details["ops"]
    assert sorted(i["name"] for i in result.details["inputs"]) == sorted(spec.input_names)
    assert [o["name"] for o in result.details["outputs"]] == list(spec.output_names)


# litert-torch's PT2E int8 is one recipe for every vision family, and its export is among the slowest of the suite
# (60-160 s on CI's 2 cores): CI runs it on MobileViT and on the two families with their own paths (Mobile-Former's
# fallback, DynamicViT's token selection); the others' int8 is verified in CI through ONNX (tests/test_onnx.py),
# and here with `pytest -m slow`. Likewise BERT's full-integer route on two of its four architectures.
PT2E_IN_CI = {"mobilevit", "mobileformer", "dynamicvit"}
FULL_INTEGER_IN_CI = {"tinybert", "distilbert"}


def _in_ci(models, families):
    return [pytest.param(m, marks=[] if get_model(m).family in families else [pytest.mark.slow]) for m in models]


@pytest.mark.parametrize("model", _in_ci(VISION, PT2E_IN_CI) + BERT)
def test_int8_family_recipe(export_tiny, model):
    """`int8` is static (PT2E, vs the quantized PyTorch model) for vision, dynamic-range for BERT."""
    result = _export(export_tiny, model, "int8")
    spec = get_model(model, tiny=True)
    assert result.precision == f"int8-{spec.int8_scheme}" and result.passed is True
    quant = result.parity["quantization"]
    assert quant["sqnr_db"] >= spec.tolerance("int8").min_sqnr_db
    assert quant["sqnr_db"] < 80  # it really is quantized
    if spec.int8_scheme == "static":
        assert result.details["route"].startswith("litert-torch PT2E")
        assert result.parity["reference"] == "int8-static PyTorch (simulated)"
        assert result.details["io"] == "float" and result.details["float_io"]["inputs"]
        if spec.family == "dynamicvit":
            # Token selection is data-dependent by design (top-k, a gather and its index arithmetic), and XNNPACK
            # has no int8 GELU: measured 46 of 396 ops outside, all of these kinds; anything else is a regression.
            expected = {"TOPK_V2", "GATHER_ND", "SELECT_V2", "LESS", "ADD", "BROADCAST_TO", "RESHAPE",
                        "CONCATENATION", "GELU", "QUANTIZE", "DEQUANTIZE"}
            assert set(result.details["xnnpack"]["not_delegated"]) <= expected, result.details["xnnpack"]
            assert result.details["xnnpack"]["not_delegated_ops"] <= 0.15 * result.details["ops"]
        else:
            assert result.details["xnnpack"]["not_delegated_ops"] <= 0.1 * result.details["ops"]
    else:
        assert "dynamic-range" in result.details["route"]
        assert result.details["xnnpack"]["partitions"] == 1  # XNNPACK takes every FULLY_CONNECTED


@pytest.mark.parametrize("model", _in_ci(BERT, FULL_INTEGER_IN_CI))
def test_bert_family_int8_static_is_full_integer(export_tiny, model):
    result = _export(export_tiny, model, "int8-static")
    details = result.details
    assert result.passed is True and details["full_integer"] is True
    assert details["float_ops"] == {}
    assert details["attention_mask_bound"] < 1e4  # finite mask, so scores keep their int8 resolution
    # measured 33-35 dB on the tiny models; the bounded mask and min/max calibration are what make it > 15 dB
    assert result.parity["quantization"]["sqnr_db"] >= 25
    assert result.size_bytes < 0.5 * _export(export_tiny, model, "fp32").size_bytes


def test_int8_io_quantizes_through_adapt_io(export_tiny):
    model = min(VISION, key=lambda m: get_model(m, tiny=True).image_size)  # the quickest to convert
    int8 = _export(export_tiny, model, "int8-static", int8_io=True)
    float_io = _export(export_tiny, model, "int8")  # same calibration, float I/O
    assert int8.path.name == "model-int8io.tflite" and int8.passed is True
    session = _load(int8.path)
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert inp.dtype == np.int8 and inp.quantization and inp.quantization.scale > 0
    assert out.dtype == np.float32 or out.quantization  # litert-torch keeps some heads' outputs float
    feed = get_model(model, tiny=True).sample_inputs()[0]
    from device_runtime import DTypeError

    with pytest.raises(DTypeError, match=r"scale .* zero point"):
        session.run(None, feed)
    adapted = _load(int8.path, adapt_io=True).run(None, feed)[0]
    reference = _load(float_io.path).run(None, feed)[0]
    # the in-graph QUANTIZE of the float-I/O model and adapt_io's numpy rounding may differ by one input
    # step on a few pixels; the outputs then agree to an output step (or a hair, for a float output)
    step = out.quantization.scale if out.quantization else 1e-3 * float(np.max(np.abs(reference)))
    assert np.max(np.abs(adapted - reference)) <= 2 * step + 1e-7
    assert adapted.dtype == np.float32 and np.std(adapted) > 0


def test_fp16_weights(export_tiny):
    result = _export(export_tiny, BERT[0], "fp16")
    assert result.passed is True and result.parity["quantization"]["sqnr_db"] >= 30
    assert "DEQUANTIZE" in result.details["op_histogram"]  # fp16 constants, dequantized once at load
    assert result.size_bytes < 0.6 * _export(export_tiny, BERT[0], "fp32").size_bytes


def test_parity_catches_a_corrupted_weight(fp32_vision, tmp_path):
    """Scaling the classifier's weights by 1.5 must break parity: the figures above are not vacuous."""
    from ai_edge_litert import schema_py_generated as fb
    from converters import parity

    data = bytearray(fp32_vision.path.read_bytes())
    model = fb.Model.GetRootAs(data, 0)
    graph = model.Subgraphs(0)
    codes = [max(model.OperatorCodes(i).BuiltinCode(), model.OperatorCodes(i).DeprecatedBuiltinCode())
             for i in range(model.OperatorCodesLength())]
    fcs = [graph.Operators(i) for i in range(graph.OperatorsLength())
           if codes[graph.Operators(i).OpcodeIndex()] == fb.BuiltinOperator.FULLY_CONNECTED]
    buffer = model.Buffers(graph.Tensors(fcs[-1].Inputs(1)).Buffer())
    if buffer.DataLength():
        start, size = buffer._tab.Vector(buffer._tab.Offset(4)), buffer.DataLength()
    else:
        start, size = buffer.Offset(), buffer.Size()
    weights = np.frombuffer(data, np.float32, size // 4, start)
    data[start:start + size] = (weights * 1.5).astype(np.float32).tobytes()
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(bytes(data))
    spec = get_model(VISION[0], tiny=True)
    feeds = spec.sample_inputs()
    torch_out = parity.torch_outputs(spec.build(), spec.input_names, feeds)
    session = _load(broken)
    got = parity.compare(torch_out, [session.run(None, f) for f in feeds], classifier=True)
    assert got["max_abs_err"] > spec.tolerance("fp32").atol


def test_unlowerable_op_is_named(tmp_path):
    import torch

    converter = get_converter("tflite")
    if converter.missing_toolchain():
        pytest.skip(converter.missing_toolchain())

    class Det(torch.nn.Module):
        def forward(self, x):
            return torch.linalg.det(x.reshape(2, 2, 2)).reshape(1, 2)

    spec = types.SimpleNamespace(name="det", input_names=("x",), output_names=("y",))
    feeds = [{"x": np.random.default_rng(0).random((1, 8), dtype=np.float32)}]
    with pytest.raises(ConversionError, match=r"op aten\._linalg_det\S* cannot be lowered"):
        converter.convert(Det().eval(), spec, "fp32", feeds, tmp_path / "det.tflite")
    assert not (tmp_path / "det.tflite").exists()


def test_static_failure_falls_back_only_when_asked(tmp_path, monkeypatch):
    import torch

    from converters.tflite import converter as tfl

    converter = get_converter("tflite")
    if converter.missing_toolchain():
        pytest.skip(converter.missing_toolchain())

    def blocked(*_args, **_kwargs):
        raise ConversionError("the static int8 model converts but LiteRT cannot prepare it: op EMBEDDING_LOOKUP "
                              "(kernel tflite/kernels/embedding_lookup.cc)")

    monkeypatch.setattr(tfl, "_pt2e_static", blocked)
    module = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)).eval()
    spec = types.SimpleNamespace(name="mlp", input_names=("x",), output_names=("y",))
    feeds = [{"x": np.random.default_rng(i).random((1, 16), dtype=np.float32)} for i in range(2)]
    with pytest.raises(ConversionError, match="embedding_lookup"):
        converter.convert(module, spec, "int8-static", feeds, tmp_path / "a.tflite", static_route="pt2e")
    result = converter.convert(module, spec, "int8-static", feeds, tmp_path / "b.tflite", allow_fallback=True,
                               static_route="pt2e")
    assert result.precision == "int8-dynamic" and "FALLBACK" in result.details["route"]  # a typed field, not a detail
    assert "embedding_lookup" in result.details["fallback_reason"] and result.reference is module
    # route "auto" asks for a static int8 that works: where PT2E cannot convert, ai-edge-quantizer's static
    # route makes it (still int8-static), and the details say why PT2E was not used
    result = converter.convert(module, spec, "int8-static", feeds, tmp_path / "c.tflite")
    assert result.precision is None  # None: what was asked, int8-static (a fallback names what it made instead)
    assert "ai-edge-quantizer static" in result.details["route"]
    assert "EMBEDDING_LOOKUP" in result.details["pt2e_failed"]


def test_unsupported_requests():
    converter = get_converter("tflite")
    spec = get_model(VISION[0], tiny=True)
    assert "int2" in converter.unsupported_reason(spec, "int2")
    with pytest.raises(UnsupportedError, match="int8-static only"):
        converter.convert(None, spec, "fp32", [], Path("unused.tflite"), int8_io=True)
    assert converter.artifact_name(int8_io=True) != converter.artifact_name()
    flags = {flag for flag in option_flags(converter.Options)}
    assert {"--int8-io", "--allow-fallback"} <= flags


# -- runtime -----------------------------------------------------------------------------------------
def test_inputs_keep_model_order_and_run_positionally(fp32_bert):
    session = _load(fp32_bert.path, adapt_io=True)
    spec = get_model(BERT[0], tiny=True)
    # the signature lists names alphabetically; the session keeps the model's argument order
    assert [t.name for t in session.get_inputs()] == list(spec.input_names)
    assert all(t.dtype == np.int32 and t.shape == (1, spec.seq_len) for t in session.get_inputs())
    feed = spec.sample_inputs()[0]
    by_name = session.run(None, feed)[0]
    positional = session(*[feed[n] for n in spec.input_names])[0]
    np.testing.assert_array_equal(by_name, positional)
    assert session.info["signature"] == "serving_default" and session.info["backend"] == "ai_edge_litert"


def test_wrong_shape_and_dtype(fp32_vision):
    from device_runtime import DTypeError, MissingInputError, ShapeError

    session = _load(fp32_vision.path)
    (inp,) = session.get_inputs()
    with pytest.raises(ShapeError, match=re.escape(f"the model expects {list(inp.shape)}")):
        session.run(None, {inp.name: np.zeros((1, 3, 32, 32), np.float32)})
    with pytest.raises(DTypeError, match=r"float64.*float32"):
        session.run(None, {inp.name: np.zeros(inp.shape, np.float64)})
    with pytest.raises(MissingInputError, match=inp.name):
        session.run(None, {})


def test_num_threads_is_honoured(fp32_vision):
    import os

    assert _load(fp32_vision.path, num_threads=3).info["threads"] == 3
    assert _load(fp32_vision.path).info["threads"] == (os.cpu_count() or 1)
    with pytest.raises(ValueError):
        _load(fp32_vision.path, num_threads=0)


@pytest.fixture
def fake_tflite_runtime(monkeypatch):
    """A stand-in `tflite_runtime` (same Interpreter API) that records that it was used."""
    from ai_edge_litert.interpreter import Interpreter

    created = []

    class RecordingInterpreter(Interpreter):
        def __init__(self, *args, **kwargs):
            created.append(kwargs)
            super().__init__(*args, **kwargs)

    package = types.ModuleType("tflite_runtime")
    module = types.ModuleType("tflite_runtime.interpreter")
    module.Interpreter = RecordingInterpreter
    package.interpreter = module
    monkeypatch.setitem(sys.modules, "tflite_runtime", package)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", module)
    return created


def test_backend_choice_is_explicit(fp32_vision, fake_tflite_runtime, monkeypatch):
    import device_runtime
    from device_runtime import BackendUnavailableError
    from device_runtime.backends import tflite as backend

    names = [b["name"] for b in device_runtime.list_backends()["tflite"]]
    assert names == ["ai_edge_litert", "tflite_runtime"]  # precedence order
    assert _load(fp32_vision.path).backend == "ai_edge_litert" and not fake_tflite_runtime
    session = _load(fp32_vision.path, backend="tflite_runtime", num_threads=2)
    assert session.info["backend"] == "tflite_runtime" and fake_tflite_runtime[-1]["num_threads"] == 2
    assert session.run(None, session.example_feed())[0].shape == (1, 1000)

    # a board with only tflite-runtime: the default picks it, and says so
    real = backend._module_present
    monkeypatch.setattr(backend, "_module_present", lambda n: n != "ai_edge_litert" and real(n))
    assert _load(fp32_vision.path).info["backend"] == "tflite_runtime"
    with pytest.raises(BackendUnavailableError, match="ai_edge_litert.*not installed"):
        _load(fp32_vision.path, backend="ai_edge_litert")  # named: an error, never a fallback

    monkeypatch.setattr(backend, "_module_present", lambda n: False)
    with pytest.raises(BackendUnavailableError, match="no usable backend for tflite"):
        _load(fp32_vision.path)


def test_runtime_does_not_import_torch(fp32_vision):
    code = textwrap.dedent(f"""
        import sys
        import device_runtime
        s = device_runtime.load({str(fp32_vision.path)!r}, num_threads=1)
        out = s.run(None, s.example_feed())
        assert out[0].shape == (1, 1000), out[0].shape
        heavy = [m for m in ("torch", "litert_torch", "ai_edge_quantizer", "transformers", "timm") if m in sys.modules]
        print("HEAVY", heavy)
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "HEAVY []" in proc.stdout


# -- bad input ---------------------------------------------------------------------------------------
def _variant(tmp_path, data: bytes, name="bad.tflite") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("cut", [8, 64, 0.25, 0.5, 0.9, -1])
def test_truncated_file_is_a_clear_error(fp32_bert, tmp_path, cut):
    from device_runtime import CorruptArtifactError

    data = fp32_bert.path.read_bytes()
    n = cut if isinstance(cut, int) and cut > 0 else (len(data) - 1 if cut == -1 else int(len(data) * cut))
    with pytest.raises(CorruptArtifactError, match="truncated|outside the file|past the end|too short"):
        _load(_variant(tmp_path, data[:n]))


def test_corrupt_and_foreign_files(fp32_bert, tmp_path):
    import struct

    from device_runtime import CorruptArtifactError, UnknownFormatError

    data = bytearray(fp32_bert.path.read_bytes())
    bad_root = bytearray(data)
    bad_root[0:4] = struct.pack("<I", len(data) + 100)
    with pytest.raises(CorruptArtifactError, match="root table offset"):
        _load(_variant(tmp_path, bytes(bad_root)))
    bad_version = bytearray(data)
    # the version is the first field of the root table; zero the whole vtable entry area instead of guessing
    root = struct.unpack_from("<I", data, 0)[0]
    vtable = root - struct.unpack_from("<i", data, root)[0]
    version_at = root + struct.unpack_from("<H", data, vtable + 4)[0]
    bad_version[version_at:version_at + 4] = struct.pack("<I", 99)
    with pytest.raises(CorruptArtifactError, match="schema version 99"):
        _load(_variant(tmp_path, bytes(bad_version)))
    with pytest.raises(UnknownFormatError, match="not a known artifact format"):
        _load(_variant(tmp_path, b"PK\x03\x04 not a model at all" * 10))
    with pytest.raises(CorruptArtifactError):
        _load(_variant(tmp_path, b"\x10\x00\x00\x00TFL3" + bytes(range(256)) * 4))
    with pytest.raises(UnknownFormatError, match="empty"):
        _load(_variant(tmp_path, b""))


def test_mutated_files_never_crash_the_process(fp32_bert, tmp_path):
    """Random bit flips and bad offsets in the flatbuffer's tables, each loaded and run in one subprocess:
    every one must end in a Python exception or a run, never a crash (the process must exit 0)."""
    code = textwrap.dedent(f"""
        import random, sys
        import device_runtime
        from device_runtime.backends.tflite_verifier import verify_flatbuffer
        from ai_edge_litert import schema_py_generated as fb
        src = open({str(fp32_bert.path)!r}, "rb").read()
        model = fb.Model.GetRootAs(src, 0)
        weights = set()  # byte ranges of inline weights: flipping those is not a structural test
        for k in range(model.BuffersLength()):
            buf = model.Buffers(k)
            if buf.DataLength():
                start = buf._tab.Vector(buf._tab.Offset(4))
                weights.update(range(start, start + buf.DataLength()))
        tables = [p for p in range(min(len(src), 1 << 20)) if p not in weights]
        rng = random.Random(7)
        outcomes = {{}}
        for i in range(120):
            b = bytearray(src)
            if i % 3 == 2:
                p = rng.choice(tables) & ~3
                b[p:p + 4] = rng.choice([b"\\xff\\xff\\xff\\x7f", b"\\x00\\x00\\x00\\x80", b"\\xff\\xff\\xff\\xff"])
            else:
                for _ in range(rng.randint(1, 6)):
                    b[rng.choice(tables)] ^= 1 << rng.randrange(8)
            path = {str(tmp_path / "m.tflite")!r}
            open(path, "wb").write(b)
            try:
                s = device_runtime.load(path, num_threads=1)
                s.run(None, s.example_feed())
                kind = "ran"
            except (ValueError, RuntimeError, ImportError) as exc:
                kind = type(exc).__name__
            outcomes[kind] = outcomes.get(kind, 0) + 1
        print("OUTCOMES", outcomes)
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"the process died (rc {proc.returncode}): {proc.stderr[-2000:]}"
    outcomes = proc.stdout.split("OUTCOMES")[-1]
    assert "CorruptArtifactError" in outcomes, outcomes
    print(outcomes)


@pytest.fixture(scope="module")
def two_signatures(tmp_path_factory):
    """A model with two signatures (two subgraphs); the second takes two inputs and gives two outputs."""
    import os

    import torch

    if get_converter("tflite").missing_toolchain():
        pytest.skip(get_converter("tflite").missing_toolchain())
    import litert_torch

    class Double(torch.nn.Module):
        def forward(self, x):
            return {"y": x * 2.0}

    class SumDiff(torch.nn.Module):
        def forward(self, x, z):
            return {"y": x + z, "w": x - z}

    os.environ["LITERT_TORCH_SHOW_PROGRESS"] = "n"
    model = (litert_torch.signature("double", Double(), sample_kwargs={"x": torch.ones(1, 4)})
             .signature("sumdiff", SumDiff(), sample_kwargs={"x": torch.ones(1, 4), "z": torch.ones(1, 4)})
             .convert())
    path = tmp_path_factory.mktemp("signatures") / "two.tflite"
    path.write_bytes(model.model_content())
    return path


def test_signature_runners_and_dynamic_dims(two_signatures, tmp_path):
    from ai_edge_litert.tools import flatbuffer_utils

    from device_runtime import InputError

    x, z = np.arange(4, dtype=np.float32).reshape(1, 4), np.ones((1, 4), np.float32)
    first = _load(two_signatures)
    assert first.info["signature"] == "double" and first.info["subgraphs"] == 2
    np.testing.assert_array_equal(first.run(None, {"x": x})[0], 2 * x)
    second = _load(two_signatures, signature="sumdiff")
    # the signature def lists outputs alphabetically (w, y); the session keeps the function's order
    assert [t.name for t in second.get_inputs()] == ["x", "z"] and [t.name for t in second.get_outputs()] == ["y", "w"]
    y, w = second.run(None, {"x": x, "z": z})
    np.testing.assert_array_equal(y, x + z)
    np.testing.assert_array_equal(w, x - z)
    with pytest.raises(InputError, match="no signature 'nope'.*double.*sumdiff"):
        _load(two_signatures, signature="nope")

    # make the second dimension dynamic (shape_signature -1): the session reports None and resizes per run
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(two_signatures.read_bytes()))
    for tensor in model.subgraphs[1].tensors:
        if tensor.shape is not None and len(tensor.shape) == 2:
            tensor.shapeSignature = [1, -1]
    dynamic = tmp_path / "dynamic.tflite"
    dynamic.write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(model)))
    session = _load(dynamic, signature="sumdiff")
    (info, _) = session.get_inputs()
    assert info.shape == (1, None) and info.dynamic_axes == {1: "dim_1"}
    for n in (3, 9):
        a = np.full((1, n), 2.0, np.float32)
        y, w = session.run(None, {"x": a, "z": a})
        assert y.shape == (1, n) and np.all(y == 4.0) and np.all(w == 0.0)
