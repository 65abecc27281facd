"""AIPP (`--insert_op_conf`): image preprocessing on the AI Core, written from the model's own preprocessing.

With `--aipp` the `.om` takes an RGB uint8 image (HWC, already resized and centre-cropped to the model size)
and normalises it on the NPU; `aipp_reference` computes the same in numpy, for tests and docs.
"""
from __future__ import annotations

import re
from typing import Any

import numpy as np


def aipp_config(preprocessing: dict[str, Any]) -> str:
    """A static AIPP config: RGB888 uint8 image (already resized/cropped to the model size) -> normalised input.

    AIPP computes out = (in - mean_chn - min_chn) * var_reci_chn per channel; timm's (x/255 - mean) / std is
    min_chn = 255 * mean, var_reci_chn = 1 / (255 * std), mean_chn = 0.
    """
    height, width = preprocessing["size"]
    mean, std = preprocessing["mean"], preprocessing["std"]
    lines = ["# Pocketformer AIPP: RGB888 uint8 HWC image of the model's size -> normalised float NCHW input,",
             "# computed on the AI Core. Resize and centre-crop stay on the host (timm's eval transform).",
             "aipp_op {", "    aipp_mode : static", "    related_input_rank : 0", "    input_format : RGB888_U8",
             f"    src_image_size_w : {width}", f"    src_image_size_h : {height}",
             "    csc_switch : false", "    rbuv_swap_switch : false"]
    for c in range(3):
        lines.append(f"    mean_chn_{c} : 0")
    for c in range(3):
        lines.append(f"    min_chn_{c} : {255.0 * mean[c]:.6f}")
    for c in range(3):
        lines.append(f"    var_reci_chn_{c} : {1.0 / (255.0 * std[c]):.9f}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def aipp_reference(image_u8: np.ndarray, config: str) -> np.ndarray:
    """What the AIPP config computes, in numpy: HWC uint8 -> NCHW float32 (for tests and docs)."""
    values = dict(re.findall(r"(\w+)\s*:\s*([-\w.]+)", config))
    x = image_u8.astype(np.float32)
    out = np.stack([(x[..., c] - float(values[f"mean_chn_{c}"]) - float(values[f"min_chn_{c}"]))
                    * float(values[f"var_reci_chn_{c}"]) for c in range(3)])
    return out[None].astype(np.float32)
