"""Verification bundles on the device side: open one, check it, run its samples. Standard library and numpy only.

A bundle (written by `sdk.device.bundles`, format `pocketformer.bundle` version 1, read also by the Android app's
Java core) is a folder, or a zip of the same tree, holding one model's artifact(s), the exact input tensors
fed, the host's outputs of each artifact on them, PyTorch's outputs, the raw samples and a `SHA256SUMS` list.
Opening one checks the schema, its version and every checksum before anything runs: a missing, unlisted or
changed file is refused, naming it.

    with open_bundle("mobilevit.bundle.zip") as b:
        outputs, timings = run_artifact(b, "model.tflite")   # {sample id: [arrays in output order]}

On a device, `pocketformer verify --device ...` runs

    python -m device_runtime.bundle BUNDLE --out outputs.npz [--artifact FILE] [--backend NAME] [--threads N]

which writes every output as `<file>/<sample id>/<output name>` into one .npz and prints a framed JSON
summary (backend, per-run milliseconds), so the host compares the figures, not the device.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import numpy as np

from device_runtime.errors import PocketformerError, UsageError

SCHEMA = "pocketformer.bundle"
SCHEMA_VERSION = 1
BUNDLE_JSON = "bundle.json"
SUMS = "SHA256SUMS"
BEGIN = "-----BEGIN POCKETFORMER VERIFY JSON-----"
END = "-----END POCKETFORMER VERIFY JSON-----"


class BundleError(PocketformerError, ValueError):
    """A bundle that cannot be trusted: not a bundle, a newer schema, or a file missing, unlisted or changed."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_sums(text: str, where: str) -> dict[str, str]:
    """`sha256sum` lines ("<hex>  <relative path>") as {path: hex}; a malformed line is refused."""
    sums = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        digest, sep, name = line.partition("  ")
        name = name.lstrip("*")
        if not sep or len(digest) != 64 or not name or not _safe(name):
            raise BundleError(f"{where}, line {n}: not '<sha256 hex>  <relative path>': {line[:120]!r}")
        sums[name] = digest.lower()
    return sums


def _safe(name: str) -> bool:
    """A relative path that stays inside the bundle (zip members and SHA256SUMS entries alike)."""
    p = PurePosixPath(name)
    return bool(name) and not p.is_absolute() and ".." not in p.parts and "\\" not in name


