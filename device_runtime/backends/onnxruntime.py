"""ONNX `.onnx` models through ONNX Runtime (`onnxruntime`, imported lazily on load).

Options of `device_runtime.load(path, ...)` for this backend:
- `providers`: execution providers in precedence order (default `["CPUExecutionProvider"]`). Every one named
  must be available in the installed ORT build, else `BackendUnavailableError` lists the ones that are: no
  silent fallback. ORT assigns each node to the first listed provider that has a kernel for it.
- `num_threads` -> `SessionOptions.intra_op_num_threads` (threads inside one op; inter-op stays sequential).
- `graph_optimization`: "disabled" | "basic" | "extended" | "all" (ORT's default "all").

`session.profile(feed, runs)` runs the model under ORT's own profiler and returns the per-operator table.

Sniffing. An ONNX file is a protobuf `ModelProto` with no magic number. Every writer (onnx, torch, ORT)
serialises fields in field-number order, so the file starts with field 1 `ir_version` (tag 0x08, a varint
1..~15) followed by one of the next ModelProto fields (`opset_import`, `producer_name`, `graph`, ...). That
header, or the `.onnx` suffix, identifies the format; whether the rest parses is ORT's call, and a failure is a
`CorruptArtifactError` that says so.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from device_runtime.backends.ascend import OM_MAGIC_BYTES
from device_runtime.backends.executorch import FILE_IDENTIFIER_PREFIX as PTE_IDENTIFIER_PREFIX
from device_runtime.backends.tflite_verifier import FILE_IDENTIFIER as TFLITE_IDENTIFIER
from device_runtime.errors import BackendUnavailableError, CorruptArtifactError, UsageError
from device_runtime.profile import OpProfile, OpProfileRow  # the shared per-operator table
from device_runtime.registry import (Backend, Format, read_head, register_backend, register_format,
                                     requires_module)
from device_runtime.buckets import ONNX_BATCH_METADATA_KEY, ONNX_METADATA_KEY
from device_runtime.session import Session, TensorInfo, with_value_ranges

DEFAULT_PROVIDERS = ("CPUExecutionProvider",)
# The ModelProto `metadata_props` key under which converters.onnx records the inputs' inclusive value ranges, as
# JSON {input: [min, max]}; `Session._validate` checks feeds against them (ORT's Gather wraps a negative id).
METADATA_VALUE_RANGES = "pocketformer.value_ranges"
# Tags (field number << 3 | wire type) of the ModelProto fields that can follow ir_version.
_NEXT_FIELD_TAGS = {0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42, 0x72, 0xA2, 0xCA}
MAX_IR_VERSION = 32  # today 11; leave room, reject nonsense
ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(int16)": np.int16, "tensor(uint16)": np.uint16,
    "tensor(int32)": np.int32, "tensor(uint32)": np.uint32, "tensor(int64)": np.int64,
    "tensor(uint64)": np.uint64, "tensor(bool)": np.bool_,
}


def _varint(data: bytes, pos: int) -> tuple[int | None, int]:
    value, shift = 0, 0
    while pos < len(data) and shift < 64:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    return None, pos


def onnx_header_ok(head: bytes) -> bool:
    """True when `head` starts like a serialized ModelProto: ir_version, then a known next field."""
    if len(head) < 3 or head[0] != 0x08:
        return False
    ir_version, pos = _varint(head, 1)
    if ir_version is None or not 1 <= ir_version <= MAX_IR_VERSION or pos >= len(head):
        return False
    return head[pos] in _NEXT_FIELD_TAGS


def is_onnx(path: Path) -> bool:
    if not path.is_file():
        return False
    head = read_head(path, 16)
    if onnx_header_ok(head):
        return True
    # A `.onnx` whose bytes are no ModelProto is claimed (loading then says it is corrupt), unless the bytes are
    # another format's: a flatbuffer identifier (TFLite "TFL3", ExecuTorch "ET..") or an Ascend .om header.
    foreign = (head[4:8] == TFLITE_IDENTIFIER or head[4:6] == PTE_IDENTIFIER_PREFIX
               or head[:4] == OM_MAGIC_BYTES)
    return path.suffix.lower() == ".onnx" and not foreign


class OnnxRuntimeSession(Session):
    format = "onnx"
    backend = "onnxruntime"
    # `InferenceSession.run` is thread-safe (ORT's documented guarantee): concurrent `run`s overlap, no lock.
    reentrant = True

    def __init__(self, path: str, num_threads: int | None = None, providers: Sequence[str] | None = None,
                 graph_optimization: str = "all", provider_options: Sequence[dict] | None = None) -> None:
        super().__init__(path, num_threads)
        import onnxruntime as ort

        self._ort = ort
        head = read_head(Path(path), 16)
        size = Path(path).stat().st_size
        if not onnx_header_ok(head):
            raise CorruptArtifactError(
                f"{path} ({size} bytes) does not start like an ONNX ModelProto (expected field 1 ir_version, "
                f"byte 0x08, then a ModelProto field; got {head[:8].hex(' ')}): not an ONNX model, or corrupt")
        self.providers = list(providers) if providers else list(DEFAULT_PROVIDERS)
        available = ort.get_available_providers()
        missing = [p for p in self.providers if p not in available]
        if missing:
            raise BackendUnavailableError(f"execution provider(s) {missing} are not in this onnxruntime build "
                                          f"({ort.__version__}); available, in ORT's order: {available}")
        self.graph_optimization = graph_optimization
        self._provider_options = list(provider_options) if provider_options else None
        self._session = self._make_session()
        actual = self._session.get_providers()
        if actual[: len(self.providers)] != self.providers:
            raise BackendUnavailableError(f"ONNX Runtime could not register {self.providers} (it runs with "
                                          f"{actual}); check the provider's libraries and options")
        self._inputs = with_value_ranges([self._info(i) for i in self._session.get_inputs()], self._value_ranges())
        self._outputs = [self._info(o) for o in self._session.get_outputs()]
        self._input_names = [t.name for t in self._inputs]
        self.buckets = {length: None for length in self._metadata(ONNX_METADATA_KEY, [])}
        # `export --batch-sizes`: the batch axis is dynamic (any number of rows runs as it is); these are the
        # sizes the export verified against PyTorch.
        self.batch_sizes = sorted(int(n) for n in self._metadata(ONNX_BATCH_METADATA_KEY, []))

    def _value_ranges(self) -> dict:
        """The ranges recorded in the model's metadata_props ({} for a foreign or older model, or unreadable)."""
        ranges = self._metadata(METADATA_VALUE_RANGES, {})
        return ranges if isinstance(ranges, dict) else {}

    def _metadata(self, key: str, default):
        """A JSON value Pocketformer recorded in the model's metadata_props (`default` when absent or unreadable)."""
        try:
            raw = self._session.get_modelmeta().custom_metadata_map.get(key)
            return json.loads(raw) if raw else default
        except (ValueError, AttributeError):
            return default

    def _options(self, profile_prefix: str | None = None):
        ort = self._ort
        levels = {"disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                  "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                  "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                  "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
        if self.graph_optimization not in levels:
            raise UsageError(f"graph_optimization must be one of {list(levels)}, got {self.graph_optimization!r}")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = levels[self.graph_optimization]
        if self.num_threads is not None:
            if int(self.num_threads) < 1:
                raise UsageError(f"num_threads must be >= 1, got {self.num_threads}")
            options.intra_op_num_threads = int(self.num_threads)
        options.inter_op_num_threads = 1
        if profile_prefix is not None:
            options.enable_profiling = True
            options.profile_file_prefix = profile_prefix
        return options

    def _make_session(self, profile_prefix: str | None = None):
        size = Path(self.path).stat().st_size
        try:
            return self._ort.InferenceSession(self.path, self._options(profile_prefix), providers=self.providers,
                                              provider_options=self._provider_options)
        except (BackendUnavailableError, ValueError):
            raise
        except Exception as exc:  # ORT raises InvalidProtobuf, InvalidGraph, Fail, NotImplemented, ...
            kind = type(exc).__name__
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else kind
            message = re.sub(r"^\[ONNXRuntimeError\] : \d+ : [A-Z_]+ : ", "", message)[:600]
            hint = " (the file is truncated or is not an ONNX model)" if kind == "InvalidProtobuf" else ""
            raise CorruptArtifactError(f"{self.path} ({size} bytes) is not a loadable ONNX model{hint}; "
                                       f"onnxruntime {self._ort.__version__} says {kind}: {message}") from None

    @staticmethod
    def _info(arg) -> TensorInfo:
        if arg.type not in ORT_TYPES:
            raise CorruptArtifactError(f"tensor {arg.name!r} has ONNX type {arg.type}, which is not supported")
        shape, dynamic = [], {}
        for axis, dim in enumerate(arg.shape or []):
            if isinstance(dim, int) and dim >= 0:
                shape.append(dim)
            else:
                shape.append(None)
                dynamic[axis] = dim if isinstance(dim, str) and dim else f"dim_{axis}"
        return TensorInfo(arg.name, tuple(shape), np.dtype(ORT_TYPES[arg.type]), None, dynamic)

    def _execute(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        return self._session.run(None, dict(zip(self._input_names, arrays)))

    def raw_runner(self, arrays: Sequence[np.ndarray]):
        session, feed = self._session, dict(zip(self._input_names, arrays))
        return lambda: session.run(None, feed)

    def memory_plan(self) -> dict[str, Any]:
        """ONNX Runtime plans activation memory at the first run (`enable_mem_pattern`, with its CPU arena) and
        does not report the plan through its Python API; the weights are the file's initializers."""
        options = self._session.get_session_options()
        return {"planned_bytes": None, "constant_bytes": Path(self.path).stat().st_size,
                "source": "file size (initializers)",
                "note": f"ORT plans at the first run (mem_pattern={options.enable_mem_pattern}, "
                        f"cpu_mem_arena={options.enable_cpu_mem_arena}) and does not report it; see peak RSS"}

    def _backend_info(self) -> dict[str, Any]:
        options = self._session.get_session_options()
        return {"runtime_version": self._ort.__version__, "providers": self._session.get_providers(),
                "requested_providers": self.providers, "graph_optimization": self.graph_optimization,
                "intra_op_num_threads": options.intra_op_num_threads}

    # -- profiling -------------------------------------------------------------------------------
    def profile(self, feed: Mapping[str, Any] | Sequence[Any] | None = None, runs: int = 10,
                warmup: int = 2) -> OpProfile:
        """Per-node times from ONNX Runtime's own profiler over `runs` runs (after `warmup` unrecorded ones).

        A separate profiling session of the same model and options is opened, run and closed; this session
        is untouched. Rows are per node, slowest first; see `OpProfile` for the totals and `by_op_type()`.
        """
        if runs < 1 or warmup < 0:
            raise UsageError(f"need runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
        arrays = self._validate(feed if feed is not None else self.example_feed())
        named = dict(zip(self._input_names, arrays))
        with tempfile.TemporaryDirectory(prefix="pf-ort-profile-") as tmp:
            session = self._make_session(profile_prefix=os.path.join(tmp, "ort"))
            for _ in range(warmup + runs):
                session.run(None, named)
            trace = session.end_profiling()
            with open(trace) as fh:
                events = json.load(fh)
        table = parse_ort_profile(events, warmup=warmup, source=f"onnxruntime {self._ort.__version__} profiler")
        # The profiler's own bookkeeping (~10 us per node event) inflates runs of small models several-fold:
        # time the same feed without it so the report can show by how much.
        samples = []
        for _ in range(runs):
            start = time.perf_counter()
            self._session.run(None, named)
            samples.append(time.perf_counter() - start)
        table.unprofiled_mean_run_us = float(np.median(samples) * 1e6)
        return table


def parse_ort_profile(events: list[dict], warmup: int = 0, source: str = "onnxruntime profiler") -> OpProfile:
    """Turn ORT's Chrome-trace JSON into the per-node table, dropping the first `warmup` runs.

    ORT records one `Session`/`model_run` event per run and one `Node`/`<node>_kernel_time` event per kernel
    execution (args: op_name, provider); both have `ts` and `dur` in microseconds. A node event belongs to the
    run whose interval contains its start.
    """
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                  key=lambda e: e["ts"])
    measured = runs[warmup:]
    if not measured:
        raise ValueError(f"the profile holds {len(runs)} run(s), none after the {warmup} warm-up run(s)")
    windows = [(e["ts"], e["ts"] + e["dur"]) for e in measured]
    starts = np.array([w[0] for w in windows])
    rows: dict[str, dict[str, Any]] = {}
    for event in events:
        if event.get("cat") != "Node" or not str(event.get("name", "")).endswith("_kernel_time"):
            continue
        ts = event["ts"]
        k = int(np.searchsorted(starts, ts, side="right")) - 1
        if k < 0 or ts > windows[k][1]:
            continue  # a warm-up run's node, or outside every measured run
        args = event.get("args", {})
        node = event["name"][: -len("_kernel_time")]
        row = rows.setdefault(node, {"op_type": args.get("op_name", "?"), "provider": args.get("provider", "?"),
                                     "count": 0, "total_us": 0.0})
        row["count"] += 1
        row["total_us"] += float(event.get("dur", 0))
    run_time = float(sum(e["dur"] for e in measured))
    table = [OpProfileRow(r["op_type"], node, r["provider"], r["count"], r["total_us"],
                          r["total_us"] / r["count"], r["total_us"] / run_time if run_time else 0.0)
             for node, r in rows.items()]
    table.sort(key=lambda r: -r.total_us)
    return OpProfile(table, len(measured), run_time, source)


register_format(Format("onnx", (".onnx",), is_onnx, "ONNX model (protobuf ModelProto)"))
register_backend(Backend("onnx", "onnxruntime", OnnxRuntimeSession, requires_module(
    "onnxruntime", "the onnxruntime package is not installed (pip install 'pocketformer[onnx]')")))
