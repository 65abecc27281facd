"""The format-independent `Session`: input metadata, validation, hooks, timing and benchmarks.

A backend subclasses `Session` and supplies `_inputs`, `_outputs` (lists of `TensorInfo`) and `_execute`
(a list of numpy arrays in input order -> a list of numpy arrays in output order). Everything a user calls
lives here, so it behaves the same for every format.
"""
from __future__ import annotations

import contextlib
import functools
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from device_runtime.errors import (DTypeError, ExecutionError, InputError, MissingInputError, NonFiniteInputError,
                                   ShapeError, UnexpectedInputError, UsageError, ValueRangeError)

if TYPE_CHECKING:
    from device_runtime.profile import OpProfile


@dataclass(frozen=True)
class QuantParams:
    scale: float
    zero_point: int


@dataclass(frozen=True)
class TensorInfo:
    """One input or output. `shape` holds None where a dim may vary; `dynamic_axes` names those dims.
    `value_range`: the inclusive `(min, max)` an integer input may hold, as recorded in the artifact (or its
    manifest); `Session.run` rejects values outside it. None: not recorded, not checked."""

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype
    quantization: QuantParams | None = None
    dynamic_axes: dict[int, str] = field(default_factory=dict)
    value_range: tuple[int, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["dtype"] = np.dtype(self.dtype).name
        d["shape"] = list(self.shape)
        return d

    def describe(self) -> str:
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        q = f" q(scale={self.quantization.scale:.4g}, zp={self.quantization.zero_point})" if self.quantization else ""
        return f"{self.name}: {np.dtype(self.dtype).name}[{dims}]{q}"


@dataclass(frozen=True)
class LatencyStats:
    unit: str
    p50: float
    p90: float
    p99: float
    mean: float
    std: float
    min: float
    max: float
    p10: float = float("nan")
    p95: float = float("nan")

    @classmethod
    def from_seconds(cls, samples: Sequence[float]) -> "LatencyStats":
        ms = np.asarray(samples, dtype=np.float64) * 1e3
        p10, p50, p90, p95, p99 = np.percentile(ms, [10, 50, 90, 95, 99])
        return cls("ms", float(p50), float(p90), float(p99), float(ms.mean()), float(ms.std()),
                   float(ms.min()), float(ms.max()), float(p10), float(p95))


@dataclass(frozen=True)
class BenchmarkResult:
    path: str
    format: str
    backend: str
    num_threads: int | None
    load_time_ms: float
    first_run_ms: float
    warmup: int
    runs: int
    latency: LatencyStats

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class HookHandle:
    def __init__(self, hooks: list, entry) -> None:
        self._hooks, self._entry = hooks, entry

    def remove(self) -> None:
        if self._entry in self._hooks:
            self._hooks.remove(self._entry)


BeforeHook = Callable[["Session", dict], None]
AfterHook = Callable[["Session", dict, list, float], None]


class Session:
    """A loaded artifact, ready to run. Created by `device_runtime.load`, not directly.

    Thread safety: `run` (and `session(...)`) may be called from several threads at once. Feeds are validated
    in the calling thread; the runtime call itself is serialised by a per-session lock unless the backend
    declares its runtime re-entrant (`reentrant = True`: ONNX Runtime, whose `InferenceSession.run` is
    thread-safe, so its calls overlap). A LiteRT interpreter, an ExecuTorch method (one memory plan), Core ML
    and Ascend (ACL contexts belong to one thread) are locked: calls on one session queue behind each other and
    give the same results as serial calls. For parallel runs of a locked format, hold several sessions
    (`device_runtime.SessionPool`). `benchmark`, `profile` and `raw_runner` are measuring tools and take no
    lock: do not run them while other threads use the same session. Hooks run outside the lock, in the
    calling thread. ExecuTorch's CPU thread pool is process-wide: see `ExecuTorchSession`.
    """

    format: str = ""
    backend: str = ""
    # True where the runtime's own run call may be entered by several threads at once on one loaded model;
    # False (the default) makes `run` hold this session's lock around the runtime call.
    reentrant: bool = False
    # Float inputs holding NaN or Inf raise NonFiniteInputError unless this is True (`load(..., allow_non_finite=True)`).
    allow_non_finite: bool = False
    # Sequence-length buckets the artifact holds ({length: entry point name, or None for a dynamic axis}; see
    # device_runtime.buckets), and the open option that selects an entry point ("method", "signature").
    buckets: dict = {}
    entry_point_option: str | None = None
    # The axis those buckets are sizes of: "sequence" (`--seq-lens`) or "batch" (`--batch-sizes`).
    bucket_axis: str = "sequence"

    def __init__(self, path: str, num_threads: int | None = None) -> None:
        self.path = str(path)
        self.num_threads = num_threads
        self.load_time_ms: float = float("nan")
        self.first_run_ms: float | None = None
        # When True, feeds are adapted to what the artifact expects (integers cast losslessly, e.g. int64 ids
        # to a TFLite model's int32; floats quantized with an int8 input's own scale and zero point) and
        # quantized outputs are dequantized. Off by default: a mismatch is an error that says what is expected.
        self.adapt_io = False
        self._hooks: list[tuple[BeforeHook | None, AfterHook | None]] = []
        self._inputs: list[TensorInfo] = []
        self._outputs: list[TensorInfo] = []
        # Serialises the runtime call where the runtime is not re-entrant (see the class docstring). Re-entrant
        # (an RLock) so a hook or a subclass that calls `run` from inside a locked call does not deadlock.
        self._run_lock = threading.RLock()

    # -- metadata --------------------------------------------------------------------------------
    def get_inputs(self) -> list[TensorInfo]:
        return list(self._inputs)

    def get_outputs(self) -> list[TensorInfo]:
        return list(self._outputs)

    @property
    def info(self) -> dict[str, Any]:
        return {"path": self.path, "format": self.format, "backend": self.backend,
                "num_threads": self.num_threads, "load_time_ms": self.load_time_ms,
                "inputs": [t.to_dict() for t in self._inputs], "outputs": [t.to_dict() for t in self._outputs],
                **self._backend_info()}

    def _backend_info(self) -> dict[str, Any]:
        return {}

    # -- running ---------------------------------------------------------------------------------
    def run(self, output_names: Sequence[str] | None = None,
            feed: Mapping[str, Any] | Sequence[Any] | None = None) -> list[np.ndarray]:
        """Run once. `feed` maps input names to arrays (or lists them in input order);
        `output_names=None` returns every output, in the model's order."""
        arrays = self._validate(feed)
        hooks = list(self._hooks) if self._hooks else ()  # the per-run fixed cost: nothing built without hooks
        named = {t.name: a for t, a in zip(self._inputs, arrays)} if hooks else {}
        for before, _ in hooks:
            if before:
                before(self, named)
        start = time.perf_counter()
        try:
            outputs = self._execute_exclusive(arrays)
        except InputError:
            raise
        except Exception as exc:
            raise ExecutionError(f"{self.backend} failed while running {self.path}: {type(exc).__name__}: "
                                 f"{str(exc).strip()[:500]}") from exc
        elapsed = time.perf_counter() - start
        if self.adapt_io:
            outputs = [_dequantize(o, t) if t.quantization else o for o, t in zip(outputs, self._outputs)]
        if self.first_run_ms is None:
            self.first_run_ms = elapsed * 1e3
        for _, after in hooks:
            if after:
                after(self, named, outputs, elapsed)
        return self._select(outputs, output_names)

    def _exclusive(self):
        """A context holding this session's run lock, or nothing where the runtime is re-entrant."""
        return contextlib.nullcontext() if self.reentrant else self._run_lock

    def _execute_exclusive(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """`_execute` under the session's lock (unless `reentrant`): the one place `run` enters the runtime."""
        with self._exclusive():
            return self._execute(arrays)

    def close(self) -> None:
        """Release what the backend holds beyond memory (device buffers, a pinned thread pool). Backends that
        hold such things override this; using the session after `close` is undefined."""

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __call__(self, *arrays: Any, **named: Any) -> list[np.ndarray]:
        """Positional or keyword convenience: `session(x)` or `session(input_ids=..., attention_mask=...)`."""
        if arrays and named:
            raise InputError("pass inputs either positionally or by name, not both")
        return self.run(None, named if named else list(arrays))

    def add_hook(self, before: BeforeHook | None = None, after: AfterHook | None = None) -> HookHandle:
        """Callbacks around every run: `before(session, feed)`, `after(session, feed, outputs, seconds)`."""
        entry = (before, after)
        self._hooks.append(entry)
        return HookHandle(self._hooks, entry)

    def example_feed(self) -> dict[str, np.ndarray]:
        """A valid feed of the model's shapes: zeros for floats, ones for integers (token id 1, mask 1)."""
        feed = {}
        for t in self._inputs:
            shape = tuple(1 if d is None else d for d in t.shape)
            fill = 0 if np.issubdtype(t.dtype, np.floating) else 1
            feed[t.name] = np.full(shape, fill, dtype=t.dtype)
        return feed

    def benchmark(self, feed: Mapping[str, Any] | Sequence[Any] | None = None, warmup: int = 5,
                  runs: int = 50, progress: Callable[[int, int], None] | None = None) -> BenchmarkResult:
        """Load time, first (cold) run and steady-state latency percentiles, in milliseconds."""
        if runs < 1 or warmup < 0:
            raise UsageError(f"need runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
        arrays = self._validate(feed if feed is not None else self.example_feed())
        if self.first_run_ms is None:
            self.run(None, arrays)
        for _ in range(warmup):
            self._execute(arrays)
        samples = []
        for i in range(runs):
            start = time.perf_counter()
            self._execute(arrays)
            samples.append(time.perf_counter() - start)
            if progress:
                progress(i + 1, runs)
        return BenchmarkResult(self.path, self.format, self.backend, self.num_threads, self.load_time_ms,
                               float(self.first_run_ms), warmup, runs, LatencyStats.from_seconds(samples))

    def profile(self, feed: Mapping[str, Any] | Sequence[Any] | None = None, runs: int = 10,
                warmup: int = 2) -> "OpProfile":
        """Per-operator times over `runs` runs after `warmup` unrecorded ones, as a `device_runtime.profile.OpProfile`
        (rows: node or delegate, op type, provider, calls, total/mean time, share of the run; slowest first).

        Backends with a per-operator profiler override this (ONNX Runtime, ExecuTorch). The others raise
        `ProfilerUnavailableError` naming the format and backend and saying why: no fake rows.
        """
        from device_runtime.profile import ProfilerUnavailableError, profiler_for

        _, gap = profiler_for(self.backend)
        raise ProfilerUnavailableError(f"no per-operator profile for {self.format or 'this'} artifacts with backend "
                                       f"{self.backend or type(self).__name__}: {gap}")

    def _median_run_us(self, arrays: list[np.ndarray], runs: int) -> float:
        """Median time of `runs` plain `_execute` calls, in microseconds (the unprofiled reference of a profile)."""
        samples = []
        for _ in range(max(1, runs)):
            start = time.perf_counter()
            self._execute(arrays)
            samples.append(time.perf_counter() - start)
        return float(np.median(samples) * 1e6)

    # -- the runtime's own call and profiler ------------------------------------------------------
    def validate_feed(self, feed: Mapping[str, Any] | Sequence[Any] | None) -> list[np.ndarray]:
        """The feed checked as `run` checks it (and adapted, with `adapt_io`): the arrays, in input order, that
        `raw_runner` takes. Raises the same typed errors as `run`."""
        return self._validate(feed)

    def raw_runner(self, arrays: Sequence[np.ndarray]) -> Callable[[], Any]:
        """A zero-argument call of the runtime's own API on `arrays` (from `validate_feed`), bound once.

        Calling it runs the model and nothing else: no validation, hooks, timing or output selection, and the
        outputs come back as the runtime returns them (a dict, torch tensors, ...). It is what `Session.run` is
        measured against (`sdk.measure.bench.session_overhead`). Backends with a lighter native call than `_execute`
        override this; the default is `_execute` itself.
        """
        arrays = list(arrays)
        return lambda: self._execute(arrays)

    def memory_plan(self) -> dict[str, Any]:
        """What the runtime plans to allocate for this model, as far as it says: `planned_bytes` (activations
        and scratch the runtime planned ahead of time), `constant_bytes` (weights), `source` (where the figures
        come from) and `note` (what they leave out). Backends override this; measured peak RSS is apart
        (`device_runtime.isolated`, one process per artifact)."""
        return {"planned_bytes": None, "constant_bytes": None, "source": None,
                "note": f"{self.backend or type(self).__name__} does not report a memory plan"}

    @property
    def profiler(self) -> str | None:
        """What `profile()` uses on this backend, or None when it has no per-operator profiler (`profile()` then
        raises `ProfilerUnavailableError` saying why). From `device_runtime.profile`'s capability table."""
        from device_runtime.profile import profiler_for

        return profiler_for(self.backend)[0]

    # -- backend contract ------------------------------------------------------------------------
    def _execute(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError

    # -- helpers ---------------------------------------------------------------------------------
    def _validate(self, feed: Mapping[str, Any] | Sequence[Any] | None) -> list[np.ndarray]:
        expected = [t.name for t in self._inputs]
        if feed is None:
            raise MissingInputError(f"no feed given; the model expects {self._signature()}")
        if isinstance(feed, Mapping):
            missing = [n for n in expected if n not in feed]
            extra = [n for n in feed if n not in expected]
            if missing:
                raise MissingInputError(f"missing input(s) {missing}; the model expects {self._signature()}")
            if extra:
                raise UnexpectedInputError(f"unexpected input(s) {extra}; the model expects {self._signature()}")
            values = [feed[n] for n in expected]
        else:
            values = list(feed)
            if len(values) != len(expected):
                raise (MissingInputError if len(values) < len(expected) else UnexpectedInputError)(
                    f"got {len(values)} input(s), the model expects {len(expected)}: {self._signature()}")
        arrays = []
        for info, value in zip(self._inputs, values):
            arr = value if type(value) is np.ndarray else np.asarray(value)
            if not self.allow_non_finite and arr.dtype.kind == "f":
                _check_finite(arr, info)  # before adapt_io quantizes a float feed (NaN has no int8 value)
            ranged = False
            if self.adapt_io and arr.dtype != info.dtype:
                # Integer ids cast to the artifact's integer type (int64 -> a TFLite model's int32): the range
                # check on the values as given also proves they fit that type, so the cast checks nothing twice.
                ranged = (info.value_range is not None and arr.dtype.kind in "iu"
                          and np.dtype(info.dtype).kind in "iu")
                if ranged:
                    _check_range(arr, info)
                arr = adapt_array(arr, info, checked=ranged and _range_fits(info))
            if arr.dtype != info.dtype:
                hint = (f"quantize with scale {info.quantization.scale:.6g} and zero point "
                        f"{info.quantization.zero_point}, or load with adapt_io=True" if info.quantization else
                        f"cast with .astype(np.{np.dtype(info.dtype).name}), or load with adapt_io=True")
                raise DTypeError(f"input {info.name!r} has dtype {arr.dtype.name}, the model expects "
                                 f"{np.dtype(info.dtype).name} ({hint})")
            if len(arr.shape) != len(info.shape) or any(
                    want is not None and got != want for got, want in zip(arr.shape, info.shape)):
                raise ShapeError(f"input {info.name!r} has shape {list(arr.shape)}, the model expects "
                                 f"{['?' if d is None else d for d in info.shape]}")
            if info.value_range is not None and not ranged:
                _check_range(arr, info)
            arrays.append(arr if arr.flags.c_contiguous else np.ascontiguousarray(arr))
        return arrays

    def _select(self, outputs: list[np.ndarray], output_names: Sequence[str] | None) -> list[np.ndarray]:
        if output_names is None:
            return outputs
        index = {t.name: i for i, t in enumerate(self._outputs)}
        unknown = [n for n in output_names if n not in index]
        if unknown:
            raise InputError(f"unknown output name(s) {unknown}; outputs are {list(index)}")
        return [outputs[index[n]] for n in output_names]

    def _signature(self) -> str:
        return ", ".join(t.describe() for t in self._inputs)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.format}/{self.backend} {self.path}>"


def with_value_ranges(infos: Sequence[TensorInfo], ranges: Mapping[str, Any]) -> list[TensorInfo]:
    """`infos` with `value_range` set from `ranges` ({name: [min, max]}, inclusive; a name absent or None is left
    unchecked). Malformed entries are ignored: a range is a safety net, never a reason to refuse a model."""
    out = []
    for info in infos:
        rng = ranges.get(info.name) if isinstance(ranges, Mapping) else None
        try:
            lo, hi = (int(rng[0]), int(rng[1])) if rng is not None else (None, None)
        except (TypeError, ValueError, IndexError, KeyError):
            lo = hi = None
        ok = lo is not None and lo <= hi and np.issubdtype(np.dtype(info.dtype), np.integer)
        out.append(replace(info, value_range=(lo, hi)) if ok else info)
    return out


def _check_range(arr: np.ndarray, info: TensorInfo) -> None:
    """Vectorised: two reductions on the good path; the first offending position is found only on failure."""
    lo, hi = info.value_range
    if not arr.size or arr.dtype.kind not in "iu":  # dtype kinds, not np.issubdtype: this runs on every run
        return
    if lo <= arr.min() and arr.max() <= hi:
        return
    bad = (arr < lo) | (arr > hi)
    index = tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), arr.shape))
    raise ValueRangeError(f"input {info.name!r} has value {int(arr[index])} at index {list(index)} "
                          f"({int(bad.sum())} value(s) out of range); valid range is [{lo}, {hi}] inclusive")


