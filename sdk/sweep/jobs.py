"""What a sweep is made of, without Ray: devices, the units of work, their content keys, and the result cache.

A sweep crosses models x formats x precisions (the exports) with devices x repeats (the benchmarks). Its units:

- `ExportUnit`: one artifact, `out/<model>/<folder key>/<file>`; planned with `sdk.export.plan.plan`, so a
  combination the converter refuses is refused here, before any work, with the converter's reason.
- `ExportJob`: what one Ray task exports: one artifact. Tasks export into a scratch folder on their worker and
  return the bytes; the driver is the only writer of the merged folder and its manifests, so no two tasks ever
  write the same report.json. (`manifest.record_artifact` is a read-modify-write: two processes adding entries
  to one report.json at once kept 116 of 200 entries in a trial here; atomic replacement keeps the file whole,
  not both updates.) It also means hosts need no shared file system. One artifact per task, not one folder per
  task: the longest task is then one export, not a model's every format in turn.
- A benchmark: one artifact on one device, one repeat.

Content keys are sha256 digests of everything that decides a result: the model spec (its full dataclass,
tiny dims and sequence length included), the weights (the checkpoint's sha256, or the seeded random init), the
format, the precision, the format's typed options with their defaults, and the tool versions
(`sdk.export.records.tool_versions`). A benchmark's key adds the artifact's own sha256, the device, the run counts
and the repeat. Only successes are cached: a failure may depend on something outside the key (a toolchain
installed since, a device back online), so a rerun tries it again.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from device_runtime import atomic, manifest
from device_runtime.errors import UsageError

CACHE_DIR = ".sweep/cache"
CACHE_SCHEMA = "pocketformer.sweep-cache/1"


# -- devices ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Device:
    """A benchmark target, and the Ray custom resource (`device:<name>`) that pins its actor to its host.

    `address` is what `pocketformer bench --device` takes (`local`, `ssh://user@host[:port]`, `adb:SERIAL`)."""

    name: str
    address: str = "local"
    remote_python: str = "python3"
    ssh_key: str | None = None
    ssh_options: tuple[str, ...] = ()
    runner: str | None = None
    formats: tuple[str, ...] | None = None  # the formats its runtimes run (None: try every artifact)

    @property
    def resource(self) -> str:
        return f"device:{self.name}"

    @property
    def is_local(self) -> bool:
        return self.address in ("", "local")

    @classmethod
    def parse(cls, text: "str | Device", **settings: Any) -> "Device":
        """`local`, `ADDRESS` or `NAME=ADDRESS`; `settings` (remote_python, ssh_key, ...) apply to remote ones."""
        if isinstance(text, Device):
            return text
        name, sep, address = str(text).partition("=")
        if not sep:
            name, address = "", name
        address = address.strip() or "local"
        if not name:
            name = _default_name(address)
        if not re.fullmatch(r"[A-Za-z0-9_.@:-]+", name):
            raise UsageError(f"device name {name!r}: use letters, digits and _ . - @ : (it becomes the Ray "
                             f"resource device:{name})")
        if address != "local":
            from device_runtime.remote.transport import parse_device

            parse_device(address)  # a typo is a UsageError now, not a failed benchmark later
            return cls(name, address, **{k: (tuple(v) if k == "ssh_options" else v) for k, v in settings.items()
                                         if v is not None})
        return cls(name, address)


def _default_name(address: str) -> str:
    if address == "local":
        return "local"
    from device_runtime.remote.transport import AdbTarget, parse_device

    target = parse_device(address)
    if isinstance(target, AdbTarget):
        return f"adb-{target.serial or 'default'}"
    return target.host + ("" if target.port == 22 else f"-{target.port}")


# -- units ------------------------------------------------------------------------------------------------
@dataclass
class ExportUnit:
    model: str            # the spec's name (NAME-tiny for tiny variants)
    format: str
    requested: str        # the precision asked for (names the folder)
    precision: str        # what it resolves to for this model and format
    folder: str           # relative to the sweep's out folder: <model>/<folder key>
    file: str
    options: dict[str, Any]
    key: str
    status: str = "pending"   # pending | running | ok | cached | failed | refused
    reason: str | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)  # export_s, size_bytes, sha256, verified, ...
    # "pipeline": a pipeline model's whole folder (`file` is <model>/pipeline.json; figures add "stages" and
    # "end_to_end"), exported by one task and benchmarked stage by stage
    kind: str = "artifact"

    @property
    def label(self) -> str:
        return f"{self.model} {self.format} {self.precision}"

    def record(self) -> dict[str, Any]:
        return {"kind": "export", **asdict(self)}


@dataclass
class BenchUnit:
    export: ExportUnit
    device: Device
    repeat: int
    key: str = ""
    status: str = "pending"
    reason: str | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)  # p50_ms, bench_file, ...

    @property
    def label(self) -> str:
        return f"{self.export.label} on {self.device.name}" + (f" (repeat {self.repeat})" if self.repeat else "")

    def record(self) -> dict[str, Any]:
        return {"kind": "bench", "model": self.export.model, "format": self.export.format,
                "precision": self.export.precision, "folder": self.export.folder, "file": self.export.file,
                "device": self.device.name, "address": self.device.address, "repeat": self.repeat, "key": self.key,
                "status": self.status, "reason": self.reason, "attempts": self.attempts, "figures": self.figures}


@dataclass
class ExportJob:
    """The exports of one Ray task (one artifact, see the module docstring), all in one folder."""

    model: str
    requested: str
    folder: str
    units: list[ExportUnit]
    request: dict[str, Any]  # what the task needs to rebuild the spec and export

    @property
    def label(self) -> str:
        return f"{self.folder} ({', '.join(u.format for u in self.units)})"


def digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:32]


def weights_identity(weights: str | Path | None) -> dict[str, Any]:
    """What the weights are, for the content key: a checkpoint's bytes, or the seeded random init."""
    if weights is None:
        return {"source": "random-or-packaged", "seed": 0}
    path = Path(weights)
    if not path.exists():
        raise UsageError(f"no such weights file or folder: {path}")
    return {"source": "checkpoint", "sha256": manifest.sha256_of(path)}


