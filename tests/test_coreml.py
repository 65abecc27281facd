"""Core ML `.mlpackage`: every family converts and passes Linux-side validation, compression shrinks the weights
by the expected factors, the fp16 risk scan flags what overflows and stays quiet on the zoo, and the macOS
runtime backend (parity through the Session API) runs where Core ML can predict.

coremltools converts on Linux but cannot predict there: the tests of prediction skip off macOS with that
reason, and on Linux the tests check that nothing claims parity.
"""
from __future__ import annotations

import json
import sys
import warnings
from dataclasses import dataclass, field

import numpy as np
import pytest

from converters.base import option_flags
from converters.parity import error_bound

import device_runtime
from models_zoo import family_representatives
from converters import UnsupportedError, get_converter, resolve_precision
from models_zoo import InputSpec, ModelSpec, Tolerance, get_model
from conftest import SUITE_MODELS

CONVERTER = get_converter("coreml")
pytestmark = pytest.mark.skipif(CONVERTER.missing_toolchain() is not None,
                                reason=str(CONVERTER.missing_toolchain()))
ON_MAC = sys.platform == "darwin"
NOT_ON_MAC = "Core ML prediction needs macOS"
mac_only = pytest.mark.skipif(not ON_MAC, reason=f"{NOT_ON_MAC}: coremltools has no predictor on {sys.platform}")


def _coreml():
    from converters.coreml import converter as coreml

    return coreml


def _torch_output_shapes(spec) -> dict:
    import torch

    feed = spec.sample_inputs()[0]
    with torch.no_grad():
        out = spec.build()(*[torch.from_numpy(feed[n]) for n in spec.input_names])
    out = out if isinstance(out, (tuple, list)) else (out,)
    return {n: tuple(o.shape) for n, o in zip(spec.output_names, out)}


def _proto(path):
    return _coreml().import_coremltools().models.MLModel(str(path), skip_model_load=True).get_spec()


# -- every family: convert, validate, report ---------------------------------------------------------------

@pytest.mark.parametrize("name", family_representatives(prefer=SUITE_MODELS))
def test_every_family_converts_validates_and_reports(export_tiny, name):
    result = export_tiny(name, "coreml", "fp16")
    spec = get_model(name, tiny=True)
    assert result.path.name == "model.mlpackage" and result.path.is_dir()
    assert device_runtime.sniff_format(result.path) == "coreml"
    details = result.details
    assert details["target"] == "iOS17" and details["compute_precision"] == "fp16"

    # Parity is never claimed where Core ML cannot predict; the report says why, plainly.
    report = json.loads(result.report_path.read_text())
    entry = report["artifacts"]["model.mlpackage"]
    if ON_MAC:
        assert result.passed is True and entry["parity"]["passed"] is True
    else:
        assert result.passed is None and entry["parity"] == {"passed": None, "skipped": result.parity["skipped"]}
        assert NOT_ON_MAC in entry["parity"]["skipped"] and details["numerical_parity"].startswith("not run")
    assert entry["size_bytes"] == details["validation"]["package_bytes"]

    # Linux-side validation: inputs/outputs match the ModelSpec, op histogram, nothing newer than iOS17.
    validation = details["validation"]
    assert validation["loads"] and validation["model_type"] == "mlProgram" and not validation["problems"]
    assert validation["specification_version"] <= 8 and validation["opsets"] == ["CoreML7"]
    assert [i["name"] for i in validation["io"]["inputs"]] == list(spec.input_names)
    for got, want in zip(validation["io"]["inputs"], spec.input_specs()):
        assert got["shape"] == list(want.shape)
        assert got["dtype"] == ("float32" if want.dtype == "float32" else "int32")  # Core ML has no int64
    reference = _torch_output_shapes(spec)  # the validation itself also compares these
    assert validation["io"]["outputs"] == [{"name": n, "dtype": "float32", "shape": list(reference[n])}
                                           for n in spec.output_names]
    assert validation["ops_newer_than_target"] == {} and validation["ops_total"] > 10
    histogram = validation["op_histogram"]
    assert histogram.get("softmax", 0) >= 1 and histogram.get("layer_norm", 0) >= 1  # attention and its norms
    weights = validation["weights"]
    assert weights["total_bytes"] > 0 and max(weights["by_dtype"], key=weights["by_dtype"].get) == "float16"

    # The fp16 risk scan ran on the real samples and stays quiet on the zoo models.
    scan = details["fp16_scan"]
    assert scan["samples"] == len(spec.calibration_inputs()) and scan["layers_scanned"] > 5
    assert scan["overflow"] == [] and scan["underflow"] == [] and scan["risks"] == []
    assert 0 < scan["max_abs_activation"] < 65504 and scan["peak_layer"]
    assert scan["fp16_vs_fp32"]["finite"] and scan["fp16_vs_fp32"]["sqnr_db"] > 30
    if spec.family in ("tinybert", "q8bert"):
        assert scan["mask_sentinels"], "the BERT attention mask (finfo.min) is counted apart, not as overflow"

    # Metadata from the spec.
    proto = _proto(result.path)
    meta = proto.description.metadata
    assert meta.author.startswith("Pocketformer") and spec.name in meta.shortDescription
    assert ("random" in meta.license) == (entry["weights"]["source"] == "random") and meta.versionString
    user = dict(meta.userDefined)
    assert user["pocketformer.model"] == spec.name and user["pocketformer.compute_units"] == "ALL"
    labels = user.get("pocketformer.labels")
    assert (json.loads(labels) if labels else None) == spec.labels()
    described = {f.name: f.shortDescription for f in proto.description.input}
    assert all(described[n] for n in spec.input_names)


