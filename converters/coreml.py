"""Core ML `.mlpackage` (ML Program) through coremltools, from the `torch.export` program.

    torch.export -> run_decompositions -> ct.convert(mlprogram, target, fp16|fp32) -> (compress) -> metadata
    -> save -> Linux-side validation

- Precision: `fp16` (Core ML's own default: fp16 compute, fp32 I/O), `fp32`, and `int4-weight` (fp16 compute
  with 4-bit k-means palettized weights, i.e. `--compress palettize4`). Core ML's int8 is weight-only
  (`--compress int8`); it has no dynamic activation quantization, and calibrated int8 activations need Core ML
  prediction (macOS), so `int8-static`/`int8-dynamic` are refused with the alternative.
- Compression after conversion with `coremltools.optimize.coreml`: int8 linear weights (symmetric,
  per channel), 4/6-bit k-means palettization, 50% magnitude pruning; before/after weight bytes are recorded.
- fp16 exports first run the fp16 risk scan (`converters.fp16_scan`) on the real sample inputs.
- coremltools converts on Linux but cannot predict there. `validate_package` checks everything else from
  the saved package: it loads (`skip_model_load=True`), its inputs/outputs match the ModelSpec, the MIL op
  histogram, no op newer than the deployment target, weight bytes per dtype. Numerical parity runs on macOS
  only (`device_runtime.backends.coreml`); elsewhere `verify_reason` says so and the report never claims it.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import json
import logging
import sys
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from converters.base import Conversion, ConversionError, Converter, UnsupportedError, register_converter

NOT_ON_MAC = "Core ML prediction needs macOS (coremltools converts and validates on Linux but cannot run models)"
DEFAULT_TARGET = "ios17"
# --target names (lower case) -> coremltools.target attribute. ML Program needs iOS15 / macOS12 or newer.
_TARGET_GENERATIONS = {  # Core ML specification version -> the OS releases that introduced it
    6: ("iOS15", "macOS12", "watchOS8", "tvOS15"), 7: ("iOS16", "macOS13", "watchOS9", "tvOS16"),
    8: ("iOS17", "macOS14", "watchOS10", "tvOS17"), 9: ("iOS18", "macOS15", "watchOS11", "tvOS18"),
    10: ("iOS26", "macOS26", "watchOS26", "tvOS26"),
}
TARGETS = {n.lower(): n for names in _TARGET_GENERATIONS.values() for n in names}
# Each target's specification version (coremltools.target values), known without importing coremltools.
TARGET_VERSION = {n.lower(): v for v, names in _TARGET_GENERATIONS.items() for n in names}
IOS16, IOS18 = 7, 9
COMPRESSIONS = {
    "int8": "int8 linear weight quantization (symmetric, per output channel); fp16/fp32 activations",
    "palettize4": "4-bit k-means palettization (16-entry lookup table per tensor)",
    "palettize6": "6-bit k-means palettization (64-entry lookup table per tensor)",
    "prune50": "magnitude pruning to 50% sparsity, stored sparse (bit mask + nonzero values)",
}
# The nominal weight-bytes factor of the compressed tensors against fp16 (lookup tables, scales and masks
# add a little): used by the tests and shown in the report (see `expected_factor` for fp32 packages).
EXPECTED_FACTOR_VS_FP16 = {"int8": 0.5, "palettize4": 0.25, "palettize6": 0.375, "prune50": 0.5 + 1 / 16}


def expected_factor(method: str, dense_bits: int = 16) -> float:
    """Nominal stored/dense bytes of a compressed tensor whose dense weights are `dense_bits` wide."""
    if method == "prune50":
        return 0.5 + 1 / dense_bits  # half the values, plus a 1-bit mask per element
    return {"int8": 8, "palettize4": 4, "palettize6": 6}[method] / dense_bits
COMPUTE_UNITS = ("all", "cpu_only", "cpu_and_gpu", "cpu_and_ne")
# Weights with at most this many elements stay uncompressed (coremltools' default; tiny tensors such as
# biases and norms gain nothing and lose accuracy).
WEIGHT_THRESHOLD = 2048
META_PREFIX = "pocketformer."
FLEX_ENUMERATED, FLEX_RANGE = "enumerated", "range"


class CoreMLValidationError(ConversionError):
    """The saved package does not load or does not match the ModelSpec (names, shapes, types, target ops)."""


# -- coremltools import and noise ------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def import_coremltools():
    """coremltools, imported once with its import-time chatter (unsupported scikit-learn/torch versions, the
    missing native predictor on Linux) kept out of the user's terminal."""
    logger = logging.getLogger("coremltools")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        import coremltools
    finally:
        logger.setLevel(level)
    return coremltools


