"""ExecuTorch `.pte` programs through ExecuTorch's Python runtime (`executorch.runtime`).

ExecuTorch's Python binding exchanges torch tensors, so this backend imports torch, lazily, on load. Where
executorch-numpy-runtime is installed, `backends.executorch_numpy` runs `.pte` without torch and comes first.
Input/output names are not part of a `.pte`; Pocketformer embeds them as a constant method
(`pocketformer_meta`, UTF-8 JSON as a uint8 tensor) and falls back to `input_0...` for foreign programs.

`session.profile(feed, runs)` loads a second copy of the program with ETDump enabled
(`Runtime.load_program(..., enable_etdump=True)`), runs it, and reads the dump with the devtools `Inspector`:
one row per instruction (a portable/optimized kernel call, or a delegate call named after its backend, e.g.
`XnnpackBackend`), followed by the operators the delegate itself reports (XNNPACK does), with p10/p50/p90.
A wheel built without the event tracer records nothing; that is detected and said, never papered over.

Threads. ExecuTorch has one CPU thread pool per process (`_unsafe_reset_threadpool` is process-wide), so a
session's `num_threads` cannot be private to it. The rule (`THREADPOOL`): a session loaded with `num_threads=N`
pins the pool at N while it is open; loading another `.pte` with a different `num_threads` while such a session
is open raises `UsageError` naming the count in force and the sessions holding it (load with the same count, or
with `num_threads=None` to use whatever is in force, or `close()` the others first). Sessions loaded with
`num_threads=None` pin nothing and run on the pool as it is, but they too keep the pool from being reset: a
program loaded before a reset hung in its next run after one (XNNPACK keeps the pool it was loaded with; seen in
CI on 2026-12-06, a run blocked for good in `Method.execute`), so a reset happens only with no other session open.
Within a session, `Session.run` is serialised by the session's lock (a Method has one memory plan and is not
re-entrant); separate sessions run in parallel.
"""
from __future__ import annotations

import json
import re
import tempfile
import threading
import warnings
import weakref
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from device_runtime.buckets import buckets_from_entry_points
from device_runtime.errors import CorruptArtifactError, IncompatibleProgramError, UsageError
from device_runtime.profile import OpProfile, OpProfileRow, ProfilerUnavailableError
from device_runtime.registry import (Backend, Format, read_head, register_backend, register_format,
                                     requires_module)
from device_runtime.session import Session, TensorInfo, with_value_ranges

# Pocketformer's converter (converters.executorch) embeds the spec's input/output names as this constant method:
# UTF-8 JSON {META_INPUTS: [...], META_OUTPUTS: [...], META_VALUE_RANGES: {input: [min, max]}} in a uint8 tensor
# (value ranges inclusive; checked by `Session._validate`: the int8 embedding kernel aborts on a bad id).
META_METHOD = "pocketformer_meta"
META_INPUTS, META_OUTPUTS, META_VALUE_RANGES = "inputs", "outputs", "value_ranges"
# {size: method} of a multi-length program (`seq<N>`; `forward` is its largest length) or of a multi-batch one
# (`batch<N>`; `forward` is the smallest), and the axis they are sizes of: device_runtime.buckets.
META_BUCKETS, META_BUCKET_AXIS = "buckets", "bucket_axis"
FILE_IDENTIFIER_PREFIX = b"ET"  # bytes 4..6 of a .pte; bytes 6..8 are the schema version
# ExecuTorch ScalarType codes (c10 numbering).
SCALAR_TYPES = {0: np.uint8, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.int64, 5: np.float16, 6: np.float32,
                7: np.float64, 11: np.bool_}


def decode_meta(raw) -> dict:
    """The `pocketformer_meta` method's output (UTF-8 JSON in a uint8 tensor, as numpy) as a dict."""
    return json.loads(bytes(np.asarray(raw).astype(np.uint8).tolist()).decode("utf-8"))


def bucket_fields(meta: dict) -> tuple[dict[int, str], str]:
    """A program's buckets ({size: method}) and their axis, from its embedded metadata: the axis as recorded (a
    batch program), else from the methods' names (seq16: a multi-length program)."""
    buckets = {int(k): v for k, v in (meta.get(META_BUCKETS) or {}).items()}
    axis, _ = buckets_from_entry_points(list(buckets.values()))
    return buckets, meta.get(META_BUCKET_AXIS) or (axis.name if axis else "sequence")


