"""Sequence-length buckets: one artifact holding several input lengths, and the session that routes to them.

An edge app's sentences come in every length; padding each to 128 tokens spends most of the compute on
padding. `pocketformer export --seq-lens 16,32,64,128` writes one artifact with an entry point per length and
the weights stored once: an ExecuTorch program with a method per length (`seq16`, ..., plus `forward`, the
largest), a TFLite file with a signature per length (`seq16`, ...), or an ONNX model with a dynamic sequence
axis whose verified lengths are listed in its metadata. `device_runtime.load` sees the buckets and returns a
`BucketedSession`, which pads each request to the smallest bucket that fits and runs that entry point.

Padding is exact for the BERT family: padded positions get token id 0 ([PAD]), attention mask 0 and token
type 0, so attention never sees them, and per-token outputs are cut back to the request's length.
A request longer than the largest bucket is a `SequenceTooLongError` naming the largest bucket, unless the
session was loaded with `truncate=True` (which keeps the first tokens; a tokenizer that truncates itself, keeping
the final [SEP], is better still: `sdk.feeds` does so at the largest bucket).
"""
from __future__ import annotations

import re
from dataclasses import replace
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from device_runtime.errors import ShapeError, UsageError
from device_runtime.session import Session, TensorInfo

SEQUENCE_AXIS = 1  # (batch, sequence, ...): the BERT family's inputs and per-token outputs
# The entry point of one length; the one naming rule shared by the converters and the backends.
ENTRY_POINT = "seq{length}"
_ENTRY_POINT_RE = re.compile(r"^seq(\d+)$")
# The ONNX metadata_props key holding the verified lengths of a dynamic-axis model (JSON list of ints).
ONNX_METADATA_KEY = "pocketformer.buckets"


class SequenceTooLongError(ShapeError):
    """A request longer than the largest bucket of the artifact."""


def entry_point(length: int) -> str:
    return ENTRY_POINT.format(length=int(length))


def lengths_from_entry_points(names: Sequence[str]) -> dict[int, str]:
    """{length: name} for the entry points named by `ENTRY_POINT` (others, like `forward`, are ignored)."""
    found = {}
    for name in names:
        match = _ENTRY_POINT_RE.match(name)
        if match:
            found[int(match.group(1))] = name
    return found