_TQDM_SITES = (("coremltools.converters.mil.mil.passes.pass_pipeline", "tqdm"),
               ("coremltools.converters.mil.frontend.torch.ops", "_tqdm"),
               ("coremltools.optimize.coreml._quantization_passes", "tqdm"),
               ("coremltools.optimize.coreml._post_training_quantization", "tqdm"))


@contextlib.contextmanager
def quiet_progress_bars():
    """Silence coremltools' own tqdm bars while it runs (the pipeline prints its own progress)."""
    patched = []
    for module_name, attr in _TQDM_SITES:
        try:
            module = importlib.import_module(module_name)
            original = getattr(module, attr)
        except (ImportError, AttributeError):
            continue
        setattr(module, attr, functools.partial(original, disable=True))
        patched.append((module, attr, original))
    try:
        yield
    finally:
        for module, attr, original in patched:
            setattr(module, attr, original)


def target_enum(name: str | None):
    ct = import_coremltools()
    key = (name or DEFAULT_TARGET).lower()
    if key not in TARGETS:
        raise UnsupportedError(f"unknown Core ML deployment target {name!r}; choose from {', '.join(TARGETS)}")
    try:
        return getattr(ct.target, TARGETS[key])
    except AttributeError:
        raise UnsupportedError(f"coremltools {ct.__version__} does not know target {TARGETS[key]}") from None


# -- options ---------------------------------------------------------------------------------------------

def parse_seq_lens(text: str | None) -> tuple[str, list[int]] | None:
    """`"16,32,64"` -> enumerated lengths; `"8-128"` -> a range (min, max); None -> static."""
    if text is None or str(text).strip() == "":
        return None
    text = str(text).replace(" ", "")
    try:
        if "-" in text:
            lo, hi = (int(p) for p in text.split("-"))
            if not 2 <= lo < hi:
                raise ValueError
            return FLEX_RANGE, [lo, hi]
        lengths = sorted({int(p) for p in text.split(",") if p})
    except ValueError:
        raise UnsupportedError(f"--seq-lens expects lengths 'N,N,...' or a range 'MIN-MAX' (MIN >= 2), "
                               f"got {text!r}") from None
    if len(lengths) < 2 or lengths[0] < 2:
        raise UnsupportedError(f"--seq-lens needs at least two lengths >= 2 (or a range MIN-MAX), got {text!r}")
    return FLEX_ENUMERATED, lengths


def _mil_dtype(numpy_dtype: str) -> str:
    """The Core ML I/O type of a ModelSpec dtype: Core ML has no int64 tensors, so integer ids become int32."""
    kind = np.dtype(numpy_dtype)
    if np.issubdtype(kind, np.integer):
        return "int32"
    if kind == np.float16:
        return "float16"
    return "float32"


# -- the converter ---------------------------------------------------------------------------------------

