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

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from device_runtime.errors import UsageError
from device_runtime.scheduling import CostTable, EntryCost, cheapest_rows, choose

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
    types = feed.get("token_type_ids")
    types = np.zeros_like(ids) if types is None else np.asarray(types).reshape(-1)
    if "attention_mask" in feed:
        real = int(np.asarray(feed["attention_mask"]).sum())
        ids, types = ids[:real], types[:real]
    return ids.astype(np.int64, copy=False), types.astype(np.int64, copy=False)


def _row(tokens: Sequence[tuple[np.ndarray, np.ndarray]], members: Sequence[int], capacity: int) -> PackedRow:
    """One row of `capacity` holding the sentences `members` (indices into `tokens`), in that order. int64 even
    for a TFLite model's int32: the session range-checks the ids before its cast (a narrower row here would wrap
    an out-of-range id silently)."""
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
    return PackedRow(arrays, list(members))


def pack(feeds: Sequence[Mapping[str, np.ndarray]], capacity: int, max_segments: int) -> list[PackedRow]:
    """The packed rows for `feeds` (each a tokenised sentence or pair, batch 1, padded or not)."""
    tokens = [_tokens(f) for f in feeds]
    return [_row(tokens, members, capacity)
            for members in first_fit_decreasing([len(ids) for ids, _ in tokens], capacity, max_segments)]


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


def packed_rows_details(rows: Mapping[int, int]) -> dict:
    """The manifest's record of a multi-row packed artifact ({row length: sentences per row}): the packed axis,
    its row lengths, each one's segment count and entry point (serve-bench reads it)."""
    from device_runtime.buckets import PACKED

    return {"axis": PACKED.name, "row_lengths": sorted(int(n) for n in rows),
            "rows": {str(n): int(rows[n]) for n in sorted(rows)},
            "entry_points": {str(n): PACKED.entry_point(n) for n in sorted(rows)}}


def row_shapes(session) -> list[tuple[int, int]]:
    """[(row length, sentences per row)] of a packed artifact's entry points, shortest first: one for `--pack
    128x16`, one per row length for `--pack 32x4,64x8,128x16` (a `BucketedSession` over the packed axis)."""
    names = [t.name for t in session.get_inputs()]
    if sorted(names) != sorted(PACKED_INPUTS):
        raise UsageError(f"{session.path} is not a packed entry point (inputs {names}; a packed one takes "
                         f"{', '.join(PACKED_INPUTS)}: export it with --pack)")
    rows = getattr(session, "row_shapes", None)
    if rows:
        return list(rows)
    return [(int(session.get_inputs()[0].shape[1]), int(session.get_outputs()[0].shape[1]))]


