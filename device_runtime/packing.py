"""Sequence packing (bin packing): several short sentences in one row of a fixed length, so the compute goes on
tokens rather than on padding.

Krell et al., "Efficient Sequence Packing without Cross-contamination" (2021, arXiv 2107.02027): up to half the
tokens of common NLP data are padding at a fixed length; packing several sequences per row with a
block-diagonal attention mask, position ids restarting at 0 in each sequence and a per-sequence readout is
mathematically equivalent to running them one by one. This module does the host/device side of it, in numpy:
first-fit decreasing (FFD, §3 of the paper's baselines; within 11/9 of the optimum number of rows) places the
sequences, and `pack` builds the row tensors the packed entry point of a BERT-family artifact takes
(`models_zoo.bert.PackedBert`): `input_ids`, `token_type_ids`, `position_ids` and `segment_ids` (1.. per
sequence, 0 on padding), each (1, capacity). Its output has one row per segment slot, (1, max_segments, ...).

    rows = pack([feed_1, feed_2, ...], capacity=128, max_segments=16)   # unpadded feeds, (1, n) each
    outputs = [session.run(None, row.arrays)[0] for row in rows]
    per_sentence = unpack(rows, outputs, count=len(feeds))              # in the original order
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from device_runtime.errors import UsageError

PACKED_INPUTS = ("input_ids", "token_type_ids", "position_ids", "segment_ids")


def first_fit_decreasing(lengths: Sequence[int], capacity: int, max_segments: int) -> list[list[int]]:
    """Rows of sequence indices: each sequence, longest first, goes into the first row with room for its tokens
    and a free segment slot. A sequence longer than `capacity` is a UsageError (truncate it first)."""
    if capacity < 1 or max_segments < 1:
        raise UsageError(f"need capacity >= 1 and max_segments >= 1, got {capacity} and {max_segments}")
    too_long = [i for i, n in enumerate(lengths) if n > capacity]
    if too_long:
        raise UsageError(f"sequence {too_long[0]} has {lengths[too_long[0]]} tokens, more than a packed row holds "
                         f"({capacity}); truncate it to {capacity}")
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda k: (-lengths[k], k)):
        for r, free in enumerate(room):
            if lengths[i] <= free and len(rows[r]) < max_segments:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(capacity - lengths[i])
    return rows


def padding_fraction(lengths: Sequence[int], rows: int, capacity: int) -> float:
    """The share of computed tokens that are padding, for `rows` rows of `capacity` holding `lengths`."""
    total = rows * capacity
    return 0.0 if total == 0 else 1.0 - sum(lengths) / total


@dataclass
class PackedRow:
    """One packed row: the arrays to feed, and which sequence (by index) sits in each segment slot."""

    arrays: dict[str, np.ndarray]
    members: list[int] = field(default_factory=list)


def _tokens(feed: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The real tokens of one feed (batch 1): ids and token types, trailing padding (mask 0) dropped."""
    ids = np.asarray(feed["input_ids"]).reshape(-1)
    types = np.asarray(feed.get("token_type_ids", np.zeros_like(ids))).reshape(-1)
    if "attention_mask" in feed:
        real = int(np.asarray(feed["attention_mask"]).reshape(-1).sum())
        ids, types = ids[:real], types[:real]
    return ids.astype(np.int64), types.astype(np.int64)


def pack(feeds: Sequence[Mapping[str, np.ndarray]], capacity: int, max_segments: int) -> list[PackedRow]:
    """The packed rows for `feeds` (each a tokenised sentence or pair, batch 1, padded or not)."""
    tokens = [_tokens(f) for f in feeds]
    rows = []
    for members in first_fit_decreasing([len(ids) for ids, _ in tokens], capacity, max_segments):
        arrays = {name: np.zeros((1, capacity), dtype=np.int64) for name in PACKED_INPUTS}
        at = 0
        for slot, index in enumerate(members, start=1):
            ids, types = tokens[index]
            end = at + len(ids)
            arrays["input_ids"][0, at:end] = ids
            arrays["token_type_ids"][0, at:end] = types
            arrays["position_ids"][0, at:end] = np.arange(len(ids))
            arrays["segment_ids"][0, at:end] = slot
            at = end
        rows.append(PackedRow(arrays, list(members)))
    return rows


