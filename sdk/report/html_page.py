"""`pocketformer report DIR`: one self-contained HTML page (and a Markdown twin) for a run's output folder.

It reads what the other commands leave in DIR: `report.json` files (`pocketformer export`: artifacts, sizes,
parity), benchmark documents (`pocketformer bench --json`, schema `pocketformer.bench/1`) and `tune.json` files
(`pocketformer tune`), and shows:

- latency per model x format x precision (and device), with load time, cold first run and peak memory;
- FLOPs against measured latency: low FLOPs do not mean low latency;
- file size against accuracy loss (max abs error vs fp32 PyTorch, SQNR);
- the per-operator breakdown of the slowest artifact (from the bench JSON when it holds a profile, else
  profiled now when its backend has a profiler; otherwise the page says why there is none);
- the pick of each `tune` run, linked; each pipeline's stages, per-stage bench and tune (`pipeline_page`).

Plots are matplotlib PNGs inlined as base64, so the HTML file is the whole report (no network, no files
beside it). The Markdown file references the same PNGs, written to `<name>_files/`.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from device_runtime import atomic
from device_runtime import manifest
from device_runtime.manifest import MANIFEST_NAME as REPORT_NAME
from device_runtime.errors import UsageError
from sdk.report import numerics as report_numerics  # device-vs-host numerics; emulated timings kept apart

BENCH_SCHEMA = "pocketformer.bench/1"


# -- collecting ------------------------------------------------------------------------------------------
def collect(root: Path) -> dict[str, Any]:
    """Artifacts (from report.json), latency rows (from bench JSON), tune results, under `root`."""
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"no such folder: {root}")
    artifacts: dict[str, dict[str, Any]] = {}
    models: dict[str, dict[str, Any]] = {}
    for report_path in sorted(root.rglob(REPORT_NAME)):
        try:
            found = manifest.read_manifest(report_path.parent)
        except manifest.ManifestError:  # another tool's or an older report.json: not ours to show
            continue
        model = found.model
        if model.get("name"):
            models[model["name"]] = model
        for name, entry in found.artifacts.items():
            path = (report_path.parent / name).resolve()
            modified = not entry.matches(path)  # figures of other bytes would mislead: say so in the table
            parity = entry.parity or {}
            quant, lowering = parity.get("quantization") or {}, parity.get("lowering") or {}
            artifacts[str(path)] = {
                "model": model.get("name", "?"), "family": model.get("family"), "format": entry.format,
                "precision": entry.precision, "path": str(path), "size_bytes": entry.size_bytes,
                "verified": None if modified else parity.get("passed"),
                "skipped": "modified since export" if modified else parity.get("skipped"),
                "max_abs_err": lowering.get("max_abs_err"),
                "err_vs_fp32": quant.get("max_abs_err", lowering.get("max_abs_err")),
                "sqnr_db": quant.get("sqnr_db"), "export_s": (entry.timings or {}).get("export_s"),
                "weights": (entry.weights or {}).get("source"), "accuracy": parity.get("accuracy")}
    latency: dict[tuple[str, str], dict[str, Any]] = {}
    bench_files = []
    tunes = []
    for path in sorted(root.rglob("*.json")):
        if path.name == REPORT_NAME:
            continue
        try:
            doc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            continue
        if not isinstance(doc, dict):
            continue
        if doc.get("schema") == BENCH_SCHEMA and isinstance(doc.get("results"), list):
            bench_files.append(str(path))
            doc = report_numerics.label_emulation(doc)
            for r in doc["results"]:
                if r.get("reference"):
                    key = (f"reference:{r.get('name')}:{path}", doc.get("device", "local"))
                else:
                    key = (str(Path(r["path"]).resolve()), doc.get("device", "local"))
                row = {**r, "device": doc.get("device", "local"), "created": doc.get("created", ""),
                       "bench_file": str(path), "threads": doc.get("threads"), "host": doc.get("host")}
                if key not in latency or row["created"] >= latency[key]["created"]:
                    latency[key] = row
        elif "candidates" in doc and "pick" in doc and "model" in doc:
            tunes.append({**doc, "file": str(path)})
    rows = []
    for (path, device), r in latency.items():
        meta = artifacts.get(path, {})
        if r.get("reference"):
            meta = {"model": _reference_model(r, artifacts, latency), "format": r.get("format"), "precision": "fp32"}
        rows.append({**meta, **{k: v for k, v in r.items() if v is not None}, "model": meta.get("model") or
                     r.get("model") or "?", "format": meta.get("format") or r.get("format"),
                     "precision": meta.get("precision") or r.get("precision") or "?", "device": device})
    rows.sort(key=lambda r: (str(r["model"]), r["device"], str(r["format"]), str(r["precision"])))
    return {"root": str(root), "artifacts": list(artifacts.values()), "models": models, "latency": rows,
            "bench_files": bench_files, "tunes": tunes}


def _reference_model(row, artifacts, latency) -> str:
    """The model a reference row (eager PyTorch) belongs to: that of the artifacts benched beside it."""
    for (path, _), other in latency.items():
        if other.get("bench_file") == row.get("bench_file") and not other.get("reference"):
            return artifacts.get(path, {}).get("model") or other.get("model") or "?"
    return "?"


# -- analysis (FLOPs per model) -------------------------------------------------------------------------
def model_flops(data: dict[str, Any], cache: Path) -> dict[str, dict[str, Any]]:
    """FLOPs and MAC per model of the report (cached in `cache`, computed with sdk.measure.analysis when missing)."""
    from sdk.measure.analysis import analyze_model

    known = {}
    if cache.exists():
        try:
            known = json.loads(cache.read_text())
        except json.JSONDecodeError:
            known = {}
    changed = False
    for name, model in data["models"].items():
        if name in known:
            continue
        seq_len = None
        if (model.get("preprocessing") or {}).get("kind") == "text":
            seq_len = model.get("preprocessing", {}).get("seq_len")
        try:
            row = analyze_model(name, seq_len=seq_len)
        except Exception as exc:  # a model the zoo no longer has, a checkpoint-defined shape: say so, go on
            known[name] = {"error": f"{type(exc).__name__}: {exc}"}
        else:
            known[name] = {k: row[k] for k in ("flops", "params", "mac_bytes", "arithmetic_intensity", "gflops")}
        changed = True
    if changed:
        from device_runtime.atomic import write_json as write_json_atomic

        write_json_atomic(cache, known)
    return known


# -- plots ----------------------------------------------------------------------------------------------
def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _figure().close(fig)
    return buf.getvalue()


def _label(r: dict[str, Any]) -> str:
    device = "" if r.get("device", "local") == "local" else f" @ {r['device']}"
    if r.get("reference"):
        return f"{r['model']} / {r.get('name')}{device}"
    return f"{r['model']} / {r['format']} / {r['precision']}{device}"


def plot_latency(rows: list[dict[str, Any]]) -> bytes | None:
    rows = [r for r in rows if (r.get("latency") or {}).get("p50") is not None or (r.get("latency") or {}).get("mean")]
    if not rows:
        return None
    plt = _figure()
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.2))
    labels, values, lo, hi = [], [], [], []
    for r in rows:
        lat = r["latency"]
        v = lat.get("p50") if lat.get("p50") is not None else lat["mean"]
        labels.append(_label(r))
        values.append(v)
        lo.append(max(0.0, v - (lat.get("p10") if _num(lat.get("p10")) else v)))
        hi.append(max(0.0, (lat.get("p90") if _num(lat.get("p90")) else v) - v))
    colors = ["#999999" if r.get("reference") else "#3b6ea8" for r in rows]
    ax.barh(range(len(rows)), values, xerr=[lo, hi], color=colors, capsize=3)
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("latency, ms (median; whiskers p10-p90)")
    ax.set_title("Latency per model x format x precision")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def plot_flops_vs_latency(rows, flops: dict[str, dict[str, Any]], roofline: dict[str, Any] | None) -> bytes | None:
    points = []
    for r in rows:
        f = (flops.get(r["model"]) or {}).get("flops")
        v = (r.get("latency") or {}).get("p50")
        if f and v:
            points.append((f / 1e9, v, r))
    if not points:
        return None
    plt = _figure()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    markers = {"pte": "o", "tflite": "s", "onnx": "^", "coreml": "D", "om": "v", "pytorch": "x"}
    models = sorted({r["model"] for _, _, r in points})
    palette = plt.get_cmap("tab10")
    for g, v, r in points:
        ax.scatter([g], [v], marker=markers.get(r.get("format"), "o"), s=45,
                   color=palette(models.index(r["model"]) % 10))
        ax.annotate(f"{r['format']} {r['precision']}", (g, v), fontsize=7, xytext=(4, 2), textcoords="offset points")
    for i, model in enumerate(models):
        ax.scatter([], [], color=palette(i % 10), label=model)
    peak = (roofline or {}).get("peak_fp32_gflops")
    if peak:
        xs = sorted({g for g, _, _ in points})
        if len(xs) == 1:
            xs = [xs[0] / 2, xs[0] * 2]
        ax.plot(xs, [x / peak * 1e3 for x in xs], "--", color="#c0504d",
                label=f"compute bound at {peak:.0f} GFLOP/s (this CPU, fp32)")
    ax.legend(fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("GFLOPs per inference (fp32 graph, eager attention)")
    ax.set_ylabel("measured latency, ms (median)")
    ax.set_title("FLOPs vs measured latency: low FLOPs do not mean low latency")
    ax.grid(alpha=0.3, which="both")
    return _png(fig)


def plot_size_vs_error(artifacts: list[dict[str, Any]]) -> bytes | None:
    points = [a for a in artifacts if _num(a.get("size_bytes")) and _num(a.get("err_vs_fp32"))]
    if not points:
        return None
    plt = _figure()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for a in points:
        err = max(a["err_vs_fp32"], 1e-9)
        ax.scatter([a["size_bytes"] / 1e6], [err], s=45, color="#3b6ea8" if a.get("verified") else "#c0504d")
        ax.annotate(f"{a['model']} {a['format']} {a['precision']}", (a["size_bytes"] / 1e6, err), fontsize=7,
                    xytext=(4, 2), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("artifact size, MB")
    ax.set_ylabel("max abs error vs fp32 PyTorch (real samples)")
    ax.set_title("Size vs accuracy loss (red: failed its tolerance)")
    ax.grid(alpha=0.3, which="both")
    return _png(fig)


def plot_profile(profile: dict[str, Any], title: str, top: int = 15) -> bytes | None:
    rows = [r for r in profile.get("rows", []) if r.get("level", 0) == 0][:top]
    if not rows:
        return None
    plt = _figure()
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(rows) + 1.2))
    ax.barh(range(len(rows)), [100 * r["share"] for r in rows],
            color=["#c0504d" if "delegate" in (r["op_type"] + r["provider"]).lower() or r["op_type"] == "DELEGATE_CALL"
                   else "#3b6ea8" for r in rows])
    ax.set_yticks(range(len(rows)), [f"{r['op_type']}: {r['node']}"[:70] for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("share of the run time, % (red: delegate calls)")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def _num(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# -- the slowest artifact's profile ------------------------------------------------------------------------
def slowest_profile(rows: list[dict[str, Any]], profile: bool) -> dict[str, Any] | None:
    candidates = [r for r in rows if not r.get("reference") and (r.get("latency") or {}).get("p50") is not None]
    if not candidates:
        return None
    slowest = max(candidates, key=lambda r: r["latency"]["p50"])
    out = {"row": slowest, "profile": slowest.get("profile"), "why_not": slowest.get("profile_unavailable")}
    if out["profile"] or not profile:
        if not out["profile"] and not out["why_not"]:
            out["why_not"] = "not recorded (bench with --profile-runs N, or report without --no-profile)"
        return out
    if slowest.get("device", "local") != "local" or not Path(slowest["path"]).exists():
        out["why_not"] = out["why_not"] or "the artifact ran on a device; bench it with --profile-runs to record one"
        return out
    import device_runtime
    from device_runtime.profile import ProfilerUnavailableError
    from sdk.measure.bench import sample_feed

    try:
        session = device_runtime.load(slowest["path"], num_threads=slowest.get("threads"), adapt_io=True)
        out["profile"] = session.profile(sample_feed(slowest["path"]), runs=10, warmup=2).to_dict()
    except ProfilerUnavailableError as exc:
        out["why_not"] = str(exc)
    return out


# -- rendering --------------------------------------------------------------------------------------------
def _fmt(value, spec: str = ".3g", none: str = "–") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return none
    if isinstance(value, bool):
        return "yes" if value else "no"
    return format(value, spec) if isinstance(value, (int, float)) else str(value)


def tables(data: dict[str, Any], flops: dict[str, Any]) -> dict[str, tuple[list[str], list[list[str]]]]:
    lat_rows = []
    for r in data["latency"]:
        lat = r.get("latency") or {}
        f = (flops.get(r["model"]) or {}).get("flops")
        p50 = lat.get("p50")
        lat_rows.append([r["model"], _fmt(r.get("format")), _fmt(r.get("precision")), r.get("device", "local"),
                         _fmt(r.get("backend")), _fmt(p50, ".3f"), _fmt(lat.get("p90"), ".3f"),
                         _fmt(lat.get("mean"), ".3f"), _fmt(r.get("first_run_ms"), ".2f"),
                         _fmt(r.get("load_time_ms"), ".1f"), _fmt(r.get("peak_rss_mb"), ".0f") + " / " +
                         _fmt(((r.get("memory_plan") or {}).get("planned_bytes") or float("nan")) / 2**20, ".2f"),
                         _fmt(f / 1e9 / (p50 / 1e3) if f and p50 else None, ".1f"),
                         _fmt(r.get("ratio_vs_first"), ".2f")])
    art_rows = []
    for a in sorted(data["artifacts"], key=lambda a: (a["model"], str(a["format"]), str(a["precision"]))):
        art_rows.append([a["model"], _fmt(a["format"]), _fmt(a["precision"]),
                         _fmt((a.get("size_bytes") or 0) / 1e6, ".2f"),
                         "not run: " + str(a["skipped"]) if a.get("verified") is None and a.get("skipped") else
                         _fmt(a.get("verified")), _fmt(a.get("max_abs_err"), ".2g"), _fmt(a.get("err_vs_fp32"), ".2g"),
                         _fmt(a.get("sqnr_db"), ".1f"), _accuracy_cell(a.get("accuracy")), _fmt(a.get("export_s"), ".1f"),
                         _fmt(a.get("weights"))])
    return {
        "latency": (["model", "format", "precision", "device", "backend", "p50 ms", "p90 ms", "mean ms",
                     "first run ms", "load ms", "peak RSS / planned MB", "achieved GFLOP/s", "x first of its bench"], lat_rows),
        "artifacts": (["model", "format", "precision", "size MB", "verified", "max abs err (vs own ref.)",
                       "max abs err vs fp32", "SQNR vs fp32 dB", "top-1 on --eval (vs fp32 PyTorch)", "export s",
                       "weights"], art_rows),
    }


def _accuracy_cell(a: dict | None) -> str:  # top-1 on the user's labelled data, the points lost vs fp32 PyTorch
    return "–" if not a else f"{100 * a['artifact_top1']:.1f}% ({0.0 - a['drop_points']:+.1f} pt; {a['samples']} samples)"


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1150px;
color:#222;line-height:1.4}h1{font-size:1.6rem}h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}th,td{border:1px solid #ddd;padding:.25rem .5rem;
text-align:right}th{background:#f3f5f8}td:first-child,th:first-child{text-align:left}img{max-width:100%;
border:1px solid #eee;margin:.5rem 0}.note{color:#666;font-size:.85rem}.pick{background:#e8f4e5;font-weight:600}
code{background:#f3f3f3;padding:0 .2rem}"""


