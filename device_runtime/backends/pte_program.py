"""What a `.pte` asks of the runtime, read from its flatbuffer in pure Python, before any native code loads it.

A `.pte` is an ExecuTorch `Program` flatbuffer (schema/program.fbs; file identifier "ET" + two digits), optionally
followed by an extended header ("eh00": the flatbuffer's size, then data segments holding weights and delegate
blobs). `read_program` walks only the flatbuffer part: per method (ExecutionPlan) its name, the operators its
kernel instructions call ("name.overload", as runtimes list them), the delegates it was lowered to
("XnnpackBackend"), and its memory-planned buffer sizes. Every offset is bounds-checked: a truncated or
foreign file raises `CorruptArtifactError`, never reads out of range.

Both `.pte` backends use it: for `memory_plan()` (the same figures through the binding and the numpy runtime)
and, for a runtime older than the exporter, to refuse a program before loading it (`incompatibilities`).

`fp16_unsupported` answers the other question an fp16 program asks, of the CPU: XNNPACK runs fp16 only where the
CPU has fp16 arithmetic (arm64: ARMv8.2-A FP16, `asimdhp`) or, on x86, F16C with AVX (fp16 widened to fp32 per
kernel); XNNPACK's `xnn_is_f16_compatible_config` (src/xnnpack/hardware-config.h) gates every f16 operator
config, and without it ExecuTorch's delegate fails at runtime creation (`xnn_status_unsupported_hardware`,
measured on the Cortex-A72 board: the binding fails in load_method, the numpy runtime in the first run).
Standard library only.
"""
from __future__ import annotations

import platform
import struct
from dataclasses import dataclass, field
from pathlib import Path

from device_runtime.errors import CorruptArtifactError

EXTENDED_HEADER_MAGIC = b"eh00"  # at byte 8, right after the flatbuffer's root offset and file identifier

# Field ids (declaration order) of the schema tables read here; checked against ExecuTorch 1.3.1's and 1.5.1's
# schema/program.fbs, which are identical apart from comments (diffed).
PROGRAM_PLANS = 1
PLAN_NAME, PLAN_OPERATORS, PLAN_DELEGATES, PLAN_BUFFER_SIZES = 0, 6, 7, 8
OPERATOR_NAME, OPERATOR_OVERLOAD = 0, 1
DELEGATE_ID = 0


@dataclass
class MethodSummary:
    name: str
    operators: list[str] = field(default_factory=list)  # "aten::add.out"; a bare name where the overload is empty
    delegates: list[str] = field(default_factory=list)  # backend ids, one per delegate call site
    non_const_buffer_sizes: list[int] = field(default_factory=list)


@dataclass
class ProgramSummary:
    identifier: str  # the flatbuffer file identifier, e.g. "ET12": the program schema version
    program_bytes: int  # the flatbuffer's size (the rest of the file is data segments)
    methods: dict[str, MethodSummary] = field(default_factory=dict)


class _Reader:
    """Bounds-checked little-endian flatbuffer access over `data`."""

    def __init__(self, data: bytes, path: str) -> None:
        self.data, self.path = data, path

    def _unpack(self, fmt: str, at: int):
        size = struct.calcsize(fmt)
        if at < 0 or at + size > len(self.data):
            raise CorruptArtifactError(f"{self.path}: the program flatbuffer is truncated or malformed "
                                       f"(offset {at} is outside its {len(self.data)} bytes)")
        return struct.unpack_from(fmt, self.data, at)[0]

    def field(self, table: int, index: int) -> int | None:
        """Absolute position of a table's field, or None where the field is absent (default value)."""
        vtable = table - self._unpack("<i", table)
        vtable_size = self._unpack("<H", vtable)
        slot = 4 + 2 * index
        if slot + 2 > vtable_size:
            return None
        offset = self._unpack("<H", vtable + slot)
        return table + offset if offset else None

    def deref(self, at: int) -> int:
        return at + self._unpack("<I", at)

    def string(self, table: int, index: int) -> str:
        at = self.field(table, index)
        if at is None:
            return ""
        start = self.deref(at)
        length = self._unpack("<I", start)
        if start + 4 + length > len(self.data):
            raise CorruptArtifactError(f"{self.path}: a string runs past the end of the program flatbuffer")
        return self.data[start + 4:start + 4 + length].decode("utf-8", errors="replace")

    def vector(self, table: int, index: int) -> tuple[int, int]:
        """(position of the first element, length) of a vector field; (0, 0) where absent."""
        at = self.field(table, index)
        if at is None:
            return 0, 0
        start = self.deref(at)
        return start + 4, self._unpack("<I", start)

    def tables(self, table: int, index: int) -> list[int]:
        first, n = self.vector(table, index)
        return [self.deref(first + 4 * i) for i in range(n)]

    def int64s(self, table: int, index: int) -> list[int]:
        first, n = self.vector(table, index)
        return [self._unpack("<q", first + 8 * i) for i in range(n)]


def program_size(head: bytes, file_size: int) -> int:
    """Bytes of the flatbuffer at the start of a `.pte`: the extended header's figure, else the whole file."""
    if len(head) >= 24 and head[8:12] == EXTENDED_HEADER_MAGIC:
        size = struct.unpack_from("<Q", head, 16)[0]
        if 0 < size <= file_size:
            return size
    return file_size


