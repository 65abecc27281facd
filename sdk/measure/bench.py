"""`pocketformer bench`: several artifacts, interleaved, here or on the user's own device, in one JSON document.

    doc = sdk.measure.bench.bench(["out/m/fp32/model.tflite", "out/m/int8/model.tflite"], runs=50, threads=2)
    doc = sdk.measure.bench.bench(["model.tflite"], device="ssh://pi@raspberrypi.local")
    doc = sdk.measure.bench.bench(["model.tflite"], device="adb:R58M123ABC", runner="benchmark_model")

The measuring itself is `device_runtime.isolated.benchmark_isolated` here (each artifact in a worker process of
its own, the rounds interleaved across them) and `device_runtime.measure.benchmark_artifacts` on a device
(through `device_runtime.remote`); both time the same raw runtime call and return the same document. This module adds what only the
host knows: each artifact's real sample feed (from the report.json beside it), the model, precision and parity
figures of each artifact, the text table, and the Session.run overhead measurement. Every document's `host`
carries the measuring machine's CPU record (`host.cpu_info`: model, vendor, topology, ISA features such as
AMX or VNNI, VM or emulator; `device_runtime.cpu`), read from that machine's own /proc/cpuinfo.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np


def sample_feed(artifact: str | Path, trust: bool = False) -> dict[str, np.ndarray] | None:
    """The model's first real sample when the manifest beside the artifact names a zoo model; else None."""
    from sdk.export.records import report_for_artifact

    model, _ = report_for_artifact(Path(artifact), trust=trust)
    prep = model.get("preprocessing")
    if not prep:
        return None
    from models_zoo import data

    if prep["kind"] == "image":
        return {model["inputs"][0]["name"]: data.preprocess_image(data.photo_paths()[0], prep)}
    if prep["kind"] != "text":  # a user's module ("tensor"): its own samples are the spec's, not the zoo's
        return None
    return data.tokenize(data.SAMPLE_SENTENCES[0], prep)


def bench(artifacts: Sequence[str | Path], runs: int = 50, warmup: int = 5, threads: int | None = None,
          feeds: Sequence[Mapping[str, Any] | None] | None = None, device: str | None = None,
          runner: str | None = None, remote_python: str = "python3", profile_runs: int = 0,
          backend: str | None = None, ssh_key: str | None = None, ssh_options: Sequence[str] = (),
          progress: Callable[[int, int], None] | None = None,
          note: Callable[[str], None] | None = None, trust: bool = False, isolate: bool = True) -> dict[str, Any]:
    """Benchmark artifacts interleaved (ratios against the first); see `device_runtime.measure`.

    Each artifact must still match the hash its manifest recorded (its figures describe those bytes),
    unless `trust`. A pipeline (a folder with pipeline.json, or a bundle of one) is benchmarked stage by stage
    instead (`sdk.measure.pipeline_bench`: per-stage latency, the glue's share, end to end), one at a time, here."""
    from device_runtime.errors import ArtifactNotFoundError, UsageError
    from device_runtime.manifest import load_entry
    from device_runtime.pipeline import is_pipeline

    paths = [str(a) for a in artifacts]
    if any(is_pipeline(p) for p in paths):
        return _bench_pipeline(paths, runs, warmup, threads, feeds, device, trust, progress)
    for path in paths:
        if not Path(path).exists():
            raise ArtifactNotFoundError(f"no such artifact: {path}")
        load_entry(path, trust=trust)
    if feeds is None:
        feeds = [sample_feed(p, trust=True) for p in paths]  # checked just above
    names = _labels(paths)
    if device in (None, "", "local"):
        if runner:
            raise UsageError("--runner runs a native benchmark binary on a device: give --device too")
        # Each artifact in a process of its own (as on the device), rounds interleaved across the processes;
        # `isolate=False` measures them all in this process (shared thread pools: slower, see isolated.py).
        if isolate:
            from device_runtime.isolated import benchmark_isolated as measure_all
        else:
            from device_runtime.measure import benchmark_artifacts as measure_all

        document = measure_all(paths, runs=runs, warmup=warmup, threads=threads, feeds=feeds, names=names,
                               backend=backend, profile_runs=profile_runs, progress=progress)
    else:
        from device_runtime.remote.transport import remote_benchmark

        document = remote_benchmark(device, paths, runs=runs, warmup=warmup, threads=threads, feeds=feeds,
                                    names=names, runner=runner, remote_python=remote_python,
                                    profile_runs=profile_runs, ssh_key=ssh_key, ssh_options=ssh_options,
                                    progress=note)
    annotate(document, trust=True)
    return document


