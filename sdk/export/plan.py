"""The export plan: the shapes an export holds (`sdk.export.shapes`) turned into per-format work items.

Everything is resolved here, once and before any slow work: each format's converter, the precision
(`Precision`), its typed options, the folder `out/<model>/<precision>[-seq<N>|-seqs16-32|-batch1-2-4|...]/` and
file name. Anything refused is refused here.

A work item is one artifact to make: its plan, the spec it is verified at, and the bucket sizes it holds on its
axis (`None`: one shape). For several sequence lengths or batch sizes, a format that can hold them all in one
artifact (weights stored once: an ExecuTorch method, a TFLite signature per size, ONNX's dynamic axis) gets one
item holding every size; a format that takes the sizes through its own option (Core ML's enumerated shapes,
Ascend's ATC profiles) gets one item with that option set; elsewhere (a precision a format cannot make
multi-shape, such as TFLite int8-static, calibrated per signature) each size is an item of its own.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from converters import get_converter, list_converters
from converters.base import Converter, UnknownOptionError, UnsupportedError, option_values, resolve_precision
from device_runtime.buckets import parse_lengths
from device_runtime.errors import UsageError
from models_zoo import ModelSpec, Precision, get_model
from models_zoo.user_models import for_checkpoint
from sdk.console.progress import Progress
from sdk.export.shapes import BatchSizes, Buckets, Lengths, OneShape, PackedRow, PackedRows, Shapes


@dataclass(frozen=True)
class Plan:
    """One artifact's converter, precision, options and place: resolved once, before any slow work."""

    converter: Converter
    precision: Precision
    options: Any  # the converter's frozen Options
    folder: Path
    final: Path

    @property
    def kwargs(self) -> dict[str, Any]:
        return option_values(self.options)


@dataclass(frozen=True)
class WorkItem:
    """One artifact to make: its plan, the spec it is verified at (for buckets: the largest size's), and the
    sizes it holds on its bucket axis (None: one shape)."""

    plan: Plan
    spec: ModelSpec
    buckets: Buckets | None = None


def resolve_spec(model: str | ModelSpec, tiny: bool = False, shapes: Shapes = OneShape(),
                 weights: str | Path | None = None) -> ModelSpec:
    """The zoo spec (its tiny variant with `tiny`; a model folder's own spec) with the head size of `weights`
    where it has another, at one shape: a sequence length, or the packed entry point. Bucket axes resolve to the
    spec itself (each size is applied per item)."""
    spec = model if isinstance(model, ModelSpec) else get_model(str(model), tiny=tiny)
    if tiny and not spec.is_tiny:
        spec = spec.tiny()
    spec = for_checkpoint(spec, weights)
    if isinstance(shapes, OneShape) and shapes.seq_len is not None:
        if not hasattr(spec, "with_seq_len"):
            raise UsageError(f"{spec.name} has no sequence length to set")
        spec = spec.with_seq_len(shapes.seq_len)
    if isinstance(shapes, (PackedRow, PackedRows)):
        if not hasattr(spec, "with_packing"):
            raise UsageError(f"{spec.name} has no packed entry point: --pack is for the BERT family")
        for row in shapes.rows if isinstance(shapes, PackedRows) else (shapes,):
            at = spec.with_packing(row.capacity, row.segments)  # refuses a row the model cannot take
        spec = at  # several rows: the largest (rows are sorted), whose module serves them all
    return spec


def split_options(converters: Sequence[Converter], options: dict[str, Any]) -> list[Any]:
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


def own_options(converter: Converter, options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k in converter.option_names()}


def plan(spec: ModelSpec, formats: Sequence[str], precision: str | None, out_dir: str | Path,
         options: dict[str, Any], folder_suffix: str = "") -> list[Plan]:
    """What `export` will make of `spec` in each format; raises `UnsupportedError` / `UsageError` for anything it
    would refuse. `folder_suffix` extends the folder key (a multi-length export's `-seqs16-32-64`)."""
    converters = [get_converter(f) for f in formats]
    plans = []
    for converter, opts in zip(converters, split_options(converters, options)):
        resolved = resolve_precision(spec, precision, converter)
        kwargs = option_values(opts)
        reason = converter.unsupported_reason(spec, resolved, **kwargs)
        if reason:
            raise UnsupportedError(f"cannot export {spec.name} to {converter.format} at {resolved}: {reason}")
        folder = Path(out_dir) / spec.name / (spec.folder_key(resolved) + folder_suffix)
        plans.append(Plan(converter, resolved, opts, folder, folder / converter.artifact_name(**kwargs)))
    return plans


def batchable_reason(spec: ModelSpec) -> str | None:
    """Why `spec` takes no `--batch-sizes` (None for the vision families)."""
    if hasattr(spec, "with_seq_len"):
        return (f"{spec.name} is a BERT-family model: it batches through packing (--pack, several sentences per "
                f"row) and sequence buckets (--seq-lens), not batch buckets; --batch-sizes is for the vision "
                f"families")
    if spec.preprocessing().get("kind") != "image" or any(s.shape[:1] != (1,) for s in spec.input_specs()):
        return f"{spec.name} has no image input with a batch axis of 1: --batch-sizes is for the vision families"
    return None


