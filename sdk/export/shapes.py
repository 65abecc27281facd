"""The shapes one export holds, as one typed value parsed once at the door (the CLI's flags, the API's keywords).

- `OneShape`: the model's own input shape, or a BERT-family model at one `seq_len` (`--seq-len 64`).
- `Lengths`: several sequence lengths (`--seq-lens 16,32,64,128`; the BERT family), each verified.
- `BatchSizes`: several batch sizes (`--batch-sizes 1,2,4,8`; the vision families), each verified.
- `PackedRow`: the packed entry point (`--pack 128x16`: rows of 128 tokens holding up to 16 sentences).
- `PackedRows`: packed entry points in several row lengths (`--pack 32x4,64x8,128x16`), one artifact where the
  format can (a `.pte` method, a `.tflite` signature per row length: `pack32`, ...; the weights stored once).

`Lengths` and `BatchSizes` are bucket axes: where a format can, one artifact holds every size (weights stored
once) and `device_runtime.load` opens it as a `BucketedSession` over the same axis; elsewhere each size is an
artifact of its own. `sdk.export.plan` makes that choice per format.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from device_runtime.buckets import parse_batch_sizes, parse_lengths
from device_runtime.errors import UsageError


@dataclass(frozen=True)
class OneShape:
    seq_len: int | None = None  # None: the spec's own


@dataclass(frozen=True)
class PackedRow:
    capacity: int
    segments: int

    @property
    def text(self) -> str:
        return f"{self.capacity}x{self.segments}"


@dataclass(frozen=True)
class Lengths:
    """Several sequence lengths: the bucket axis `length`. `given` is the text as the user wrote it, which a
    format taking the lengths itself parses in its own terms (Core ML also takes a range, `16-64`); `sizes` is
    empty when that text is no list of lengths (then only such formats can take it)."""

    sizes: tuple[int, ...]
    given: str | None = field(default=None, compare=False)
    axis = "length"
    flag = "--seq-lens"
    folder_word = "seqs"  # <precision>-seqs16-32-64/
    own_option = "seq_lens"  # a converter that takes the lengths itself (Core ML, Ascend) declares this option

    @property
    def text(self) -> str:
        return self.given if self.given is not None else ",".join(map(str, self.sizes))


@dataclass(frozen=True)
class BatchSizes:
    """Several batch sizes: the bucket axis `batch`."""

    sizes: tuple[int, ...]
    axis = "batch"
    flag = "--batch-sizes"
    folder_word = "batch"  # <precision>-batch1-2-4-8/
    own_option = "dynamic_batch_size"  # Ascend: ATC's --dynamic_batch_size profiles

    @property
    def text(self) -> str:
        return ",".join(map(str, self.sizes))


@dataclass(frozen=True)
class PackedRows:
    """Packed entry points in several row lengths: the bucket axis `packed` ({capacity: segments}, by capacity).
    `sizes` are the row lengths (the axis' sizes, as `Lengths.sizes` are)."""

    rows: tuple[PackedRow, ...]
    axis = "packed"
    flag = "--pack"
    folder_word = "packed"  # <precision>-packed32x4-64x8-128x16/
    own_option = "packed_rows"  # no converter takes the rows itself; declared for the plan's shared shape code

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(r.capacity for r in self.rows)

    @property
    def text(self) -> str:
        return ",".join(r.text for r in self.rows)

    @property
    def largest(self) -> PackedRow:
        return self.rows[-1]

    def segments(self, capacity: int) -> int:
        return next(r.segments for r in self.rows if r.capacity == capacity)


Shapes = OneShape | PackedRow | PackedRows | Lengths | BatchSizes
Buckets = Lengths | BatchSizes | PackedRows

PACK_HELP = "--pack takes CAPACITYxSEGMENTS (e.g. 128x16), CAPACITY, or several, comma-separated (32x4,64x8,128x16)"


def _parse_row(part: str, given: str) -> PackedRow:
    capacity, x, slots = part.strip().lower().partition("x")
    try:
        capacity_n = int(capacity)
        segments = int(slots) if slots.strip() else (None if x else max(1, capacity_n // 8))
    except ValueError:
        raise UsageError(f"{PACK_HELP}; got {given!r}") from None
    if segments is None:
        raise UsageError(f"{PACK_HELP}; {part.strip()!r} in {given!r} has no segment count after 'x'")
    if capacity_n < 2 or segments < 1 or segments > capacity_n // 2:
        raise UsageError(f"a packed row of {capacity_n} tokens holds 1..{max(1, capacity_n // 2)} sentences of at "
                         f"least 2 tokens ([CLS] and [SEP]); got {part.strip()!r} in {given!r}")
    return PackedRow(capacity_n, segments)


def parse_pack(pack: str) -> PackedRow | PackedRows:
    """`"128x16"` -> `PackedRow`; `"32x4,64x8,128x16"` -> `PackedRows` (sorted by row length; each length once)."""
    given = str(pack)
    parts = given.split(",")
    if not given.strip() or any(not p.strip() for p in parts):
        raise UsageError(f"{PACK_HELP}; got {given!r}")
    rows = sorted((_parse_row(p, given) for p in parts), key=lambda r: r.capacity)
    if len(rows) == 1:
        return rows[0]
    twice = sorted({r.capacity for r in rows if sum(q.capacity == r.capacity for q in rows) > 1})
    if twice:
        raise UsageError(f"--pack gives row length {twice[0]} twice in {given!r}: one segment count per row length")
    return PackedRows(tuple(rows))


def parse_shapes(seq_len: int | None = None, seq_lens: str | Sequence[int] | None = None, pack: str | None = None,
                 batch_sizes: str | Sequence[int] | None = None) -> Shapes:
    """The four keywords (the API's and the CLI's spelling) as one value; conflicting ones are refused here."""
    if batch_sizes is not None:
        given = [flag for flag, value in (("--seq-len", seq_len), ("--seq-lens", seq_lens), ("--pack", pack))
                 if value is not None]
        if given:
            raise UsageError(f"--batch-sizes is for the vision families; it does not combine with {', '.join(given)} "
                             f"(the BERT family batches through --pack and --seq-lens)")
        return BatchSizes(tuple(parse_batch_sizes(batch_sizes)))
    if seq_lens is not None:
        if seq_len is not None:
            raise UsageError("give --seq-len or --seq-lens, not both")
        if pack is not None:
            raise UsageError("give --seq-lens or --pack, not both (a packed row's length is its capacity)")
        given = seq_lens if isinstance(seq_lens, str) else ",".join(map(str, seq_lens))
        try:
            return Lengths(tuple(parse_lengths(seq_lens)), given)
        except UsageError:
            if not isinstance(seq_lens, str):
                raise
            return Lengths((), given)  # a range or other spelling: refused later unless a format takes it itself
    if pack is not None:
        if seq_len is not None:
            raise UsageError("a packed row's length is its capacity: give --pack 128x16, not --seq-len as well")
        return parse_pack(pack)
    return OneShape(seq_len)


def shapes_from_options(seq_len, seq_lens, pack, batch_sizes, options: dict[str, Any]) -> Shapes:
    """`parse_shapes`, taking `seq_lens` from the format options when it came there (the CLI's shared dest: Core
    ML's and Ascend's own option of that name and the export's lengths are one flag)."""
    if seq_lens is None:
        seq_lens = options.pop("seq_lens", None)
    return parse_shapes(seq_len, seq_lens, pack, batch_sizes)
