"""The BERT family, built with transformers' BERT code:

- TinyBERT: Distilling BERT for Natural Language Understanding (Jiao et al., 2020, https://arxiv.org/abs/1909.10351):
  TinyBERT-4 (4 layers, 312 wide, FFN 1200, 12 heads) and TinyBERT-6 (6 layers, 768 wide).
- Q8BERT: Quantized 8Bit BERT (Zafrir et al., 2019, https://arxiv.org/abs/1910.06188): BERT-base whose recipe is
  8-bit symmetric quantization, so it exports int8 by default.

All are sequence classifiers (the GLUE/SST-2 setting both papers report); inputs are WordPiece ids of the real
bert-base-uncased vocabulary at a fixed sequence length (a parameter, default 128).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from device_runtime.errors import UsageError
from models_zoo.data import (CALIBRATION_SENTENCE_PAIRS, CALIBRATION_SENTENCES, SAMPLE_SENTENCE_PAIRS,
                             SAMPLE_SENTENCES, text_feeds)
from models_zoo.errors import WeightsError
from models_zoo.spec import InputSpec, ModelSpec, Tolerance, register_model
from models_zoo.weights import FOLDER_FILES

# Measured on the tiny variants (random init, 12 held-out verification feeds: 8 sentences and 4 sentence pairs)
# with ExecuTorch, LiteRT and ONNX Runtime, and on the real all-MiniLM-L6-v2 (the family's only real weights, the
# same BERT code). Bounds are relative to the reference's largest output (`rtol`): logits range from ~0.3 (full
# size, random init) to ~10 (trained), and a sentence embedding lives at ~1; `atol` is only a floor.
BERT_TOLERANCES = {
    # fp32 rounding is relative: measured <= 4e-7 of the logit scale.
    "fp32": Tolerance(atol=1e-4, rtol=1e-5),
    # fp16: measured 2e-4..4e-4 of the scale (TFLite, ONNX; 70-74 dB); ExecuTorch (fp16 compute, LayerNorm fp32)
    # 5e-4..9e-4 on x86 (4 families; 1.9e-3 through ExecuTorch 1.3.1's numpy runtime) and 1.7e-3 on the
    # Cortex-A76 board (fp16 arithmetic), 52-66 dB. 30 dB is kept for Core ML.
    "fp16": Tolerance(atol=1e-4, rtol=5e-3, min_sqnr_db=30.0),
    # int8 (dynamic, the family's recipe): kernels quantise activations per call (XNNPACK per token), the PT2E
    # reference per tensor, so they differ most where real activations have outliers: measured 0.012-0.014 of
    # the scale on the tiny models but 0.17 on real all-MiniLM-L6-v2 weights (ExecuTorch), hence 0.25. The same
    # bound covers int8-static (measured 0.09 TFLite, 0.18 ONNX on the tiny model). SQNR vs fp32: measured 41-47
    # dB dynamic on the tiny model, 18.9-25.7 dB on the real MiniLM, and 27.3 dB (TFLite) / 18.03 dB (ONNX QDQ,
    # right at the floor: the family's recipe is dynamic) static on the tiny model. Why 18 dB: the tiny model's
    # logits vary little from sentence to sentence, so an artifact that ignores its input (the mean logits for
    # every feed) already scores 13.1 dB, which 15 dB would barely catch. Top-1 vs fp32 over the 12 feeds:
    # measured 12/12 everywhere, but the tiny model gives every feed the same class, so only the SQNR and rtol
    # bounds catch a broken tiny artifact; 0.75 (3 flips of near-tied logits) is for trained weights.
    "int8": Tolerance(atol=1e-3, rtol=0.25, min_sqnr_db=18.0, min_top1=0.75),
    # int4-weight: checked against fp32 PyTorch for ONNX and TFLite (see the vision families' note): measured
    # 0.01-0.10 of the scale, 19.5-23.4 dB, top-1 12/12. 15 dB, not 12: the input-ignoring artifact scores 13.1.
    "int4-weight": Tolerance(atol=1e-3, rtol=0.3, min_sqnr_db=15.0, min_top1=0.75),
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
    # Per-layer (heads, intermediate_size) when a structurally pruned checkpoint says so; None: uniform config.
    layer_shapes: tuple[tuple[int, int], ...] | None = None
    # (capacity, max_segments) for the packed entry point (models_zoo.packed_bert); None: one sentence per run.
    packing: tuple[int, int] | None = None
    readout: str = "cls"  # the packed entry point's per-sentence readout ("cls" classifiers, "mean" embeddings)
    vocab: str | None = None  # the tokenizer's vocab.txt or tokenizer.json (None: bert-base-uncased's)
    lowercase: bool = True

    def with_seq_len(self, seq_len: int) -> "BertSpec":
        if not 1 < seq_len <= 512:
            raise UsageError(f"sequence length must be in 2..512, got {seq_len}")
        return replace(self, seq_len=seq_len)

    def with_packing(self, capacity: int, max_segments: int) -> "BertSpec":
        """The packed entry point: rows of `capacity` tokens holding up to `max_segments` sentences."""
        if not 2 <= capacity <= int(self.config.get("max_position_embeddings", 512)):
            raise UsageError(f"a packed row holds 2..512 tokens, got {capacity}")
        if not 1 <= max_segments <= capacity // 2:
            raise UsageError(f"max_segments must be in 1..{capacity // 2} (a sentence has >= 2 tokens), "
                             f"got {max_segments}")
        return replace(self, packing=(int(capacity), int(max_segments)), seq_len=int(capacity))

    def variant_tags(self) -> tuple[str, ...]:
        if self.packing:
            return (f"packed{self.packing[0]}x{self.packing[1]}",)
        return super().variant_tags()

    def with_architecture(self, architecture: dict[str, Any]) -> "BertSpec":
        """This spec with the dims a compressed checkpoint declares (see `read_architecture`)."""
        if architecture.get("task", self.task) != self.task:
            raise WeightsError(f"the checkpoint is a {architecture['task']} model "
                               f"(from {architecture.get('source_model', '?')}); {self.name} is {self.task}")
        layers = architecture.get("layers")
        shapes = tuple((int(l["heads"]), int(l["intermediate_size"])) for l in layers) if layers else None
        return replace(self, config={**self.config, **architecture.get("config", {})}, layer_shapes=shapes)

    def build(self, weights: str | None = None, seed: int = 0):
        """As `ModelSpec.build`; a checkpoint written by `pocketformer compress` may also change the dims
        (fewer layers, heads or FFN channels): they are read from its metadata before building."""
        if self.packing:
            from models_zoo.packed_bert import packed_module

            module = replace(self, packing=None).build(weights, seed)
            return packed_module(module, find_bert(module), self.readout, self.packing[1])
        architecture = read_architecture(weights) if weights is not None else None
        spec = self.with_architecture(architecture) if architecture else self
        module = super(BertSpec, spec).build(weights=weights, seed=seed)
        if architecture:
            module.pocketformer_weights["architecture"] = architecture
        return module

    def _hf_config(self):
        from transformers import BertConfig

        config = BertConfig(**{"vocab_size": BERT_BASE_VOCAB, **self.config}, num_labels=self.num_labels)
        # eager attention: plain matmul/softmax, which every exporter and XNNPACK take, and which
        # FlopCounterMode counts (fused attention is invisible to it).
        config._attn_implementation = "eager"
        return config

    def _build(self):
        from transformers import BertForSequenceClassification

        config = self._hf_config()
        model = BertForSequenceClassification(config)
        init_bert_weights(model, config.initializer_range)
        apply_layer_shapes(model, self.layer_shapes)
        return _LogitsOnly(model)

    def input_specs(self) -> tuple[InputSpec, ...]:
        # Inclusive ranges, checked by device_runtime before the runtime sees a feed (an out-of-range id aborts
        # an int8 .pte's process; ONNX Runtime wraps a negative one).
        ranges = {"input_ids": (0, int(self.config.get("vocab_size", BERT_BASE_VOCAB)) - 1),
                  "attention_mask": (0, 1),
                  "token_type_ids": (0, int(self.config.get("type_vocab_size", 2)) - 1)}
        names = ["input_ids", "attention_mask"] + (["token_type_ids"] if self.use_token_type_ids else [])
        if self.packing:
            capacity, slots = self.packing
            ranges.update(position_ids=(0, capacity - 1), segment_ids=(0, slots))
            names = ["input_ids", "token_type_ids", "position_ids", "segment_ids"]
            return tuple(InputSpec(n, (1, capacity), "int64", {}, ranges[n]) for n in names)
        return tuple(InputSpec(n, (1, self.seq_len), "int64", {1: "sequence"}, ranges[n]) for n in names)

    def preprocessing(self) -> dict[str, Any]:
        prep = {"kind": "text", "seq_len": self.seq_len, "lowercase": self.lowercase, "vocab": self.vocab,
                "input_names": list(self.input_names)}
        if self.packing:  # sentences are tokenised unpadded, then packed (device_runtime.packing.pack)
            prep["packing"] = {"capacity": self.packing[0], "max_segments": self.packing[1], "readout": self.readout}
        return prep

    def _sample_feeds(self) -> list[dict[str, np.ndarray]]:
        return self._maybe_packed(text_feeds(SAMPLE_SENTENCES, SAMPLE_SENTENCE_PAIRS, self._unpacked_prep()))

    def _calibration_feeds(self) -> list[dict[str, np.ndarray]]:
        return self._maybe_packed(text_feeds(CALIBRATION_SENTENCES, CALIBRATION_SENTENCE_PAIRS,
                                             self._unpacked_prep()))

    def _unpacked_prep(self) -> dict[str, Any]:
        return replace(self, packing=None).preprocessing() if self.packing else self.preprocessing()

    def _maybe_packed(self, feeds: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """The real sentences, packed into rows when this is the packed entry point."""
        if not self.packing:
            return feeds
        from device_runtime.packing import pack

        return [row.arrays for row in pack(feeds, *self.packing)]

    def labels(self) -> list[str] | None:
        if self.label_names:
            return list(self.label_names)
        return list(SST2_LABELS) if self.num_labels == 2 else None


def init_bert_weights(model, std: float) -> None:
    """transformers v5 can leave weights of a bare-config model uninitialised (outputs ~1e-40):
    initialise explicitly as BERT does."""
    import torch

    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
            torch.nn.init.normal_(module.weight, std=std)
        if isinstance(module, torch.nn.Linear) and module.bias is not None:
            torch.nn.init.zeros_(module.bias)
        if isinstance(module, torch.nn.LayerNorm):
            torch.nn.init.ones_(module.weight)
            torch.nn.init.zeros_(module.bias)


# -- compressed checkpoints: dims that differ from the spec's config -------------------------------------------
# `pocketformer compress` writes safetensors whose metadata holds this key: JSON with "config" (BertConfig
# overrides, e.g. fewer layers for a distilled student), optionally "layers" (per layer "heads" and
# "intermediate_size" after structured pruning) and the "task" the weights were trained for.
ARCHITECTURE_KEY = "pocketformer.architecture"


def read_architecture(weights) -> dict[str, Any] | None:
    """The architecture a compressed checkpoint declares, or None (plain checkpoints, non-safetensors)."""
    path = Path(weights)
    if path.is_dir():
        path = next((path / f for f in FOLDER_FILES if (path / f).exists()), path)
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception:  # unreadable: let the weights loader report it
        return None
    if ARCHITECTURE_KEY not in meta:
        return None
    try:
        return json.loads(meta[ARCHITECTURE_KEY])
    except json.JSONDecodeError as exc:
        raise WeightsError(f"{path}: bad {ARCHITECTURE_KEY} metadata: {exc}") from None


def find_bert(module):
    """The transformers `BertModel` inside a wrapped zoo module."""
    from transformers import BertModel

    for sub in module.modules():
        if isinstance(sub, BertModel):
            return sub
    raise TypeError(f"{type(module).__name__} holds no BertModel")


def shrink_layer(layer, heads=None, channels=None) -> None:
    """Physically keep only attention heads `heads` and FFN channels `channels` (index lists) of a BertLayer:
    the query/key/value rows and output columns of those heads, the intermediate rows and output columns of
    those channels. The forward pass infers the head count from the tensor shapes."""
    import torch

    def keep(linear, index, dim):
        index = torch.as_tensor(list(index), dtype=torch.long)
        weight = linear.weight.detach().index_select(dim, index).clone()
        new = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=linear.bias is not None)
        new.weight.data.copy_(weight)
        if linear.bias is not None:
            new.bias.data.copy_(linear.bias.detach() if dim == 1 else linear.bias.detach()[index])
        return new.to(linear.weight.dtype)

    if heads is not None:
        attn = layer.attention.self
        size = attn.attention_head_size
        rows = [h * size + i for h in heads for i in range(size)]
        if not rows:
            raise UsageError("a BERT layer needs at least one attention head")
        attn.query, attn.key, attn.value = (keep(m, rows, 0) for m in (attn.query, attn.key, attn.value))
        layer.attention.output.dense = keep(layer.attention.output.dense, rows, 1)
        attn.num_attention_heads, attn.all_head_size = len(heads), len(rows)
    if channels is not None:
        if not len(channels):
            raise UsageError("a BERT layer needs at least one FFN channel")
        layer.intermediate.dense = keep(layer.intermediate.dense, channels, 0)
        layer.output.dense = keep(layer.output.dense, channels, 1)


def apply_layer_shapes(model, layer_shapes) -> None:
    """Give each encoder layer its (heads, intermediate_size); weights are then loaded from the checkpoint."""
    if not layer_shapes:
        return
    layers = find_bert(model).encoder.layer
    if len(layer_shapes) != len(layers):
        raise WeightsError(f"the checkpoint declares {len(layer_shapes)} layers, the config builds {len(layers)}")
    for layer, (heads, channels) in zip(layers, layer_shapes):
        shrink_layer(layer, range(heads) if heads != layer.attention.self.num_attention_heads else None,
                     range(channels) if channels != layer.intermediate.dense.out_features else None)


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
    return replace(spec, default_precision="int8")
