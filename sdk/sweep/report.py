"""What a sweep shows: the live progress line, the final table, its own figures, and its section of the HTML report.

`sweep.json` (schema `pocketformer.sweep/1`) holds every unit with its status, attempts and reasons, the
devices' states, and the figures: wall time, exports per minute per worker, how busy the workers were.
`pocketformer report OUT` reads the artifacts and bench documents like any other run and adds this section.
"""
from __future__ import annotations

import html
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from device_runtime import atomic
from sdk.console.progress import Progress

SWEEP_NAME = "sweep.json"


# -- the live line ---------------------------------------------------------------------------------------
class SweepLine:
    """`exports 3/8 done, 2 running, 0 failed, 1 cached | benchmarks ...`: redrawn in place on a terminal,
    printed as a new line when the counts change otherwise."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.start = time.monotonic()
        self.last = ""
        self.drawn = 0.0

    @staticmethod
    def counts(units: Sequence[Any], total: int | None = None) -> str:
        c = Counter(u.status for u in units)
        done = c["ok"] + c["cached"] + c["failed"] + c["refused"]
        return (f"{done}/{len(units) if total is None else total} done, {c['running']} running, "
                f"{c['failed'] + c['refused']} failed, {c['cached']} cached")

    def text(self, exports, benches, bench_total: int | None = None) -> str:
        return f"sweep: exports {self.counts(exports)} | benchmarks {self.counts(benches, bench_total)}"

    def update(self, exports, benches, bench_total: int | None = None) -> None:
        if not self.progress.enabled:
            return
        line = self.text(exports, benches, bench_total)
        now = time.monotonic()
        if self.progress.live:
            if line != self.last or now - self.drawn >= 1:
                self.progress.stream.write(f"\r\033[K{line} ({now - self.start:.0f} s)")
                self.progress.stream.flush()
                self.drawn = now
        elif line != self.last:
            self.progress.note(f"{line} ({now - self.start:.0f} s)")
        self.last = line

    def finish(self, exports, benches, bench_total: int | None = None) -> None:
        self.update(exports, benches, bench_total)
        if self.progress.enabled and self.progress.live:
            self.progress.stream.write("\n")


# -- figures ------------------------------------------------------------------------------------------
def figures(document: dict[str, Any], wall_s: float) -> dict[str, Any]:
    """The sweep's own figures: how long, how many, how fast per worker, how busy."""
    exports, benches = document["exports"], document["benchmarks"]
    ran = [e for e in exports if e["status"] == "ok"]
    workers = document["workers"]
    task_s = {}
    for e in ran:  # one task exports a folder's formats in turn: its time counted once, per task
        worker = e["figures"].get("worker") or {}
        task_s[(worker.get("pid"), worker.get("started"))] = worker.get("seconds") or 0.0
    busy = sum(task_s.values())
    per_device: dict[str, dict[str, Any]] = {}
    for b in benches:
        d = per_device.setdefault(b["device"], Counter())
        d[b["status"]] += 1
        if b["status"] == "ok":
            d["busy_s"] += b["figures"].get("seconds") or 0.0
    minutes = wall_s / 60
    return {
        "wall_s": wall_s, "connect_s": document["cluster"].get("connect_s"), "workers": workers,
        "exports": dict(Counter(e["status"] for e in exports)),
        "benchmarks": dict(Counter(b["status"] for b in benches)),
        "exports_per_minute": len(ran) / minutes if ran and minutes > 0 else None,
        "exports_per_minute_per_worker": len(ran) / minutes / workers if ran and minutes > 0 and workers else None,
        "export_task_s": busy, "worker_utilisation": busy / (wall_s * workers) if wall_s > 0 and workers else None,
        "export_s_per_artifact": {f"{e['model']} {e['format']} {e['precision']}": e["figures"].get("export_s")
                                  for e in ran},
        "devices": {k: dict(v) for k, v in per_device.items()}}


# -- the final table -----------------------------------------------------------------------------------
def _cell(unit: dict[str, Any] | None) -> str:
    if unit is None:
        return "-"
    if unit["status"] in ("ok", "cached"):
        p50 = unit["figures"].get("p50_ms")
        mark = " (cached)" if unit["status"] == "cached" else ""
        return (f"{p50:.3f} ms" if isinstance(p50, (int, float)) else "ok") + mark
    return f"{unit['status']}: {_brief(unit.get('reason'))}"


def _brief(reason: str | None, limit: int = 70) -> str:
    reason = (reason or "").replace("\n", " ")
    return reason if len(reason) <= limit else reason[:limit] + "..."


