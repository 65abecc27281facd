"""Box glue: NMS (plain and per class), IoU, box decoding and clipping, with torchvision's semantics.

Boxes are `(x1, y1, x2, y2)` rows. Arithmetic runs in the boxes' own dtype (float32 from an artifact), in the
order torchvision's CPU kernels use, so NMS keeps exactly the same indices: only the IoU comparison is made in
float64, as the kernel compares its float IoU with a double threshold.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from device_runtime.errors import InputError, ShapeError
from device_runtime.glue.checks import boxes_xyxy, finite, float_array, int_array, vector
from device_runtime.glue.registry import register_glue


def _threshold(value: float) -> float:
    try:
        threshold = float(value)
    except (TypeError, ValueError):
        raise InputError(f"iou_threshold must be a number, got {value!r}") from None
    if math.isnan(threshold):
        raise InputError("iou_threshold is NaN")
    return threshold


@register_glue(inputs=("boxes", "scores"), outputs=("keep",))
def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression, as `torchvision.ops.nms`: the int64 indices of the boxes kept, highest
    score first (equal scores in index order: the kernel's sort is stable); a box is dropped when its IoU with
    a kept, higher-scoring box is > `iou_threshold`. Zero-area boxes are kept (their IoU is 0/0, never >)."""
    boxes = boxes_xyxy(boxes)
    scores = vector(scores, "scores", boxes.shape[0], "boxes")
    threshold = _threshold(iou_threshold)
    n = boxes.shape[0]
    if n == 0:
        return np.empty(0, dtype=np.int64)
    x1, y1, x2, y2 = (np.ascontiguousarray(boxes[:, i]) for i in range(4))
    areas = (x2 - x1) * (y2 - y1)
    order = np.argsort(-scores, kind="stable")
    suppressed = np.zeros(n, dtype=bool)
    keep = []
    with np.errstate(invalid="ignore", divide="ignore"):  # 0/0 for two zero-area boxes: NaN, never > threshold
        for position in range(n):
            i = order[position]
            if suppressed[i]:
                continue
            keep.append(i)
            rest = order[position + 1:]
            if not rest.size:
                break
            w = np.maximum(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0)
            h = np.maximum(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0)
            inter = w * h
            iou = inter / (areas[i] + areas[rest] - inter)
            suppressed[rest[iou.astype(np.float64) > threshold]] = True
    return np.asarray(keep, dtype=np.int64)


@register_glue(inputs=("boxes", "scores", "idxs"), outputs=("keep",))
def batched_nms(boxes: np.ndarray, scores: np.ndarray, idxs: np.ndarray, iou_threshold: float) -> np.ndarray:
    """NMS within each category (`idxs`, one integer per box), as `torchvision.ops.batched_nms`: boxes of
    different categories never suppress each other; the kept indices come highest score first (ties in index
    order). Runs one exact `nms` per category. torchvision's CPU paths differ slightly: under 4000 coordinates it
    shifts the boxes by a per-category offset (which can move an IoU sitting on the threshold by one rounding);
    above, its final sort is unstable, so equal scores may come in another order (the same boxes are kept)."""
    boxes = boxes_xyxy(boxes)
    scores = vector(scores, "scores", boxes.shape[0], "boxes")
    idxs = int_array(idxs, "idxs")
    if idxs.shape != (boxes.shape[0],):
        raise ShapeError(f"idxs has shape {list(idxs.shape)}; expected ({boxes.shape[0]},): one category per box")
    keep_mask = np.zeros(boxes.shape[0], dtype=bool)
    for category in np.unique(idxs):
        members = np.flatnonzero(idxs == category)
        keep_mask[members[nms(boxes[members], scores[members], iou_threshold)]] = True
    kept = np.flatnonzero(keep_mask)
    return kept[np.argsort(-scores[kept], kind="stable")].astype(np.int64)