def _bench_pipeline(paths: list[str], runs: int, warmup: int, threads: int | None, feeds, device: str | None,
                    trust: bool, progress) -> dict[str, Any]:
    """One pipeline, here: each stage artifact checked against its export's report.json first (unless `trust`)."""
    from device_runtime.errors import UsageError
    from device_runtime.manifest import load_entry
    from device_runtime.pipeline import read_pipeline
    from sdk.measure.pipeline_bench import bench_pipeline

    if len(paths) > 1:
        raise UsageError(f"bench one pipeline at a time (its stages are what it compares), not {len(paths)} paths: "
                         f"{', '.join(paths)}")
    if device not in (None, "", "local"):
        raise UsageError("a pipeline is benchmarked here only; on a device, `pocketformer verify BUNDLE --device "
                         "...` runs it end to end")
    root = Path(paths[0])
    root = root.parent if root.name == "pipeline.json" else root
    if root.is_dir() and not (root / "bundle.json").is_file() and not trust:  # a bundle checks its own sums
        for stage in read_pipeline(root).stages:
            if stage.artifact is not None:
                load_entry(root / stage.artifact)
    feed = dict(feeds[0]) if feeds and feeds[0] is not None else None
    return bench_pipeline(paths[0], runs=runs, warmup=warmup, threads=threads, feed=feed, progress=progress)


def annotate(document: dict[str, Any], trust: bool = False) -> dict[str, Any]:
    """Add each artifact's model, precision and parity (from its manifest), and the single-artifact keys."""
    from sdk.export.records import report_for_artifact

    for result in document.get("results", []):
        model, entry = report_for_artifact(Path(result["path"]), trust=trust)
        if model:
            result["model"] = model.get("name")
            result["family"] = model.get("family")
        if entry:
            result["precision"] = entry.get("precision")
            parity = entry.get("parity") or {}
            result["verified"] = parity.get("passed")
            lowering, quant = parity.get("lowering") or {}, parity.get("quantization") or {}
            result["max_abs_err"] = lowering.get("max_abs_err")
            result["sqnr_db_vs_fp32"] = quant.get("sqnr_db")
    if document.get("results"):  # the first (baseline) artifact's figures at the top, for one-artifact scripts
        first = document["results"][0]
        for key in ("path", "format", "backend", "load_time_ms", "first_run_ms", "latency", "peak_rss_mb"):
            document.setdefault(key, first.get(key))
    return document


def _labels(paths: Sequence[str]) -> list[str]:
    from device_runtime.measure import artifact_names

    return artifact_names(paths)


def _planned_mb(result: dict[str, Any]) -> float | None:
    planned = (result.get("memory_plan") or {}).get("planned_bytes")
    return planned / 2**20 if isinstance(planned, (int, float)) else None


