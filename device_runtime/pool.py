"""`SessionPool`: n sessions of one artifact, each call on a free one, so runs of a locked format overlap.

A `Session` is already safe to call from several threads, but a LiteRT interpreter, an ExecuTorch method, Core
ML and Ascend serialise calls on one session (see `Session`). A pool holds `size` sessions of the same file and
hands each call a free one (blocking until one is free), so up to `size` calls run at once.

    >>> pool = SessionPool("out/m/fp32/model.tflite", size=2, num_threads=1)
    >>> logits, = pool.run(None, feed)              # from any thread
    >>> results = pool.map([feed1, feed2, feed3])   # in parallel, results in feed order

`SessionPool.within(path, memory_budget_mb, max_sessions)` sizes the pool to a memory budget: it loads one
session, measures this process's resident-set growth across that load (`/proc/self/statm`, or
`resource.getrusage` where there is no /proc: then the growth of the peak), and opens as many as fit.
That estimate is per process and conservative: sessions of one file can share mmapped weights, which are
counted once for the first session. Standard library and numpy only.
"""
from __future__ import annotations

import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from device_runtime.errors import UsageError
from device_runtime.session import Session, TensorInfo

Feed = Mapping[str, Any] | Sequence[Any]


def resident_mb() -> float:
    """This process's resident set size in MiB (`/proc/self/statm`), or its peak (`getrusage`) without /proc."""
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError, AttributeError):
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


class SessionPool:
    """`size` sessions of one artifact; `run` takes a free one, `map` runs several feeds in parallel.

    Thread safety: `run` and `map` may be called from any thread. Each call holds one session for its duration;
    with all `size` busy, a call waits (up to `timeout` seconds, if given, then `TimeoutError`).
    Outputs are those of a single `Session.run` on the same feed.
    """

    def __init__(self, path: str | os.PathLike | None = None, size: int = 2, *,
                 sessions: Sequence[Session] | None = None, **load_options: Any) -> None:
        if sessions is None:
            if path is None:
                raise UsageError("SessionPool needs an artifact path or sessions=[...]")
            if int(size) < 1:
                raise UsageError(f"a SessionPool needs size >= 1, got {size}")
            import device_runtime

            sessions = []
            try:
                for _ in range(int(size)):
                    sessions.append(device_runtime.load(path, **load_options))
            except Exception:
                for s in sessions:
                    s.close()
                raise
        sessions = list(sessions)
        if not sessions:
            raise UsageError("a SessionPool needs at least one session")
        paths = {s.path for s in sessions}
        if len(paths) != 1:
            raise UsageError(f"a SessionPool holds sessions of one artifact, got {sorted(paths)}")
        self.sessions: list[Session] = sessions
        self.path = sessions[0].path
        self.sizing: dict[str, Any] = {"size": len(sessions)}
        self._free: "queue.LifoQueue[Session]" = queue.LifoQueue()
        for s in sessions:
            self._free.put(s)
        self._executor: ThreadPoolExecutor | None = None
        self._executor_lock = threading.Lock()
        self._closed = False

    @classmethod
    def within(cls, path: str | os.PathLike, memory_budget_mb: float, max_sessions: int = 8,
               **load_options: Any) -> "SessionPool":
        """As many sessions (1..`max_sessions`) as fit in `memory_budget_mb`, from the first session's measured
        resident-set growth at load. `pool.sizing` records the figures. Raises `UsageError` when even one
        session does not fit."""
        import device_runtime

        if memory_budget_mb <= 0 or int(max_sessions) < 1:
            raise UsageError(f"need memory_budget_mb > 0 and max_sessions >= 1, got {memory_budget_mb}, "
                             f"{max_sessions}")
        before = resident_mb()
        first = device_runtime.load(path, **load_options)
        first.run(None, first.example_feed())  # arenas and delegate buffers are allocated on the first run
        growth = max(resident_mb() - before, 0.0)
        # A load can grow RSS by ~nothing (weights mmapped and untouched, pages reused): never count a session
        # as smaller than its file.
        per_session = max(growth, os.path.getsize(path) / 2**20)
        if per_session > memory_budget_mb:
            first.close()
            raise UsageError(f"one session of {path} takes about {per_session:.1f} MiB (resident growth at load "
                             f"{growth:.1f} MiB), more than the budget of {memory_budget_mb:g} MiB")
        n = int(min(int(max_sessions), max(1, memory_budget_mb // per_session)))
        sessions = [first]
        try:
            for _ in range(n - 1):
                sessions.append(device_runtime.load(path, **load_options))
        except Exception:
            for s in sessions:
                s.close()
            raise
        pool = cls(sessions=sessions)
        pool.sizing = {"size": n, "memory_budget_mb": float(memory_budget_mb), "max_sessions": int(max_sessions),
                       "measured_growth_mb": round(growth, 3), "per_session_mb": round(per_session, 3),
                       "method": "/proc/self/statm" if os.path.exists("/proc/self/statm") else "getrusage peak"}
        return pool

    # -- metadata (the sessions are of one artifact) -------------------------------------------
    def __len__(self) -> int:
        return len(self.sessions)

    def get_inputs(self) -> list[TensorInfo]:
        return self.sessions[0].get_inputs()

    def get_outputs(self) -> list[TensorInfo]:
        return self.sessions[0].get_outputs()

    def validate_feed(self, feed: Feed) -> list[np.ndarray]:
        return self.sessions[0].validate_feed(feed)

    def example_feed(self) -> dict[str, np.ndarray]:
        return self.sessions[0].example_feed()

    @property
    def info(self) -> dict[str, Any]:
        return {**self.sessions[0].info, "pool": dict(self.sizing)}

    # -- running -------------------------------------------------------------------------------
    def run(self, output_names: Sequence[str] | None = None, feed: Feed | None = None,
            timeout: float | None = None) -> list[np.ndarray]:
        """`Session.run` on a free session (waiting for one, up to `timeout` seconds)."""
        if self._closed:
            raise UsageError(f"the SessionPool of {self.path} is closed")
        try:
            session = self._free.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no free session of {self.path} within {timeout} s "
                               f"(all {len(self.sessions)} busy)") from None
        try:
            return session.run(output_names, feed)
        finally:
            self._free.put(session)

    def __call__(self, *arrays: Any, **named: Any) -> list[np.ndarray]:
        return self.run(None, named if named else list(arrays))

    def map(self, feeds: Iterable[Feed], output_names: Sequence[str] | None = None) -> list[list[np.ndarray]]:
        """Run every feed, up to `len(pool)` at once; the results in feed order. The first error is raised."""
        feeds = list(feeds)
        if len(feeds) <= 1 or len(self.sessions) == 1:
            return [self.run(output_names, f) for f in feeds]
        with self._executor_lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(len(self.sessions), thread_name_prefix="pf-pool")
        return list(self._executor.map(lambda f: self.run(output_names, f), feeds))

    def close(self) -> None:
        """Close every session (waits for `map` workers; calls in flight finish first)."""
        if self._closed:
            return
        self._closed = True
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        for s in self.sessions:
            s.close()

    def __enter__(self) -> "SessionPool":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<SessionPool {len(self.sessions)} x {self.path}>"
