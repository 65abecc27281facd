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
