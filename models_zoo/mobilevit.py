"""MobileViT: Light-weight, General-purpose, and Mobile-friendly Vision Transformer (Mehta & Rastegari, 2021,
https://arxiv.org/abs/2110.02178). Built with timm's ByobNet code; variants are timm's configs, the tiny variant
is the same block structure with small widths and a 64x64 input."""
from __future__ import annotations

from dataclasses import dataclass

from models_zoo.spec import register_model
from models_zoo.timm_vision import TimmVisionSpec


def _tiny_cfg():
    from timm.models.byobnet import ByoModelCfg
    from timm.models.mobilevit import _inverted_residual_block, _mobilevit_block

    return ByoModelCfg(
        blocks=(
            _inverted_residual_block(d=1, c=8, s=1, br=2.0),
            _inverted_residual_block(d=1, c=12, s=2, br=2.0),
            _mobilevit_block(d=1, c=16, s=2, transformer_dim=24, transformer_depth=1, patch_size=2, br=2.0),
            _mobilevit_block(d=1, c=24, s=2, transformer_dim=32, transformer_depth=1, patch_size=2, br=2.0),
        ),
        stem_chs=8, stem_type="3x3", stem_pool="", downsample="", act_layer="silu", num_features=64,
    )


@dataclass(frozen=True)
class MobileViTSpec(TimmVisionSpec):
    family: str = "mobilevit"
    image_size: int = 256

    def _build(self):
        from timm.models.byobnet import ByobNet
        from timm.models.mobilevit import model_cfgs

        cfg = _tiny_cfg() if self.is_tiny else model_cfgs[self.timm_name]
        return ByobNet(cfg, num_classes=self.num_classes)


def _mobilevit(name: str) -> MobileViTSpec:
    return MobileViTSpec(name=name, timm_name=name, tiny_overrides={"image_size": 64})


@register_model
def mobilevit_xxs(name):
    return _mobilevit(name)


@register_model
def mobilevit_xs(name):
    return _mobilevit(name)


@register_model
def mobilevit_s(name):
    return _mobilevit(name)
