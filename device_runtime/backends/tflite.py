"""LiteRT / TensorFlow Lite `.tflite` flatbuffers, through `ai_edge_litert` or `tflite_runtime`.

Two backends share one Interpreter API: `ai_edge_litert` (precedence 0, the maintained LiteRT wheel) and
`tflite_runtime` (precedence 1, the older wheel that many edge boards still ship). Which one runs is chosen
by `device_runtime.load` (first installed, or the one named) and reported in `session.info["backend"]`;
there is no fallback between them at run time.

Every file is checked by the pure-Python `verify_flatbuffer` (`device_runtime.backends.tflite_verifier`)
before the native interpreter reads it: a corrupt file is a `CorruptArtifactError`, never a crash.

This module imports numpy and the interpreter only; never torch.
"""
from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from device_runtime.backends.tflite_verifier import FILE_IDENTIFIER, verify_flatbuffer
from device_runtime.errors import CorruptArtifactError, InputError, UsageError
from device_runtime.registry import Backend, Format, read_head, register_backend, register_format
from device_runtime.registry import module_present as _module_present  # tests replace this name
from device_runtime.buckets import buckets_from_entry_points
from device_runtime.session import QuantParams, Session, TensorInfo


def is_tflite(path: Path) -> bool:
    # A .tflite is a flatbuffer whose file identifier (bytes 4..8) is "TFL3".
    if not path.is_file():
        return False
    head = read_head(path, 8)
    return len(head) == 8 and head[4:8] == FILE_IDENTIFIER


_RUNTIMES = {
    # backend name -> (module holding Interpreter, pip requirement)
    "ai_edge_litert": ("ai_edge_litert.interpreter", "ai-edge-litert (pip install 'pocketformer[tflite]')"),
    "tflite_runtime": ("tflite_runtime.interpreter", "tflite-runtime (pip install tflite-runtime)"),
}


def _available(name: str):
    def check() -> str | None:
        if not _module_present(name):
            return f"the {name} package is not installed: {_RUNTIMES[name][1]}"
        return None

    return check


def _quant(details: dict) -> QuantParams | None:
    params = details.get("quantization_parameters") or {}
    scales = np.asarray(params.get("scales", []))
    zeros = np.asarray(params.get("zero_points", []))
    if scales.size == 1:
        return QuantParams(float(scales[0]), int(zeros[0]) if zeros.size else 0)
    scale, zero = details.get("quantization", (0.0, 0))
    if scales.size == 0 and scale:
        return QuantParams(float(scale), int(zero))
    return None  # float, or per-channel (not used for model I/O)


def _tensor_info(name: str, details: dict) -> TensorInfo:
    shape = [int(d) for d in details["shape"]]
    signature = details.get("shape_signature")
    if signature is not None and len(signature) == len(shape):
        dims = tuple(None if int(s) < 0 else d for s, d in zip(signature, shape))
    else:
        dims = tuple(shape)
    return TensorInfo(name, dims, np.dtype(details["dtype"]), _quant(details),
                      {i: f"dim_{i}" for i, d in enumerate(dims) if d is None})