def _html_table(header: list[str], rows: list[list[str]], highlight: set[int] = frozenset()) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    pick = ' class="pick"'
    body = "".join(f"<tr{pick if i in highlight else ''}>" +
                   "".join(f"<td>{c if str(c).startswith('<a ') else html.escape(str(c))}</td>" for c in row) + "</tr>"
                   for i, row in enumerate(rows))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    def cell(c):
        return str(c).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def build_report(root: Path, html_path: Path | None = None, markdown_path: Path | None = None,
                 profile: bool = True, analysis: bool = True) -> dict[str, Path]:
    """Write the HTML page and its Markdown twin; returns their paths."""
    from sdk.measure.analysis import cpu_roofline, measured_on  # the machine line: each bench's CPU and features

    root = Path(root)
    data = collect(root)
    if not data["artifacts"] and not data["latency"]:
        raise UsageError(f"nothing to report under {root}: no {REPORT_NAME} and no bench JSON (schema {BENCH_SCHEMA}) files")
    html_path = Path(html_path) if html_path else root / "report.html"
    markdown_path = Path(markdown_path) if markdown_path else root / "report.md"
    flops = model_flops(data, root / "analysis.json") if analysis else {}
    roofline = cpu_roofline()
    slow = slowest_profile(data["latency"], profile)
    tabs = tables(data, flops)

    images: list[tuple[str, str, bytes | None, str]] = [
        ("latency", "Latency per model × format × precision", plot_latency(data["latency"]),
         "Median latency of each artifact on its device (grey: PyTorch eager reference); whiskers span p10–p90."),
        ("flops_vs_latency", "FLOPs vs measured latency", plot_flops_vs_latency(data["latency"], flops, roofline),
         "Each point is one artifact at the FLOPs of its model (fp32 graph); the dashed line is where a run "
         "would take exactly its FLOPs at this CPU's peak fp32 rate. Points far above it are bound by memory "
         "traffic, operator overhead or runtime scheduling, not by arithmetic."),
        ("size_vs_error", "Size vs accuracy loss", plot_size_vs_error(data["artifacts"]),
         "Max absolute error of each artifact's outputs against fp32 PyTorch on the real samples."),
    ]
    profile_note = ""
    if slow:
        title = f"Per-operator breakdown of the slowest artifact: {_label(slow['row'])}"
        png = plot_profile(slow["profile"], title) if slow.get("profile") else None
        if slow.get("profile"):
            p = slow["profile"]
            profile_note = (f"{p.get('source')}: {p.get('runs')} runs, rows explain {100 * p.get('coverage', 0):.0f}% "
                            f"of the run time; mean run {p.get('mean_run_us', 0):.0f} µs with the profiler, "
                            f"{_fmt(p.get('unprofiled_mean_run_us'), '.0f')} µs without. "
                            + " ".join(p.get("notes", [])))
        else:
            profile_note = f"No per-operator profile: {slow.get('why_not')}"
        images.append(("slowest_profile", "Where the slowest artifact spends its time", png, profile_note))

    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Pocketformer report: "
             f"{html.escape(root.name)}</title><style>{_CSS}</style></head><body>",
             f"<h1>Pocketformer report: {html.escape(str(root))}</h1>",
             f"<p class='note'>Generated {created} from {len(data['artifacts'])} artifact(s) and "
             f"{len(data['bench_files'])} benchmark file(s). CPU here: {html.escape(str(roofline.get('cpu')))}, "
             f"{roofline.get('cores')} core(s), peak fp32 {_fmt(roofline.get('peak_fp32_gflops'), '.0f')} GFLOP/s "
             f"({html.escape('; '.join(roofline.get('assumptions', [])))}).</p>"]
    md = [f"# Pocketformer report: {root}", "",
          f"Generated {created} from {len(data['artifacts'])} artifact(s) and {len(data['bench_files'])} benchmark "
          f"file(s). CPU here: {roofline.get('cpu')}, {roofline.get('cores')} core(s), peak fp32 "
          f"{_fmt(roofline.get('peak_fp32_gflops'), '.0f')} GFLOP/s.", ""]
    from sdk.report.pipeline_page import pipeline_sections  # per pipeline: stages, bench, glue share, tune
    from sdk.report.zoo import zoo_sections  # the zoo's table and lesson, when root holds bench_zoo.json
    from sdk.sweep.report import sweep_sections  # a sweep's own table and figures, when root holds sweep.json
    for t in _tune_sections(data["tunes"], html_path) + pipeline_sections(root) + sweep_sections(root) + zoo_sections(
            root):
        parts.append(t["html"])
        md.append(t["md"])
    parts += ["<h2>Latency</h2>", _html_table(*tabs["latency"]), f"<p class='note'>{html.escape(measured_on(data['latency']))}</p>"]
    md += ["## Latency", "", _md_table(*tabs["latency"]), "", measured_on(data["latency"]), ""]
    files_dir = markdown_path.parent / f"{markdown_path.stem}_files"
    for key, title, png, note in images:
        parts.append(f"<h2>{html.escape(title)}</h2>")
        md += [f"## {title}", ""]
        if png:
            parts.append(f"<img alt='{html.escape(title)}' src='data:image/png;base64,"
                         f"{base64.b64encode(png).decode('ascii')}'>")
            files_dir.mkdir(parents=True, exist_ok=True)
            atomic.write_bytes(files_dir / f"{key}.png", png)
            md.append(f"![{title}]({files_dir.name}/{key}.png)")
        else:
            parts.append("<p class='note'>No data for this plot.</p>")
            md.append("_No data for this plot._")
        parts.append(f"<p class='note'>{html.escape(note)}</p>")
        md += ["", note, ""]
        if key == "slowest_profile" and slow and slow.get("profile"):
            rows = [[r["op_type"], r["node"], r["provider"], r["count"], _fmt(r["mean_us"], ".1f"),
                     f"{100 * r['share']:.1f}%"] for r in slow["profile"]["rows"] if r.get("level", 0) == 0][:20]
            header = ["op type", "node", "provider", "calls", "mean µs", "share"]
            parts.append(_html_table(header, rows))
            md += [_md_table(header, rows), ""]
    numerics = report_numerics.section(root, data, _html_table, _md_table)
    parts.append(numerics["html"])
    md.append(numerics["md"])
    parts += ["<h2>Artifacts</h2>", _html_table(*tabs["artifacts"])]
    md += ["## Artifacts", "", _md_table(*tabs["artifacts"]), ""]
    parts.append("</body></html>")
    html_path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(html_path, "\n".join(parts))
    atomic.write_text(markdown_path, "\n".join(md) + "\n")
    return {"html": html_path, "markdown": markdown_path}


