"""Region glue: what a two-stage detector needs between its artifacts beyond NMS and RoIAlign (MiniVLM's TEE):
the anchor grid (a constant made from a few numbers, not shipped as a tensor), clipping to and normalising by
each image's own size (a wired `(height, width)`, since a padded input's valid area varies per photo), the best
non-background class of each row, and the indices of a mask's set rows (a padded slot's mask is 0).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from device_runtime.errors import InputError, ShapeError
from device_runtime.glue.checks import boxes_xyxy, finite, float_array
from device_runtime.glue.registry import register_glue


def _image_hw(value: Any) -> tuple[float, float]:
    """A wired `(height, width)` (any numeric dtype, 2 entries), both >= 0."""
    arr = np.asarray(value)
    if arr.dtype.kind not in "iuf" or arr.size != 2:
        raise ShapeError(f"image_hw is {arr.dtype.name}{list(arr.shape)}; expected 2 numbers (height, width) of the "
                         "image inside the input")
    height, width = (float(v) for v in arr.ravel())
    if not (height >= 0 and width >= 0):  # NaN fails too
        raise InputError(f"image_hw must be non-negative, got {arr.ravel().tolist()}")
    return height, width


@register_glue(inputs=(), outputs=("anchors",))
def anchor_grid(image_size: int, strides: Sequence[int], scale: float, ratios: Sequence[float]) -> np.ndarray:
    """`(A, 4)` float32 anchors (x1, y1, x2, y2) over a square input of `image_size` pixels: for each level
    (`strides`, finest first), row, column and ratio in that order, a box of area `(scale * stride) ** 2` and
    height / width `ratio`, centred at `(index + 0.5) * stride`. Computed in float64, then cast, so an artifact's
    flattened detector outputs line up with them row for row (MiniVLM's `MiniVLMConfig.anchors`)."""
    try:
        size, scale = int(image_size), float(scale)
        strides = [int(s) for s in strides]
        ratios = np.asarray([float(r) for r in ratios], dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"anchor_grid takes image_size, scale (numbers), strides and ratios (lists of numbers); got "
                         f"{image_size!r}, {scale!r}, {strides!r}, {ratios!r}") from None
    if size < 1 or not strides or min(strides) < 1 or any(size % s for s in strides) or not ratios.size \
            or (ratios <= 0).any() or not scale > 0:
        raise InputError(f"anchor_grid needs image_size >= 1 divisible by every stride (got {size}, strides "
                         f"{strides}), positive ratios ({ratios.tolist()}) and a positive scale ({scale})")
    out = []
    for stride in strides:
        side = size // stride
        half_w = scale * stride / np.sqrt(ratios) / 2
        half_h = scale * stride * np.sqrt(ratios) / 2
        centres = (np.arange(side, dtype=np.float64) + 0.5) * stride
        cy, cx = np.meshgrid(centres, centres, indexing="ij")
        cx, cy = cx.reshape(-1, 1), cy.reshape(-1, 1)
        out.append(np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=-1).reshape(-1, 4))
    return np.concatenate(out).astype(np.float32)


@register_glue(inputs=("boxes", "image_hw"), outputs=("boxes",))
def clip_boxes_to_image(boxes: np.ndarray, image_hw: np.ndarray) -> np.ndarray:
    """Clamp boxes `(..., 4)` into the image of the wired `image_hw = (height, width)`, as
    `torchvision.ops.clip_boxes_to_image`: `clip_boxes` with the size as data, not a fixed parameter (each photo
    fills its own part of a padded input)."""
    boxes = boxes_xyxy(boxes, rank=None)
    height, width = _image_hw(image_hw)
    out = boxes.copy()
    out[..., 0::2] = np.clip(boxes[..., 0::2], 0, width)
    out[..., 1::2] = np.clip(boxes[..., 1::2], 0, height)
    return out


@register_glue(inputs=("boxes", "image_hw"), outputs=("boxes",))
def normalize_boxes(boxes: np.ndarray, image_hw: np.ndarray) -> np.ndarray:
    """Boxes `(..., 4)` in pixels divided by the wired image size: `(x1 / w, y1 / h, x2 / w, y2 / h)`, in the
    boxes' dtype (what a region transformer embeds). A zero width or height is refused (a division by zero)."""
    boxes = boxes_xyxy(boxes, rank=None)
    height, width = _image_hw(image_hw)
    if height == 0 or width == 0:
        raise InputError(f"image_hw is ({height:g}, {width:g}): boxes cannot be normalised by a zero size")
    scale = np.asarray([width, height, width, height], dtype=boxes.dtype)
    return boxes / scale


@register_glue(inputs=("logits",), outputs=("scores", "labels"))
def best_class(logits: np.ndarray, background: int | None = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per row of class logits `(N, C)`: the softmax probability of the most likely class and that class's int64
    index, leaving out the `background` column (None: keep every class), as `softmax(logits, 1)` then `max` over
    the other columns in torch (first index on ties). Probabilities in the logits' dtype."""
    logits = finite(float_array(logits, "logits"), "logits")
    if logits.ndim != 2 or logits.shape[1] < (2 if background is not None else 1):
        raise ShapeError(f"logits has shape {list(logits.shape)}; expected (N, C) class logits"
                         + (" with a background column and at least one class" if background is not None else ""))
    if background is not None and (isinstance(background, bool) or not isinstance(background, (int, np.integer))
                                   or not 0 <= background < logits.shape[1]):
        raise InputError(f"background must be a column index 0..{logits.shape[1] - 1} or None, got {background!r}")
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    probs = exp / exp.sum(axis=1, keepdims=True)
    columns = np.arange(logits.shape[1])
    if background is not None:
        columns = np.delete(columns, background)
    labels = columns[np.argmax(probs[:, columns], axis=1)].astype(np.int64)
    return probs[np.arange(len(labels)), labels], labels


@register_glue(inputs=("mask",), outputs=("indices",))
def nonzero(mask: np.ndarray) -> np.ndarray:
    """The int64 indices of a 1-D mask's non-zero entries, in order (`torch.nonzero(mask).flatten()`): the real
    rows of a padded block, for `take`."""
    mask = np.asarray(mask)
    if mask.ndim != 1 or mask.dtype.kind not in "biuf":
        raise ShapeError(f"mask is {mask.dtype.name}{list(mask.shape)}; expected a 1-D numeric or bool mask")
    return np.flatnonzero(mask).astype(np.int64)
