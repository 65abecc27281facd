"""Benchmarking each artifact in a process of its own, as it runs on the device, interleaved across processes.

Several runtimes in one process share its cores: torch's, ExecuTorch's, ONNX Runtime's and LiteRT's thread
pools all stay resident, and their idle-spinning workers slow whichever runtime runs next (measured here on
mobilevit_xxs at 2 threads: TFLite fp32 11.1 ms inside one shared process vs 7.3 ms alone). So each artifact
gets a worker process (`python -m device_runtime.isolated`) that imports only its own runtime (a `.tflite` or
`.onnx` worker never imports torch), and the coordinator interleaves the rounds across the workers exactly as
`device_runtime.measure.benchmark_artifacts` interleaves sessions: the start rotates from round to round, and
only one worker runs at a time. Peak resident memory is each worker's own high-water mark: the artifact alone.

A `.pte` worker imports torch when it runs through the ExecuTorch binding. Where this Python cannot run
executorch-numpy-runtime (it needs CPython >= 3.12) but a device environment that can is at hand (`pte_python`:
by default $POCKETFORMER_PTE_PYTHON, else the checkout's .cache/py313-device from scripts/py313_device_env.sh),
a `.pte` worker runs in that Python instead, torch-free, as on a device; each result says which backend and
ExecuTorch version ran and in which Python. Not when a thread count other than that runtime's fixed pool is
asked for, or the binding is named: those workers run here, through the binding.

The protocol is JSON lines: commands on the worker's stdin, replies on a private copy of its stdout (fd 1 is
pointed at stderr first, so a runtime's own prints cannot corrupt it). Standard library and numpy only.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from device_runtime.errors import ExecutionError, PocketformerError, UsageError

ISOLATION = "one process per artifact (its own runtime only), rounds interleaved across the processes"
# Rounds of BLOCK timed runs after SETTLE untimed ones. Switching processes costs the next one its warm state
# (caches, its parked threads waking, the last one's still spinning): measured on mobilevit_xxs's six
# artifacts at 2 threads, rounds of 5 after 1 read 1.2-2.0x the raw runtime loop in a fresh process (TFLite
# fp32 5.2 vs 3.4 ms), rounds of 10 after 3 agreed with it within the raw loop's own run-to-run spread.
BLOCK, SETTLE = 10, 3


class WorkerError(PocketformerError):
    """A benchmark worker failed; carries the worker's error type, message and exit code."""

    def __init__(self, message: str, exit_code: int = 5) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class _Worker:
    """The coordinator's handle on one worker process."""

    def __init__(self, path: str, backend: str | None, threads: int | None, feed: Mapping[str, Any] | None,
                 folder: str, index: int, python: str | None = None) -> None:
        self.path = path
        feed_path = None
        if feed is not None:
            feed_path = os.path.join(folder, f"feed{index}.npz")
            np.savez(feed_path, **{k: np.asarray(v) for k, v in feed.items()})
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_package_root(), os.environ.get("PYTHONPATH")]))}
        self.process = subprocess.Popen([python or sys.executable, "-m", "device_runtime.isolated"],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, text=True, env=env)
        try:
            self.loaded = self.call({"op": "load", "path": path, "backend": backend, "threads": threads,
                                     "feed": feed_path})
        except BaseException:
            self.close()
            raise

    def call(self, command: dict[str, Any]) -> dict[str, Any]:
        try:
            self.process.stdin.write(json.dumps(command) + "\n")
            self.process.stdin.flush()
            line = self.process.stdout.readline()
        except (BrokenPipeError, OSError):
            line = ""
        if not line:
            code = self.process.wait()
            raise WorkerError(f"the benchmark worker for {self.path} died (exit {code}{_signal_name(code)})")
        reply = json.loads(line)
        if "error" in reply:
            error = reply["error"]
            raise WorkerError(f"{self.path}: {error['type']}: {error['message']}", error.get("exit_code", 5))
        return reply

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.process.stdin.flush()
                self.process.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()


def _signal_name(code: int) -> str:
    if code is not None and code < 0:
        import signal

        return f", killed by {signal.Signals(-code).name}"
    return ""


