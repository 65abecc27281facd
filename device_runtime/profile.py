"""The per-operator profile table every backend returns from `Session.profile(feed, runs, warmup)`.

One table type for every runtime (ONNX Runtime's profiler, ExecuTorch's ETDump + Inspector, LiteRT's
`benchmark_model --enable_op_profiling=true` run on a device), so reports and the CLI read them alike.

Rows are per node (one ONNX node, one ExecuTorch instruction, one TFLite node), slowest first. Delegated
subgraphs show as what they are: the delegate call is a top-level row (`op_type="DELEGATE_CALL"` for
ExecuTorch, the delegate's node type such as `TfLiteXNNPackDelegate` for LiteRT) whose `provider` names the
delegate backend; when the delegate reports its own operators (XNNPACK inside ExecuTorch does), they follow as
rows with `level=1` and `parent` set to the delegate row's node. Shares and coverage count top-level rows
only, so nothing is counted twice.

Standard library only: this module is imported on the device side too.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass, fields
from typing import Any, Iterable

from device_runtime.errors import BackendUnavailableError


class ProfilerUnavailableError(BackendUnavailableError):
    """The backend (or this build of its runtime) has no per-operator profiler."""


@dataclass(frozen=True)
class OpProfileRow:
    """One node's time over the measured runs (microseconds)."""

    op_type: str
    node: str
    provider: str     # execution provider, kernel library or delegate backend that ran the node
    count: int        # executions recorded (runs x executions per run)
    total_us: float
    mean_us: float    # per execution
    share: float      # of the measured run time
    level: int = 0    # 0: a node of the program; 1: an operator inside a delegate (see `parent`)
    parent: str | None = None  # the delegate row this operator ran inside
    p10_us: float | None = None  # per-execution percentiles, where the profiler keeps every sample
    p50_us: float | None = None
    p90_us: float | None = None

    @property
    def delegated(self) -> bool:
        return self.level > 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "OpProfileRow":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


class OpProfile(list):
    """The per-operator table (a list of `OpProfileRow`, slowest first) with the run totals it is a share of.

    `coverage` is the time of the top-level rows over the run time: what the per-node rows explain of a run
    (the rest is the runtime's executor overhead, input/output copies and the profiler's own bookkeeping).
    `unprofiled_mean_run_us` is the same feed's median run time with the profiler off: on models whose nodes
    take a few microseconds the profiler's own cost dominates, so read shares, not absolutes.
    """

    def __init__(self, rows: Iterable[OpProfileRow], runs: int, run_time_us: float, source: str) -> None:
        rows = list(rows)
        super().__init__(rows)
        self.runs = runs
        self.run_time_us = float(run_time_us)
        self.node_time_us = float(sum(r.total_us for r in rows if r.level == 0))
        self.source = source
        self.unprofiled_mean_run_us: float | None = None
        self.notes: list[str] = []

    @property
    def coverage(self) -> float:
        return self.node_time_us / self.run_time_us if self.run_time_us else 0.0

    @property
    def mean_run_us(self) -> float:
        return self.run_time_us / self.runs if self.runs else 0.0

    @property
    def top_level(self) -> list[OpProfileRow]:
        return [r for r in self if r.level == 0]

    @property
    def delegated_share(self) -> float:
        """Share of the run spent inside delegate calls."""
        total = sum(r.total_us for r in self.top_level if r.op_type in DELEGATE_TYPES or _is_delegate(r))
        return total / self.run_time_us if self.run_time_us else 0.0

    def by_op_type(self, level: int = 0) -> list[dict[str, Any]]:
        """Rows of one level (0: program nodes, 1: operators inside delegates) summed per op type, slowest first."""
        grouped: dict[str, dict[str, Any]] = OrderedDict()
        for row in self:
            if row.level != level:
                continue
            g = grouped.setdefault(row.op_type, {"op_type": row.op_type, "nodes": 0, "count": 0, "total_us": 0.0})
            g["nodes"] += 1
            g["count"] += row.count
            g["total_us"] += row.total_us
        out = sorted(grouped.values(), key=lambda g: -g["total_us"])
        for g in out:
            g["mean_us"] = g["total_us"] / g["count"] if g["count"] else 0.0
            g["share"] = g["total_us"] / self.run_time_us if self.run_time_us else 0.0
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"unit": "us", "runs": self.runs, "run_time_us": self.run_time_us, "node_time_us": self.node_time_us,
                "coverage": self.coverage, "mean_run_us": self.mean_run_us,
                "unprofiled_mean_run_us": self.unprofiled_mean_run_us, "source": self.source,
                "notes": list(self.notes), "rows": [r.to_dict() for r in self]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "OpProfile":
        table = cls([OpProfileRow.from_dict(r) for r in data.get("rows", [])], int(data.get("runs", 0)),
                    float(data.get("run_time_us", 0.0)), str(data.get("source", "")))
        table.unprofiled_mean_run_us = data.get("unprofiled_mean_run_us")
        table.notes = list(data.get("notes", []))
        return table

    def to_text(self, top: int = 15) -> str:
        """A fixed-width table of the slowest top-level rows (and the operators inside delegates, indented)."""
        lines = [f"per-operator profile ({self.source}): {self.runs} runs, mean run {self.mean_run_us:.1f} us"
                 + (f" (unprofiled {self.unprofiled_mean_run_us:.1f} us)" if self.unprofiled_mean_run_us else "")
                 + f", rows explain {self.coverage:.0%} of the run time"]
        lines.append(f"  {'share':>6} {'mean us':>10} {'calls':>6}  {'op type':<28} node (provider)")
        children: dict[str, list[OpProfileRow]] = {}
        for row in self:
            if row.level and row.parent:
                children.setdefault(row.parent, []).append(row)
        for row in self.top_level[:top]:
            lines.append(f"  {row.share:>6.1%} {row.mean_us:>10.1f} {row.count:>6}  {row.op_type[:28]:<28} "
                         f"{row.node} ({row.provider})")
            for child in children.get(row.node, [])[:5]:
                lines.append(f"  {child.share:>6.1%} {child.mean_us:>10.1f} {child.count:>6}    "
                             f"{child.op_type[:26]:<26} {child.node}")
        hidden = len(self.top_level) - top
        if hidden > 0:
            lines.append(f"  ... {hidden} more row(s)")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


