"""Shared test fixtures. Tests run on the tiny variants of the real architectures; the matrices come from
the registries (`list_models()`, `list_converters()`), never from lists typed here."""
from __future__ import annotations

import fcntl
import functools
import hashlib
import importlib.metadata
import json
import pickle
import shutil
import time
from pathlib import Path

import pytest

from sdk.device.loopback import free_port, loopback_sshd, sshd_missing  # noqa: F401 (test_remote imports free_port)

ROOT = Path(__file__).resolve().parents[1]
EXPORT_CACHE = ROOT / ".cache" / "test-exports"  # git-ignored
# The variants most tests export: the per-family matrices take these as their families' representatives
# (`family_representatives(prefer=SUITE_MODELS)`), so the matrix and the other tests share one cached export.
SUITE_MODELS = ("mobilevit_xxs", "tinybert_4l_312d")
EXPORT_CACHE_KEPT_S = 6 * 3600  # a cached export unused for this long is removed when the next run starts


@pytest.fixture(scope="session")
def export_tiny(cached_export):
    """`export_tiny(model, fmt, precision, **options)` -> the ExportResult of one format: `cached_export`'s, so an
    export is made once for both xdist workers, not once per worker. Tests must not modify it (copy first)."""

    def run(model: str, fmt: str, precision: str | None = None, **options):
        return cached_export(model, fmt, precision, **options)[0]

    return run


@functools.cache
def _sources_digest() -> bytes:
    """The SDK's sources and every installed package's version, read once per process (they do not change
    during a run): what every cached export depends on besides its arguments."""
    digest = hashlib.sha256(str(ROOT).encode())
    for package in ("converters", "device_runtime", "models_zoo", "sdk"):
        for path in sorted((ROOT / package).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    for dist in sorted(f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions()):
        digest.update(dist.encode() + b"\n")
    return digest.digest()


def _export_key(args: dict) -> str:
    """What a cached export depends on: its arguments, the SDK's sources and every installed package's version."""
    digest = hashlib.sha256(json.dumps(args, sort_keys=True, default=str).encode() + _sources_digest())
    return digest.hexdigest()[:16]


def _cached_results(folder: Path):
    """The ExportResults of a finished cached export whose artifacts still match their entries, else None."""
    done = folder / "results.pkl"
    if not done.is_file():
        return None
    try:
        results = pickle.loads(done.read_bytes())
    except Exception:  # written by another version of the SDK's classes: export again
        return None
    if not all(r.entry.matches(r.path) for r in results):
        return None
    done.touch()  # most recently used
    return results


@pytest.fixture(scope="session")
def cached_export():
    """`cached_export(model, formats, precision, **options)` -> [ExportResult] of `sdk.export` of the tiny variant,
    made once for every test module, xdist worker and run that asks for the same export of the same sources.

    The export goes to .cache/test-exports/<key>/ (the key hashes the arguments, the SDK's sources and the
    installed packages' versions); a worker asking while another exports waits on its lock, then reads its
    results. An entry whose artifacts no longer match their manifest entries, or that was left half-written, is
    exported again. Tests must not modify what it returns (copy first)."""
    from sdk.export.api import export

    memo: dict[str, list] = {}

    def run(model: str, formats, precision: str | None = None, **options):
        formats = [formats] if isinstance(formats, str) else list(formats)
        key = _export_key({"model": model, "formats": formats, "precision": precision, **options})
        if key not in memo:
            EXPORT_CACHE.mkdir(parents=True, exist_ok=True)
            folder = EXPORT_CACHE / key
            with open(EXPORT_CACHE / f"{key}.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                results = _cached_results(folder)
                if results is None:
                    shutil.rmtree(folder, ignore_errors=True)
                    results = export(model, formats, precision, out_dir=folder / "out", tiny=True, **options)
                    (folder / "results.pkl").write_bytes(pickle.dumps(results))  # last: marks it complete
            memo[key] = results
        return memo[key]

    return run


def _prune_export_cache() -> None:
    """Remove cached exports unused for EXPORT_CACHE_KEPT_S (a change to the sources makes new keys, so old ones
    pile up). Only when a run starts, in the controller: during the run another worker may hold any of them."""
    for done in EXPORT_CACHE.glob("*/results.pkl"):
        if time.time() - done.stat().st_mtime > EXPORT_CACHE_KEPT_S:
            shutil.rmtree(done.parent, ignore_errors=True)
            (EXPORT_CACHE / f"{done.parent.name}.lock").unlink(missing_ok=True)


SETUP_LOCK = ROOT / ".cache" / "setup.lock"  # held by .ci/run while it builds the device environments


def _wait_for_setup() -> None:
    """.ci/run builds the boards and system packages in the background while pip installs: wait for that build
    (it holds SETUP_LOCK) so no board test skips for starting early. Nothing to wait for outside CI."""
    if not SETUP_LOCK.exists():
        return
    start = time.time()
    with open(SETUP_LOCK) as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)
    waited = time.time() - start
    if waited > 1:
        print(f"waited {waited:.0f} s for .ci/run's device environments (.cache/setup.log)")


def pytest_configure(config):
    if not hasattr(config, "workerinput"):  # the controller (or a run without xdist), before any test
        _wait_for_setup()
        _prune_export_cache()


# -- a real OpenSSH server on 127.0.0.1 (tests/test_remote.py, tests/test_arm64_board.py) --------------------


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    missing = sshd_missing()
    if missing:
        pytest.skip(missing)
    with loopback_sshd(tmp_path_factory.mktemp("sshd")) as ssh:
        yield {"port": ssh.port, "user": ssh.user, "key": ssh.key, "stranger": ssh.stranger,
               "known_hosts": ssh.known_hosts, "empty_known_hosts": ssh.empty_known_hosts, "dir": ssh.dir}


# -- tiny Hugging Face folders (tests/test_user_models.py, tests/test_hf_image_folders.py) --------------------
def save_hf_folders(root: Path, made: dict) -> tuple[Path, dict]:
    """Save each {name: (model, processor)} as a folder under `root` with `save_pretrained`, after an explicit
    init: transformers v5 models built from a bare config can give ~1e-40 outputs (DESIGN §2), and small normal
    weights (std 0.1-0.3) left a tiny MobileViT's outputs the same for every photo (the input fades stage by
    stage). He init with unit norms and zero biases keeps them: outputs differ photo to photo. Returns (root,
    {name: model})."""
    import torch

    torch.manual_seed(0)
    for name, (model, processor) in made.items():
        for p_name, p in model.named_parameters():
            if p.dim() > 1:
                torch.nn.init.kaiming_normal_(p, nonlinearity="relu")
            else:
                torch.nn.init.ones_(p) if p_name.endswith("weight") else torch.nn.init.zeros_(p)
        model.eval().save_pretrained(root / name)
        processor.save_pretrained(root / name)
    return root, {name: model for name, (model, _) in made.items()}