def _check_finite(arr: np.ndarray, info: TensorInfo) -> None:
    """NaN propagates through min/max and +-Inf is the max/min: two reductions, no temporary on the good path."""
    if not arr.size or arr.dtype.kind not in "fc":
        return
    if np.isfinite(arr.min()) and np.isfinite(arr.max()):
        return
    bad = ~np.isfinite(arr)
    index = tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), arr.shape))
    raise NonFiniteInputError(f"input {info.name!r} has {arr[index]} at index {list(index)} "
                              f"({int(bad.sum())} non-finite value(s)); float inputs must be finite "
                              "(load with allow_non_finite=True to pass them through)")


@functools.lru_cache(maxsize=64)
def _int_bounds(dtype: np.dtype) -> tuple[int, int]:
    """(min, max) of an integer dtype, made once per dtype (np.iinfo costs more than a small run's reduction)."""
    bounds = np.iinfo(dtype)
    return int(bounds.min), int(bounds.max)


def _range_fits(info: TensorInfo) -> bool:
    """Whether an input's value range lies inside its integer dtype (then a checked value fits the dtype)."""
    if info.value_range is None:
        return False
    lo, hi = _int_bounds(np.dtype(info.dtype))
    return lo <= info.value_range[0] and info.value_range[1] <= hi