def unpack(rows: Sequence[PackedRow], outputs: Sequence[np.ndarray], count: int) -> list[np.ndarray]:
    """Per-sequence outputs in the original order, from each row's (1, max_segments, ...) output."""
    result: list[np.ndarray | None] = [None] * count
    for row, out in zip(rows, outputs):
        for slot, index in enumerate(row.members):
            result[index] = np.asarray(out)[:, slot]
    missing = [i for i, r in enumerate(result) if r is None]
    if missing:
        raise UsageError(f"sequences {missing[:5]} are in no packed row")
    return result  # type: ignore[return-value]


def packing_report(lengths: Sequence[int], capacity: int, max_segments: int, fixed_length: int) -> dict:
    """Padding before (each sequence padded to `fixed_length`) and after packing into rows of `capacity`."""
    rows = first_fit_decreasing(lengths, capacity, max_segments)
    return {"sequences": len(lengths), "tokens": int(sum(lengths)), "rows": len(rows),
            "padding_fraction_fixed": padding_fraction(lengths, len(lengths), fixed_length),
            "padding_fraction_packed": padding_fraction(lengths, len(rows), capacity),
            "sequences_per_row": len(lengths) / max(len(rows), 1)}


class PackedRunner:
    """Sentences through an artifact's packed entry point: pack, run each row, hand back per-sentence outputs.

    `session` is a loaded packed artifact (`export --pack`): its inputs are `PACKED_INPUTS`, each (1, capacity),
    and its outputs (1, max_segments, ...). Thread safety is the session's. `padding` keeps the running
    totals of real and computed tokens, for the padding fraction actually served."""

    def __init__(self, session) -> None:
        names = [t.name for t in session.get_inputs()]
        if sorted(names) != sorted(PACKED_INPUTS):
            raise UsageError(f"{session.path} is not a packed entry point (inputs {names}; a packed one takes "
                             f"{', '.join(PACKED_INPUTS)}: export it with --pack)")
        self.session = session
        self.capacity = int(session.get_inputs()[0].shape[1])
        self.max_segments = int(session.get_outputs()[0].shape[1])
        self.tokens = self.computed = 0

    def run(self, feeds: Sequence[Mapping[str, np.ndarray]]) -> list[list[np.ndarray]]:
        """[outputs of sentence i] for each feed, in order (each output with the sentence's batch of 1)."""
        rows = pack(feeds, self.capacity, self.max_segments)
        outputs = [self.session.run(None, row.arrays) for row in rows]
        self.tokens += sum(int((row.arrays["segment_ids"] > 0).sum()) for row in rows)
        self.computed += len(rows) * self.capacity
        per_output = [unpack(rows, [o[k] for o in outputs], len(feeds)) for k in range(len(outputs[0]))]
        return [[per_output[k][i] for k in range(len(per_output))] for i in range(len(feeds))]

    @property
    def padding_fraction(self) -> float:
        return 0.0 if not self.computed else 1.0 - self.tokens / self.computed


def packed_batch_runner(session):
    """A `run_batch` for `device_runtime.Batcher`: each batch of sentence feeds is packed into rows (text batches
    through packing). A sentence that cannot be packed (too long) fails alone; the others still run."""
    runner = PackedRunner(session)

    def run_batch(feeds: list) -> list:
        results: list = [None] * len(feeds)
        good = []
        for k, feed in enumerate(feeds):
            try:
                n = len(_tokens(feed)[0])
                if n > runner.capacity:
                    raise UsageError(f"a sentence of {n} tokens does not fit a packed row of {runner.capacity}; "
                                     f"truncate it to {runner.capacity}")
                good.append(k)
            except Exception as exc:
                results[k] = exc
        if good:
            for k, out in zip(good, runner.run([feeds[k] for k in good])):
                results[k] = out
        return results

    run_batch.runner = runner
    run_batch.batching = "packed"
    return run_batch