def format_table(document: dict[str, Any]) -> str:
    """The human-readable result: the machine (CPU model and features), one line per artifact, ratios against
    the first (a pipeline's document: one line per stage, `sdk.measure.pipeline_bench`)."""
    from device_runtime.cpu import describe_host

    if document.get("schema") == "pocketformer.pipeline-bench":
        from sdk.measure.pipeline_bench import format_pipeline_bench

        return format_pipeline_bench(document)

    results = document.get("results", [])
    basis = document.get("ratio_basis", "p50")
    lines = [f"{document.get('device', 'local')}: {document.get('runs')} interleaved runs after "
             f"{document.get('warmup')} warm-up, threads={document.get('threads') or 'default'}"
             + (f", runner {document['runner']}" if document.get("runner") else ""),
             f"  machine: {describe_host(document.get('host'))}"]  # figures compare only within one CPU
    header = (f"  {'artifact':<44}{'backend':<18}{'load ms':>9}{'first ms':>10}{'p50 ms':>9}{'p90 ms':>9}"
              f"{'mean ms':>9}{'peak MB':>9}{'plan MB':>9}{'x first':>8}")
    lines += [header, "  " + "-" * (len(header) - 2)]

    def f(value, fmt):
        return format(value, fmt) if isinstance(value, (int, float)) and value == value else "-"

    for r in results:
        lat = r.get("latency") or {}
        lines.append(f"  {str(r.get('name'))[:43]:<44}{str(r.get('backend'))[:17]:<18}"
                     f"{f(r.get('load_time_ms'), '9.1f')}{f(r.get('first_run_ms'), '10.2f')}"
                     f"{f(lat.get('p50'), '9.3f')}{f(lat.get('p90'), '9.3f')}{f(lat.get('mean'), '9.3f')}"
                     f"{f(r.get('peak_rss_mb'), '9.1f')}{f(_planned_mb(r), '9.2f')}{f(r.get('ratio_vs_first'), '8.2f')}")
    if results:
        lines.append(f"  ratios: {basis} latency over {results[0].get('name')}'s; peak MB: "
                     f"{document.get('peak_rss_scope') or results[0].get('peak_rss_scope', '')}; plan MB: the "
                     f"runtime's planned activation memory (pte: memory-planned buffers; tflite: arena upper "
                     f"bound; onnx: not reported)")
    for r in results:
        if r.get("profile_unavailable"):
            lines.append(f"  no per-operator profile for {r['name']}: {r['profile_unavailable']}")
    return "\n".join(lines)


# -- Session.run overhead ---------------------------------------------------------------------------------
def raw_call(session, arrays: list[np.ndarray]) -> Callable[[], Any]:
    """A call of the backend's own API with the same inputs, bypassing `Session` (for the overhead figure)."""
    return session.raw_runner(arrays)


def session_overhead(path: str | Path, runs: int = 300, warmup: int = 20, threads: int | None = None,
                     feed: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Median time of `Session.run(None, feed)` against the backend's own API on the same inputs, interleaved.

    `Session.run` validates the feed (names, dtypes, shapes), runs hooks and selects outputs; the raw call
    skips all of it. Goal: overhead within 5 % or 50 us, whichever is larger.
    """
    import device_runtime
    from device_runtime.session import adapt_array

    session = device_runtime.load(path, num_threads=threads)
    feed = dict(feed) if feed is not None else (sample_feed(path) or session.example_feed())
    # The zoo's token ids are int64; a model that takes int32 (TFLite) gets them cast once, outside the timing,
    # as adapt_io would on every run.
    feed = {t.name: adapt_array(np.asarray(feed[t.name]), t) for t in session.get_inputs() if t.name in feed}
    arrays = session.validate_feed(feed)
    raw = raw_call(session, arrays)
    for _ in range(warmup):
        raw()
        session.run(None, feed)
    raw_s, api_s = [], []
    for i in range(runs):
        pair = ((raw, raw_s), (lambda: session.run(None, feed), api_s))
        for fn, samples in (pair if i % 2 == 0 else pair[::-1]):
            start = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - start)
    raw_us, api_us = float(np.median(raw_s) * 1e6), float(np.median(api_s) * 1e6)
    overhead = api_us - raw_us
    allowed = max(0.05 * raw_us, 50.0)
    return {"path": str(path), "backend": session.backend, "runs": runs, "raw_median_us": raw_us,
            "session_run_median_us": api_us, "overhead_us": overhead,
            "overhead_pct": 100 * overhead / raw_us if raw_us else None, "allowed_us": allowed,
            "within_goal": overhead <= allowed}