def test_compression_shrinks_weights_by_the_expected_factors(export_tiny):
    """Each method applied to one fp16 package (q8bert-tiny: its 30522x32 embedding dominates the weights,
    so whole-model factors show). Expected factors against fp16: int8 0.5, 6-bit 0.375, 4-bit 0.25,
    50% sparse 0.5 + a 1-bit mask."""
    cm = _coreml()
    base = export_tiny("q8bert", "coreml", "fp16")
    mlmodel = cm.import_coremltools().models.MLModel(str(base.path), skip_model_load=True)
    before = cm.weight_summary(mlmodel.get_spec())
    assert before["compressed"]["ops"] == 0
    figures = {}
    with cm.quiet_progress_bars():
        for method, expected in cm.EXPECTED_FACTOR_VS_FP16.items():
            after = cm.weight_summary(cm.compress_model(mlmodel, method).get_spec())
            compressed = after["compressed"]
            figures[method] = after["total_bytes"] / before["total_bytes"]
            assert compressed["ops"] >= 1
            # The compressed tensors alone: the nominal factor plus tables, scales and masks. int8 per channel
            # pays an fp16 scale and an int8 zero point per row, ~9% on this model's 32-wide embedding rows
            # (under 1% on BERT-base's 768-wide rows).
            assert expected - 0.01 <= compressed["factor_vs_dense"] <= expected + 0.06, (method, compressed)
            # The whole model: small tensors stay fp16, so a little above the nominal factor.
            assert expected - 0.01 < figures[method] < expected + 0.08, (method, figures[method])
    assert figures["palettize4"] < figures["palettize6"] < figures["int8"] < figures["prune50"] < 1


def test_compress_option_through_the_pipeline_records_sizes(tmp_path):
    from sdk.export.api import export

    # Into one folder (not the shared test-export cache, which keeps each export apart): the compressed package
    # goes beside the plain one, and one report lists both.
    plain = export("q8bert", "coreml", "fp16", out_dir=tmp_path, tiny=True)[0]
    result = export("q8bert", "coreml", "fp16", out_dir=tmp_path, tiny=True, compress="int8")[0]
    assert result.path.name == "model-int8.mlpackage" and result.path.parent == plain.path.parent
    compression = result.details["compression"]
    assert compression["method"] == "int8" and compression["weight_bytes_after"] < 0.6 * compression["weight_bytes_before"]
    assert compression["package_bytes_after"] < 0.6 * compression["package_bytes_before"]
    assert result.size_bytes == compression["package_bytes_after"] < 0.6 * plain.size_bytes
    assert result.details["validation"]["op_histogram"]["constexpr_affine_dequantize"] >= 1
    report = json.loads(result.report_path.read_text())
    assert {"model.mlpackage", "model-int8.mlpackage"} <= set(report["artifacts"])


def test_int4_weight_precision_is_4bit_palettization(export_tiny):
    result = export_tiny("tinybert_4l_312d", "coreml", "int4-weight")
    assert result.precision == "int4-weight" and result.details["compute_precision"] == "fp16"
    compression = result.details["compression"]
    assert compression["method"] == "palettize4" and compression["compressed_tensors"]["ops"] >= 1
    assert compression["compressed_tensors"]["factor_vs_dense"] == pytest.approx(0.25, abs=0.03)
    assert compression["weight_bytes_after"] < compression["weight_bytes_before"]


