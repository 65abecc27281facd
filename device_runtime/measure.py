"""Measuring artifacts the same way on the host and on a device: resident memory and the interleaved benchmark.

`benchmark_artifacts(paths, ...)` is what `pocketformer bench` runs locally and what
`python -m device_runtime.remote.bench_main` runs on a device, so both produce the same JSON document:

1. load every artifact (load time, and the resident memory loading it added);
2. run each once, cold (first-run time);
3. warm up, then time rounds in which every artifact runs a short block (5 timed runs after 1 untimed settle
   run), the starting artifact rotating from round to round: machine drift (thermal state, other processes,
   frequency changes) hits them alike, while one runtime's spinning worker threads do not bill the next;
4. percentiles per artifact, and ratios against the first artifact.

Peak resident memory: Linux keeps the process's high-water mark (VmHWM) and lets a process reset it
(`/proc/self/clear_refs`, "5"). The mark is reset before each artifact's runs and read after them, so each
artifact's `peak_rss_mb` is the process's peak while that artifact ran (the other artifacts stay loaded and
count in it: `load_rss_delta_mb` says what loading each added). Where the mark cannot be reset, the figure is
the process's peak so far (`peak_rss_scope` says which). Standard library and numpy only.
"""
from __future__ import annotations

import os
import platform
import re
import resource
import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from device_runtime.cpu import host_fields, read_cpuinfo
from device_runtime.errors import UsageError

SCHEMA = "pocketformer.bench/1"


# -- resident memory ------------------------------------------------------------------------------------
def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            match = re.search(rf"^{field}:\s+(\d+)\s+kB", fh.read(), re.MULTILINE)
        return int(match.group(1)) if match else None
    except OSError:
        return None


def rss_bytes() -> int | None:
    """Current resident set size of this process (None where /proc is missing)."""
    kb = _status_kb("VmRSS")
    return kb * 1024 if kb is not None else None


def peak_rss_bytes() -> int:
    """Peak resident set size of this process: VmHWM (resettable) on Linux, else getrusage's maximum."""
    kb = _status_kb("VmHWM")
    if kb is not None:
        return kb * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, kilobytes elsewhere


def reset_peak_rss() -> bool:
    """Reset the process's peak-RSS mark to its current RSS (Linux >= 4.0). False where it cannot be."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


# -- the host or device this runs on ----------------------------------------------------------------------
def host_info() -> dict[str, Any]:
    """The machine a document's figures were measured on: `cpu` (the model name) and `cpu_info` (model, vendor,
    topology, the kernels' ISA features, VM or emulator: `device_runtime.cpu`) from its own /proc/cpuinfo."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"hostname": platform.node(), "platform": platform.platform(), "machine": platform.machine(),
            "python": sys.version.split()[0], **host_fields(read_cpuinfo()), "cpus_usable": cores,
            "numpy": np.__version__}