# -- the cost model's figures: each entry point measured ---------------------------------------------------------
def example_rows(capacity: int, segments: int) -> dict[str, np.ndarray]:
    """A packed row of `segments` sentences filling `capacity` (ids 1): what a run costs does not depend on the
    ids, only on the shapes."""
    arrays = {name: np.zeros((1, capacity), dtype=np.int64) for name in PACKED_INPUTS}
    each = max(1, capacity // segments)
    for s in range(segments):
        start, end = s * each, min(capacity, (s + 1) * each)
        arrays["input_ids"][0, start:end] = 1
        arrays["position_ids"][0, start:end] = np.arange(end - start)
        arrays["segment_ids"][0, start:end] = s + 1
    return arrays


def _seconds(run: Callable[[], Any], runs: int, warmup: int) -> float:
    for _ in range(warmup):
        run()
    samples = []
    for _ in range(max(1, runs)):
        start = time.perf_counter()
        run()
        samples.append(time.perf_counter() - start)
    return float(np.median(samples))


def measure_costs(packed=None, single=None, runs: int = 5, warmup: int = 2) -> CostTable:
    """Each entry point's median time per `Session.run` over `runs` runs after `warmup`: a packed session's rows
    (`device_runtime.packing.row_shapes`) and/or a one-sentence session's lengths (its sequence buckets, or its
    one length)."""
    if packed is None and single is None:
        raise UsageError("measure_costs needs a packed session, a single-sentence session, or both")
    entries = []
    if packed is not None:
        dtypes = {t.name: t.dtype for t in packed.get_inputs()}
        for capacity, segments in row_shapes(packed):
            row = {n: a.astype(dtypes.get(n, a.dtype)) for n, a in example_rows(capacity, segments).items()}
            entries.append(EntryCost("packed", capacity, segments,
                                     _seconds(lambda: packed.run(None, row), runs, warmup)))
    if single is not None:
        lengths = list(getattr(single, "lengths", None) or []) or [int(single.get_inputs()[0].shape[1])]
        for length in lengths:
            feed = {t.name: np.full((1, length), 0 if t.name == "token_type_ids" else 1, dtype=t.dtype)
                    for t in single.get_inputs()}
            entries.append(EntryCost("single", length, 1, _seconds(lambda: single.run(None, feed), runs, warmup)))
    return CostTable(tuple(entries), f"measured at load: median of {runs} runs after {warmup} warm-up, each "
                                     f"entry point")


class PackedRunner:
    """Sentences through an artifact's packed entry points: plan the rows, run each, hand back per-sentence
    outputs.

    `session` is a loaded packed artifact (`export --pack`): its inputs are `PACKED_INPUTS`, each (1, capacity),
    and its outputs (1, max_segments, ...); with several row lengths (`--pack 32x4,64x8,128x16`) each row runs
    on the entry point of its length. One row length and no `costs`: first-fit decreasing into rows of it, as
    ever. Otherwise the rows are the cheapest set the cost model predicts (`device_runtime.scheduling`):
    `costs` is a `CostTable`, or None to measure each entry point at construction (a few warm runs), or
    "manifest"-recorded figures passed as a table. `single` (optional): a one-sentence session of the same model
    (sequence buckets), whose lengths join the table as "single" entry points: a sentence may run alone there
    when that is cheaper. Thread safety is the sessions'. `tokens`/`computed` keep the running totals of real and
    computed tokens, for the padding fraction actually served."""

    def __init__(self, session, costs=None, single=None) -> None:
        self.rows = row_shapes(session)
        self.session, self.single = session, single
        self.capacity, self.max_segments = self.rows[-1]
        if costs is None and (len(self.rows) > 1 or single is not None):
            costs = measure_costs(session, single)
        self.costs: CostTable | None = costs
        self.tokens = self.computed = 0
        self._last: tuple[tuple[int, ...], object] | None = None  # the scheduler's last plan, reused by run

    @property
    def largest(self) -> int:
        return self.costs.largest if self.costs is not None else self.capacity

    def plan(self, lengths: Sequence[int]):
        """The rows for sentences of `lengths` tokens: [(entry kind, row length, member indices)]."""
        if self.costs is None:
            return [("packed", self.capacity, m) for m in first_fit_decreasing(lengths, self.capacity,
                                                                                self.max_segments)]
        key = tuple(int(n) for n in lengths)
        last = self._last
        plan = last[1] if last is not None and last[0] == key else cheapest_rows(key, self.costs)
        return [(r.entry.kind, r.entry.capacity, list(r.members)) for r in plan.rows]

    def remember(self, lengths: Sequence[int], plan) -> None:
        """Keep the scheduler's plan for these lengths, so `run` does not plan them again."""
        self._last = (tuple(int(n) for n in lengths), plan)

    def run(self, feeds: Sequence[Mapping[str, np.ndarray]]) -> list[list[np.ndarray]]:
        """[outputs of sentence i] for each feed, in order (each output with the sentence's batch of 1)."""
        tokens = [_tokens(f) for f in feeds]
        results: list = [None] * len(feeds)
        for kind, capacity, members in self.plan([len(ids) for ids, _ in tokens]):
            if kind == "single":
                (index,) = members
                ids, types = tokens[index]
                feed = {"input_ids": ids[None], "attention_mask": np.ones_like(ids)[None],
                        "token_type_ids": types[None]}
                names = [t.name for t in self.single.get_inputs()]
                results[index] = self.single.run(None, {n: feed[n] for n in names})
                self.tokens += len(ids)
                self.computed += self.single.route(len(ids)) if hasattr(self.single, "route") else capacity
                continue
            row = _row(tokens, members, capacity)
            outputs = self.session.run(None, row.arrays)
            for slot, index in enumerate(members):
                results[index] = [np.asarray(o)[:, slot] for o in outputs]
            self.tokens += sum(len(tokens[i][0]) for i in members)
            self.computed += capacity
        return results

    @property
    def padding_fraction(self) -> float:
        return 0.0 if not self.computed else 1.0 - self.tokens / self.computed


def packed_batch_runner(session, costs=None, single=None):
    """A `run_batch` for `device_runtime.Batcher`: each batch of sentence feeds is packed into rows (text batches
    through packing). A sentence that cannot be packed (too long) fails alone; the others still run.

    Where the runner has a cost model (several row lengths, `costs` or `single` given; see `PackedRunner`), the
    callable also carries `size_of(feed)` (its token count) and `schedule(...)`, which the Batcher asks what to
    do with its queue (`device_runtime.scheduling.choose`: run now, run all but the tail, or wait for more)."""
    runner = PackedRunner(session, costs, single)

    def run_batch(feeds: list) -> list:
        results: list = [None] * len(feeds)
        good = []
        for k, feed in enumerate(feeds):
            try:
                n = len(_tokens(feed)[0])
                if n > runner.largest:
                    raise UsageError(f"a sentence of {n} tokens does not fit a packed row of {runner.largest}; "
                                     f"truncate it to {runner.largest}")
                good.append(k)
            except Exception as exc:
                results[k] = exc
        if good:
            for k, out in zip(good, runner.run([feeds[k] for k in good])):
                results[k] = out
        return results

    run_batch.runner = runner
    run_batch.batching = "packed"
    if runner.costs is not None:
        def size_of(feed) -> int:
            return len(_tokens(feed)[0])

        def schedule(sizes: Sequence[int], **state) -> tuple[int, float]:
            lengths = [min(int(n), runner.largest) for n in sizes]
            choice = choose(lengths, runner.costs, **state)
            if choice.take:
                runner.remember(lengths[:choice.take], choice.plan)
            return choice.take, choice.wait_s

        run_batch.size_of, run_batch.schedule = size_of, schedule
        run_batch.note = f"packed rows {', '.join(f'{c}x{s}' for c, s in runner.rows)}, scheduled by cost"
    return run_batch
