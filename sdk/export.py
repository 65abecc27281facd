"""The export pipeline: build -> reference -> convert -> verify on the host -> report.

Every artifact is verified before it is put in place: it is written to a temporary path, run with the
device runtime on the real sample inputs and compared with PyTorch; only an artifact that meets the
model's tolerance is moved to `out/<model>/<precision>/model<suffix>`. A failed one leaves its figures in
report.json and raises `ParityError`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from converters import atomic_path, get_converter, resolve_precision
from converters.base import requested_precision
from converters.base import ConversionError, UnsupportedError
from models_zoo import ModelSpec, get_model
from converters import parity as checks
from sdk.progress import Progress
from sdk.report import record_artifact, tool_versions


@dataclass
class ExportResult:
    model: str
    format: str
    precision: str
    path: Path
    report_path: Path
    passed: bool | None  # None: parity could not be run on this host (see parity["skipped"])
    size_bytes: int
    parity: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        if self.passed is None:
            return (f"{self.model} → {self.path} [{self.format} {self.precision}] {self.size_bytes / 1e6:.2f} MB, "
                    f"parity NOT run: {self.parity['skipped']}")
        low = self.parity["lowering"]
        line = (f"{self.model} → {self.path} [{self.format} {self.precision}] {self.size_bytes / 1e6:.2f} MB, "
                f"max abs err {low['max_abs_err']:.2g}")
        quant = self.parity.get("quantization")
        if quant:
            line += f", SQNR vs fp32 {quant['sqnr_db']:.1f} dB"
        return line


@dataclass
class _Data:
    """The real inputs of one export: verification feeds, their fp32 PyTorch outputs, calibration feeds."""

    feeds: list[dict]
    fp32_outputs: list
    calibration: list[dict]
    calibration_source: str


def _spec(model: str | ModelSpec, tiny: bool, seq_len: int | None) -> ModelSpec:
    spec = model if isinstance(model, ModelSpec) else get_model(model, tiny=tiny)
    if tiny and not spec.is_tiny:
        spec = spec.tiny()
    if seq_len is not None:
        if not hasattr(spec, "with_seq_len"):
            raise ValueError(f"{spec.name} has no sequence length to set")
        spec = spec.with_seq_len(seq_len)
    return spec


def export(model: str | ModelSpec, formats: Sequence[str] | str = ("pte",), precision: str | None = None,
           out_dir: str | Path = "out", weights: str | Path | None = None, *, tiny: bool = False,
           seq_len: int | None = None, calibration: str | Path | None = None, progress: Progress | None = None,
           **options) -> list[ExportResult]:
    """Export a zoo model to each format, verify each artifact against PyTorch, and report.

    Quantizers calibrate on the spec's real sample inputs, or on `calibration` (a folder of images, or a
    text file with one sentence a line) when given; verification always uses the sample inputs.

    `options` go to the converters (e.g. `rewrite=False` for ExecuTorch). Raises `ParityError` after
    recording the figures when an artifact misses the model's tolerance.
    """
    progress = progress or Progress(enabled=False)
    spec = _spec(model, tiny, seq_len)
    formats = [formats] if isinstance(formats, str) else list(formats)
    converters = [get_converter(f) for f in formats]
    for converter in converters:  # refuse before any slow work
        resolved = resolve_precision(spec, precision, converter)
        reason = converter.unsupported_reason(spec, resolved, **options)
        if reason:
            raise UnsupportedError(f"cannot export {spec.name} to {converter.format} at {resolved}: {reason}")

    with progress.step(f"build {spec.name} ({weights or getattr(spec, 'default_weights', None) or 'random weights'})"):
        module = spec.build(weights=str(weights) if weights else None)
        feeds = spec.sample_inputs()
        data = _Data(feeds, checks.torch_outputs(module, spec.input_names, feeds),
                     spec.feeds_from(str(calibration)) if calibration else spec.calibration_inputs(),
                     str(calibration) if calibration else "the spec's real calibration samples")
        checks.check_spread(data.fp32_outputs, f"{spec.name} (PyTorch fp32)")

    results = []
    for converter in converters:
        folder = Path(out_dir) / spec.name / requested_precision(spec, precision, converter)
        results.append(_export_one(converter, spec, module, data, resolve_precision(spec, precision, converter),
                                   folder, progress, options))
    return results


def _export_one(converter, spec, module, data: _Data, precision, folder, progress, options) -> ExportResult:
    import device_runtime

    final = folder / converter.artifact_name(**options)
    label = f"{spec.name} → {converter.format} {precision}"
    timings = {}
    model_section = {**spec.describe(), "labels": spec.labels()}
    with atomic_path(final) as tmp:
        start = time.perf_counter()
        with progress.step(f"convert {label}"):
            conversion = converter.convert(module, spec, precision, data.calibration, tmp, **options)
        timings["export_s"] = time.perf_counter() - start
        # What the artifact really is: a converter may fall back (only when the user allowed it).
        requested, precision = precision, conversion.details.get("precision", precision)
        size = _size(tmp)
        entry = {"file": final.name, "format": converter.format, "precision": precision,
                 "requested_precision": requested, "size_bytes": size,
                 "timings": timings, "details": conversion.details, "calibration": {
                     "source": data.calibration_source, "samples": len(data.calibration)}
                 if precision.startswith("int8") else None, "weights": module.pocketformer_weights,
                 "tools": tool_versions()}

        not_verifiable = converter.verify_reason(**options)
        if not_verifiable:
            progress.note(f"  ! {label}: numerical parity not run here: {not_verifiable}")
            parity = {"passed": None, "skipped": not_verifiable}
            report_path = record_artifact(folder, model_section, {**entry, "parity": parity})
            return ExportResult(spec.name, converter.format, precision, final, report_path, None, size, parity,
                                conversion.details)

        start = time.perf_counter()
        with progress.step(f"verify {label} on {len(data.feeds)} real samples"):
            session = device_runtime.load(tmp, adapt_io=True)
            try:
                artifact_outputs = [session.run(None, feed) for feed in data.feeds]
            except device_runtime.ExecutionError as exc:
                raise ConversionError(f"{label}: the converter wrote an artifact its runtime cannot run ({exc}); "
                                      f"nothing was written") from exc
            reference_outputs = (data.fp32_outputs if conversion.reference is module else
                                 checks.torch_outputs(conversion.reference, spec.input_names, data.feeds))
            checks.check_spread(reference_outputs, f"{spec.name} ({precision} PyTorch reference)")
            classifier = spec.task.endswith("classification")
            lowering = checks.compare(reference_outputs, artifact_outputs, classifier)
            quantization = (checks.compare(data.fp32_outputs, artifact_outputs, classifier)
                            if precision != "fp32" else None)
            # A compressed package (e.g. Core ML palettization of an fp16 model) is judged as int8 is.
            tolerance = spec.tolerance(conversion.details.get("tolerance_as", precision))
            failures = checks.judge(lowering, quantization, tolerance)
        timings["verify_s"] = time.perf_counter() - start

        parity = {"passed": not failures, "failures": failures, "tolerance": vars(tolerance),
                  "lowering": lowering, "quantization": quantization,
                  "reference": "fp32 PyTorch" if conversion.reference is module else f"{precision} PyTorch (simulated)"}
        report_path = record_artifact(folder, model_section,
                                      {**entry, "parity": parity, "runtime": {"backend": session.backend}})
        if failures:
            raise checks.ParityError(f"{label} failed verification: " + "; ".join(failures) +
                                     f" (figures in {report_path})")
    return ExportResult(spec.name, converter.format, precision, final, report_path, True, size, parity,
                        conversion.details)


def _size(path: Path) -> int:
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size
