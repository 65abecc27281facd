"""The real inputs of one export: verification feeds and their fp32 PyTorch outputs, and calibration feeds.

Calibration comes from the spec's real calibration samples, or from the user's own data (`calibration`: a folder
of images, a text file with one sentence a line); verification always uses the spec's verification samples,
which are kept apart from the calibration ones, so a quantized artifact is never judged on what it was
calibrated on. Each shape's data is made once per export and shared by every format's work item.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from converters import parity as checks
from models_zoo import ModelSpec
from sdk.export.shapes import BatchSizes, Buckets, PackedRows


@dataclass
class ExportData:
    """The real inputs at one shape: verification feeds, their fp32 PyTorch outputs, calibration feeds."""

    feeds: list[dict]
    fp32_outputs: list
    calibration: list[dict]
    calibration_source: str


class ExportInputs:
    """The PyTorch module of an export and its real inputs at each shape an item needs, each made once."""

    def __init__(self, module, calibration: str | Path | None) -> None:
        self.module = module
        self.calibration = str(calibration) if calibration else None
        self._made: dict[tuple, ExportData] = {}

    def _calibration(self, spec: ModelSpec) -> tuple[list[dict], str]:
        if self.calibration:
            return spec.feeds_from(self.calibration), self.calibration
        return spec.calibration_inputs(), "the spec's real calibration samples"

    def at(self, spec: ModelSpec) -> ExportData:
        """One shape: the spec's own."""
        key = ("one", getattr(spec, "seq_len", None))
        if key not in self._made:
            feeds = spec.sample_inputs()
            calibration, source = self._calibration(spec)
            data = ExportData(feeds, checks.torch_outputs(self.module, spec.input_names, feeds), calibration, source)
            checks.check_spread(data.fp32_outputs, f"{spec.name} (PyTorch fp32)")
            self._made[key] = data
        return self._made[key]

    def batch(self, spec: ModelSpec, size: int) -> ExportData:
        """Batches of `size` distinct real images (see `stacked_feeds`)."""
        key = ("batch", size)
        if key not in self._made:
            feeds = stacked_feeds(spec.sample_inputs(), size)
            calibration, source = self._calibration(spec)
            data = ExportData(feeds, checks.torch_outputs(self.module, spec.input_names, feeds),
                              stacked_feeds(calibration, size), f"{source}, stacked {size} to a batch")
            checks.check_spread(data.fp32_outputs, f"{spec.name} at batch {size} (PyTorch fp32)")
            self._made[key] = data
        return self._made[key]

    def buckets(self, spec: ModelSpec, buckets: Buckets) -> dict[int, ExportData]:
        """The data at every size of a bucket axis, by size."""
        if isinstance(buckets, BatchSizes):
            return {size: self.batch(spec, size) for size in buckets.sizes}
        if isinstance(buckets, PackedRows):  # real sentences packed into rows of each length
            return {r.capacity: self.at(spec.with_packing(r.capacity, r.segments)) for r in buckets.rows}
        return {length: self.at(spec.with_seq_len(length)) for length in buckets.sizes}


# The mirror images that join the real samples when a batch has more rows than there are samples: flipped
# left-right, upside down, both (distinct real images, not one image repeated).
_VARIANTS = ((), (-1,), (-2,), (-2, -1))


def stacked_feeds(feeds: list[dict], size: int) -> list[dict]:
    """Feeds of `size` rows each: windows over the real samples, so every sample is in some batch and no batch
    holds one twice (mirror images join when `size` is larger than the set; beyond four times the set, rows
    repeat)."""
    pool = []
    for axes in _VARIANTS:
        if len(pool) >= max(size, len(feeds)):
            break
        pool += [{n: np.ascontiguousarray(np.flip(v, axes) if axes and v.ndim == 4 else v) for n, v in f.items()}
                 for f in feeds]
    used = pool[:max(size, len(feeds))]
    batches = -(-len(used) // size)
    return [{n: np.concatenate([used[(j * size + i) % len(used)][n] for i in range(size)], axis=0)
             for n in used[0]} for j in range(batches)]
