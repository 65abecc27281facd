"""What runs between MiniVLM's stages, in PyTorch with torchvision.ops: the reference the device side's numpy glue
(`device_runtime/glue.py`) is checked against. Imported only when a model is built.

The export boundary is static on purpose. How many proposals survive NMS depends on the image, and a graph whose
shapes depend on its data exports to no phone format; so every step ends in a fixed count: the top `N`
proposals (padded with zero boxes and a 0 in a validity mask when fewer survive) go to the box head, and the top
`K` detections (padded likewise) go to the fusion transformer. A padded slot is harmless downstream: its RoI
feature is computed but its region is masked out of attention.

Box deltas follow torchvision's `BoxCoder` (Faster R-CNN's parameterisation, Ren et al. 2015 Eq. 2): weights
(1, 1, 1, 1) for the RPN and (10, 10, 5, 5) for the box head, log-size deltas clamped at log(1000 / 16),
widths x2 - x1 with no +1. RoIAlign is torchvision's (`aligned=True`: half-pixel centres), on the level FPN's
rule picks (Lin et al. 2017, Eq. 1: k = floor(k0 + log2(sqrt(wh) / s0)), k0 = 4, clamped to P3..P7).
"""
from __future__ import annotations

import math

import torch
import torchvision

DELTA_CLAMP = math.log(1000.0 / 16)
RPN_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
LEVELS = (3, 4, 5, 6, 7)
MIN_BOX_SIZE = 1e-3


def decode_boxes(deltas, boxes, weights):
    """(M, 4) deltas (dx, dy, dw, dh) applied to (M, 4) reference boxes (x1, y1, x2, y2), as torchvision."""
    wx, wy, ww, wh = weights
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    cx, cy = boxes[:, 0] + 0.5 * widths, boxes[:, 1] + 0.5 * heights
    dx, dy = deltas[:, 0] / wx, deltas[:, 1] / wy
    dw = torch.clamp(deltas[:, 2] / ww, max=DELTA_CLAMP)
    dh = torch.clamp(deltas[:, 3] / wh, max=DELTA_CLAMP)
    pcx, pcy = dx * widths + cx, dy * heights + cy
    pw, ph = torch.exp(dw) * widths, torch.exp(dh) * heights
    return torch.stack([pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph], dim=1)


def clip_boxes(boxes, height: float, width: float):
    x = boxes[:, 0::2].clamp(0.0, width)
    y = boxes[:, 1::2].clamp(0.0, height)
    return torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], dim=1)


def pad_to(values, count: int, fill=0.0):
    """(M, ...) -> (count, ...) and a (count,) int64 validity mask: the first min(M, count) rows kept in order,
    the rest filled. The static boundary every glue step ends in."""
    kept = values[:count]
    out = torch.full((count, *values.shape[1:]), fill, dtype=values.dtype, device=values.device)
    out[:kept.shape[0]] = kept
    mask = torch.zeros(count, dtype=torch.int64, device=values.device)
    mask[:kept.shape[0]] = 1
    return out, mask


def select_proposals(objectness, deltas, anchors, valid_hw, pre_nms: int, nms_iou: float, count: int):
    """Detector outputs -> the fixed `count` proposals (count, 4) in input pixels and their mask (count,).

    Decode every anchor, clip to the image's valid area (the rest of the input is padding), drop boxes under
    `MIN_BOX_SIZE`, keep the `pre_nms` best by objectness, NMS at `nms_iou`, keep the best `count`, pad. One
    NMS over all levels (torchvision's RPN runs one per level): the light RPN has few anchors per level.
    """
    scores = objectness[0]
    boxes = clip_boxes(decode_boxes(deltas[0], anchors, RPN_WEIGHTS), *valid_hw)
    big = ((boxes[:, 2] - boxes[:, 0]) >= MIN_BOX_SIZE) & ((boxes[:, 3] - boxes[:, 1]) >= MIN_BOX_SIZE)
    boxes, scores = boxes[big], scores[big]
    top = torch.topk(scores, min(pre_nms, scores.shape[0])).indices
    boxes, scores = boxes[top], scores[top]
    keep = torchvision.ops.nms(boxes, scores, nms_iou)  # sorted by decreasing score
    return pad_to(boxes[keep], count)


def roi_levels(boxes, canonical_size: float):
    """FPN Eq. 1 (torchvision's LevelMapper, eps 1e-6): the pyramid level (3..7) each box is pooled from."""
    scale = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    level = torch.floor(4 + torch.log2(scale / canonical_size) + 1e-6)
    return level.clamp(LEVELS[0], LEVELS[-1]).to(torch.int64)


def roi_features(feats, boxes, strides, output_size: int, sampling_ratio: int, canonical_size: float):
    """(N, 4) boxes in input pixels -> (N, C, r, r): RoIAlign on each box's level. Every box is pooled from every
    level and the right one picked: the same numbers as pooling per level, with no data-dependent shapes."""
    rois = torch.cat([torch.zeros_like(boxes[:, :1]), boxes], dim=1)
    pooled = torch.stack([torchvision.ops.roi_align(f, rois, output_size, spatial_scale=1.0 / s,
                                                    sampling_ratio=sampling_ratio, aligned=True)
                          for f, s in zip(feats, strides)])
    level = roi_levels(boxes, canonical_size) - LEVELS[0]
    return pooled[level, torch.arange(boxes.shape[0])]


def select_regions(class_logits, box_deltas, region_vectors, proposals, proposal_mask, valid_hw,
                   nms_iou: float, count: int):
    """Box head outputs -> the fusion transformer's regions: features (count, D), boxes (count, 4) normalised to
    the valid image (x / width, y / height), the mask (count,), each region's class (count,; 0 on padding) and
    score (count,).

    Each proposal's score is its best non-background class probability; the refined box is the class-agnostic
    delta on the proposal; a class-agnostic NMS at `nms_iou`, then the best `count`. The region feature is the
    proposal's (the box head's hidden vector), as in bottom-up attention features (Anderson et al. 2018).
    """
    height, width = valid_hw
    probs = torch.softmax(class_logits, dim=1)[:, 1:]
    scores, labels = probs.max(dim=1)
    boxes = clip_boxes(decode_boxes(box_deltas, proposals, BOX_WEIGHTS), height, width)
    valid = proposal_mask.bool()
    boxes, scores, labels, vectors = boxes[valid], scores[valid], labels[valid] + 1, region_vectors[valid]
    keep = torchvision.ops.nms(boxes, scores, nms_iou)
    scale = torch.tensor([width, height, width, height], dtype=boxes.dtype)
    features, mask = pad_to(vectors[keep], count)
    normalised, _ = pad_to(boxes[keep] / scale, count)
    classes, _ = pad_to(labels[keep], count, fill=0)
    confidence, _ = pad_to(scores[keep], count)
    return features, normalised, mask, classes, confidence
