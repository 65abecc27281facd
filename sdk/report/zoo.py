"""The zoo's lesson, measured: for each full-size zoo model its params, MACs, memory access cost, arithmetic
intensity and the p50 latency of its fastest verified artifact; then the pairs of models with (about) equal
MACs and unequal latency, with what differs between them (memory traffic, operator count, delegate partitions).

`benchmarks/bench_zoo.py` measures and writes `bench_zoo.json`; this module reads it: the text table the script
prints, the pairs, and the HTML report's zoo section (when the report folder holds that file). A pipeline model
(MiniVLM) adds one row per stage (`pipeline_stage_rows`: params, MACs and memory traffic of each stage module).
"""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

ZOO_FILE = "bench_zoo.json"
SCHEMA = "pocketformer.bench_zoo"
# "Equal FLOPs": MACs within this fraction of each other; "unequal latency": p50 at least this ratio apart.
EQUAL_MACS = 0.25
UNEQUAL_LATENCY = 1.3
# A factor explains a latency gap when it differs between the two models by at least this ratio.
EXPLAINS = 1.25

COLUMNS = ("model", "family", "params M", "GMACs", "MAC MB", "FLOP/B", "ops", "best artifact", "partitions",
           "p50 ms", "fp32 p50 ms", "int8 p50 ms")


def _best(row: dict[str, Any], precision: str | None = None) -> dict[str, Any] | None:
    """The fastest timed artifact; of one precision class ("fp32", or "int8" for every int8 kind) if given."""
    timed = [a for a in row.get("artifacts", []) if a.get("p50_ms") is not None
             and (precision is None or str(a.get("precision", "")).split("-")[0] == precision)]
    return min(timed, key=lambda a: a["p50_ms"]) if timed else None


def table_rows(doc: dict[str, Any]) -> list[list[str]]:
    """One row per model, then one per stage of each pipeline model (`pipelines`: `pipeline_stage_rows`)."""
    rows = []
    for row in doc.get("models", []) + doc.get("pipelines", []):
        best = _best(row)
        a = row.get("analysis") or {}
        rows.append([row["model"], row.get("family", "?"), _f(a.get("params"), 1e6, ".2f"),
                     _f(a.get("flops"), 2e9, ".3f"), _f(a.get("mac_bytes"), 1e6, ".1f"),
                     _f(a.get("arithmetic_intensity"), 1, ".1f"), str(a.get("operator_nodes", "–")),
                     f"{best['format']} {best['precision']}" if best else (row.get("skipped") or (
                         f"a stage of {row['pipeline']}" if row.get("pipeline") else "none verified")),
                     str(best.get("partitions", "–")) if best else "–",
                     _f(best["p50_ms"], 1, ".2f") if best else "–"]
                    + [_f(b["p50_ms"], 1, ".2f") if (b := _best(row, p)) else "–" for p in ("fp32", "int8")])
    return rows


def _f(value, scale: float, spec: str) -> str:
    return "–" if value is None else format(value / scale, spec)


