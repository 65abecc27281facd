"""Dynamic batching: a `Batcher` gathers concurrent requests into batches for one `run_batch` call.

The controls follow Triton's dynamic batcher (`max_batch_size`, `max_queue_delay_microseconds`, a bounded
queue with `max_queue_size`) and Ray Serve's `@serve.batch(max_batch_size, batch_wait_timeout_s)`:

- a worker thread waits (on a condition, never polling) for the first request, then up to
  `max_queue_delay_ms` from that request's arrival for more, and runs at most `max_batch_size` together;
- each request gets its own `concurrent.futures.Future`, resolved with its own output (results come back to
  each caller for its own request, whatever the batch order);
- the queue holds at most `max_queue_size` requests: one more is refused at once with `QueueFullError`
  (exit code 3: the request is valid, the server is overloaded), so memory is bounded by
  `max_queue_size + workers * max_batch_size` requests and a fixed-size metrics window;
- `close()` (or leaving a `with` block) stops intake and drains the queue (`drain=True`) or cancels what has
  not started (`drain=False`: those futures are cancelled); batches already running finish.

A `run_batch` carrying `schedule` and `size_of` (`device_runtime.packing.packed_batch_runner` on an artifact with
several packed row lengths, or given a cost table) decides its own batches instead: the Batcher sizes each
request with `size_of` on arrival and asks `schedule(sizes, **state)` (`device_runtime.scheduling.choose`) how
many of the oldest to run now or how long to wait, still never past `max_queue_delay_ms` nor above
`max_batch_size`.

`run_batch(list_of_feeds) -> list_of_outputs` is any callable; an exception raised fails every request of the
batch, an exception returned in a request's slot fails that request alone. `session_batch_runner(session_or_pool)` adapts
a `Session` or `SessionPool`: where every input and output has a dynamic (or matching) axis 0, feeds are
concatenated along axis 0, run once and the outputs split back; otherwise each feed runs on its own, and
`metrics()["batching"]` says so: batching is real only where the artifact takes a batch. A `.pte` or `.tflite`
exported with `--batch-sizes` opens as a `BucketedSession` whose axis 0 is dynamic (it pads the stacked rows to
its smallest bucket that fits, and runs more than its largest in chunks), so it is concatenated too.

    >>> with Batcher(session_batch_runner(session), max_batch_size=8, max_queue_delay_ms=2) as batcher:
    ...     logits, = batcher.submit(feed).result()       # from many threads
    ...     print(batcher.metrics()["batch_size_histogram"])

Numpy and the standard library only.
"""
from __future__ import annotations

import collections
import itertools
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from device_runtime.errors import ExecutionError, MissingInputError, QueueFullError, UsageError

RunBatch = Callable[[list], list]
METRICS_WINDOW = 10_000  # latency samples kept per metric (a sliding window: bounded memory)


class _Request:
    __slots__ = ("feed", "future", "enqueued", "size")

    def __init__(self, feed: Any, size: int | None = None) -> None:
        self.feed = feed
        self.future: Future = Future()
        self.enqueued = time.perf_counter()
        self.size = size  # what a scheduling run_batch measures the request by (tokens), if it does


def _summary(samples: collections.deque) -> dict[str, float]:
    if not samples:
        return {"count": 0, "p50": float("nan"), "p99": float("nan"), "mean": float("nan"), "max": float("nan")}
    ms = np.asarray(samples, dtype=np.float64) * 1e3
    p50, p99 = np.percentile(ms, [50, 99])
    return {"count": int(ms.size), "p50": float(p50), "p99": float(p99), "mean": float(ms.mean()),
            "max": float(ms.max())}