def plan_work(model: str | ModelSpec, shapes: Shapes, formats: Sequence[str], precision: str | None,
              out_dir: str | Path, options: dict[str, Any], *, tiny: bool = False, weights: str | Path | None = None,
              progress: Progress | None = None) -> tuple[ModelSpec, list[WorkItem]]:
    """The spec to build the PyTorch model from, and every work item of the export (see the module docstring)."""
    progress = progress or Progress(enabled=False)
    spec = resolve_spec(model, tiny, shapes, weights)
    if spec.head_note:
        progress.note(f"  {spec.name}: {spec.head_note}")
    if isinstance(shapes, PackedRows):
        return spec, _packed_rows_items(model, spec, shapes, formats, precision, out_dir, options, tiny, weights,
                                        progress)
    if not isinstance(shapes, (Lengths, BatchSizes)):
        return spec, [WorkItem(p, spec) for p in plan(spec, formats, precision, out_dir, options)]
    converters = [get_converter(f) for f in formats]
    split_options(converters, options)  # a misspelt key is refused whichever group it would go to
    if isinstance(shapes, BatchSizes):
        reason = batchable_reason(spec)
        if reason:
            raise UsageError(reason)
    own = [c for c in converters if shapes.own_option in c.option_names()]
    rest = [c for c in converters if c not in own]
    _check_bucketable(spec, shapes, rest)
    items = []
    for converter in own:  # the format takes the sizes itself
        (p,) = plan(spec, [converter.format], precision, out_dir,
                    {**own_options(converter, options), shapes.own_option: shapes.text})
        items.append(WorkItem(p, spec))
    suffix = f"-{shapes.folder_word}" + "-".join(map(str, shapes.sizes))
    for converter in rest:
        opts = own_options(converter, options)
        if isinstance(shapes, BatchSizes) and "dynamic_batch" in converter.option_names():
            opts["dynamic_batch"] = True  # ONNX: its dynamic batch axis holds every size
        largest = _at(spec, shapes, shapes.sizes[-1])
        (p,) = plan(largest if isinstance(shapes, Lengths) else spec, [converter.format], precision, out_dir, opts)
        reason = _one_artifact_reason(p, shapes)
        if not reason:
            (p,) = plan(spec, [converter.format], precision, out_dir, opts, folder_suffix=suffix)
            items.append(WorkItem(p, largest, shapes))
            continue
        progress.note(f"  {converter.format} {p.precision}: {reason}")
        for size in shapes.sizes:  # one artifact per size, each in its own folder
            if isinstance(shapes, Lengths):
                at = spec.with_seq_len(size)
                items.append(WorkItem(plan(at, [converter.format], precision, out_dir, opts)[0], at))
            else:
                (p,) = plan(spec, [converter.format], precision, out_dir, opts, folder_suffix=f"-batch{size}")
                items.append(WorkItem(p, spec, BatchSizes((size,))))
    return spec, items


def _packed_rows_items(model, spec: ModelSpec, shapes: PackedRows, formats: Sequence[str], precision: str | None,
                       out_dir: str | Path, options: dict[str, Any], tiny: bool, weights, progress: Progress):
    """Several packed row lengths: one artifact holding a packed entry point per row length where the format
    can (`convert_packed_rows`: a `.pte` method, a `.tflite` signature per length), in
    `<precision>-packed32x4-64x8-128x16/`; elsewhere one artifact per row length (`<precision>-packed32x4/`, ...,
    as `--pack 32x4` makes it)."""
    converters = [get_converter(f) for f in formats]
    split_options(converters, options)
    plain = resolve_spec(model, tiny, OneShape(), weights)  # the folder key without a packed row's tag
    suffix = "-packed" + "-".join(r.text for r in shapes.rows)
    items = []
    for converter in converters:
        opts = own_options(converter, options)
        (p,) = plan(spec, [converter.format], precision, out_dir, opts)
        reason = packed_rows_reason(converter, p.precision)
        if not reason:
            (p,) = plan(plain, [converter.format], precision, out_dir, opts, folder_suffix=suffix)
            items.append(WorkItem(p, spec, shapes))
            continue
        progress.note(f"  {converter.format} {p.precision}: {reason}")
        for row in shapes.rows:
            at = spec.with_packing(row.capacity, row.segments)
            items.append(WorkItem(plan(at, [converter.format], precision, out_dir, opts)[0], at))
    return items


def packed_rows_reason(converter: Converter, precision) -> str | None:
    """Why this format cannot hold several packed row lengths in one artifact (None: it can)."""
    if not hasattr(converter, "convert_packed_rows"):
        return f"{converter.format} has no multi-row packed export here; one artifact per row length instead"
    return converter.multi_length_reason(precision)


def _at(spec: ModelSpec, shapes: Buckets, size: int) -> ModelSpec:
    return spec.with_seq_len(size) if isinstance(shapes, Lengths) else spec


def _check_bucketable(spec: ModelSpec, shapes: Buckets, converters: list[Converter]) -> None:
    if not converters:
        return
    if isinstance(shapes, Lengths):
        if not hasattr(spec, "with_seq_len"):
            raise UsageError(f"{spec.name} has no sequence length: --seq-lens is for the BERT family")
        if not shapes.sizes:
            parse_lengths(shapes.text)  # raises its own message: what is wrong with the lengths as written
        return
    refused = [c.format for c in converters if not c.multi_batch]
    if refused:
        able = [f for f in list_converters() if get_converter(f).multi_batch
                or BatchSizes.own_option in get_converter(f).option_names()]
        raise UnsupportedError(f"--batch-sizes is not supported for {', '.join(refused)}: no entry point per batch "
                               f"size there (formats that take it: {', '.join(able)}); export "
                               f"{', '.join(refused)} without --batch-sizes")


def _one_artifact_reason(p: Plan, shapes: Buckets) -> str | None:
    """Why this format cannot hold every size in one artifact at this precision (None: it can)."""
    if isinstance(shapes, Lengths):
        return p.converter.multi_length_reason(p.precision)
    return p.converter.multi_batch_reason(p.precision)
