"""The HTML report's pipeline sections (`pocketformer report DIR`): for each pipeline folder under DIR (its
`report.json` of schema `pocketformer.pipeline-report`, written by `sdk.export.pipeline`):

- its stages: format, precision, size and verification of each artifact, and the end-to-end figures;
- its latest `bench` (`sdk.measure.pipeline_bench`, recorded in that report.json): a per-stage table (p50, p90,
  calls, share of the stages' time), the numpy glue's share, end to end, and the decode loop's tokens per second;
- its per-stage `tune.json` (`sdk.measure.pipeline_tune`): each stage's candidates, the pick marked.

Each section is {"html", "md"}, as `sdk.sweep.report.sweep_sections` and `sdk.report.zoo.zoo_sections` give theirs.
"""
from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

REPORT_SCHEMA = "pocketformer.pipeline-report"
TUNE_SCHEMA = "pocketformer.pipeline-tune"


def _read(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _f(value, spec: str = ".3f") -> str:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "–" if not isinstance(value, bool) else ("yes" if value else "no")
    return format(value, spec)


def _table(header: list[str], rows: list[list[str]]) -> tuple[str, str]:
    """(HTML, Markdown) of one table."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>", "\n".join(md)


def stage_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["stage", "format", "precision", "size MB", "verified alone", "max abs err", "SQNR vs fp32 dB"]
    rows = []
    for stage, info in (report.get("stages") or {}).items():
        parity = info.get("parity") or {}
        rows.append([stage, str(info.get("format")), str(info.get("precision")),
                     _f((info.get("size_bytes") or 0) / 1e6, ".2f"), _f(parity.get("passed")),
                     _f((parity.get("lowering") or {}).get("max_abs_err"), ".2g"),
                     _f((parity.get("quantization") or {}).get("sqnr_db"), ".1f")])
    return header, rows


def bench_rows(bench: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["stage", "kind", "format / glue step", "calls", "p50 ms", "p90 ms", "share of stages"]
    total = sum(s["latency"]["p50"] for s in bench.get("stages", [])) or float("nan")
    rows = [[s["stage"], s["kind"], str(s.get("format") if s["kind"] == "artifact" else s.get("glue")),
             str(s.get("calls")), _f(s["latency"]["p50"]), _f(s["latency"]["p90"]),
             _f(100 * s["latency"]["p50"] / total, ".1f") + "%"] for s in bench.get("stages", [])]
    return header, rows


def bench_summary(bench: dict[str, Any]) -> str:
    e2e = (bench.get("end_to_end") or {}).get("latency") or {}
    text = (f"{bench.get('runs')} runs at threads={bench.get('threads') or 'default'}: end to end p50 "
            f"{_f(e2e.get('p50'))} ms (p90 {_f(e2e.get('p90'))} ms); artifacts p50 "
            f"{_f((bench.get('artifact_ms') or {}).get('p50'))} ms, numpy glue p50 "
            f"{_f((bench.get('glue_ms') or {}).get('p50'))} ms: glue share {_f(100 * bench.get('glue_share', 0), '.1f')}%"
            " (a decode loop's artifact calls count as its artifact's time).")
    for name, loop in (bench.get("loops") or {}).items():
        text += (f" Decode loop {name}: {_f(loop.get('tokens'), '.0f')} tokens through {loop.get('step')}, "
                 f"{_f(loop.get('tokens_per_s'), '.1f')} tokens/s.")
    return text


def tune_rows(tune: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["stage", "format", "precision", "backend", "p50 ms", "x fastest", "size MB", "max abs err vs fp32",
              "pick"]
    rows = []
    for stage, info in (tune.get("stages") or {}).items():
        pick = info.get("pick") or {}
        for c in info.get("candidates", []):
            rows.append([stage, c["format"], c["precision"], str(c.get("backend")), _f(c.get("p50_ms")),
                         _f(c.get("x_best"), ".2f"), _f(c.get("size_bytes", 0) / 1e6, ".2f"),
                         _f(c.get("max_abs_err_vs_fp32"), ".2g"), "yes" if c.get("path") == pick.get("path") else ""])
    return header, rows


def pipeline_sections(root: Path) -> list[dict[str, str]]:
    """One section per pipeline folder under `root` (none when there is none)."""
    out = []
    for path in sorted(Path(root).rglob("report.json")):
        report = _read(path)
        if not report or report.get("schema") != REPORT_SCHEMA:
            continue
        name = (report.get("model") or {}).get("name") or path.parent.name
        e2e = report.get("end_to_end") or {}
        lead = (f"{name} ({path.parent}): {len(report.get('stages') or {})} artifacts joined by numpy glue; end to end "
                f"on {e2e.get('samples')} held-out real photos: {'passed' if e2e.get('passed') else 'FAILED'} "
                f"(VQA/retrieval cosine {_f((e2e.get('fused') or {}).get('cosine'), '.6f')}, regions agree "
                f"{_f(100 * ((e2e.get('regions') or {}).get('agreement') or 0), '.0f')}%, caption tokens agree "
                f"{_f(100 * ((e2e.get('caption') or {}).get('agreement') or 0), '.0f')}%).")
        stage_html, stage_md = _table(*stage_rows(report))
        parts = [f"<h2>Pipeline {html.escape(name)}</h2><p>{html.escape(lead)}</p>", stage_html]
        md = [f"## Pipeline {name}", "", lead, "", stage_md, ""]
        bench = report.get("bench")
        if bench:
            table_html, table_md = _table(*bench_rows(bench))
            summary = bench_summary(bench)
            parts += [f"<h3>Per-stage latency ({html.escape(str(bench.get('created', '')))})</h3>",
                      f"<p>{html.escape(summary)}</p>", table_html]
            md += ["### Per-stage latency", "", summary, "", table_md, ""]
        else:
            note = f"Not benchmarked yet: `pocketformer bench {path.parent}` adds the per-stage latency and glue share."
            parts.append(f"<p class='note'>{html.escape(note)}</p>")
            md += [note, ""]
        tune = _read(path.parent / "tune.json")
        if tune and tune.get("schema") == TUNE_SCHEMA:
            table_html, table_md = _table(*tune_rows(tune))
            verdict = (f"failed: {tune['failed']}" if tune.get("failed") else "picks: " + ", ".join(
                f"{s} {f} {p}" for s, (f, p) in tune.get("picks", {}).items()) + "; verified end to end")
            parts += [f"<h3>Per-stage tune of {html.escape(name)}</h3><p>{html.escape(verdict)}</p>", table_html]
            md += [f"### Per-stage tune of {name}", "", verdict, "", table_md, ""]
        out.append({"html": "".join(parts), "md": "\n".join(md)})
    return out
