"""The cost model and the scheduler of packed serving: for what is queued, the plan with the lowest predicted
time per sentence.

An artifact's entry points each cost a time per run that hardly depends on what the row holds (static shapes):
`CostTable` holds them, measured at load (`measure_costs`: a few warm runs of each entry point through
`Session.run`, so the per-run fixed cost of validation and locking is in it) or read back from a manifest where
the export recorded them (`CostTable.from_dict`). Two kinds of entry point:
- "packed": a row of `capacity` tokens holding up to `segments` sentences (`export --pack 32x4,64x8,128x16`);
- "single": one sentence padded to `capacity` (a sequence bucket, `export --seq-lens`, or a fixed length).

`cheapest_rows(lengths, table)` assigns sentences (by token count) to rows: first-fit decreasing with rows
opened at each packed capacity in turn (or every sentence alone), each row then shrunk to the cheapest entry
point that holds its tokens and sentences; the plan with the lowest predicted total time wins.
`choose(...)` decides, for a queue, between running now (all of it, or all but the last one or two when that is
cheaper per sentence: they lead the next batch) and waiting for more: waiting for `m` more arrivals is predicted
to take `m` times the expected gap between arrivals (the larger of the recent median gap and the time since the
last arrival, so a burst that has ended stops the wait), for at most as many as are expected (`expected_more`),
and is chosen only when its time per sentence, the idle
wait included, is lower, and never past `max_delay_s` from the oldest request's arrival.

Pure functions over plain numbers: unit-testable with a fake cost table. Numpy and the standard library only.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import numpy as np

from device_runtime.errors import UsageError

KINDS = ("packed", "single")
TAKE_ALL_MARGIN = 0.03  # run all of the queue unless leaving its tail is at least 3% cheaper per sentence
LOOKAHEAD = (1, 2, 4, 8)  # how many more arrivals a wait is weighed for


@dataclass(frozen=True)
class EntryCost:
    """One entry point: `kind` ("packed" or "single"), its row length, the sentences it holds and its time."""

    kind: str
    capacity: int
    segments: int
    seconds: float

    def holds(self, tokens: int, members: int) -> bool:
        return tokens <= self.capacity and members <= self.segments


@dataclass(frozen=True)
class CostTable:
    """The measured time per run of each entry point of an artifact (or of a pair of artifacts served together)."""

    entries: tuple[EntryCost, ...]
    source: str = "given"

    def __post_init__(self) -> None:
        bad = [e for e in self.entries if e.kind not in KINDS or e.capacity < 1 or e.segments < 1
               or not (e.seconds > 0 and np.isfinite(e.seconds)) or (e.kind == "single" and e.segments != 1)]
        if not self.entries or bad:
            raise UsageError(f"a cost table needs entries of kind {'/'.join(KINDS)} with capacity >= 1, segments "
                             f">= 1 (1 for single) and a positive time; got {bad[:1] or 'none'}")

        # Ranked once, cheapest first: planning asks "the cheapest entry holding this row" for every row.
        object.__setattr__(self, "_ranked", tuple(sorted(self.entries, key=lambda e: (e.seconds, e.kind != "packed",
                                                                                        e.capacity))))
        object.__setattr__(self, "largest", max(e.capacity for e in self.entries))
        object.__setattr__(self, "packed", tuple(sorted((e for e in self.entries if e.kind == "packed"),
                                                        key=lambda e: e.capacity)))
        object.__setattr__(self, "has_single", any(e.kind == "single" for e in self.entries))

    def cheapest(self, tokens: int, members: int) -> EntryCost | None:
        return next((e for e in self._ranked if tokens <= e.capacity and members <= e.segments), None)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "entries": [{"kind": e.kind, "capacity": e.capacity, "segments": e.segments,
                                                    "ms": e.seconds * 1e3} for e in self.entries]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str | None = None) -> "CostTable":
        try:
            entries = tuple(EntryCost(str(e["kind"]), int(e["capacity"]), int(e["segments"]), float(e["ms"]) / 1e3)
                            for e in data["entries"])
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"not a cost table ({type(exc).__name__}: {exc}); expected {{'entries': [{{'kind', "
                             f"'capacity', 'segments', 'ms'}}, ...]}}") from None
        return cls(entries, source or str(data.get("source", "given")))


@dataclass(frozen=True)
class Row:
    entry: EntryCost
    members: tuple[int, ...]  # indices into the planned lengths


@dataclass(frozen=True)
class RowPlan:
    rows: tuple[Row, ...]
    seconds: float  # predicted: the sum of the rows' entry points' times

    @property
    def count(self) -> int:
        return sum(len(r.members) for r in self.rows)

    @property
    def per_sentence(self) -> float:
        return self.seconds / max(self.count, 1)


def _first_fit(lengths: Sequence[int], base: EntryCost | None, biggest: EntryCost | None) -> list[tuple[list[int], int]]:
    """Rows as (positions of `lengths`, tokens), `lengths` sorted longest first: each into the first open row with
    room (tokens and a free slot); a new row is opened at `base`'s size where the sentence fits it, else at
    `biggest`'s (the largest packed entry point); `base` None: each sentence alone."""
    if base is None:
        return [([i], n) for i, n in enumerate(lengths)]
    rows: list[list[int]] = []
    size: list[int] = []  # each row's capacity, to give its tokens back without a second pass
    room: list[int] = []
    slots: list[int] = []
    for i, n in enumerate(lengths):
        for r, free in enumerate(room):
            if n <= free and slots[r]:
                rows[r].append(i)
                room[r] = free - n
                slots[r] -= 1
                break
        else:
            opened = base if n <= base.capacity else biggest
            rows.append([i])
            size.append(opened.capacity)
            room.append(opened.capacity - n)
            slots.append(opened.segments - 1)
    return [(members, c - left) for members, c, left in zip(rows, size, room)]


