"""Buckets: one artifact holding several sizes of one input axis, and the session that routes to them.

Two axes, one mechanism (`BucketAxis`):

- Sequence length (the BERT family, `export --seq-lens 16,32,64,128`). An edge app's sentences come in every
  length; padding each to 128 tokens spends most of the compute on padding. Entry points `seq16`, ...
  (ExecuTorch: plus `forward`, the largest), or an ONNX model with a dynamic sequence axis whose verified
  lengths are in its metadata. Padding is exact for the BERT family: padded positions get token id 0 ([PAD]),
  attention mask 0 and token type 0, so attention never sees them, and per-token outputs are cut back to the
  request's length. A request longer than the largest bucket is a `SequenceTooLongError` naming the largest
  bucket, unless the session was loaded with `truncate=True` (which keeps the first tokens; a tokenizer that
  truncates itself, keeping the final [SEP], is better still: `sdk.cli.feeds` does so at the largest bucket).
- Batch (the vision families, `export --batch-sizes 1,2,4,8`). A `.pte` or `.tflite` has fixed shapes, so a
  batch axis that a `Batcher` can stack requests on needs one entry point per batch size: `batch1`, `batch2`,
  ... (ExecuTorch: plus `forward` = the smallest, batch 1, so tools that run `forward` still work; the program
  records the axis). A feed of N rows runs
  in the smallest bucket of at least N rows, padded with rows of zeros, and the outputs are cut back to N rows
  (rows are independent in these models, so padding changes nothing). N above the largest bucket is split into
  chunks of the largest (the last one padded) rather than refused: a batch is a throughput choice, never a
  reason to fail a request. ONNX keeps its dynamic batch axis (any N runs as N rows: nothing to pad) and
  records the verified sizes in its metadata (`ONNX_BATCH_METADATA_KEY`, `session.batch_sizes`).

A third axis, packed rows (`export --pack 32x4,64x8,128x16`, `PACKED`: entry points `pack32`, ...), routes a
packed row to the entry point of its length; its outputs (one per segment) are not cut, and `row_shapes` lists
(row length, sentences per row) for `device_runtime.packing.PackedRunner`.

`device_runtime.load` sees an artifact's buckets and returns a `BucketedSession` (`session.lengths` or
`session.batch_sizes`), which `session_batch_runner` sees as a dynamic batch axis.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from device_runtime.errors import ShapeError, UsageError
from device_runtime.session import Session, TensorInfo


@dataclass(frozen=True)
class BucketAxis:
    """One axis an artifact may hold several sizes of: where it is, how its entry points are named, what
    happens beyond the largest size. The one naming rule shared by the converters and the backends."""

    name: str          # "sequence", "batch": the axis' name in TensorInfo.dynamic_axes and in reports
    index: int         # its position in the inputs (and in the outputs that follow it)
    prefix: str        # entry points are named prefix + size: seq16, batch4
    flag: str          # the export flag that makes such an artifact (for messages)
    chunks: bool       # beyond the largest bucket: split into chunks of it (True), or refuse (False)
    # With one bucket in one session, an output follows the axis where its dim is dynamic, or (for an axis
    # every output leads with: batch) equal to the bucket.
    outputs_lead: bool

    def entry_point(self, size: int) -> str:
        return f"{self.prefix}{int(size)}"

    def sizes_from_entry_points(self, names: Sequence[str]) -> dict[int, str]:
        """{size: name} of the entry points named by this axis (others, like `forward`, are ignored)."""
        pattern = re.compile(rf"^{re.escape(self.prefix)}(\d+)$")
        return {int(m.group(1)): name for name in names if (m := pattern.match(name))}


SEQUENCE = BucketAxis("sequence", 1, "seq", "--seq-lens", chunks=False, outputs_lead=False)
BATCH = BucketAxis("batch", 0, "batch", "--batch-sizes", chunks=True, outputs_lead=True)
# Packed rows in several lengths (`--pack 32x4,64x8,128x16`; device_runtime.packing): sizes are row lengths,
# padding a row with zeros is exact (segment 0 is padding), and no output follows the axis (one per segment).
PACKED = BucketAxis("packed", 1, "pack", "--pack", chunks=False, outputs_lead=False)
AXES = {axis.name: axis for axis in (SEQUENCE, BATCH, PACKED)}

SEQUENCE_AXIS = SEQUENCE.index  # (batch, sequence, ...): the BERT family's inputs and per-token outputs
ENTRY_POINT = "seq{length}"
# The ONNX metadata_props key holding the verified lengths of a dynamic-axis model (JSON list of ints).
ONNX_METADATA_KEY = "pocketformer.buckets"
# The ONNX metadata_props key holding the verified batch sizes of a dynamic-batch model (JSON list of ints).
ONNX_BATCH_METADATA_KEY = "pocketformer.batch_sizes"


class SequenceTooLongError(ShapeError):
    """A request longer than the largest bucket of the artifact."""


def entry_point(length: int) -> str:
    return SEQUENCE.entry_point(length)


def lengths_from_entry_points(names: Sequence[str]) -> dict[int, str]:
    """{length: name} for the entry points named by `ENTRY_POINT` (others, like `forward`, are ignored)."""
    return SEQUENCE.sizes_from_entry_points(names)


def buckets_from_entry_points(names: Sequence[str], every: bool = False) -> tuple[BucketAxis | None, dict[int, str]]:
    """The axis whose naming rule `names` follow and {size: name}; (None, {}) when none does. `every`: every
    name must be one of that axis' entry points (a TFLite file's signatures)."""
    for axis in AXES.values():
        found = axis.sizes_from_entry_points(names)
        if found and (not every or len(found) == len(names)):
            return axis, found
    return None, {}


def _parse_sizes(text: str | Sequence[int], what: str, minimum: int, example: str) -> list[int]:
    parts = text.split(",") if isinstance(text, str) else list(text)
    sizes = set()
    for part in parts:
        try:
            value = int(str(part).strip())
        except ValueError:
            raise UsageError(f"{what}s must be integers, got {part!r} in {text!r}") from None
        if value < minimum:
            raise UsageError(f"a {what} must be at least {minimum}"
                             f"{' ([CLS] and [SEP])' if what == 'sequence length' else ''}, got {value}")
        sizes.add(value)
    if not sizes:
        raise UsageError(f"no {what}s given (e.g. {example})")
    return sorted(sizes)


def parse_lengths(text: str | Sequence[int]) -> list[int]:
    """`"16,32,64"` (or a list) -> sorted distinct positive lengths; a UsageError names a bad one."""
    return _parse_sizes(text, "sequence length", 2, "--seq-lens 16,32,64,128")


def parse_batch_sizes(text: str | Sequence[int]) -> list[int]:
    """`"1,2,4,8"` (or a list) -> sorted distinct batch sizes >= 1; a UsageError names a bad one."""
    return _parse_sizes(text, "batch size", 1, "--batch-sizes 1,2,4,8")


class BucketedSession(Session):
    """A `Session` over an artifact's buckets along one axis (`axis`: sequence or batch): each run goes to the
    smallest bucket that fits, padded with zeros along that axis, and the outputs that follow the axis are cut
    back to the request's size.

    Built by `device_runtime.load` from the first session it opened (its `buckets` and `bucket_axis` say which
    entry points exist) and `open_entry(name)`, which opens another entry point of the same file. Inputs with
    the axis take any size up to the largest bucket (any size at all for the batch axis: larger feeds run in
    chunks of the largest); everything else (validation, value ranges, hooks, thread safety, benchmarks) is
    `Session`'s. One lock covers all buckets where the runtime is not re-entrant, as a single session's does.
    `sizes` are the buckets; `lengths` (sequence) or `batch_sizes` (batch) name them for their axis and are
    empty for the other.
    """

    def __init__(self, first: Session, open_entry: Callable[[str], Session], truncate: bool = False) -> None:
        super().__init__(first.path, first.num_threads)
        self.format, self.backend, self.reentrant = first.format, first.backend, first.reentrant
        self.axis = AXES[getattr(first, "bucket_axis", SEQUENCE.name)]
        self.truncate = bool(truncate)
        self.sizes = sorted(first.buckets)
        self.lengths = self.sizes if self.axis is SEQUENCE else []
        self.batch_sizes = self.sizes if self.axis is BATCH else []
        first_entry = getattr(first, "entry_point", None)
        self._sessions: dict[int, Session] = {}
        for size in self.sizes:
            name = first.buckets[size]
            self._sessions[size] = first if name is None or name == first_entry else open_entry(name)
        largest = self._sessions[self.sizes[-1]]
        self._bucketed_inputs = [i for i, t in enumerate(largest._inputs) if self._follows(t, self.sizes[-1])]
        if not self._bucketed_inputs:
            raise UsageError(f"{first.path} lists {self.axis.name} buckets {self.sizes} but no input has a "
                             f"{self.axis.name} axis")
        self._inputs = [self._variable(t) if i in self._bucketed_inputs else t for i, t in enumerate(largest._inputs)]
        self._bucketed_outputs = self._following_outputs()
        self._outputs = [self._variable(t) if i in self._bucketed_outputs else t
                         for i, t in enumerate(largest._outputs)]
        if self.axis is PACKED:  # the segment axis differs per entry point
            self._outputs = [replace(t, shape=(t.shape[0], None, *t.shape[2:]), dynamic_axes={1: "segments"})
                             for t in self._outputs]

    def entry(self, size: int) -> Session:
        """The session of the bucket of `size` (an entry point of the same file)."""
        return self._sessions[size]

    @property
    def row_shapes(self) -> list[tuple[int, int]]:
        """Packed rows: [(row length, sentences per row)] of each entry point, shortest first; [] on other axes."""
        if self.axis is not PACKED:
            return []
        return [(size, int(self._sessions[size].get_outputs()[0].shape[1])) for size in self.sizes]

    def _following_outputs(self) -> set[int]:
        """Outputs whose axis follows the bucket (cut back to the request's size after a run)."""
        axis = self.axis.index
        if self.axis is PACKED:  # (1, segments, ...): each entry point its own segment count, nothing to cut
            return set()
        if len(self.sizes) > 1 and len({id(s) for s in self._sessions.values()}) > 1:
            small, large = self._sessions[self.sizes[0]], self._sessions[self.sizes[-1]]
            return {i for i, (a, b) in enumerate(zip(small._outputs, large._outputs))
                    if len(a.shape) > axis and a.shape[axis] != b.shape[axis]}
        only = self._sessions[self.sizes[-1]]  # one dynamic-axis model, or a single bucket
        return {i for i, t in enumerate(only._outputs)
                if self._follows(t, self.sizes[-1] if self.axis.outputs_lead else None)}

    def _follows(self, info: TensorInfo, size: int | None) -> bool:
        if len(info.shape) <= self.axis.index:
            return False
        dim = info.shape[self.axis.index]
        return dim is None or (size is not None and dim == size)

    def _variable(self, info: TensorInfo) -> TensorInfo:
        shape = list(info.shape)
        shape[self.axis.index] = None
        return replace(info, shape=tuple(shape), dynamic_axes={**info.dynamic_axes, self.axis.index: self.axis.name})

    def route(self, size: int) -> int:
        """The bucket a request of `size` (tokens, or rows) runs in. Beyond the largest: the largest for the
        batch axis (run in chunks of it); `SequenceTooLongError` for the sequence axis, unless `truncate`."""
        for bucket in self.sizes:
            if size <= bucket:
                return bucket
        if self.truncate or self.axis.chunks:
            return self.sizes[-1]
        raise SequenceTooLongError(
            f"a sequence of {size} tokens is longer than the largest bucket of {self.path}, "
            f"{self.sizes[-1]} (buckets: {', '.join(map(str, self.sizes))}); tokenize with truncation at "
            f"{self.sizes[-1]}, load with truncate=True, or re-export with a larger --seq-lens")

    def buckets_for(self, size: int) -> list[int]:
        """The bucket of each run a request of `size` takes: one, or (batch axis, beyond the largest) one per
        chunk of the largest and one for the rest."""
        largest = self.sizes[-1]
        if size <= largest or not self.axis.chunks:
            return [self.route(size)]
        full, rest = divmod(size, largest)
        return [largest] * full + ([self.route(rest)] if rest else [])

    def _size_of(self, arrays: Sequence[np.ndarray]) -> int:
        axis, first = self.axis.index, self._bucketed_inputs[0]
        size = int(arrays[first].shape[axis])
        for i in self._bucketed_inputs[1:]:
            if arrays[i].shape[axis] != size:
                raise ShapeError(f"input {self._inputs[i].name!r} has {arrays[i].shape[axis]} along the "
                                 f"{self.axis.name} axis, {self._inputs[first].name!r} has {size}: they must agree")
        return size

    def padded(self, arrays: Sequence[np.ndarray]) -> tuple[int, int, list[np.ndarray]]:
        """(request size, bucket, the arrays padded with zeros, or cut, to that bucket). A batch larger than
        the largest bucket is cut here; `_execute` runs it in chunks instead."""
        size = self._size_of(arrays)
        bucket = self.route(size)
        out = list(arrays)
        for i in self._bucketed_inputs:
            out[i] = _fit(arrays[i], self.axis.index, bucket)  # zeros: [PAD] ids, mask 0, token type 0; blank rows
        return size, bucket, out

    def _execute(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        size = self._size_of(arrays)
        largest = self.sizes[-1]
        if size > largest and self.axis.chunks:
            parts = [self._execute_bucket([np.take(a, range(start, min(start + largest, size)), axis=self.axis.index)
                                           if i in self._bucketed_inputs else a for i, a in enumerate(arrays)])
                     for start in range(0, size, largest)]
            return [np.concatenate([p[i] for p in parts], axis=self.axis.index) if i in self._bucketed_outputs
                    else parts[0][i] for i in range(len(parts[0]))]
        return self._execute_bucket(arrays)

    def _execute_bucket(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        size, bucket, padded = self.padded(arrays)
        outputs = self._sessions[bucket]._execute(padded)
        keep = min(size, bucket)
        index = [slice(None)] * (self.axis.index + 1)
        index[self.axis.index] = slice(0, keep)
        return [o[tuple(index)] if i in self._bucketed_outputs else o for i, o in enumerate(outputs)]

    def profile(self, feed: Mapping[str, Any] | Sequence[Any] | None = None, runs: int = 10, warmup: int = 2):
        """The per-operator profile of the bucket this feed is routed to."""
        _, bucket, padded = self.padded(self._validate(feed if feed is not None else self.example_feed()))
        return self._sessions[bucket].profile(padded, runs=runs, warmup=warmup)

    def example_feed(self) -> dict[str, np.ndarray]:
        """The largest length (a full sentence), or one row (a single request) for the batch axis."""
        return self._sessions[self.sizes[0] if self.axis is BATCH else self.sizes[-1]].example_feed()

    def _backend_info(self) -> dict[str, Any]:
        largest = self._sessions[self.sizes[-1]]
        return {**largest._backend_info(), "buckets": self.sizes, "bucket_axis": self.axis.name,
                "entry_points": {str(k): getattr(s, "entry_point", None) for k, s in self._sessions.items()}}

    def close(self) -> None:
        for session in {id(s): s for s in self._sessions.values()}.values():
            session.close()


def _fit(array: np.ndarray, axis: int, size: int) -> np.ndarray:
    """`array` cut or padded with zeros to `size` along `axis`."""
    have = array.shape[axis]
    if have > size:
        index = [slice(None)] * array.ndim
        index[axis] = slice(0, size)
        return np.ascontiguousarray(array[tuple(index)])
    if have < size:
        pad = [(0, 0)] * array.ndim
        pad[axis] = (0, size - have)
        return np.pad(array, pad)
    return array
