"""`report.json` beside the artifacts: one per output folder, one entry per artifact, merged atomically.

The device side reads it too (`pocketformer run` finds preprocessing and labels there), so this module
imports nothing heavier than the standard library.
"""
from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

REPORT_NAME = "report.json"
TOOL_PACKAGES = ("pocketformer", "torch", "executorch", "timm", "transformers", "litert-torch", "ai-edge-litert", "ai-edge-quantizer",
                 "coremltools", "onnx", "onnxscript", "onnxruntime", "numpy")


def tool_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for package in TOOL_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return versions


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, default=str)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def read_report(folder: Path) -> dict:
    path = Path(folder) / REPORT_NAME
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None


def record_artifact(folder: Path, model: dict, entry: dict) -> Path:
    """Add (or replace) one artifact's entry in the folder's report."""
    report = read_report(folder)
    report["model"] = model
    report.setdefault("artifacts", {})[entry["file"]] = entry
    report["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    path = Path(folder) / REPORT_NAME
    write_json_atomic(path, report)
    return path


def report_for_artifact(artifact: Path) -> tuple[dict, dict | None]:
    """The model section and this artifact's entry of the report beside it ({} and None when absent)."""
    artifact = Path(artifact)
    report = read_report(artifact.parent)
    return report.get("model", {}), report.get("artifacts", {}).get(artifact.name)
