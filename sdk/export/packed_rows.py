"""Packed entry points in several row lengths in one artifact (`export --pack 32x4,64x8,128x16`).

One module serves every row length: `packed_rows_module` holds a packed entry point per row length
(`models_zoo.packed_bert`, each with its own segment count) around one BERT, and picks the one of the row
length it is traced at, so a converter tracing it once per length (`convert_packed_rows`: an ExecuTorch method
`pack<N>` per length, a TFLite signature per length) stores the weights once. `device_runtime.load` opens the
artifact as a `BucketedSession` over the packed axis (`session.row_shapes`), which `device_runtime.PackedRunner`
plans rows across with the cost model (`device_runtime.scheduling`).

Verified per row length on the spec's real verification sentences (held out from calibration), packed into
rows of that length, in two ways:
1. lowering: the artifact against PyTorch on the same rows (and against fp32, below fp32), as `--pack 128x16`;
2. alone: each sentence's output read back from the packed rows against the sentence run alone: fp32 against
   eager PyTorch on the unpadded sentence, a quantized artifact against itself with one sentence a row (dynamic
   int8 scales by each call's range, so its own unpacked run is the reference).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from converters import parity as checks
from models_zoo import ModelSpec
from sdk.console.progress import Progress
from sdk.export.data import ExportData
from sdk.export.plan import Plan
from sdk.export.shapes import PackedRows
from sdk.export.steps import convert_step, reference_outputs, run_all


def packed_rows_module(module, spec: ModelSpec, rows: PackedRows):
    """`module` (the packed entry point of the longest row, `spec.build()` for it) behind one packed entry point
    per row length of `rows`, sharing its BERT (see the module docstring)."""
    import torch

    from models_zoo.packed_bert import packed_module

    inner, bert = module.inner, module.bert
    by_length = {str(r.capacity): packed_module(inner, bert, spec.readout, r.segments) for r in rows.rows}

    class PackedRowsModule(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rows = torch.nn.ModuleDict(by_length)

        def forward(self, input_ids, token_type_ids, position_ids, segment_ids):
            length = str(int(input_ids.shape[-1]))  # static when traced: each entry point is one row length
            if length not in self.rows:
                raise ValueError(f"no packed entry point for rows of {length} tokens; rows: {list(self.rows)}")
            return self.rows[length](input_ids, token_type_ids, position_ids, segment_ids)

    wrapped = PackedRowsModule().eval()
    wrapped.pocketformer_weights = getattr(module, "pocketformer_weights", {})
    return wrapped


def row_specs(spec: ModelSpec, rows: PackedRows) -> dict[int, ModelSpec]:
    return {r.capacity: spec.with_packing(r.capacity, r.segments) for r in rows.rows}


def convert_and_verify_packed_rows(plan: Plan, spec: ModelSpec, module, data: dict[int, ExportData],
                                   rows: PackedRows, tmp: Path, label: str, progress: Progress,
                                   attempt: dict[str, Any]):
    """Make the multi-row packed artifact in `tmp` and check each row length; returns (entry, parity, details),
    as `sdk.export.steps.convert_and_verify` does at one shape."""
    import device_runtime

    specs = row_specs(spec, rows)
    lengths = sorted(specs)
    conversion, precision, entry, unverified = convert_step(
        plan, f"convert {label} at packed rows {rows.text}",
        lambda: plan.converter.convert_packed_rows(module, specs, plan.precision,
                                                   {n: data[n].calibration for n in lengths}, tmp, **plan.kwargs),
        tmp, module, [data[n] for n in lengths], label, progress, attempt)
    if unverified:
        return unverified

    start = time.perf_counter()
    classifier = spec.task.endswith("classification")
    names = list(spec.output_names)
    tolerance = spec.tolerance(conversion.tolerance_as or precision)
    fp32 = precision.weight_bits == 32
    per_row, failures = {}, []
    with progress.step(f"verify {label} at each row length on held-out real sentences, packed and alone"):
        session = device_runtime.load(tmp, adapt_io=True)
        seen = list(getattr(session, "row_shapes", None) or [])
        want = [(r.capacity, r.segments) for r in rows.rows]
        if seen != want:
            failures.append(f"the runtime sees packed rows {seen}, the export made {want}")
        for n in lengths:
            d, at = data[n], specs[n]
            reference = reference_outputs(conversion.reference, n, module, d, at)
            checks.check_spread(reference, f"{spec.name} at packed rows {n}x{at.packing[1]} ({precision} PyTorch)")
            outputs = run_all(session, d.feeds, label)
            lowering = checks.compare(reference, outputs, classifier, names)
            quantization = checks.compare(d.fp32_outputs, outputs, classifier, names) if not fp32 else None
            found = checks.judge(lowering, quantization, tolerance)
            alone = _alone_check(session, module, at, classifier, names, fp32)
            found += [f"packed vs alone: {f}" for f in checks.judge(alone, None, tolerance)]
            failures += [f"rows of {n}: {f}" for f in found]
            per_row[str(n)] = {"passed": not found, "segments": at.packing[1], "rows": len(d.feeds),
                               "lowering": lowering, "quantization": quantization, "alone": alone}
    entry.timings["verify_s"] = time.perf_counter() - start  # the dict the entry holds
    worst = max(per_row.values(), key=lambda r: r["lowering"]["max_abs_err"])
    parity = {"passed": not failures, "failures": failures, "tolerance": vars(tolerance),
              "samples": "verification (held out from calibration), packed into rows of each length",
              "lowering": worst["lowering"], "quantization": worst["quantization"], "packed_rows": per_row,
              "alone_against": "unpadded eager PyTorch, each sentence alone" if fp32 else
                               "the same artifact, one sentence a row",
              "reference": "fp32 PyTorch" if conversion.reference is module else f"{precision} PyTorch (simulated)"}
    entry = dataclasses.replace(entry, parity=parity, runtime={"backend": session.backend})
    if failures:
        attempt["parity"] = parity
        raise checks.ParityError(f"{label} failed verification: " + "; ".join(failures))
    return entry, parity, conversion.details


def _alone_check(session, module, at: ModelSpec, classifier: bool, names: list[str], fp32: bool) -> dict:
    """Each verification sentence (at most `at`'s row length) read back from rows of that length against the
    sentence alone (see the module docstring); the figures, with the token counts."""
    from device_runtime.packing import pack

    capacity, segments = at.packing
    plain = replace(at, packing=None).with_seq_len(capacity)
    feeds = plain.sample_inputs()  # tokenised at the row length (longer ones truncated there), padded
    real = [int(np.asarray(f["attention_mask"]).sum()) for f in feeds]
    unpadded = [{n: np.ascontiguousarray(np.asarray(v)[:, :k]) for n, v in f.items()} for f, k in zip(feeds, real)]
    packed = _per_sentence(session, pack(unpadded, capacity, segments), len(feeds))
    if fp32:
        expected = checks.torch_outputs(module.rows[str(capacity)].inner, plain.input_names, unpadded)
    else:
        expected = _per_sentence(session, pack(unpadded, capacity, 1), len(feeds))
    figures = checks.compare(expected, packed, classifier, names)
    figures["token_counts"] = real
    return figures


def _per_sentence(session, rows, count: int) -> list[list[np.ndarray]]:
    """Each sentence's outputs (batch 1) from the packed rows' outputs, in the original order."""
    result: list = [None] * count
    for row in rows:
        outputs = session.run(None, row.arrays)
        for slot, index in enumerate(row.members):
            result[index] = [np.asarray(o)[:, slot] for o in outputs]
    return result
