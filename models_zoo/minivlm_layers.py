"""MiniVLM's networks in PyTorch (Wang et al., "MiniVLM: A Smaller and Faster Vision-Language Model", arXiv
2012.06946), as the stages that become separate artifacts. Imported only when a model is built; `minivlm.py`
holds the configurations, the stage specs and the composed reference. Sections cited are the papers'.

TEE, the "Two-stage Efficient feature Extractor" (MiniVLM Sec. 3.1), is a two-stage detector built from the
one-stage EfficientDet's parts (Tan et al., CVPR 2020, arXiv 1911.09070):
  stage "detector"  EfficientNet backbone (timm, `features_only`) -> BiFPN over P3..P7 (EfficientDet Sec. 3:
                    weighted bidirectional fusion with fast normalised weights, depthwise-separable convs) -> a
                    light RPN head shared by all levels (objectness and box deltas for 3 anchors per location).
  stage "box_head"  the RoIAlign'd proposal features (N, C, 4, 4) -> two fully connected layers (the region
                    feature, MiniVLM's per-region visual token) -> class scores and class-agnostic box deltas.
The fusion module (MiniVLM Sec. 3.2) is a MiniLM-shaped BERT encoder (transformers' `BertEncoder`, eager
attention so FLOP counters see the attention matmuls) over [text tokens; regions], a region being the
projection of its feature plus the projection of its box geometry:
  stage "fusion"    bidirectional attention; the pooled [CLS] gives VQA logits over the answer vocabulary and an
                    image-text matching score (retrieval).
  stage "caption"   the unified seq2seq mask (Zhou et al., "Unified VLP", AAAI 2020, as used by Oscar and MiniVLM
                    for captioning): regions attend to regions only, caption token i to all regions and to caption
                    tokens <= i; logits at position i score the token at position i + 1.
Every stage takes and returns fixed shapes, so `torch.export.export` works on each; what lies between them
(decoding, NMS, RoIAlign) is data-dependent and lives in `minivlm_glue.py`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Additive attention bias for a masked key: large enough to zero its softmax weight, small enough to stay finite in
# fp16 and to leave int8 observers a sane range (BERT's own choice).
MASKED = -10000.0


# -- TEE: detector stage -----------------------------------------------------------------------------------------

class SeparableConv(nn.Module):
    """Depthwise 3x3 then pointwise 1x1 then BatchNorm: EfficientDet's convolution in the BiFPN and the heads."""

    def __init__(self, channels: int, out: int | None = None):
        super().__init__()
        out = out or channels
        self.depthwise = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.pointwise = nn.Conv2d(channels, out, 1, bias=False)
        self.bn = nn.BatchNorm2d(out)

    def forward(self, x):
        return self.bn(self.pointwise(self.depthwise(x)))


class WeightedFusion(nn.Module):
    """EfficientDet Eq. 3 ("fast normalized fusion"): O = sum_i w_i I_i / (eps + sum_j w_j), w_i = ReLU(w_i'),
    then swish and a separable conv (Sec. 3.3 says the fused map goes through a depthwise-separable conv)."""

    def __init__(self, inputs: int, channels: int, eps: float = 1e-4):
        super().__init__()
        self.weights = nn.Parameter(torch.ones(inputs))
        self.eps = eps
        self.conv = SeparableConv(channels)

    def forward(self, features: list):
        w = F.relu(self.weights)
        w = w / (w.sum() + self.eps)
        fused = features[0] * w[0]
        for i in range(1, len(features)):
            fused = fused + features[i] * w[i]
        return self.conv(F.silu(fused))


def _up(x):
    # Nearest 2x: the levels are exact halvings (the image side is a multiple of 2**7), so no size argument is needed.
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


def _down(x):
    return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class BiFPNLayer(nn.Module):
    """One BiFPN layer over five levels (EfficientDet Fig. 2d): a top-down pass P7 -> P3 whose intermediate nodes
    fuse a level with the upsampled one above, then a bottom-up pass P3 -> P7 whose outputs fuse the level's
    input, its top-down node (levels 4-6: the extra same-level edge) and the downsampled output below."""

    def __init__(self, channels: int):
        super().__init__()
        self.top_down = nn.ModuleList(WeightedFusion(2, channels) for _ in range(4))   # P6, P5, P4, P3
        self.bottom_up = nn.ModuleList(WeightedFusion(3, channels) for _ in range(3))  # P4, P5, P6
        self.top = WeightedFusion(2, channels)                                          # P7

    def forward(self, feats: list):
        p3, p4, p5, p6, p7 = feats
        td6 = self.top_down[0]([p6, _up(p7)])
        td5 = self.top_down[1]([p5, _up(td6)])
        td4 = self.top_down[2]([p4, _up(td5)])
        out3 = self.top_down[3]([p3, _up(td4)])
        out4 = self.bottom_up[0]([p4, td4, _down(out3)])
        out5 = self.bottom_up[1]([p5, td5, _down(out4)])
        out6 = self.bottom_up[2]([p6, td6, _down(out5)])
        out7 = self.top([p7, _down(out6)])
        return [out3, out4, out5, out6, out7]


