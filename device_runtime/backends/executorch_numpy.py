"""ExecuTorch `.pte` programs through `executorch-numpy-runtime`: ExecuTorch's C++ runtime and XNNPACK, numpy only.

The PyPI package `executorch-numpy-runtime` (1.4.0, Apache-2.0) links ExecuTorch 1.3.1's runtime with the
portable, optimized and quantized kernels and the XNNPACK delegate, and exchanges numpy arrays: a `.pte` device
process never imports torch (the binding, `backends.executorch`, needs torch loaded first). It needs CPython >=
3.12. Where it is installed it comes first for `.pte` (precedence 0); the binding is the fallback (precedence 1),
and `load(..., backend="executorch")` names it.

What this backend shares with the binding's, so a `.pte` behaves the same through both: the input/output names,
value ranges and buckets embedded by Pocketformer's converter (the `pocketformer_meta` method), one session per
method (`method=`; multi-length and multi-batch programs open as a `BucketedSession`), the input checks of
`Session` (dtype, shape, value ranges, NaN), a lock around each run (`reentrant = False`: a method has one memory
plan; the runtime also serialises calls on one loaded program), and `memory_plan()` (the same reader,
`backends.pte_program`). What differs, and why:

- Threads. The runtime has no thread-count control: ExecuTorch sizes its one process-wide CPU pool at the
  machine's logical cores (`cpuinfo_get_processors_count`, read from /sys/devices/system/cpu) on first use, and
  this package exposes no `_unsafe_reset_threadpool`. So `num_threads=None` runs on that pool, a count equal to
  it is accepted, and any other count raises `UsageError` naming the fixed count (the binding can set it).
- Method initialisation is lazy: the runtime builds a method (XNNPACK packs its weights) on its first run, so
  `load_time_ms` is smaller and `first_run_ms` larger than the binding's; their sum is comparable.
- No per-operator profiler (no ETDump API): `profile()` raises `ProfilerUnavailableError` saying so.

Version compatibility. The runtime is ExecuTorch 1.3.1 and must read programs written by a newer exporter (this
project's is 1.5.1). ExecuTorch 1.3.1 and 1.5.1 write the same program schema (schema/program.fbs, identifier
ET12) and the same XNNPACK delegate schema (diffed); 1.5.1's kernels add `executorch_prim::sym_int`, `sym_ite`,
`sym_not` and `et_copy::_h2d_copy`/`_d2h_copy`, which 1.3.1 lacks. Measured: every fp32, int8-static,
int8-dynamic and int4-weight (per channel and blockwise) export of the tiny MobileViT and TinyBERT, the
multi-length, multi-batch and packed programs, ran here with outputs bit-identical to the binding's. A program
that calls an operator the runtime lacks would load and then fail on its first run with a bare "execute
failed" (measured), and one of another schema fails to load; so every program is read first
(`pte_program.read_program`) and refused before the runtime sees it, with `IncompatibleProgramError` naming
both ExecuTorch versions, when its schema, operators or delegates are not the runtime's.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from device_runtime.backends.executorch import META_INPUTS, META_METHOD, META_OUTPUTS, META_VALUE_RANGES, \
    SCALAR_TYPES, bucket_fields, check_fp16_cpu, decode_meta
from device_runtime.backends.pte_program import incompatibilities, memory_plan, read_program
from device_runtime.errors import BackendUnavailableError, CorruptArtifactError, IncompatibleProgramError, UsageError
from device_runtime.profile import PROFILER_GAPS
from device_runtime.registry import Backend, module_present, register_backend
from device_runtime.session import Session, TensorInfo, with_value_ranges

BACKEND = "executorch_numpy"
MODULE = "executorch_numpy_runtime"
PACKAGE = "executorch-numpy-runtime"
INSTALL = f"pip install {PACKAGE}==1.4.0 (CPython >= 3.12; numpy is its only dependency)"
# The program schema (schema/program.fbs `file_identifier`) each ExecuTorch runtime release reads. A release not
# listed is not checked here: ExecuTorch itself refuses another schema at load, cleanly (measured on 1.3.1).
PROGRAM_SCHEMA = {"1.3.1": "ET12"}


def unavailable() -> str | None:
    """Why this backend cannot run here (None when it can), without importing the runtime."""
    if sys.version_info < (3, 12):
        # Its abi3 wheel uses CPython 3.12's API (PyObject_GetTypeData): on 3.11 the import fails.
        return (f"{PACKAGE} needs CPython >= 3.12, this is {sys.version.split()[0]} (use the ExecuTorch binding, "
                f"backend 'executorch', or a Python >= 3.12 device environment)")
    if not module_present(MODULE):
        return f"{PACKAGE} is not installed ({INSTALL})"
    return None


def import_runtime():
    try:
        import executorch_numpy_runtime
    except ImportError as exc:
        raise BackendUnavailableError(f"{PACKAGE} cannot be imported here: {exc} ({INSTALL})") from None
    return executorch_numpy_runtime


def pool_threads() -> int:
    """The size of ExecuTorch's CPU pool in this process: the logical cores cpuinfo counts (/sys, as it reads)."""
    for name in ("present", "possible"):
        try:
            with open(f"/sys/devices/system/cpu/{name}") as fh:
                spec = fh.read().strip()
        except OSError:
            continue
        count = 0
        for part in filter(None, spec.split(",")):
            lo, _, hi = part.partition("-")
            count += int(hi or lo) - int(lo) + 1
        if count:
            return count
    return os.cpu_count() or 1