@functools.lru_cache(maxsize=4096)
def _plan_sorted(table: CostTable, lengths: tuple[int, ...]) -> tuple[tuple[tuple[EntryCost, tuple[int, ...]], ...],
                                                                       float]:
    """The cheapest rows for `lengths` sorted longest first, as (entry, positions) and the total time; cached, as
    a queue's lengths come back in the scheduler's every decision and its lookahead. Bases: each packed row
    length, and each sentence alone where the table has one-sentence entry points (with packed rows only, a
    row of one costs what a shared row costs)."""
    packed = table.packed
    bases: list[EntryCost | None] = [*packed, None] if table.has_single or not packed else list(packed)
    biggest = packed[-1] if packed else None
    best: tuple | None = None
    for base in bases:
        rows, total = [], 0.0
        for members, tokens in _first_fit(lengths, base, biggest):
            entry = table.cheapest(tokens, len(members))
            if entry is None:
                break
            rows.append((entry, tuple(members)))
            total += entry.seconds
            if best is not None and total >= best[1]:
                break  # already dearer than the best: no need to finish
        else:
            if best is None or total < best[1] - 1e-12:
                best = (tuple(rows), total)
    if best is None:
        raise UsageError("no entry point of the cost table holds these sentences")
    return best


def cheapest_rows(lengths: Sequence[int], table: CostTable) -> RowPlan:
    """The cheapest predicted set of rows holding every sentence of `lengths` (token counts); see the module
    docstring. A sentence longer than every entry point is a UsageError (truncate it first)."""
    lengths = [int(n) for n in lengths]
    if not lengths:
        return RowPlan((), 0.0)
    if max(lengths) > table.largest:
        raise UsageError(f"a sentence of {max(lengths)} tokens fits no entry point (the largest holds "
                         f"{table.largest}); truncate it to {table.largest}")
    order = sorted(range(len(lengths)), key=lambda k: (-lengths[k], k))
    rows, total = _plan_sorted(table, tuple(lengths[i] for i in order))
    return RowPlan(tuple(Row(entry, tuple(order[p] for p in members)) for entry, members in rows), total)


