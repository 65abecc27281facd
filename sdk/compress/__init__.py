"""Compression recipes for the BERT family, measured on real text: Q8BERT-style quantization-aware training,
TinyBERT-style distillation, magnitude and structured pruning, and binarization (experimental); and DistilVLM
(`distill_vlm`): a larger vision-language fusion transformer distilled into MiniVLM's fusion stage.

Each recipe returns a `CompressResult`; `result.save(DIR)` writes a checkpoint that `pocketformer export NAME
--weights DIR` accepts (its dims travel in the checkpoint's metadata). `pocketformer compress` is the CLI.
"""
from sdk.compress.binarize import binarize, unpack_binary
from sdk.compress.core import CompressResult, DistillLoss, TrainConfig, architecture_of, layer_map
from sdk.compress.data import Corpus, file_corpus, stdlib_corpus
from sdk.compress.distill import distill
from sdk.compress.distill_vlm import distill_vlm
from sdk.compress.prune import prune_magnitude, prune_structured
from sdk.compress.quant import ptq_int8, qat

__all__ = ["binarize", "unpack_binary", "CompressResult", "DistillLoss", "TrainConfig", "architecture_of",
           "layer_map", "Corpus", "file_corpus", "stdlib_corpus", "distill", "distill_vlm", "prune_magnitude",
           "prune_structured", "ptq_int8", "qat"]