# -- fp16 risk scan --------------------------------------------------------------------------------------

def _overflow_module(scale: float):
    import torch

    class Overflow(torch.nn.Module):
        """fc1's outputs reach ~1e5 (beyond fp16's 65504) on ordinary inputs; fc2 scales them back."""

        def __init__(self):
            super().__init__()
            self.fc1 = torch.nn.Linear(16, 16)
            self.act = torch.nn.ReLU()
            self.fc2 = torch.nn.Linear(16, 4)
            with torch.no_grad():
                self.fc1.weight.copy_(torch.linspace(0.5, 1.5, 256).view(16, 16) * scale)
                self.fc1.bias.zero_()
                self.fc2.weight.copy_(torch.linspace(-1, 1, 64).view(4, 16) / scale)
                self.fc2.bias.zero_()

        def forward(self, features):
            return self.fc2(self.act(self.fc1(features)))

    return Overflow().eval()


@dataclass(frozen=True)
class ToySpec(ModelSpec):
    """A minimal spec around a hand-built module, for the scan's positive cases."""

    name: str = "toy"
    family: str = "toy"
    task: str = "regression"
    output_names: tuple = ("logits",)
    tolerances: dict = field(default_factory=lambda: {"fp32": Tolerance(1e-4), "fp16": Tolerance(5e-2, 30.0)})
    scale: float = 1e4

    def _build(self):
        return _overflow_module(self.scale)

    def input_specs(self):
        return (InputSpec("features", (1, 16), "float32"),)

    def _sample_feeds(self):
        rng = np.random.default_rng(0)
        return [{"features": rng.uniform(0.5, 1.0, (1, 16)).astype(np.float32)} for _ in range(3)]

    def preprocessing(self):
        return {"kind": "tensor"}


def test_fp16_scan_flags_the_overflowing_layer_and_strict_fails(tmp_path):
    from converters.fp16_scan import Fp16RiskError, Fp16RiskWarning
    from sdk.export.api import export

    with pytest.raises(Fp16RiskError, match=r"fc1 \(addmm"):
        export(ToySpec(), "coreml", "fp16", out_dir=tmp_path, strict=True)
    assert not list(tmp_path.rglob("*.mlpackage"))  # nothing half-written left behind

    with pytest.warns(Fp16RiskWarning, match="fc1") as caught:
        result, = export(ToySpec(), "coreml", "fp16", out_dir=tmp_path)
    assert "fc2" not in str(caught[0].message)
    scan = result.details["fp16_scan"]
    # Execution order: the overflow starts in fc1; the ReLU after it only carries the same values on.
    assert scan["overflow"][0]["layer"] == "fc1" and {r["layer"] for r in scan["overflow"]} == {"fc1", "act"}
    assert scan["peak_layer"] == "fc1"
    assert scan["max_abs_activation"] > 65504
    assert not scan["fp16_vs_fp32"]["finite"]  # PyTorch in float16 really overflows to inf here
    assert result.details["validation"]["loads"]

    with warnings.catch_warnings():  # fp32 compute: no scan, no warning
        warnings.simplefilter("error", Fp16RiskWarning)
        fp32, = export(ToySpec(), "coreml", "fp32", out_dir=tmp_path)
    assert fp32.details["fp16_scan"] == {"skipped": "compute precision is fp32"}


def test_fp16_scan_flags_underflow_and_passes_a_healthy_model():
    from converters import fp16_scan

    feeds = ToySpec().sample_inputs()
    tiny = fp16_scan.scan(_overflow_module(1e-9), ["features"], feeds)  # fc1 outputs ~1e-8: flush to zero
    assert tiny["overflow"] == [] and "fc1" in {r["layer"] for r in tiny["underflow"]}
    assert any("underflow" in r for r in fp16_scan.risks(tiny))

    healthy = fp16_scan.scan(_overflow_module(1.0), ["features"], feeds)
    assert healthy["overflow"] == [] and healthy["underflow"] == [] and fp16_scan.risks(healthy, 30.0) == []
    assert healthy["fp16_vs_fp32"]["sqnr_db"] > 40


# -- inputs: flexible sequence length, image input, targets ------------------------------------------------

