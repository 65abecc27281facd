"""Binarization (experimental): 1-bit weights with a per-output-channel scale for the BERT family's Linear
layers, as in binary weight networks (BWN, Rastegari et al., 2016, https://arxiv.org/abs/1603.05279):
W_b = alpha * sign(W), alpha = mean |W| per output channel (the least-squares optimal scale), inputs float.
Trained by self-distillation with a straight-through gradient into latent float weights.

No export format here has 1-bit kernels, so the binary weights travel as what each format carries: the
checkpoint and fp32 artifacts hold alpha * sign(W) as floats (dequantized on load), and an int8 artifact holds
them *exactly* (each channel is {-alpha, +alpha}, i.e. {-127, 127} times alpha/127) at a quarter of fp32 size.
`binary.safetensors` beside the checkpoint stores the packed bits and scales (the real 1-bit size);
`unpack_binary` turns it back into the float weights. Accuracy costs are large and reported as measured.
"""
from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import numpy as np

from models_zoo.bert import find_bert
from sdk.compress.core import (CompressResult, TrainConfig, base_report, frozen_copy, get_corpus, measure, outputs,
                               recover, resolve)
from device_runtime.errors import UsageError

SCOPES = ("all", "ffn", "attention")


def binary_weight(weight):
    """alpha * sign(w) per output channel, with a straight-through gradient."""
    import torch

    alpha = weight.detach().abs().mean(dim=1, keepdim=True)
    binary = torch.where(weight >= 0, alpha, -alpha)
    return weight + (binary - weight).detach()


@functools.lru_cache(maxsize=None)
def _binary_linear_class():
    import torch
    import torch.nn.functional as F

    class BinaryLinear(torch.nn.Module):
        def __init__(self, linear) -> None:
            super().__init__()
            self.in_features, self.out_features = linear.in_features, linear.out_features
            self.weight, self.bias = linear.weight, linear.bias

        def forward(self, x):
            return F.linear(x, binary_weight(self.weight), self.bias)

        def snapped(self):
            linear = torch.nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
            with torch.no_grad():
                linear.weight.copy_(binary_weight(self.weight))
                if self.bias is not None:
                    linear.bias.copy_(self.bias)
            return linear

    return BinaryLinear


def _in_scope(name: str, scope: str) -> bool:
    if scope not in SCOPES:
        raise UsageError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    # encoder-relative names: layer.N.attention.{self.query,self.key,self.value,output.dense},
    # layer.N.intermediate.dense, layer.N.output.dense
    if scope == "ffn":
        return name.endswith("intermediate.dense") or (name.endswith("output.dense") and ".attention." not in name)
    if scope == "attention":
        return ".attention." in name
    return True


def binarize_model(module, scope: str = "all"):
    """A copy with the chosen encoder Linear layers binarized (embeddings, LayerNorm, heads stay float)."""
    import torch

    BinaryLinear = _binary_linear_class()
    model = copy.deepcopy(module)
    encoder = find_bert(model).encoder
    for name, parent in list(encoder.named_modules()):
        for child_name, child in list(parent.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if type(child) is torch.nn.Linear and _in_scope(full, scope):
                setattr(parent, child_name, BinaryLinear(child))
    return model


def binary_layers(model) -> dict[str, Any]:
    return {n: m for n, m in find_bert(model).encoder.named_modules() if hasattr(m, "snapped")}


def pack(float_model, names) -> dict[str, Any]:
    """Packed sign bits (uint8, 8 weights a byte) and fp32 scales of each binarized layer."""
    import torch

    encoder = find_bert(float_model).encoder
    modules = dict(encoder.named_modules())
    packed = {}
    for name in names:
        w = modules[name].weight.detach().numpy()
        packed[f"{name}.bits"] = torch.from_numpy(np.packbits(w >= 0, axis=1))
        packed[f"{name}.alpha"] = torch.from_numpy(np.abs(w).max(axis=1).astype(np.float32))
        packed[f"{name}.shape"] = torch.tensor(w.shape, dtype=torch.int64)
    return packed


def unpack_binary(path: str | Path) -> dict[str, Any]:
    """`binary.safetensors` -> {"encoder.<layer>.weight": float tensor alpha * sign} (dequantize on load)."""
    import torch
    from safetensors.torch import load_file

    packed = load_file(str(path))
    weights = {}
    for key in packed:
        if key.endswith(".bits"):
            name = key[:-5]
            rows, cols = packed[f"{name}.shape"].tolist()
            signs = np.unpackbits(packed[key].numpy(), axis=1)[:, :cols].astype(np.float32) * 2 - 1
            weights[f"encoder.{name}.weight"] = torch.from_numpy(signs * packed[f"{name}.alpha"].numpy()[:, None])
    return weights


def binarize(model, *, weights: str | None = None, tiny: bool = False, scope: str = "all", data=None,
             steps: int = 100, eval_sentences: int = 256, config: TrainConfig | None = None, verbose: bool = False,
             **train_options) -> CompressResult:
    """Binarize the encoder's Linear weights and fine-tune by self-distillation; report the accuracy cost
    straight after binarizing and after fine-tuning, and the 1-bit size."""
    from safetensors.torch import save_file

    spec, teacher = resolve(model, weights, tiny)
    teacher = frozen_copy(teacher)
    corpus = get_corpus(data)
    config = config or TrainConfig(steps=steps, **{"lr": 1e-4, **train_options})
    student = binarize_model(teacher, scope)
    for p in student.parameters():
        p.requires_grad_(True)
    heldout = list(corpus.heldout[:eval_sentences])
    reference = outputs(teacher, spec, heldout)
    untrained, history = recover(student, teacher, spec, corpus, config, heldout, reference, verbose=verbose)
    names = sorted(binary_layers(student))
    from sdk.compress.quant import snap

    float_model = snap(student)
    float_model.pocketformer_weights = {"source": "binarized", "teacher": spec.name}

    packed = pack(float_model, names)
    binary_params = sum(int(np.prod(packed[f"{n}.shape"].tolist())) for n in names)
    total = sum(p.numel() for p in float_model.state_dict().values() if p.is_floating_point())
    report = base_report("binarize", spec, teacher, corpus, {"scope": scope, "train": config.to_dict()})
    report.update(measure(float_model, teacher, spec, spec, corpus, eval_sentences, reference))
    report["accuracy"] = {"binarized_untrained": untrained, "binarized_trained": report["accuracy"]}
    report["size"].update({
        "binarized_layers": len(names), "binarized_params": binary_params,
        "one_bit_bytes_of_binarized_layers": sum(packed[f"{n}.bits"].numel() + 4 * packed[f"{n}.alpha"].numel()
                                                 for n in names),
        "fp32_bytes_of_binarized_layers": 4 * binary_params,
        "model_bytes_1bit_layers_fp32_rest": sum(packed[f"{n}.bits"].numel() + 4 * packed[f"{n}.alpha"].numel()
                                                 for n in names) + 4 * (total - binary_params),
        "note": "no export format has 1-bit kernels: fp32 artifacts store alpha*sign(W) as floats; int8 "
                "artifacts store it exactly at 8 bits; binary.safetensors holds the packed 1-bit form"})
    report["history"] = history
    result = CompressResult("binarize", spec, float_model, report)
    result.extra_files["binary.safetensors"] = lambda path: save_file(packed, str(path))
    return result
