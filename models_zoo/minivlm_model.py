"""The whole MiniVLM pipeline in PyTorch: the four stage modules of `minivlm_layers.py` joined by the torchvision
glue of `minivlm_glue.py`. This is the reference every exported stage and the device side's numpy glue are
compared with. Imported only when a model is built (`models_zoo.minivlm.build_minivlm`).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from models_zoo.bert import init_bert_weights
from models_zoo.minivlm_spec import CLS_ID, PAD_ID, SEP_ID, STRIDES, MiniVLMConfig
from models_zoo.minivlm_glue import roi_features, select_proposals, select_regions
from models_zoo.minivlm_layers import BoxHeadStage, CaptionStage, DetectorStage, FusionStage, FusionTransformer


class MiniVLM(nn.Module):
    """Stages: `detector`, `box_head`, `fusion`, `caption` (each a fixed-shape `nn.Module`, its own artifact).

    `forward(image, input_ids, attention_mask, valid_hw)` runs TEE and the fusion stage: VQA logits and the
    retrieval score; `regions(image, valid_hw)` stops after TEE; `caption(image, valid_hw)` decodes greedily.
    """

    def __init__(self, cfg: MiniVLMConfig):
        super().__init__()
        self.config = cfg
        self.detector = DetectorStage(cfg.backbone, cfg.backbone_indices, cfg.fpn_channels, cfg.fpn_repeats,
                                      cfg.num_anchors)
        self.box_head = BoxHeadStage(cfg.fpn_channels, cfg.roi_size, cfg.box_hidden, cfg.num_classes)
        body = FusionTransformer(cfg)
        # transformers v5 may leave a bare-config model's weights uninitialised: BERT's normal init, explicitly.
        init_bert_weights(body, cfg.initializer_range)
        self.fusion = FusionStage(body)
        self.caption_stage = CaptionStage(body)
        self.register_buffer("anchors", torch.from_numpy(cfg.anchors()), persistent=False)

    @torch.no_grad()
    def calibrate_batchnorm(self, images) -> None:
        """Estimate the TEE's BatchNorm statistics from real images (N, 3, S, S), one batch: a data-dependent init.
        With random weights and fresh statistics (mean 0, variance 1) the activations fade layer by layer (the
        tiny detector's objectness spread was 3e-5); normalised by real statistics every layer keeps unit scale.
        A batch, not single images: P7 is 1 x 1 on small inputs, and a BatchNorm needs two values per channel."""
        norms = [m for m in self.detector.modules() if isinstance(m, nn.BatchNorm2d)]
        for bn in norms:
            bn.reset_running_stats()
            bn.momentum = None  # a cumulative average: the batch's statistics exactly
            bn.train()
        self.detector(images)
        for bn in norms:
            bn.momentum = 0.1
        self.eval()

    # -- TEE ----------------------------------------------------------------------------------------------------
    def regions(self, image, valid_hw=None) -> dict[str, Any]:
        """Image (1, 3, S, S) -> the fusion stage's region inputs (batch 1, fixed K) and what led to them."""
        cfg = self.config
        valid_hw = valid_hw or (cfg.image_size, cfg.image_size)
        *feats, objectness, deltas = self.detector(image)
        proposals, proposal_mask = select_proposals(objectness, deltas, self.anchors, valid_hw, cfg.pre_nms,
                                                    cfg.rpn_nms, cfg.num_proposals)
        rois = roi_features(feats, proposals, STRIDES, cfg.roi_size, cfg.roi_sampling, cfg.canonical_size)
        class_logits, box_deltas, vectors = self.box_head(rois)
        features, boxes, mask, classes, scores = select_regions(class_logits, box_deltas, vectors, proposals,
                                                                proposal_mask, valid_hw, cfg.det_nms,
                                                                cfg.num_regions)
        return {"region_features": features[None], "region_boxes": boxes[None], "region_mask": mask[None],
                "classes": classes, "scores": scores, "proposals": proposals, "proposal_mask": proposal_mask,
                "objectness": objectness, "roi_features": rois}

    # -- tasks --------------------------------------------------------------------------------------------------
    def forward(self, image, input_ids, attention_mask, valid_hw=None):
        """VQA logits (1, answers) and the image-text matching score (1, 1) for one image and one text."""
        r = self.regions(image, valid_hw)
        return self.fusion(input_ids, attention_mask, r["region_features"], r["region_boxes"], r["region_mask"])

    @torch.no_grad()
    def caption(self, image, valid_hw=None, max_len: int | None = None) -> torch.Tensor:
        """Greedy captioning: (1, max_len) ids, [CLS] first, each next token the arg-max at the previous position,
        stopping early at [SEP] (the rest stays [PAD])."""
        r = self.regions(image, valid_hw)
        return greedy_decode(self.caption_stage, r["region_features"], r["region_boxes"], r["region_mask"],
                             max_len or self.config.caption_len)


def greedy_decode(caption_stage, region_features, region_boxes, region_mask, max_len: int) -> torch.Tensor:
    """Run the fixed-shape caption stage max_len - 1 times, writing one token per step into the (1, max_len)
    buffer. The seq2seq mask keeps each position blind to the ones after it, so the [PAD] tail never changes
    the logits being read."""
    ids = torch.full((1, max_len), PAD_ID, dtype=torch.int64)
    ids[0, 0] = CLS_ID
    for step in range(max_len - 1):
        logits = caption_stage(ids, region_features, region_boxes, region_mask)
        token = int(logits[0, step].argmax())
        ids[0, step + 1] = token
        if token == SEP_ID:
            break
    return ids
