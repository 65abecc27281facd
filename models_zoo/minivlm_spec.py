"""MiniVLM's configuration as plain data: the variants, the anchors, each stage's inputs and outputs and the glue's
settings (what the device side needs, without torch), and the figures the tests check. Its own module so that
both `minivlm.py` (the public entry points) and `minivlm_model.py` (the network) can read it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from device_runtime.errors import UsageError
from models_zoo.spec import InputSpec

# Preprocessing: the EfficientNet backbone's ImageNet statistics; the longer side is resized to the input size and
# the rest padded with zeros (the mean after normalising), as EfficientDet does.
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)
STRIDES = (8, 16, 32, 64, 128)  # P3..P7
# bert-base-uncased's special tokens (the fusion transformer's WordPiece vocabulary).
PAD_ID, CLS_ID, SEP_ID = 0, 101, 102

# Figures the tests check, each with its source. MiniVLM's own tables (Table 1: TEE vs the R101 Faster R-CNN
# baseline; the transformer comparison) could not be read offline: only the abstract's claims were, and they need
# the baseline detector's size, which no reachable source gives. See tests/test_minivlm.py.
PAPER = {
    # MiniLM model card (huggingface.co/microsoft/MiniLM-L12-H384-uncased) and the MiniLM paper (Wang et al. 2020,
    # arXiv 2002.10957): "12-layer, 384-hidden, 12-heads, 33M parameters"; BERT-Base 109M in the same table.
    "minilm_l12_h384_params": 33e6,
    "bert_base_params": 109e6,
    # EfficientDet (Tan et al. 2020, Table 2): D0 at 512 x 512, 3.9M parameters and 2.5B FLOPs (multiply-adds).
    # TEE is "inspired by the one-stage EfficientDet" (MiniVLM abstract): its first stage stays within D0's budget.
    "efficientdet_d0_params": 3.9e6,
    "efficientdet_d0_macs": 2.5e9,
    # MiniVLM abstract (v2): 73% smaller and 94% faster than the baseline, at 94-97% of its accuracy (v1: 99% fewer
    # FLOPs). Recorded, not checked: the baseline detector's size is not reachable here.
    "model_size_reduction": 0.73,
}


@dataclass(frozen=True)
class MiniVLMConfig:
    name: str
    image_size: int = 512
    backbone: str = "efficientnet_b0"
    backbone_indices: tuple = (2, 3, 4)  # C3, C4, C5 (strides 8, 16, 32)
    fpn_channels: int = 64
    fpn_repeats: int = 3
    anchor_ratios: tuple = (0.5, 1.0, 2.0)  # height / width
    anchor_scale: float = 4.0  # anchor side = scale x stride: 32..512 px on P3..P7 (FPN's sizes, Lin et al. Sec 4.1)
    pre_nms: int = 1000
    rpn_nms: float = 0.7
    num_proposals: int = 100
    roi_size: int = 4
    roi_sampling: int = 2
    canonical_size: float = 224.0  # FPN Eq. 1's s0; scaled with the input for the tiny variant
    box_hidden: int = 1024
    num_classes: int = 1600
    det_nms: float = 0.5
    num_regions: int = 50
    hidden: int = 384
    layers: int = 12
    heads: int = 12
    ffn: int = 1536
    vocab_size: int = 30522
    max_positions: int = 512
    text_len: int = 40
    caption_len: int = 20
    num_answers: int = 3129
    initializer_range: float = 0.02
    is_tiny: bool = False

    def tiny(self) -> "MiniVLMConfig":
        """The same code at toy sizes for CI: a 128 x 128 input, timm's `test_efficientnet`, a one-layer 16-wide
        BiFPN, 32 proposals, 10 regions, a 2-layer 32-wide fusion transformer. The vocabulary stays bert-base's
        (a real question tokenises into it), so its embedding is most of the tiny model's ~1M parameters."""
        if self.is_tiny:
            return self
        return dataclasses.replace(
            self, name=f"{self.name}-tiny", is_tiny=True, image_size=128, backbone="test_efficientnet",
            fpn_channels=16, fpn_repeats=1, pre_nms=200, num_proposals=32, canonical_size=56.0, box_hidden=64,
            num_classes=16, num_regions=10, hidden=32, layers=2, heads=2, ffn=64, max_positions=64, text_len=16,
            caption_len=8, num_answers=10, initializer_range=0.2)

    @property
    def num_anchors(self) -> int:
        return len(self.anchor_ratios)

    def level_sizes(self) -> list[int]:
        if self.image_size % STRIDES[-1]:
            raise UsageError(f"MiniVLM's input side must be a multiple of {STRIDES[-1]}, got {self.image_size}")
        return [self.image_size // s for s in STRIDES]

    def anchors(self) -> np.ndarray:
        """(A_total, 4) float32 anchors (x1, y1, x2, y2) in input pixels: levels P3..P7, then rows, then columns,
        then ratios (the order the detector's outputs are flattened in). Centres at (i + 0.5) x stride."""
        out = []
        for stride, side in zip(STRIDES, self.level_sizes()):
            size = self.anchor_scale * stride
            ratios = np.asarray(self.anchor_ratios, dtype=np.float64)
            half_w, half_h = size / np.sqrt(ratios) / 2, size * np.sqrt(ratios) / 2
            centres = (np.arange(side, dtype=np.float64) + 0.5) * stride
            cy, cx = np.meshgrid(centres, centres, indexing="ij")
            cx, cy = cx.reshape(-1, 1), cy.reshape(-1, 1)
            level = np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=-1)  # (H*W, A, 4)
            out.append(level.reshape(-1, 4))
        return np.concatenate(out).astype(np.float32)

    def stage_specs(self) -> dict[str, Any]:
        """Each stage's inputs and outputs (names, shapes, dtypes) and the glue's settings, as plain data."""
        s, c, n, k, d = self.image_size, self.fpn_channels, self.num_proposals, self.num_regions, self.box_hidden
        total = sum(side * side for side in self.level_sizes()) * self.num_anchors
        ids, mask = (0, self.vocab_size - 1), (0, 1)

        def out(name, shape, dtype="float32"):
            return {"name": name, "shape": list(shape), "dtype": dtype}

        regions = [InputSpec("region_features", (1, k, d), "float32"), InputSpec("region_boxes", (1, k, 4), "float32"),
                   InputSpec("region_mask", (1, k), "int64", value_range=mask)]
        stages = {
            "detector": {"inputs": [InputSpec("image", (1, 3, s, s), "float32")],
                         "outputs": [out(f"p{lvl}", (1, c, side, side)) for lvl, side in zip(range(3, 8),
                                                                                           self.level_sizes())]
                         + [out("objectness", (1, total)), out("rpn_deltas", (1, total, 4))]},
            "box_head": {"inputs": [InputSpec("roi_features", (n, c, self.roi_size, self.roi_size), "float32")],
                         "outputs": [out("class_logits", (n, self.num_classes + 1)), out("box_deltas", (n, 4)),
                                     out("region_features", (n, d))]},
            "fusion": {"inputs": [InputSpec("input_ids", (1, self.text_len), "int64", value_range=ids),
                                  InputSpec("attention_mask", (1, self.text_len), "int64", value_range=mask),
                                  *regions],
                       "outputs": [out("vqa_logits", (1, self.num_answers)), out("retrieval_score", (1, 1))]},
            "caption": {"inputs": [InputSpec("input_ids", (1, self.caption_len), "int64", value_range=ids),
                                   *regions],
                        "outputs": [out("token_logits", (1, self.caption_len, self.vocab_size))]},
        }
        for stage in stages.values():
            stage["inputs"] = [spec.to_dict() for spec in stage["inputs"]]
        glue = {
            "image": {"size": s, "mean": list(IMAGE_MEAN), "std": list(IMAGE_STD), "resize": "longer side to size, "
                      "bilinear; pad bottom/right with 0 after normalising", "layout": "NCHW"},
            "anchors": {"count": total, "strides": list(STRIDES), "scale": self.anchor_scale,
                        "ratios": list(self.anchor_ratios), "order": "level, row, column, ratio",
                        "centre": "(index + 0.5) * stride", "ratio": "height / width"},
            "proposals": {"box_coder_weights": [1.0, 1.0, 1.0, 1.0], "delta_clamp": "log(1000/16)",
                          "min_size": 1e-3, "pre_nms_top_n": self.pre_nms, "nms_iou": self.rpn_nms,
                          "count": n, "objectness": "logits; ranked as they are"},
            "roi_align": {"output_size": self.roi_size, "sampling_ratio": self.roi_sampling, "aligned": True,
                          "levels": [3, 4, 5, 6, 7], "canonical_size": self.canonical_size, "canonical_level": 4,
                          "spatial_scale": "1 / stride of the level", "level_eps": 1e-6},
            "regions": {"box_coder_weights": [10.0, 10.0, 5.0, 5.0], "background_class": 0, "nms_iou": self.det_nms,
                        "nms": "class-agnostic", "count": k, "boxes": "x1/w, y1/h, x2/w, y2/h of the valid image"},
            "text": {"pad_id": PAD_ID, "cls_id": CLS_ID, "sep_id": SEP_ID, "vocab": "bert-base-uncased WordPiece",
                     "question": "[CLS] question [SEP], padded with 0"},
            "caption": {"max_len": self.caption_len, "start": CLS_ID, "end": SEP_ID, "fill": PAD_ID,
                        "next_token": "argmax of token_logits[0, i] is the token at i + 1"},
        }
        return {"model": self.name, "stages": stages, "glue": glue,
                "weights": "seeded random init: no trained MiniVLM weights exist offline"}


VARIANTS = {"minivlm": MiniVLMConfig(name="minivlm")}