def read_program(path: str | Path) -> ProgramSummary:
    """The methods of the `.pte` at `path` and what each asks of the runtime (reads only the flatbuffer part)."""
    path = Path(path)
    file_size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(64)
        size = program_size(head, file_size)
        fh.seek(0)
        data = fh.read(size)
    if len(data) < 8:
        raise CorruptArtifactError(f"{path} ({file_size} bytes) is too short to be an ExecuTorch program")
    r = _Reader(data, str(path))
    root = r.deref(0)
    summary = ProgramSummary(data[4:8].decode("ascii", errors="replace"), size)
    for plan in r.tables(root, PROGRAM_PLANS):
        name = r.string(plan, PLAN_NAME)
        operators = []
        for op in r.tables(plan, PLAN_OPERATORS):
            base, overload = r.string(op, OPERATOR_NAME), r.string(op, OPERATOR_OVERLOAD)
            operators.append(f"{base}.{overload}" if overload else base)
        delegates = [r.string(d, DELEGATE_ID) for d in r.tables(plan, PLAN_DELEGATES)]
        summary.methods[name] = MethodSummary(name, operators, delegates, r.int64s(plan, PLAN_BUFFER_SIZES))
    if not summary.methods:  # what an export never writes: a damaged or foreign file, not a missing method
        raise CorruptArtifactError(f"{path} ({file_size} bytes) is not a loadable ExecuTorch program: it holds no "
                                   f"method (no execution plan)")
    return summary


def memory_plan(path: str | Path, method: str) -> dict:
    """`Session.memory_plan()` of one method of a `.pte` (the same figures whichever runtime runs it)."""
    summary = read_program(path)
    if method not in summary.methods:
        raise CorruptArtifactError(f"{path} has no method {method!r}; methods: {sorted(summary.methods)}")
    buffers = summary.methods[method].non_const_buffer_sizes
    # Buffer 0 is reserved by ExecuTorch's memory planning and is always 0 bytes; the sum counts it harmlessly.
    return {"planned_bytes": int(sum(buffers)), "constant_bytes": Path(path).stat().st_size,  # weights: ~ the file
            "source": f"ExecutionPlan.non_const_buffer_sizes of method {method!r} (read from the flatbuffer)",
            "buffers": [int(b) for b in buffers],
            "note": "delegate (XNNPACK) workspace and packed weights are allocated at load, on top of this"}


def incompatibilities(summary: ProgramSummary, identifier: str | None, operators: set[str],
                      backends: set[str]) -> list[str]:
    """Why a runtime that reads program schema `identifier` (None: unknown, not checked) and has exactly
    `operators` and delegate `backends` cannot run the program: one line per problem ([] when it can)."""
    problems = []
    if identifier is not None and summary.identifier != identifier:
        problems.append(f"program schema {summary.identifier}, the runtime reads {identifier}")
    for method in summary.methods.values():
        missing = sorted(set(method.operators) - operators)
        if missing:
            problems.append(f"method {method.name!r} calls operator(s) the runtime lacks: {', '.join(missing)}")
        unknown = sorted(set(method.delegates) - backends)
        if unknown:
            problems.append(f"method {method.name!r} is lowered to delegate(s) the runtime does not link: "
                            f"{', '.join(unknown)} (it has {', '.join(sorted(backends)) or 'none'})")
    return problems


# arm64 AT_HWCAP bit of Advanced SIMD half-precision arithmetic (Linux's HWCAP_ASIMDHP; /proc/cpuinfo "asimdhp").
AT_HWCAP, HWCAP_ASIMDHP = 16, 1 << 10


def _hwcap() -> int | None:
    """The process's AT_HWCAP (what XNNPACK's cpuinfo reads on Linux arm64; qemu sets it for its -cpu)."""
    try:
        import ctypes

        getauxval = ctypes.CDLL(None).getauxval
        getauxval.restype, getauxval.argtypes = ctypes.c_ulong, [ctypes.c_ulong]
        return int(getauxval(AT_HWCAP))
    except (OSError, AttributeError):
        return None


def fp16_unsupported() -> str | None:
    """Why XNNPACK cannot run an fp16 program on this CPU (None when it can, or where this is not known)."""
    from device_runtime.cpu import read_cpuinfo

    info = read_cpuinfo()
    machine = platform.machine().lower()
    cpu = f"{info.model} ({machine})"
    if machine in ("aarch64", "arm64"):
        hwcap = _hwcap()
        if not (bool(hwcap & HWCAP_ASIMDHP) if hwcap is not None else info.has("asimdhp")):
            return (f"{cpu} has no fp16 arithmetic (ARMv8.2-A FP16, 'asimdhp'): a Cortex-A72 or A53 class core, "
                    "where XNNPACK has no fp16 kernels")
    elif machine in ("x86_64", "amd64") and info.flags:
        missing = sorted({"f16c", "avx"} - info.flags)
        if missing:
            return f"{cpu} lacks {' and '.join(missing)}, which XNNPACK's fp16 kernels need on x86"
    return None
