"""Q8BERT-style quantization-aware training (Zafrir et al., 2019, https://arxiv.org/abs/1910.06188).

Every Linear layer's weights and inputs, and every embedding table, are fake-quantized to 8-bit integers in
the forward pass (weights and embeddings symmetric, as Q8BERT); gradients pass straight through the rounding
(STE); softmax, LayerNorm and GELU stay float. Without labelled task data the model is fine-tuned against the float model's own outputs
(self-distillation: hidden states and output) on real text.

Weights and embeddings use the grids of the int8 recipe the BERT family exports with (ExecuTorch/XNNPACK
`int8-dynamic` plus 8-bit embeddings): symmetric, per output channel (scale max|w|/127) and per embedding row.
The checkpoint holds the weights *snapped* to those grids, so the exporter's own post-training quantizer
reproduces them exactly and the int8 artifact carries precisely the weights QAT trained.

Activations (the Linear inputs) are quantized at run time by the artifact, per token (per row) and
asymmetrically (XNNPACK's qd8). QAT trains against what the artifact will do:

- `dynamic` (default): per-token asymmetric 8-bit ranges taken at every call, as the artifact's kernels.
  On minilm_l6_h384 this simulation gives the same cosine to fp32 as the int8 .pte (0.9988 on 128
  held-out sentences, both).
- `symmetric`: per-token symmetric 8-bit (Q8BERT's symmetric grid, dynamic ranges). It wastes a bit on
  post-GELU inputs (all positive): 0.9973 simulated, so training against it over-corrects for the artifact.
- `ema`: Q8BERT's own scheme, a static symmetric per-tensor range tracked by an exponential moving average
  during training (0.982 simulated: the right choice only for a static-activation int8 runtime).
"""
from __future__ import annotations

import copy
import functools
from typing import Any

from models_zoo.bert import find_bert
from sdk.compress.core import (CompressResult, DistillLoss, TrainConfig, agreement, base_report, batches,
                               frozen_copy, get_corpus, log_fn, measure, outputs, resolve, to_tensors, train)
from device_runtime.errors import UsageError

QMAX = 127  # symmetric 8-bit: [-127, 127], as Q8BERT and XNNPACK's weight quantizer
ACTIVATIONS = ("dynamic", "symmetric", "ema")


def fake_quant(x, scale, qmax: int = QMAX):
    """Round to the integer grid of `scale` and clamp, with a straight-through gradient."""
    import torch

    q = torch.clamp(torch.round(x / scale), -qmax, qmax) * scale
    return x + (q - x).detach()


def fake_quant_rows_asymmetric(x):
    """Per-row (per-token) asymmetric int8 with the range widened to include 0, as XNNPACK quantizes a
    dynamic-int8 Linear's input at run time; straight-through gradient."""
    import torch

    lo = x.detach().amin(dim=-1, keepdim=True).clamp(max=0)
    hi = x.detach().amax(dim=-1, keepdim=True).clamp(min=0)
    scale = ((hi - lo) / 255).clamp(min=1e-12)
    zero_point = torch.round(-128 - lo / scale)
    q = (torch.clamp(torch.round(x / scale) + zero_point, -128, 127) - zero_point) * scale
    return x + (q - x).detach()


def _row_scale(weight, qmax: int = QMAX):
    return (weight.detach().abs().amax(dim=1, keepdim=True) / qmax).clamp(min=1e-12)


@functools.lru_cache(maxsize=None)
def _modules():
    import torch
    import torch.nn.functional as F

    class QuantLinear(torch.nn.Module):
        """nn.Linear with 8-bit symmetric fake quantization of its weight (per output channel) and input."""

        def __init__(self, linear: torch.nn.Linear, activations: str = "ema", momentum: float = 0.9) -> None:
            super().__init__()
            if activations not in ACTIVATIONS:
                raise UsageError(f"activations must be one of {', '.join(ACTIVATIONS)}, got {activations!r}")
            self.in_features, self.out_features = linear.in_features, linear.out_features
            self.weight, self.bias = linear.weight, linear.bias
            self.activations, self.momentum = activations, momentum
            self.register_buffer("input_absmax", torch.zeros(()))
            self.observing = False  # EMA range updates (training); frozen otherwise

        def forward(self, x):
            if self.activations == "dynamic":
                x = fake_quant_rows_asymmetric(x)
            elif self.activations == "symmetric":
                x = fake_quant(x, (x.detach().abs().amax(dim=-1, keepdim=True) / QMAX).clamp(min=1e-12))
            else:
                if self.observing:
                    now = x.detach().abs().amax()
                    fresh = self.input_absmax <= 0
                    self.input_absmax.copy_(torch.where(fresh, now, self.momentum * self.input_absmax +
                                                        (1 - self.momentum) * now))
                x = fake_quant(x, (self.input_absmax / QMAX).clamp(min=1e-12))
            return F.linear(x, fake_quant(self.weight, _row_scale(self.weight)), self.bias)

        def snapped(self) -> torch.nn.Linear:
            linear = torch.nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
            with torch.no_grad():
                linear.weight.copy_(fake_quant(self.weight, _row_scale(self.weight)))
                if self.bias is not None:
                    linear.bias.copy_(self.bias)
            return linear

    class QuantEmbedding(torch.nn.Module):
        """nn.Embedding with 8-bit symmetric fake quantization per row (ExecuTorch's embedding_byte grid)."""

        def __init__(self, embedding: torch.nn.Embedding) -> None:
            super().__init__()
            self.num_embeddings, self.embedding_dim = embedding.num_embeddings, embedding.embedding_dim
            self.padding_idx = embedding.padding_idx
            self.weight = embedding.weight

        def forward(self, ids):
            # The scale is per row, so quantizing the looked-up rows equals looking up quantized rows, at the
            # cost of the batch's tokens rather than the whole table.
            rows = F.embedding(ids, self.weight, self.padding_idx)
            return fake_quant(rows, (rows.detach().abs().amax(dim=-1, keepdim=True) / QMAX).clamp(min=1e-12))

        def snapped(self) -> torch.nn.Embedding:
            embedding = torch.nn.Embedding(self.num_embeddings, self.embedding_dim, padding_idx=self.padding_idx)
            with torch.no_grad():
                embedding.weight.copy_(fake_quant(self.weight, _row_scale(self.weight)))
            return embedding

    return QuantLinear, QuantEmbedding


