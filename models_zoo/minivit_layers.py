"""Mini-DeiT's network in PyTorch (MiniViT, Zhang et al., CVPR 2022, https://arxiv.org/abs/2204.07154), with
iRPE keys (Wu et al., ICCV 2021, https://arxiv.org/abs/2107.14222). Imported only when a model is built.

Weight multiplexing (MiniViT Sec. 3.2): consecutive layers share one block's weights (qkv, output projection,
MLP) and are told apart by what each layer keeps of its own: its two LayerNorms ("weight sharing ... LayerNorm
not shared", Sec. 3.2), its weight transformations (two head-mixing matrices, before and after the softmax,
Eq. 5-6) and its iRPE table. A shared tensor is one Parameter used by several layers, so `state_dict()`,
`torch.export` and every artifact built from it hold it once.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


def piecewise_index(offset: np.ndarray, alpha: float, beta: float, gamma: float) -> np.ndarray:
    """iRPE Eq. 18: offsets within alpha keep their exact bucket; farther ones share buckets on a log scale,
    clipped at beta (so the bucket count stays fixed however large the image)."""
    far = np.abs(offset) > alpha
    out = np.round(offset).astype(np.int64)
    mag = np.abs(offset[far]).astype(np.float64)
    log_bucket = np.round(alpha + np.log(mag / alpha) / math.log(gamma / alpha) * (beta - alpha))
    out[far] = (np.sign(offset[far]) * np.minimum(log_bucket, beta)).astype(np.int64)  # truncates toward 0
    return out


def product_buckets(grid: int, ratio: float = 1.9) -> tuple[np.ndarray, int]:
    """iRPE's product method (Sec. 3.2 of the iRPE paper): row and column offsets bucketed separately, the
    bucket is their pair. alpha, beta, gamma = ratio x (1, 2, 8), as Mini-DeiT configures it (ratio 1.9: 7 x 7
    = 49 buckets). Returns the (L, L) bucket of each query/key pair and the bucket count."""
    alpha, beta, gamma = ratio, 2 * ratio, 8 * ratio
    rows, cols = np.divmod(np.arange(grid * grid), grid)
    side = int(beta)
    r = piecewise_index((rows[:, None] - rows[None, :]).astype(np.float64), alpha, beta, gamma) + side
    c = piecewise_index((cols[:, None] - cols[None, :]).astype(np.float64), alpha, beta, gamma) + side
    return r * (2 * side + 1) + c, (2 * side + 1) ** 2


class SharedWeights(nn.Module):
    """What a group of layers shares: the attention's qkv and output projections and the MLP."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, int(dim * mlp_ratio)), nn.GELU(), nn.Linear(int(dim * mlp_ratio), dim))


class MultiplexedLayer(nn.Module):
    """One layer of a shared group: its own LayerNorms, head-mixing transforms and iRPE table, with the group's
    weights."""

    def __init__(self, dim: int, heads: int, buckets: int):
        super().__init__()
        self.heads, self.head_dim, self.buckets = heads, dim // heads, buckets
        self.scale = self.head_dim ** -0.5
        self.attn_norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp_norm = nn.LayerNorm(dim, eps=1e-6)
        # Eq. 5-6: mix the attention maps across heads before and after the softmax (a 1x1 convolution over
        # heads in the official code, kept here as the matrix it is).
        self.mix_logits = nn.Parameter(torch.empty(heads, heads))
        self.mix_probs = nn.Parameter(torch.empty(heads, heads))
        # iRPE on keys, contextual mode, one table shared by the heads: bias(i, j) = q_i . r[bucket(i, j)].
        self.rpe_table = nn.Parameter(torch.zeros(self.head_dim, buckets))
        nn.init.trunc_normal_(self.mix_logits, std=0.02)
        nn.init.trunc_normal_(self.mix_probs, std=0.02)
        # A zero table (iRPE's own initialisation) would make a random-init model ignore the iRPE path.
        nn.init.trunc_normal_(self.rpe_table, std=0.02)

    def _attention(self, x, shared: SharedWeights, rpe_index):
        b, n, c = x.shape
        q, k, v = shared.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q = q * self.scale
        logits = q @ k.transpose(-2, -1)
        # iRPE: every query's dot products with the bucket embeddings, then read out per key by bucket index.
        per_bucket = (q @ self.rpe_table).reshape(b, self.heads, n * self.buckets)
        logits = logits + per_bucket.index_select(2, rpe_index).reshape(b, self.heads, n, n)
        logits = (self.mix_logits @ logits.reshape(b, self.heads, n * n)).reshape(b, self.heads, n, n)
        probs = logits.softmax(dim=-1)
        probs = (self.mix_probs @ probs.reshape(b, self.heads, n * n)).reshape(b, self.heads, n, n)
        return shared.out((probs @ v).transpose(1, 2).reshape(b, n, c))

    def forward(self, x, shared: SharedWeights, rpe_index):
        # The group passes its weights in, so they stay registered once (under the group) however many
        # layers use them.
        x = x + self._attention(self.attn_norm(x), shared, rpe_index)
        return x + shared.mlp(self.mlp_norm(x))


class SharedGroup(nn.Module):
    def __init__(self, dim: int, heads: int, repeats: int, buckets: int):
        super().__init__()
        self.shared = SharedWeights(dim)
        self.layers = nn.ModuleList(MultiplexedLayer(dim, heads, buckets) for _ in range(repeats))

    def forward(self, x, rpe_index):
        for layer in self.layers:
            x = layer(x, self.shared, rpe_index)
        return x


class MiniDeiT(nn.Module):
    """Mini-DeiT: DeiT without a class token (the tokens are averaged, as the official Mini-DeiT configs set
    `use_cls_token=False`), `depth // repeats` groups of `repeats` multiplexed layers."""

    def __init__(self, image_size: int, patch: int, dim: int, depth: int, heads: int, repeats: int = 2,
                 num_classes: int = 1000, rpe_ratio: float = 1.9):
        super().__init__()
        grid = image_size // patch
        index, buckets = product_buckets(grid, rpe_ratio)
        # Flat positions into the (L x buckets) table of per-query bucket scores: row i, column bucket(i, j).
        flat = (np.arange(grid * grid)[:, None] * buckets + index).reshape(-1)
        # Computed once here, a buffer every layer reads: an export sees one constant, never the bucketing.
        self.register_buffer("rpe_index", torch.from_numpy(flat.astype(np.int64)), persistent=False)
        self.stem = nn.Conv2d(3, dim, patch, patch)
        self.pos = nn.Parameter(torch.zeros(1, grid * grid, dim))
        self.groups = nn.ModuleList(SharedGroup(dim, heads, repeats, buckets) for _ in range(depth // repeats))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.classifier = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.pos, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, pixel_values):
        x = self.stem(pixel_values).flatten(2).transpose(1, 2) + self.pos
        for group in self.groups:
            x = group(x, self.rpe_index)
        return self.classifier(self.norm(x).mean(dim=1))
