"""The operator pre-check: every node of the ATC-ready ONNX looked up the way ATC's parser does it.

ATC's ONNX parser registers operators as `ai.onnx::<opset>::<op>`; `converters/data/atc_onnx_ops.json` (from
the CANN operator list; sources named in the file) holds the opset range of each operator it parses. Operators
ATC has no parser for are listed, with a rewrite where one is known, before ATC runs: the E19010 ("No parser
is registered for Op") that otherwise appears deep in an ATC conversion.
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

from converters.ascend.atc import ATC_MIN_OPSET, DEFAULT_OPSET
from converters.base import ConversionError

TABLE_PATH = Path(__file__).parents[1] / "data" / "atc_onnx_ops.json"  # converters/data (package data)


class UnsupportedOperatorError(ConversionError):
    """The ATC-ready ONNX contains operators ATC has no parser for (E19010 avoided)."""

    def __init__(self, message: str, report: "PrecheckReport") -> None:
        super().__init__(message)
        self.report = report


@lru_cache(maxsize=4)
def load_op_table(path: str | None = None) -> dict[str, Any]:
    with open(path or TABLE_PATH, encoding="utf-8") as fh:
        return json.load(fh)


@dataclass(frozen=True)
class UnsupportedOp:
    op_type: str
    domain: str
    opset: int
    count: int
    nodes: tuple[str, ...]          # the first few node names
    reason: str
    rewrite: str | None

    def describe(self) -> str:
        where = f"{self.domain}::{self.opset}::{self.op_type}"
        plural = "s" if self.count != 1 else ""
        text = f"{where} ({self.count} node{plural}, e.g. {', '.join(self.nodes[:3])}): {self.reason}"
        return text + (f"; fix: {self.rewrite}" if self.rewrite else "")


@dataclass
class PrecheckReport:
    opset: int
    ops: dict[str, int]                       # op_type (domain-prefixed when not ai.onnx) -> count
    unsupported: list[UnsupportedOp] = field(default_factory=list)
    table_release: str = ""

    @property
    def passed(self) -> bool:
        return not self.unsupported

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "opset": self.opset, "ops": self.ops, "table": self.table_release,
                "unsupported": [dataclasses.asdict(u) for u in self.unsupported]}


def _iter_nodes(graph) -> Iterable:
    for node in graph.node:
        yield node
        for attr in node.attribute:  # If/Loop/Scan bodies
            if attr.g is not None and len(attr.g.node):
                yield from _iter_nodes(attr.g)
            for sub in attr.graphs:
                yield from _iter_nodes(sub)


def precheck(model, table: dict[str, Any] | None = None) -> PrecheckReport:
    """Look every node up as ATC's ONNX parser does; list what it has no parser for, with known rewrites."""
    import onnx

    if isinstance(model, (str, os.PathLike)):
        model = onnx.load(str(model), load_external_data=False)
    table = table or load_op_table()
    opsets = {(e.domain or "ai.onnx"): int(e.version) for e in model.opset_import}
    main_opset = opsets.get("ai.onnx", 0)
    supported = table["operators"]
    known_bad = table.get("known_unsupported", {})
    hints = table.get("domain_hints", {})
    counts: Counter = Counter()
    names: dict[tuple[str, str], list[str]] = {}
    for node in _iter_nodes(model.graph):
        domain = node.domain or "ai.onnx"
        key = (domain, node.op_type)
        counts[key] += 1
        names.setdefault(key, []).append(node.name or f"<unnamed {node.op_type}>")
    report = PrecheckReport(main_opset, {(op if d == "ai.onnx" else f"{d}:{op}"): n
                                         for (d, op), n in sorted(counts.items())},
                            table_release=table.get("reference_release", ""))
    for (domain, op), n in sorted(counts.items()):
        opset = opsets.get(domain, main_opset)
        rewrite = known_bad.get(op)
        if domain != "ai.onnx":
            reason = f"ATC parses the ai.onnx domain only, not {domain}"
            rewrite = rewrite or hints.get(domain) or hints.get("*")
        elif op not in supported:
            reason = "ATC has no parser for this operator"
        else:
            lo, hi = supported[op]
            if lo <= opset <= hi:
                continue
            reason = f"ATC parses {op} at opsets {lo}..{hi} only"
            rewrite = rewrite or (f"export at an opset in {max(lo, ATC_MIN_OPSET)}..{hi} "
                                  f"(Pocketformer: --opset {max(lo, DEFAULT_OPSET) if hi >= DEFAULT_OPSET else hi})")
        report.unsupported.append(UnsupportedOp(op, domain, opset, n, tuple(names[(domain, op)][:5]), reason,
                                                rewrite))
    return report