class BiFPN(nn.Module):
    """Backbone C3..C5 -> 1x1 conv + BN to the BiFPN width; P6 and P7 by a 1x1 conv + max-pool and a max-pool of P6
    (EfficientDet's extra levels); then `repeats` BiFPN layers (3 for D0, EfficientDet Table 1)."""

    def __init__(self, in_channels: list, channels: int, repeats: int):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Sequential(nn.Conv2d(c, channels, 1, bias=False), nn.BatchNorm2d(channels))
                                     for c in in_channels)
        self.p6 = nn.Sequential(nn.Conv2d(in_channels[-1], channels, 1, bias=False), nn.BatchNorm2d(channels))
        self.layers = nn.ModuleList(BiFPNLayer(channels) for _ in range(repeats))

    def forward(self, c3, c4, c5):
        p6 = _down(self.p6(c5))
        feats = [self.lateral[0](c3), self.lateral[1](c4), self.lateral[2](c5), p6, _down(p6)]
        for layer in self.layers:
            feats = layer(feats)
        return feats


class RPNHead(nn.Module):
    """The light region proposal head, shared by every level: a separable conv + swish, then 1x1 convs giving
    objectness logits (A) and box deltas (4A) per location (Faster R-CNN's RPN, Ren et al. 2015, with
    EfficientDet's separable conv in place of the 3x3 conv)."""

    def __init__(self, channels: int, anchors: int):
        super().__init__()
        self.conv = SeparableConv(channels)
        self.objectness = nn.Conv2d(channels, anchors, 1)
        self.deltas = nn.Conv2d(channels, 4 * anchors, 1)
        self.anchors = anchors
        # torchvision's RPN initialisation: small weights, so the initial proposals sit on the anchors.
        for conv in (self.objectness, self.deltas):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, feature):
        h = F.silu(self.conv(feature))
        b, _, height, width = h.shape
        # (1, A, H, W) -> (1, H*W*A): location-major, the anchor index fastest (the order `anchors()` uses).
        logits = self.objectness(h).permute(0, 2, 3, 1).reshape(b, height * width * self.anchors)
        deltas = self.deltas(h).reshape(b, self.anchors, 4, height, width).permute(0, 3, 4, 1, 2)
        return logits, deltas.reshape(b, height * width * self.anchors, 4)


class DetectorStage(nn.Module):
    """Stage "detector": image (1, 3, S, S) -> the five BiFPN maps (P3..P7), objectness logits (1, A_total) and
    RPN box deltas (1, A_total, 4). The anchors are constants of the configuration (`minivlm.anchors`), not an
    output."""

    def __init__(self, backbone: str, indices: tuple, channels: int, repeats: int, anchors: int):
        super().__init__()
        import timm

        self.backbone = timm.create_model(backbone, pretrained=False, features_only=True, out_indices=indices)
        self.fpn = BiFPN(self.backbone.feature_info.channels(), channels, repeats)
        self.rpn = RPNHead(channels, anchors)

    def forward(self, image):
        feats = self.fpn(*self.backbone(image))
        per_level = [self.rpn(f) for f in feats]
        objectness = torch.cat([o for o, _ in per_level], dim=1)
        deltas = torch.cat([d for _, d in per_level], dim=1)
        return (*feats, objectness, deltas)


# -- TEE: box head stage -----------------------------------------------------------------------------------------

