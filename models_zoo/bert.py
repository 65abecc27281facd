"""The BERT family, built with transformers' BERT code:

- TinyBERT: Distilling BERT for Natural Language Understanding (Jiao et al., 2020, https://arxiv.org/abs/1909.10351):
  TinyBERT-4 (4 layers, 312 wide, FFN 1200, 12 heads) and TinyBERT-6 (6 layers, 768 wide).
- Q8BERT: Quantized 8Bit BERT (Zafrir et al., 2019, https://arxiv.org/abs/1910.06188): BERT-base whose recipe is
  8-bit symmetric quantization, so it exports int8 by default.

All are sequence classifiers (the GLUE/SST-2 setting both papers report); inputs are WordPiece ids of the real
bert-base-uncased vocabulary at a fixed sequence length (a parameter, default 128).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models_zoo.data import SAMPLE_SENTENCES, tokenize
from models_zoo.spec import InputSpec, ModelSpec, Tolerance, register_model

BERT_TOLERANCES = {
    "fp32": Tolerance(atol=1e-4),
    "fp16": Tolerance(atol=5e-2, min_sqnr_db=30.0),
    # Dynamic int8 quantises activations per call, so kernel rounding differs slightly from the reference.
    "int8": Tolerance(atol=0.1, min_sqnr_db=15.0),
}

BERT_BASE_VOCAB = 30522  # bert-base-uncased WordPiece
SST2_LABELS = ["negative", "positive"]
# A larger init scale than BERT's 0.02 so the 32-wide tiny model's logits have real spread.
TINY_CONFIG = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                   initializer_range=0.2)


@dataclass(frozen=True)
class BertSpec(ModelSpec):
    task: str = "text-classification"
    output_names: tuple[str, ...] = ("logits",)
    tolerances: dict = field(default_factory=lambda: dict(BERT_TOLERANCES))
    int8_scheme: str = "dynamic"
    config: dict[str, Any] = field(default_factory=dict)
    seq_len: int = 128
    use_token_type_ids: bool = True
    num_labels: int = 2

    def with_seq_len(self, seq_len: int) -> "BertSpec":
        from dataclasses import replace

        if not 1 < seq_len <= 512:
            raise ValueError(f"sequence length must be in 2..512, got {seq_len}")
        return replace(self, seq_len=seq_len)

    def _build(self):
        import torch
        from transformers import BertConfig, BertForSequenceClassification

        config = BertConfig(vocab_size=BERT_BASE_VOCAB, num_labels=self.num_labels, **self.config)
        # eager attention: plain matmul/softmax, which every exporter and XNNPACK take, and which
        # FlopCounterMode counts (fused attention is invisible to it).
        config._attn_implementation = "eager"
        model = BertForSequenceClassification(config)
        # transformers v5 can leave weights of a bare-config model uninitialised (outputs ~1e-40):
        # initialise explicitly as BERT does.
        for module in model.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
                torch.nn.init.normal_(module.weight, std=config.initializer_range)
            if isinstance(module, torch.nn.Linear) and module.bias is not None:
                torch.nn.init.zeros_(module.bias)
            if isinstance(module, torch.nn.LayerNorm):
                torch.nn.init.ones_(module.weight)
                torch.nn.init.zeros_(module.bias)
        return _LogitsOnly(model)

    def input_specs(self) -> tuple[InputSpec, ...]:
        names = ["input_ids", "attention_mask"] + (["token_type_ids"] if self.use_token_type_ids else [])
        return tuple(InputSpec(n, (1, self.seq_len), "int64", {1: "sequence"}) for n in names)

    def preprocessing(self) -> dict[str, Any]:
        return {"kind": "text", "seq_len": self.seq_len, "lowercase": True, "vocab": None,
                "input_names": list(self.input_names)}

    def _sample_feeds(self) -> list[dict[str, np.ndarray]]:
        prep = self.preprocessing()
        return [tokenize(s, prep) for s in SAMPLE_SENTENCES]

    def labels(self) -> list[str] | None:
        return list(SST2_LABELS) if self.num_labels == 2 else None


def _LogitsOnly(model):
    """Wrap a HF classifier so it takes tensors positionally and returns the logits tensor alone."""
    import torch

    class LogitsOnly(torch.nn.Module):
        def __init__(self, hf_model):
            super().__init__()
            self.model = hf_model

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).logits

    return LogitsOnly(model)


def _bert(name: str, family: str, **config) -> BertSpec:
    return BertSpec(name=name, family=family, config=config, tiny_overrides={"config": TINY_CONFIG, "seq_len": 32})


@register_model
def tinybert_4l_312d(name):
    return _bert(name, "tinybert", hidden_size=312, num_hidden_layers=4, num_attention_heads=12, intermediate_size=1200)


@register_model
def tinybert_6l_768d(name):
    return _bert(name, "tinybert", hidden_size=768, num_hidden_layers=6, num_attention_heads=12, intermediate_size=3072)


@register_model
def q8bert(name):
    spec = _bert(name, "q8bert", hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
    from dataclasses import replace

    return replace(spec, default_precision="int8")
