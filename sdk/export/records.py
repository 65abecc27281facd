"""The host's side of an artifact's manifest record: the versions of the tools that made it (written into each
entry), and the model section and entry read back from the manifest beside an artifact.

The manifest itself (report.json: schema, reading, writing, hash checks) is `device_runtime.manifest`, so the
device side and the host read it with the same code.
"""
from __future__ import annotations

import platform
import sys
from importlib import metadata
from pathlib import Path

from device_runtime.manifest import load_entry

TOOL_PACKAGES = ("pocketformer", "torch", "executorch", "timm", "transformers", "litert-torch", "ai-edge-litert",
                 "ai-edge-quantizer", "coremltools", "onnx", "onnxscript", "onnxruntime", "numpy")


def tool_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for package in TOOL_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return versions


def report_for_artifact(artifact: Path, trust: bool = False) -> tuple[dict, dict | None]:
    """The model section and this artifact's entry (as plain data) of the manifest beside it, hash-checked
    ({} and None when there is none)."""
    record = load_entry(artifact, trust=trust)
    return record.model, (record.entry.to_dict() if record.entry else None)
