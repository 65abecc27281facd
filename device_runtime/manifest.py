"""The artifact manifest: `report.json` beside the artifacts of one export folder, typed and versioned.

The export pipeline writes it; `run`, `bench`, `tune`, `report`, the device tools and the Android app read it,
all through this module. Standard library only (the device side reads it without torch or numpy).

One folder holds one model at one precision and one input variant (`out/<model>/<precision>[-seq<N>]/`), so
its `model` section (inputs, preprocessing, labels) is true for every artifact in it. Each artifact has one
entry, keyed by its file name, written only after the artifact is in place, and holding the artifact's
sha256 and size: a file changed since (or replaced by hand) no longer matches and is refused unless the
caller trusts it. A failed attempt is recorded under `failed`, apart, and never replaces a passing entry.

Schema (version 1):

    {"schema": "pocketformer.manifest", "schema_version": 1, "updated": ISO-8601,
     "model": {name, family, task, inputs: [{name, shape, dtype, dynamic_axes}], outputs, default_precision,
               int8_scheme, preprocessing, labels},
     "artifacts": {FILE: {file, format, precision, requested_precision, sha256, size_bytes, created,
                          options, parity, runtime, details, calibration, weights, tools, timings}},
     "failed": [{file, format, precision, requested_precision, attempted, error, reason, parity}]}
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from device_runtime import atomic
from device_runtime.errors import ArtifactNotFoundError, PocketformerError

MANIFEST_NAME = "report.json"
SCHEMA = "pocketformer.manifest"
SCHEMA_VERSION = 1
FAILED_KEPT = 10  # the most recent failed attempts kept per folder


class ManifestError(PocketformerError, ValueError):
    """A manifest that cannot be read: not JSON, not this schema, or a version this code does not know."""

    exit_code = 2


class ArtifactModifiedError(ManifestError):
    """The artifact's bytes no longer match the hash recorded when it was exported and verified."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def sha256_of(path: Path) -> str:
    """sha256 of a file; of a folder, over its files' relative paths and contents in sorted order."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with open(file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def size_of(path: Path) -> int:
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


@dataclass
class ArtifactEntry:
    """What the manifest says about one artifact (its file name is relative to the manifest's folder)."""

    file: str
    format: str
    precision: str
    requested_precision: str
    sha256: str
    size_bytes: int
    created: str = field(default_factory=_now)
    options: dict[str, Any] = field(default_factory=dict)
    parity: dict[str, Any] = field(default_factory=dict)
    runtime: dict[str, Any] | None = None
    details: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] | None = None
    weights: dict[str, Any] = field(default_factory=dict)
    tools: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def matches(self, path: Path) -> bool:
        """Whether the bytes at `path` are still the ones this entry recorded (size first: cheap)."""
        path = Path(path)
        return path.exists() and size_of(path) == self.size_bytes and sha256_of(path) == self.sha256

    @property
    def verified(self) -> bool | None:
        """True: met its tolerance here; None: parity could not be run on the exporting host."""
        return self.parity.get("passed")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ArtifactEntry":
        known = {f.name for f in dataclasses.fields(cls)}
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ManifestError(f"artifact entry {data.get('file', '?')!r} lacks {', '.join(missing)}")
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class Manifest:
    folder: Path
    model: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, ArtifactEntry] = field(default_factory=dict)
    failed: list[dict[str, Any]] = field(default_factory=list)
    updated: str = ""

    @property
    def path(self) -> Path:
        return self.folder / MANIFEST_NAME

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "updated": self.updated, "model": self.model,
                "artifacts": {k: v.to_dict() for k, v in self.artifacts.items()}, "failed": self.failed}

    def save(self) -> Path:
        self.updated = _now()
        atomic.write_json(self.path, self.to_dict())
        return self.path


def read_manifest(folder: str | Path) -> Manifest:
    """The manifest of an export folder (an empty one when the folder has none)."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if not path.exists():
        return Manifest(folder)
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ManifestError(f"{path} is not a Pocketformer manifest (no \"schema\": \"{SCHEMA}\"); it was written "
                            "by another tool or by a Pocketformer before 0.2: re-export")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ManifestError(f"{path} has schema_version {version!r}; this Pocketformer reads {SCHEMA_VERSION}: "
                            "re-export, or use the Pocketformer that wrote it")
    return Manifest(folder, data.get("model") or {},
                    {k: ArtifactEntry.from_dict(v) for k, v in (data.get("artifacts") or {}).items()},
                    list(data.get("failed") or []), data.get("updated", ""))


def record_artifact(folder: Path, model: dict[str, Any], entry: ArtifactEntry) -> Path:
    """Add or replace one artifact's entry. Call only once the artifact is in place: `entry` carries its hash."""
    manifest = read_manifest(folder)
    manifest.model = model
    manifest.artifacts[entry.file] = entry
    return manifest.save()


def record_failure(folder: Path, model: dict[str, Any], attempt: dict[str, Any]) -> Path:
    """Keep a failed attempt (its figures and reason) apart from the artifacts; a passing entry stays as it was."""
    manifest = read_manifest(folder)
    if not manifest.artifacts:  # no artifact vouches for this folder's model section yet
        manifest.model = model
    manifest.failed = (manifest.failed + [{"attempted": _now(), **attempt}])[-FAILED_KEPT:]
    return manifest.save()


@dataclass
class ArtifactRecord:
    """An artifact with what its manifest says: the model section and its own entry (None when not listed)."""

    path: Path
    model: dict[str, Any]
    entry: ArtifactEntry | None
    manifest: Manifest


def load_entry(artifact: str | Path, trust: bool = False) -> ArtifactRecord:
    """The manifest facts of one artifact, after checking its bytes still match the recorded hash.

    An artifact with no manifest beside it (or not listed in it) gives an empty model and no entry: it can
    still be run with raw inputs. One whose hash no longer matches raises `ArtifactModifiedError`, unless
    `trust` (then the entry is returned as it is).
    """
    path = Path(artifact)
    manifest = read_manifest(path.parent)
    entry = manifest.artifacts.get(path.name)
    if entry is not None and not trust:
        if not path.exists():
            raise ArtifactNotFoundError(f"no such artifact: {path}")
        if not entry.matches(path):
            raise ArtifactModifiedError(
                f"{path} was modified since export (its sha256 or size no longer matches {manifest.path}): "
                "re-export or pass --trust")
    return ArtifactRecord(path, manifest.model, entry, manifest)