@register_glue(inputs=("boxes1", "boxes2"), outputs=("iou",))
def box_iou(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """Pairwise IoU, `(N, 4)` x `(M, 4)` -> `(N, M)`, as `torchvision.ops.box_iou`."""
    a, b = boxes_xyxy(boxes1, "boxes1"), boxes_xyxy(boxes2, "boxes2")
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    wh = np.maximum(np.minimum(a[:, None, 2:], b[:, 2:]) - np.maximum(a[:, None, :2], b[:, :2]), 0)
    inter = wh[..., 0] * wh[..., 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return inter / (area_a[:, None] + area_b - inter)


@register_glue(inputs=("boxes", "deltas"), outputs=("boxes",))
def decode_boxes(boxes: np.ndarray, deltas: np.ndarray, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
                 clip: float = math.log(1000.0 / 16)) -> np.ndarray:
    """Apply regression deltas to reference boxes (anchors or proposals), as torchvision's
    `BoxCoder(weights, bbox_xform_clip=clip).decode_single(deltas, boxes)`: `deltas` is `(N, 4 * K)` (K classes
    of `(dx, dy, dw, dh)`), the result `(N, 4 * K)` boxes in the deltas' dtype; `dw`, `dh` are divided by their
    weights and capped at `clip` before `exp`, so a wild delta cannot overflow."""
    boxes = boxes_xyxy(boxes)
    deltas = finite(float_array(deltas, "deltas"), "deltas")
    if deltas.ndim != 2 or deltas.shape[0] != boxes.shape[0] or deltas.shape[1] % 4:
        raise ShapeError(f"deltas has shape {list(deltas.shape)}; expected ({boxes.shape[0]}, 4 * K): one row of "
                         "(dx, dy, dw, dh) per class for each box")
    try:
        wx, wy, ww, wh = (float(w) for w in weights)
        bad_clip = not math.isfinite(float(clip))
    except (TypeError, ValueError):
        raise InputError(f"weights must be four numbers and clip a number, got {weights!r} and {clip!r}") from None
    if min(wx, wy, ww, wh) <= 0 or bad_clip:
        raise InputError(f"weights must be four positive numbers and clip finite, got {weights!r} and {clip!r}")
    boxes = boxes.astype(deltas.dtype, copy=False)
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    dx, dy = deltas[:, 0::4] / wx, deltas[:, 1::4] / wy
    dw = np.minimum(deltas[:, 2::4] / ww, clip)
    dh = np.minimum(deltas[:, 3::4] / wh, clip)
    pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
    pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
    half_w = 0.5 * (np.exp(dw) * widths[:, None])
    half_h = 0.5 * (np.exp(dh) * heights[:, None])
    decoded = np.stack((pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h), axis=2)
    return decoded.reshape(deltas.shape[0], -1)


@register_glue(inputs=("boxes",), outputs=("boxes",))
def clip_boxes(boxes: np.ndarray, image_size: Sequence[int]) -> np.ndarray:
    """Clamp boxes `(..., 4)` into an image of `image_size = (height, width)`, as
    `torchvision.ops.clip_boxes_to_image`: x into [0, width], y into [0, height]."""
    boxes = boxes_xyxy(boxes, rank=None)
    try:
        height, width = (float(v) for v in image_size)
    except (TypeError, ValueError):
        raise InputError(f"image_size must be (height, width), got {image_size!r}") from None
    if not (height >= 0 and width >= 0):
        raise InputError(f"image_size must be non-negative, got {image_size!r}")
    out = boxes.copy()
    out[..., 0::2] = np.clip(boxes[..., 0::2], 0, width)
    out[..., 1::2] = np.clip(boxes[..., 1::2], 0, height)
    return out


@register_glue(inputs=("boxes",), outputs=("keep",))
def remove_small_boxes(boxes: np.ndarray, min_size: float) -> np.ndarray:
    """The int64 indices of the boxes whose width and height are both >= `min_size`, in order, as
    `torchvision.ops.remove_small_boxes` (an RPN drops near-empty proposals with it before NMS)."""
    boxes = boxes_xyxy(boxes)
    try:
        min_size = float(min_size)
    except (TypeError, ValueError):
        raise InputError(f"min_size must be a number, got {min_size!r}") from None
    keep = ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)
    return np.flatnonzero(keep).astype(np.int64)
