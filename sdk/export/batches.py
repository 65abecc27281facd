"""Export at several batch sizes in one step (`export --batch-sizes`): the vision families' batch buckets.

It reuses the pipeline's steps (`sdk.export.steps`: plan, convert, new entry, verify); `sdk.export.api.export`
calls `export_batches` when `batch_sizes` is given.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from converters import get_converter, list_converters, parity as checks
from converters.base import UnsupportedError
from device_runtime.buckets import parse_batch_sizes
from device_runtime.errors import UsageError
from models_zoo import ModelSpec
from sdk.console.progress import Progress
from sdk.export.steps import (_Data, _export_fixed, _export_one, _reference, _run_all, _spec, _split_options,
                              convert_step, plan)


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

    sizes = sorted(data)

    def convert():
        conversion = plan.converter.convert_batches(module, spec, plan.precision,
                                                    {n: d.calibration for n, d in data.items()}, tmp, **plan.kwargs)
        conversion.details["batch_sizes"] = sizes
        return conversion

    conversion, precision, entry, unverified = convert_step(
        plan, f"convert {label} at batch sizes {', '.join(map(str, sizes))}", convert, tmp, module,
        [data[n] for n in sizes], label, progress, attempt)
    if unverified:
        return unverified

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
    entry.timings["verify_s"] = time.perf_counter() - start  # the dict the entry holds
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