def exporter_version(path: str) -> str | None:
    """The ExecuTorch version that wrote `path`, from the report.json beside it (None when it says nothing)."""
    from device_runtime.manifest import ManifestError, read_manifest

    try:
        entry = read_manifest(Path(path).parent).artifacts.get(Path(path).name)
    except (ManifestError, OSError, ValueError):
        return None
    return (entry.tools or {}).get("executorch") if entry else None


def runtime_versions(en) -> tuple[str, str]:
    """(package version, ExecuTorch version) of the installed runtime."""
    return str(getattr(en, "__version__", "?")), str(getattr(en, "__et_version__", "?"))


def check_compatible(path: str, summary, en) -> None:
    """Raise `IncompatibleProgramError` when the program asks for what this runtime lacks (before it loads)."""
    package, et = runtime_versions(en)
    info = en.runtime_info()
    problems = incompatibilities(summary, PROGRAM_SCHEMA.get(et), set(info.get("operators") or []),
                                 set(info.get("backends") or []))
    if not problems:
        return
    exporter = exporter_version(path)
    written = f"ExecuTorch {exporter}" if exporter else "an ExecuTorch version no report.json beside it records"
    raise IncompatibleProgramError(
        f"{path} cannot run on {PACKAGE} {package} (ExecuTorch {et}); it was written by {written}: "
        + "; ".join(problems) + f". Run it through the ExecuTorch binding (backend 'executorch', pip install "
        f"executorch{'==' + exporter if exporter else ''}), or export it with ExecuTorch {et}")


class NumpyExecuTorchSession(Session):
    """A `.pte` method through executorch-numpy-runtime (see the module docstring for what differs)."""

    format = "pte"
    backend = BACKEND
    reentrant = False
    entry_point_option = "method"

    def __init__(self, path: str, num_threads: int | None = None, method: str = "forward") -> None:
        super().__init__(path, num_threads)
        en = import_runtime()
        self._pool = pool_threads()
        if num_threads is not None:
            if int(num_threads) < 1:
                raise UsageError(f"num_threads must be >= 1, got {num_threads}")
            if int(num_threads) != self._pool:
                raise UsageError(
                    f"cannot load {path} with num_threads={num_threads} through {PACKAGE}: it has no thread-count "
                    f"control, and ExecuTorch's CPU pool is fixed at {self._pool} thread(s) here (the logical "
                    f"cores). Load with num_threads=None or {self._pool}, or use the ExecuTorch binding (backend "
                    f"'executorch'), which can set the count")
        self._versions, self._exported_by = runtime_versions(en), exporter_version(path)
        summary = read_program(path)  # CorruptArtifactError on a malformed flatbuffer, before native code reads it
        check_compatible(path, summary, en)
        if method not in summary.methods:
            raise CorruptArtifactError(f"{path} has no method {method!r}; methods: {sorted(summary.methods)}")
        try:
            program = en.Runtime.get().load_program(str(path))
            self._method = program.load_method(method)
            mm = self._method.metadata
        except en.ExecuTorchError as exc:
            size = Path(path).stat().st_size
            raise CorruptArtifactError(f"{path} ({size} bytes) is not a loadable ExecuTorch program: {exc}") from None
        self._program, self._method_name = program, method
        self._methods = sorted(summary.methods)
        meta = self._embedded_meta(program)
        check_fp16_cpu(path, meta)  # the method initialises XNNPACK lazily: this is still before it does
        in_meta, out_meta = mm.get("inputs") or [], mm.get("outputs") or []
        in_names = meta.get(META_INPUTS) or [f"input_{i}" for i in range(len(in_meta))]
        out_names = meta.get(META_OUTPUTS) or [f"output_{i}" for i in range(len(out_meta))]
        if len(in_names) != len(in_meta) or len(out_names) != len(out_meta):
            raise CorruptArtifactError(f"{path}: embedded names do not match the program's inputs/outputs")
        self._inputs = with_value_ranges([self._info(n, m) for n, m in zip(in_names, in_meta)],
                                         meta.get(META_VALUE_RANGES) or {})
        self._outputs = [self._info(n, m) for n, m in zip(out_names, out_meta)]
        self.entry_point = method
        self.buckets, self.bucket_axis = bucket_fields(meta)

    @staticmethod
    def _embedded_meta(program) -> dict:
        if META_METHOD not in program.method_names:
            return {}
        try:
            return decode_meta(program.load_method(META_METHOD)([])[0])
        except Exception:  # a foreign or damaged meta method: fall back to generic names, as the binding does
            return {}

    @staticmethod
    def _info(name: str, meta: dict) -> TensorInfo:
        code = int(meta.get("scalar_type", -1))
        if code not in SCALAR_TYPES:
            raise CorruptArtifactError(f"tensor {name!r} has ExecuTorch scalar type {code}, which is not supported")
        return TensorInfo(name, tuple(int(d) for d in meta.get("shape") or ()), np.dtype(SCALAR_TYPES[code]))

    def _execute(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        return [np.asarray(o) for o in self._method(arrays)]  # fresh copies, never views of runtime memory

    def raw_runner(self, arrays: Sequence[np.ndarray]):
        method, arrays = self._method, list(arrays)
        return lambda: method(arrays)

    def _backend_info(self) -> dict:
        package, et = self._versions
        return {"runtime_version": et, "runtime_package": f"{PACKAGE} {package}", "threadpool_threads": self._pool,
                "methods": self._methods, "exported_by": self._exported_by}

    def memory_plan(self) -> dict[str, Any]:
        return memory_plan(self.path, self._method_name)


PROFILER_GAPS[BACKEND] = (f"{PACKAGE} exposes no ETDump or event tracer; profile the same .pte through the "
                          "ExecuTorch binding (backend 'executorch', on a Python with torch)")
register_backend(Backend("pte", BACKEND, NumpyExecuTorchSession, unavailable, precedence=0))
