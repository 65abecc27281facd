"""The compression report as text: a few summary lines and a Markdown table of the trade-off."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from device_runtime import atomic


def _cos(acc: dict | None) -> str:
    if not acc:
        return "-"
    text = f"{acc['cosine_mean']:.4f} (min {acc['cosine_min']:.3f})"
    if "top1_agreement" in acc:
        text += f", top-1 {acc['top1_agreement']:.0%}"
    return text


def accuracy_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """(stage, cosine to the float teacher) for every stage the recipe measured."""
    acc = report.get("accuracy", {})
    return [(stage.replace("_", " "), _cos(value)) for stage, value in acc.items() if isinstance(value, dict)]


def summary_lines(report: dict[str, Any]) -> list[str]:
    lines = [f"{report['method']} on {report['model']} ({report['data']['source'].split(' (')[0]}; "
             f"{report['data']['heldout_sentences']} held-out sentences available)"]
    lines += [f"  cosine to float model, {stage}: {value}" for stage, value in accuracy_rows(report)]
    size = report.get("size", {})
    if size:
        lines.append(f"  parameters {size['params_before']:,} -> {size['params_after']:,} "
                     f"(non-zero {size['nonzero_after']:,})")
    lat = report.get("eager_latency_ms")
    if lat:
        lines.append(f"  eager PyTorch latency (seq {lat['seq_len']}, {lat['threads']} threads): "
                     f"{lat['before']:.1f} -> {lat['after']:.1f} ms")
    for when, rows in (report.get("exports") or {}).items():
        for row in rows:
            lines.append(f"  {when:6s} {row['format']} {row['precision']}: {row['size_bytes'] / 1e6:.2f} MB, "
                         f"p50 {row['latency_ms']['p50']:.2f} ms, cosine to float {row['accuracy_vs_fp32_teacher']['cosine_mean']:.4f}"
                         f", parity {'passed' if row['parity_passed'] else row['parity_passed']}")
    return lines


def write_markdown(report: dict[str, Any], path: Path) -> None:
    out = [f"# {report['method']}: {report['model']}", "",
           f"Data: {report['data']['source']} ({report['data']['train_sentences']} training, "
           f"{report['data']['heldout_sentences']} held-out sentences).", "",
           "| stage | cosine to the float model on held-out sentences (mean, min) |", "|---|---|"]
    out += [f"| {stage} | {value} |" for stage, value in accuracy_rows(report)]
    size = report.get("size", {})
    if size:
        out += ["", "| size | before | after |", "|---|---|---|",
                f"| parameters | {size['params_before']:,} | {size['params_after']:,} |",
                f"| non-zero | - | {size['nonzero_after']:,} |",
                f"| fp32 bytes | {size['fp32_bytes_before']:,} | {size['fp32_bytes_after']:,} |"]
        for key in ("sparse_encoding_bytes_estimate", "model_bytes_1bit_layers_fp32_rest"):
            if key in size:
                out.append(f"| {key.replace('_', ' ')} | - | {size[key]:,} |")
        if "note" in size:
            out += ["", f"Note: {size['note']}."]
    lat = report.get("eager_latency_ms")
    if lat:
        out += ["", f"Eager PyTorch latency (batch 1, seq {lat['seq_len']}, {lat['threads']} threads): "
                    f"{lat['before']:.1f} ms before, {lat['after']:.1f} ms after."]
    exports = report.get("exports")
    if exports:
        out += ["", "| artifact | format | precision | size (MB) | p50 latency (ms) | cosine to float (mean, min) | parity |",
                "|---|---|---|---|---|---|---|"]
        for when, rows in exports.items():
            for row in rows:
                out.append(f"| {when} | {row['format']} | {row['precision']} | {row['size_bytes'] / 1e6:.2f} | "
                           f"{row['latency_ms']['p50']:.2f} | {_cos(row['accuracy_vs_fp32_teacher'])} | "
                           f"{'passed' if row['parity_passed'] else row['parity_passed']} |")
    atomic.write_text(path, "\n".join(out) + "\n")
