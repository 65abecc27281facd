"""Pocketformer's device runtime: load any exported artifact by sniffing it, validate inputs, run, profile.

Imports nothing heavier than numpy: a phone- or edge-side Python needs only numpy and one format's runtime.
Backends live in `device_runtime/backends/`, one module per format, and register themselves on import.

    >>> import device_runtime
    >>> session = device_runtime.load("out/mobilevit_xxs/fp32/model.pte", num_threads=2)
    >>> logits, = session.run(None, {"pixel_values": image})
"""
from __future__ import annotations

import importlib
import os
import pkgutil
import time

from device_runtime import backends as _backends_pkg
from device_runtime.errors import (BackendUnavailableError, CorruptArtifactError, DTypeError, ExecutionError,
                                   InputError, MissingInputError, ShapeError, UnexpectedInputError, UnknownFormatError)
from device_runtime.profile import OpProfile, OpProfileRow, ProfilerUnavailableError, profile_capabilities
from device_runtime.registry import BACKENDS, FORMATS, choose_backend, sniff_format
from device_runtime.session import BenchmarkResult, LatencyStats, QuantParams, Session, TensorInfo

for _module in pkgutil.iter_modules(_backends_pkg.__path__):
    importlib.import_module(f"{_backends_pkg.__name__}.{_module.name}")


def load(path: str | os.PathLike, backend: str | None = None, num_threads: int | None = None,
         adapt_io: bool = False, **options) -> Session:
    """Open an artifact. The format comes from the file's bytes; `backend` picks among that format's
    runtimes (default: the first installed, in precedence order, reported in `session.info`).
    `adapt_io=True` casts/quantizes feeds to what the artifact expects (see `Session.adapt_io`)."""
    fmt = sniff_format(path)
    chosen = choose_backend(fmt, backend)
    start = time.perf_counter()
    session = chosen.open(str(path), num_threads=num_threads, **options)
    session.load_time_ms = (time.perf_counter() - start) * 1e3
    session.adapt_io = adapt_io
    return session


def list_backends() -> dict[str, list[dict]]:
    """Every registered format's backends, in precedence order, with why each is unavailable (or None)."""
    return {fmt: [{"name": b.name, "unavailable": b.available()} for b in entries]
            for fmt, entries in BACKENDS.items()}


__all__ = ["load", "list_backends", "sniff_format", "FORMATS", "Session", "TensorInfo", "QuantParams",
           "OpProfile", "OpProfileRow", "ProfilerUnavailableError", "profile_capabilities",
           "BenchmarkResult", "LatencyStats", "BackendUnavailableError", "CorruptArtifactError", "DTypeError",
           "ExecutionError", "InputError", "MissingInputError", "ShapeError", "UnexpectedInputError", "UnknownFormatError"]
