"""`pocketformer bench PIPELINE`: a pipeline's latency stage by stage, the numpy glue's share, end to end.

    doc = sdk.measure.pipeline_bench.bench_pipeline("out/minivlm-tiny", runs=20, threads=2)
    print(format_pipeline_bench(doc))

A pipeline (a folder with pipeline.json, or a verification bundle holding one; `device_runtime.pipeline`) runs as
one session; every run's `last_timings` gives each stage's wall time, a decode loop's artifact calls counted as
that artifact stage's (`PipelineTimings.per_stage`), so the glue's share is the numpy glue's own work. The
document (schema `pocketformer.pipeline-bench`, version 1) holds, per stage, its kind, p50/p90/mean over the
timed runs and its calls per run; per glue step its time; the glue's share of the stages' time; the end-to-end
latency (`session.run`, feed checks included); and for each decode loop the tokens it made per second. A pipeline
folder with the export's report.json gets the document there under "bench", the figures beside the export's.

The runs are the pipeline's first verification feed (the photo and question the export verified on; a bundle's
first sample), so the data-dependent glue (how many boxes survive NMS, when the caption ends) does real work.
One pipeline runs at a time, in this process: its stages are what the timings compare, not several artifacts.
"""
from __future__ import annotations

import json
import time
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

SCHEMA = "pocketformer.pipeline-bench"
SCHEMA_VERSION = 1
REPORT = "report.json"


def pipeline_feed(root: Path) -> dict[str, np.ndarray] | None:
    """The first verification feed an export saved beside the pipeline (verification.npz), or None."""
    from sdk.export.pipeline import VERIFICATION, load_verification

    path = Path(root) / VERIFICATION
    return load_verification(path)[0]["feed"] if path.is_file() else None


def _stats(values_ms: list[float]) -> dict[str, float]:
    a = np.asarray(values_ms, dtype=np.float64)
    p10, p50, p90 = np.percentile(a, [10, 50, 90])
    return {"p10": float(p10), "p50": float(p50), "p90": float(p90), "mean": float(a.mean()), "min": float(a.min()),
            "max": float(a.max())}


