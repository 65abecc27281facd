"""Mobile-Former's network in PyTorch (Chen et al., CVPR 2022, https://arxiv.org/abs/2108.05895). Imported
only when a model is built. Sections cited are the paper's.

A Mobile-Former block (Sec. 3, Fig. 3) runs four parts on a feature map X (Mobile side) and a few global
tokens Z (Former side):
  Mobile -> Former  Z += proj(cross-attention of the tokens over the pixels), then LayerNorm (Eq. 1); the
                    pixels are keys and values as they are, with no projection on the Mobile side.
  Former            a standard post-norm Transformer layer on the tokens alone (self-attention + FFN).
  Mobile            an inverted bottleneck whose activations are dynamic ReLUs with parameters generated from
                    the first global token (Sec. 3.2, "Mobile sub-block").
  Former -> Mobile  X += cross-attention of the pixels over the tokens (Eq. 2): pixels query, the tokens give
                    keys and values through two projections.
Downsampling blocks (stride 2) use the paper's "bneck-lite"-style Mobile part: depthwise 3x3 expanding the
channels first, then a pointwise projection, then a second depthwise/pointwise pair (the official `DnaBlock3`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn(inp: int, out: int, kernel: int = 1, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, out, kernel, stride, kernel // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(out))


def channel_shuffle(x, groups: int):
    """ShuffleNet's channel shuffle, after a grouped convolution so the next one mixes across groups."""
    b, c, h, w = x.shape
    return x.reshape(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class DynamicReLU(nn.Module):
    """Dynamic ReLU (Chen et al., ECCV 2020), the Mobile sub-block's activation: max(a1 x, a2 x) per channel,
    the slopes generated from the first global token by a two-layer MLP with a hard sigmoid; a1 lies in
    [0, 2] and a2 in [-1, 1]."""

    def __init__(self, token_dim: int, channels: int, reduction: int = 4):
        super().__init__()
        self.fc1 = nn.Linear(token_dim, token_dim // reduction)
        self.fc2 = nn.Linear(token_dim // reduction, 2 * channels)

    def forward(self, x, first_token):
        h = F.hardsigmoid(self.fc2(F.relu(self.fc1(first_token))))[:, :, None, None]
        a1, a2 = h.chunk(2, dim=1)
        # The official (h - 0.5) * 2 + 1 and (h - 0.5) * 2, simplified: each elementwise op is one more
        # activation an int8 graph quantizer rounds.
        return torch.maximum(x * (2.0 * a1), x * (2.0 * a2 - 1.0))


class MobileToFormer(nn.Module):
    """Eq. 1: tokens attend over the pixels (2 heads, no projection of the pixels), a channel-wise gate from
    the tokens (the official `use_dynamic`), the result projected to the token width, residual, LayerNorm."""

    def __init__(self, channels: int, token_dim: int, heads: int = 2):
        super().__init__()
        self.heads, self.scale = heads, (channels // heads) ** -0.5
        self.query = nn.Linear(token_dim, channels)
        self.gate = nn.Linear(token_dim, channels)
        self.proj = nn.Linear(channels, token_dim)
        self.norm = nn.LayerNorm(token_dim)

    def forward(self, x, tokens):
        b, c, h, w = x.shape
        t = tokens.shape[1]
        q = self.query(tokens).reshape(b, t, self.heads, c // self.heads).transpose(1, 2)  # b, heads, T, c/h
        pixels = x.reshape(b, self.heads, c // self.heads, h * w)                            # b, heads, c/h, HW
        # softmax as exp(log_softmax): the same weights, but no Softmax op for a graph quantizer to pin. A
        # token's attention spreads over every pixel (1024 at 64x64, 12544 at 224x224), each weight ~1/HW;
        # ONNX Runtime's QDQ gives a Softmax a fixed 1/256 output scale, which rounds nearly all of them to 0
        # (measured on the tiny 151M: int8 10.5 dB vs fp32 with Softmax quantized, 21.3 dB without). Here the
        # weights reach the next MatMul's quantizer, whose scale is calibrated on their real range.
        # The logits as (pixels^T q^T)^T, the same product: in the first block q comes from the learnt tokens
        # alone, a constant, and LiteRT's BATCH_MATMUL takes a quantized constant only on its right-hand side
        # (with q on the left, the full-size models' int8-dynamic .tflite failed to prepare).
        logits = (pixels.transpose(-1, -2) @ q.transpose(-1, -2)).transpose(-1, -2)   # b, heads, T, HW
        attn = (logits * self.scale).log_softmax(dim=-1).exp()
        mixed = (attn @ pixels.transpose(-1, -2)).transpose(1, 2).reshape(b, t, c)
        mixed = mixed * (F.hardsigmoid(self.gate(tokens)) * 2.0)
        return self.norm(tokens + self.proj(mixed))


class Former(nn.Module):
    """The token Transformer: multi-head self-attention (keys and values are the tokens themselves), a linear,
    post-norm; then a 2x FFN with GELU, post-norm."""

    def __init__(self, token_dim: int, heads: int = 4):
        super().__init__()
        self.heads, self.scale = heads, (token_dim // heads) ** -0.5
        self.query = nn.Linear(token_dim, token_dim)
        self.mix = nn.Linear(token_dim, token_dim)
        self.norm = nn.LayerNorm(token_dim)
        self.ffn = nn.Sequential(nn.Linear(token_dim, 2 * token_dim), nn.GELU(), nn.Linear(2 * token_dim, token_dim))
        self.ffn_norm = nn.LayerNorm(token_dim)

    def forward(self, tokens):
        b, t, d = tokens.shape
        q = self.query(tokens).reshape(b, t, self.heads, d // self.heads).transpose(1, 2)
        kv = tokens.reshape(b, t, self.heads, d // self.heads).transpose(1, 2)
        attn = ((q @ kv.transpose(-1, -2)) * self.scale).softmax(dim=-1)
        mixed = (attn @ kv).transpose(1, 2).reshape(b, t, d)
        tokens = self.norm(tokens + self.mix(mixed))
        return self.ffn_norm(tokens + self.ffn(tokens))


class FormerToMobile(nn.Module):
    """Eq. 2: each pixel attends over the tokens (2 heads); keys and values are projections of the tokens,
    the pixels query as they are; the result is added to the feature map."""

    def __init__(self, channels: int, token_dim: int, heads: int = 2):
        super().__init__()
        self.heads, self.scale = heads, (channels // heads) ** -0.5
        self.key = nn.Linear(token_dim, channels)
        self.value = nn.Linear(token_dim, channels)

    def forward(self, x, tokens):
        b, c, h, w = x.shape
        t = tokens.shape[1]
        q = x.reshape(b, self.heads, c // self.heads, h * w).transpose(-1, -2)             # b, heads, HW, c/h
        k = self.key(tokens).transpose(1, 2).reshape(b, self.heads, c // self.heads, t)   # b, heads, c/h, T
        v = self.value(tokens).transpose(1, 2).reshape(b, self.heads, c // self.heads, t)
        attn = ((q @ k) * self.scale).softmax(dim=-1)
        out = (attn @ v.transpose(-1, -2)).transpose(-1, -2).reshape(b, c, h, w)
        return x + out


class ConvOnly(nn.Module):
    """The first block of each config: depthwise 3x3 (channel multiplier `expand`), ReLU6, pointwise; no
    bridge (the official blocks with e2 = 0)."""

    def __init__(self, inp: int, out: int, stride: int, expand: int, groups: int):
        super().__init__()
        self.dw = conv_bn(inp, inp * expand, 3, stride, groups=inp)
        self.pw = conv_bn(inp * expand, out, 1, groups=groups)
        self.shuffle = inp if groups > 1 else 0
        self.residual = stride == 1 and inp == out

    def forward(self, x, tokens):
        y = F.relu6(self.dw(x))
        if self.shuffle:
            y = channel_shuffle(y, self.shuffle)
        y = self.pw(y)
        return (x + y if self.residual else y), tokens


class MobileFormerBlock(nn.Module):
    """Mobile -> Former, Former, Mobile, Former -> Mobile (Fig. 3). `kind` "pw" is the inverted bottleneck
    (pointwise, depthwise, pointwise; official `DnaBlock`), "dw" the downsampling form (depthwise, pointwise,
    depthwise, pointwise; official `DnaBlock3`)."""

    def __init__(self, kind: str, inp: int, out: int, stride: int, e1: float, e2: float, token_dim: int,
                 groups: int = 1):
        super().__init__()
        self.kind, self.groups = kind, groups
        self.residual = stride == 1 and inp == out
        self.to_former = MobileToFormer(inp, token_dim)
        self.former = Former(token_dim)
        if kind == "pw":
            hidden = round(inp * e1)
            self.conv1 = conv_bn(inp, hidden, 1, groups=groups)
            self.conv2 = conv_bn(hidden, hidden, 3, stride, groups=hidden)
            self.conv3 = conv_bn(hidden, out, 1, groups=groups)
            self.act1, self.act2 = DynamicReLU(token_dim, hidden), DynamicReLU(token_dim, hidden)
        else:
            hidden1, hidden2 = round(inp * e1), round(out * e2)
            self.conv1 = conv_bn(inp, hidden1, 3, stride, groups=inp)
            self.conv2 = conv_bn(hidden1, out, 1, groups=groups)
            self.conv3 = conv_bn(out, hidden2, 3, groups=out)
            self.conv4 = conv_bn(hidden2, out, 1, groups=groups)
            self.act1, self.act2 = DynamicReLU(token_dim, hidden1), DynamicReLU(token_dim, hidden2)
            self.shuffles = (inp, out)
        self.to_mobile = FormerToMobile(out, token_dim)

    def forward(self, x, tokens):
        tokens = self.former(self.to_former(x, tokens))
        first = tokens[:, 0]
        grouped = self.groups > 1
        if self.kind == "pw":
            y = self.conv1(x)
            y = channel_shuffle(y, self.groups) if grouped else y
            y = self.act2(self.conv2(self.act1(y, first)), first)
            y = self.conv3(y)
            y = channel_shuffle(y, self.groups) if grouped else y
            if self.residual:
                y = y + x
            return self.to_mobile(y, tokens), tokens
        y = self.conv1(x)
        y = channel_shuffle(y, self.shuffles[0]) if grouped else y
        inner = self.conv2(self.act1(y, first))  # no activation after the projection, as in MobileNetV2
        y = self.conv3(inner)
        y = channel_shuffle(y, self.shuffles[1]) if grouped else y
        y = self.conv4(self.act2(y, first)) + inner
        y = self.to_mobile(y, tokens)
        return (y + x if self.residual else y), tokens


class MobileFormer(nn.Module):
    """Stem, blocks, a last Mobile -> Former, then the head (Sec. 3.3): a 1x1 expansion of the final feature
    map, average pooling, concatenated with the first global token, two fully connected layers."""

    def __init__(self, stem: int, blocks, token_num: int, token_dim: int, head_dim: int, groups: int = 1,
                 num_classes: int = 1000, last_expand: int = 6):
        super().__init__()
        self.tokens = nn.Parameter(torch.empty(token_num, token_dim))
        self.stem = conv_bn(3, stem, 3, 2)
        layers, inp = [], stem
        for kind, e1, out, stride, e2 in blocks:
            if e2 == 0:
                layers.append(ConvOnly(inp, out, stride, e1, groups))
            else:
                layers.append(MobileFormerBlock(kind, inp, out, stride, e1, e2, token_dim, groups))
            inp = out
        self.blocks = nn.ModuleList(layers)
        self.to_former = MobileToFormer(inp, token_dim)
        self.groups = groups
        self.head_conv = conv_bn(inp, inp * last_expand, 1, groups=groups)
        self.head_fc = nn.Linear(inp * last_expand + token_dim, head_dim)
        self.head_bn = nn.BatchNorm1d(head_dim)
        self.classifier = nn.Linear(head_dim, num_classes)
        nn.init.normal_(self.tokens)  # nn.Embedding's initialisation, which the official tokens use
        # Convolutions as the official code initialises them; linears keep PyTorch's default, whose scale
        # (1/sqrt(fan_in)) gives a random-init model logits that spread and follow the input (the official
        # N(0, 0.01) linears give near-constant logits, std ~4e-3, at the tiny widths the tests run).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    def forward(self, pixel_values):
        x = F.relu6(self.stem(pixel_values))
        # A copy, not a view of the parameter: blocks take the tokens as an input, and a view of a leaf made
        # under no_grad trips autograd-based module hooks (FlopCounterMode's).
        tokens = self.tokens.unsqueeze(0).repeat(x.shape[0], 1, 1)
        for block in self.blocks:
            x, tokens = block(x, tokens)
        tokens = self.to_former(x, tokens)
        if self.groups > 1:
            x = channel_shuffle(x, self.groups)
        x = F.hardswish(F.relu6(self.head_conv(x)).mean(dim=(2, 3)))
        x = torch.cat([x, tokens[:, 0]], dim=1)
        return self.classifier(F.hardswish(self.head_bn(self.head_fc(x))))
