"""The HTML/Markdown report's device-numerics section: does each artifact compute the same on the device as on
the host (`pocketformer verify --report-dir`, schema `pocketformer.device-verify/1`), beside its device latency
(`pocketformer bench --device --json`).

An emulated board's timings are emulation, not device timings: its bench documents get the device label
"<device> (emulation)" (so the latency table and plot keep them apart from real devices, never in one
comparison), and its numerics rows say so too. Emulation is what the device itself reports: a CPU described
as "(emulated: ...)" (the arm64 board's /proc/cpuinfo, scripts/arm64_board.sh).
"""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Callable

from sdk.device.verify import SCHEMA, emulation

EMULATION = " (emulation)"


def label_emulation(doc: dict[str, Any]) -> dict[str, Any]:
    """A bench document measured on an emulated device, relabelled "<device> (emulation)"; others unchanged."""
    device = str(doc.get("device", "local"))
    if emulation(doc.get("host")) and not device.endswith(EMULATION):
        return {**doc, "device": device + EMULATION}
    return doc


def collect(root: Path) -> list[dict[str, Any]]:
    """Every device-verify document under `root`, newest last."""
    docs = []
    for path in sorted(Path(root).rglob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(doc, dict) and doc.get("schema") == SCHEMA and isinstance(doc.get("artifacts"), list):
            docs.append({**doc, "file": str(path)})
    return sorted(docs, key=lambda d: str(d.get("created", "")))


def _fmt(value, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) and value == value else "–"


def rows(root: Path, latency: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """One row per (device, model, artifact): the latest verify figures and the bench p50 on the same device."""
    p50 = {(r.get("device"), r.get("model"), r.get("format"), r.get("precision")): (r.get("latency") or {}).get("p50")
           for r in latency}
    latest: dict[tuple, list[str]] = {}
    for doc in collect(root):
        device = doc["device"] + (EMULATION if doc.get("emulated") else "")
        for a in doc["artifacts"]:
            host, ref = a.get("vs_host") or {}, a.get("vs_reference") or {}
            run = a.get("latency") or {}
            verdict = "pass" if a.get("passed") else "FAIL: " + "; ".join(a.get("failures") or [])
            bench = p50.get((device, doc.get("model"), a.get("format"), a.get("precision")))
            latest[(device, doc.get("model"), a.get("file"))] = [
                str(doc.get("model")), str(a.get("file")), str(a.get("precision")), device, str(a.get("backend")),
                _fmt(host.get("max_abs_err"), ".3g"), _fmt(host.get("mean_abs_err"), ".3g"),
                _fmt(host.get("sqnr_db"), ".1f"), _fmt(host.get("cosine"), ".6f"),
                _fmt(host.get("top1_agreement"), ".2f"), _fmt(ref.get("max_abs_err"), ".3g"), verdict,
                _fmt(bench, ".3f"), _fmt(run.get("p50"), ".2f")]
    header = ["model", "artifact", "precision", "device", "backend", "max abs vs host", "mean abs vs host",
              "SQNR dB", "cosine", "top-1", "max abs vs PyTorch", "verdict", "bench p50 ms", "verify run ms"]
    return header, [latest[k] for k in sorted(latest)]


NOTE = ("Each artifact's outputs on the device against the host's outputs of the same artifact, on the bundle's "
        "real samples (pocketformer verify), and against PyTorch fp32; the model's tolerance decides the verdict. "
        "bench p50 is pocketformer bench --device on the same device; verify run ms is one cold run per sample. "
        "Rows marked (emulation) ran on an emulated CPU: numerics are real, timings are not device timings.")


def section(root: Path, data: dict[str, Any], html_table: Callable, md_table: Callable) -> dict[str, str]:
    """The section's HTML and Markdown (empty strings when no verify document is under `root`)."""
    header, body = rows(root, data.get("latency") or [])
    if not body:
        return {"html": "", "md": ""}
    return {"html": f"<h2>Device vs host numerics</h2>{html_table(header, body)}"
                    f"<p class='note'>{html.escape(NOTE)}</p>",
            "md": f"## Device vs host numerics\n\n{md_table(header, body)}\n\n{NOTE}\n"}