def module_identity(spec) -> dict[str, Any]:
    """What a user's module spec (`spec_from_module`) is beyond its repr, which leaves the module out: the state
    dict's and the samples' hashes (two modules of one class and name must not share a cached result). Nothing for
    a zoo spec, whose repr and weights say it all."""
    if getattr(spec, "held", None) is None:
        return {}
    described = spec.describe()
    return {"module": {k: described.get(k) for k in ("class", "state_dict_sha256", "samples_sha256")}}


def model_label(model: Any) -> str:
    """A model as the sweep's documents name it: a zoo or pipeline name, or a spec's name."""
    return model if isinstance(model, str) else str(getattr(model, "name", model))


def plan_exports(models: Sequence[Any], formats: Sequence[str], precisions: Sequence[str | None], *,
                 tiny: bool, seq_len: int | None, weights: str | Path | None, options: dict[str, Any],
                 tools: dict[str, str]) -> tuple[list[ExportJob], list[ExportUnit]]:
    """The export jobs to run and the units refused before any work (each with the converter's reason)."""
    from converters import get_converter
    from converters.base import UnsupportedError
    from sdk.export.pipeline import is_pipeline_model
    from sdk.export.plan import plan, resolve_spec, split_options
    from sdk.export.shapes import OneShape

    converters = [get_converter(f) for f in formats]  # an unknown format is a UsageError here
    split_options(converters, options)  # an unknown option is refused before any work
    weights_id = weights_identity(weights)
    jobs: dict[tuple[str, str], ExportJob] = {}
    refused: list[ExportUnit] = []
    for name in models:
        if is_pipeline_model(name):  # several artifacts and glue (MiniVLM): one job per format x precision
            for job in plan_pipeline(name, converters, precisions, tiny=tiny, seq_len=seq_len, weights=weights,
                                     options=options, tools=tools):
                jobs[(job.folder, job.units[0].file)] = job
            continue
        spec = resolve_spec(name, tiny, OneShape(seq_len), weights)
        for conv in converters:
            own = {k: v for k, v in options.items() if k in conv.option_names() and v is not None}
            for requested in precisions:
                try:
                    (p,) = plan(spec, [conv.format], requested, "", own)
                except UnsupportedError as exc:
                    refused.append(ExportUnit(spec.name, conv.format, str(requested or "default"),
                                              str(requested or "default"), "", "", own, "", "refused", str(exc)))
                    continue
                folder = p.folder.as_posix()
                unit = ExportUnit(spec.name, conv.format, p.precision.requested, str(p.precision), folder,
                                  p.final.name, p.kwargs, digest({
                                      "spec": repr(spec), "weights": weights_id, "format": conv.format,
                                      "precision": str(p.precision), "requested": p.precision.requested,
                                      "options": p.kwargs, "tools": tools, **module_identity(spec)}))
                if (folder, unit.file) in jobs:
                    continue  # the same artifact asked for twice (a repeated format or precision)
                jobs[(folder, unit.file)] = ExportJob(spec.name, p.precision.requested, folder, [unit], {
                    "model": name, "tiny": tiny, "seq_len": seq_len,
                    "weights": str(weights) if weights else None, "precision": requested})
    return list(jobs.values()), refused