def _package_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def default_pte_python() -> str | None:
    """$POCKETFORMER_PTE_PYTHON (empty: none), else the checkout's torch-free Python >= 3.12 device environment
    (.cache/py313-device, marked READY by scripts/py313_device_env.sh) when it is there, else None."""
    if "POCKETFORMER_PTE_PYTHON" in os.environ:
        return os.environ["POCKETFORMER_PTE_PYTHON"] or None
    env = os.path.join(_package_root(), ".cache", "py313-device")
    python = os.path.join(env, "bin", "python")
    return python if os.path.isfile(os.path.join(env, "READY")) and os.access(python, os.X_OK) else None


def worker_python(path: str, backend: str | None, threads: int | None, pte_python: str | None) -> str | None:
    """The Python of an artifact's worker: `pte_python` for a `.pte` this Python could only run through the
    torch-importing binding, when the numpy runtime's fixed thread pool serves `threads`; else None (this one)."""
    from device_runtime.backends.executorch_numpy import BACKEND, pool_threads, unavailable
    from device_runtime.registry import sniff_format

    if not pte_python or backend not in (None, BACKEND) or unavailable() is None:
        return None
    try:
        fmt = sniff_format(path)
    except PocketformerError:  # not an artifact: the worker reports it, as for any format
        return None
    return pte_python if fmt == "pte" and threads in (None, pool_threads()) else None


