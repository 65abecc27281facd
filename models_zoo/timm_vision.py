"""The spec shared by the timm image classifiers: input, preprocessing from timm's pretrained config,
real sample photos and ImageNet labels. Each family file supplies only its builder and variants."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models_zoo.data import calibration_photo_paths, photo_paths, preprocess_image
from models_zoo.spec import InputSpec, ModelSpec, Tolerance

# Measured on the tiny variants (random init, 6 held-out verification photos, calibrated on the 8 others) with
# ExecuTorch, LiteRT and ONNX Runtime; the figures behind each bound are in the comments. Bounds are relative to
# the reference's largest logit (`rtol`), since logits range from ~0.07 (tiny, random init) to ~10 (trained);
# `atol` is only a floor under them.
VISION_TOLERANCES = {
    # fp32 rounding is relative: measured <= 1e-6 of the logit scale (tiny) and <= 6e-6 absolute (full size).
    "fp32": Tolerance(atol=1e-4, rtol=1e-5),
    # fp16 keeps ~3 decimal digits: measured 4e-4..1.1e-3 of the scale (TFLite, ONNX; 61-70 dB). ExecuTorch computes
    # every op but LayerNorm in fp16: 6.4e-4..2.5e-3 on x86 (F16C: fp32 inside each kernel; 6 families'
    # tiny models), and on a CPU with fp16 arithmetic (the Cortex-A76 board: fp16 accumulation) up to 8.2e-3 vs fp32
    # PyTorch and 7.1e-3 vs the host (MobileViT-tiny, 43 dB), hence 1.5e-2 (0.15 on logits of ~10). DynamicViT's
    # token selection is not covered (3.3e-2, 35 dB: it fails fp16 .pte verification). 30 dB also guards Core ML.
    "fp16": Tolerance(atol=1e-4, rtol=1.5e-2, min_sqnr_db=30.0),
    # int8: the lowering error is vs the PT2E reference for ExecuTorch and LiteRT static (measured 0.016-0.06 of
    # the scale: kernels requantise differently, a few output quantisation steps), but vs fp32 for ONNX Runtime
    # and LiteRT dynamic, whose quantizers work on the graph (measured up to 0.155 on MobileViT). The SQNR floor
    # vs fp32 is the one that guards accuracy; each family file sets its own. Top-1 vs fp32 over the 6 photos:
    # the tiny random-init models have near-tied logits (top-2 gaps of 1-5% of the scale), measured 5/6 agreeing
    # (0.83); an artifact of the wrong weights, or with its outputs shuffled across photos, agrees on 0/6.
    "int8": Tolerance(atol=1e-3, rtol=0.3, min_sqnr_db=15.0, min_top1=0.5),
    # int4-weight: 4-bit linear weights; ONNX and TFLite are checked against fp32 PyTorch (their quantizers work
    # on the graph): measured 0.08-0.13 of the scale, 19.1-21.7 dB, top-1 4/6 (0.67) to 6/6. SQNR floor: per family.
    "int4-weight": Tolerance(atol=1e-3, rtol=0.3, min_sqnr_db=12.0, min_top1=0.5),
}


class PhotoFeeds:
    """The real photos as a vision spec's feeds, preprocessed by its own `preprocessing()`: the verification
    photos and, disjoint from them, the calibration photos (shared by timm's and Hugging Face's image specs)."""

    def _sample_feeds(self) -> list[dict[str, np.ndarray]]:
        prep = self.preprocessing()
        return [{"pixel_values": preprocess_image(path, prep)} for path in photo_paths()]

    def _calibration_feeds(self) -> list[dict[str, np.ndarray]]:
        prep = self.preprocessing()
        return [{"pixel_values": preprocess_image(path, prep)} for path in calibration_photo_paths()]


@dataclass(frozen=True)
class TimmVisionSpec(PhotoFeeds, ModelSpec):
    task: str = "image-classification"
    output_names: tuple[str, ...] = ("logits",)
    tolerances: dict = field(default_factory=lambda: dict(VISION_TOLERANCES))
    timm_name: str = ""  # whose pretrained config (mean, std, crop) this variant uses
    image_size: int = 224
    model_args: dict[str, Any] = field(default_factory=dict)
    num_classes: int = 1000
    # A timm folder's own pretrained_cfg (mean, std, crop_pct, interpolation) over the architecture's.
    pretrained_cfg: dict[str, Any] | None = None

    def input_specs(self) -> tuple[InputSpec, ...]:
        return (InputSpec("pixel_values", (1, 3, self.image_size, self.image_size), "float32"),)

    def preprocessing(self) -> dict[str, Any]:
        from timm.models import get_pretrained_cfg

        cfg = {**get_pretrained_cfg(self.timm_name).to_dict(), **(self.pretrained_cfg or {})}
        return {"kind": "image", "size": [self.image_size, self.image_size], "crop_pct": cfg["crop_pct"],
                "interpolation": cfg["interpolation"], "mean": list(cfg["mean"]), "std": list(cfg["std"])}


    def labels(self) -> list[str] | None:
        if self.label_names:
            return list(self.label_names)
        if self.num_classes != 1000:
            return None
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        return [info.index_to_description(i) for i in range(1000)]
