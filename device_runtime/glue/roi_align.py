"""RoIAlign in numpy, with `torchvision.ops.roi_align`'s semantics (Mask R-CNN's bilinear average pooling).

torchvision's kernel samples `grid_h x grid_w` points per output bin, interpolates each bilinearly and averages.
Bilinear interpolation is separable, so for one box the whole pooled map is two small matrix products:
`out[c] = Wy @ F[c] @ Wx.T`, where `Wy[ph, h]` sums the y-weights of bin row `ph`'s samples that fall on
feature row `h` (over the samples, divided by `grid_h`) and `Wx` likewise for columns. The sample positions,
the clamping at the borders and the out-of-map rule (a sample with y < -1, y > H, x < -1 or x > W
contributes 0) are computed for all boxes at once, in the features' dtype and the kernel's order, so the
positions are bit-identical; only the summation order differs (float32 rounding, ~1e-7 relative). The one
loop is over boxes, each a pair of matrix products restricted to the rows and columns the box touches.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from device_runtime.errors import InputError, ShapeError, ValueRangeError
from device_runtime.glue.checks import finite, float_array, negative, pair
from device_runtime.glue.registry import register_glue


def as_rois(boxes: Any, batch: int, dtype: np.dtype) -> np.ndarray:
    """`(K, 5)` rows `[batch_index, x1, y1, x2, y2]` from `(K, 5)`, from `(K, 4)` (batch of one image) or from a
    list of `(L_i, 4)` arrays (one per image, as torchvision takes them)."""
    if isinstance(boxes, (list, tuple)) and boxes and all(np.ndim(b) == 2 for b in boxes):
        if len(boxes) != batch:
            raise ShapeError(f"boxes is a list of {len(boxes)} arrays but features hold {batch} image(s)")
        parts = [float_array(b, f"boxes[{i}]") for i, b in enumerate(boxes)]
        for i, part in enumerate(parts):
            if part.shape[1] != 4:
                raise ShapeError(f"boxes[{i}] has shape {list(part.shape)}; expected (L, 4) as (x1, y1, x2, y2)")
        rows = [np.concatenate([np.full((len(p), 1), i, p.dtype), p], axis=1) for i, p in enumerate(parts)]
        rois = np.concatenate(rows, axis=0)
    else:
        rois = float_array(boxes, "boxes")
        if rois.ndim != 2 or rois.shape[1] not in (4, 5):
            raise ShapeError(f"boxes has shape {list(rois.shape)}; expected (K, 5) rows [batch_index, x1, y1, x2, "
                             "y2], or (K, 4) boxes when the features hold one image")
        if rois.shape[1] == 4:
            if batch != 1:
                raise ShapeError(f"boxes has shape {list(rois.shape)} but features hold {batch} images: give (K, 5) "
                                 "rows [batch_index, x1, y1, x2, y2] (or a list of (L, 4) arrays, one per image)")
            rois = np.concatenate([np.zeros((len(rois), 1), rois.dtype), rois], axis=1)
    finite(rois, "boxes")
    negative(rois, "boxes", offset=1)
    index = rois[:, 0]
    if rois.size and (index.min() < 0 or index.max() > batch - 1 or np.any(index != np.floor(index))):
        row = int(np.argmax((index < 0) | (index > batch - 1) | (index != np.floor(index))))
        raise ValueRangeError(f"boxes row {row} has batch index {index[row]}; features hold {batch} image(s): valid "
                              f"indices are the integers 0..{batch - 1}")
    return rois.astype(dtype, copy=False)


def _axis_weights(start: np.ndarray, bin_size: np.ndarray, grid: np.ndarray, pooled: int, size: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every box, the `(pooled, size)` matrix of summed bilinear weights along one axis (divided by the grid
    count), with the first and last feature index each box touches. Arithmetic in `start`'s dtype, as the kernel."""
    dtype = start.dtype
    k = start.shape[0]
    samples = max(int(grid.max(initial=0)), 1)
    bins = np.arange(pooled, dtype=dtype)[None, :, None]
    steps = (np.arange(samples, dtype=dtype) + dtype.type(0.5))[None, None, :]
    grid_t = np.maximum(grid, 1).astype(dtype)[:, None, None]
    # roi_start + p * bin_size + (i + .5) * bin_size / grid, left to right as in torchvision's pre_calc
    pos = start[:, None, None] + bins * bin_size[:, None, None] + steps * bin_size[:, None, None] / grid_t
    used = np.broadcast_to((np.arange(samples)[None, :] < grid[:, None])[:, None, :], pos.shape)
    inside = used & (pos >= -1.0) & (pos <= size)
    pos = np.where(pos <= 0, dtype.type(0), pos)
    low = pos.astype(np.int64)  # truncation, as the kernel's (int) cast of a non-negative value
    at_edge = low >= size - 1
    low = np.where(at_edge, size - 1, low)
    high = np.where(at_edge, size - 1, low + 1)
    pos = np.where(at_edge, low.astype(dtype), pos)
    frac = pos - low.astype(dtype)
    scale = (inside / np.maximum(grid, 1)[:, None, None]).astype(np.float64)
    row = (np.arange(k)[:, None, None] * pooled + np.arange(pooled)[None, :, None]) * size
    weights = np.bincount(np.concatenate([(row + low).ravel(), (row + high).ravel()]),
                          np.concatenate([((1 - frac) * scale).ravel(), (frac * scale).ravel()]),
                          minlength=k * pooled * size).reshape(k, pooled, size)
    touched = np.where(inside, low, size)
    first = touched.reshape(k, -1).min(axis=1, initial=size)
    last = np.where(inside, high, -1).reshape(k, -1).max(axis=1, initial=-1)
    return weights.astype(dtype), first, last


