"""Ascend `.om` through ATC (CANN): ATC-ready ONNX -> operator pre-check -> typed `atc` command -> atc run.

1. ATC-ready ONNX. The TorchScript exporter at opset 11 by default (inside every CANN release's parser range;
   a parameter, 8..18), eager attention, static shapes, or the dims ATC will vary left dynamic (`-1`) for fixed
   profile sets: the BERT family's sequence lengths (`--dynamic_dims`) or batch sizes (`--dynamic_batch_size`).
   The ONNX is checked (`onnx.checker`) and run on ONNX Runtime against PyTorch on the real sample inputs, at
   every profile, before anything else: what goes into ATC is verified, even where the `.om` cannot be.
   `export --seq-lens 16,32,64,128` (the `seq_lens` option) makes one ONNX with a dynamic sequence axis and one
   `.om` with a `--dynamic_dims` profile per length (`model-seq16_32_64_128.om`, beside the single-length
   `model.om`); its manifest entry lists the lengths (`details.buckets`) and `device_runtime` routes each request
   to the smallest profile that fits (pyACL `aclmdlSetInputDynamicDims`, ais_bench's "dymdims" mode).
2. Pre-check. Every node is looked up the way ATC's parser does it (`ai.onnx::<opset>::<op>`) in
   `converters/data/atc_onnx_ops.json` (from the CANN operator list; sources named in the file). Operators ATC
   has no parser for are listed, with a rewrite where one is known, before ATC runs: the E19010 ("No parser is
   registered for Op") that otherwise appears deep in an ATC conversion.
3. The atc command, built from typed options (`AtcOptions`) and refused before running anything when the
   combination is invalid (unknown SoC, --dynamic_dims with --dynamic_batch_size, AIPP on ND token inputs, ...).
4. atc runs when it is on PATH (or under $ASCEND_TOOLKIT_HOME); its log is kept and its error codes are
   translated. With `--atc-script` the converter instead writes a folder to run on a CANN host: the ONNX, the
   exact command as `atc.sh`, the AIPP config if any, a README and a JSON manifest.

Precision. ATC decides the arithmetic on the NPU with --precision_mode; the Pocketformer precision names it:
- fp16 (default mode `allow_fp32_to_fp16`): operators run in fp32 where the AI Core has an fp32 kernel, else
  fp16 (matrix units of Ascend 310/310P are fp16). The usual deployment: fast, fp16-level error (~1e-3 rel.).
  `force_fp16` (everything fp16) and the mixed-precision modes are also fp16-class.
- fp32 (default mode `must_keep_origin_dtype`): every operator keeps the ONNX's fp32; ATC fails to compile
  where a SoC has no fp32 kernel for an operator (e.g. Conv/MatMul cubes on Ascend310). For accuracy-critical
  use on SoCs with fp32 cubes (Ascend910B); slower. `force_fp32` is also fp32-class.
A mode of the other class is refused, so the label in report.json says what the device computes.
- int8-static: AMCT (amct_onnx, from CANN) calibrates the ATC-ready ONNX on the spec's real samples (or
  `--calibration`) and writes a deploy model that ATC compiles with int8 cube operators; the precision mode
  then sets what the unquantized operators compute in. Where AMCT is importable it runs here and its
  fake-quant model is checked against PyTorch on ONNX Runtime before ATC; with `--atc-script` the folder gets
  the calibration feeds (`calibration.npz`) and `amct_calibrate.py`, which `atc.sh` runs first on the CANN
  host. Ascend has no dynamic activation quantization, so int8-dynamic (the BERT family's `int8`) is refused.

Nothing here has CANN or an Ascend device: no `.om` is produced or run on this host, and no test claims one.

Modules: the pre-check is `converters.ascend.precheck`, the atc command, its run and its error codes
`converters.ascend.atc`, AIPP `converters.ascend.aipp`, the `--atc-script` folder `converters.ascend.script`;
this one holds the converter: options resolved against the model (`AtcPlan`), the ONNX and its parity check,
AMCT, and the steps in order.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from converters.ascend.aipp import aipp_config
from converters.ascend.atc import (ATC_MAX_OPSET, ATC_MIN_OPSET, DEFAULT_OPSET, LOG_LEVELS, PRECISION_MODES,
                                   AtcError, AtcOptionError, AtcOptions, AtcPlan, find_atc, parse_int_list, parse_profiles,
                                   run_atc, translate_atc_log)
from converters.ascend.precheck import UnsupportedOperatorError, precheck
from converters.ascend.script import AMCT_PREFIX, write_script_folder
from converters.base import Conversion, ConversionError, Converter, UnsupportedError, option, register_converter

DEFAULT_PRECISION_MODE = {"fp16": "allow_fp32_to_fp16", "fp32": "must_keep_origin_dtype",
                          "int8-static": "allow_fp32_to_fp16"}  # int8: the mode is for the unquantized ops
PARITY_PROFILES = 4  # profiles of a dynamic ONNX checked on ONNX Runtime (first, last and two between)


def amct_available() -> bool:
    """Whether AMCT for ONNX (`amct_onnx`, shipped with the CANN toolkit) is importable here."""
    from device_runtime.registry import module_present

    return module_present("amct_onnx")


# -- the converter -------------------------------------------------------------------------------------
def _is_image(spec) -> bool:
    return all(len(s.shape) == 4 for s in spec.input_specs())


@register_converter
class AscendOmConverter(Converter):
    format = "om"
    suffix = ".om"
    description = "Ascend offline model via ATC (CANN) for Huawei Ascend NPUs; --atc-script for hosts without CANN"
    precisions = ("fp16", "fp32", "int8-static")
    extra = "om"
    required_modules = ("onnx", "onnxruntime")

    # No `choices`: `plan` refuses unknown values itself, with ATC's valid ones and its error code.
    @dataclass(frozen=True)
    class Options:
        soc_version: str | None = option(None, "Ascend SoC for ATC (required), e.g. Ascend310P3, Ascend310B1, "
                                               "Ascend910B3", metavar="SOC")
        opset: int | None = option(None, "ONNX opset (onnx: 18, the dynamo exporter; below 18 the TorchScript "
                                         "exporter; om: 11)", metavar="N")
        precision_mode: str | None = option(None, "ATC --precision_mode (default: allow_fp32_to_fp16 for --precision "
                                                  "fp16, must_keep_origin_dtype for fp32): "
                                                  + ", ".join(PRECISION_MODES), metavar="MODE")
        aipp: bool = option(False, "insert AIPP: the .om takes RGB uint8 images and normalises them on the AI Core")
        # A string on the command line; the Python API also takes lists (see `plan`).
        dynamic_dims: Sequence | str | None = option(None, "BERT family: sequence lengths to compile, e.g. 32,64,128 "
                                                           "(or ATC's own 'a,b;c,d' profile syntax)", metavar="LENS")
        dynamic_batch_size: Sequence | str | None = option(None, "batch sizes to compile, e.g. 1,2,4,8",
                                                           metavar="SIZES")
        # `export --seq-lens` (the pipeline hands the lengths to a converter that declares this field): one .om
        # whose --dynamic_dims profiles are these lengths, shared by every token input.
        seq_lens: str | None = option(None, "BERT family: sequence lengths compiled into one .om as ATC "
                                            "--dynamic_dims profiles (2..100 of them), e.g. 16,32,64,128",
                                      metavar="N,N,...")
        atc_script: bool = option(False, "write a folder (ONNX, atc.sh, AIPP config, README) to run on a CANN host "
                                         "instead of running atc here")
        atc_log: str | None = option(None, f"ATC --log level: {', '.join(LOG_LEVELS)} (default error)",
                                     metavar="LEVEL")

    # -- capability --------------------------------------------------------------------------------
    def artifact_name(self, atc_script: bool = False, seq_lens: str | None = None, **_) -> str:
        # Several lengths in one .om sit beside the single-length one in <precision>/ (as Core ML's do).
        try:
            stem = "model" + (f"-seq{'_'.join(map(str, _seq_lens(seq_lens)))}" if seq_lens else "")
        except AtcOptionError:
            stem = "model"  # `plan` refuses it, with the reason
        return stem + (".atc" if atc_script else ".om")

    def verify_reason(self, atc_script: bool = False, aipp: bool = False, **_) -> str | None:
        if atc_script:
            return ("--atc-script writes the ATC-ready ONNX and the atc command for a CANN host; no .om is produced "
                    "here, so there is nothing to run (the ONNX itself was checked on ONNX Runtime against PyTorch: "
                    "details.atc_onnx.parity)")
        from device_runtime.registry import module_present

        if not module_present("ais_bench") and not module_present("acl"):
            return ("the .om runs only on an Ascend NPU through ais_bench or pyACL (acl), and neither is on this "
                    "host (the ATC-ready ONNX was checked on ONNX Runtime: details.atc_onnx.parity)")
        if aipp:
            return ("with AIPP the .om takes uint8 RGB images, not the normalised float samples parity feeds; "
                    "compare it on the NPU host with images (the ATC-ready ONNX was checked: details.atc_onnx.parity)")
        return None

    def unsupported_reason(self, spec, precision: str, atc_script: bool = False, **options) -> str | None:
        if precision == "int8-dynamic":
            return ("Ascend has no dynamic activation quantization: its int8 is static, calibrated with AMCT "
                    "(--precision int8-static)")
        reason = super().unsupported_reason(spec, precision)
        if reason:
            return reason
        if precision == "int8-static" and not atc_script and not amct_available():
            return ("int8-static on Ascend needs AMCT (amct_onnx, from the CANN toolkit) to calibrate, and it is not "
                    "importable here; add --atc-script to write a folder that calibrates on the real samples and "
                    "converts on a CANN host")
        if not atc_script and find_atc() is None:
            return ("no CANN toolkit here: `atc` is not on PATH and ASCEND_TOOLKIT_HOME is not set; add --atc-script "
                    "to write the ATC-ready ONNX and the exact atc command as a folder to run on a CANN host")
        if options:
            try:
                self.plan(spec, precision, **options)
            except UnsupportedError as exc:
                return str(exc)
        return None

    def plan(self, spec, precision: str, soc_version: str | None = None, opset: int | None = None,
             precision_mode: str | None = None, aipp: bool = False, dynamic_dims=None, dynamic_batch_size=None,
             atc_log: str | None = None, seq_lens: str | Sequence[int] | None = None, **_) -> AtcPlan:
        """Every option resolved and checked against the model, before any slow work."""
        if precision not in self.precisions:
            raise UnsupportedError(f"om does not support precision {precision} "
                                   f"(supports: {', '.join(self.precisions)})")
        opset = int(opset) if opset else DEFAULT_OPSET
        if not ATC_MIN_OPSET <= opset <= ATC_MAX_OPSET:
            raise AtcOptionError(f"opset {opset} is outside ATC's ONNX parser range {ATC_MIN_OPSET}..{ATC_MAX_OPSET}; "
                                 f"use {DEFAULT_OPSET}")
        mode = precision_mode or DEFAULT_PRECISION_MODE[precision]
        if mode not in PRECISION_MODES:
            raise AtcOptionError(f"unknown --precision_mode {mode!r}; one of {', '.join(PRECISION_MODES)}")
        if PRECISION_MODES[mode] != precision and not (precision == "int8-static" and PRECISION_MODES[mode] != "bf16"):
            computes = PRECISION_MODES[mode]
            raise AtcOptionError(f"--precision_mode {mode} computes in {computes}, but --precision is {precision}: "
                                 + ("use --precision fp16" if computes == "fp16" else
                                    "use --precision fp32" if computes == "fp32" else
                                    "bf16 modes have no Pocketformer precision yet"))
        image = _is_image(spec)
        if seq_lens:
            if dynamic_dims:
                raise AtcOptionError("--seq-lens and --dynamic-dims both set the sequence profiles: give one")
            dynamic_dims = list(_seq_lens(seq_lens))
            base = getattr(spec, "seq_len", None)
            if base and dynamic_dims[-1] < base:
                raise AtcOptionError(f"--seq-lens {','.join(map(str, dynamic_dims))} stops below {spec.name}'s own "
                                     f"sequence length {base}, the length of the samples it is verified on: "
                                     f"add {base}")
        # "32,64,128" or [32, 64, 128]: sequence lengths, one profile each, shared by every token input.
        # "a,b,c;d,e,f" or [[a, b, c], [d, e, f]]: ATC's own profiles, one value per -1 axis.
        dims_are_seq_lens = (isinstance(dynamic_dims, str) and ";" not in dynamic_dims) or (
            isinstance(dynamic_dims, (list, tuple)) and all(isinstance(v, (int, np.integer)) for v in dynamic_dims))
        if dims_are_seq_lens:
            profiles = tuple((v,) for v in parse_int_list(dynamic_dims, "--dynamic-dims"))
        else:
            profiles = parse_profiles(dynamic_dims, "--dynamic-dims")
        batches = parse_int_list(dynamic_batch_size, "--dynamic-batch-size")
        if profiles and not any(s.dynamic_axes for s in spec.input_specs()):
            raise AtcOptionError(f"--dynamic-dims varies the named dynamic axes of the inputs; {spec.name} has none "
                                 f"(image models: use --dynamic-batch-size)")
        plan = AtcPlan(opset, mode, "NCHW" if image else "ND", profiles, batches, dims_are_seq_lens, bool(aipp),
                     soc_version or "", atc_log or "error")
        # The full command check (SoC, combinations, profile counts), with placeholder paths.
        plan.atc_options(spec, "model.onnx", "model", "aipp.cfg" if aipp else None).validate()
        return plan

    # -- conversion --------------------------------------------------------------------------------
    def convert(self, module, spec, precision, calibration, path: Path, atc_script: bool = False,
                atc_timeout: float = 3600.0, **options) -> Conversion:
        import onnx

        from converters import onnx as onnx_conv

        path = Path(path)
        plan = self.plan(spec, precision, **options)  # refuse bad options before exporting
        atc = None if atc_script else find_atc()
        if not atc_script and atc is None:
            raise UnsupportedError("no CANN toolkit here (atc not on PATH, ASCEND_TOOLKIT_HOME unset): "
                                   "use --atc-script")
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="pf-atc-", dir=path.parent) as tmp:
            folder = path if atc_script else Path(tmp)
            folder.mkdir(parents=True, exist_ok=True)
            onnx_path = folder / "model.onnx"
            extra_axes = {0: "batch"} if plan.dynamic_batch_size else None
            axes = onnx_conv.dynamic_axes_of(spec, bool(plan.dynamic_dims), extra_axes) \
                if (plan.dynamic_dims or plan.dynamic_batch_size) else None
            export = onnx_conv.export_onnx(module, spec, calibration[0], onnx_path, plan.opset, axes,
                                           exporter="torchscript")
            onnx_conv.check_model(onnx_path)
            model = onnx.load(str(onnx_path), load_external_data=False)
            report = precheck(model)
            details: dict[str, Any] = {"atc_onnx": {**export, "precheck": report.to_dict(),
                                                    "nodes": len(model.graph.node)}}
            lengths = seq_lengths(plan)
            if lengths:
                # What device_runtime routes to (and serve-bench, bundles, the app read): one .om, a profile per
                # length, chosen per run (pyACL: aclmdlSetInputDynamicDims; ais_bench: mode "dymdims").
                details["buckets"] = {"lengths": lengths, "entry_points": "ATC --dynamic_dims profiles of one .om"}
            if not report.passed:
                listed = "\n  ".join(u.describe() for u in report.unsupported)
                raise UnsupportedOperatorError(
                    f"the ATC-ready ONNX of {spec.name} (opset {report.opset}) has operator(s) ATC cannot parse "
                    f"(ATC would stop with E19010):\n  {listed}", report)
            details["atc_onnx"]["parity"] = self._onnx_parity(module, spec, calibration, onnx_path, plan)
            aipp_path = None
            if plan.aipp:
                aipp_path = folder / "aipp.cfg"
                aipp_path.write_text(aipp_config(spec.preprocessing()))
            atc_model = "model.onnx"
            if precision == "int8-static":
                atc_model = f"{AMCT_PREFIX}_deploy_model.onnx"
                inputs = set(spec.input_names)
                np.savez(folder / "calibration.npz", **{f"{i}/{n}": a for i, feed in enumerate(calibration)
                                                       for n, a in feed.items() if n in inputs})
                shutil.copyfile(Path(__file__).with_name("amct_calibrate.py"), folder / "amct_calibrate.py")
                details["amct"] = ({"ran": False, "calibration_samples": len(calibration),
                                    "command": f"python3 amct_calibrate.py model.onnx calibration.npz {AMCT_PREFIX}"}
                                   if atc_script else self._amct(module, spec, calibration, folder))
            if atc_script:
                options_rel = plan.atc_options(spec, atc_model, "model", "aipp.cfg" if aipp_path else None)
                write_script_folder(folder, spec, precision, plan, options_rel, details)
                details["atc"] = {"command": options_rel.shell(), "ran": False, "om_produced": False}
                return Conversion(path, module, details)
            atc_options = plan.atc_options(spec, str(folder / atc_model), str(folder / "model"),
                                           str(aipp_path) if aipp_path else None)
            start = time.perf_counter()
            log_path = folder / "atc.log"
            try:
                produced = run_atc(atc_options, log_path, atc=atc, timeout=atc_timeout)
            except AtcError as exc:
                # The work folder goes with the failed conversion; keep the log where the user can read it.
                fd, keep = tempfile.mkstemp(prefix=f"pocketformer-atc-{spec.name}-", suffix=".log")
                os.close(fd)
                shutil.copyfile(log_path, keep)
                raise AtcError(str(exc).replace(str(log_path), keep), exc.codes, Path(keep)) from None
            details["atc"] = {"command": atc_options.shell(), "ran": True, "om_produced": True,
                              "atc_s": round(time.perf_counter() - start, 1), "log_tail": log_path.read_text()[-2000:],
                              "warnings": translate_atc_log(log_path.read_text())}
            os.replace(produced, path)
        return Conversion(path, module, details)

    def _amct(self, module, spec, calibration, folder: Path) -> dict[str, Any]:
        """AMCT calibration here (amct_onnx importable); its fake-quant model must meet the int8 SQNR floor."""
        import amct_onnx as amct

        from converters.ascend import amct_calibrate
        from converters import onnx as onnx_conv
        from converters import parity

        start = time.perf_counter()
        feeds = [{n: f[n] for n in spec.input_names} for f in calibration]
        paths = amct_calibrate.calibrate(amct, folder / "model.onnx", feeds, folder / AMCT_PREFIX)
        agreement = onnx_conv.agreement(parity.torch_outputs(module, spec.input_names, feeds),
                                        amct_calibrate.fake_quant_outputs(amct, paths["fake_quant"], feeds))
        floor = spec.tolerance("int8-static").min_sqnr_db
        if not agreement["sqnr_db"] >= floor:
            raise ConversionError(f"AMCT's int8 simulation of {spec.name} is {agreement['sqnr_db']:.1f} dB from fp32 "
                                  f"PyTorch (floor {floor} dB): not compiled")
        return {"ran": True, "tool": "amct_onnx", "calibration_samples": len(feeds),
                "fake_quant_vs_fp32": agreement, "amct_s": round(time.perf_counter() - start, 1)}

    def _onnx_parity(self, module, spec, calibration, onnx_path: Path, plan: AtcPlan) -> dict[str, Any]:
        """The ATC-ready ONNX on ONNX Runtime vs PyTorch: the real samples, and each checked profile."""
        from converters import onnx as onnx_conv
        from converters import parity

        tolerance = spec.tolerance("fp32").atol
        results = {"tolerance": tolerance,
                   "samples": onnx_conv.agreement(parity.torch_outputs(module, spec.input_names, calibration),
                                                  onnx_conv.ort_outputs(onnx_path, calibration, "disabled"))}
        checks = []
        if plan.dynamic_dims:
            lens = sorted({p[0] for p in plan.dynamic_dims}) if plan.dims_are_seq_lens else []
            for length in _spread(lens, PARITY_PROFILES):
                feeds = [_with_seq_len(f, spec, length) for f in calibration[:2]]
                checks.append(("sequence", length, feeds))
        for batch in _spread(sorted(plan.dynamic_batch_size), PARITY_PROFILES):
            feed = {n: np.concatenate([calibration[i % len(calibration)][n] for i in range(batch)])
                    for n in spec.input_names}
            checks.append(("batch", batch, [feed]))
        profiles = []
        for kind, value, feeds in checks:
            ref = parity.torch_outputs(module, spec.input_names, feeds)
            got = onnx_conv.ort_outputs(onnx_path, feeds, "disabled")
            profiles.append({kind: value, **onnx_conv.agreement(ref, got)})
        if profiles:
            results["profiles"] = profiles
        worst = max([results["samples"]["max_abs_err"]] + [p["max_abs_err"] for p in profiles])
        results["max_abs_err"] = worst
        if not np.isfinite(worst) or worst > tolerance:
            raise ConversionError(f"the ATC-ready ONNX of {spec.name} differs from PyTorch on ONNX Runtime by "
                                  f"{worst:.3g} > {tolerance:g}: {results}")
        return results


def _seq_lens(value: str | Sequence[int]) -> tuple[int, ...]:
    """`--seq-lens` for ATC: distinct lengths, ascending (ATC compiles a fixed set of profiles, not a range)."""
    if isinstance(value, str) and "-" in value:
        raise AtcOptionError(f"--seq-lens {value}: ATC compiles a fixed set of profiles (--dynamic_dims), not a "
                             f"range; list the lengths, e.g. 16,32,64,128")
    lengths = tuple(sorted(set(parse_int_list(value, "--seq-lens"))))
    if not lengths:
        raise AtcOptionError("--seq-lens lists no lengths (e.g. 16,32,64,128)")
    if lengths[0] < 2:
        raise AtcOptionError(f"a sequence length must be at least 2 ([CLS] and [SEP]), got {lengths[0]}")
    return lengths


def seq_lengths(plan: AtcPlan) -> list[int]:
    """The sequence lengths a plan compiles as profiles (one per profile), or [] when its profiles are not
    sequence lengths (ATC's own 'a,b;c,d' syntax, batch sizes, static shapes)."""
    return sorted(p[0] for p in plan.dynamic_dims) if plan.dims_are_seq_lens else []


def _spread(values: Sequence[int], n: int) -> list[int]:
    """At most `n` of `values`: the first, the last and evenly spaced ones between."""
    values = list(values)
    if len(values) <= n:
        return values
    idx = np.linspace(0, len(values) - 1, n).round().astype(int)
    return [values[i] for i in sorted(set(idx))]


def _with_seq_len(feed: dict[str, np.ndarray], spec, length: int) -> dict[str, np.ndarray]:
    """A token feed cut or padded (id 0 = [PAD], mask 0) to `length` along each input's dynamic axis."""
    out = {}
    for s in spec.input_specs():
        arr = feed[s.name]
        for axis in s.dynamic_axes:
            current = arr.shape[axis]
            if length <= current:
                arr = np.take(arr, np.arange(length), axis=axis)
            else:
                pad = [(0, 0)] * arr.ndim
                pad[axis] = (0, length - current)
                arr = np.pad(arr, pad, constant_values=0)
        out[s.name] = np.ascontiguousarray(arr)
    return out