def adapt_array(arr: np.ndarray, info: TensorInfo, checked: bool = False) -> np.ndarray:
    """`arr` cast (or quantized) to what `info` expects, where that loses nothing. `checked`: the values are known
    to fit an integer target (its value range was checked), so the bounds are not checked again."""
    want = np.dtype(info.dtype)
    if arr.dtype == want:
        return arr
    have, to = arr.dtype.kind, want.kind  # dtype kinds, not np.issubdtype: this runs on every run
    if have == "f" and to in "iu" and info.quantization:
        q = info.quantization
        lo, hi = _int_bounds(want)
        return np.clip(np.round(arr / q.scale) + q.zero_point, lo, hi).astype(want)
    if have in "iu" and to in "iu":
        lo, hi = _int_bounds(want)
        if not checked and arr.size and (arr.min() < lo or arr.max() > hi):
            raise DTypeError(f"input {info.name!r}: values do not fit {want.name}")
        return arr.astype(want)
    if have == "f" and to == "f":
        return arr.astype(want)
    return arr


def _dequantize(out: np.ndarray, info: TensorInfo) -> np.ndarray:
    if info.quantization and out.dtype.kind in "iu":
        q = info.quantization
        return ((out.astype(np.float32) - q.zero_point) * q.scale).astype(np.float32)
    return out
