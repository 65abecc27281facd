"""Graph rewrites that keep the math and change the ops, so a backend's delegate takes the whole model.

Each rewrite swaps modules in a copy of the model; parity is still checked against the original.
"""
from __future__ import annotations

import functools


def eager_attention(model):
    """Use explicit matmul/softmax attention instead of fused SDPA.

    SDPA decomposes into a "safe softmax" (eq/any/where/full_like) that delegates reject, and fused
    attention also hides its matmuls from FLOP counters.
    """
    for module in model.modules():
        if hasattr(module, "fused_attn"):  # timm attention blocks
            module.fused_attn = False
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            config._attn_implementation = "eager"
    return model


@functools.lru_cache(maxsize=None)
def linear_layernorm_type():
    """The rewrite's module class (one class per process, so quantizers can match it by type)."""
    import torch
    import torch.nn.functional as F

    class LinearLayerNormModule(torch.nn.Module):
        """LayerNorm over the last dim with its two means computed as a linear layer (x @ 1/C).

        XNNPACK has no LayerNorm and its mean only reduces the spatial dims of 4-D tensors, so a stock
        LayerNorm cuts the delegated graph in two at every Transformer block. Linear, sub, mul, add and
        rsqrt are all XNNPACK ops; the result equals LayerNorm to float rounding.
        """

        def __init__(self, norm: torch.nn.LayerNorm) -> None:
            super().__init__()
            width = norm.normalized_shape[-1]
            self.eps = norm.eps
            self.weight, self.bias = norm.weight, norm.bias
            self.register_buffer("average", torch.full((1, width), 1.0 / width), persistent=False)

        def forward(self, x):
            centred = x - F.linear(x, self.average)
            variance = F.linear(centred * centred, self.average)
            y = centred * torch.rsqrt(variance + self.eps)
            if self.weight is not None:
                y = y * self.weight
            if self.bias is not None:
                y = y + self.bias
            return y

    return LinearLayerNormModule


def layernorm_as_linear(model):
    """Swap every last-dim `nn.LayerNorm` for the equivalent linear-mean form XNNPACK takes whole."""
    import torch

    cls = linear_layernorm_type()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.LayerNorm and len(child.normalized_shape) == 1:
                setattr(parent, name, cls(child))
    return model


def for_xnnpack(model):
    """Everything XNNPACK needs to take a Transformer whole."""
    return layernorm_as_linear(eager_attention(model))


@functools.lru_cache(maxsize=None)
def folded_window_block_type():
    """timm's TinyViT block with its window partition written for a batch of 1 (one class per process)."""
    import torch.nn.functional as F
    from timm.models.tiny_vit import TinyVitBlock

    class FoldedWindowBlock(TinyVitBlock):
        """TinyViT's block (Wu et al. 2022, §4) with the batch of 1 folded out of the window partition.

        timm partitions an (B, H, W, C) map into windows through a rank-6 view (B, nH, ws, nW, ws, C); Core ML
        runs tensors of rank 5 at most and rejects the program. With B = 1 the same partition is a rank-5 view
        (nH, ws, nW, ws, C), the same transpose one axis lower, and the same reshape: identical values.
        """

        def forward(self, x):
            B, H, W, C = x.shape
            ws = self.window_size
            if B != 1 or (H == ws and W == ws):
                return super().forward(x)
            shortcut = x
            pad_b, pad_r = (ws - H % ws) % ws, (ws - W % ws) % ws
            if pad_b or pad_r:
                x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
            pH, pW = H + pad_b, W + pad_r
            nH, nW = pH // ws, pW // ws
            x = x.view(nH, ws, nW, ws, C).transpose(1, 2).reshape(nH * nW, ws * ws, C)
            x = self.attn(x)
            x = x.view(nH, nW, ws, ws, C).transpose(1, 2).reshape(1, pH, pW, C)
            if pad_b or pad_r:
                x = x[:, :H, :W].contiguous()
            x = shortcut + self.drop_path1(x)
            x = self.local_conv(x.permute(0, 3, 1, 2))
            x = x.reshape(1, C, H * W).transpose(1, 2)
            x = x + self.drop_path2(self.mlp(x))
            return x.view(1, H, W, C)

    return FoldedWindowBlock


def fold_window_batch(model):
    """`model` itself when it has no timm TinyViT block, else a copy whose blocks take the batch-1 window
    partition (`folded_window_block_type`): for Core ML, whose tensors have rank 5 at most."""
    import copy

    try:
        from timm.models.tiny_vit import TinyVitBlock
    except ImportError:
        return model
    if not any(type(m) is TinyVitBlock for m in model.modules()):
        return model
    model = copy.deepcopy(model)
    for block in model.modules():
        if type(block) is TinyVitBlock:
            block.__class__ = folded_window_block_type()  # same parameters and names: only forward changes
    return model
