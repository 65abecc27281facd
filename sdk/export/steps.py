"""The export pipeline's steps, shared by its three shapes (`sdk.export.api`: one shape and several sequence
lengths; `sdk.export.batches`: several batch sizes): the plan, the spec, the result type, converting and
verifying one artifact against PyTorch, its manifest entry. See `sdk.export.api` for the numbered steps.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from converters import atomic_path, get_converter, parity as checks
from converters.base import (ConversionError, Converter, UnknownOptionError, UnsupportedError, option_values,
                             resolve_precision)
from device_runtime import manifest
from device_runtime.errors import PocketformerError, UsageError
from models_zoo import ModelSpec, Precision, get_model
from sdk.console.progress import Progress
from sdk.report.tools import tool_versions


@dataclass
class ExportResult:
    model: str
    format: str
    precision: Precision
    path: Path
    report_path: Path
    passed: bool | None  # None: parity could not be run on this host (see parity["skipped"])
    size_bytes: int
    parity: dict[str, Any]
    details: dict[str, Any]
    entry: manifest.ArtifactEntry

    def summary(self) -> str:
        head = f"{self.model} → {self.path} [{self.format} {self.precision}] {self.size_bytes / 1e6:.2f} MB"
        if self.passed is None:
            return f"{head}, parity NOT run: {self.parity['skipped']}"
        low = self.parity["lowering"]
        line = f"{head}, max abs err {low['max_abs_err']:.2g}"
        quant = self.parity.get("quantization")
        if quant:
            line += f", SQNR vs fp32 {quant['sqnr_db']:.1f} dB"
        return line


@dataclass(frozen=True)
class _Plan:
    """One artifact to make: resolved once, before any slow work."""

    converter: Converter
    precision: Precision
    options: Any  # the converter's frozen Options
    folder: Path
    final: Path

    @property
    def kwargs(self) -> dict[str, Any]:
        return option_values(self.options)


@dataclass
class _Data:
    """The real inputs of one export: verification feeds, their fp32 PyTorch outputs, calibration feeds."""

    feeds: list[dict]
    fp32_outputs: list
    calibration: list[dict]
    calibration_source: str


def _spec(model: str | ModelSpec, tiny: bool, seq_len: int | None, pack: str | None = None) -> ModelSpec:
    spec = model if isinstance(model, ModelSpec) else get_model(model, tiny=tiny)
    if tiny and not spec.is_tiny:
        spec = spec.tiny()
    if seq_len is not None:
        if not hasattr(spec, "with_seq_len"):
            raise UsageError(f"{spec.name} has no sequence length to set")
        spec = spec.with_seq_len(seq_len)
    if pack is not None:
        if not hasattr(spec, "with_packing"):
            raise UsageError(f"{spec.name} has no packed entry point: --pack is for the BERT family")
        capacity, _, slots = str(pack).partition("x")
        try:
            spec = spec.with_packing(int(capacity), int(slots) if slots else max(1, int(capacity) // 8))
        except ValueError:
            raise UsageError(f"--pack takes CAPACITYxSEGMENTS (e.g. 128x16) or CAPACITY, got {pack!r}") from None
    return spec


def _split_options(converters: Sequence[Converter], options: dict[str, Any]) -> list[Any]:
    """Each converter's typed Options from one bag of keyword options (one call may export several formats;
    a key must belong to at least one of them)."""
    known = {name for c in converters for name in c.option_names()}
    unknown = sorted(set(options) - known)
    if unknown:
        valid = "; ".join(f"{c.format}: {', '.join(c.option_names()) or 'none'}" for c in converters)
        raise UnknownOptionError(f"unknown export option(s) {', '.join(unknown)} for "
                                 f"{', '.join(c.format for c in converters)} (valid: {valid})")
    return [c.options(**{k: v for k, v in options.items() if k in c.option_names() and v is not None})
            for c in converters]


def plan(spec: ModelSpec, formats: Sequence[str], precision: str | None, out_dir: str | Path,
         options: dict[str, Any], folder_suffix: str = "") -> list[_Plan]:
    """What `export` will make; raises `UnsupportedError` / `UsageError` for anything it would refuse.
    `folder_suffix` extends the folder key (a multi-length export's `-seqs16-32-64`)."""
    converters = [get_converter(f) for f in formats]
    plans = []
    for converter, opts in zip(converters, _split_options(converters, options)):
        resolved = resolve_precision(spec, precision, converter)
        kwargs = option_values(opts)
        reason = converter.unsupported_reason(spec, resolved, **kwargs)
        if reason:
            raise UnsupportedError(f"cannot export {spec.name} to {converter.format} at {resolved}: {reason}")
        folder = Path(out_dir) / spec.name / (spec.folder_key(resolved) + folder_suffix)
        plans.append(_Plan(converter, resolved, opts, folder, folder / converter.artifact_name(**kwargs)))
    return plans


def _export_fixed(model, formats, precision, out_dir, weights, tiny: bool, seq_len: int | None, calibration,
                  progress: Progress | None, options: dict[str, Any]) -> list[ExportResult]:
    """`export` at one input shape (or, for a format whose own option takes `seq_lens`, its own flexible one)."""
    progress = progress or Progress(enabled=False)
    spec = _spec(model, tiny, seq_len)
    formats = [formats] if isinstance(formats, str) else list(formats)
    plans = plan(spec, formats, precision, out_dir, options)

    with progress.step(f"build {spec.name} ({weights or getattr(spec, 'default_weights', None) or 'random weights'})"):
        module = spec.build(weights=str(weights) if weights else None)
        feeds = spec.sample_inputs()
        data = _Data(feeds, checks.torch_outputs(module, spec.input_names, feeds),
                     spec.feeds_from(str(calibration)) if calibration else spec.calibration_inputs(),
                     str(calibration) if calibration else "the spec's real calibration samples")
        checks.check_spread(data.fp32_outputs, f"{spec.name} (PyTorch fp32)")
    return [_export_one(p, spec, module, data, progress) for p in plans]


def _model_section(spec: ModelSpec) -> dict[str, Any]:
    return {**spec.describe(), "labels": spec.labels()}


def _export_one(plan: _Plan, spec: ModelSpec, module, data: Any, progress: Progress,
                convert_and_verify=None) -> ExportResult:
    """Convert, verify, move into place and record one artifact; `convert_and_verify` (default
    `_convert_and_verify`) makes and checks it in the temporary path, returning (entry, parity, details)."""
    converter, precision = plan.converter, plan.precision
    label = f"{spec.name} → {converter.format} {precision}"
    attempt: dict[str, Any] = {"file": plan.final.name, "format": converter.format, "precision": str(precision),
                               "requested_precision": precision.requested, "options": plan.kwargs}
    try:
        with atomic_path(plan.final) as tmp:
            entry, parity, details = (convert_and_verify or _convert_and_verify)(plan, spec, module, data, tmp, label,
                                                                                 progress, attempt)
    except PocketformerError as exc:
        failure = {**attempt, "error": type(exc).__name__, "reason": str(exc)}
        report_path = manifest.record_failure(plan.folder, _model_section(spec), failure)
        if isinstance(exc, checks.ParityError):
            raise checks.ParityError(f"{exc} (figures in {report_path} under \"failed\"; nothing was replaced)") from None
        raise
    # In place now: the entry records the bytes that are there.
    entry = dataclasses.replace(entry, sha256=manifest.sha256_of(plan.final), size_bytes=manifest.size_of(plan.final))
    report_path = manifest.record_artifact(plan.folder, _model_section(spec), entry)
    return ExportResult(spec.name, converter.format, Precision.of(entry.precision), plan.final, report_path,
                        parity["passed"], entry.size_bytes, parity, details, entry)


def _convert_and_verify(plan: _Plan, spec: ModelSpec, module, data: _Data, tmp: Path, label: str,
                        progress: Progress, attempt: dict[str, Any]):
    import device_runtime

    conversion, precision, entry, unverified = convert_step(
        plan, f"convert {label}",
        lambda: plan.converter.convert(module, spec, plan.precision, data.calibration, tmp, **plan.kwargs),
        tmp, module, [data], label, progress, attempt)
    if unverified:
        return unverified

    start = time.perf_counter()
    with progress.step(f"verify {label} on {len(data.feeds)} held-out real samples"):
        session = device_runtime.load(tmp, adapt_io=True)
        outputs = _run_all(session, data.feeds, label)
        fp32_reference = conversion.reference is module
        reference = (data.fp32_outputs if fp32_reference else
                     checks.torch_outputs(conversion.reference, spec.input_names, data.feeds))
        checks.check_spread(reference, f"{spec.name} ({precision} PyTorch reference)")
        classifier = spec.task.endswith("classification")
        names = list(spec.output_names)
        lowering = checks.compare(reference, outputs, classifier, names)
        # Anything below fp32 is also judged against fp32 (the "quantization" figures, fp16 included).
        quantization = (checks.compare(data.fp32_outputs, outputs, classifier, names) if precision.weight_bits < 32
                        else None)
        tolerance = spec.tolerance(conversion.tolerance_as or precision)
        failures = checks.judge(lowering, quantization, tolerance)
        parity: dict[str, Any] = {
            "passed": not failures, "failures": failures, "tolerance": vars(tolerance),
            "samples": "verification (held out from calibration)", "lowering": lowering,
            "quantization": quantization,
            "reference": "fp32 PyTorch" if fp32_reference else f"{precision} PyTorch (simulated)"}
        if precision.needs_calibration:
            # The same figures on the calibration samples: a large gap to the held-out ones means the
            # quantization ranges fit the calibration data, not the task.
            calibrated = _run_all(session, data.calibration, label)
            cal_fp32 = checks.torch_outputs(module, spec.input_names, data.calibration)
            parity["on_calibration_samples"] = checks.compare(cal_fp32, calibrated, classifier, names)
    entry.timings["verify_s"] = time.perf_counter() - start  # the dict the entry holds
    entry = dataclasses.replace(entry, parity=parity, runtime={"backend": session.backend})
    if failures:
        attempt["parity"] = parity
        raise checks.ParityError(f"{label} failed verification: " + "; ".join(failures))
    return entry, parity, conversion.details


def convert_step(plan: _Plan, step: str, convert, tmp: Path, module, data: Sequence[_Data], label: str,
                 progress: Progress, attempt: dict[str, Any]):
    """Convert (`convert()`, timed, shown as `step`), then the precision and manifest entry (`new_entry`) from the
    calibration of every shape in `data`. Returns (conversion, precision, entry, unverified): `unverified` is the
    finished (entry, parity, details) where the format cannot be verified here, else None."""
    start = time.perf_counter()
    with progress.step(step):
        conversion = convert()
    timings = {"export_s": time.perf_counter() - start}
    precision, entry = new_entry(plan, conversion, tmp, timings, module, data[0].calibration_source,
                                 sum(len(d.calibration) for d in data))
    attempt["precision"] = str(precision)
    not_verifiable = plan.converter.verify_reason(**plan.kwargs)
    if not not_verifiable:
        return conversion, precision, entry, None
    progress.note(f"  ! {label}: numerical parity not run here: {not_verifiable}")
    parity = {"passed": None, "skipped": not_verifiable}
    return conversion, precision, entry, (dataclasses.replace(entry, parity=parity), parity, conversion.details)


def new_entry(plan: _Plan, conversion, tmp: Path, timings: dict, module, calibration_source: str,
              calibration_samples: int) -> tuple[Precision, manifest.ArtifactEntry]:
    """The artifact's precision (a converter may fall back, only where the user allowed it) and its manifest
    entry before verification (sha256 and size are set once it is in place)."""
    requested = plan.precision
    precision = Precision(str(conversion.precision), requested.requested) if conversion.precision else requested
    entry = manifest.ArtifactEntry(
        file=plan.final.name, format=plan.converter.format, precision=str(precision),
        requested_precision=requested.requested, sha256="", size_bytes=manifest.size_of(tmp), options=plan.kwargs,
        details=conversion.details, timings=timings, weights=module.pocketformer_weights, tools=tool_versions(),
        calibration={"source": calibration_source, "samples": calibration_samples}
        if precision.needs_calibration else None)
    return precision, entry


def _run_all(session, feeds: list[dict], label: str) -> list:
    import device_runtime

    try:
        return [session.run(None, feed) for feed in feeds]
    except device_runtime.ExecutionError as exc:
        raise ConversionError(f"{label}: the converter wrote an artifact its runtime cannot run ({exc}); "
                              f"nothing was written") from exc


def _reference(reference, length: int, module, data: _Data, spec: ModelSpec) -> list:
    """PyTorch's outputs at `length`: the fp32 ones already computed, or the per-length quantized module's."""
    if reference is module:
        return data.fp32_outputs
    model = reference[length] if isinstance(reference, dict) else reference
    return checks.torch_outputs(model, spec.input_names, data.feeds)