class TFLiteSession(Session):
    format = "tflite"
    # A LiteRT Interpreter is not thread-safe (set_tensor/invoke/get_tensor share its tensors; measured here:
    # 8 threads on one interpreter gave wrong outputs in ~1 of 5 runs): `Session.run` locks (the default).
    reentrant = False
    entry_point_option = "signature"

    def __init__(self, path: str, num_threads: int | None = None, signature: str | None = None,
                 runtime: str = "ai_edge_litert") -> None:
        super().__init__(path, num_threads)
        self.backend = runtime
        summary = verify_flatbuffer(path)
        module = importlib.import_module(_RUNTIMES[runtime][0])
        # None: every core of this machine (the interpreters' own default is a single thread).
        threads = int(num_threads) if num_threads is not None else (os.cpu_count() or 1)
        if threads < 1:
            raise UsageError(f"num_threads must be >= 1, got {num_threads}")
        self.threads = threads
        try:
            interpreter = module.Interpreter(model_path=str(path), num_threads=threads)
        except (ValueError, RuntimeError) as exc:
            raise CorruptArtifactError(f"{runtime} could not read {path}: {exc}") from None
        try:
            interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise CorruptArtifactError(f"{runtime} could not prepare {path} (an op this runtime cannot run, or "
                                       f"inconsistent tensors): {str(exc).strip()}") from None
        self._interpreter = interpreter
        self._summary = summary
        signatures = {s["key"]: s for s in summary["signatures"]}
        if signature is not None and signature not in signatures:
            raise InputError(f"{path} has no signature {signature!r}; signatures: {sorted(signatures) or 'none'}")
        self.signature = signature or (summary["signatures"][0]["key"] if summary["signatures"] else None)
        try:
            if self.signature is not None:
                self._init_signature(signatures[self.signature])
            else:
                self._init_plain()
        except (ValueError, RuntimeError, KeyError, UnicodeDecodeError) as exc:
            raise CorruptArtifactError(f"{runtime} could not describe the inputs/outputs of {path}: {exc}") from None
        self.entry_point = self.signature
        # A multi-length (or multi-batch) file names one signature per size (device_runtime.buckets.BucketAxis).
        axis, self.buckets = buckets_from_entry_points(list(signatures), every=True)
        self.bucket_axis = axis.name if axis else "sequence"

    def _init_signature(self, sdef: dict) -> None:
        self._runner = self._interpreter.get_signature_runner(self.signature)
        graph = self._summary["subgraphs"][sdef["subgraph"]]
        in_details, out_details = self._runner.get_input_details(), self._runner.get_output_details()
        # Order by the subgraph's own input/output order (the traced function's argument order);
        # signature defs may list names alphabetically.
        position = {t: i for i, t in enumerate(graph["inputs"])}
        names = sorted((n for n, _ in sdef["inputs"]), key=lambda n: position.get(in_details[n]["index"], 1 << 30))
        position = {t: i for i, t in enumerate(graph["outputs"])}
        out_names = sorted((n for n, _ in sdef["outputs"]),
                           key=lambda n: position.get(out_details[n]["index"], 1 << 30))
        self._inputs = [_tensor_info(n, in_details[n]) for n in names]
        self._outputs = [_tensor_info(n, out_details[n]) for n in out_names]

    def _init_plain(self) -> None:
        self._runner = None
        self._in_details = self._interpreter.get_input_details()
        self._out_details = self._interpreter.get_output_details()
        self._inputs = [_tensor_info(d["name"], d) for d in self._in_details]
        self._outputs = [_tensor_info(d["name"], d) for d in self._out_details]

    def _execute(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        if self._runner is not None:
            result = self._runner(**{t.name: a for t, a in zip(self._inputs, arrays)})
            return [np.asarray(result[t.name]) for t in self._outputs]
        it = self._interpreter
        resized = False
        for d, a in zip(self._in_details, arrays):
            if tuple(a.shape) != tuple(int(x) for x in d["shape"]):
                it.resize_tensor_input(d["index"], list(a.shape), strict=True)
                resized = True
        if resized:
            it.allocate_tensors()
            self._in_details = it.get_input_details()
            self._out_details = it.get_output_details()
        for d, a in zip(self._in_details, arrays):
            it.set_tensor(d["index"], a)
        it.invoke()
        return [it.get_tensor(d["index"]) for d in self._out_details]

    def raw_runner(self, arrays: Sequence[np.ndarray]):
        if self._runner is not None:
            runner, kwargs = self._runner, {t.name: a for t, a in zip(self._inputs, arrays)}
            return lambda: runner(**kwargs)
        it, details, outs = self._interpreter, self._in_details, self._out_details

        def call():  # set, invoke, get; unlike `_execute`, no resize: for feeds of the allocated shapes
            for d, a in zip(details, arrays):
                it.set_tensor(d["index"], a)
            it.invoke()
            return [it.get_tensor(d["index"]) for d in outs]
        return call

    def memory_plan(self) -> dict[str, Any]:
        """Tensor bytes from the flatbuffer: the signature's non-constant tensors (the most LiteRT's arena can
        need; its planner shares memory between tensors whose lifetimes do not overlap, so the arena is smaller)
        and the constant buffers. LiteRT's Python API does not expose the arena size itself (`benchmark_model
        --report_peak_memory_footprint` on a device does)."""
        index = next((s["subgraph"] for s in self._summary["signatures"] if s["key"] == self.signature), 0)
        return {"planned_bytes": int(self._summary["subgraphs"][index]["variable_tensor_bytes"]),
                "constant_bytes": int(self._summary["constant_bytes"]),
                "source": "flatbuffer tensor sizes (an upper bound of the arena)",
                "note": "arena upper bound: LiteRT reuses memory between tensors; XNNPACK packs weights at load"}

    def _backend_info(self) -> dict[str, Any]:
        from importlib.metadata import PackageNotFoundError, version

        try:
            runtime_version = version(self.backend.replace("_", "-"))
        except PackageNotFoundError:
            runtime_version = getattr(sys.modules.get(self.backend), "__version__", "unknown")
        delegates = None
        try:  # nodes the default delegate (XNNPACK) replaced show up as extra DELEGATE nodes
            wrapper = self._interpreter._interpreter
            delegates = sum(1 for i in range(wrapper.NumNodes()) if wrapper.NodeName(i) == "DELEGATE")
        except Exception:
            pass
        return {"runtime_version": runtime_version, "threads": self.threads, "signature": self.signature,
                "subgraphs": len(self._summary["subgraphs"]),
                "operators": sum(g["operators"] for g in self._summary["subgraphs"]),
                "delegate_partitions": delegates, "size_bytes": os.path.getsize(self.path)}


def _opener(runtime: str):
    def open_session(path: str, num_threads: int | None = None, **options) -> TFLiteSession:
        return TFLiteSession(path, num_threads, runtime=runtime, **options)

    return open_session


register_format(Format("tflite", (".tflite",), is_tflite, "LiteRT / TensorFlow Lite flatbuffer"))
register_backend(Backend("tflite", "ai_edge_litert", _opener("ai_edge_litert"), _available("ai_edge_litert"), 0))
register_backend(Backend("tflite", "tflite_runtime", _opener("tflite_runtime"), _available("tflite_runtime"), 1))