def plan_pipeline(name: str, converters: Sequence[Any], precisions: Sequence[str | None], *, tiny: bool,
                  seq_len: int | None, weights: str | Path | None, options: dict[str, Any],
                  tools: dict[str, str]) -> list[ExportJob]:
    """A pipeline model's jobs: one per format x precision, every stage in it, each exporting the whole pipeline
    (stages verified alone and end to end, `sdk.export.pipeline`) into a folder of its own,
    `<model>@<format>-<precision>/<model>/`, since two pipelines of one model share stage paths."""
    from sdk.export.minivlm_pipeline import pipeline_model

    if weights is not None or seq_len is not None:
        raise UsageError(f"{name} is a pipeline of fixed-shape stages with random weights: --weights and --seq-len "
                         "do not apply to it")
    model = pipeline_model(f"{name}-tiny" if tiny and not name.endswith("-tiny") else name)
    jobs = []
    for conv in converters:
        own = {k: v for k, v in options.items() if k in conv.option_names() and v is not None}
        for requested in precisions:
            label = str(requested or "default")
            folder, file = f"{model.name}@{conv.format}-{label}", f"{model.name}/pipeline.json"
            unit = ExportUnit(model.name, conv.format, label, label, folder, file, own, digest({
                "pipeline": model.describe(), "format": conv.format, "precision": label, "options": own,
                "tools": tools}), kind="pipeline")
            jobs.append(ExportJob(model.name, label, folder, [unit], {
                "model": name, "tiny": tiny, "seq_len": None, "weights": None, "precision": requested,
                "pipeline": True}))
    return jobs


def bench_key(unit: BenchUnit, sha256: str, runs: int, warmup: int, threads: int | None,
              tools: dict[str, str]) -> str:
    d = unit.device
    return digest({"artifact": sha256, "device": [d.name, d.address, d.runner, d.remote_python],
                   "runs": runs, "warmup": warmup, "threads": threads, "repeat": unit.repeat, "tools": tools})


# -- moving artifacts between hosts ---------------------------------------------------------------------------
def pack(folder: Path, names: Iterable[str]) -> dict[str, bytes]:
    """The files (relative paths -> bytes) of these entries of a folder; a folder artifact with all its files."""
    files = {}
    for name in names:
        path = folder / name
        for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if file.is_file():
                files[file.relative_to(folder).as_posix()] = file.read_bytes()
    return files


def unpack(files: dict[str, bytes], dest: Path, name: str | None = None) -> None:
    """Write packed files under `dest`: all of them, or only entry `name`, replacing it whole (a folder
    artifact too: no file of an older version is left inside it)."""
    for rel in files:
        if ".." in Path(rel).parts or Path(rel).is_absolute():
            raise UsageError(f"refusing to write {rel!r} outside {dest}")
    if name is None:
        for rel, data in files.items():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            (dest / rel).write_bytes(data)
        return
    if name in files:
        atomic.write_bytes(dest / name, files[name])
        return
    inside = {rel[len(name) + 1:]: data for rel, data in files.items() if rel.startswith(name + "/")}
    if not inside:
        raise UsageError(f"{name} is not among the packed files")
    with atomic.atomic_path(dest / name) as tmp:
        for rel, data in inside.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(data)


# -- the cache --------------------------------------------------------------------------------------------
class Cache:
    """Finished results by content key, as small JSON files under `<out>/.sweep/cache/`."""

    def __init__(self, out: Path, enabled: bool = True) -> None:
        self.dir = Path(out) / CACHE_DIR
        self.enabled = enabled

    def get(self, key: str) -> dict[str, Any] | None:
        path = self.dir / f"{key}.json"
        if not self.enabled or not path.exists():
            return None
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            return None
        return data.get("record") if isinstance(data, dict) and data.get("schema") == CACHE_SCHEMA else None

    def put(self, key: str, record: dict[str, Any]) -> None:
        atomic.write_json(self.dir / f"{key}.json", {"schema": CACHE_SCHEMA, "key": key, "record": record})


def cached_export(cache: Cache, out: Path, unit: ExportUnit) -> dict[str, Any] | None:
    """The cached figures of an export whose artifact is still in place with the bytes its entry records."""
    record = cache.get(unit.key)
    if not record:
        return None
    if unit.kind == "pipeline":  # the whole folder, as the export task returned it
        folder = out / unit.folder / unit.model
        return record if folder.is_dir() and manifest.sha256_of(folder) == record.get("sha256") else None
    try:
        entry = manifest.read_manifest(out / unit.folder).artifacts.get(unit.file)
    except manifest.ManifestError:
        return None
    if entry is None or entry.sha256 != record.get("sha256") or not entry.matches(out / unit.folder / unit.file):
        return None
    return record


def cached_bench(cache: Cache, out: Path, key: str) -> dict[str, Any] | None:
    record = cache.get(key)
    if not record or not (out / record.get("bench_file", "\0")).is_file():
        return None
    return record
