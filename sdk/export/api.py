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
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from converters import get_converter, parity as checks
from device_runtime.buckets import parse_lengths
from device_runtime.errors import UsageError
from models_zoo import ModelSpec
from sdk.export.steps import (ExportResult, _Data, _export_fixed, _export_one, _reference, _run_all, _spec,  # noqa: F401
                              convert_step, plan)
from sdk.export.batches import export_batches
from sdk.console.progress import Progress


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
    distinct real images stacked: one artifact holding them all (see `sdk.export.batches`).
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


# -- several sequence lengths in one step (`export --seq-lens`) ----------------------------------------
# `export --seq-lens 16,32,64,128`: several sequence lengths of a BERT-family model in one step, each verified.
#
# Where the format allows (`Converter.multi_length`), one artifact holds every length with the weights stored
# once: an ExecuTorch program with a method per length, a TFLite file with a signature per length, an ONNX model
# with a dynamic sequence axis. `device_runtime.load` opens it as a `BucketedSession`, which pads each request to
# the smallest length that fits. Core ML (enumerated shapes) and Ascend (ATC --dynamic_dims profiles) take the
# lengths through their own `seq_lens` option. Elsewhere (a precision a format cannot make multi-length) the
# export writes one artifact per length, each in its own `<precision>-seq<N>/` folder with its own manifest.
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

    specs = {length: spec.with_seq_len(length) for length in data}
    conversion, precision, entry, unverified = convert_step(
        plan, f"convert {label} at lengths {', '.join(map(str, sorted(data)))}",
        lambda: plan.converter.convert_buckets(module, specs, plan.precision,
                                               {length: d.calibration for length, d in data.items()}, tmp,
                                               **plan.kwargs),
        tmp, module, [data[n] for n in sorted(data)], label, progress, attempt)
    if unverified:
        return unverified
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
    entry.timings["verify_s"] = time.perf_counter() - start  # the dict the entry holds
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
