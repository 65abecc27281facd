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
from pathlib import Path

from device_runtime import backends as _backends_pkg
from device_runtime.errors import (BackendUnavailableError, CorruptArtifactError, DTypeError, ExecutionError,
                                   IncompatibleProgramError, InputError, MissingInputError, NonFiniteInputError,
                                   ShapeError, UnexpectedInputError, UnknownFormatError, ValueRangeError)
from device_runtime.profile import OpProfile, OpProfileRow, ProfilerUnavailableError, profile_capabilities
from device_runtime.registry import BACKENDS, FORMATS, choose_backend, sniff_format
from device_runtime.session import BenchmarkResult, LatencyStats, QuantParams, Session, TensorInfo, with_value_ranges
from device_runtime.buckets import BucketedSession, SequenceTooLongError
from device_runtime.packing import PackedRunner, packed_batch_runner
from device_runtime.batching import Batcher, QueueFullError, session_batch_runner
from device_runtime.pool import SessionPool
from device_runtime.pipeline import PipelineError, PipelineSession, is_pipeline, open_pipeline

for _module in pkgutil.iter_modules(_backends_pkg.__path__):
    importlib.import_module(f"{_backends_pkg.__name__}.{_module.name}")


def load(path: str | os.PathLike, backend: str | None = None, num_threads: int | None = None,
         adapt_io: bool = False, allow_non_finite: bool = False, truncate: bool = False, **options) -> Session:
    """Open an artifact. The format comes from the file's bytes; `backend` picks among that format's
    runtimes (default: the first installed, in precedence order, reported in `session.info`).
    `adapt_io=True` casts/quantizes feeds to what the artifact expects (see `Session.adapt_io`).

    Input safety: every run checks integer inputs against the value ranges the artifact records (token ids in
    [0, vocab_size - 1], token types, masks; from the `.pte` metadata method or the ONNX metadata_props, else
    from the `report.json` manifest beside the artifact; `TensorInfo.value_range`) and raises `ValueRangeError`
    naming the input, the position and the range, before the native runtime sees the feed. Float inputs holding
    NaN or Inf raise `NonFiniteInputError` unless `allow_non_finite=True` (also `Session.allow_non_finite`).

    Sequence-length buckets: an artifact exported with `--seq-lens` opens as a `BucketedSession` that pads each
    request to the smallest length it holds (`session.lengths`); a longer one raises `SequenceTooLongError`
    unless `truncate=True`. Batch buckets (`--batch-sizes`, .pte/.tflite) open as a `BucketedSession` over the
    batch axis (`session.batch_sizes`): fewer rows are padded to the smallest bucket that fits, more run in chunks
    of the largest. Naming an entry point (`method=` for .pte, `signature=` for .tflite) opens just that one.

    Pipelines: a folder with a `pipeline.json` (or a bundle holding one) opens as a `PipelineSession` running its
    artifacts and glue steps in order (`device_runtime.pipeline`; `backend` then maps stage names to backends)."""
    if is_pipeline(path):
        return open_pipeline(path, load, backend=backend, num_threads=num_threads, adapt_io=adapt_io,
                             allow_non_finite=allow_non_finite, **options)
    fmt = sniff_format(path)
    chosen = choose_backend(fmt, backend)
    start = time.perf_counter()
    session = chosen.open(str(path), num_threads=num_threads, **options)
    session.load_time_ms = first_load_ms = (time.perf_counter() - start) * 1e3
    named_entry = session.entry_point_option is not None and session.entry_point_option in options
    if session.buckets and not named_entry:
        option = session.entry_point_option

        def open_entry(name: str) -> Session:
            opened = chosen.open(str(path), num_threads=num_threads, **options, **{option: name})
            return _finish(opened, path, adapt_io, allow_non_finite)

        start = time.perf_counter()
        session = BucketedSession(_finish(session, path, adapt_io, allow_non_finite), open_entry, truncate=truncate)
        session.load_time_ms = first_load_ms + (time.perf_counter() - start) * 1e3
    return _finish(session, path, adapt_io, allow_non_finite)


def _finish(session: Session, path, adapt_io: bool, allow_non_finite: bool) -> Session:
    session.adapt_io = adapt_io
    session.allow_non_finite = bool(allow_non_finite)
    if not any(t.value_range for t in session._inputs):
        session._inputs = with_value_ranges(session._inputs, _manifest_value_ranges(path))
    return session


def _manifest_value_ranges(path: str | os.PathLike) -> dict[str, list[int]]:
    """{input: [min, max]} from the manifest beside an artifact with no ranges of its own ({} when none)."""
    from device_runtime.manifest import ManifestError, read_manifest

    folder = Path(path).parent
    try:
        inputs = read_manifest(folder).model.get("inputs") or []
    except (ManifestError, OSError):
        return {}  # an unreadable manifest does not stop a run; the artifact is simply not range-checked
    return {i["name"]: i["value_range"] for i in inputs
            if isinstance(i, dict) and "name" in i and i.get("value_range") is not None}


def list_backends() -> dict[str, list[dict]]:
    """Every registered format's backends, in precedence order, with why each is unavailable (or None)."""
    return {fmt: [{"name": b.name, "unavailable": b.available()} for b in entries]
            for fmt, entries in BACKENDS.items()}


__all__ = ["load", "list_backends", "sniff_format", "FORMATS", "Session", "TensorInfo", "QuantParams",
           "OpProfile", "OpProfileRow", "ProfilerUnavailableError", "profile_capabilities",
           "BenchmarkResult", "LatencyStats", "BackendUnavailableError", "CorruptArtifactError", "DTypeError",
           "ExecutionError", "IncompatibleProgramError", "InputError", "MissingInputError", "NonFiniteInputError",
           "ShapeError", "UnexpectedInputError", "UnknownFormatError", "ValueRangeError"]
__all__ += ["SessionPool", "Batcher", "QueueFullError", "session_batch_runner", "BucketedSession", "SequenceTooLongError",
            "PackedRunner", "packed_batch_runner", "PipelineSession", "PipelineError"]