def test_bert_flexible_sequence_length_as_a_range(export_tiny):
    result = export_tiny("tinybert_4l_312d", "coreml", "fp32", seq_lens="16-64")
    assert result.path.name == "model-seq16-64.mlpackage"
    for got in result.details["validation"]["io"]["inputs"]:
        assert got["shape"] == [1, 32] and got["flexible"] == {"kind": "shapeRange", "axes": [1]}
    ranges = _proto(result.path).description.input[0].type.multiArrayType.shapeRange.sizeRanges
    assert (ranges[1].lowerBound, ranges[1].upperBound) == (16, 64)


def test_bert_enumerated_lengths_need_ios18_for_several_inputs(export_tiny):
    with pytest.raises(UnsupportedError, match="ios18"):
        export_tiny("tinybert_4l_312d", "coreml", "fp32", seq_lens="16,32,64")
    result = export_tiny("tinybert_4l_312d", "coreml", "fp32", seq_lens="16,32,64", target="ios18")
    assert result.path.name == "model-ios18-seq16_32_64.mlpackage"
    validation = result.details["validation"]
    assert validation["target"] == "iOS18" and validation["specification_version"] == 9
    assert all(i["flexible"] == {"kind": "enumeratedShapes", "axes": [1]} for i in validation["io"]["inputs"])
    shapes = _proto(result.path).description.input[0].type.multiArrayType.enumeratedShapes.shapes
    assert sorted(tuple(s.shape) for s in shapes) == [(1, 16), (1, 32), (1, 64)]

    # The same package checked against an older target is refused: its program needs iOS18.
    spec = get_model("tinybert_4l_312d", tiny=True)
    with pytest.raises(_coreml().CoreMLValidationError, match="newer than the target"):
        _coreml().validate_package(result.path, spec, target="ios17",
                                   flexible_axes={n: {1} for n in spec.input_names})


def test_seq_lens_are_refused_where_they_make_no_sense(export_tiny):
    with pytest.raises(UnsupportedError, match="no dynamic axis"):
        export_tiny("mobilevit_xxs", "coreml", "fp32", seq_lens="16-64")
    with pytest.raises(UnsupportedError, match="own sequence length 32"):
        export_tiny("tinybert_4l_312d", "coreml", "fp32", seq_lens="64-128")
    for bad in ("64", "8-4", "a,b"):
        with pytest.raises(UnsupportedError):
            _coreml().parse_seq_lens(bad)


def test_image_input_folds_the_models_mean_and_std(export_tiny):
    result = export_tiny("efficientformer_l1", "coreml", "fp32", image_input=True)
    assert result.path.name == "model-image.mlpackage"
    image = result.details["io"]["image_input"]
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]  # EfficientFormer's ImageNet normalisation
    ref = float(np.mean(std))
    assert image["scale"] == pytest.approx(1 / (255 * ref))
    assert image["bias"] == pytest.approx([-m / ref for m in mean])
    # scale*pixel + bias, then the in-model factor ref/std_c, is exactly (pixel/255 - mean_c)/std_c.
    pixel = np.array([0.0, 128.0, 255.0])
    for c in range(3):
        got = (image["scale"] * pixel + image["bias"][c]) * image["in_model_channel_factors"][c]
        assert got == pytest.approx((pixel / 255 - mean[c]) / std[c])
    assert result.details["validation"]["io"]["inputs"] == [
        {"name": "pixel_values", "type": "image", "shape": [224, 224], "color": "RGB"}]
    if not ON_MAC:
        assert NOT_ON_MAC in result.parity["skipped"]
    else:  # the image package cannot be fed the normalised tensors of the parity check
        assert "ImageType" in result.parity["skipped"]
    with pytest.raises(UnsupportedError, match="image models"):
        export_tiny("tinybert_4l_312d", "coreml", "fp32", image_input=True)


def test_unknown_target_and_compression_are_refused_with_choices(export_tiny):
    with pytest.raises(UnsupportedError, match="ios17"):
        export_tiny("mobilevit_xxs", "coreml", "fp32", target="ios99")
    with pytest.raises(UnsupportedError, match="palettize4"):
        export_tiny("mobilevit_xxs", "coreml", "fp32", compress="zip")
    with pytest.raises(UnsupportedError, match="iOS16"):
        export_tiny("mobilevit_xxs", "coreml", "fp32", compress="int8", target="ios15")


def test_validation_catches_a_package_that_does_not_match_the_spec(export_tiny):
    result = export_tiny("mobilevit_xxs", "coreml", "fp16")
    other = get_model("efficientformer_l1", tiny=True)  # 224x224 input, the package takes 64x64
    with pytest.raises(_coreml().CoreMLValidationError, match=r"default shape \[1, 3, 64, 64\]"):
        _coreml().validate_package(result.path, other)
    bert = get_model("tinybert_4l_312d", tiny=True)
    with pytest.raises(_coreml().CoreMLValidationError, match="inputs are"):
        _coreml().validate_package(result.path, bert)