@dataclass
class Bundle:
    """An opened, checked bundle. `root` is a folder (a zip is extracted to a temporary one, removed on close)."""

    root: Path
    meta: dict[str, Any]
    source: Path
    _tmp: str | None = field(default=None, repr=False)

    @property
    def model(self) -> dict[str, Any]:
        return self.meta["model"]

    @property
    def output_names(self) -> list[str]:
        return list(self.model.get("outputs") or [])

    @property
    def artifacts(self) -> list[dict[str, Any]]:
        return list(self.meta["artifacts"])

    @property
    def samples(self) -> list[dict[str, Any]]:
        return list(self.meta["samples"])

    def artifact(self, file: str) -> dict[str, Any]:
        for a in self.artifacts:
            if PurePosixPath(a["file"]).name == file or a["file"] == file:
                return a
        raise UsageError(f"{self.source} holds no artifact {file!r}; it holds "
                         f"{', '.join(PurePosixPath(a['file']).name for a in self.artifacts)}")

    def inputs(self, sample: dict[str, Any]) -> dict[str, np.ndarray]:
        return {name: _load(self.root / rel) for name, rel in sample["inputs"].items()}

    def expected(self, artifact: dict[str, Any], sample_id: str) -> list[np.ndarray]:
        """The host's outputs of `artifact` on sample `sample_id`, in the model's output order."""
        return [_load(self.root / artifact["expected"] / sample_id / f"{n}.npy") for n in self.output_names]

    def reference(self, sample_id: str) -> list[np.ndarray] | None:
        """PyTorch's fp32 outputs on sample `sample_id` (None when the bundle has none)."""
        folder = self.root / "reference" / sample_id
        if not folder.is_dir():
            return None
        return [_load(folder / f"{n}.npy") for n in self.output_names]

    def close(self) -> None:
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> "Bundle":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _load(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise BundleError(f"cannot read {path}: {exc}") from None


def open_bundle(path: str | Path) -> Bundle:
    """Open a bundle folder or zip and check it whole (schema, version, every checksum) before returning."""
    source = Path(path)
    if not source.exists():
        raise UsageError(f"no such bundle: {source}")
    tmp = None
    if source.is_file():
        if not zipfile.is_zipfile(source):
            raise BundleError(f"{source} is neither a bundle folder nor a zip")
        tmp = tempfile.mkdtemp(prefix="pf-bundle-")
        try:
            with zipfile.ZipFile(source) as zf:
                for member in zf.infolist():
                    if not _safe(member.filename.rstrip("/")):
                        raise BundleError(f"{source}: member {member.filename!r} points outside the bundle")
                zf.extractall(tmp)
        except (zipfile.BadZipFile, OSError) as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise BundleError(f"{source} is not a readable zip: {exc}") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        root = Path(tmp)
    else:
        root = source
    try:
        meta = check(root, str(source))
    except BaseException:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Bundle(root, meta, source, tmp)


def check(root: Path, label: str | None = None) -> dict[str, Any]:
    """The bundle.json of the bundle at `root`, once schema, version and every checksum hold."""
    label = label or str(root)
    meta_path = root / BUNDLE_JSON
    if not meta_path.is_file():
        raise BundleError(f"{label} is not a Pocketformer bundle: it has no {BUNDLE_JSON}")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{label}/{BUNDLE_JSON} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict) or meta.get("schema") != SCHEMA:
        raise BundleError(f"{label}/{BUNDLE_JSON} is not a {SCHEMA} document")
    version = meta.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise BundleError(f"{label} is a {SCHEMA} version {version!r} bundle; this Pocketformer reads version "
                          f"{SCHEMA_VERSION}: upgrade Pocketformer on this side, or re-bundle with this one")
    if version < 1:
        raise BundleError(f"{label}: schema_version {version} is not a released version")
    for key in ("model", "artifacts", "samples"):
        if not meta.get(key):
            raise BundleError(f"{label}/{BUNDLE_JSON} has no {key!r}")
    sums_path = root / SUMS
    if not sums_path.is_file():
        raise BundleError(f"{label} has no {SUMS}: its files cannot be checked; re-bundle it")
    sums = read_sums(sums_path.read_text(encoding="utf-8"), f"{label}/{SUMS}")
    present = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} - {SUMS}
    missing = sorted(set(sums) - present)
    if missing:
        raise BundleError(f"{label}: {missing[0]} is listed in {SUMS} but missing"
                          + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    unlisted = sorted(present - set(sums))
    if unlisted:
        raise BundleError(f"{label}: {unlisted[0]} is not listed in {SUMS}; an unlisted file is never run or "
                          f"trusted: remove it or re-bundle")
    for name in sorted(sums):
        if _sha256(root / name) != sums[name]:
            raise BundleError(f"{label}: {name} does not match its checksum in {SUMS} (changed or corrupted "
                              f"since it was bundled)")
    referenced = [a[k] for a in meta["artifacts"] for k in ("file",)]
    referenced += [rel for s in meta["samples"] for rel in (s.get("inputs") or {}).values()]
    for rel in referenced:
        if rel not in sums:
            raise BundleError(f"{label}/{BUNDLE_JSON} names {rel}, which the bundle does not hold")
    return meta


def run_feeds(path: str | Path, feeds: list[dict[str, np.ndarray]], output_names: list[str],
              ranges: dict[str, Any] | None = None, backend: str | None = None, threads: int | None = None
              ) -> tuple[list[list[np.ndarray]], dict[str, Any]]:
    """Each feed through the artifact at `path` (`device_runtime.load`, adapt_io as at export); outputs in the
    model's order (by name when the artifact's names are the model's, else in the artifact's own order, as the
    export's parity check takes them). The host computes a bundle's expected outputs with this and the device
    its own, so both sides run the same code."""
    import device_runtime
    from device_runtime.session import with_value_ranges

    session = device_runtime.load(path, backend=backend, num_threads=threads, adapt_io=True)
    # In a bundle the artifact sits in artifacts/, away from report.json: integer ranges come from the model.
    if ranges and not any(t.value_range for t in session._inputs):
        session._inputs = with_value_ranges(session._inputs, ranges)
    names = [o.name for o in session.get_outputs()]
    order = [names.index(n) for n in output_names] if output_names and set(output_names) <= set(names) else None
    outputs, run_ms = [], []
    for feed in feeds:
        start = time.perf_counter()
        got = [np.asarray(g) for g in session.run(None, feed)]
        run_ms.append((time.perf_counter() - start) * 1e3)
        outputs.append([got[i] for i in order] if order is not None else got)
    return outputs, {"backend": session.backend, "load_time_ms": session.load_time_ms, "run_ms": run_ms}


def run_artifact(bundle: Bundle, file: str, backend: str | None = None, threads: int | None = None
                 ) -> tuple[dict[str, list[np.ndarray]], dict[str, Any]]:
    """Every sample of the bundle through one of its artifacts: ({sample id: outputs}, {backend, load_time_ms,
    run_ms})."""
    artifact = bundle.artifact(file)
    ranges = {i["name"]: i.get("value_range") for i in bundle.model.get("inputs") or [] if isinstance(i, dict)}
    samples = bundle.samples
    outputs, info = run_feeds(bundle.root / artifact["file"], [bundle.inputs(s) for s in samples],
                              bundle.output_names, ranges, backend, threads)
    return {s["id"]: out for s, out in zip(samples, outputs)}, info


def iter_outputs(outputs: dict[str, dict[str, list[np.ndarray]]], names: list[str]) -> Iterator[tuple[str, np.ndarray]]:
    """(`<file>/<sample id>/<output name>`, array) for every output, the .npz layout the device writes."""
    for file, by_sample in outputs.items():
        for sample_id, arrays in by_sample.items():
            for i, array in enumerate(arrays):
                yield f"{file}/{sample_id}/{names[i] if i < len(names) else i}", array


def read_outputs(path: Path, names: list[str]) -> dict[str, dict[str, list[np.ndarray]]]:
    """The inverse of `iter_outputs`, from the .npz a device wrote."""
    found: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    with np.load(path, allow_pickle=False) as data:
        for key in data.files:
            file, sample_id, name = key.split("/", 2)
            found.setdefault(file, {}).setdefault(sample_id, {})[name] = data[key]
    return {file: {s: [arrays[n] for n in names if n in arrays] for s, arrays in by.items()}
            for file, by in found.items()}


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m device_runtime.bundle", description=__doc__.split("\n\n")[0])
    p.add_argument("bundle")
    p.add_argument("--out", required=True, help="the .npz to write the outputs into")
    p.add_argument("--artifact", action="append", default=[], help="only these artifacts (default: all)")
    p.add_argument("--backend")
    p.add_argument("--threads", type=int)
    args = p.parse_args(argv)
    from device_runtime import atomic
    from device_runtime.errors import BackendUnavailableError

    summary: dict[str, Any] = {"schema": "pocketformer.verify-run/1", "artifacts": {}}
    code = 0
    try:
        with open_bundle(args.bundle) as bundle:
            files = args.artifact or [PurePosixPath(a["file"]).name for a in bundle.artifacts]
            outputs = {}
            for file in files:
                outputs[file], summary["artifacts"][file] = run_artifact(bundle, file, args.backend, args.threads)
            with atomic.atomic_path(Path(args.out)) as tmp:
                with open(tmp, "wb") as fh:  # a file object: np.savez would append .npz to the temporary name
                    np.savez(fh, **dict(iter_outputs(outputs, bundle.output_names)))
    except BackendUnavailableError as exc:
        summary["error"], code = {"kind": "runtime_missing", "type": type(exc).__name__, "message": str(exc)}, 3
    except PocketformerError as exc:
        summary["error"], code = {"kind": "bad_input", "type": type(exc).__name__, "message": str(exc)}, exc.exit_code
    except Exception as exc:  # report it on the framed channel: the host cannot read a device traceback
        summary["error"], code = {"kind": "error", "type": type(exc).__name__, "message": str(exc)}, 1
    from device_runtime.measure import host_info

    summary["machine"] = host_info()  # its "cpu" says when the board is emulated (scripts/arm64_board.sh)
    sys.stdout.write(f"{BEGIN}\n{json.dumps(summary, default=str)}\n{END}\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
