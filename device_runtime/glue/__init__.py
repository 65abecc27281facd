"""Pipeline glue: the small numpy steps that run between a pipeline's exported artifacts (NMS, box decoding,
clipping, RoIAlign, top-k, gathering, padding to a fixed count, a greedy decode loop). Torch-free, numpy only.

Each step is a plain function, usable on its own, and registered here by its own name (the function's
`__name__`, never typed twice), so a pipeline manifest names a step by string, as it names a backend:

    >>> from device_runtime import glue
    >>> keep = glue.nms(boxes, scores, iou_threshold=0.5)          # the function itself
    >>> step = glue.get_glue("nms")                                # or by name, as a manifest does
    >>> step.inputs, step.outputs, step.params
    (('boxes', 'scores'), ('keep',), ('iou_threshold',))

A step's `inputs` are the arrays a pipeline wires into it; `params` are the fixed values a manifest gives it
(JSON); `outputs` name what it returns, in order. Each step matches its torchvision / torch counterpart (see
tests/test_glue.py) and refuses bad input with the runtime's typed errors (`ShapeError`, `DTypeError`,
`NonFiniteInputError`, `InvalidBoxError`, `ValueRangeError`), naming the argument and the problem.
"""
from __future__ import annotations

from device_runtime.glue.registry import GLUE, GlueStep, get_glue, list_glue, register_glue
# Importing the step modules registers their steps.
from device_runtime.glue.checks import InvalidBoxError
from device_runtime.glue.boxes import batched_nms, box_iou, clip_boxes, decode_boxes, nms, remove_small_boxes
from device_runtime.glue.roi_align import multiscale_roi_align, roi_align
from device_runtime.glue.select import pad_to_fixed, take, top_k
from device_runtime.glue.decode import greedy_decode, greedy_decode_fixed
from device_runtime.glue.regions import anchor_grid, best_class, clip_boxes_to_image, nonzero, normalize_boxes
from device_runtime.glue.arrays import constant, reshape

__all__ = ["GLUE", "GlueStep", "register_glue", "get_glue", "list_glue", "InvalidBoxError", "nms", "batched_nms",
           "box_iou", "decode_boxes", "clip_boxes", "remove_small_boxes", "roi_align", "multiscale_roi_align",
           "top_k", "take", "pad_to_fixed", "greedy_decode", "greedy_decode_fixed", "anchor_grid", "best_class",
           "clip_boxes_to_image", "nonzero", "normalize_boxes", "constant", "reshape"]
