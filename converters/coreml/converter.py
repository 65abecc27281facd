"""Core ML `.mlpackage` (ML Program) through coremltools, from the `torch.export` program.

    torch.export -> run_decompositions -> ct.convert(mlprogram, target, fp16|fp32) -> (compress) -> metadata
    -> save -> Linux-side validation

- Precision: `fp16` (Core ML's own default: fp16 compute, fp32 I/O), `fp32`, and `int4-weight` (fp16 compute
  with 4-bit k-means palettized weights, i.e. `--compress palettize4`). Core ML's int8 is weight-only
  (`--compress int8`); it has no dynamic activation quantization, and calibrated int8 activations need Core ML
  prediction (macOS), so `int8-static`/`int8-dynamic` are refused with the alternative.
- Compression after conversion with `coremltools.optimize.coreml` (`converters.coreml.compress`): int8 linear
  weights (symmetric, per channel), 4/6-bit k-means palettization, 50% magnitude pruning; before/after weight
  bytes are recorded.
- fp16 exports first run the fp16 risk scan (`converters.fp16_scan`) on the real sample inputs.
- coremltools converts on Linux but cannot predict there. `validate_package` (`converters.coreml.validate`)
  checks everything else from the saved package: it loads (`skip_model_load=True`), its inputs/outputs match
  the ModelSpec, the MIL op histogram, no op newer than the deployment target, weight bytes per dtype.
  Numerical parity runs on macOS only (`device_runtime.backends.coreml`); elsewhere `verify_reason` says so
  and the report never claims it.
- coremltools itself (a quiet import, its progress bars, the deployment targets) is `converters.coreml.toolchain`;
  the package's input types, descriptions and metadata are `converters.coreml.io`; this module holds the
  converter and its options.
"""
from __future__ import annotations

import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from converters.base import Conversion, ConversionError, Converter, UnsupportedError, option, register_converter
from converters import rewrites
from converters.coreml.compress import COMPRESSIONS, WEIGHT_THRESHOLD, compress_model, expected_factor
from converters.coreml.io import (FLEX_ENUMERATED, FLEX_RANGE, ImageNormalize, image_details, input_types,
                                  set_metadata)
from converters.coreml.toolchain import (DEFAULT_TARGET, IOS16, IOS18, TARGET_VERSION, TARGETS, import_coremltools,
                                         quiet_progress_bars, target_enum)
from converters.coreml.validate import package_bytes, validate_package, weight_summary
from device_runtime.backends.coreml import COMPUTE_UNITS, NOT_ON_MAC
# Re-exported for callers (and tests) that read the Core ML helpers from this module.
from converters.coreml.compress import EXPECTED_FACTOR_VS_FP16  # noqa: F401
from converters.coreml.validate import CoreMLValidationError  # noqa: F401


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

    # No `choices` on target, compress and compute_units: `unsupported_reason` refuses unknown values itself,
    # with the valid ones and the reason (an UnsupportedError, before any slow work).
    @dataclass(frozen=True)
    class Options:
        target: str | None = option(None, f"Core ML minimum deployment target (default {DEFAULT_TARGET}; e.g. ios16, "
                                          "ios18, macos14)", metavar="TARGET")
        # "%%": argparse formats help strings with %, and the descriptions hold "50%".
        compress: str | None = option(None, "compress the Core ML weights after conversion: " +
                                      "; ".join(f"{k}: {v}" for k, v in COMPRESSIONS.items()).replace("%", "%%"),
                                      metavar="METHOD")
        compute_units: str | None = option(None, "Core ML compute units recorded in the package and used to load it "
                                                 f"on macOS: {', '.join(COMPUTE_UNITS)} (default all)",
                                           metavar="UNITS")
        image_input: bool = option(False, "image models: take an RGB image (ct.ImageType) and normalise inside the "
                                          "model with its mean/std")
        seq_lens: str | None = option(None, "BERT family: flexible sequence length, enumerated (16,32,64; several "
                                            "inputs need --target ios18) or a range (8-128)", metavar="N,N,...|MIN-MAX")
        strict: bool = option(False, "fail (instead of warning) when the fp16 risk scan finds layers at risk")

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
        tolerance_as = None
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
        folded = rewrites.fold_window_batch(module)  # Core ML tensors have rank <= 5; TinyViT windows have 6
        details["rewrites"] = {"fold_window_batch": folded is not module}
        lowered = ImageNormalize.wrap(folded, prep) if image_input else folded
        args = tuple(torch.from_numpy(calibration[0][n]) for n in spec.input_names)
        start = time.perf_counter()
        exported = self._export(lowered, spec, args, flex, flex_axes)
        inputs = input_types(ct, spec, prep, image_input, flex, flex_axes)
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
        details["io"] = {"image_input": image_details(prep) if image_input else None,
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
                "package_bytes_before": package_bytes(Path(mlmodel.package_path)) if mlmodel.package_path else None,
                "weight_bytes_before": weights_before["total_bytes"],
                "weight_bytes_after": weights_after["total_bytes"],
                "factor": weights_after["total_bytes"] / max(weights_before["total_bytes"], 1),
                "compressed_tensors": weights_after["compressed"],
                "expected_factor": expected_factor(compress, 16 if compute_fp16 else 32),
            }
            details["weights"] = weights_after
            tolerance_as = "int8"  # compressed weights are judged like the int8 exports once parity runs (macOS)
            mlmodel = compressed

        # 4. Metadata from the spec, then save (the pipeline moves the folder into place once it is judged).
        set_metadata(mlmodel, spec, precision, compress, units, module, prep, image_input)
        mlmodel.save(str(path))
        if details["compression"] is not None:
            details["compression"]["package_bytes_after"] = package_bytes(Path(path))

        # 5. Linux-side validation of the saved package.
        output_shapes = self._output_shapes(module, spec, calibration[0])
        details["validation"] = validate_package(
            path, spec, target=target_name, output_shapes=output_shapes, image_input=image_input,
            flexible_axes={k: set(v) for k, v in flex_axes.items()} if flex else None)
        return Conversion(Path(path), module, details, tolerance_as=tolerance_as)

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
    def _output_shapes(module, spec, feed) -> dict[str, tuple[int, ...]]:
        import torch

        with torch.no_grad():
            result = module(*[torch.from_numpy(feed[n]) for n in spec.input_names])
        result = result if isinstance(result, (tuple, list)) else (result,)
        return {n: tuple(r.shape) for n, r in zip(spec.output_names, result)}
