"""The shapes one export holds, as one typed value parsed once at the door (the CLI's flags, the API's keywords).

- `OneShape`: the model's own input shape, or a BERT-family model at one `seq_len` (`--seq-len 64`).
- `Lengths`: several sequence lengths (`--seq-lens 16,32,64,128`; the BERT family), each verified.
- `BatchSizes`: several batch sizes (`--batch-sizes 1,2,4,8`; the vision families), each verified.
- `PackedRow`: the packed entry point (`--pack 128x16`: rows of 128 tokens holding up to 16 sentences).

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


Shapes = OneShape | PackedRow | Lengths | BatchSizes
Buckets = Lengths | BatchSizes


def parse_pack(pack: str) -> PackedRow:
    capacity, _, slots = str(pack).partition("x")
    try:
        capacity_n = int(capacity)
        return PackedRow(capacity_n, int(slots) if slots else max(1, capacity_n // 8))
    except ValueError:
        raise UsageError(f"--pack takes CAPACITYxSEGMENTS (e.g. 128x16) or CAPACITY, got {pack!r}") from None


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
