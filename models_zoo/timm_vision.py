"""The spec shared by the timm image classifiers: input, preprocessing from timm's pretrained config,
real sample photos and ImageNet labels. Each family file supplies only its builder and variants."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models_zoo.data import photo_paths, preprocess_image
from models_zoo.spec import InputSpec, ModelSpec, Tolerance

VISION_TOLERANCES = {
    "fp32": Tolerance(atol=1e-4),
    # fp16 keeps ~3 decimal digits; logits of magnitude ~10 move by ~1e-2.
    "fp16": Tolerance(atol=5e-2, min_sqnr_db=30.0),
    # int8 kernels round (requantise) differently from the PT2E reference simulation: a few output
    # quantisation steps of logits apart. The fp32-vs-int8 bound is the one that guards accuracy.
    "int8": Tolerance(atol=0.5, min_sqnr_db=15.0),
    # int4-weight: 4-bit linear weights; ONNX and TFLite are checked against fp32 PyTorch (their quantizers
    # work on the graph), so the bound is the fp32 one, with the SQNR floor guarding accuracy.
    "int4-weight": Tolerance(atol=1.0, min_sqnr_db=12.0),
}


@dataclass(frozen=True)
class TimmVisionSpec(ModelSpec):
    task: str = "image-classification"
    output_names: tuple[str, ...] = ("logits",)
    tolerances: dict = field(default_factory=lambda: dict(VISION_TOLERANCES))
    timm_name: str = ""  # whose pretrained config (mean, std, crop) this variant uses
    image_size: int = 224
    model_args: dict[str, Any] = field(default_factory=dict)
    num_classes: int = 1000

    def input_specs(self) -> tuple[InputSpec, ...]:
        return (InputSpec("pixel_values", (1, 3, self.image_size, self.image_size), "float32"),)

    def preprocessing(self) -> dict[str, Any]:
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(self.timm_name).to_dict()
        return {"kind": "image", "size": [self.image_size, self.image_size], "crop_pct": cfg["crop_pct"],
                "interpolation": cfg["interpolation"], "mean": list(cfg["mean"]), "std": list(cfg["std"])}

    def _sample_feeds(self) -> list[dict[str, np.ndarray]]:
        prep = self.preprocessing()
        return [{"pixel_values": preprocess_image(path, prep)} for path in photo_paths()]

    def labels(self) -> list[str] | None:
        if self.num_classes != 1000:
            return None
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        return [info.index_to_description(i) for i in range(1000)]