def _tune_sections(tunes: list[dict[str, Any]], html_path: Path) -> list[dict[str, str]]:
    import os

    out = []
    for t in tunes:
        pick = t.get("pick")
        header = ["format", "precision", "backend", "p50 ms", "x fastest", "size MB", "max abs err vs fp32", "artifact"]
        rows, md_rows, highlight = [], [], set()
        for i, c in enumerate(t.get("candidates", [])):
            rel = os.path.relpath(c["path"], html_path.parent.resolve()) if Path(c["path"]).is_absolute() else c["path"]
            cells = [c["format"], c["precision"], _fmt(c.get("backend")), _fmt(c.get("p50_ms"), ".3f"),
                     _fmt(c.get("x_best"), ".2f"), _fmt(c["size_bytes"] / 1e6, ".2f"),
                     _fmt(c.get("max_abs_err_vs_fp32"), ".2g")]
            rows.append(cells + [f"<a href='{html.escape(rel)}'>{html.escape(rel)}</a>"])
            md_rows.append(cells + [f"[{rel}]({rel})"])
            if pick and c["path"] == pick["path"]:
                highlight.add(i)
        eager = f"; PyTorch eager in the same rounds: {t['eager_p50_ms']:.3f} ms" if t.get("eager_p50_ms") else ""
        roof = t.get("roofline") or {}
        if roof.get("fraction_of_peak"):
            eager += (f". It computes {roof['gflops']:.2f} GFLOP at {roof['achieved_gops']:.0f} GOP/s: "
                      f"{roof['fraction_of_peak']:.0%} of this CPU's peak at its precision ({roof['peak_gops']:.0f})")
        if pick:
            link = os.path.relpath(pick["link"], html_path.parent.resolve()) if Path(pick["link"]).is_absolute() \
                else pick["link"]
            lead = (f"Fastest verified artifact of {t['model']}: <b>{html.escape(pick['format'])} "
                    f"{html.escape(pick['precision'])}</b>, {pick['p50_ms']:.3f} ms median "
                    f"(<a href='{html.escape(link)}'>{html.escape(link)}</a>){html.escape(eager)}.")
            md_lead = (f"Fastest verified artifact of {t['model']}: **{pick['format']} {pick['precision']}**, "
                       f"{pick['p50_ms']:.3f} ms median ([{link}]({link})){eager}.")
        else:
            lead = md_lead = f"No candidate of {t['model']} ran here and met its bound."
        dropped = [f"{d['format']} {d['precision']}: {d['reason']}"
                   for d in t.get("rejected", []) + t.get("skipped", [])]
        out.append({
            "html": f"<h2>Pick for {html.escape(t['model'])}</h2><p>{lead}</p>" + _html_table(header, rows, highlight)
                    + (f"<p class='note'>Not candidates: {html.escape(' · '.join(dropped))}</p>" if dropped else ""),
            "md": f"## Pick for {t['model']}\n\n{md_lead}\n\n{_md_table(header, md_rows)}\n\n"
                  + ("Not candidates: " + "; ".join(dropped) + "\n" if dropped else "")})
    return out