def parse_lengths(text: str | Sequence[int]) -> list[int]:
    """`"16,32,64"` (or a list) -> sorted distinct positive lengths; a UsageError names a bad one."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    lengths = set()
    for part in parts:
        try:
            value = int(str(part).strip())
        except ValueError:
            raise UsageError(f"sequence lengths must be integers, got {part!r} in {text!r}") from None
        if value < 2:
            raise UsageError(f"a sequence length must be at least 2 ([CLS] and [SEP]), got {value}")
        lengths.add(value)
    if not lengths:
        raise UsageError("no sequence lengths given (e.g. --seq-lens 16,32,64,128)")
    return sorted(lengths)


class BucketedSession(Session):
    """A `Session` over an artifact's sequence-length buckets: each run goes to the smallest bucket that fits.

    Built by `device_runtime.load` from the first session it opened (its `buckets` say which entry points
    exist) and `open_entry(name)`, which opens another entry point of the same file. Inputs with the
    sequence axis take any length up to `lengths[-1]`; everything else (validation, value ranges, hooks,
    thread safety, benchmarks) is `Session`'s. One lock covers all buckets where the runtime is not re-entrant,
    as a single session's does.
    """

    def __init__(self, first: Session, open_entry: Callable[[str], Session], truncate: bool = False) -> None:
        super().__init__(first.path, first.num_threads)
        self.format, self.backend, self.reentrant = first.format, first.backend, first.reentrant
        self.truncate = bool(truncate)
        self.lengths = sorted(first.buckets)
        first_entry = getattr(first, "entry_point", None)
        self._sessions: dict[int, Session] = {}
        for length in self.lengths:
            name = first.buckets[length]
            self._sessions[length] = first if name is None or name == first_entry else open_entry(name)
        largest = self._sessions[self.lengths[-1]]
        self._sequence_inputs = [i for i, t in enumerate(largest._inputs) if _has_sequence_axis(t, self.lengths[-1])]
        if not self._sequence_inputs:
            raise UsageError(f"{first.path} lists sequence buckets {self.lengths} but no input has a sequence axis")
        self._inputs = [_variable(t) if i in self._sequence_inputs else t for i, t in enumerate(largest._inputs)]
        self._sequence_outputs = self._per_token_outputs()
        self._outputs = [_variable(t) if i in self._sequence_outputs else t for i, t in enumerate(largest._outputs)]

    def _per_token_outputs(self) -> set[int]:
        """Outputs whose sequence axis follows the bucket (cut back to the request's length after a run)."""
        if len(self.lengths) > 1 and len({id(s) for s in self._sessions.values()}) > 1:
            small, large = self._sessions[self.lengths[0]], self._sessions[self.lengths[-1]]
            return {i for i, (a, b) in enumerate(zip(small._outputs, large._outputs))
                    if len(a.shape) > SEQUENCE_AXIS and a.shape[SEQUENCE_AXIS] != b.shape[SEQUENCE_AXIS]}
        only = self._sessions[self.lengths[-1]]  # one dynamic-axis model
        return {i for i, t in enumerate(only._outputs) if _has_sequence_axis(t, None)}

    def route(self, length: int) -> int:
        """The bucket a request of `length` tokens runs in (raises `SequenceTooLongError` beyond the largest,
        unless `truncate`)."""
        for bucket in self.lengths:
            if length <= bucket:
                return bucket
        if self.truncate:
            return self.lengths[-1]
        raise SequenceTooLongError(
            f"a sequence of {length} tokens is longer than the largest bucket of {self.path}, "
            f"{self.lengths[-1]} (buckets: {', '.join(map(str, self.lengths))}); tokenize with truncation at "
            f"{self.lengths[-1]}, load with truncate=True, or re-export with a larger --seq-lens")

    def padded(self, arrays: Sequence[np.ndarray]) -> tuple[int, int, list[np.ndarray]]:
        """(request length, bucket, the arrays padded with zeros, or truncated, to that bucket)."""
        length = int(arrays[self._sequence_inputs[0]].shape[SEQUENCE_AXIS])
        for i in self._sequence_inputs[1:]:
            if arrays[i].shape[SEQUENCE_AXIS] != length:
                raise ShapeError(f"input {self._inputs[i].name!r} has {arrays[i].shape[SEQUENCE_AXIS]} tokens, "
                                 f"{self._inputs[self._sequence_inputs[0]].name!r} has {length}: they must agree")
        bucket = self.route(length)
        out = list(arrays)
        for i in self._sequence_inputs:
            a = arrays[i]
            if length > bucket:
                out[i] = np.ascontiguousarray(a[:, :bucket])
            elif length < bucket:
                pad = [(0, 0)] * a.ndim
                pad[SEQUENCE_AXIS] = (0, bucket - length)
                out[i] = np.pad(a, pad)  # zeros: [PAD] ids, mask 0, token type 0
        return length, bucket, out

    def _execute(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        length, bucket, padded = self.padded(arrays)
        outputs = self._sessions[bucket]._execute(padded)
        keep = min(length, bucket)
        return [o[:, :keep] if i in self._sequence_outputs else o for i, o in enumerate(outputs)]

    def profile(self, feed: Mapping[str, Any] | Sequence[Any] | None = None, runs: int = 10, warmup: int = 2):
        """The per-operator profile of the bucket this feed is routed to."""
        _, bucket, padded = self.padded(self._validate(feed if feed is not None else self.example_feed()))
        return self._sessions[bucket].profile(padded, runs=runs, warmup=warmup)

    def example_feed(self) -> dict[str, np.ndarray]:
        return self._sessions[self.lengths[-1]].example_feed()

    def _backend_info(self) -> dict[str, Any]:
        largest = self._sessions[self.lengths[-1]]
        return {**largest._backend_info(), "buckets": self.lengths,
                "entry_points": {str(k): getattr(s, "entry_point", None) for k, s in self._sessions.items()}}

    def close(self) -> None:
        for session in {id(s): s for s in self._sessions.values()}.values():
            session.close()


def _has_sequence_axis(info: TensorInfo, length: int | None) -> bool:
    if len(info.shape) <= SEQUENCE_AXIS:
        return False
    dim = info.shape[SEQUENCE_AXIS]
    return dim is None or (length is not None and dim == length)


def _variable(info: TensorInfo) -> TensorInfo:
    shape = list(info.shape)
    shape[SEQUENCE_AXIS] = None
    return replace(info, shape=tuple(shape), dynamic_axes={**info.dynamic_axes, SEQUENCE_AXIS: "sequence"})
