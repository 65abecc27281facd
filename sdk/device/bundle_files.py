"""Sealing a bundle folder: its SHA256SUMS and its atomic move into place, as a folder or a zip.

Shared by the one-model bundle (`sdk.device.bundles`) and the pipeline bundle (`sdk.device.pipeline_bundle`), which
differ in what they put in the folder, not in how it is sealed and published.
"""
from __future__ import annotations

import hashlib
import shutil
import zipfile
from pathlib import Path

from device_runtime import atomic
from device_runtime.bundle import SUMS


def write_sums(root: Path) -> None:
    """SHA256SUMS (sha256sum's format) over every other file of the bundle at `root`."""
    lines = []
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel != SUMS:
            lines.append(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {rel}\n")
    (Path(root) / SUMS).write_text("".join(lines), encoding="utf-8")


def seal_and_publish(root: Path, out: Path, zip_: bool) -> None:
    """Checksum the bundle folder `root`, then write it to `out` (a zip or a copy of the folder) atomically: a
    bundle is either whole at `out` or absent."""
    write_sums(root)
    with atomic.atomic_path(out) as dest:
        if zip_:
            with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
                for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
                    zf.write(path, path.relative_to(root).as_posix())
        else:
            shutil.copytree(root, dest)
