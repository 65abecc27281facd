"""The export pipeline: plan -> build -> reference -> convert -> verify on the host -> move into place -> record.

1. Plan: each format's converter, the precision resolved once (`Precision`), its typed options, its folder
   `out/<model>/<precision>[-seq<N>]/` and file name. Anything refused is refused here, before slow work.
2. Build the PyTorch model and its fp32 outputs on the real verification samples (calibration samples are
   kept apart, so a quantized artifact is never judged on the inputs it was calibrated on).
3. Per format: convert to a temporary path, run it with the device runtime, compare with PyTorch.
4. Only an artifact that meets the model's tolerance is moved into place; its manifest entry (sha256, size,
   figures) is written after that. A failed attempt is recorded apart and the previous artifact and its
   entry stay as they were.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from converters import atomic_path, get_converter, list_converters, parity as checks
from converters.base import (ConversionError, Converter, UnknownOptionError, UnsupportedError, option_values,
                             resolve_precision)
from device_runtime import manifest
from device_runtime.buckets import parse_batch_sizes, parse_lengths
from device_runtime.errors import PocketformerError, UsageError
from models_zoo import ModelSpec, Precision, get_model
from sdk.progress import Progress
from sdk.report import tool_versions


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


def export(model: str | ModelSpec, formats: Sequence[str] | str = ("pte",), precision: str | None = None,
           out_dir: str | Path = "out", weights: str | Path | None = None, *, tiny: bool = False,
           seq_len: int | None = None, seq_lens: str | Sequence[int] | None = None, pack: str | None = None,
           batch_sizes: str | Sequence[int] | None = None, calibration: str | Path | None = None,
           progress: Progress | None = None, **options: Any) -> list[ExportResult]:
    """Export a zoo model to each format, verify each artifact against PyTorch, and record it in report.json.

    Quantizers calibrate on the spec's real calibration samples, or on `calibration` (a folder of images, or
    a text file with one sentence a line) when given; verification always uses the spec's verification
    samples, which are kept apart from the calibration ones.

    `options` are the formats' own options (see each converter's `Options`, e.g. `rewrite=False` for pte,
    `int8_io=True` for tflite); a key no requested format declares is an `UnknownOptionError`. Raises
    `ParityError` (the figures are kept in report.json under "failed") when an artifact misses the model's
    tolerance; the previous artifact, if any, stays in place with its entry.

    `seq_lens` (e.g. "16,32,64,128"; the BERT family) exports every length in one step, each verified: one
    artifact holding them all where the format allows (see `export_lengths`), else one per length.
    `pack` ("128x16": rows of 128 tokens, up to 16 sentences) exports the packed entry point instead
    (`models_zoo.packed_bert`; run it with `device_runtime.PackedRunner`).
    `batch_sizes` (e.g. "1,2,4,8"; the vision families) exports every batch size in one step, each verified on
    distinct real images stacked: one artifact holding them all (see `export_batches`).
    """
    if batch_sizes is not None:
        given = [flag for flag, value in (("--seq-len", seq_len), ("--seq-lens", seq_lens or options.get("seq_lens")),
                                          ("--pack", pack)) if value is not None]
        if given:
            raise UsageError(f"--batch-sizes is for the vision families; it does not combine with {', '.join(given)} "
                             f"(the BERT family batches through --pack and --seq-lens)")
        return export_batches(model, formats, precision, out_dir, weights, tiny=tiny, batch_sizes=batch_sizes,
                              calibration=calibration, progress=progress, **options)
    seq_lens = options.pop("seq_lens", None) if seq_lens is None else seq_lens
    if seq_lens is not None:
        if seq_len is not None:
            raise UsageError("give --seq-len or --seq-lens, not both")
        return export_lengths(model, formats, precision, out_dir, weights, tiny=tiny, seq_lens=seq_lens,
                              calibration=calibration, progress=progress, **options)
    if pack is not None:
        if seq_len is not None:
            raise UsageError("a packed row's length is its capacity: give --pack 128x16, not --seq-len as well")
        model = _spec(model, tiny, None, pack)
    return _export_fixed(model, formats, precision, out_dir, weights, tiny, seq_len, calibration, progress, options)


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

    converter, requested = plan.converter, plan.precision
    timings: dict[str, float] = {}
    start = time.perf_counter()
    with progress.step(f"convert {label}"):
        conversion = converter.convert(module, spec, requested, data.calibration, tmp, **plan.kwargs)
    timings["export_s"] = time.perf_counter() - start
    precision, entry = new_entry(plan, conversion, tmp, timings, module, data.calibration_source,
                                 len(data.calibration))
    attempt["precision"] = str(precision)

    not_verifiable = converter.verify_reason(**plan.kwargs)
    if not_verifiable:
        progress.note(f"  ! {label}: numerical parity not run here: {not_verifiable}")
        parity = {"passed": None, "skipped": not_verifiable}
        return dataclasses.replace(entry, parity=parity), parity, conversion.details

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
    timings["verify_s"] = time.perf_counter() - start
    entry = dataclasses.replace(entry, parity=parity, runtime={"backend": session.backend})
    if failures:
        attempt["parity"] = parity
        raise checks.ParityError(f"{label} failed verification: " + "; ".join(failures))
    return entry, parity, conversion.details


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


# -- several sequence lengths in one step (`export --seq-lens`) ----------------------------------------
# `export --seq-lens 16,32,64,128`: several sequence lengths of a BERT-family model in one step, each verified.
#
# Where the format allows (`Converter.multi_length`), one artifact holds every length with the weights stored
# once: an ExecuTorch program with a method per length, a TFLite file with a signature per length, an ONNX model
# with a dynamic sequence axis. `device_runtime.load` opens it as a `BucketedSession`, which pads each request to
# the smallest length that fits. Elsewhere (Core ML, Ascend, or a precision a format cannot make multi-length)
# the export writes one artifact per length, each in its own `<precision>-seq<N>/` folder with its own manifest.
#
# Verification, per length: the spec's real verification samples at that length (held out from calibration),
# run through the bucketed session and compared with PyTorch at that length. Then the same sentences unpadded
# (their real token counts), routed by the session to a bucket and padded there, against PyTorch on the
# unpadded sentence: the check that bucketing and padding do not change what the model computes.

def export_lengths(model: str | ModelSpec, formats: Sequence[str] | str, precision: str | None,
                   out_dir: str | Path, weights: str | Path | None, *, tiny: bool, seq_lens: str | Sequence[int],
                   calibration: str | Path | None, progress: Progress | None, **options: Any) -> list:
    """As `export`, at every length of `seq_lens` (see the module docstring)."""
    progress = progress or Progress(enabled=False)
    formats = [formats] if isinstance(formats, str) else list(formats)
    results = []
    # A format whose converter takes the lengths itself (Core ML: enumerated shapes, or a range) exports them so.
    own = [f for f in formats if "seq_lens" in get_converter(f).option_names()]
    if own:
        results += _export_fixed(model, own, precision, out_dir, weights, tiny, None, calibration, progress,
                                          {**options, "seq_lens": str(seq_lens) if isinstance(seq_lens, str)
                                           else ",".join(map(str, seq_lens))})
        formats = [f for f in formats if f not in own]
        if not formats:
            return results
    base = _spec(model, tiny, None)
    if not hasattr(base, "with_seq_len"):
        raise UsageError(f"{base.name} has no sequence length: --seq-lens is for the BERT family")
    lengths = parse_lengths(seq_lens)
    specs = {length: base.with_seq_len(length) for length in lengths}
    suffix = "-seqs" + "-".join(map(str, lengths))
    plans = plan(specs[lengths[-1]], formats, precision, out_dir, options, folder_suffix="")
    one_artifact = [p for p in plans if p.converter.multi_length and not p.converter.multi_length_reason(p.precision)]
    per_length = [p.converter.format for p in plans if p not in one_artifact]
    if one_artifact:
        # The folder: <precision>-seqs16-32-64 beside the single-length ones, so neither replaces the other.
        plans = plan(base, [p.converter.format for p in one_artifact], precision, out_dir, options,
                              folder_suffix=suffix)
        with progress.step(f"build {base.name} ({weights or getattr(base, 'default_weights', None) or 'random weights'})"):
            module = base.build(weights=str(weights) if weights else None)
            data = {length: _length_data(spec, module, calibration) for length, spec in specs.items()}
        results += [_export_one(p, specs[lengths[-1]], module, data, progress, _convert_and_verify_lengths)
                    for p in plans]
    for fmt in per_length:
        for length in lengths:
            results += export(model, [fmt], precision, out_dir, weights, tiny=tiny, seq_len=length,
                                       calibration=calibration, progress=progress, **options)
    return results


def _length_data(spec: ModelSpec, module, calibration) -> _Data:
    feeds = spec.sample_inputs()
    data = _Data(feeds, checks.torch_outputs(module, spec.input_names, feeds),
                          spec.feeds_from(str(calibration)) if calibration else spec.calibration_inputs(),
                          str(calibration) if calibration else "the spec's real calibration samples")
    checks.check_spread(data.fp32_outputs, f"{spec.name} (PyTorch fp32)")
    return data


def _convert_and_verify_lengths(plan, spec: ModelSpec, module, data: dict[int, _Data], tmp: Path,
                                label: str, progress: Progress, attempt: dict[str, Any]):
    import device_runtime

    converter = plan.converter
    specs = {length: spec.with_seq_len(length) for length in data}
    start = time.perf_counter()
    with progress.step(f"convert {label} at lengths {', '.join(map(str, sorted(data)))}"):
        conversion = converter.convert_buckets(module, specs, plan.precision,
                                               {length: d.calibration for length, d in data.items()}, tmp,
                                               **plan.kwargs)
    timings = {"export_s": time.perf_counter() - start}
    first = data[min(data)]
    precision, entry = new_entry(plan, conversion, tmp, timings, module, first.calibration_source,
                                          sum(len(d.calibration) for d in data.values()))
    attempt["precision"] = str(precision)
    start = time.perf_counter()
    classifier = spec.task.endswith("classification")
    names = list(spec.output_names)
    tolerance = spec.tolerance(conversion.tolerance_as or precision)
    per_length, failures = {}, []
    with progress.step(f"verify {label} at each length on held-out real samples"):
        session = device_runtime.load(tmp, adapt_io=True)
        for length, d in sorted(data.items()):
            reference = _reference(conversion.reference, length, module, d, spec)
            outputs = _run_all(session, d.feeds, label)
            lowering = checks.compare(reference, outputs, classifier, names)
            quantization = (checks.compare(d.fp32_outputs, outputs, classifier, names)
                            if precision.weight_bits < 32 else None)
            found = checks.judge(lowering, quantization, tolerance)
            failures += [f"length {length}: {f}" for f in found]
            per_length[str(length)] = {"passed": not found, "lowering": lowering, "quantization": quantization,
                                       "samples": len(d.feeds)}
        unpadded = _unpadded_check(session, conversion.reference, module, data[max(data)], spec, classifier, names)
        found = checks.judge(unpadded, None, tolerance) if precision.weight_bits == 32 else []
        failures += [f"unpadded requests: {f}" for f in found]
    timings["verify_s"] = time.perf_counter() - start
    worst = max(per_length.values(), key=lambda r: r["lowering"]["max_abs_err"])
    parity = {"passed": not failures, "failures": failures, "tolerance": vars(tolerance),
              "samples": "verification (held out from calibration), at each length",
              "lowering": worst["lowering"], "quantization": worst["quantization"], "lengths": per_length,
              "unpadded": unpadded, "buckets": session.lengths,
              "reference": "fp32 PyTorch" if conversion.reference is module else f"{precision} PyTorch (simulated)"}
    entry = dataclasses.replace(entry, parity=parity, runtime={"backend": session.backend})
    if failures:
        attempt["parity"] = parity
        raise checks.ParityError(f"{label} failed verification: " + "; ".join(failures))
    return entry, parity, conversion.details


def _reference(reference, length: int, module, data: _Data, spec: ModelSpec) -> list:
    """PyTorch's outputs at `length`: the fp32 ones already computed, or the per-length quantized module's."""
    if reference is module:
        return data.fp32_outputs
    model = reference[length] if isinstance(reference, dict) else reference
    return checks.torch_outputs(model, spec.input_names, data.feeds)


def _unpadded_check(session, reference, module, data: _Data, spec: ModelSpec, classifier: bool,
                    names: list[str]) -> dict:
    """The verification sentences at their real token counts through the bucketed session, against PyTorch on
    the same unpadded sentences (fp32: padding inside the bucket must change nothing)."""
    mask_name = "attention_mask"
    feeds = []
    for feed in data.feeds:
        real = int(np.asarray(feed[mask_name]).sum()) if mask_name in feed else feed[spec.input_names[0]].shape[1]
        feeds.append({n: np.ascontiguousarray(np.asarray(v)[:, :real]) for n, v in feed.items()})
    expected = checks.torch_outputs(module, spec.input_names, feeds)
    got = [session.run(None, feed) for feed in feeds]
    figures = checks.compare(expected, got, classifier, names)
    figures["token_counts"] = [int(f[spec.input_names[0]].shape[1]) for f in feeds]
    figures["routed_to"] = [session.route(n) for n in figures["token_counts"]]
    return figures


# -- several batch sizes in one step (`export --batch-sizes`) -------------------------------------------
# `export --batch-sizes 1,2,4,8`: a vision model at several batch sizes in one artifact, each verified, so that a
# `Batcher` runs real batches on a format with fixed shapes. An ExecuTorch program holds one method per batch
# size (`batch1`, ..., and `forward` = the smallest), a TFLite file one signature per batch size (weights and
# quantization tables stored once, `share_across_signatures`), an ONNX model its dynamic batch axis with the
# verified sizes in its metadata; Ascend compiles them as ATC's --dynamic_batch_size profiles (its own option).
# Where a format cannot hold several sizes at a precision (TFLite int8-static: calibration is per signature) the
# export writes one artifact per batch size, each in its own `<precision>-batch<N>/` folder, still a bucket the
# runtime pads fewer rows to. Other formats are refused. `device_runtime.load` opens such an artifact as a
# `BucketedSession` over the batch axis (`session.batch_sizes`): fewer rows are padded with zeros, more are run
# in chunks of the largest bucket.
#
# Verification, per batch size: batches of distinct real verification images (held out from calibration; their
# mirror images join them when a batch is larger than the set), against PyTorch on the same batch. Then row
# counts that are no bucket (3 for 1,2,4,8, and one past the largest), which the session pads or chunks, against
# PyTorch on the same rows: fp32 must agree within tolerance (padding rows changes nothing).

def batchable_reason(spec: ModelSpec) -> str | None:
    """Why `spec` takes no `--batch-sizes` (None for the vision families)."""
    if hasattr(spec, "with_seq_len"):
        return (f"{spec.name} is a BERT-family model: it batches through packing (--pack, several sentences per "
                f"row) and sequence buckets (--seq-lens), not batch buckets; --batch-sizes is for the vision "
                f"families")
    if spec.preprocessing().get("kind") != "image" or any(s.shape[:1] != (1,) for s in spec.input_specs()):
        return f"{spec.name} has no image input with a batch axis of 1: --batch-sizes is for the vision families"
    return None


def export_batches(model: str | ModelSpec, formats: Sequence[str] | str, precision: str | None,
                   out_dir: str | Path, weights: str | Path | None, *, tiny: bool, batch_sizes: str | Sequence[int],
                   calibration: str | Path | None, progress: Progress | None, **options: Any) -> list:
    """As `export`, at every batch size of `batch_sizes` (see the comment above)."""
    progress = progress or Progress(enabled=False)
    formats = [formats] if isinstance(formats, str) else list(formats)
    sizes = parse_batch_sizes(batch_sizes)
    base = _spec(model, tiny, None)
    reason = batchable_reason(base)
    if reason:
        raise UsageError(reason)
    converters = [get_converter(f) for f in formats]
    _split_options(converters, options)  # a misspelt key is refused whichever group it would go to
    own = [c.format for c in converters if "dynamic_batch_size" in c.option_names()]
    refused = [c.format for c in converters if c.format not in own and not c.multi_batch]
    if refused:
        able = [f for f in list_converters() if get_converter(f).multi_batch
                or "dynamic_batch_size" in get_converter(f).option_names()]
        raise UnsupportedError(f"--batch-sizes is not supported for {', '.join(refused)}: no entry point per batch "
                               f"size there (formats that take it: {', '.join(able)}); export "
                               f"{', '.join(refused)} without --batch-sizes")
    sizes_text = ",".join(map(str, sizes))
    results = []
    if own:  # ATC compiles the sizes itself (its own verification runs a spread of them)
        names = {n for f in own for n in get_converter(f).option_names()}
        results += _export_fixed(base, own, precision, out_dir, weights, tiny, None, calibration, progress,
                                 {**{k: v for k, v in options.items() if k in names}, "dynamic_batch_size": sizes_text})
    formats = [f for f in formats if f not in own]
    if not formats:
        return results
    names = {n for f in formats for n in get_converter(f).option_names()}
    options = {k: v for k, v in options.items() if k in names}
    if "dynamic_batch" in names:
        options["dynamic_batch"] = True  # ONNX: its dynamic batch axis holds every size
    suffix = "-batch" + "-".join(map(str, sizes))
    work = []  # (plan, the batch sizes its artifact holds), all planned before the slow work
    for p in plan(base, formats, precision, out_dir, options, folder_suffix=suffix):
        reason = p.converter.multi_batch_reason(p.precision)
        if not reason:
            work.append((p, sizes))
            continue
        progress.note(f"  {p.converter.format} {p.precision}: {reason}")
        own_options = {k: v for k, v in options.items() if k in p.converter.option_names()}
        work += [(plan(base, [p.converter.format], precision, out_dir, own_options, folder_suffix=f"-batch{size}")[0],
                  [size]) for size in sizes]
    with progress.step(f"build {base.name} ({weights or getattr(base, 'default_weights', None) or 'random weights'})"):
        module = base.build(weights=str(weights) if weights else None)
        data = _batch_data(base, module, calibration, sizes)
    for p, held in work:
        results.append(_export_one(p, base, module, {size: data[size] for size in held}, progress,
                                   _convert_and_verify_batches))
    return results


# The mirror images that join the real samples when a batch has more rows than there are samples: flipped
# left-right, upside down, both (distinct real images, not one image repeated).
_VARIANTS = ((), (-1,), (-2,), (-2, -1))


def stacked_feeds(feeds: list[dict], size: int) -> list[dict]:
    """Feeds of `size` rows each: windows over the real samples, so every sample is in some batch and no batch
    holds one twice (mirror images join when `size` is larger than the set; beyond four times the set, rows
    repeat)."""
    pool = []
    for axes in _VARIANTS:
        if len(pool) >= max(size, len(feeds)):
            break
        pool += [{n: np.ascontiguousarray(np.flip(v, axes) if axes and v.ndim == 4 else v) for n, v in f.items()}
                 for f in feeds]
    used = pool[:max(size, len(feeds))]
    batches = -(-len(used) // size)
    return [{n: np.concatenate([used[(j * size + i) % len(used)][n] for i in range(size)], axis=0)
             for n in used[0]} for j in range(batches)]


def _batch_data(spec: ModelSpec, module, calibration, sizes: list[int]) -> dict[int, _Data]:
    samples = spec.sample_inputs()
    cal = spec.feeds_from(str(calibration)) if calibration else spec.calibration_inputs()
    source = str(calibration) if calibration else "the spec's real calibration samples"
    data = {}
    for size in sizes:
        feeds = stacked_feeds(samples, size)
        data[size] = _Data(feeds, checks.torch_outputs(module, spec.input_names, feeds), stacked_feeds(cal, size),
                           f"{source}, stacked {size} to a batch")
        checks.check_spread(data[size].fp32_outputs, f"{spec.name} at batch {size} (PyTorch fp32)")
    return data


def _convert_and_verify_batches(plan, spec: ModelSpec, module, data: dict[int, _Data], tmp: Path, label: str,
                                progress: Progress, attempt: dict[str, Any]):
    import device_runtime

    converter, sizes = plan.converter, sorted(data)
    start = time.perf_counter()
    with progress.step(f"convert {label} at batch sizes {', '.join(map(str, sizes))}"):
        conversion = converter.convert_batches(module, spec, plan.precision, {n: d.calibration for n, d in data.items()},
                                               tmp, **plan.kwargs)
    conversion.details["batch_sizes"] = sizes
    timings = {"export_s": time.perf_counter() - start}
    first = data[sizes[0]]
    precision, entry = new_entry(plan, conversion, tmp, timings, module, first.calibration_source,
                                 sum(len(d.calibration) for d in data.values()))
    attempt["precision"] = str(precision)
    not_verifiable = converter.verify_reason(**plan.kwargs)
    if not_verifiable:
        progress.note(f"  ! {label}: numerical parity not run here: {not_verifiable}")
        parity = {"passed": None, "skipped": not_verifiable}
        return dataclasses.replace(entry, parity=parity), parity, conversion.details

    start = time.perf_counter()
    classifier = spec.task.endswith("classification")
    names = list(spec.output_names)
    tolerance = spec.tolerance(conversion.tolerance_as or precision)
    per_size, failures = {}, []
    with progress.step(f"verify {label} at each batch size on held-out real images"):
        session = device_runtime.load(tmp, adapt_io=True)
        seen = list(getattr(session, "batch_sizes", []) or [])
        if seen != sizes:
            failures.append(f"the runtime sees batch sizes {seen}, the export made {sizes}")
        for size in sizes:
            d = data[size]
            reference = _reference(conversion.reference, size, module, d, spec)
            checks.check_spread(reference, f"{spec.name} at batch {size} ({precision} PyTorch reference)")
            outputs = _run_all(session, d.feeds, label)
            lowering = checks.compare(reference, outputs, classifier, names)
            quantization = (checks.compare(d.fp32_outputs, outputs, classifier, names)
                            if precision.weight_bits < 32 else None)
            found = checks.judge(lowering, quantization, tolerance)
            failures += [f"batch {size}: {f}" for f in found]
            per_size[str(size)] = {"passed": not found, "lowering": lowering, "quantization": quantization,
                                   "batches": len(d.feeds), "rows": len(d.feeds) * size}
        padded = _padded_rows_check(session, module, data, spec, classifier, names)
        found = checks.judge(padded, None, tolerance) if padded and precision.weight_bits == 32 else []
        failures += [f"rows padded or chunked to a bucket: {f}" for f in found]
    timings["verify_s"] = time.perf_counter() - start
    worst = max(per_size.values(), key=lambda r: r["lowering"]["max_abs_err"])
    parity = {"passed": not failures, "failures": failures, "tolerance": vars(tolerance),
              "samples": "verification (held out from calibration), distinct real images stacked at each batch size",
              "lowering": worst["lowering"], "quantization": worst["quantization"], "batch_sizes": per_size,
              "padded_rows": padded, "buckets": sizes,
              "reference": "fp32 PyTorch" if conversion.reference is module else f"{precision} PyTorch (simulated)"}
    entry = dataclasses.replace(entry, parity=parity, runtime={"backend": session.backend})
    if failures:
        attempt["parity"] = parity
        raise checks.ParityError(f"{label} failed verification: " + "; ".join(failures))
    return entry, parity, conversion.details


def _padded_rows_check(session, module, data: dict[int, _Data], spec: ModelSpec, classifier: bool,
                       names: list[str]) -> dict | None:
    """Row counts that are no bucket (one past each bucket below a gap, one past the largest) through the
    session, which pads them to a bucket or runs them in chunks, against PyTorch fp32 on the same rows."""
    sizes = sorted(data)
    counts = sorted({a + 1 for a, b in zip(sizes, sizes[1:]) if a + 1 < b} | {sizes[-1] + 1})
    feeds = [stacked_feeds(spec.sample_inputs(), n)[0] for n in counts]
    expected = checks.torch_outputs(module, spec.input_names, feeds)
    got = [session.run(None, feed) for feed in feeds]
    figures = checks.compare(expected, got, classifier, names)
    figures["rows"] = counts
    runs = getattr(session, "buckets_for", None)
    figures["routed_to"] = [runs(n) for n in counts] if runs else "one dynamic batch axis (no padding)"
    return figures