@register_glue(inputs=("features", "boxes"), outputs=("regions",))
def roi_align(features: np.ndarray, boxes: Any, output_size: int | Sequence[int], spatial_scale: float = 1.0,
              sampling_ratio: int = -1, aligned: bool = False) -> np.ndarray:
    """Pool each box of `features` `(N, C, H, W)` to `(C, *output_size)`, as `torchvision.ops.roi_align`:
    `boxes` are `(K, 5)` rows `[batch_index, x1, y1, x2, y2]` in image coordinates (or `(K, 4)` for one image,
    or a list of `(L, 4)` per image), scaled by `spatial_scale` onto the map; `sampling_ratio` points per bin
    side (-1: adaptive, `ceil(box side / output side)`); `aligned=True` shifts by half a pixel (Detectron2).
    Returns `(K, C, PH, PW)` in the features' dtype; a box of zero area pools to zeros where torchvision does."""
    features = float_array(features, "features")
    if features.ndim != 4:
        raise ShapeError(f"features has shape {list(features.shape)}; expected (N, C, H, W)")
    pooled_h, pooled_w = pair(output_size, "output_size")
    batch, channels, height, width = features.shape
    dtype = features.dtype
    rois = as_rois(boxes, batch, dtype)
    k = rois.shape[0]
    out = np.zeros((k, channels, pooled_h, pooled_w), dtype=dtype)
    if k == 0 or out.size == 0 or height == 0 or width == 0:
        return out
    t = dtype.type
    scale, offset = t(spatial_scale), t(0.5 if aligned else 0.0)
    start_w, start_h = rois[:, 1] * scale - offset, rois[:, 2] * scale - offset
    roi_w, roi_h = rois[:, 3] * scale - offset - start_w, rois[:, 4] * scale - offset - start_h
    if not aligned:  # the kernel forces malformed boxes to 1x1
        roi_w, roi_h = np.maximum(roi_w, t(1)), np.maximum(roi_h, t(1))
    bin_h, bin_w = roi_h / t(pooled_h), roi_w / t(pooled_w)
    if int(sampling_ratio) > 0:
        grid_h = grid_w = np.full(k, int(sampling_ratio), dtype=np.int64)
    else:  # adaptive; a zero or negative side gives an empty grid, hence zeros
        grid_h = np.maximum(np.ceil(roi_h / t(pooled_h)), 0).astype(np.int64)
        grid_w = np.maximum(np.ceil(roi_w / t(pooled_w)), 0).astype(np.int64)
    wy, y_first, y_last = _axis_weights(start_h, bin_h, grid_h, pooled_h, height)
    wx, x_first, x_last = _axis_weights(start_w, bin_w, grid_w, pooled_w, width)
    batch_index = rois[:, 0].astype(np.int64)
    for i in range(k):
        y0, y1, x0, x1 = int(y_first[i]), int(y_last[i]) + 1, int(x_first[i]), int(x_last[i]) + 1
        if y1 <= y0 or x1 <= x0:
            continue  # every sample fell outside the map: zeros, as the kernel's empty samples
        window = features[batch_index[i], :, y0:y1, x0:x1]  # (C, sy, sx)
        out[i] = np.matmul(np.matmul(wy[i, :, y0:y1], window), wx[i, :, x0:x1].T)
    return out


