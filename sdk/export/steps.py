"""Converting and verifying one artifact: the steps every export runs, whatever shapes it holds.

`convert_step` converts into a temporary path (timed) and makes the manifest entry; `convert_and_verify` then
runs the artifact with the device runtime and compares it with PyTorch on held-out real samples at one shape
(`sdk.export.buckets` does so at each size of a bucket axis). `ExportResult` is what the caller gets back.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from converters import parity as checks
from converters.base import ConversionError
from device_runtime import manifest
from models_zoo import ModelSpec, Precision
from sdk.console.progress import Progress
from sdk.export.data import ExportData
from sdk.export.plan import Plan
from sdk.export.records import tool_versions


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
        accuracy = self.parity.get("accuracy")
        if accuracy:
            line += (f", top-1 {100 * accuracy['artifact_top1']:.1f}% on {accuracy['samples']} labelled samples "
                     f"(fp32 PyTorch {100 * accuracy['fp32_pytorch_top1']:.1f}%, {0.0 - accuracy['drop_points']:+.1f} pt)")
        return line


def model_section(spec: ModelSpec) -> dict[str, Any]:
    return {**spec.describe(), "labels": spec.labels()}


def convert_and_verify(plan: Plan, spec: ModelSpec, module, data: ExportData, tmp: Path, label: str,
                       progress: Progress, attempt: dict[str, Any]):
    """Make the artifact at one shape in `tmp` and check it; returns (entry, parity, details)."""
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
        outputs = run_all(session, data.feeds, label)
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
            calibrated = run_all(session, data.calibration, label)
            cal_fp32 = checks.torch_outputs(module, spec.input_names, data.calibration)
            parity["on_calibration_samples"] = checks.compare(cal_fp32, calibrated, classifier, names)
    entry.timings["verify_s"] = time.perf_counter() - start  # the dict the entry holds
    entry = dataclasses.replace(entry, parity=parity, runtime={"backend": session.backend})
    if failures:
        attempt["parity"] = parity
        raise checks.ParityError(f"{label} failed verification: " + "; ".join(failures))
    return entry, parity, conversion.details


def convert_step(plan: Plan, step: str, convert, tmp: Path, module, data: Sequence[ExportData], label: str,
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


def new_entry(plan: Plan, conversion, tmp: Path, timings: dict, module, calibration_source: str,
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


def run_all(session, feeds: list[dict], label: str) -> list:
    import device_runtime

    try:
        return [session.run(None, feed) for feed in feeds]
    except device_runtime.ExecutionError as exc:
        raise ConversionError(f"{label}: the converter wrote an artifact its runtime cannot run ({exc}); "
                              f"nothing was written") from exc


def reference_outputs(reference, size: int, module, data: ExportData, spec: ModelSpec) -> list:
    """PyTorch's outputs at bucket `size`: the fp32 ones already computed, or the quantized module's (one per size
    where the converter quantized each size apart)."""
    if reference is module:
        return data.fp32_outputs
    model = reference[size] if isinstance(reference, dict) else reference
    return checks.torch_outputs(model, spec.input_names, data.feeds)
