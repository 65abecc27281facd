"""Format and backend registries, and format sniffing from the artifact's bytes.

A backend module registers itself on import with `register_backend`. Backends of one format are kept in
precedence order; `load` uses the first whose runtime is installed only when the caller named none, and
says which it picked in `Session.info`. A named backend that is unavailable is an error, never a fallback.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from device_runtime.errors import ArtifactNotFoundError, BackendUnavailableError, UnknownFormatError


@dataclass(frozen=True)
class Backend:
    format: str
    name: str
    open: Callable[..., "object"]  # (path, num_threads, **options) -> Session
    available: Callable[[], str | None]  # None when usable, else why not
    precedence: int = 0


@dataclass(frozen=True)
class Format:
    name: str
    suffixes: tuple[str, ...]
    sniff: Callable[[Path], bool]  # True when the bytes (or folder layout) are this format's
    description: str = ""


FORMATS: dict[str, Format] = {}
BACKENDS: dict[str, list[Backend]] = {}


def register_format(fmt: Format) -> Format:
    FORMATS[fmt.name] = fmt
    BACKENDS.setdefault(fmt.name, [])
    return fmt


def module_present(name: str) -> bool:
    """Whether `name` is importable, without importing it (a module a test put in sys.modules counts)."""
    if name in sys.modules:
        return sys.modules[name] is not None
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent package that is missing or broken
        return False


def requires_module(name: str, missing: str) -> Callable[[], str | None]:
    """A `Backend.available` check: None when module `name` is importable, else the message `missing`."""
    return lambda: None if module_present(name) else missing


def register_backend(backend: Backend) -> Backend:
    entries = BACKENDS.setdefault(backend.format, [])
    entries[:] = [b for b in entries if b.name != backend.name] + [backend]
    entries.sort(key=lambda b: b.precedence)
    return backend


def read_head(path: Path, n: int = 64) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(n)


def sniff_format(path: str | os.PathLike) -> str:
    """The format of an artifact, from its bytes (or, for package folders, their layout)."""
    path = Path(path)
    if not path.exists():
        raise ArtifactNotFoundError(f"no such artifact: {path}")
    if path.is_file() and path.stat().st_size == 0:
        raise UnknownFormatError(f"{path} is empty")
    for fmt in FORMATS.values():
        try:
            if fmt.sniff(path):
                return fmt.name
        except OSError:
            continue
    known = ", ".join(f"{f.name} ({'/'.join(f.suffixes)})" for f in FORMATS.values())
    raise UnknownFormatError(f"{path} is not a known artifact format (known: {known})")


def choose_backend(fmt: str, name: str | None) -> Backend:
    candidates = BACKENDS.get(fmt, [])
    if not candidates:
        raise BackendUnavailableError(f"no backend registered for format {fmt!r}")
    if name is not None:
        match = [b for b in candidates if b.name == name]
        if not match:
            raise BackendUnavailableError(
                f"unknown backend {name!r} for {fmt}; backends: {', '.join(b.name for b in candidates)}")
        reason = match[0].available()
        if reason:
            raise BackendUnavailableError(f"backend {name!r} for {fmt} is unavailable: {reason}")
        return match[0]
    reasons = []
    for backend in candidates:
        reason = backend.available()
        if reason is None:
            return backend
        reasons.append(f"{backend.name}: {reason}")
    raise BackendUnavailableError(f"no usable backend for {fmt}: " + "; ".join(reasons))