# -- the interleaved benchmark ----------------------------------------------------------------------------
def benchmark_artifacts(paths: Sequence[str], runs: int = 50, warmup: int = 5, threads: int | None = None,
                        feeds: Sequence[Mapping[str, Any] | None] | None = None, names: Sequence[str] | None = None,
                        backend: str | None = None, profile_runs: int = 0,
                        progress: Callable[[int, int], None] | None = None,
                        references: Sequence[tuple[str, Any, Mapping[str, Any] | None]] = (),
                        block: int = 5, settle: int = 1) -> dict[str, Any]:
    """Benchmark several artifacts in one process, interleaved; the JSON-ready document `pocketformer bench` writes.

    `feeds[i]` is artifact i's feed (None: the session's example feed). `profile_runs > 0` also records each
    artifact's per-operator profile (or why it has none) after the timing. Rounds run each artifact `block` timed
    times after `settle` untimed runs: runtimes keep their worker threads spinning for a while after a run
    (ONNX Runtime, OpenMP in torch), which slows whichever runtime runs next on a small machine; measured
    here: ONNX Runtime's first run after an eager PyTorch run took 20x its steady time. `references` are extra
    (name, Session, feed) entries timed in the same rounds (e.g. PyTorch eager); their results carry
    `"reference": true`.
    """
    import device_runtime

    feeds, names = checked_arguments(paths, runs, warmup, feeds, names)
    resettable = reset_peak_rss()
    baseline_rss = rss_bytes()
    entries = []
    imported: dict[str, float] = {}
    for path, name, feed in zip(paths, names, feeds):
        fmt = device_runtime.sniff_format(path)
        runtime = device_runtime.registry.choose_backend(fmt, backend).name
        if runtime not in imported:
            # The first load of a backend in a process also imports its runtime (torch + executorch take
            # seconds): do it once untimed, so load_time_ms is the artifact's own, and report the difference.
            start = time.perf_counter()
            device_runtime.load(path, backend=backend, num_threads=threads)
            imported[runtime] = (time.perf_counter() - start) * 1e3
        before = rss_bytes()
        session = device_runtime.load(path, backend=backend, num_threads=threads, adapt_io=True)
        after = rss_bytes()
        if runtime in imported and imported[runtime] is not None:
            session.runtime_import_ms = max(0.0, imported[runtime] - session.load_time_ms)
            imported[runtime] = None  # reported once, with the first artifact of that runtime
        arrays = session._validate(feed if feed is not None else session.example_feed())
        entries.append({"name": name, "session": session, "arrays": arrays, "samples": [], "peak": 0,
                        "load_rss_delta": (after - before) if before is not None and after is not None else None})

    for name, session, feed in references:
        arrays = session._validate(feed if feed is not None else session.example_feed())
        entries.append({"name": name, "session": session, "arrays": arrays, "samples": [], "peak": 0,
                        "load_rss_delta": None, "reference": True})

    total = len(entries) * (runs + 1)
    done = 0
    for entry in entries:  # cold: the first run after load, through the public API
        _reset_mark(resettable)
        entry["session"].run(None, entry["arrays"])
        entry["peak"] = max(entry["peak"], peak_rss_bytes())
        done += 1
        if progress:
            progress(done, total)
    for _ in range(warmup):
        for entry in entries:
            entry["session"]._execute(entry["arrays"])
    n = len(entries)
    block = max(1, min(block, runs))
    rounds = -(-runs // block)
    for i in range(rounds):
        count = min(block, runs - i * block)
        for entry in entries[i % n:] + entries[:i % n]:
            _reset_mark(resettable)
            execute, arrays = entry["session"]._execute, entry["arrays"]
            entry["samples"] += timed_runs(lambda: execute(arrays), settle if n > 1 else 0, count)
            entry["peak"] = max(entry["peak"], peak_rss_bytes())
            done += count
            if progress:
                progress(done, total)

    from device_runtime.session import LatencyStats

    results = []
    for entry in entries:
        session = entry["session"]
        latency = asdict(LatencyStats.from_seconds(entry["samples"]))
        result = {"name": entry["name"], "path": session.path, "format": session.format, "backend": session.backend,
                  "num_threads": threads, "load_time_ms": session.load_time_ms,
                  "runtime_import_ms": getattr(session, "runtime_import_ms", None),
                  "first_run_ms": session.first_run_ms, "runs": runs, "warmup": warmup, "latency": latency,
                  "peak_rss_mb": entry["peak"] / 2**20,
                  "load_rss_delta_mb": entry["load_rss_delta"] / 2**20 if entry["load_rss_delta"] is not None else None,
                  "size_bytes": artifact_size(session.path) if os.path.exists(session.path) else None}
        if entry.get("reference"):
            result["reference"] = True
        if profile_runs:
            result.update(profile_session(session, entry["arrays"], profile_runs))
        results.append(result)
    document = {"schema": SCHEMA, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "device": "local", "host": host_info(), "runs": runs, "warmup": warmup, "threads": threads,
                "order": (f"interleaved: rounds of {max(1, min(block, runs))} timed runs per artifact after {settle} "
                          f"untimed settle run(s), the starting artifact rotating from round to round"),
                "block": max(1, min(block, runs)), "settle": settle,
                "peak_rss_scope": ("per artifact: the process's peak RSS while that artifact ran (all artifacts "
                                   "loaded)" if resettable else "process peak RSS so far (the mark cannot be reset "
                                   "here)"),
                "baseline_rss_mb": baseline_rss / 2**20 if baseline_rss is not None else None,
                "process_peak_rss_mb": peak_rss_bytes() / 2**20 if not resettable else
                max(r["peak_rss_mb"] for r in results), "results": results}
    add_ratios(document)
    return document


def timed_runs(call: Callable[[], Any], settle: int, count: int) -> list[float]:
    """`settle` untimed calls (they let the previous runtime's spinning worker threads go idle), then the seconds
    of each of `count` timed calls."""
    for _ in range(settle):
        call()
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return samples


def checked_arguments(paths, runs: int, warmup: int, feeds, names) -> tuple[list, list[str]]:
    """The feeds and labels of a benchmark (defaults filled in), once its counts are known to make sense."""
    if not paths:
        raise UsageError("no artifacts to benchmark")
    if runs < 1 or warmup < 0:
        raise UsageError(f"need runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    return (list(feeds) if feeds is not None else [None] * len(paths),
            list(names) if names is not None else artifact_names(paths))


def add_ratios(document: dict[str, Any]) -> dict[str, Any]:
    """Each result's latency over the first result's (p50 when every result has one, else mean)."""
    results = document.get("results", [])
    if not results:
        return document
    basis = "p50" if all((r.get("latency") or {}).get("p50") is not None for r in results) else "mean"
    base = (results[0].get("latency") or {}).get(basis)
    for r in results:
        value = (r.get("latency") or {}).get(basis)
        r["ratio_vs_first"] = value / base if value is not None and base else None
    document["ratio_basis"] = basis
    document["baseline"] = results[0].get("name")
    return document


def profile_session(session, arrays, runs: int) -> dict[str, Any]:
    from device_runtime.profile import ProfilerUnavailableError

    try:
        return {"profile": session.profile(arrays, runs=runs, warmup=1).to_dict()}
    except ProfilerUnavailableError as exc:
        return {"profile": None, "profile_unavailable": str(exc)}


def _reset_mark(resettable: bool) -> None:
    if resettable:
        reset_peak_rss()


def artifact_names(paths: Sequence[str]) -> list[str]:
    """Short unique labels: the last path parts that tell the artifacts apart (model/precision/file)."""
    parts = [os.path.normpath(str(p)).split(os.sep) for p in paths]
    for depth in range(min(3, min(len(p) for p in parts)), max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(p) for p in paths]


def artifact_size(path: str) -> int:
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)
    return os.path.getsize(path)