class Batcher:
    """Serve concurrent requests in batches through `run_batch` (see the module docstring).

    `submit(feed)` -> Future (raises `QueueFullError` at once when the queue is full, `UsageError` once
    closed); `run(feed, timeout)` submits and waits. `workers` threads each form and run batches (use
    `len(pool)` with a `SessionPool` so batches run in parallel). Safe to call from any thread.
    """

    def __init__(self, run_batch: RunBatch, max_batch_size: int = 8, max_queue_delay_ms: float = 5.0,
                 max_queue_size: int = 64, workers: int = 1, name: str = "batcher") -> None:
        if int(max_batch_size) < 1 or int(max_queue_size) < 1 or int(workers) < 1 or max_queue_delay_ms < 0:
            raise UsageError(f"need max_batch_size >= 1, max_queue_size >= 1, workers >= 1 and "
                             f"max_queue_delay_ms >= 0; got {max_batch_size}, {max_queue_size}, {workers}, "
                             f"{max_queue_delay_ms}")
        self.run_batch = run_batch
        self.max_batch_size = int(max_batch_size)
        self.max_queue_delay_ms = float(max_queue_delay_ms)
        self.max_queue_size = int(max_queue_size)
        self.name = name
        self._queue: collections.deque[_Request] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._cancel_pending = False
        # metrics (guarded by _cond)
        self._counts = collections.Counter()
        self._histogram: collections.Counter[int] = collections.Counter()
        self._queue_wait = collections.deque(maxlen=METRICS_WINDOW)
        self._service = collections.deque(maxlen=METRICS_WINDOW)
        self._end_to_end = collections.deque(maxlen=METRICS_WINDOW)
        self._max_depth = 0
        # A run_batch may schedule its own batches (`schedule(sizes, **state) -> (take, wait_s)`, with `size_of`:
        # device_runtime.packing's cost-scheduled packed rows); the Batcher then asks it instead of filling to
        # max_batch_size, still never waiting past max_queue_delay_ms from the oldest request's arrival.
        self._schedule = getattr(run_batch, "schedule", None)
        self._size_of = getattr(run_batch, "size_of", None) if self._schedule else None
        self._arrivals: collections.deque[float] = collections.deque(maxlen=17)  # recent arrival times
        self._sizes: collections.deque[int] = collections.deque(maxlen=64)  # recent request sizes
        # Answers delivered whose senders have not sent again (each arrival pays one back): in a closed loop of N
        # clients, how many more can still come now; the scheduler waits for no more than that.
        self._owed = 0
        self._workers = [threading.Thread(target=self._loop, name=f"pf-{name}-{i}", daemon=True)
                         for i in range(int(workers))]
        for t in self._workers:
            t.start()

    # -- intake --------------------------------------------------------------------------------
    def submit(self, feed: Any) -> Future:
        """Queue one request; its Future resolves to `run_batch`'s output for it (or its exception)."""
        size = None
        if self._size_of is not None:
            try:  # in the caller's thread, outside the lock; a bad feed fails in run_batch, alone
                size = int(self._size_of(feed))
            except Exception:
                size = None
        request = _Request(feed, size)
        with self._cond:
            if self._closed:
                raise UsageError(f"{self.name} is closed; no new requests are accepted")
            if len(self._queue) >= self.max_queue_size:
                self._counts["rejected"] += 1
                raise QueueFullError(f"{self.name}: the queue is full ({self.max_queue_size} requests waiting, "
                                     f"max_queue_size={self.max_queue_size}); retry later, or raise "
                                     f"max_queue_size / add workers or sessions")
            self._queue.append(request)
            if self._schedule is not None:
                self._owed = max(0, self._owed - 1)
                self._arrivals.append(request.enqueued)
                if size is not None:
                    self._sizes.append(size)
            self._counts["accepted"] += 1
            self._max_depth = max(self._max_depth, len(self._queue))
            self._cond.notify()
        return request.future

    def run(self, feed: Any, timeout: float | None = None) -> Any:
        """Submit and wait for the result (re-raising the request's exception)."""
        return self.submit(feed).result(timeout)

    __call__ = run

    # -- the worker ----------------------------------------------------------------------------
    def _next_batch(self) -> list[_Request] | None:
        """Block until a batch is due: `max_batch_size` requests, or the oldest has waited the delay."""
        delay = self.max_queue_delay_ms / 1e3
        with self._cond:
            while True:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return None  # closed and drained
                if self._cancel_pending:
                    return None
                if self._schedule is not None:
                    n = self._scheduled_take(delay)
                    if n is None:
                        continue
                    return [self._queue.popleft() for _ in range(n)]
                deadline = self._queue[0].enqueued + delay
                while len(self._queue) < self.max_batch_size and not self._closed:
                    left = deadline - time.perf_counter()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                if not self._queue:  # another worker took them meanwhile
                    continue
                n = min(self.max_batch_size, len(self._queue))
                return [self._queue.popleft() for _ in range(n)]

    def _scheduled_take(self, delay: float) -> int | None:
        """With `_cond` held and a request queued: ask run_batch's `schedule` until it says how many to take
        (None: the queue was emptied by another worker meanwhile). Waits as it says, at most `delay` from the
        oldest arrival; an arrival wakes it to decide again."""
        while self._queue:
            now = time.perf_counter()
            waited = now - self._queue[0].enqueued
            queued = min(len(self._queue), self.max_batch_size)
            if self._closed or waited >= delay or queued >= self.max_batch_size:
                return queued
            times = list(self._arrivals)
            gaps = np.diff(times) if len(times) > 2 else None
            sizes = [r.size if r.size is not None else 2 for r in itertools.islice(self._queue, queued)]
            seen = self._counts["accepted"]
            self._cond.release()  # plan outside the lock: submitters are not held up by the planning
            try:
                take, wait = self._ask_schedule(sizes, waited, delay, gaps, now - times[-1] if times else 0.0)
            except Exception:  # a scheduler fault must not stall the queue: serve what is there
                take, wait = queued, 0.0
            finally:
                self._cond.acquire()
            if not self._queue:
                return None  # another worker took them meanwhile
            if take > 0:
                return min(int(take), len(self._queue), self.max_batch_size)
            if self._counts["accepted"] == seen:  # nothing arrived while planning: wait (an arrival wakes it)
                self._cond.wait(max(1e-5, min(wait, delay - waited)))
        return None

    def _ask_schedule(self, sizes: list, waited: float, delay: float, gaps, since_last: float) -> tuple[int, float]:
        """One call of run_batch's `schedule` with the queue's state (see `device_runtime.scheduling.choose`)."""
        mean_size = float(np.mean(self._sizes)) if self._sizes else None
        return self._schedule(sizes, waited_s=waited, max_delay_s=delay,
                              gap_s=float(np.median(gaps)) if gaps is not None else None,
                              since_last_s=since_last, next_length=mean_size, max_batch=self.max_batch_size,
                              expected_more=self._owed)

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            started = time.perf_counter()
            live = [r for r in batch if r.future.set_running_or_notify_cancel()]  # drop caller-cancelled ones
            if len(live) < len(batch):
                with self._cond:
                    self._counts["cancelled"] += len(batch) - len(live)
            if not live:
                continue
            try:
                outputs = self.run_batch([r.feed for r in live])
                if len(outputs) != len(live):
                    raise ExecutionError(f"{self.name}: run_batch returned {len(outputs)} outputs for "
                                         f"{len(live)} requests")
                error = None
            except BaseException as exc:  # handed to every caller of the batch, never lost in the worker
                outputs, error = None, exc
            done = time.perf_counter()
            if self._schedule is not None:  # owed before the answers go out: a sender may send again at once
                with self._cond:
                    self._owed = min(self._owed + len(live), 2 * self.max_batch_size + self.max_queue_size)
            failed = 0
            if error is None:
                for r, out in zip(live, outputs):
                    if isinstance(out, BaseException):  # run_batch may fail one request and serve the rest
                        r.future.set_exception(out)
                        failed += 1
                    else:
                        r.future.set_result(out)
            else:
                for r in live:
                    r.future.set_exception(error)
                failed = len(live)
            with self._cond:
                self._histogram[len(live)] += 1
                self._counts["batches"] += 1
                self._counts["completed"] += len(live) - failed
                self._counts["failed"] += failed
                self._service.append(done - started)
                for r in live:
                    self._queue_wait.append(started - r.enqueued)
                    self._end_to_end.append(done - r.enqueued)

    # -- shutting down -------------------------------------------------------------------------
    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop taking requests; `drain=True` runs what is queued, `drain=False` cancels it (their futures are
        cancelled). Waits up to `timeout` seconds for the workers; batches already running finish."""
        with self._cond:
            self._closed = True
            if not drain:
                self._cancel_pending = True
                while self._queue:
                    request = self._queue.popleft()
                    if request.future.cancel():
                        self._counts["cancelled"] += 1
            self._cond.notify_all()
        for t in self._workers:
            if t is not threading.current_thread():
                t.join(timeout)

    def __enter__(self) -> "Batcher":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close(drain=True)

    @property
    def closed(self) -> bool:
        return self._closed

    # -- metrics -------------------------------------------------------------------------------
    def metrics(self) -> dict[str, Any]:
        """Counts, batch sizes and latencies in milliseconds (p50/p99/mean/max over the last samples).

        `queue_wait_ms`: arrival to the start of its batch; `service_ms`: one `run_batch` call; `end_to_end_ms`:
        arrival to result. `batch_size_histogram`: {batch size: batches}. `batching`: how `run_batch` batches
        (from its `batching` attribute, e.g. "concatenate" or "per-item"), else "custom".
        """
        with self._cond:
            batches = self._counts["batches"]
            completed = self._counts["completed"] + self._counts["failed"]
            return {
                "name": self.name, "max_batch_size": self.max_batch_size,
                "max_queue_delay_ms": self.max_queue_delay_ms, "max_queue_size": self.max_queue_size,
                "workers": len(self._workers), "batching": getattr(self.run_batch, "batching", "custom"),
                "batching_note": getattr(self.run_batch, "note", None),
                "accepted": self._counts["accepted"], "rejected": self._counts["rejected"],
                "completed": self._counts["completed"], "failed": self._counts["failed"],
                "cancelled": self._counts["cancelled"], "batches": batches,
                "average_batch_size": completed / batches if batches else float("nan"),
                "batch_size_histogram": dict(sorted(self._histogram.items())),
                "queue_depth": len(self._queue), "max_queue_depth": self._max_depth,
                "queue_wait_ms": _summary(self._queue_wait), "service_ms": _summary(self._service),
                "end_to_end_ms": _summary(self._end_to_end),
            }


# -- running a batch on a Session or SessionPool -------------------------------------------------
def batch_axis_mode(session) -> tuple[str, str]:
    """("concatenate" | "per-item", why): whether feeds can be stacked on axis 0 of every input and output."""
    ins, outs = session.get_inputs(), session.get_outputs()
    if not ins or not outs:
        return "per-item", "the artifact declares no inputs or outputs"
    fixed = [t for t in ins + outs if not t.shape]
    if fixed:
        return "per-item", f"{fixed[0].name} is a scalar: no batch axis"
    if all(t.shape[0] is None for t in ins + outs):
        return "concatenate", "axis 0 of every input and output is dynamic: feeds are concatenated along it"
    dims = {t.shape[0] for t in ins + outs}
    if len(dims) == 1 and None not in dims and next(iter(dims)) > 1:
        return "concatenate", (f"axis 0 is fixed at {next(iter(dims))}: feeds are concatenated when their rows "
                               f"add up to it, else run one by one")
    first = ins[0]
    return "per-item", (f"axis 0 of {first.name} is fixed at {first.shape[0]} (exported with a static batch): "
                        f"each request runs on its own; export with a dynamic batch axis (ONNX --dynamic-batch) or "
                        f"batch buckets (--batch-sizes 1,2,4,8) for real batching")


def _in_order(session, feed: Any) -> list[np.ndarray]:
    names = [t.name for t in session.get_inputs()]
    if isinstance(feed, Mapping) and any(n not in feed for n in names):
        raise MissingInputError(f"missing input(s) {[n for n in names if n not in feed]}; the model expects {names}")
    values = [feed[n] for n in names] if isinstance(feed, Mapping) else list(feed)
    if len(values) != len(names):
        raise UsageError(f"a feed for {names} has {len(values)} value(s)")
    arrays = [np.asarray(v) for v in values]
    if any(a.ndim == 0 for a in arrays):
        raise UsageError("a feed for a batched artifact needs axis 0 on every input")
    return arrays


def session_batch_runner(session, output_names: Sequence[str] | None = None) -> RunBatch:
    """A `run_batch` for `Batcher` running feeds on a `Session` or `SessionPool` (see the module docstring).

    The callable's `batching` attribute is "concatenate" or "per-item" and `note` says why; a batch whose feeds
    cannot be concatenated (different non-batch dims, or rows not matching a fixed batch) runs one by one.
    """
    mode, note = batch_axis_mode(session)
    fixed = None if mode != "concatenate" else session.get_inputs()[0].shape[0]

    def one(feed: Any) -> Any:
        try:
            return session.run(output_names, feed)
        except Exception as exc:  # this request's own error (a bad feed), not the batch's
            return exc

    def per_item(feeds: list) -> list:
        return [one(f) for f in feeds]

    def concatenated(feeds: list) -> list:
        if len(feeds) == 1:
            return per_item(feeds)
        results: list[Any] = [None] * len(feeds)
        valid: list[tuple[int, list[np.ndarray]]] = []
        for k, feed in enumerate(feeds):
            try:
                # A fixed batch: single feeds do not have the artifact's rows; the stacked feed is validated.
                valid.append((k, _in_order(session, feed) if fixed is not None else session.validate_feed(feed)))
            except Exception as exc:  # a bad feed fails alone; the others still batch
                results[k] = exc
        arrays = [a for _, a in valid]
        rows = [a[0].shape[0] for a in arrays]
        same = bool(arrays) and all(len({a[i].shape[1:] for a in arrays}) == 1 for i in range(len(arrays[0])))
        if len(valid) < 2 or not same or (fixed is not None and sum(rows) != fixed):
            for k, _ in valid:
                results[k] = one(feeds[k])
            return results
        stacked = [np.concatenate([a[i] for a in arrays], axis=0) for i in range(len(arrays[0]))]
        outputs = session.run(output_names, stacked)
        total = sum(rows)
        if any(o.ndim == 0 or o.shape[0] != total for o in outputs):
            raise ExecutionError(f"batched outputs have {[list(o.shape) for o in outputs]} rows, not {total}: "
                                 f"the artifact's axis 0 is not a batch axis")
        cuts = np.cumsum(rows)[:-1]
        per_output = [np.split(o, cuts, axis=0) for o in outputs]
        for j, (k, _) in enumerate(valid):
            results[k] = [parts[j] for parts in per_output]
        return results

    runner = concatenated if mode == "concatenate" else per_item
    runner.batching, runner.note = mode, note  # type: ignore[attr-defined]
    return runner


__all__ = ["Batcher", "QueueFullError", "session_batch_runner", "batch_axis_mode"]