def bench_pipeline(path: str | Path, runs: int = 20, warmup: int = 3, threads: int | None = None,
                   feed: Mapping[str, Any] | None = None, backend: dict[str, str] | None = None,
                   progress: Callable[[int, int], None] | None = None, record: bool = True) -> dict[str, Any]:
    """Time `runs` runs of the pipeline at `path` after `warmup` (see the module docstring); returns the document,
    also written into the folder's report.json under "bench" when `record` and the folder has one."""
    import device_runtime
    from device_runtime.bundle import open_bundle
    from device_runtime.errors import UsageError
    from device_runtime.measure import host_info
    from device_runtime.pipeline import PIPELINE_JSON, is_pipeline

    if runs < 1 or warmup < 0:
        raise UsageError(f"need runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    path = Path(path)
    if not is_pipeline(path):
        raise UsageError(f"{path} is not a pipeline (a folder with {PIPELINE_JSON}, or a bundle holding one)")
    with ExitStack() as stack:
        folder = path.parent if path.name == PIPELINE_JSON else path
        if folder.is_file() or (folder / "bundle.json").is_file():  # a bundle: its own first sample
            bundle = stack.enter_context(open_bundle(folder))
            folder = bundle.root
            feed = feed if feed is not None else bundle.inputs(bundle.samples[0]) if bundle.samples else None
            record = False  # a bundle is sealed: its checksums cover every file
        elif feed is None:
            feed = pipeline_feed(folder)
        session = stack.enter_context(device_runtime.load(folder, backend=backend, num_threads=threads,
                                                          adapt_io=True))
        feed = dict(feed) if feed is not None else session.example_feed()
        arrays = session.validate_feed(feed)
        start = time.perf_counter()
        session.run(None, feed)  # cold: the first run after load
        first_ms = (time.perf_counter() - start) * 1e3
        for _ in range(warmup):
            session.run(None, arrays)
        wall, per_run = [], []
        for i in range(runs):
            start = time.perf_counter()
            session.run(None, arrays)
            wall.append(time.perf_counter() - start)
            per_run.append(session.last_timings)
            if progress:
                progress(i + 1, runs)
        info = session.info
    document = _document(per_run, wall, info)
    document.update(schema=SCHEMA, schema_version=SCHEMA_VERSION, path=str(path),
                    created=datetime.now(timezone.utc).isoformat(timespec="seconds"), device="local",
                    host=host_info(), runs=runs, warmup=warmup, threads=threads, first_run_ms=first_ms,
                    load_time_ms=session.load_time_ms,
                    feed="the export's first verification feed" if feed is not None else "example feed")
    if record:
        _record(folder, document)
    return document


def _document(per_run: list, wall: list[float], info: dict[str, Any]) -> dict[str, Any]:
    """Per-stage, per-glue-step and end-to-end figures from each run's `PipelineTimings`."""
    formats = {s["name"]: (s.get("format"), s.get("backend"), s.get("artifact")) for s in info.get("stages", [])}
    steps = {s["name"]: s.get("glue") for s in info.get("stages", [])}
    tables = [t.per_stage() for t in per_run]
    stages = []
    for name, first in tables[0].items():
        ms = [t[name]["ms"] for t in tables]
        row = {"stage": name, "kind": first["kind"], "calls": first["calls"], "latency": _stats(ms)}
        if first["kind"] == "artifact":
            row["format"], row["backend"], row["artifact"] = formats.get(name, (None, None, None))
        else:
            row["glue"] = steps.get(name)
        stages.append(row)
    glue = [sum(s.ms for s in t.stages if s.kind == "glue") for t in per_run]
    artifact = [t.artifact_ms for t in per_run]
    loops = {}
    for s in per_run[0].stages:
        if s.step is None:
            continue
        tokens = [next(x for x in t.stages if x.stage == s.stage).calls for t in per_run]
        loop_ms = [t.per_stage()[s.stage]["ms"] + t.per_stage()[s.step]["ms"] for t in per_run]
        rates = [n / (m / 1e3) for n, m in zip(tokens, loop_ms) if m > 0]
        loops[s.stage] = {"step": s.step, "tokens": float(np.median(tokens)), "loop_ms": _stats(loop_ms),
                          "tokens_per_s": float(np.median(rates)) if rates else None,
                          "note": "one artifact call per token; each call reruns the whole prefix (no KV cache)"}
    from dataclasses import asdict

    from device_runtime.session import LatencyStats

    total_glue, total_stages = sum(glue), sum(glue) + sum(artifact)
    return {"pipeline": info.get("pipeline"), "stages": stages,
            "glue_steps": {s["stage"]: s["latency"]["p50"] for s in stages if s["kind"] == "glue"},
            "glue_ms": _stats(glue), "artifact_ms": _stats(artifact),
            "glue_share": total_glue / total_stages if total_stages else 0.0,
            "end_to_end": {"latency": asdict(LatencyStats.from_seconds(wall)),
                           "outside_stages_ms": float(np.median(np.asarray(wall) * 1e3
                                                                - np.asarray(glue) - np.asarray(artifact)))},
            "loops": loops}


def _record(folder: Path, document: dict[str, Any]) -> None:
    """The document into the export's report.json under "bench" (the folder's own report, when it has one)."""
    from device_runtime import atomic

    report = Path(folder) / REPORT
    try:
        data = json.loads(report.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if isinstance(data, dict) and data.get("schema") == "pocketformer.pipeline-report":
        atomic.write_json(report, {**data, "bench": document})
        document["recorded_in"] = str(report)


def format_pipeline_bench(document: dict[str, Any]) -> str:
    """The CLI table: one line per stage (p50, p90, share of the stages' time), then end to end and the glue."""
    from device_runtime.cpu import describe_host

    total = sum(s["latency"]["p50"] for s in document["stages"]) or float("nan")
    lines = [f"{document.get('pipeline')} ({document['path']}): {document['runs']} runs after {document['warmup']} "
             f"warm-up, threads={document.get('threads') or 'default'}, on {document.get('feed')}",
             f"  machine: {describe_host(document.get('host'))}"]
    header = f"  {'stage':<22}{'kind':<10}{'format / step':<24}{'calls':>6}{'p50 ms':>10}{'p90 ms':>10}{'share':>8}"
    lines += [header, "  " + "-" * (len(header) - 2)]
    for s in document["stages"]:
        what = (f"{s.get('format')} [{s.get('backend')}]" if s["kind"] == "artifact" else str(s.get("glue")))
        lat = s["latency"]
        lines.append(f"  {s['stage'][:21]:<22}{s['kind']:<10}{what[:23]:<24}{s['calls']:>6}{lat['p50']:>10.3f}"
                     f"{lat['p90']:>10.3f}{lat['p50'] / total:>8.1%}")
    e2e = document["end_to_end"]["latency"]
    lines.append(f"  end to end: p50 {e2e['p50']:.3f} ms, p90 {e2e['p90']:.3f} ms (first run "
                 f"{document['first_run_ms']:.1f} ms); artifacts p50 {document['artifact_ms']['p50']:.3f} ms, numpy "
                 f"glue p50 {document['glue_ms']['p50']:.3f} ms: glue share {document['glue_share']:.1%}")
    for name, loop in document.get("loops", {}).items():
        rate = loop.get("tokens_per_s")
        lines.append(f"  decode loop {name} (calls {loop['step']}): {loop['tokens']:.0f} tokens in "
                     f"{loop['loop_ms']['p50']:.2f} ms p50: {rate:.1f} tokens/s" if rate else
                     f"  decode loop {name}: no tokens timed")
    if document.get("recorded_in"):
        lines.append(f"  recorded in {document['recorded_in']} (\"bench\")")
    return "\n".join(lines)