class BoxHeadStage(nn.Module):
    """Stage "box_head": RoI features (N, C, r, r) -> class logits (N, classes + 1; index 0 is background), class-
    agnostic box deltas (N, 4) and the region features (N, D). Two fully connected layers as FPN's box head (Lin et
    al. 2017, Sec. 4.2: "two hidden 1,024-d fc layers"): light on a 4x4 RoI. The layer sizes are ours; the paper's
    box head details were not readable offline."""

    def __init__(self, channels: int, roi_size: int, hidden: int, num_classes: int):
        super().__init__()
        self.fc1 = nn.Linear(channels * roi_size * roi_size, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.classifier = nn.Linear(hidden, num_classes + 1)
        self.box = nn.Linear(hidden, 4)
        # Small refinements at init keep boxes near their proposals (torchvision uses std 0.001 to train from); the
        # classifier keeps PyTorch's default scale, so random-weight class scores still differ between regions.
        nn.init.normal_(self.box.weight, std=0.01)
        nn.init.zeros_(self.box.bias)

    def forward(self, roi_features):
        region = F.relu(self.fc2(F.relu(self.fc1(roi_features.flatten(1)))))
        return self.classifier(region), self.box(region), region


# -- fusion transformer ------------------------------------------------------------------------------------------

def box_geometry(boxes):
    """Normalised (x1, y1, x2, y2) -> the 6-d position Oscar feeds with a region: corners, width and height."""
    return torch.cat([boxes, boxes[..., 2:3] - boxes[..., 0:1], boxes[..., 3:4] - boxes[..., 1:2]], dim=-1)


def seq2seq_allowed(text_len: int, regions: int, device=None):
    """(T + K, T + K) 0/1: which key each query may attend to under the unified seq2seq mask. The sequence is
    [caption tokens; regions]: region rows see regions only; caption row i sees caption tokens 0..i and every
    region. Padding keys are removed separately (`attention_bias`)."""
    total = text_len + regions
    allowed = torch.zeros(total, total, device=device)
    allowed[:text_len, :text_len] = torch.tril(torch.ones(text_len, text_len, device=device))
    allowed[:, text_len:] = 1.0
    return allowed


def attention_bias(key_valid, allowed=None):
    """(1, S) 0/1 valid keys (and an optional (S, S) 0/1 structure) -> the (1, 1, S|1, S) additive bias."""
    keep = key_valid.to(torch.float32)[:, None, None, :]
    if allowed is not None:
        keep = keep * allowed[None, None]
    return (1.0 - keep) * MASKED


class FusionTransformer(nn.Module):
    """The shared body of the fusion and caption stages: text embeddings (word + position + type, BERT's), region
    embeddings (feature projection + box projection, LayerNorm), a BERT encoder, and the heads."""

    def __init__(self, cfg):
        super().__init__()
        from transformers import BertConfig
        from transformers.models.bert.modeling_bert import BertEmbeddings, BertEncoder, BertPooler

        self.config = BertConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden, num_hidden_layers=cfg.layers,
                                 num_attention_heads=cfg.heads, intermediate_size=cfg.ffn,
                                 max_position_embeddings=cfg.max_positions, attn_implementation="eager",
                                 hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        self.embeddings = BertEmbeddings(self.config)
        self.encoder = BertEncoder(self.config)
        self.pooler = BertPooler(self.config)
        self.region_feature = nn.Linear(cfg.box_hidden, cfg.hidden)
        self.region_box = nn.Linear(6, cfg.hidden)
        self.region_norm = nn.LayerNorm(cfg.hidden, eps=self.config.layer_norm_eps)
        # VQA: Oscar's classifier on the pooled [CLS] (hidden -> 2 hidden -> answers); retrieval: a matching logit.
        self.vqa = nn.Sequential(nn.Linear(cfg.hidden, 2 * cfg.hidden), nn.GELU(), nn.Linear(2 * cfg.hidden,
                                                                                               cfg.num_answers))
        self.match = nn.Linear(cfg.hidden, 1)
        # Captioning: BERT's LM transform, the decoder tied to the word embeddings (one vocabulary-sized matrix).
        self.lm_transform = nn.Sequential(nn.Linear(cfg.hidden, cfg.hidden), nn.GELU(),
                                          nn.LayerNorm(cfg.hidden, eps=self.config.layer_norm_eps))
        self.lm_bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def embed(self, input_ids, region_features, region_boxes):
        text = self.embeddings(input_ids=input_ids)
        regions = self.region_norm(self.region_feature(region_features) + self.region_box(box_geometry(region_boxes)))
        return torch.cat([text, regions], dim=1)

    def encode(self, hidden, bias):
        return self.encoder(hidden, attention_mask=bias).last_hidden_state

    def token_logits(self, hidden):
        return F.linear(self.lm_transform(hidden), self.embeddings.word_embeddings.weight, self.lm_bias)


class FusionStage(nn.Module):
    """Stage "fusion": token ids and mask (1, T), region features (1, K, D), normalised boxes (1, K, 4) and region
    mask (1, K) -> VQA logits (1, answers) and the image-text matching score (1, 1). Bidirectional attention over
    [text; regions], padding keys masked."""

    def __init__(self, body: FusionTransformer):
        super().__init__()
        self.body = body

    def forward(self, input_ids, attention_mask, region_features, region_boxes, region_mask):
        hidden = self.body.embed(input_ids, region_features, region_boxes)
        bias = attention_bias(torch.cat([attention_mask, region_mask], dim=1))
        pooled = self.body.pooler(self.body.encode(hidden, bias))
        return self.body.vqa(pooled), self.body.match(pooled)


class CaptionStage(nn.Module):
    """Stage "caption": caption ids so far (1, L; [CLS] first, anything after the current step), regions as in
    "fusion" -> token logits (1, L, vocab), position i scoring the token at i + 1. No text mask is needed: under
    the seq2seq mask a position never sees the ones after it, so the unfilled tail cannot change the prefix's
    logits (the greedy decoder relies on this to run one fixed shape)."""

    def __init__(self, body: FusionTransformer):
        super().__init__()
        self.body = body

    def forward(self, input_ids, region_features, region_boxes, region_mask):
        text_len, regions = input_ids.shape[1], region_features.shape[1]
        hidden = self.body.embed(input_ids, region_features, region_boxes)
        valid = torch.cat([torch.ones_like(input_ids), region_mask], dim=1)
        bias = attention_bias(valid, seq2seq_allowed(text_len, regions, device=input_ids.device))
        return self.body.token_logits(self.body.encode(hidden, bias)[:, :text_len])
