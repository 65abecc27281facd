"""Converting and verifying one artifact that holds several sizes on a bucket axis: sequence lengths or batch sizes.

Sequence lengths (`export --seq-lens 16,32,64,128`, the BERT family): an ExecuTorch program with a method per
length, a TFLite file with a signature per length, an ONNX model with a dynamic sequence axis, the weights stored
once. `device_runtime.load` opens it as a `BucketedSession`, which pads each request to the smallest length that
fits. Verified per length on the spec's real verification samples at that length (held out from calibration),
run through the bucketed session; then the same sentences unpadded (their real token counts), routed by the
session to a bucket and padded there, against PyTorch on the unpadded sentence: bucketing and padding must not
change what the model computes.

Batch sizes (`export --batch-sizes 1,2,4,8`, the vision families), so that a `Batcher` runs real batches on a
format with fixed shapes: an ExecuTorch method per size (`batch1`, ..., and `forward` = the smallest), a TFLite
signature per size (weights and quantization tables stored once, `share_across_signatures`), ONNX's dynamic batch
axis with the verified sizes in its metadata. The session pads fewer rows with zeros and runs more in chunks of
the largest bucket. Verified per size on batches of distinct real images (held out from calibration; their
mirror images join when a batch is larger than the set); then row counts that are no bucket (3 for 1,2,4,8, and
one past the largest), padded or chunked by the session, against PyTorch on the same rows.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

from converters import parity as checks
from models_zoo import ModelSpec
from sdk.console.progress import Progress
from sdk.export.data import ExportData, stacked_feeds
from sdk.export.plan import Plan
from sdk.export.shapes import Buckets, Lengths, PackedRows
from sdk.export.steps import convert_step, reference_outputs, run_all


def convert_and_verify_buckets(plan: Plan, spec: ModelSpec, module, data: dict[int, ExportData], buckets: Buckets,
                               tmp: Path, label: str, progress: Progress, attempt: dict[str, Any]):
    """Make the artifact holding every size of `buckets` in `tmp` and check each size; returns (entry, parity,
    details), as `sdk.export.steps.convert_and_verify` does at one shape."""
    import device_runtime

    if isinstance(buckets, PackedRows):  # packed rows in several lengths: their own checks (packed and alone)
        from sdk.export.packed_rows import convert_and_verify_packed_rows

        return convert_and_verify_packed_rows(plan, spec, module, data, buckets, tmp, label, progress, attempt)
    sizes = sorted(data)
    by_length = isinstance(buckets, Lengths)

    def convert():
        calibration = {n: d.calibration for n, d in data.items()}
        if by_length:
            return plan.converter.convert_buckets(module, {n: spec.with_seq_len(n) for n in sizes}, plan.precision,
                                                  calibration, tmp, **plan.kwargs)
        conversion = plan.converter.convert_batches(module, spec, plan.precision, calibration, tmp, **plan.kwargs)
        conversion.details["batch_sizes"] = sizes
        return conversion

    what = "lengths" if by_length else "batch sizes"
    conversion, precision, entry, unverified = convert_step(
        plan, f"convert {label} at {what} {', '.join(map(str, sizes))}", convert, tmp, module,
        [data[n] for n in sizes], label, progress, attempt)
    if unverified:
        return unverified

    start = time.perf_counter()
    classifier = spec.task.endswith("classification")
    names = list(spec.output_names)
    tolerance = spec.tolerance(conversion.tolerance_as or precision)
    fp32 = precision.weight_bits == 32
    per_size, failures = {}, []
    step = "at each length on held-out real samples" if by_length else "at each batch size on held-out real images"
    with progress.step(f"verify {label} {step}"):
        session = device_runtime.load(tmp, adapt_io=True)
        if not by_length:
            seen = list(getattr(session, "batch_sizes", []) or [])
            if seen != sizes:
                failures.append(f"the runtime sees batch sizes {seen}, the export made {sizes}")
        for size in sizes:
            d = data[size]
            reference = reference_outputs(conversion.reference, size, module, d, spec)
            if not by_length:
                checks.check_spread(reference, f"{spec.name} at batch {size} ({precision} PyTorch reference)")
            outputs = run_all(session, d.feeds, label)
            lowering = checks.compare(reference, outputs, classifier, names)
            quantization = checks.compare(d.fp32_outputs, outputs, classifier, names) if not fp32 else None
            found = checks.judge(lowering, quantization, tolerance)
            failures += [f"{buckets.axis} {size}: {f}" for f in found]
            counts = ({"samples": len(d.feeds)} if by_length else
                      {"batches": len(d.feeds), "rows": len(d.feeds) * size})
            per_size[str(size)] = {"passed": not found, "lowering": lowering, "quantization": quantization, **counts}
        if by_length:
            off_bucket = _unpadded_check(session, module, data[max(data)], spec, classifier, names)
            found = checks.judge(off_bucket, None, tolerance) if fp32 else []
            failures += [f"unpadded requests: {f}" for f in found]
        else:
            off_bucket = _padded_rows_check(session, module, sizes, spec, classifier, names)
            found = checks.judge(off_bucket, None, tolerance) if off_bucket and fp32 else []
            failures += [f"rows padded or chunked to a bucket: {f}" for f in found]
    entry.timings["verify_s"] = time.perf_counter() - start  # the dict the entry holds
    worst = max(per_size.values(), key=lambda r: r["lowering"]["max_abs_err"])
    parity = {"passed": not failures, "failures": failures, "tolerance": vars(tolerance)}
    if by_length:
        parity.update(samples="verification (held out from calibration), at each length", lowering=worst["lowering"],
                      quantization=worst["quantization"], lengths=per_size, unpadded=off_bucket,
                      buckets=session.lengths)
    else:
        parity.update(samples="verification (held out from calibration), distinct real images stacked at each batch "
                              "size", lowering=worst["lowering"], quantization=worst["quantization"],
                      batch_sizes=per_size, padded_rows=off_bucket, buckets=sizes)
    parity["reference"] = "fp32 PyTorch" if conversion.reference is module else f"{precision} PyTorch (simulated)"
    entry = dataclasses.replace(entry, parity=parity, runtime={"backend": session.backend})
    if failures:
        attempt["parity"] = parity
        raise checks.ParityError(f"{label} failed verification: " + "; ".join(failures))
    return entry, parity, conversion.details


def _unpadded_check(session, module, data: ExportData, spec: ModelSpec, classifier: bool, names: list[str]) -> dict:
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


def _padded_rows_check(session, module, sizes: list[int], spec: ModelSpec, classifier: bool,
                       names: list[str]) -> dict | None:
    """Row counts that are no bucket (one past each bucket below a gap, one past the largest) through the
    session, which pads them to a bucket or runs them in chunks, against PyTorch fp32 on the same rows."""
    counts = sorted({a + 1 for a, b in zip(sizes, sizes[1:]) if a + 1 < b} | {sizes[-1] + 1})
    feeds = [stacked_feeds(spec.sample_inputs(), n)[0] for n in counts]
    expected = checks.torch_outputs(module, spec.input_names, feeds)
    got = [session.run(None, feed) for feed in feeds]
    figures = checks.compare(expected, got, classifier, names)
    figures["rows"] = counts
    runs = getattr(session, "buckets_for", None)
    figures["routed_to"] = [runs(n) for n in counts] if runs else "one dynamic batch axis (no padding)"
    return figures