def equal_flops_pairs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Pairs of models whose MACs are within EQUAL_MACS but whose best p50 differ by UNEQUAL_LATENCY or more,
    slower second, each with the factors that differ (memory traffic, operator count, partitions)."""
    timed = [(r, _best(r)) for r in doc.get("models", []) if _best(r) and (r.get("analysis") or {}).get("flops")]
    pairs = []
    for i, (r1, b1) in enumerate(timed):
        for r2, b2 in timed[i + 1:]:
            f1, f2 = r1["analysis"]["flops"], r2["analysis"]["flops"]
            if abs(f1 - f2) > EQUAL_MACS * max(f1, f2):
                continue
            (fast, bf), (slow, bs) = sorted(((r1, b1), (r2, b2)), key=lambda rb: rb[1]["p50_ms"])
            ratio = bs["p50_ms"] / bf["p50_ms"]
            if ratio < UNEQUAL_LATENCY:
                continue
            pairs.append({"fast": fast["model"], "slow": slow["model"], "latency_ratio": ratio,
                          "macs_ratio": slow["analysis"]["flops"] / fast["analysis"]["flops"],
                          "reasons": _reasons(fast, bf, slow, bs)})
    return sorted(pairs, key=lambda p: -p["latency_ratio"])


def _reasons(fast, bf, slow, bs) -> list[str]:
    reasons = []
    for key, what in (("mac_bytes", "memory traffic (unfused bytes moved)"), ("operator_nodes", "operator count")):
        a, b = fast["analysis"].get(key), slow["analysis"].get(key)
        if a and b and b / a >= EXPLAINS:
            reasons.append(f"{what} {b / a:.2f}x")
    pa, pb = bf.get("partitions"), bs.get("partitions")
    if pa and pb and pb / pa >= EXPLAINS:
        reasons.append(f"delegate partitions {pb} vs {pa}")
    if bf.get("precision") != bs.get("precision"):
        reasons.append(f"best verified precision {bs['precision']} vs {bf['precision']}")
    return reasons or ["none of memory traffic, operator count or partitions differs by 1.25x: kernel efficiency"]


def pair_lines(doc: dict[str, Any]) -> list[str]:
    pairs = equal_flops_pairs(doc)
    if not pairs:
        return [f"no pair of models with MACs within {EQUAL_MACS:.0%} and p50 {UNEQUAL_LATENCY}x apart"]
    return [f"{p['slow']} is {p['latency_ratio']:.2f}x slower than {p['fast']} at {p['macs_ratio']:.2f}x the MACs: "
            + "; ".join(p["reasons"]) for p in pairs]


def text_table(doc: dict[str, Any]) -> str:
    rows = [list(COLUMNS)] + table_rows(doc)
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)


def load(folder: Path) -> dict[str, Any] | None:
    path = Path(folder) / ZOO_FILE
    if not path.is_file():
        return None
    doc = json.loads(path.read_text())
    return doc if doc.get("schema") == SCHEMA else None


def zoo_sections(folder: Path) -> list[dict[str, str]]:
    """The report's zoo section ({"html", "md"}), or none when `folder` holds no bench_zoo.json."""
    doc = load(folder)
    if doc is None:
        return []
    rows, note, lessons = table_rows(doc), doc.get("note", ""), pair_lines(doc)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    title = "Zoo: equal FLOPs, unequal latency"
    markdown = [f"## {title}", "", note, "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    markdown += ["| " + " | ".join(row) + " |" for row in rows] + [""] + [f"- {line}" for line in lessons] + [""]
    return [{"html": f"<h2>{title}</h2><p class='note'>{html.escape(note)}</p><table><tr>{head}</tr>{body}</table>"
                     + "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in lessons) + "</ul>",
             "md": "\n".join(markdown)}]


# -- pipeline models: one row per stage ---------------------------------------------------------------------------
def pipeline_stage_rows(name: str = "minivlm", tiny: bool = False) -> list[dict[str, Any]]:
    """The zoo table's rows of a pipeline model (MiniVLM): params, MACs and memory traffic of each stage, counted as
    for a single model (`sdk.measure.analysis.analyze_model`) on the stage module and its real inputs (the spec
    `sdk.export.pipeline` exports). The glue between the stages is numpy on the device: not counted here."""
    from sdk.export.minivlm_pipeline import pipeline_model
    from sdk.measure.analysis import analyze_model
    from sdk.export.pipeline import stage_spec

    model = pipeline_model(f"{name}-tiny" if tiny and not name.endswith("-tiny") else name)
    if model is None:
        from device_runtime.errors import UsageError

        raise UsageError(f"{name!r} is not a pipeline model")
    module, samples = model.prepare()
    rows = []
    for stage in model.stages:
        analysis = analyze_model(stage_spec(model, module, samples, stage))
        rows.append({"model": f"{model.name} / {stage}", "family": "minivlm", "pipeline": model.name, "stage": stage,
                     "analysis": {k: analysis.get(k) for k in ("params", "flops", "mac_bytes", "weights_read_bytes",
                                                               "arithmetic_intensity", "operator_nodes", "inputs")},
                     "artifacts": []})
    return rows
