"""`pocketformer tune minivlm`: the fastest verified format and precision of each stage of a pipeline model.

    doc = sdk.measure.tune.tune("minivlm-tiny", formats=["onnx", "tflite"], precisions=["fp32"])   # routes here

1. Each stage (all, or those in `stages`; the others take the first format at fp32) is a spec, as
   `sdk.export.pipeline` makes it (`spec_from_module` on the stage module and its real inputs). Its candidates
   are `sdk.measure.candidates.candidates` of that spec: the format x precision pairs whose converter takes it and
   whose runtime is here, the skipped ones with the reason.
2. Each candidate is exported and verified alone against PyTorch on the stage's held-out real inputs (an
   artifact already in place that would come out the same is kept, `sdk.export.pipeline.reusable`); a failed
   verification, a conversion error or `max_error` exceeded drops it, with the reason.
3. Each stage's kept candidates are benchmarked on the stage's real feed, each in a process of its own, the rounds
   interleaved (`device_runtime.isolated`); the fastest p50 is the stage's pick.
4. The pipeline is exported with the picks (`sdk.export`: every stage reused, pipeline.json written, verified end
   to end against PyTorch; a miss keeps the previous pipeline.json and is recorded), then benchmarked as a whole
   (`sdk.measure.pipeline_bench`: per stage, the glue's share, end to end). `OUT/<model>/tune.json` (schema
   `pocketformer.pipeline-tune`, version 1) records every stage's candidates, drops and pick.
"""
from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from device_runtime.errors import UsageError

SCHEMA = "pocketformer.pipeline-tune"
SCHEMA_VERSION = 1
TUNE_NAME = "tune.json"


def tune_pipeline(name: str, out_dir: str | Path = "out", *, tiny: bool = False,
                  formats: Sequence[str] | None = None, precisions: Sequence[str] | None = None,
                  stages: Sequence[str] | None = None, max_error: float | None = None, runs: int = 20,
                  warmup: int = 3, threads: int | None = None, progress=None, **options: Any) -> dict[str, Any]:
    """Tune the pipeline model `name` stage by stage (see the module docstring); returns the tune.json document."""
    from converters import get_converter
    from converters.base import ConversionError, UnsupportedError
    from converters.parity import DegenerateReferenceError, ParityError
    from device_runtime.atomic import write_json
    from device_runtime.errors import PocketformerError
    from device_runtime.measure import host_info
    from sdk.console.progress import Progress
    from sdk.export.api import export
    from sdk.export.minivlm_pipeline import pipeline_model
    from sdk.export.pipeline import list_pipeline_models, reusable, stage_spec
    from sdk.export.records import tool_versions
    from sdk.measure.candidates import candidates, error_vs_fp32

    progress = progress or Progress(enabled=False)
    model = pipeline_model(f"{name}-tiny" if tiny and not name.endswith("-tiny") else name)
    if model is None:
        raise UsageError(f"{name!r} is not a pipeline model; pipeline models: {list_pipeline_models()}")
    tuned = list(stages) if stages else list(model.stages)
    unknown = sorted(set(tuned) - set(model.stages))
    if unknown:
        raise UsageError(f"{model.name} has no stage(s) {unknown}; its stages are {list(model.stages)}")
    formats = list(formats) if formats else None
    fixed_format = (formats or ["onnx"])[0]
    for fmt in formats or []:
        get_converter(fmt)  # an unknown format is refused before any work, naming the known ones
    root = Path(out_dir) / model.name
    with progress.step(f"build {model.name} (random weights) and run it on real photos and questions"):
        module, samples = model.prepare()
    document: dict[str, Any] = {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "model": model.name, "pipeline": True,
        "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"), "max_error": max_error,
        "formats": formats, "precisions": list(precisions) if precisions else None, "tuned_stages": tuned,
        "stages": {}, "picks": {}, "tools": tool_versions(), "host": host_info()}
    for stage in model.stages:
        spec = stage_spec(model, module, samples, stage)
        if stage in tuned:
            todo, skipped = candidates(spec, formats, precisions)
        else:
            todo, skipped = [(fixed_format, "fp32")], []
        kept, rejected = [], []
        for fmt, precision in todo:
            own = {k: v for k, v in options.items() if k in get_converter(fmt).option_names()}
            start = time.perf_counter()
            try:
                result = reusable(spec, fmt, precision, root, own)
                if result is None:
                    (result,) = export(spec, [fmt], precision, out_dir=root, progress=progress, **own)
            except (ParityError, DegenerateReferenceError) as exc:
                rejected.append({"format": fmt, "precision": precision, "reason": f"failed verification: {exc}"})
                continue
            except (ConversionError, UnsupportedError) as exc:
                rejected.append({"format": fmt, "precision": precision, "reason": f"{type(exc).__name__}: {exc}"})
                continue
            error = error_vs_fp32(result.parity)
            entry = {"format": fmt, "precision": str(result.precision), "requested": precision,
                     "path": str(result.path), "size_bytes": result.size_bytes, "max_abs_err_vs_fp32": error,
                     "sqnr_db_vs_fp32": (result.parity.get("quantization") or {}).get("sqnr_db"),
                     "export_s": time.perf_counter() - start}
            if result.passed is None:
                rejected.append({**entry, "reason": f"parity not run here: {result.parity.get('skipped')}"})
            elif max_error is not None and (error is None or error > max_error):
                rejected.append({**entry, "reason": f"max abs error vs fp32 {error:.3g} > --max-error {max_error:g}"})
            else:
                kept.append(entry)
        if kept:
            _time_stage(model.name, stage, kept, samples[0]["stages"][stage], runs, warmup, threads, progress)
        document["stages"][stage] = {"tuned": stage in tuned, "candidates": kept, "rejected": rejected,
                                     "skipped": skipped, "pick": kept[0] if kept else None}
        if not kept:
            document["failed"] = f"stage {stage}: no candidate was exported and verified here"
            break
        document["picks"][stage] = [kept[0]["format"], kept[0]["requested"]]
    if "failed" not in document:
        try:
            with progress.step(f"export {model.name} with the picks and verify it end to end"):
                (result,) = export(model.name, [], None, out_dir=out_dir, progress=progress,
                                   stages={s: tuple(p) for s, p in document["picks"].items()}, **options)
            document["end_to_end"] = {k: result.figures.get(k) for k in ("passed", "failures", "tolerance", "fused",
                                                                         "regions", "caption", "glue_share")}
            document["pipeline_path"] = str(result.path)
        except PocketformerError as exc:  # ParityError end to end: the previous pipeline.json stays in place
            document["failed"] = f"end-to-end verification with the picks: {type(exc).__name__}: {exc}"
    if "failed" not in document:
        from sdk.measure.pipeline_bench import bench_pipeline

        with progress.step(f"benchmark {model.name} with the picks, stage by stage, {runs} runs"):
            bench = bench_pipeline(root, runs=runs, warmup=warmup, threads=threads)
        document["bench"] = {k: bench[k] for k in ("stages", "glue_share", "glue_ms", "artifact_ms", "end_to_end",
                                                   "loops", "runs", "threads")}
    write_json(root / TUNE_NAME, document)
    document["path"] = str(root / TUNE_NAME)
    return document