def quantize_model(module, activations: str = "ema", embeddings: bool = True):
    """A copy of `module` with every Linear (and embedding) fake-quantized; LayerNorm, softmax, GELU float."""
    import torch

    QuantLinear, QuantEmbedding = _modules()
    model = copy.deepcopy(module)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.Linear:
                setattr(parent, name, QuantLinear(child, activations))
            elif embeddings and type(child) is torch.nn.Embedding:
                setattr(parent, name, QuantEmbedding(child))
    return model


def snap(model):
    """The float model the checkpoint holds: fake-quant modules replaced by Linear/Embedding whose weights lie
    exactly on their int8 grids (same parameter names as the original model)."""
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if hasattr(child, "snapped"):
                setattr(parent, name, child.snapped())
    pocketformer_weights = getattr(model, "pocketformer_weights", None)
    if pocketformer_weights is not None:
        model.pocketformer_weights = pocketformer_weights
    return model.eval()


def set_observing(model, on: bool) -> None:
    for module in model.modules():
        if hasattr(module, "observing"):
            module.observing = on


def calibrate(qmodel, spec, sentences, batch_size: int = 16, max_len: int = 64, num_batches: int = 8) -> None:
    """Activation ranges (EMA) from real text, as post-training quantization would set them."""
    import torch

    set_observing(qmodel, True)
    stream = batches(spec, sentences, batch_size, max_len, seed=1234)
    with torch.no_grad():
        for _ in range(num_batches):
            qmodel(*to_tensors(next(stream), spec.input_names))
    set_observing(qmodel, False)
    qmodel.eval()


def qat(model, weights: str | None = None, data=None, steps: int = 100, *, tiny: bool = False,
        activations: str = "dynamic", embeddings: bool = True, eval_sentences: int = 256,
        config: TrainConfig | None = None, verbose: bool = False, **train_options) -> CompressResult:
    """Q8BERT quantization-aware training by self-distillation; returns the snapped model and the figures:
    fp32 vs post-training int8 vs QAT int8 (simulated on the same int8 grids) on held-out real sentences."""
    spec, teacher = resolve(model, weights, tiny)
    teacher = frozen_copy(teacher)
    corpus = get_corpus(data)
    # A low learning rate: QAT starts at the optimum's neighbourhood, and Adam's first steps move every weight
    # by about lr whatever its gradient, across int8 rounding boundaries (measured on minilm_l6_h384:
    # 5e-5 makes int8 worse than post-training for the first 30 steps, 1e-5 improves it from the start).
    config = config or TrainConfig(steps=steps, **{"lr": 1e-5, **train_options})
    classifier = spec.task.endswith("classification")
    heldout = list(corpus.heldout[:eval_sentences])
    reference = outputs(teacher, spec, heldout)

    student = quantize_model(teacher, activations, embeddings)
    for p in student.parameters():
        p.requires_grad_(True)
    calibrate(student, spec, corpus.train, max_len=config.max_len)
    ptq = agreement(reference, outputs(student, spec, heldout), classifier)

    layers = len(find_bert(student).encoder.layer)
    loss = DistillLoss(1, 1, list(range(1, layers + 1)), classifier, attention=False)
    set_observing(student, activations == "ema")
    history = train(student, teacher, spec, corpus, config, loss, log=log_fn(verbose))
    set_observing(student, False)
    student.eval()
    qat_figures = agreement(reference, outputs(student, spec, heldout), classifier)

    float_model = snap(student)
    report = base_report("qat", spec, teacher, corpus, {"activations": activations, "embeddings": embeddings,
                                                        "train": config.to_dict()})
    report.update(measure(float_model, teacher, spec, spec, corpus, eval_sentences, reference, latency=False))
    report["accuracy"] = {"fp32_vs_ptq_int8": ptq, "fp32_vs_qat_int8": qat_figures,
                          "fp32_vs_qat_weights_float": report["accuracy"],
                          "note": "int8 simulated with the export recipe's grids (per-channel weights, per-row "
                                  f"embeddings, {activations} per-tensor activations) on held-out sentences"}
    report["history"] = history
    result = CompressResult("qat", spec, float_model, report)
    result.quantized = student
    return result


def ptq_int8(model, weights: str | None = None, data=None, *, tiny: bool = False, activations: str = "dynamic",
             eval_sentences: int = 256) -> dict[str, Any]:
    """Post-training int8 alone (no training), simulated on the same grids: the baseline QAT must beat."""
    spec, teacher = resolve(model, weights, tiny)
    corpus = get_corpus(data)
    heldout = list(corpus.heldout[:eval_sentences])
    student = quantize_model(teacher, activations)
    calibrate(student, spec, corpus.train)
    return agreement(outputs(teacher, spec, heldout), outputs(student, spec, heldout),
                     spec.task.endswith("classification"))