def _seconds(lengths: Sequence[int], table: CostTable) -> float:
    """The predicted time of `cheapest_rows(lengths)` without building the plan (the scheduler weighs many)."""
    return _plan_sorted(table, tuple(sorted(lengths, reverse=True)))[1]


@dataclass(frozen=True)
class Choice:
    """What to do with the queue now: run its first `take` requests with `plan`, or (take 0) wait `wait_s`."""

    take: int
    wait_s: float
    plan: RowPlan | None
    per_sentence_s: float  # predicted engine time per sentence of the chosen option (the idle wait included)
    reason: str


def choose(lengths: Sequence[int], table: CostTable, *, waited_s: float = 0.0, max_delay_s: float = 0.0,
           gap_s: float | None = None, since_last_s: float = 0.0, next_length: float | None = None,
           max_batch: int | None = None, expected_more: int | None = None) -> Choice:
    """The option with the lowest predicted time per sentence for a queue of `lengths` (oldest first): run all
    now, run all but the last one or two (they lead the next batch), or wait for more (see the module docstring).
    `waited_s`: how long the oldest has waited; `gap_s`: the recent median gap between arrivals (None: unknown,
    no wait); `since_last_s`: since the last arrival; `next_length`: the expected token count of the next
    sentence (default: the queue's mean); `expected_more`: at most how many more are expected soon (None: no
    bound; a Batcher passes the answers it delivered whose senders have not sent again, so a closed loop of N
    clients is never waited on for an N+1th)."""
    cap = len(lengths) if max_batch is None else min(len(lengths), int(max_batch))
    lengths = [min(int(n), table.largest) for n in lengths[:cap]]
    if not lengths:
        return Choice(0, max(0.0, max_delay_s - waited_s), None, float("inf"), "nothing queued")
    # Times only (`_seconds`, cached plans) while weighing; the chosen option's plan is built at the end.
    now = _seconds(lengths, table)
    best = Choice(len(lengths), 0.0, None, now / len(lengths), f"run {len(lengths)} now")
    for k in (len(lengths) - 1, len(lengths) - 2):
        if k < 1 or waited_s >= max_delay_s:  # past its delay the whole queue goes
            break
        fewer = _seconds(lengths[:k], table) / k
        if fewer < best.per_sentence_s * (1 - TAKE_ALL_MARGIN):
            best = Choice(k, 0.0, None, fewer, f"run {k} now, {len(lengths) - k} lead the next batch")
    room = (max_batch - len(lengths)) if max_batch is not None else LOOKAHEAD[-1]
    if expected_more is not None:
        room = min(room, int(expected_more))
    best = _wait_or(best, lengths, now, table, waited_s, max_delay_s, gap_s, since_last_s, next_length, room)
    if best.take:
        return replace(best, plan=cheapest_rows(lengths[:best.take], table))
    return best


def _wait_or(best: Choice, lengths: list[int], now: float, table: CostTable, waited_s: float, max_delay_s: float,
             gap_s: float | None, since_last_s: float, next_length: float | None, room: int) -> Choice:
    """`best`, or a wait for `m` (<= `room`) more arrivals where that is predicted cheaper per sentence."""
    if gap_s is None or room < 1 or waited_s >= max_delay_s:
        return best
    gap = max(float(gap_s), float(since_last_s), 1e-6)
    expected = float(next_length if next_length is not None else sum(lengths) / len(lengths))
    expected = min(max(2, int(round(expected))), table.largest)
    for m in LOOKAHEAD:
        wait = m * gap
        if m > room or waited_s + wait > max_delay_s:
            break
        if (wait + now) / (len(lengths) + m) >= best.per_sentence_s:
            continue  # more sentences never cost less than these alone: no plan for them can win
        per = (wait + _seconds(lengths + [expected] * m, table)) / (len(lengths) + m)
        if per < best.per_sentence_s:
            best = Choice(0, min(gap, max_delay_s - waited_s), None, per,
                          f"wait ~{wait * 1e3:.2f} ms for {m} more")
    return best


__all__ = ["EntryCost", "CostTable", "Row", "RowPlan", "Choice", "cheapest_rows", "choose"]