def table_rows(document: dict[str, Any], full: bool = False) -> tuple[list[str], list[list[str]]]:
    """One row per artifact: its export, then the median p50 of its repeats on each device."""
    devices = list(document["devices"])
    header = ["model", "format", "precision", "export", "export s", "MB"] + [f"p50 on {d}" for d in devices]
    by_artifact: dict[tuple, dict[str, list]] = {}
    for b in document["benchmarks"]:
        by_artifact.setdefault((b["model"], b["format"], b["precision"]), {}).setdefault(b["device"], []).append(b)
    rows = []
    for e in document["exports"]:
        f = e["figures"]
        status = e["status"] if e["status"] in ("ok", "cached") else f"{e['status']}: " + (
            (e.get("reason") or "") if full else _brief(e.get("reason")))
        if e["attempts"] and len(e["attempts"]) > 1:
            status += f" ({len(e['attempts'])} attempts)"
        row = [e["model"], e["format"], e["precision"], status,
               f"{f['export_s']:.1f}" if isinstance(f.get("export_s"), (int, float)) else "-",
               f"{f['size_bytes'] / 1e6:.2f}" if f.get("size_bytes") else "-"]
        for d in devices:
            units = by_artifact.get((e["model"], e["format"], e["precision"]), {}).get(d, [])
            done = [u for u in units if u["status"] in ("ok", "cached") and u["figures"].get("p50_ms") is not None]
            if done and len(done) == len(units):
                values = sorted(u["figures"]["p50_ms"] for u in done)
                cell = f"{values[len(values) // 2]:.3f} ms"
                if all(u["status"] == "cached" for u in done):
                    cell += " (cached)"
                if len(values) > 1:
                    cell += f" [{len(values)} repeats]"
            else:
                bad = next((u for u in units if u["status"] not in ("ok", "cached")), None)
                cell = _cell(bad) if bad else "-"
            row.append(cell)
        rows.append(row)
        if e.get("kind") == "pipeline":  # its p50 is end to end; then one row per stage, from the same benchmarks
            row[3] += " (pipeline: p50 end to end" + (f", glue {100 * e2e:.0f}% at export)" if isinstance(
                e2e := (f.get("end_to_end") or {}).get("glue_share"), (int, float)) else ")")
            rows += stage_rows(e, by_artifact.get((e["model"], e["format"], e["precision"]), {}), devices)
    return header, rows


def stage_rows(export: dict[str, Any], benches: dict[str, list], devices: list[str]) -> list[list[str]]:
    """A pipeline export's stages: format, precision, size, verified alone, and each device's median p50 of the
    stage's artifact (a benchmark's stages are keyed by artifact path: a decode loop's artifact has its own name)."""
    rows = []
    for stage, info in (export["figures"].get("stages") or {}).items():
        key = info.get("artifact")
        row = [f"{export['model']} / {stage}", str(info.get("format")), str(info.get("precision")),
               "stage " + ("verified" if info.get("verified") else "NOT verified"), "-",
               f"{info['size_bytes'] / 1e6:.2f}" if info.get("size_bytes") else "-"]
        for d in devices:
            values = sorted(u["figures"]["stages"][key] for u in benches.get(d, [])
                            if u["status"] in ("ok", "cached") and key in (u["figures"].get("stages") or {}))
            row.append(f"{values[len(values) // 2]:.3f} ms" if values else "-")
        rows.append(row)
    return rows


def summary_lines(document: dict[str, Any]) -> list[str]:
    fig = document["figures"]
    rate = fig.get("exports_per_minute_per_worker")
    lines = [f"wall {fig['wall_s']:.1f} s on {document['workers']} worker(s) "
             f"(+{fig.get('connect_s') or 0:.1f} s to start/connect Ray); exports {fig['exports']}, "
             f"benchmarks {fig['benchmarks']}; "
             + (f"{rate:.2f} exports per minute per worker" if rate is not None else
                "no export ran to the end here (cached, refused or interrupted)")]
    for name, state in document["devices"].items():
        if state["state"] == "down":
            lines.append(f"device {name} ({state['address']}): {state['state']}: {state['reason']}")
    return lines


def format_sweep(document: dict[str, Any]) -> str:
    header, rows = table_rows(document)
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header] + rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += summary_lines(document)
    lines.append(f"merged report folder: {document['out']} (pocketformer report {document['out']})")
    return "\n".join(lines)


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows])


def write_documents(out: Path, document: dict[str, Any]) -> None:
    atomic.write_json(Path(out) / SWEEP_NAME, document)
    atomic.write_text(Path(out) / "sweep.md", "# Sweep\n\n" + _md_table(*table_rows(document, full=True)) + "\n\n"
                      + "\n".join(summary_lines(document)) + "\n")


# -- the HTML report's section -------------------------------------------------------------------------------
def sweep_sections(root: Path) -> list[dict[str, str]]:
    """The sweep's table and figures for `pocketformer report ROOT`, when ROOT holds a sweep.json."""
    path = Path(root) / SWEEP_NAME
    try:
        document = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return []
    if not isinstance(document, dict) or document.get("schema") != "pocketformer.sweep/1":
        return []
    header, rows = table_rows(document, full=True)
    fig = document.get("figures", {})
    rate = fig.get("exports_per_minute_per_worker")
    summary = (f"Wall time {fig.get('wall_s', 0):.1f} s on {document.get('workers')} export worker(s); "
               f"exports {fig.get('exports')}, benchmarks {fig.get('benchmarks')}"
               + (f"; {rate:.2f} exports per minute per worker, workers busy "
                  f"{100 * (fig.get('worker_utilisation') or 0):.0f}% of the time." if rate else
                  "; no export ran to the end here (cached, refused or interrupted)."))
    cells = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    table = ("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + f"</tr>{cells}</table>")
    md_table = _md_table(header, rows)
    return [{"html": f"<h2>Sweep</h2><p>{html.escape(summary)}</p>{table}",
             "md": f"## Sweep\n\n{summary}\n\n{md_table}\n"}]