def _time_stage(model: str, stage: str, kept: list[dict[str, Any]], feed: dict, runs: int, warmup: int,
                threads: int | None, progress) -> None:
    """p50/p90 of each kept candidate of one stage on its real feed, each in its own process, interleaved; sorts
    `kept` fastest first and sets `x_best`."""
    from device_runtime.isolated import benchmark_isolated

    paths = [c["path"] for c in kept]
    with progress.step(f"benchmark {model} stage {stage}: {len(paths)} candidate(s), one process each, {runs} runs"):
        doc = benchmark_isolated(paths, runs=runs, warmup=warmup, threads=threads, feeds=[feed] * len(paths),
                                 names=[f"{stage} {c['format']} {c['precision']}" for c in kept])
    for c, r in zip(kept, doc["results"]):
        c.update(p50_ms=r["latency"]["p50"], p90_ms=r["latency"]["p90"], backend=r["backend"],
                 load_time_ms=r["load_time_ms"])
    kept.sort(key=lambda c: c["p50_ms"])
    for c in kept:
        c["x_best"] = c["p50_ms"] / kept[0]["p50_ms"] if kept[0]["p50_ms"] else None


def format_pipeline_tune(document: dict[str, Any]) -> str:
    from device_runtime.cpu import describe_host

    lines = [f"tune {document['model']} stage by stage" + (f" (max error vs fp32 <= {document['max_error']:g})"
                                                          if document.get("max_error") is not None else ""),
             f"  machine: {describe_host(document.get('host'))}"]
    for stage, info in document["stages"].items():
        lines.append(f"  stage {stage}" + ("" if info["tuned"] else " (not tuned: first format, fp32)"))
        for c in info["candidates"]:
            err = c.get("max_abs_err_vs_fp32")
            lines.append(f"    {c['format']:<8}{c['precision']:<14}{c['p50_ms']:>9.3f} ms p50  x{c['x_best']:<6.2f}"
                         f"{c['size_bytes'] / 1e6:>8.2f} MB  max err {err if err is not None else float('nan'):.2g}"
                         f"  [{c['backend']}]")
        for r in info["rejected"]:
            lines.append(f"    dropped {r['format']} {r['precision']}: {r['reason'][:200]}")
        for s in info["skipped"]:
            lines.append(f"    skipped {s['format']} {s['precision']}: {s['reason'][:160]}")
    picks = ", ".join(f"{s} {f} {p}" for s, (f, p) in document.get("picks", {}).items())
    if document.get("failed"):
        lines.append(f"pick: none ({document['failed'][:300]})")
    else:
        e2e, bench = document["end_to_end"], document["bench"]
        lines.append(f"pick: {picks}; verified end to end ({'passed' if e2e['passed'] else 'FAILED'}): end-to-end p50 "
                     f"{bench['end_to_end']['latency']['p50']:.3f} ms, glue share {bench['glue_share']:.1%}"
                     + "".join(f"; {name} {loop['tokens_per_s']:.1f} tokens/s" for name, loop in bench["loops"].items()
                               if loop.get("tokens_per_s")))
        lines.append(f"pipeline: {document['pipeline_path']}")
    lines.append(f"written {document.get('path')}")
    return "\n".join(lines)
