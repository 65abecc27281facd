"""`sdk.export`: shapes -> plan -> build -> for each work item: convert -> verify on the host -> move into place -> record.

1. Shapes: the four keywords (`seq_len`, `seq_lens`, `pack`, `batch_sizes`) parsed into one value
   (`sdk.export.shapes`); conflicting ones are refused at once.
2. Plan (`sdk.export.plan`): per format, the converter, the precision resolved once, its typed options, its
   folder and file, and which sizes each artifact holds. Anything refused is refused here, before slow work.
3. Build the PyTorch model once and its fp32 outputs on the real verification samples at each shape an item
   needs (`sdk.export.data`; calibration samples are kept apart, so a quantized artifact is never judged on the
   inputs it was calibrated on).
4. One loop over the work items: convert to a temporary path, run it with the device runtime, compare with
   PyTorch (`sdk.export.steps`, or `sdk.export.buckets` for an artifact holding several sizes). Only an artifact
   that meets the model's tolerance is moved into place; its manifest entry (sha256, size, figures) is written
   after that. A failed attempt is recorded apart and the previous artifact and its entry stay as they were.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

from converters import atomic_path, parity as checks
from device_runtime import manifest
from device_runtime.errors import PocketformerError
from models_zoo import ModelSpec, Precision
from sdk.console.progress import Progress
from sdk.export.buckets import convert_and_verify_buckets
from device_runtime.errors import UsageError
from sdk.export.data import ExportInputs
from sdk.export.evaluate import EvalSet, artifact_top1, pytorch_top1, read_eval_set
from sdk.export.pipeline import export_pipeline_model, is_pipeline_model
from sdk.export.plan import WorkItem, plan_work
from sdk.export.packed_rows import packed_rows_module
from sdk.export.shapes import PackedRow, PackedRows, shapes_from_options
from sdk.export.steps import ExportResult, convert_and_verify, model_section

__all__ = ["export", "ExportResult"]


def export(model: str | ModelSpec, formats: Sequence[str] | str = ("pte",), precision: str | None = None,
           out_dir: str | Path = "out", weights: str | Path | None = None, *, tiny: bool = False,
           seq_len: int | None = None, seq_lens: str | Sequence[int] | None = None, pack: str | None = None,
           batch_sizes: str | Sequence[int] | None = None, calibration: str | Path | None = None,
           eval: str | Path | None = None, progress: Progress | None = None,  # noqa: A002 (the API's word)
           **options: Any) -> list[ExportResult]:
    """Export a zoo model to each format, verify each artifact against PyTorch, and record it in report.json.

    Quantizers calibrate on the spec's real calibration samples, or on `calibration` (a folder of images, or
    a text file with one sentence a line) when given; verification always uses the spec's verification
    samples, which are kept apart from the calibration ones.

    `options` are the formats' own options (see each converter's `Options`, e.g. `rewrite=False` for pte,
    `int8_io=True` for tflite); a key no requested format declares is an `UnknownOptionError`. Raises
    `ParityError` (the figures are kept in report.json under "failed") when an artifact misses the model's
    tolerance; the previous artifact, if any, stays in place with its entry.

    `seq_lens` (e.g. "16,32,64,128"; the BERT family) exports every length in one step, each verified: one
    artifact holding them all where the format allows, else one per length (`sdk.export.buckets`).
    `pack` ("128x16": rows of 128 tokens, up to 16 sentences) exports the packed entry point instead
    (`models_zoo.packed_bert`; run it with `device_runtime.PackedRunner`).
    `batch_sizes` (e.g. "1,2,4,8"; the vision families) exports every batch size in one step, each verified on
    distinct real images stacked: one artifact holding them all where the format allows, else one per size.
    `eval` (an image folder with a subfolder per class, or a TSV of text<TAB>label) adds the top-1 accuracy of
    fp32 PyTorch and of each artifact on the user's own labelled data (`sdk.export.evaluate`).
    A pipeline model ("minivlm", "minivlm-tiny") is exported by `sdk.export.pipeline` instead: one artifact per
    stage (`stages={"detector": ("tflite", "int8")}` picks a stage's format and precision), verified alone and
    end to end; the result is a list of one `PipelineExportResult`.
    """
    progress = progress or Progress(enabled=False)
    formats = [formats] if isinstance(formats, str) else list(formats)
    if is_pipeline_model(model):  # several artifacts and glue (MiniVLM): sdk/export/pipeline.py
        return export_pipeline_model(model, formats, precision, out_dir, stage_export=export, weights=weights,
                                     tiny=tiny, seq_len=seq_len, seq_lens=seq_lens, pack=pack, batch_sizes=batch_sizes,
                                     calibration=calibration, eval=eval, progress=progress, **options)
    shapes = shapes_from_options(seq_len, seq_lens, pack, batch_sizes, options)
    spec, items = plan_work(model, shapes, formats, precision, out_dir, options, tiny=tiny, weights=weights,
                            progress=progress)
    evalset = None
    if eval is not None:  # read (and refused) before any slow work, at the longest shape an item holds
        if isinstance(shapes, (PackedRow, PackedRows)):
            raise UsageError("--eval runs one sentence per feed: evaluate the unpacked export, not --pack")
        evalset = read_eval_set(max((i.spec for i in items), key=lambda s: getattr(s, "seq_len", 0)), eval)
    with progress.step(f"build {spec.name} ({weights or getattr(spec, 'default_weights', None) or 'random weights'})"):
        module = spec.build(weights=str(weights) if weights else None)
        if isinstance(shapes, PackedRows):  # one module, an entry point per row length (sdk.export.packed_rows)
            module = packed_rows_module(module, spec, shapes)
        inputs = ExportInputs(module, calibration)
        for item in items:  # every shape's real inputs and PyTorch outputs, before the first conversion
            inputs.at(item.spec) if item.buckets is None else inputs.buckets(item.spec, item.buckets)
        if evalset is not None:
            pytorch_top1(inputs.module, spec, evalset)
    return [export_item(item, inputs, progress, evalset) for item in items]


def export_item(item: WorkItem, inputs: ExportInputs, progress: Progress, evalset: EvalSet | None = None) -> ExportResult:
    """Convert, verify, move into place and record one work item's artifact."""
    plan, spec, module = item.plan, item.spec, inputs.module
    converter, precision = plan.converter, plan.precision
    label = f"{spec.name} → {converter.format} {precision}"
    attempt: dict[str, Any] = {"file": plan.final.name, "format": converter.format, "precision": str(precision),
                               "requested_precision": precision.requested, "options": plan.kwargs}
    try:
        with atomic_path(plan.final) as tmp:
            if item.buckets is None:
                entry, parity, details = convert_and_verify(plan, spec, module, inputs.at(spec), tmp, label,
                                                            progress, attempt)
            else:
                entry, parity, details = convert_and_verify_buckets(plan, spec, module,
                                                                    inputs.buckets(spec, item.buckets), item.buckets,
                                                                    tmp, label, progress, attempt)
    except PocketformerError as exc:
        failure = {**attempt, "error": type(exc).__name__, "reason": str(exc)}
        report_path = manifest.record_failure(plan.folder, model_section(spec), failure)
        if isinstance(exc, checks.ParityError):
            raise checks.ParityError(f"{exc} (figures in {report_path} under \"failed\"; nothing was replaced)") from None
        raise
    if evalset is not None and parity.get("passed") is not None:  # runnable here: judged on the user's task too
        parity = {**parity, "accuracy": artifact_top1(plan.final, evalset, label, progress)}
        entry = dataclasses.replace(entry, parity=parity)
    # In place now: the entry records the bytes that are there.
    entry = dataclasses.replace(entry, sha256=manifest.sha256_of(plan.final), size_bytes=manifest.size_of(plan.final))
    report_path = manifest.record_artifact(plan.folder, model_section(spec), entry)
    return ExportResult(spec.name, converter.format, Precision.of(entry.precision), plan.final, report_path,
                        parity["passed"], entry.size_bytes, parity, details, entry)
