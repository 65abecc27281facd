"""DynamicViT's eval-mode network in PyTorch (Rao et al., NeurIPS 2021, https://arxiv.org/abs/2106.02034).
Imported only when a model is built, so the zoo's registry loads without torch. Sections cited are the paper's."""
from __future__ import annotations

import torch
from torch import nn


class Attention(nn.Module):
    """Multi-head self-attention written out (no fused kernel), so FLOPs are counted and every format sees
    plain matmuls and a softmax."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        weights = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.out((weights @ v).transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Sec. 3.1: the DeiT block, pre-norm attention then a 4x MLP, each with a residual."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.mlp_norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class TokenScorer(nn.Module):
    """Sec. 3.2, Eq. 1-3: per-token local features and a global one, then an MLP to (keep, drop) logits."""

    def __init__(self, dim: int):
        super().__init__()
        self.embed = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU())
        self.score = nn.Sequential(nn.Linear(dim, dim // 2), nn.GELU(), nn.Linear(dim // 2, dim // 4), nn.GELU(),
                                   nn.Linear(dim // 4, 2))

    def forward(self, tokens):
        z = self.embed(tokens)
        # Slices, not chunk/select: XNNPACK delegates static slices, while split and select end a partition.
        half = z.shape[-1] // 2
        local, glob = z[..., :half], z[..., half:]
        # Eq. 2 averages the global half over the kept tokens (weighted by the decision mask D); in eval every
        # token still present is a kept one, so it is a plain mean.
        glob = glob.mean(dim=1, keepdim=True).expand_as(local)
        logits = self.score(torch.cat([local, glob], dim=-1))
        # The paper ranks tokens by log-softmax(logits)[..., keep]; that is monotonic in keep - drop, so ranking
        # by the difference selects the same tokens without the log-softmax.
        return (logits[..., :1] - logits[..., 1:]).flatten(1)


class DynamicViT(nn.Module):
    """DeiT with token scorers before the blocks in `prune_at`; `keep[s]` patch tokens survive scorer s."""

    def __init__(self, image_size: int, patch: int, dim: int, depth: int, heads: int, prune_at, keep,
                 num_classes: int = 1000):
        super().__init__()
        grid = image_size // patch
        self.stem = nn.Conv2d(3, dim, patch, patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.zeros(1, grid * grid + 1, dim))
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.scorers = nn.ModuleList(TokenScorer(dim) for _ in prune_at)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.classifier = nn.Linear(dim, num_classes)
        self.prune_at, self.keep = tuple(prune_at), tuple(keep)
        # Random init (tests, trials; real use loads a checkpoint): positions and class token as DeiT's
        # (truncated normal, std 0.02), linears PyTorch's default. DeiT's std-0.02 linears leave the blocks'
        # residual contributions far below the patch tokens' scale at init, so per-tensor int8 rounds them
        # away and the logits barely depend on the photo: measured on the tiny variant, static int8 8 dB vs
        # fp32 against 7 dB for a constant output; with default linears 20.8 dB against 3.3 dB.
        nn.init.trunc_normal_(self.pos, std=0.02)
        nn.init.trunc_normal_(self.cls, std=0.02)

    def forward(self, pixel_values):
        x = self.stem(pixel_values).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        stage = 0
        for i, block in enumerate(self.blocks):
            if stage < len(self.prune_at) and i == self.prune_at[stage]:
                x = self._prune(x, stage)
                stage += 1
            x = block(x)
        return self.classifier(self.norm(x[:, :1]).flatten(1))  # LayerNorm is per token: norm the class token only

    def _prune(self, x, stage: int):
        """Sec. 3.3 at inference: the `keep[stage]` best-scored patch tokens survive, a static k; the class
        token always does. Their order does not matter: nothing after this point depends on token order."""
        cls, patches = x[:, :1], x[:, 1:]
        best = self.scorers[stage](patches).topk(self.keep[stage], dim=1).indices
        # gather, not index_select: measured in LiteRT int8, index_select of a data-dependent index brings
        # bounds checks (GREATER_EQUAL, LESS_EQUAL, LOGICAL_AND, REDUCE_ALL, SELECT: 55 of 411 ops outside
        # XNNPACK) where gather brings a negative-index wrap (46 of 396).
        patches = patches.gather(1, best.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
        return torch.cat([cls, patches], dim=1)
