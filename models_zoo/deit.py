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

# The vision families' bounds. int8 vs fp32 on the held-out photos, tiny variant (its unit init): 27.1 dB
# (ExecuTorch, top-1 5/6; 31.4 dB with another seed's draw); an artifact that ignores its input scores 7.5 dB,
# so 15 dB.
# Full-size with timm's init, static int8 fails verification (9.7 dB: see `unit_init`) and says so.
DEIT_TOLERANCES = dict(VISION_TOLERANCES)


@dataclass(frozen=True)
class DeiTSpec(TimmVisionSpec):
    family: str = "deit"
    tolerances: dict = field(default_factory=lambda: dict(DEIT_TOLERANCES))
    # A random init whose class-token stream survives per-tensor int8; False: timm's. Used by the tiny variant.
    # With timm's (tokens and linear weights at std 0.02) the class and distillation tokens stay ~50x smaller
    # than the patch tokens they share a tensor (and an int8 scale) with, and are rounded away: static int8
    # measured 9.4-13.8 dB vs fp32 on the tiny variant, 9.7 dB on full-size DeiT-Ti (an artifact that ignores its
    # input scores 2.4). Tokens alone at std 1 gave 35 dB but logits that ignore the image (all 6 photos the same
    # class; the input-ignoring artifact 52 dB). Kaiming (fan-in) linear weights and tokens at std 0.3 give
    # image-dependent logits (6 photos, 3 classes; input-ignoring 7.5 dB) and 27.1 dB (ExecuTorch).
    unit_init: bool = False

    def _build(self):
        import timm
        import torch

        # pretrained=False: timm builds the architecture only (weights come from `--weights`, never downloaded).
        model = timm.create_model(self.timm_name, pretrained=False, num_classes=self.num_classes, **self.model_args)
        if self.unit_init:
            for token in (model.cls_token, model.dist_token):
                torch.nn.init.normal_(token, std=0.3)
            for module in model.modules():
                if isinstance(module, torch.nn.Linear) and module not in (model.head, model.head_dist):
                    torch.nn.init.kaiming_normal_(module.weight, nonlinearity="linear")
        return model


def _deit(name: str) -> DeiTSpec:
    return DeiTSpec(name=name, timm_name=name,
                    tiny_overrides={"model_args": TINY_ARGS, "image_size": 64, "unit_init": True})


@register_model
def deit_tiny_distilled_patch16_224(name):
    return _deit(name)


@register_model
def deit_small_distilled_patch16_224(name):
    return _deit(name)


@register_model
def deit_base_distilled_patch16_224(name):
    return _deit(name)
