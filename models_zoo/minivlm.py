"""MiniVLM: A Smaller and Faster Vision-Language Model (Wang et al., arXiv 2012.06946), written from the paper as a
multi-artifact pipeline. The configurations and stage specs are in `minivlm_spec.py`, the networks in
`minivlm_layers.py`, the glue between them in `minivlm_glue.py`, the composed model in `minivlm_model.py`.

MiniVLM (Sec. 3) is a vision feature extractor plus a transformer fusion module:
- TEE, the Two-stage Efficient feature Extractor (Sec. 3.1): EfficientNet + BiFPN (from the one-stage EfficientDet)
  with a light RPN, a small RoIAlign (4 x 4) and a light box head, giving about 50 region features with boxes.
- A MiniLM-shaped fusion transformer (Sec. 3.2: 12 layers x 384 wide, chosen after comparing compact BERTs), fed
  text embeddings plus, per region, a projection of its feature and of its box; heads for VQA (classification over
  the answer vocabulary), image-text retrieval (a matching score) and captioning (the unified seq2seq mask, greedy
  decoding to a maximum length).

Not a zoo model: a pipeline of stages does not fit `ModelSpec`'s single graph, so nothing here is registered in
`list_models()`. Each stage is a fixed-shape module (its own artifact); `stage_specs()` describes them, and the
glue's settings, as plain data for the device side. `MiniVLM.forward` composes everything in PyTorch, the
whole-pipeline reference.

Weights: seeded random init. No trained MiniVLM (or TEE) weights exist offline, so outputs are not meaningful
predictions; what the tests check is shapes, the data flow and the paper's size figures.

Choices the paper does not fix (said so wherever they are made): the 512 x 512 input and the D0 BiFPN (64 wide, 3
layers; EfficientDet Table 1), one anchor size per level (4 x stride) at 3 aspect ratios, 1,600 Visual Genome
object classes (bottom-up attention's detector vocabulary), 100 proposals, 3,129 VQA answers (the standard VQA v2
answer vocabulary), 40 text tokens, captions of at most 20 tokens.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from device_runtime.errors import UsageError
from models_zoo.minivlm_spec import (CLS_ID, IMAGE_MEAN, IMAGE_STD, PAD_ID, PAPER, SEP_ID, STRIDES,  # noqa: F401
                                     VARIANTS, MiniVLMConfig)


def minivlm_variants() -> list[str]:
    """The MiniVLM configurations `build_minivlm` knows (each also has a tiny form)."""
    return sorted(VARIANTS)


def minivlm_config(variant: str = "minivlm", tiny: bool = False) -> MiniVLMConfig:
    if variant not in VARIANTS:
        raise UsageError(f"unknown MiniVLM variant {variant!r}; known: {minivlm_variants()}")
    cfg = VARIANTS[variant]
    return cfg.tiny() if tiny else cfg


def stage_specs(variant: str = "minivlm", tiny: bool = False) -> dict[str, Any]:
    return minivlm_config(variant, tiny).stage_specs()


CALIBRATION_IMAGES = 4  # scikit-image calibration photos the TEE's BatchNorm statistics are estimated from


def build_minivlm(variant: str = "minivlm", tiny: bool = False, seed: int = 0, calibrate: bool = True):
    """The eval-mode `MiniVLM` module (stages `detector`, `box_head`, `fusion`, `caption`): seeded random init,
    then (`calibrate`) the TEE's BatchNorm statistics estimated from real photos (`MiniVLM.calibrate_batchnorm`),
    from `models_zoo.data`'s calibration set, disjoint from its verification photos."""
    import torch

    from models_zoo.data import calibration_photo_paths
    from models_zoo.minivlm_model import MiniVLM

    cfg = minivlm_config(variant, tiny)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = MiniVLM(cfg)
    if calibrate:
        photos = calibration_photo_paths()[:CALIBRATION_IMAGES]
        model.calibrate_batchnorm(torch.from_numpy(np.concatenate([prepare_image(p, cfg.image_size)[0]
                                                                   for p in photos])))
    model.pocketformer_weights = {"source": "random", "seed": seed, "batchnorm": "calibrated" if calibrate else "fresh",
                                  "warning": "weights are random: outputs are not meaningful predictions"}
    return model.eval()


def prepare_image(image, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """A path or an HxWxC uint8 array -> the detector's (1, 3, size, size) float32 input and the (height, width)
    of the image inside it: the longer side resized to `size`, normalised, the rest zero-padded."""
    from pathlib import Path

    from PIL import Image

    pil = Image.open(image) if isinstance(image, (str, Path)) else Image.fromarray(np.asarray(image))
    pil = pil.convert("RGB")
    w, h = pil.size
    scale = size / max(w, h)
    new_w, new_h = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
    arr = np.asarray(pil.resize((new_w, new_h), Image.BILINEAR), dtype=np.float32) / 255.0
    arr = (arr - np.asarray(IMAGE_MEAN, np.float32)) / np.asarray(IMAGE_STD, np.float32)
    out = np.zeros((1, 3, size, size), dtype=np.float32)
    out[0, :, :new_h, :new_w] = arr.transpose(2, 0, 1)
    return out, (new_h, new_w)


def tokenize_question(text: str, cfg: MiniVLMConfig) -> dict[str, np.ndarray]:
    """[CLS] text [SEP] in bert-base-uncased WordPiece, padded to the fusion stage's text length."""
    from models_zoo.data import tokenize

    return tokenize(text, {"seq_len": cfg.text_len, "input_names": ("input_ids", "attention_mask")})
