"""DeiT: Training data-efficient image transformers & distillation through attention (Touvron et al., ICML 2021,
https://arxiv.org/abs/2012.12877). Built with timm's `VisionTransformerDistilled`: a ViT with a second,
distillation token whose head learned from a convnet teacher (§4 "Distillation through attention"). In eval both
heads classify and their logits are averaged (§5.2), so the export has one `logits` output.

The tiny variant is the same code with one block of width 16 on a 64x64 input (patch 16: 16 patch tokens plus
the class and distillation tokens), so each export takes seconds."""
from __future__ import annotations

from dataclasses import dataclass, field

from models_zoo.spec import register_model
from models_zoo.timm_vision import VISION_TOLERANCES, TimmVisionSpec

TINY_ARGS = dict(embed_dim=16, depth=1, num_heads=2, img_size=64)

# DeiT tolerances: MEASURED_BELOW
DEIT_TOLERANCES = dict(VISION_TOLERANCES)


@dataclass(frozen=True)
class DeiTSpec(TimmVisionSpec):
    family: str = "deit"
    tolerances: dict = field(default_factory=lambda: dict(DEIT_TOLERANCES))
    # Std of the class and distillation tokens' random init; None: timm's (0.02).
    token_init_std: float | None = None

    def _build(self):
        import timm
        import torch

        # pretrained=False: timm builds the architecture only (weights come from `--weights`, never downloaded).
        model = timm.create_model(self.timm_name, pretrained=False, num_classes=self.num_classes, **self.model_args)
        if self.token_init_std is not None:
            for token in (model.cls_token, model.dist_token):
                torch.nn.init.normal_(token, std=self.token_init_std)
        return model


def _deit(name: str) -> DeiTSpec:
    return DeiTSpec(name=name, timm_name=name,
                    tiny_overrides={"model_args": TINY_ARGS, "image_size": 64, "token_init_std": 1.0})


@register_model
def deit_tiny_distilled_patch16_224(name):
    return _deit(name)


@register_model
def deit_small_distilled_patch16_224(name):
    return _deit(name)


@register_model
def deit_base_distilled_patch16_224(name):
    return _deit(name)
