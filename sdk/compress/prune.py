"""Pruning for the BERT family: unstructured magnitude pruning, and structured pruning of attention heads and
FFN channels that physically shrinks the model.

- Magnitude (Han et al., 2015, https://arxiv.org/abs/1506.02626): the smallest |w| of each encoder Linear
  weight (`scope="layer"`, the same sparsity everywhere) or across all of them (`scope="global"`) become
  zeros; sparsity is reported per layer. The tensors stay dense: a dense artifact is no smaller or faster
  (no sparse kernels in the export runtimes); the report says what a sparse encoding would take.
- Structured (Michel et al., 2019, https://arxiv.org/abs/1905.10650; Molchanov et al., 2019,
  https://arxiv.org/abs/1906.10771): each head and FFN channel is scored by gradient x weight on real
  calibration text. Removing head h scales its columns of the attention output projection by 0, so
  sum(W * dL/dW) over those columns is the first-order change of L; with L = r . output for a random
  Gaussian r per sentence, E[(sum W * dL/dW)^2] is the squared change of the output the removal causes
  (no labels needed, and unlike a self-distillation loss its gradient is not zero at the teacher).
  The least important heads/channels across all layers are removed (each layer keeps one of each),
  optionally in several rounds, then the smaller model is fine-tuned against the original.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from models_zoo.bert import find_bert, shrink_layer
from sdk.compress.core import (CompressResult, TrainConfig, base_report, batches, frozen_copy, get_corpus, log_fn,
                               measure, outputs, recover, resolve, to_tensors)
from device_runtime.errors import UsageError


def encoder_linears(module) -> dict[str, Any]:
    """name -> nn.Linear of every Linear layer inside the BERT encoder."""
    import torch

    bert = find_bert(module)
    return {f"encoder.{name}": m for name, m in bert.encoder.named_modules() if isinstance(m, torch.nn.Linear)}


def magnitude_masks(module, sparsity: float, scope: str = "layer") -> dict[str, Any]:
    import torch

    if not 0 <= sparsity < 1:
        raise UsageError(f"sparsity must be in [0, 1), got {sparsity}")
    linears = encoder_linears(module)
    if scope == "global":
        flat = torch.cat([m.weight.detach().abs().flatten() for m in linears.values()])
        k = int(sparsity * flat.numel())
        threshold = flat.kthvalue(k).values if k else flat.new_tensor(-1.0)
        return {n: m.weight.detach().abs() > threshold for n, m in linears.items()}
    if scope != "layer":
        raise UsageError(f"scope must be 'layer' or 'global', got {scope!r}")
    masks = {}
    for name, m in linears.items():
        w = m.weight.detach().abs().flatten()
        k = int(sparsity * w.numel())
        keep = torch.ones_like(w, dtype=torch.bool)
        if k:
            keep[torch.argsort(w)[:k]] = False  # exactly k zeros, ties broken by position
        masks[name] = keep.view_as(m.weight)
    return masks


def apply_masks(module, masks) -> None:
    import torch

    linears = encoder_linears(module)
    with torch.no_grad():
        for name, mask in masks.items():
            linears[name].weight.mul_(mask)


def sparsity_report(module) -> dict[str, float]:
    return {name: float((m.weight == 0).float().mean()) for name, m in encoder_linears(module).items()}


def prune_magnitude(model, sparsity: float = 0.5, *, weights: str | None = None, tiny: bool = False,
                    scope: str = "layer", data=None, steps: int = 0, eval_sentences: int = 256,
                    config: TrainConfig | None = None, verbose: bool = False, **train_options) -> CompressResult:
    """Zero the smallest-magnitude encoder weights; optionally fine-tune (`steps`) with the zeros kept."""
    spec, teacher = resolve(model, weights, tiny)
    teacher = frozen_copy(teacher)
    corpus = get_corpus(data)
    config = config or TrainConfig(steps=steps, **train_options)
    student = frozen_copy(teacher)
    for p in student.parameters():
        p.requires_grad_(True)
    masks = magnitude_masks(student, sparsity, scope)
    apply_masks(student, masks)
    heldout = list(corpus.heldout[:eval_sentences])
    reference = outputs(teacher, spec, heldout)
    before_training, history = recover(student, teacher, spec, corpus, config, heldout, reference,
                                       after_step=lambda: apply_masks(student, masks), verbose=verbose)
    student.pocketformer_weights = {"source": "pruned", "teacher": spec.name}

    per_layer = sparsity_report(student)
    total = sum(m.weight.numel() for m in encoder_linears(student).values())
    zeros = sum(int((m.weight == 0).sum()) for m in encoder_linears(student).values())
    report = base_report("prune-magnitude", spec, teacher, corpus, {"sparsity": sparsity, "scope": scope,
                                                                    "train": config.to_dict()})
    report.update(measure(student, teacher, spec, spec, corpus, eval_sentences, reference))
    report["accuracy"] = {"after_pruning": before_training, "after_fine_tuning" if config.steps else "final":
                          report["accuracy"]}
    report["sparsity"] = {"encoder_linear_overall": zeros / total, "per_layer": per_layer}
    params = report["size"]["params_after"]
    nonzero = report["size"]["nonzero_after"]
    report["size"]["sparse_encoding_bytes_estimate"] = 4 * nonzero + params // 8  # fp32 values + 1-bit mask
    report["size"]["note"] = ("dense formats store the zeros: the artifact is as large and as fast as the dense "
                              "model; the sparse estimate is fp32 non-zeros plus a 1-bit mask")
    report["history"] = history
    return CompressResult("prune-magnitude", spec, student, report)


# -- structured -------------------------------------------------------------------------------------
def importance(module, spec, sentences, num_batches: int = 8, batch_size: int = 16, max_len: int = 64,
               draws: int = 1, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per layer: each head's and each FFN channel's expected squared first-order output change on removal,
    (sum of W * dL/dW over its output-projection columns)^2 with L = r . output, r ~ N(0, I)."""
    import torch

    bert = find_bert(module)
    layers = bert.encoder.layer
    heads = [np.zeros(l.attention.output.dense.in_features // l.attention.self.attention_head_size) for l in layers]
    ffn = [np.zeros(l.output.dense.in_features) for l in layers]
    generator = torch.Generator().manual_seed(seed)
    stream = batches(spec, sentences, batch_size, max_len, seed=seed + 1)
    was_training = module.training
    module.eval()
    require = {p: p.requires_grad for p in module.parameters()}
    for p in module.parameters():
        p.requires_grad_(False)
    targets = [l.attention.output.dense.weight for l in layers] + [l.output.dense.weight for l in layers]
    for w in targets:
        w.requires_grad_(True)
    try:
        for _ in range(num_batches):
            args = to_tensors(next(stream), spec.input_names)
            for _ in range(draws):
                out = module(*args)
                r = torch.randn(out.shape, generator=generator)
                grads = torch.autograd.grad((out * r).sum(), targets)
                for i, layer in enumerate(layers):
                    size = layer.attention.self.attention_head_size
                    per_column = (layer.attention.output.dense.weight.detach() * grads[i]).sum(0)
                    heads[i] += (per_column.view(-1, size).sum(1) ** 2).numpy()
                    ffn[i] += ((layer.output.dense.weight.detach() * grads[len(layers) + i]).sum(0) ** 2).numpy()
    finally:
        for p, flag in require.items():
            p.requires_grad_(flag)
        module.train(was_training)
    return heads, ffn


def _lowest(scores: list[np.ndarray], remove: int, keep_min: int) -> list[set[int]]:
    """Which units to remove per layer: the `remove` lowest scores across layers, keeping `keep_min` per layer."""
    entries = sorted((float(s), i, j) for i, layer in enumerate(scores) for j, s in enumerate(layer))
    removed = [set() for _ in scores]
    for _, i, j in entries:
        if remove <= 0:
            break
        if len(scores[i]) - len(removed[i]) > keep_min:
            removed[i].add(j)
            remove -= 1
    return removed


def prune_structured(model, heads: float = 0.25, ffn: float = 0.25, *, weights: str | None = None,
                     tiny: bool = False, data=None, rounds: int = 1, calibration_batches: int = 8,
                     draws: int = 1, criterion: str = "gradient-x-weight", steps: int = 0, eval_sentences: int = 256,
                     config: TrainConfig | None = None, seed: int = 0, verbose: bool = False,
                     **train_options) -> CompressResult:
    """Remove the fraction `heads` of all attention heads and `ffn` of all FFN channels, least important
    first (gradient x weight on calibration text), in `rounds` rounds; optionally fine-tune (`steps`).
    `criterion="random"` removes as many, chosen at random: the baseline that shows what importance buys."""
    if not (0 <= heads < 1 and 0 <= ffn < 1):
        raise UsageError(f"heads and ffn are fractions to remove, in [0, 1); got {heads}, {ffn}")
    if criterion not in ("gradient-x-weight", "random"):
        raise UsageError(f"criterion must be 'gradient-x-weight' or 'random', got {criterion!r}")
    spec, teacher = resolve(model, weights, tiny)
    teacher = frozen_copy(teacher)
    corpus = get_corpus(data)
    config = config or TrainConfig(steps=steps, seed=seed, **train_options)
    student = frozen_copy(teacher)
    for p in student.parameters():
        p.requires_grad_(True)
    layers = find_bert(student).encoder.layer
    total_heads = sum(l.attention.self.query.out_features // l.attention.self.attention_head_size for l in layers)
    total_ffn = sum(l.intermediate.dense.out_features for l in layers)
    target_heads, target_ffn = int(round(heads * total_heads)), int(round(ffn * total_ffn))
    removed_heads = removed_ffn = 0
    log = log_fn(verbose)
    scores_log = []
    for r in range(1, rounds + 1):
        if criterion == "random":
            rng = np.random.default_rng(seed + r)
            head_scores = [rng.random(l.attention.self.query.out_features // l.attention.self.attention_head_size)
                           for l in layers]
            ffn_scores = [rng.random(l.intermediate.dense.out_features) for l in layers]
        else:
            head_scores, ffn_scores = importance(student, spec, corpus.train, calibration_batches,
                                                 max_len=config.max_len, draws=draws, seed=seed + r)
        scores_log.append({"heads": [s.tolist() for s in head_scores]})
        drop_h = _lowest(head_scores, target_heads * r // rounds - removed_heads, 1)
        drop_f = _lowest(ffn_scores, target_ffn * r // rounds - removed_ffn, 1)
        for layer, dh, df, hs, fs in zip(layers, drop_h, drop_f, head_scores, ffn_scores):
            shrink_layer(layer, [h for h in range(len(hs)) if h not in dh] if dh else None,
                         [c for c in range(len(fs)) if c not in df] if df else None)
        removed_heads += sum(map(len, drop_h))
        removed_ffn += sum(map(len, drop_f))
        if log:
            log(f"  round {r}: removed {removed_heads}/{total_heads} heads, {removed_ffn}/{total_ffn} FFN channels")
    for p in student.parameters():
        p.requires_grad_(True)
    student.eval()
    student.pocketformer_weights = {"source": "pruned", "teacher": spec.name}
    from sdk.compress.core import architecture_of

    s_spec = spec.with_architecture(architecture_of(student, spec))
    heldout = list(corpus.heldout[:eval_sentences])
    reference = outputs(teacher, spec, heldout)
    # no attention loss: the pruned layers have fewer heads than the teacher's
    after_pruning, history = recover(student, teacher, spec, corpus, config, heldout, reference, attention=False,
                                     eval_spec=s_spec, verbose=verbose)

    report = base_report("prune-structured", spec, teacher, corpus, {
        "heads": heads, "ffn": ffn, "criterion": criterion, "rounds": rounds,
        "calibration_batches": calibration_batches, "draws": draws,
        "train": config.to_dict()})
    report.update(measure(student, teacher, spec, s_spec, corpus, eval_sentences, reference))
    report["accuracy"] = {"after_pruning": after_pruning,
                          "after_fine_tuning" if config.steps else "final": report["accuracy"]}
    report["removed"] = {"heads": removed_heads, "of_heads": total_heads, "ffn_channels": removed_ffn,
                         "of_ffn_channels": total_ffn,
                         "per_layer": [{"heads": l.attention.self.query.out_features // l.attention.self.attention_head_size,
                                        "intermediate_size": l.intermediate.dense.out_features} for l in layers]}
    report["importance"] = scores_log
    report["history"] = history
    return CompressResult("prune-structured", s_spec, student, report)