@register_converter
class CoreMLConverter(Converter):
    format = "coreml"
    suffix = ".mlpackage"
    description = "Core ML ML Program package (iOS, macOS; runs on CPU, GPU and the Neural Engine)"
    precisions = ("fp16", "fp32", "int4-weight")
    default_precision = "fp16"  # Core ML computes in fp16 unless asked otherwise
    extra = "coreml"
    required_modules = ("coremltools",)
    cli_options = (
        ("--target", dict(choices=list(TARGETS), metavar="TARGET",
                          help=f"Core ML minimum deployment target (default {DEFAULT_TARGET}; e.g. ios16, ios18, "
                               "macos14)")),
        ("--compress", dict(choices=list(COMPRESSIONS),
                            help="compress the Core ML weights after conversion: " +
                                 "; ".join(f"{k}: {v}" for k, v in COMPRESSIONS.items()).replace("%", "%%"))),
        ("--compute-units", dict(dest="compute_units", choices=list(COMPUTE_UNITS),
                                 help="Core ML compute units recorded in the package and used to load it on macOS "
                                      "(default all)")),
        ("--image-input", dict(action="store_true", dest="image_input",
                               help="image models: take an RGB image (ct.ImageType) and normalise inside the "
                                    "model with its mean/std")),
        ("--seq-lens", dict(dest="seq_lens", metavar="N,N,...|MIN-MAX",
                            help="BERT family: flexible sequence length, enumerated (16,32,64; several inputs "
                                 "need --target ios18) or a range (8-128)")),
        ("--strict", dict(action="store_true",
                          help="fail (instead of warning) when the fp16 risk scan finds layers at risk")),
    )

    def artifact_name(self, compress: str | None = None, image_input: bool = False, seq_lens: str | None = None,
                      target: str | None = None, **_) -> str:
        parts = []
        if target and target.lower() != DEFAULT_TARGET:
            parts.append(target.lower())
        if image_input:
            parts.append("image")
        if seq_lens:
            flex = parse_seq_lens(seq_lens)
            if flex:
                kind, lengths = flex
                parts.append("seq" + ("-".join(map(str, lengths)) if kind == FLEX_RANGE
                                      else "_".join(map(str, lengths))))
        if compress:
            parts.append(compress)
        return "model" + "".join(f"-{p}" for p in parts) + self.suffix

    def verify_reason(self, image_input: bool = False, **_) -> str | None:
        if sys.platform != "darwin":
            return NOT_ON_MAC
        if image_input:
            return ("the package takes an image (ct.ImageType) while parity feeds are normalised tensors; "
                    "verify the same model exported without --image-input")
        return None

    def unsupported_reason(self, spec, precision: str, target: str | None = None, compress: str | None = None,
                           compute_units: str | None = None, image_input: bool = False,
                           seq_lens: str | None = None, **_) -> str | None:
        """Why not (precision, toolchain, and every option), before any slow work; None when it can."""
        if precision == "int8-dynamic":
            return ("Core ML has no dynamic activation quantization; its int8 is weight-only: use "
                    "--precision fp16 --compress int8 (int8 weights, fp16 activations)")
        if precision == "int8-static":
            return ("calibrating int8 activations for Core ML needs Core ML prediction (macOS); for int8 weights "
                    "use --precision fp16 --compress int8")
        reason = super().unsupported_reason(spec, precision)
        if reason:
            return reason
        key = (target or DEFAULT_TARGET).lower()
        if key not in TARGETS:
            return f"unknown Core ML deployment target {target!r}; choose from {', '.join(TARGETS)}"
        if compute_units is not None and compute_units.lower() not in COMPUTE_UNITS:
            return f"unknown compute units {compute_units!r}; choose from {', '.join(COMPUTE_UNITS)}"
        if precision == "int4-weight" and compress not in (None, "palettize4"):
            return f"int4-weight is 4-bit palettization; it cannot be combined with --compress {compress}"
        if compress is not None and compress not in COMPRESSIONS:
            return f"unknown compression {compress!r}; choose from {', '.join(COMPRESSIONS)}"
        if (compress or precision == "int4-weight") and TARGET_VERSION[key] < IOS16:
            return f"compressed weights need an iOS16/macOS13 target or newer, not {TARGETS[key]}"
        if image_input and spec.preprocessing().get("kind") != "image":
            return f"--image-input is for image models; {spec.name} takes {spec.preprocessing().get('kind')}"
        if seq_lens:
            try:
                flex = parse_seq_lens(seq_lens)
            except UnsupportedError as exc:
                return str(exc)
            return self._flex_reason(spec, flex, TARGET_VERSION[key])
        return None

    def convert(self, module, spec, precision, calibration, path: Path, target: str | None = None,
                compress: str | None = None, compute_units: str | None = None, image_input: bool = False,
                seq_lens: str | None = None, strict: bool = False, **_) -> Conversion:
        import torch

        reason = self.unsupported_reason(spec, precision, target=target, compress=compress,
                                         compute_units=compute_units, image_input=image_input, seq_lens=seq_lens)
        if reason:  # the pipeline asked already; direct callers get the same answer
            raise UnsupportedError(f"cannot export {spec.name} to coreml at {precision}: {reason}")
        ct = import_coremltools()
        target_value = target_enum(target)
        target_name = TARGETS[(target or DEFAULT_TARGET).lower()]
        units = (compute_units or "all").lower()
        if precision == "int4-weight":
            compress = "palettize4"
        compute_fp16 = precision != "fp32"
        flex = parse_seq_lens(seq_lens)
        prep = spec.preprocessing()
        flex_axes = {s.name: dict(s.dynamic_axes) for s in spec.input_specs() if s.dynamic_axes} if flex else {}

        details: dict[str, Any] = {
            "target": target_name, "compute_precision": "fp16" if compute_fp16 else "fp32",
            "compute_units": units.upper(), "compression": None,
            "numerical_parity": (f"not run: {self.verify_reason(image_input=image_input)}"
                                 if self.verify_reason(image_input=image_input) else "run by the pipeline (macOS)"),
        }

        # 1. fp16 risk scan on the real sample inputs (before any slow work).
        if compute_fp16:
            from converters import fp16_scan

            details["fp16_scan"] = fp16_scan.check(module, spec, calibration, strict=bool(strict))
        else:
            details["fp16_scan"] = {"skipped": "compute precision is fp32"}

        # 2. torch.export (with the flexible axis when asked), decompositions, ct.convert.
        lowered = _ImageNormalize.wrap(module, prep) if image_input else module
        args = tuple(torch.from_numpy(calibration[0][n]) for n in spec.input_names)
        start = time.perf_counter()
        exported = self._export(lowered, spec, args, flex, flex_axes)
        inputs = self._input_types(ct, spec, prep, image_input, flex, flex_axes)
        outputs = [ct.TensorType(name=n, dtype=np.float32) for n in spec.output_names]
        with warnings.catch_warnings():
            scan = details["fp16_scan"]
            if compute_fp16 and not scan.get("weights_overflow") and scan.get("mask_sentinels"):
                # Casting the attention-mask constant (finfo(float32).min) to fp16 gives -inf, as intended;
                # the scan checked that no weight is out of range, so numpy's cast warning is only that.
                warnings.filterwarnings("ignore", "overflow encountered in cast", RuntimeWarning)
                details["fp16_mask_constants"] = ("mask constants beyond fp16 (e.g. finfo(float32).min) become "
                                                  "-inf in fp16, which softmax handles")
            mlmodel, decompositions = self._convert(ct, exported, inputs, outputs, target_value, compute_fp16,
                                                    units, spec, precision)
        details["decompositions"] = decompositions
        details["convert_s"] = time.perf_counter() - start
        details["io"] = {"image_input": self._image_details(prep) if image_input else None,
                         "flexible": None if not flex else {"kind": flex[0], "lengths": flex[1],
                                                            "axes": {k: {str(a): n for a, n in v.items()}
                                                                     for k, v in flex_axes.items()}}}

        # 3. Compression.
        weights_before = weight_summary(mlmodel.get_spec())
        details["weights"] = weights_before
        if compress:
            start = time.perf_counter()
            with quiet_progress_bars():
                compressed = compress_model(mlmodel, compress)
            weights_after = weight_summary(compressed.get_spec())
            details["compression"] = {
                "method": compress, "description": COMPRESSIONS[compress], "weight_threshold": WEIGHT_THRESHOLD,
                "seconds": time.perf_counter() - start,
                "package_bytes_before": _size(Path(mlmodel.package_path)) if mlmodel.package_path else None,
                "weight_bytes_before": weights_before["total_bytes"],
                "weight_bytes_after": weights_after["total_bytes"],
                "factor": weights_after["total_bytes"] / max(weights_before["total_bytes"], 1),
                "compressed_tensors": weights_after["compressed"],
                "expected_factor": expected_factor(compress, 16 if compute_fp16 else 32),
            }
            details["weights"] = weights_after
            # Judge compressed weights like the int8 exports once parity runs (macOS); read by the proposed
            # sdk/export.py change (spec.tolerance(details.get("tolerance_as", precision))).
            details["tolerance_as"] = "int8"
            mlmodel = compressed

        # 4. Metadata from the spec, then save (the pipeline moves the folder into place once it is judged).
        self._set_metadata(mlmodel, spec, precision, compress, units, module, prep, image_input)
        mlmodel.save(str(path))
        if details["compression"] is not None:
            details["compression"]["package_bytes_after"] = _size(Path(path))

        # 5. Linux-side validation of the saved package.
        output_shapes = self._output_shapes(module, spec, calibration[0])
        details["validation"] = validate_package(
            path, spec, target=target_name, output_shapes=output_shapes, image_input=image_input,
            flexible_axes={k: set(v) for k, v in flex_axes.items()} if flex else None)
        return Conversion(Path(path), module, details)

    # -- steps -----------------------------------------------------------------------------------------
    @staticmethod
    def _flex_reason(spec, flex, target_version: int) -> str | None:
        kind, lengths = flex
        n_flex = sum(1 for s in spec.input_specs() if s.dynamic_axes)
        if not n_flex:
            return f"{spec.name} has no dynamic axis (sequence length) to make flexible"
        base = getattr(spec, "seq_len", None)
        lo, hi = lengths[0], lengths[-1]
        if base is not None and not (lo <= base <= hi if kind == FLEX_RANGE else base in lengths):
            return (f"--seq-lens {lengths} must include the export's own sequence length {base} (its sample "
                    f"inputs); add it or set --seq-len")
        if hi > 512:
            return f"--seq-lens up to {hi} exceeds BERT's 512 positions"
        if kind == FLEX_ENUMERATED and n_flex > 1 and target_version < IOS18:
            return (f"Core ML before iOS18 allows enumerated shapes on one input only; {spec.name} has {n_flex}: "
                    f"use --target ios18, or a range such as --seq-lens {lo}-{hi}")
        return None

    @staticmethod
    def _export(module, spec, args, flex, flex_axes):
        import torch

        dynamic_shapes = None
        if flex:
            lo, hi = flex[1][0], flex[1][-1]
            dims: dict[str, Any] = {}
            dynamic_shapes = tuple(
                {axis: dims.setdefault(name, torch.export.Dim(name, min=lo, max=hi))
                 for axis, name in flex_axes.get(n, {}).items()} or None
                for n in spec.input_names)
        try:
            return torch.export.export(module, args, dynamic_shapes=dynamic_shapes)
        except Exception as exc:
            raise ConversionError(f"torch.export failed for {spec.name}: {type(exc).__name__}: "
                                  f"{str(exc)[:500]}") from exc

    @staticmethod
    def _input_types(ct, spec, prep, image_input, flex, flex_axes):
        types = []
        for s in spec.input_specs():
            if image_input:
                info = _ImageNormalize.scale_bias(prep)
                types.append(ct.ImageType(name=s.name, shape=s.shape, scale=info["scale"], bias=info["bias"],
                                          color_layout=ct.colorlayout.RGB, channel_first=True))
                continue
            shape: Any = s.shape
            if flex and s.name in flex_axes:
                kind, lengths = flex
                axes = flex_axes[s.name]
                if kind == FLEX_ENUMERATED:
                    shapes = [tuple(n if i in axes else d for i, d in enumerate(s.shape)) for n in lengths]
                    shape = ct.EnumeratedShapes(shapes=shapes, default=tuple(s.shape))
                else:
                    shape = ct.Shape(tuple(ct.RangeDim(lengths[0], lengths[1], default=d) if i in axes else d
                                           for i, d in enumerate(s.shape)))
            types.append(ct.TensorType(name=s.name, shape=shape, dtype=np.dtype(_mil_dtype(s.dtype)).type))
        return types

    @staticmethod
    def _convert(ct, exported, inputs, outputs, target_value, compute_fp16, units, spec, precision):
        """ct.convert on the ATen program. Decompose nothing first (keeps linear/SDPA whole, which Core ML
        maps to fused ops); the BERT family's graph then holds ops coremltools' EXIR frontend lacks
        (`new_ones`, `__and__`), so on that error retry with the core ATen decompositions."""
        kwargs = dict(convert_to="mlprogram", minimum_deployment_target=target_value, inputs=inputs,
                      outputs=outputs, skip_model_load=True, compute_units=ct.ComputeUnit[units.upper()],
                      compute_precision=ct.precision.FLOAT16 if compute_fp16 else ct.precision.FLOAT32)
        attempts = [("none", lambda: exported.run_decompositions({})),
                    ("core-aten", lambda: exported.run_decompositions())]
        last: Exception | None = None
        for label, decompose in attempts:
            try:
                program = decompose()
                with quiet_progress_bars():
                    return ct.convert(program, **kwargs), label
            except NotImplementedError as exc:  # "Unsupported fx node ..."
                last = exc
                continue
            except Exception as exc:
                raise ConversionError(f"coremltools could not convert {spec.name} ({precision}): "
                                      f"{type(exc).__name__}: {str(exc)[:500]}") from exc
        raise ConversionError(f"coremltools could not convert {spec.name} ({precision}): "
                              f"{type(last).__name__}: {str(last)[:500]}") from last

    @staticmethod
    def _image_details(prep):
        info = _ImageNormalize.scale_bias(prep)
        return {"color_layout": "RGB", "scale": info["scale"], "bias": info["bias"],
                "in_model_channel_factors": info["channel_factors"],
                "note": "Core ML computes scale*pixel + bias (one scale for all channels); per-channel std is "
                        "finished by a constant multiply inside the model" if info["channel_factors"] else
                        "Core ML's scale*pixel + bias reproduces the mean/std normalisation exactly"}

    @staticmethod
    def _output_shapes(module, spec, feed) -> dict[str, tuple[int, ...]]:
        import torch

        with torch.no_grad():
            result = module(*[torch.from_numpy(feed[n]) for n in spec.input_names])
        result = result if isinstance(result, (tuple, list)) else (result,)
        return {n: tuple(r.shape) for n, r in zip(spec.output_names, result)}

    @staticmethod
    def _set_metadata(mlmodel, spec, precision, compress, units, module, prep, image_input):
        from importlib import metadata

        try:
            version = metadata.version("pocketformer")
        except metadata.PackageNotFoundError:
            version = "unknown"
        weights = getattr(module, "pocketformer_weights", {}) or {}
        source = weights.get("source", "unknown")
        labels = spec.labels()
        mlmodel.author = f"Pocketformer {version}"
        mlmodel.license = ("Apache-2.0 (architecture code: timm / transformers). Weights: " +
                           ("random initialisation, not a trained model" if source == "random" else
                            f"from {weights.get('path', 'a local checkpoint')}, under that checkpoint's license"))
        mlmodel.short_description = (
            f"{spec.name}: {spec.family} {spec.task}, exported by Pocketformer ({precision}"
            f"{', ' + compress if compress else ''})" +
            (". WARNING: random weights, outputs are not meaningful predictions" if source == "random" else ""))
        mlmodel.version = version
        for s in spec.input_specs():
            mlmodel.input_description[s.name] = _describe_input(s, prep, image_input)
        for name in spec.output_names:
            mlmodel.output_description[name] = _describe_output(name, labels)
        meta = {
            "model": spec.name, "family": spec.family, "task": spec.task, "precision": precision,
            "compress": compress or "", "compute_units": units.upper(), "image_input": str(bool(image_input)),
            "inputs": json.dumps([s.to_dict() for s in spec.input_specs()]),
            "outputs": json.dumps(list(spec.output_names)),
            "preprocessing": json.dumps(prep), "weights": json.dumps(weights, default=str),
        }
        if labels:
            meta["labels"] = json.dumps(labels)
        for key, value in meta.items():
            mlmodel.user_defined_metadata[META_PREFIX + key] = value