# -- capability queries and names ------------------------------------------------------------------------

def test_precisions_and_refusals_say_what_to_do_instead():
    spec = get_model("tinybert_4l_312d", tiny=True)
    assert CONVERTER.unsupported_reason(spec, "fp16") is None
    assert CONVERTER.unsupported_reason(spec, "fp32") is None
    assert CONVERTER.unsupported_reason(spec, "int4-weight") is None
    assert "--compress int8" in CONVERTER.unsupported_reason(spec, "int8-dynamic")
    assert "macOS" in CONVERTER.unsupported_reason(spec, "int8-static")
    assert CONVERTER.default_precision == "fp16"  # Core ML's own default, used when no precision is given
    assert resolve_precision(get_model("q8bert", tiny=True), None, CONVERTER) == "fp16"  # not q8bert's int8
    # Options are judged before any slow work too.
    assert "ios17" in CONVERTER.unsupported_reason(spec, "fp16", target="ios99")
    assert "ios18" in CONVERTER.unsupported_reason(spec, "fp16", seq_lens="16,32")
    assert CONVERTER.unsupported_reason(spec, "fp16", seq_lens="16,32", target="ios18") is None
    assert "image models" in CONVERTER.unsupported_reason(spec, "fp32", image_input=True)
    assert "palettization" in CONVERTER.unsupported_reason(spec, "int4-weight", compress="int8")
    flags = {flag for flag in option_flags(CONVERTER.Options)}
    assert {"--target", "--compress", "--compute-units", "--image-input", "--seq-lens", "--strict"} <= flags
    assert CONVERTER.artifact_name() == "model.mlpackage"
    assert CONVERTER.artifact_name(compress="palettize4", target="ios18") == "model-ios18-palettize4.mlpackage"


def test_cli_export_gets_the_coreml_options():
    from sdk.cli.app import build_parser

    parser, dests = build_parser()
    args = parser.parse_args(["export", "mobilevit_xxs", "--to", "coreml", "--precision", "fp16", "--compress",
                              "palettize4", "--target", "ios18", "--compute-units", "cpu_and_ne", "--strict"])
    options = {d: getattr(args, d) for d in dests if getattr(args, d) is not None}
    assert {"compress": "palettize4", "target": "ios18", "compute_units": "cpu_and_ne",
            "strict": True}.items() <= options.items()
    assert "image_input" not in options and "seq_lens" not in options  # unset flags are not passed
    assert CONVERTER.artifact_name(**options) == "model-ios18-palettize4.mlpackage"


def test_verify_reason_off_macos():
    if ON_MAC:
        assert CONVERTER.verify_reason() is None
    else:
        assert NOT_ON_MAC in CONVERTER.verify_reason()


# -- the runtime backend -----------------------------------------------------------------------------------

def test_sniffing_knows_a_package_by_its_manifest(tmp_path, export_tiny):
    result = export_tiny("mobilevit_xxs", "coreml", "fp16")
    assert device_runtime.sniff_format(result.path) == "coreml"
    fake = tmp_path / "fake.mlpackage"
    fake.mkdir()
    (fake / "Manifest.json").write_text(json.dumps({"itemInfoEntries": {}}))
    with pytest.raises(device_runtime.UnknownFormatError):
        device_runtime.sniff_format(fake)


@pytest.mark.skipif(ON_MAC, reason="on macOS Core ML can predict; this checks the Linux refusal")
def test_load_off_macos_fails_saying_core_ml_needs_macos(export_tiny):
    result = export_tiny("mobilevit_xxs", "coreml", "fp16")
    with pytest.raises(device_runtime.BackendUnavailableError, match=NOT_ON_MAC):
        device_runtime.load(result.path)
    with pytest.raises(device_runtime.BackendUnavailableError, match=NOT_ON_MAC):
        device_runtime.load(result.path, backend="coremltools")
    backends = device_runtime.list_backends()["coreml"]
    assert backends[0]["name"] == "coremltools" and NOT_ON_MAC in backends[0]["unavailable"]