def check_fp16_cpu(path: str, meta: dict) -> None:
    """Refuse an fp16 program (the converter's embedded precision) on a CPU where XNNPACK has no fp16 kernels,
    before the runtime fails with `xnn_status_unsupported_hardware`. Programs without that metadata are not
    checked: the runtime's own error then stands."""
    from device_runtime.backends.pte_program import fp16_unsupported

    if meta.get("precision") != "fp16":
        return
    reason = fp16_unsupported()
    if reason:
        raise IncompatibleProgramError(
            f"{path} is an fp16 program and cannot run here: {reason}. XNNPACK runs fp16 on CPUs with fp16 "
            f"arithmetic (Cortex-A55/A76 and later, Apple M1, Neoverse N1) and on x86 with F16C and AVX; run the "
            f"fp32 or int8 export of this model on this CPU")


def is_pte(path: Path) -> bool:
    # A .pte is a flatbuffer whose file identifier (bytes 4..8) is "ET" + a two-digit schema version.
    if not path.is_file():
        return False
    head = read_head(path, 8)
    return len(head) == 8 and head[4:6] == FILE_IDENTIFIER_PREFIX and head[6:8].isdigit()


class ThreadPoolGuard:
    """The process-wide ExecuTorch thread pool: who pinned which count, and resets that never race a run.

    Executions register as readers (`running()`); a reset is the writer: it waits for running executions to
    finish and holds new ones back until the pool is rebuilt.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._running = 0
        self._resetting = False
        self._pinned: "weakref.WeakKeyDictionary[ExecuTorchSession, int]" = weakref.WeakKeyDictionary()
        self._open: "weakref.WeakSet[ExecuTorchSession]" = weakref.WeakSet()

    def opened(self, session: "ExecuTorchSession") -> None:
        with self._cond:
            self._open.add(session)

    def pinned(self) -> dict[str, int]:
        """{session path: thread count} of the open sessions that pinned the pool."""
        with self._cond:
            return {s.path: n for s, n in list(self._pinned.items())}

    def claim(self, session: "ExecuTorchSession", threads: int, portable_lib) -> None:
        """Pin the pool at `threads` for `session`, resetting it if needed; refuse a count other sessions hold."""
        with self._cond:
            others = {s.path: n for s, n in list(self._pinned.items()) if s is not session and n != threads}
            if others:
                current = int(portable_lib._threadpool_get_thread_count())
                raise UsageError(
                    f"cannot load {session.path} with num_threads={threads}: ExecuTorch has one CPU thread pool per "
                    f"process, now {current} thread(s), pinned by {len(others)} open session(s) "
                    f"({', '.join(f'{p} ({n})' for p, n in others.items())}); changing it would change theirs. "
                    f"Load with num_threads={next(iter(others.values()))} or num_threads=None, or close() those "
                    f"sessions first")
            current = int(portable_lib._threadpool_get_thread_count())
            loaded = [s.path for s in list(self._open) if s is not session]
            if current != threads and loaded:
                raise UsageError(
                    f"cannot load {session.path} with num_threads={threads}: ExecuTorch has one CPU thread pool per "
                    f"process, now {current} thread(s), and {len(loaded)} open session(s) run on it "
                    f"({', '.join(loaded[:3])}); a program loaded before a reset hangs after it. Load with "
                    f"num_threads={current} or num_threads=None, or close() those sessions first")
            if current != threads:
                self._resetting = True
                try:
                    while self._running:
                        self._cond.wait()
                    portable_lib._unsafe_reset_threadpool(int(threads))
                finally:
                    self._resetting = False
                    self._cond.notify_all()
            self._pinned[session] = threads

    def release(self, session: "ExecuTorchSession") -> None:
        with self._cond:
            self._pinned.pop(session, None)
            self._open.discard(session)

    def running(self) -> "_Running":
        return _Running(self)


class _Running:
    """`ThreadPoolGuard.running()`: one run counted while no reset is under way. A class made once, not per run
    (building a class on every run was a measurable share of a small model's per-run fixed cost)."""

    __slots__ = ("guard",)

    def __init__(self, guard: ThreadPoolGuard) -> None:
        self.guard = guard

    def __enter__(self) -> None:
        guard = self.guard
        with guard._cond:
            while guard._resetting:
                guard._cond.wait()
            guard._running += 1

    def __exit__(self, *exc) -> None:
        guard = self.guard
        with guard._cond:
            guard._running -= 1
            if not guard._running:
                guard._cond.notify_all()


THREADPOOL = ThreadPoolGuard()


class ExecuTorchSession(Session):
    """A `.pte` method. `num_threads` pins ExecuTorch's process-wide thread pool while the session is open
    (a different count asked for by another session meanwhile is refused: see the module docstring)."""

    format = "pte"
    backend = "executorch"
    # A Method has one memory plan and is not re-entrant: `Session.run` locks (the default).
    reentrant = False
    entry_point_option = "method"

    def __init__(self, path: str, num_threads: int | None = None, method: str = "forward") -> None:
        super().__init__(path, num_threads)
        import torch  # noqa: F401  (ExecuTorch's binding needs it loaded first)
        import executorch.kernels.quantized  # noqa: F401  (int8 embedding lookups and other quantized kernels)
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime

        self._torch = torch
        if num_threads is not None:
            if int(num_threads) < 1:
                raise UsageError(f"num_threads must be >= 1, got {num_threads}")
            # Process-wide: ExecuTorch has one CPU threadpool shared by all programs (see THREADPOOL).
            THREADPOOL.claim(self, int(num_threads), portable_lib)
        THREADPOOL.opened(self)
        self._portable_lib = portable_lib
        size = Path(path).stat().st_size
        try:
            program = Runtime.get().load_program(Path(path))
        except Exception as exc:
            raise CorruptArtifactError(f"{path} ({size} bytes) is not a loadable ExecuTorch program: {exc}") from None
        if method not in program.method_names:
            raise CorruptArtifactError(f"{path} has no method {method!r}; methods: {sorted(program.method_names)}")
        meta = self._embedded_meta(program)
        check_fp16_cpu(path, meta)  # before load_method, where XNNPACK would fail on such a CPU
        try:
            self._method = program.load_method(method)
        except Exception as exc:
            raise CorruptArtifactError(f"cannot load method {method!r} of {path}: {exc}") from None
        self._program = program
        self._method_name = method
        mm = self._method.metadata
        in_names = meta.get(META_INPUTS) or [f"input_{i}" for i in range(mm.num_inputs())]
        out_names = meta.get(META_OUTPUTS) or [f"output_{i}" for i in range(mm.num_outputs())]
        if len(in_names) != mm.num_inputs() or len(out_names) != mm.num_outputs():
            raise CorruptArtifactError(f"{path}: embedded names do not match the program's inputs/outputs")
        self._inputs = with_value_ranges([self._info(n, mm.input_tensor_meta(i)) for i, n in enumerate(in_names)],
                                         meta.get(META_VALUE_RANGES) or {})
        self._outputs = [self._info(n, mm.output_tensor_meta(i)) for i, n in enumerate(out_names)]
        self.entry_point = method
        self.buckets, self.bucket_axis = bucket_fields(meta)

    @staticmethod
    def _embedded_meta(program) -> dict:
        if META_METHOD not in program.method_names:
            return {}
        try:
            return decode_meta(program.load_method(META_METHOD).execute([])[0].numpy())
        except Exception:
            return {}

    @staticmethod
    def _info(name: str, meta) -> TensorInfo:
        code = int(meta.dtype())
        if code not in SCALAR_TYPES:
            raise CorruptArtifactError(f"tensor {name!r} has ExecuTorch scalar type {code}, which is not supported")
        return TensorInfo(name, tuple(int(d) for d in meta.sizes()), np.dtype(SCALAR_TYPES[code]))

    def _execute(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        with THREADPOOL.running():
            outputs = self._method.execute([self._torch.from_numpy(a) for a in arrays])
        return [o.numpy() if hasattr(o, "numpy") else np.asarray(o) for o in outputs]

    def close(self) -> None:
        """Unpin the process-wide thread pool (another session may then set its own count)."""
        THREADPOOL.release(self)

    def raw_runner(self, arrays: Sequence[np.ndarray]):
        method, tensors = self._method, [self._torch.from_numpy(a) for a in arrays]
        return lambda: method.execute(tensors)

    def _backend_info(self) -> dict:
        from importlib.metadata import version

        return {"runtime_version": version("executorch"),
                "threadpool_threads": int(self._portable_lib._threadpool_get_thread_count()),
                "methods": sorted(self._program.method_names)}


    def memory_plan(self) -> dict[str, Any]:
        """The method's memory-planned buffers (ExecuTorch plans every non-constant tensor into them at export:
        `ExecutionPlan.non_const_buffer_sizes`), and the program's constant data. Delegates allocate their own
        workspace on top (XNNPACK packs its weights at load), which the peak RSS includes and this does not.
        Read by `pte_program` (pure Python), so the numpy runtime's backend reports the same figures."""
        from device_runtime.backends.pte_program import memory_plan

        try:
            return memory_plan(self.path, self._method_name)
        except CorruptArtifactError as exc:  # a foreign program layout: say so rather than guess
            return {**super().memory_plan(), "note": f"could not read the memory plan: {exc}"}

    # -- profiling -------------------------------------------------------------------------------
    def profile(self, feed: Mapping[str, Any] | Sequence[Any] | None = None, runs: int = 10,
                warmup: int = 2) -> OpProfile:
        """Per-instruction (and per delegated operator) times from ETDump over `runs` runs after `warmup` ones.

        A separate copy of the program is loaded with ETDump enabled; this session is untouched. Times are
        microseconds; see `device_runtime.profile.OpProfile`.
        """
        if runs < 1 or warmup < 0:
            raise UsageError(f"need runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
        arrays = self._validate(feed if feed is not None else self.example_feed())
        try:
            from executorch.devtools import Inspector
            from executorch.devtools.inspector._inspector_utils import TimeScale
        except Exception as exc:  # ImportError, or a devtools dependency missing on a slim device install
            raise ProfilerUnavailableError(f"executorch.devtools (the ETDump Inspector) cannot be imported here: "
                                           f"{type(exc).__name__}: {exc}") from None
        from executorch.runtime import Runtime

        program = Runtime.get().load_program(Path(self.path), enable_etdump=True, debug_buffer_size=0)
        method = program.load_method(self._method_name)
        tensors = [self._torch.from_numpy(a) for a in arrays]
        for _ in range(warmup + runs):
            method.execute(tensors)
        with tempfile.TemporaryDirectory(prefix="pf-etdump-") as tmp:
            etdump = Path(tmp) / "profile.etdp"
            try:
                program.write_etdump_result_to_file(str(etdump), str(Path(tmp) / "debug.bin"))
            except Exception as exc:
                raise ProfilerUnavailableError(f"{NO_EVENT_TRACER} (writing the ETDump failed: {exc})") from None
            if not etdump.exists() or etdump.stat().st_size == 0:
                raise ProfilerUnavailableError(f"{NO_EVENT_TRACER} (the ETDump is empty)")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "Output Buffer not found": no debug buffer was asked for
                inspector = Inspector(etdump_path=str(etdump), source_time_scale=TimeScale.NS,
                                      target_time_scale=TimeScale.US)
            events = inspector_events(inspector)
        from importlib.metadata import version

        table = build_etdump_profile(events, warmup, delegate_backends(self.path, self._method_name),
                                     source=f"executorch {version('executorch')} ETDump + Inspector")
        table.unprofiled_mean_run_us = self._median_run_us(arrays, runs)
        return table


NO_EVENT_TRACER = ("this executorch build records no profiling events: its runtime was built without the event "
                   "tracer (ET_EVENT_TRACER_ENABLED; build with -DEXECUTORCH_BUILD_DEVTOOLS=ON "
                   "-DEXECUTORCH_ENABLE_EVENT_TRACER=ON, or use the PyPI wheel, which has it)")


def inspector_events(inspector) -> list[dict[str, Any]]:
    """The Inspector's events as plain dicts: block, name, raw durations, instruction id, delegate flags."""
    out = []
    for block in inspector.event_blocks:
        for event in block.events:
            perf = event.perf_data
            out.append({"block": block.name, "name": event.name, "raw": list(perf.raw) if perf else [],
                        "instruction": getattr(event, "_instruction_id", None),
                        "delegated": bool(event.is_delegated_op),
                        "delegate_backend": event.delegate_backend_name})
    return out


def delegate_backends(path: str, method: str = "forward") -> dict[int, str]:
    """Instruction index -> delegate backend id (e.g. "XnnpackBackend") of a method's delegate calls.

    Read from the program with ExecuTorch's own deserializer (host side); {} where that is unavailable,
    and the rows then say "delegate".
    """
    try:
        from executorch.exir._serialize._program import deserialize_pte_binary

        pte = deserialize_pte_binary(Path(path).read_bytes())
        program = getattr(pte, "program", pte)
        for plan in program.execution_plan:
            if plan.name != method:
                continue
            found = {}
            for index, instruction in enumerate(plan.chains[0].instructions):
                delegate_index = getattr(instruction.instr_args, "delegate_index", None)
                if delegate_index is not None:
                    found[index] = plan.delegates[delegate_index].id
            return found
    except Exception:
        pass
    return {}


_SUFFIX = re.compile(r"\s+#\d+$")


def build_etdump_profile(events: list[dict[str, Any]], warmup: int, delegates: dict[int, str] | None = None,
                         source: str = "executorch ETDump") -> OpProfile:
    """The per-instruction table from Inspector events (durations in microseconds), dropping warm-up runs.

    ETDump records, per run: `Method::execute`; per kernel instruction an `OPERATOR_CALL` and the kernel's
    `native_call_<op>` inside it; per delegate instruction a `DELEGATE_CALL` and, when the delegate profiles
    itself, its operators (flagged delegated, same instruction id). Each event's `raw` holds one duration
    per execution, in execution order.
    """
    delegates = delegates or {}
    execute = [e for e in events if e["block"] == "Execute" and e["name"] == "Method::execute"]
    if not execute or not execute[0]["raw"]:
        raise ProfilerUnavailableError(f"{NO_EVENT_TRACER} (the ETDump holds no Method::execute events)")
    n_runs = len(execute[0]["raw"])
    if n_runs <= warmup:
        raise ValueError(f"the ETDump holds {n_runs} run(s), none after the {warmup} warm-up run(s)")
    measured_runs = n_runs - warmup
    run_time = float(sum(execute[0]["raw"][warmup:]))

    def measured(raw: list[float]) -> list[float]:
        per_run = max(1, len(raw) // n_runs)  # an instruction executed k times per run has k samples per run
        return [float(x) for x in raw[per_run * warmup:]]

    kernel_names = {e["instruction"]: e["name"][len("native_call_"):] for e in events
                    if e["block"] == "Execute" and e["name"].startswith("native_call_")}
    rows: list[dict[str, Any]] = []
    parents: dict[int, str] = {}
    for e in events:
        if e["block"] != "Execute" or e["delegated"] or not e["raw"]:
            continue
        iid = e["instruction"]
        if e["name"] == "OPERATOR_CALL":
            kernel = kernel_names.get(iid, "unknown")
            rows.append({"op_type": kernel.split(".")[0], "node": f"#{iid} {kernel}", "provider": "kernel",
                         "samples": measured(e["raw"]), "level": 0, "parent": None})
        elif e["name"] == "DELEGATE_CALL":
            backend = delegates.get(iid) or e["delegate_backend"] or "delegate"
            node = f"#{iid} {backend}"
            parents[iid] = node
            rows.append({"op_type": "DELEGATE_CALL", "node": node, "provider": backend,
                         "samples": measured(e["raw"]), "level": 0, "parent": None})
    for e in events:
        if e["block"] != "Execute" or not e["delegated"] or not e["raw"]:
            continue
        iid = e["instruction"]
        parent = parents.get(iid)
        backend = delegates.get(iid) or e["delegate_backend"] or "delegate"
        rows.append({"op_type": _SUFFIX.sub("", str(e["name"])), "node": f"{parent or f'#{iid}'}/{e['name']}",
                     "provider": backend, "samples": measured(e["raw"]), "level": 1, "parent": parent})

    table = []
    for r in rows:
        samples = np.asarray(r["samples"], dtype=np.float64)
        if samples.size == 0:
            continue
        total = float(samples.sum())
        p10, p50, p90 = (float(v) for v in np.percentile(samples, [10, 50, 90]))
        table.append(OpProfileRow(r["op_type"], r["node"], r["provider"], int(samples.size), total,
                                  total / samples.size, total / run_time if run_time else 0.0, r["level"],
                                  r["parent"], p10, p50, p90))
    top = sorted((r for r in table if r.level == 0), key=lambda r: -r.total_us)
    ordered: list[OpProfileRow] = []
    for row in top:  # each delegate call followed by its own operators, slowest first
        ordered.append(row)
        ordered += sorted((r for r in table if r.level == 1 and r.parent == row.node), key=lambda r: -r.total_us)
    ordered += sorted((r for r in table if r.level == 1 and r.parent is None), key=lambda r: -r.total_us)
    profile = OpProfile(ordered, measured_runs, run_time, source)
    inner = sum(r.total_us for r in ordered if r.level == 1)
    calls = sum(r.total_us for r in ordered if r.level == 0 and r.op_type == "DELEGATE_CALL")
    if inner and calls:
        profile.notes.append(f"operators inside a delegate are timed by the delegate's own profiler and are part of "
                             f"the delegate call's row, not added to it; they explain {inner / calls:.0%} of the "
                             f"delegate calls' time (XNNPACK times at 1 us resolution: short operators round down)")
    return profile


register_format(Format("pte", (".pte",), is_pte, "ExecuTorch program"))
# Precedence 1: where executorch-numpy-runtime is installed (backends.executorch_numpy, precedence 0) it runs
# `.pte` without torch; this binding runs them otherwise, or when named.
register_backend(Backend("pte", "executorch", ExecuTorchSession, requires_module(
    "executorch", "the executorch package is not installed (pip install 'pocketformer[pte]')"), precedence=1))