class _ImageNormalize:
    """For `--image-input`: Core ML's ImageType computes `scale * pixel + bias` with one scale for all
    channels. With per-channel std we pick scale = 1/(255*s) (s the mean std), bias = -mean/s, and finish
    with a constant per-channel multiply s/std_c inside the model: exact normalisation either way."""

    @staticmethod
    def scale_bias(prep) -> dict[str, Any]:
        mean = [float(m) for m in prep["mean"]]
        std = [float(s) for s in prep["std"]]
        ref = float(np.mean(std))
        factors = None if max(std) - min(std) < 1e-9 else [ref / s for s in std]
        return {"scale": 1.0 / (255.0 * ref), "bias": [-m / ref for m in mean], "channel_factors": factors}

    @classmethod
    def wrap(cls, module, prep):
        import torch

        factors = cls.scale_bias(prep)["channel_factors"]
        if factors is None:
            return module

        class ChannelScale(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner
                self.register_buffer("factors", torch.tensor(factors, dtype=torch.float32).view(1, -1, 1, 1))

            def forward(self, pixel_values):
                return self.inner(pixel_values * self.factors)

        return ChannelScale(module).eval()


def _describe_input(s, prep, image_input) -> str:
    shape = "x".join(str(d) for d in s.shape)
    if prep.get("kind") == "image":
        if image_input:
            return (f"RGB image {s.shape[-1]}x{s.shape[-2]} (resize the short side to "
                    f"{prep['size'][0]}/{prep['crop_pct']:g} and centre-crop); normalised inside the model with "
                    f"mean {prep['mean']} and std {prep['std']}")
        return (f"float32 [{shape}] NCHW image, RGB scaled to [0, 1] then normalised with mean {prep['mean']} "
                f"and std {prep['std']} (resize the short side to {prep['size'][0]}/{prep['crop_pct']:g}, "
                f"centre-crop, {prep['interpolation']})")
    texts = {"input_ids": "WordPiece token ids (bert-base-uncased vocabulary, lower-cased), padded with 0",
             "attention_mask": "1 for real tokens, 0 for padding",
             "token_type_ids": "segment ids: 0 for the first sentence, 1 for the second"}
    return f"{texts.get(s.name, s.name)}; {_mil_dtype(s.dtype)} [{shape}]"


def _describe_output(name, labels) -> str:
    if name == "logits" and labels:
        preview = ", ".join(labels[:3])
        return (f"unnormalised scores over {len(labels)} classes ({preview}, ...); class names in the metadata "
                f"key '{META_PREFIX}labels' (JSON list, in output order)")
    return f"{name} (float32)"


# -- compression -----------------------------------------------------------------------------------------

def compress_model(mlmodel, method: str):
    """The compressed copy of `mlmodel` (weights over WEIGHT_THRESHOLD elements), via coremltools.optimize."""
    import coremltools.optimize.coreml as cto

    if method == "int8":
        config = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel",
                                             weight_threshold=WEIGHT_THRESHOLD)
        return cto.linear_quantize_weights(mlmodel, cto.OptimizationConfig(global_config=config))
    if method in ("palettize4", "palettize6"):
        config = cto.OpPalettizerConfig(mode="kmeans", nbits=int(method[-1]), granularity="per_tensor",
                                        weight_threshold=WEIGHT_THRESHOLD)
        return cto.palettize_weights(mlmodel, cto.OptimizationConfig(global_config=config))
    if method == "prune50":
        config = cto.OpMagnitudePrunerConfig(target_sparsity=0.5, weight_threshold=WEIGHT_THRESHOLD)
        return cto.prune_weights(mlmodel, cto.OptimizationConfig(global_config=config))
    raise UnsupportedError(f"unknown compression {method!r}; choose from {', '.join(COMPRESSIONS)}")