@mac_only
@pytest.mark.parametrize("name", family_representatives(prefer=SUITE_MODELS))
def test_macos_parity_through_the_session_api(export_tiny, name):
    spec = get_model(name, tiny=True)
    for precision in ("fp32", "fp16"):
        result = export_tiny(name, "coreml", precision)
        assert result.passed is True
        lowering = result.parity["lowering"]
        assert lowering["max_abs_err"] <= error_bound(spec.tolerance(precision), lowering)
    session = device_runtime.load(result.path, adapt_io=True)
    assert session.format == "coreml" and session.backend == "coremltools"
    assert [t.name for t in session.get_inputs()] == list(spec.input_names)
    out, = session.run(None, spec.sample_inputs()[0])
    assert out.shape == _torch_output_shapes(spec)[spec.output_names[0]] and np.isfinite(out).all()


@mac_only
def test_macos_compute_units_benchmark_and_flexible_lengths(export_tiny):
    result = export_tiny("tinybert_4l_312d", "coreml", "fp32", seq_lens="16-64")
    session = device_runtime.load(result.path, compute_units="cpu_only", adapt_io=True)
    assert session.info["compute_units"] == "CPU_ONLY"
    assert session.get_inputs()[0].shape == (1, None) and session.get_inputs()[0].dynamic_axes == {1: "sequence"}
    feed = {n: np.ones((1, 16), np.int32) for n in ("input_ids", "attention_mask", "token_type_ids")}
    out, = session.run(None, feed)
    assert out.shape == (1, 2)
    bench = session.benchmark(runs=5, warmup=1)
    assert bench.latency.unit == "ms" and bench.latency.p50 > 0


@mac_only
def test_macos_image_input_takes_an_rgb_image(export_tiny):
    result = export_tiny("mobilevit_xxs", "coreml", "fp32", image_input=True)
    session = device_runtime.load(result.path)
    image_info = session.get_inputs()[0]
    assert image_info.dtype == np.uint8 and image_info.shape == (1, 64, 64, 3)
    out, = session.run(None, {"pixel_values": np.full((1, 64, 64, 3), 128, np.uint8)})
    assert out.shape == (1, 1000) and np.isfinite(out).all()


def test_macos_session_code_with_a_stand_in_predictor(export_tiny, monkeypatch):
    """Runs on every platform: the macOS backend's metadata, validation and feeding code, with Core ML's
    predictor (absent off macOS) replaced by a stand-in that checks what it is given. Real prediction is
    covered by the mac_only tests above."""
    from device_runtime.backends import coreml as backend

    ct = _coreml().import_coremltools()
    seen = {}

    def fake_predict(self, feed):
        seen.update(feed)
        outputs = self.get_spec().description.output
        return {o.name: np.zeros(tuple(o.type.multiArrayType.shape), np.float32) for o in outputs}

    monkeypatch.setattr(backend, "_available", lambda: None)
    monkeypatch.setattr(ct.models.MLModel, "predict", fake_predict)

    result = export_tiny("tinybert_4l_312d", "coreml", "fp32", seq_lens="16-64")
    session = backend.CoreMLSession(str(result.path), compute_units="cpu_only")
    assert session.info["compute_units"] == "CPU_ONLY" and session.info["metadata"]["model"] == "tinybert_4l_312d-tiny"
    first = session.get_inputs()[0]
    assert first.dtype == np.int32 and first.shape == (1, None) and first.dynamic_axes == {1: "sequence"}
    with pytest.raises(device_runtime.DTypeError, match="int32"):  # int64 ids need adapt_io (lossless cast)
        session.run(None, get_model("tinybert_4l_312d", tiny=True).sample_inputs()[0])
    session.adapt_io = True
    out, = session.run(None, {n: np.ones((1, 16), np.int64) for n in ("input_ids", "attention_mask",
                                                                      "token_type_ids")})
    assert out.shape == (1, 2) and seen["input_ids"].dtype == np.int32 and seen["input_ids"].shape == (1, 16)
    with pytest.raises(ValueError, match="compute units"):
        backend.CoreMLSession(str(result.path), compute_units="gpu_please")

    image = export_tiny("efficientformer_l1", "coreml", "fp32", image_input=True)
    session = backend.CoreMLSession(str(image.path))
    assert session.compute_units == "all"
    info = session.get_inputs()[0]
    assert info.dtype == np.uint8 and info.shape == (1, 224, 224, 3)
    out, = session.run(None, {"pixel_values": np.full((1, 224, 224, 3), 7, np.uint8)})
    assert out.shape == (1, 1000)
    assert seen["pixel_values"].size == (224, 224) and seen["pixel_values"].mode == "RGB"