DELEGATE_TYPES = {"DELEGATE_CALL"}


def _is_delegate(row: OpProfileRow) -> bool:
    # LiteRT names a delegate node after the delegate ("TfLiteXNNPackDelegate", "TfLiteNnapiDelegate",
    # "Vx Delegate"); its operators are not listed.
    return "delegate" in row.op_type.lower()


# -- capability table -------------------------------------------------------------------------------------
# Which backends have a per-operator profiler. Backends that implement `Session.profile` are listed with what
# they use; the others say why not, so `pocketformer profile --capabilities` (and a failing `profile`) can
# say so plainly instead of faking rows.
PROFILERS: dict[str, str] = {
    "onnxruntime": "ONNX Runtime's own profiler (SessionOptions.enable_profiling): per node, with provider",
    "executorch": "ETDump + executorch.devtools Inspector: per instruction and per delegated operator, "
                  "p10/p50/p90 (needs a wheel built with the event tracer; checked when profiling)",
}
PROFILER_GAPS: dict[str, str] = {
    "ai_edge_litert": "LiteRT's Python Interpreter exposes no per-operator profiler (ai_edge_litert 2.3 has no "
                      "profiling API; experimental_force_delegate_node_profiling only feeds the C++ profiler). "
                      "Use the native benchmark_model with --enable_op_profiling=true: "
                      "`pocketformer profile model.tflite --device adb:SERIAL --runner benchmark_model`",
    "tflite_runtime": "tflite_runtime's Python Interpreter exposes no per-operator profiler; use the native "
                      "benchmark_model with --enable_op_profiling=true (see `pocketformer profile --device`)",
    "coremltools": "coremltools cannot run models on Linux and has no per-layer timing API; use Xcode's "
                   "Core ML performance report on a Mac",
    "ais_bench": "Ascend per-operator profiles come from msprof (CANN), which is not wired in",
    "acl": "Ascend per-operator profiles come from msprof (CANN), which is not wired in",
}


def profiler_for(backend: str) -> tuple[str | None, str | None]:
    """(profiler description, None) when `backend` has a per-operator profiler, else (None, why not)."""
    if backend in PROFILERS:
        return PROFILERS[backend], None
    return None, PROFILER_GAPS.get(backend, f"no per-operator profiler is wired for backend {backend!r}")


def profile_capabilities() -> list[dict[str, Any]]:
    """One row per registered backend: format, backend, runtime installed here, profiler or why there is none."""
    from device_runtime.registry import BACKENDS

    rows = []
    for fmt, entries in BACKENDS.items():
        for backend in entries:
            profiler, gap = profiler_for(backend.name)
            rows.append({"format": fmt, "backend": backend.name, "runtime_here": backend.available() is None,
                         "runtime_missing": backend.available(), "profiler": profiler, "no_profiler": gap})
    return rows