# -- Linux-side validation -------------------------------------------------------------------------------

_ARRAY_TYPES = {"FLOAT32": "float32", "FLOAT16": "float16", "DOUBLE": "float64", "INT32": "int32", "INT8": "int8"}


def _mil_program_ops(spec_proto):
    """Every MIL operation of the package's program (all functions, nested blocks included)."""
    program = spec_proto.mlProgram
    for function in program.functions.values():
        block = function.block_specializations[function.opset]
        stack = list(block.operations)
        while stack:
            op = stack.pop()
            yield op
            for inner in op.blocks:
                stack.extend(inner.operations)


def _value_bytes(value_type) -> tuple[str, int]:
    from coremltools.proto import MIL_pb2

    tensor = value_type.tensorType
    name = MIL_pb2.DataType.Name(tensor.dataType)
    digits = "".join(ch for ch in name if ch.isdigit())
    bits = 8 if name in ("BOOL", "FLOAT8E4M3FN", "FLOAT8E5M2") else int(digits or 8)
    count = 1
    for dim in tensor.dimensions:
        count *= dim.constant.size
    return name.lower(), (count * bits + 7) // 8


def weight_summary(spec_proto) -> dict[str, Any]:
    """Weight bytes per dtype (values stored in the weight blob), and the compressed tensors (constexpr ops):
    their stored bytes against the dense tensor they decompress to."""
    by_dtype: Counter = Counter()
    const_bytes: dict[str, int] = {}
    tensors = 0
    compressed = {"ops": 0, "stored_bytes": 0, "dense_bytes": 0, "by_op": Counter()}
    ops = list(_mil_program_ops(spec_proto))
    for op in ops:
        if op.type == "const":
            value = op.attributes["val"]
            if value.WhichOneof("value") == "blobFileValue":
                dtype, nbytes = _value_bytes(value.type)
                by_dtype[dtype] += nbytes
                const_bytes[op.outputs[0].name] = nbytes
                tensors += 1
    for op in ops:
        if not op.type.startswith("constexpr_"):
            continue
        stored = 0
        for key, value in op.attributes.items():
            if value.WhichOneof("value") == "blobFileValue":
                dtype, nbytes = _value_bytes(value.type)
                by_dtype[dtype] += nbytes
                stored += nbytes
        for argument in op.inputs.values():  # iOS18 constexpr ops take their parts from const ops
            stored += sum(const_bytes.get(a.name, 0) for a in argument.arguments)
        compressed["ops"] += 1
        compressed["by_op"][op.type] += 1
        compressed["stored_bytes"] += stored
        compressed["dense_bytes"] += _value_bytes(op.outputs[0].type)[1]
        tensors += 1
    compressed["by_op"] = dict(compressed["by_op"])
    compressed["factor_vs_dense"] = (compressed["stored_bytes"] / compressed["dense_bytes"]
                                     if compressed["dense_bytes"] else None)
    return {"total_bytes": int(sum(by_dtype.values())), "by_dtype": dict(by_dtype), "tensors": tensors,
            "compressed": compressed}


