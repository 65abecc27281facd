"""EfficientFormer: Vision Transformers at MobileNet Speed (Li et al., NeurIPS 2022,
https://arxiv.org/abs/2206.01191). Built with timm's EfficientFormer code; the tiny variant keeps the
224x224 input (its last stage's attention biases are sized for a 7x7 token grid) with one block per stage."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from models_zoo.spec import register_model
from models_zoo.timm_vision import VISION_TOLERANCES, TimmVisionSpec

TINY_ARGS = dict(depths=(1, 1, 1, 1), embed_dims=(16, 24, 32, 48), num_vit=1)

# EfficientFormer quantizes well (mostly conv/linear with BatchNorm folded): int8 vs fp32 measured, on the
# held-out photos, 32.9-33.6 dB on the tiny variant and 34.8-36.0 dB on full-size efficientformer_l1 (random
# init) across ExecuTorch, LiteRT and ONNX, so 25 dB; the vision families' 15 dB would pass an artifact that
# ignores its input (the mean logits for every photo: 14.0 dB on the tiny variant). int4-weight: measured
# 19.5-21.7 dB on the tiny variant, 15 dB for the same reason.
EFFICIENTFORMER_TOLERANCES = {
    **VISION_TOLERANCES,
    "int8": replace(VISION_TOLERANCES["int8"], min_sqnr_db=25.0),
    "int4-weight": replace(VISION_TOLERANCES["int4-weight"], min_sqnr_db=15.0),
}


@dataclass(frozen=True)
class EfficientFormerSpec(TimmVisionSpec):
    family: str = "efficientformer"
    tolerances: dict = field(default_factory=lambda: dict(EFFICIENTFORMER_TOLERANCES))
    image_size: int = 224

    def _build(self):
        from timm.models.efficientformer import EfficientFormer

        return EfficientFormer(num_classes=self.num_classes, **self.model_args)


def _efficientformer(name: str, level: str, num_vit: int) -> EfficientFormerSpec:
    from timm.models.efficientformer import EfficientFormer_depth, EfficientFormer_width

    model_args = dict(depths=EfficientFormer_depth[level], embed_dims=EfficientFormer_width[level], num_vit=num_vit)
    return EfficientFormerSpec(name=name, timm_name=name, model_args=model_args,
                               tiny_overrides={"model_args": TINY_ARGS})


@register_model
def efficientformer_l1(name):
    return _efficientformer(name, "l1", num_vit=1)


@register_model
def efficientformer_l3(name):
    return _efficientformer(name, "l3", num_vit=4)


@register_model
def efficientformer_l7(name):
    return _efficientformer(name, "l7", num_vit=8)