def benchmark_isolated(paths: Sequence[str], runs: int = 50, warmup: int = 5, threads: int | None = None,
                       feeds: Sequence[Mapping[str, Any] | None] | None = None, names: Sequence[str] | None = None,
                       backend: str | None = None, profile_runs: int = 0,
                       progress: Callable[[int, int], None] | None = None,
                       references: Sequence[tuple[str, Any, Mapping[str, Any] | None]] = (),
                       block: int = BLOCK, settle: int = SETTLE, pte_python: str | None = "default") -> dict[str, Any]:
    """The document `measure.benchmark_artifacts` returns, with each artifact measured in its own process.

    `references` (name, Session-like, feed) run in this process, in the same rounds (e.g. eager PyTorch).
    `pte_python`: the torch-free Python for `.pte` workers (see the module docstring; None: none).
    """
    from device_runtime.measure import SCHEMA, add_ratios, artifact_size, checked_arguments, host_info
    from device_runtime.session import LatencyStats

    feeds, names = checked_arguments(paths, runs, warmup, feeds, names)
    pte_python = default_pte_python() if pte_python == "default" else pte_python
    workers: list[_Worker] = []
    with tempfile.TemporaryDirectory(prefix="pf-bench-") as folder:
        try:
            for i, (path, feed) in enumerate(zip(paths, feeds)):
                python = worker_python(str(path), backend, threads, pte_python)
                workers.append(_Worker(str(path), backend, threads, feed, folder, i, python))
            entries: list[dict[str, Any]] = [{"name": n, "worker": w, "samples": [], "peak": 0}
                                             for n, w in zip(names, workers)]
            for name, session, feed in references:
                arrays = session._validate(feed if feed is not None else session.example_feed())
                session.run(None, arrays)  # cold
                entries.append({"name": name, "session": session, "arrays": arrays, "samples": [], "peak": 0,
                                "reference": True})
            total, done = len(entries) * (runs + 1), len(entries)  # each has had its cold run
            if progress:
                progress(done, total)
            for entry in entries:
                _run(entry, settle=warmup, count=0)
            n = len(entries)
            block = max(1, min(block, runs))
            for i in range(-(-runs // block)):
                count = min(block, runs - i * block)
                for entry in entries[i % n:] + entries[:i % n]:
                    _run(entry, settle=settle if n > 1 else 0, count=count)
                    done += count
                    if progress:
                        progress(done, total)
            results = []
            for entry in entries:
                latency = asdict(LatencyStats.from_seconds(entry["samples"]))
                if entry.get("reference"):
                    session = entry["session"]
                    results.append({"name": entry["name"], "path": session.path, "format": session.format,
                                    "backend": session.backend, "num_threads": threads, "load_time_ms":
                                    session.load_time_ms, "first_run_ms": session.first_run_ms, "runs": runs,
                                    "warmup": warmup, "latency": latency, "peak_rss_mb": None,
                                    "size_bytes": None, "reference": True, "process": "coordinator"})
                    continue
                worker, loaded = entry["worker"], entry["worker"].loaded
                result = {"name": entry["name"], "path": worker.path, "format": loaded["format"],
                          "backend": loaded["backend"], "num_threads": threads,
                          "load_time_ms": loaded["load_time_ms"], "runtime_import_ms": loaded["runtime_import_ms"],
                          "first_run_ms": loaded["first_run_ms"], "runs": runs, "warmup": warmup,
                          "latency": latency, "peak_rss_mb": entry["peak"] / 2**20,
                          "load_rss_delta_mb": loaded["load_rss_delta_mb"], "size_bytes": artifact_size(worker.path),
                          "memory_plan": loaded.get("memory_plan"), "runtime_version": loaded.get("runtime_version"),
                          "process": {"pid": worker.process.pid, "imports_torch": loaded["imports_torch"],
                                      "python": loaded.get("python"), "executable": worker.process.args[0]}}
                if profile_runs:
                    result.update(worker.call({"op": "profile", "runs": profile_runs}))
                results.append(result)
        finally:
            for worker in workers:
                worker.close()
    document = {"schema": SCHEMA, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "device": "local", "host": host_info(), "runs": runs, "warmup": warmup, "threads": threads,
                "isolation": ISOLATION,
                "order": (f"interleaved across processes: rounds of {block} timed runs per artifact after {settle} "
                          f"untimed settle run(s), the starting artifact rotating from round to round"),
                "block": block, "settle": settle,
                "peak_rss_scope": "per artifact: the peak RSS of its own process (the artifact alone)",
                "results": results}
    peaks = [r["peak_rss_mb"] for r in results if r.get("peak_rss_mb") is not None]
    document["process_peak_rss_mb"] = max(peaks) if peaks else None
    add_ratios(document)
    return document


def _run(entry: dict[str, Any], settle: int, count: int) -> None:
    """`settle` untimed then `count` timed runs, in the worker or (references) here."""
    if "worker" in entry:
        reply = entry["worker"].call({"op": "run", "settle": settle, "count": count})
        entry["samples"].extend(reply["samples"])
        entry["peak"] = max(entry["peak"], reply["peak_rss"])
        return
    from device_runtime.measure import timed_runs

    execute, arrays = entry["session"]._execute, entry["arrays"]
    entry["samples"] += timed_runs(lambda: execute(arrays), settle, count)


# -- the worker ------------------------------------------------------------------------------------------
def _serve(commands, replies) -> None:
    """Answer the coordinator's commands for one artifact until "quit" or end of input."""
    import device_runtime
    from device_runtime.measure import profile_session, peak_rss_bytes, rss_bytes, timed_runs

    session = runner = None
    for line in commands:
        command = json.loads(line)
        op = command["op"]
        try:
            if op == "quit":
                return
            if op == "load":
                path, backend, threads = command["path"], command["backend"], command["threads"]
                start = time.perf_counter()
                device_runtime.load(path, backend=backend, num_threads=threads)  # imports the runtime, untimed
                import_ms = (time.perf_counter() - start) * 1e3
                before = rss_bytes()
                session = device_runtime.load(path, backend=backend, num_threads=threads, adapt_io=True)
                after = rss_bytes()
                feed = dict(np.load(command["feed"])) if command["feed"] else session.example_feed()
                arrays = session.validate_feed(feed)
                session.run(None, arrays)  # cold: the first run after load, through the public API
                runner = session.raw_runner(arrays)
                reply = {"format": session.format, "backend": session.backend, "load_time_ms": session.load_time_ms,
                         "runtime_import_ms": max(0.0, import_ms - session.load_time_ms),
                         "first_run_ms": session.first_run_ms,
                         "load_rss_delta_mb": (after - before) / 2**20 if before is not None and after is not None
                         else None, "imports_torch": "torch" in sys.modules, "memory_plan": session.memory_plan(),
                         "runtime_version": session.info.get("runtime_version"), "python": sys.version.split()[0]}
            elif op == "run":
                reply = {"samples": timed_runs(runner, command["settle"], command["count"]),
                         "peak_rss": peak_rss_bytes()}
            elif op == "profile":
                reply = profile_session(session, arrays, command["runs"])
            else:
                raise UsageError(f"unknown worker command {op!r}")
        except Exception as exc:  # reported to the coordinator, which raises it there
            code = exc.exit_code if isinstance(exc, PocketformerError) else ExecutionError.exit_code
            reply = {"error": {"type": type(exc).__name__, "message": str(exc)[:2000], "exit_code": code}}
        replies.write(json.dumps(reply, default=float) + "\n")
        replies.flush()


def main() -> None:
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # a runtime printing to stdout must not corrupt the protocol
    sys.stdout = sys.stderr
    _serve(sys.stdin, replies)


if __name__ == "__main__":
    main()