@register_glue(inputs=("features", "boxes"), outputs=("regions",))
def multiscale_roi_align(features: Sequence[np.ndarray], boxes: Any, output_size: int | Sequence[int],
                         strides: Sequence[int], sampling_ratio: int = -1, aligned: bool = False,
                         canonical_scale: float = 224, canonical_level: int = 4) -> np.ndarray:
    """RoIAlign over a feature pyramid, as `torchvision.ops.MultiScaleRoIAlign`: each box is pooled from one level,
    `floor(canonical_level + log2(sqrt(area) / canonical_scale) + 1e-6)` (FPN's Eq. 1, torchvision's
    `LevelMapper`), clamped to the levels given. `features` are the levels' maps, finest first, with `strides`
    consecutive powers of two (4, 8, 16, ...); boxes as for `roi_align`, in image pixels. `aligned` defaults to
    False, as torchvision's pooler (which never sets it)."""
    maps = [float_array(f, f"features[{i}]") for i, f in enumerate(features)] if isinstance(
        features, (list, tuple)) else []
    if not maps or any(m.ndim != 4 for m in maps) or len({m.shape[:2] for m in maps}) != 1:
        raise ShapeError("features must be a non-empty list of (N, C, H, W) maps with the same N and C, finest first")
    levels = [float(np.log2(s)) if isinstance(s, (int, float)) and s > 0 else float("nan") for s in strides]
    if len(levels) != len(maps) or any(lv != round(lv) or lv != levels[0] + i for i, lv in enumerate(levels)):
        raise InputError(f"strides must be one per map, consecutive powers of two (4, 8, 16, ...), got {strides!r}")
    rois = as_rois(boxes, maps[0].shape[0], maps[0].dtype)
    t = rois.dtype.type
    with np.errstate(divide="ignore"):  # a zero-area box: log2(0) = -inf, clamped to the finest level
        scale = np.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
        target = np.floor(t(canonical_level) + np.log2(scale / t(canonical_scale)) + t(1e-6))
    level = (np.clip(target, levels[0], levels[-1]) - levels[0]).astype(np.int64)
    pooled_h, pooled_w = pair(output_size, "output_size")
    out = np.zeros((len(rois), maps[0].shape[1], pooled_h, pooled_w), dtype=maps[0].dtype)
    for i, (feature, stride) in enumerate(zip(maps, strides)):
        members = np.flatnonzero(level == i)
        if members.size:
            out[members] = roi_align(feature, rois[members], (pooled_h, pooled_w), 1.0 / stride, sampling_ratio,
                                     aligned)
    return out