def op_histogram(spec_proto) -> dict[str, int]:
    return dict(Counter(op.type for op in _mil_program_ops(spec_proto)).most_common())


def ops_newer_than(histogram: dict[str, int], target_value) -> dict[str, str]:
    """Op types of the program that the deployment target lacks -> the target that introduced them
    ("unknown" for ops coremltools does not register)."""
    from coremltools.converters.mil.mil.ops.registry import SSAOpRegistry

    newer = {}
    for op_type in histogram:
        versions = SSAOpRegistry.core_ops.get(op_type)
        if not versions:
            newer[op_type] = "unknown"
            continue
        first = min(versions)
        if first > target_value:
            newer[op_type] = first.name
    return newer


def validate_package(path, spec, *, target: str | None = None, output_shapes: dict | None = None,
                     image_input: bool = False, flexible_axes: dict[str, set[int]] | None = None) -> dict[str, Any]:
    """Everything about a saved `.mlpackage` that can be checked without Core ML's predictor.

    Raises `CoreMLValidationError` listing the problems; returns the figures when there are none.
    """
    ct = import_coremltools()
    path = Path(path)
    target_value = target_enum(target)
    problems: list[str] = []
    try:
        mlmodel = ct.models.MLModel(str(path), skip_model_load=True)
        proto = mlmodel.get_spec()
    except Exception as exc:
        raise CoreMLValidationError(f"{path} does not load as a Core ML package: {type(exc).__name__}: {exc}") from exc
    if proto.WhichOneof("Type") != "mlProgram":
        problems.append(f"model type is {proto.WhichOneof('Type')}, not mlProgram")

    # Inputs and outputs against the ModelSpec.
    inputs = {f.name: f for f in proto.description.input}
    want_inputs = list(spec.input_names)
    if list(inputs) != want_inputs:
        problems.append(f"inputs are {list(inputs)}, the spec says {want_inputs}")
    io = {"inputs": [], "outputs": []}
    for s in spec.input_specs():
        feature = inputs.get(s.name)
        if feature is None:
            continue
        kind = feature.type.WhichOneof("Type")
        if image_input:
            image = feature.type.imageType
            got = {"name": s.name, "type": "image", "shape": [image.height, image.width],
                   "color": feature.type.imageType.ColorSpace.Name(image.colorSpace)}
            if kind != "imageType" or (image.height, image.width) != tuple(s.shape[-2:]) or got["color"] != "RGB":
                problems.append(f"input {s.name}: {got}, the spec wants an RGB image {list(s.shape[-2:])}")
            io["inputs"].append(got)
            continue
        array = feature.type.multiArrayType
        dtype = _ARRAY_TYPES.get(array.ArrayDataType.Name(array.dataType), "?")
        shape = tuple(int(d) for d in array.shape)
        flex_kind = array.WhichOneof("ShapeFlexibility")
        varying = _varying_axes(array, flex_kind)
        got = {"name": s.name, "type": "tensor", "dtype": dtype, "shape": list(shape),
               "flexible": None if not flex_kind else {"kind": flex_kind, "axes": sorted(varying)}}
        io["inputs"].append(got)
        if kind != "multiArrayType":
            problems.append(f"input {s.name} is a {kind}, not a tensor")
        if shape != tuple(s.shape):
            problems.append(f"input {s.name} has default shape {list(shape)}, the spec says {list(s.shape)}")
        if dtype != _mil_dtype(s.dtype):
            problems.append(f"input {s.name} is {dtype}, expected {_mil_dtype(s.dtype)} for spec dtype {s.dtype}")
        allowed = set(s.dynamic_axes) if flexible_axes is None else set(flexible_axes.get(s.name, set()))
        if flexible_axes is not None and varying != allowed:
            problems.append(f"input {s.name} varies on axes {sorted(varying)}, asked for {sorted(allowed)}")
        elif not varying <= set(s.dynamic_axes):
            problems.append(f"input {s.name} varies on axes {sorted(varying)}, the spec allows "
                            f"{sorted(s.dynamic_axes)}")
    outputs = {f.name: f for f in proto.description.output}
    if list(outputs) != list(spec.output_names):
        problems.append(f"outputs are {list(outputs)}, the spec says {list(spec.output_names)}")
    for name, feature in outputs.items():
        array = feature.type.multiArrayType
        dtype = _ARRAY_TYPES.get(array.ArrayDataType.Name(array.dataType), "?")
        shape = [int(d) for d in array.shape]
        io["outputs"].append({"name": name, "dtype": dtype, "shape": shape})
        if dtype != "float32":
            problems.append(f"output {name} is {dtype}, expected float32")
        want = (output_shapes or {}).get(name)
        if want is not None and shape and tuple(shape) != tuple(want):
            problems.append(f"output {name} has shape {shape}, PyTorch gives {list(want)}")

    # The program: op histogram, ops and opset the target lacks, weights.
    histogram = op_histogram(proto)
    newer = ops_newer_than(histogram, target_value)
    if newer:
        problems.append(f"ops the {target_value.name} target lacks: " +
                        ", ".join(f"{op} (from {first})" for op, first in newer.items()))
    if proto.specificationVersion > int(target_value):
        problems.append(f"specification version {proto.specificationVersion} is newer than the target's "
                        f"{int(target_value)}")
    opsets = sorted({f.opset for f in proto.mlProgram.functions.values()})
    weight_file = path / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    report = {
        "loads": True, "loaded_with": "ct.models.MLModel(path, skip_model_load=True)",
        "model_type": proto.WhichOneof("Type"), "specification_version": proto.specificationVersion,
        "target": target_value.name, "opsets": opsets, "io": io, "ops_total": sum(histogram.values()),
        "op_histogram": histogram, "ops_newer_than_target": newer, "weights": weight_summary(proto),
        "weight_file_bytes": weight_file.stat().st_size if weight_file.exists() else 0,
        "package_bytes": _size(path), "problems": problems,
    }
    if problems:
        raise CoreMLValidationError(f"{path.name} failed Linux-side validation: " + "; ".join(problems))
    return report


def _varying_axes(array, flex_kind) -> set[int]:
    if flex_kind == "shapeRange":
        return {i for i, r in enumerate(array.shapeRange.sizeRanges) if r.lowerBound != r.upperBound}
    if flex_kind == "enumeratedShapes":
        shapes = [tuple(s.shape) for s in array.enumeratedShapes.shapes]
        return {i for i in range(len(shapes[0])) if len({sh[i] for sh in shapes}) > 1} if shapes else set()
    return set()


def _size(path: Path) -> int:
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size
