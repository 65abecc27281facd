"""TinyBERT-style distillation (Jiao et al., 2020, https://arxiv.org/abs/1909.10351).

The student learns the teacher's embedding-layer output, every mapped layer's attention scores and hidden
states (through a learned projection when the widths differ) and the prediction layer (soft cross-entropy of
logits for classifiers, MSE of the sentence embedding for embedding models), with TinyBERT's uniform layer
mapping g(m) = m * N / M. Both of TinyBERT's stages (intermediate layers, then prediction) run as one
weighted sum here, on unlabelled real text.

A student of the teacher's width starts, by default, from the teacher's embeddings and its layers g(1..M)
(as DistilBERT does); a narrower one starts from a seeded random init and gains a final projection to the
teacher's embedding width, so it stays a drop-in replacement in the same embedding space.
"""
from __future__ import annotations

from typing import Any

from models_zoo.bert import find_bert
from sdk.compress.core import (CompressResult, DistillLoss, TrainConfig, agreement, architecture_of, base_report,
                               frozen_copy, get_corpus, layer_map, log_fn, measure, outputs, resolve, train)
from device_runtime.errors import UsageError

STUDENT_KEYS = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size")


def student_spec(spec, teacher, student_config: dict[str, Any]):
    """The teacher's spec with the student's dims (unspecified dims are the teacher's)."""
    unknown = set(student_config) - set(STUDENT_KEYS)
    if unknown:
        raise UsageError(f"unknown student_config keys {sorted(unknown)}; use {', '.join(STUDENT_KEYS)}")
    arch = architecture_of(teacher, spec)
    config = {**arch["config"], **student_config}
    student_arch = {"source_model": spec.name, "task": spec.task, "config": config}
    if config["hidden_size"] % config["num_attention_heads"]:
        raise UsageError(f"hidden_size {config['hidden_size']} is not a multiple of "
                         f"num_attention_heads {config['num_attention_heads']}")
    if not spec.task.endswith("classification"):
        teacher_width = getattr(teacher, "projection", None)
        teacher_width = teacher_width.out_features if teacher_width is not None else arch["config"]["hidden_size"]
        if config["hidden_size"] != teacher_width:
            student_arch["embedding_projection"] = teacher_width
    return spec.with_architecture(student_arch)


def init_from_teacher(student, teacher, mapping) -> str:
    """Copy the teacher's embeddings and layers g(m) into the student where the shapes allow."""
    s_bert, t_bert = find_bert(student), find_bert(teacher)
    s_state, t_state = s_bert.state_dict(), t_bert.state_dict()
    if any(s_state[k].shape != t_state[k].shape for k in s_state if k.startswith("embeddings.")):
        return "random (the student's width differs from the teacher's)"
    copied = {k: v for k, v in t_state.items() if k.startswith("embeddings.")}
    for m, g in enumerate(mapping):
        prefix_s, prefix_t = f"encoder.layer.{m}.", f"encoder.layer.{g - 1}."
        layer = {prefix_s + k[len(prefix_t):]: v for k, v in t_state.items() if k.startswith(prefix_t)}
        if all(k in s_state and s_state[k].shape == v.shape for k, v in layer.items()):
            copied.update(layer)
    s_bert.load_state_dict(copied, strict=False)
    layers = sorted({int(k.split(".")[2]) for k in copied if k.startswith("encoder.")})
    return f"teacher embeddings and teacher layers {[mapping[m] for m in layers]} (1-based) into student layers " \
           f"{[m + 1 for m in layers]}"


def distill(teacher, student_config: dict[str, Any], data=None, steps: int = 200, *, weights: str | None = None,
            tiny: bool = False, init: str = "teacher", attention: bool = True, loss_weights: dict | None = None,
            temperature: float = 1.0, eval_sentences: int = 256, config: TrainConfig | None = None,
            seed: int = 0, verbose: bool = False, **train_options) -> CompressResult:
    """Distil `teacher` (a zoo name, spec, or (spec, module)) into a student with `student_config` dims
    (e.g. {"num_hidden_layers": 3}) on the text `data` (default: the standard library's docstrings) for
    `steps` steps. The report has the student's cosine similarity to the teacher on held-out sentences at
    the start and at the end, and its size."""
    spec, teacher_module = resolve(teacher, weights, tiny)
    teacher_module = frozen_copy(teacher_module)
    corpus = get_corpus(data)
    config = config or TrainConfig(steps=steps, seed=seed, **{"lr": 1e-4, **train_options})
    s_spec = student_spec(spec, teacher_module, student_config)
    student = s_spec.build(seed=seed)
    teacher_layers = len(find_bert(teacher_module).encoder.layer)
    student_layers = len(find_bert(student).encoder.layer)
    mapping = layer_map(student_layers, teacher_layers)
    if init == "teacher":
        how = init_from_teacher(student, teacher_module, mapping)
    elif init == "random":
        how = f"random (seed {seed})"
    else:
        raise UsageError(f"init must be 'teacher' or 'random', got {init!r}")

    t_cfg, s_cfg = find_bert(teacher_module).config, find_bert(student).config
    same_heads = t_cfg.num_attention_heads == s_cfg.num_attention_heads
    classifier = spec.task.endswith("classification")
    loss = DistillLoss(s_cfg.hidden_size, t_cfg.hidden_size, mapping, classifier, weights=loss_weights,
                       temperature=temperature, attention=attention and same_heads)
    heldout = list(corpus.heldout[:eval_sentences])
    reference = outputs(teacher_module, spec, heldout)
    start = agreement(reference, outputs(student, s_spec, heldout), classifier)
    history = train(student, teacher_module, spec, corpus, config, loss, log=log_fn(verbose))
    student.eval()
    student.pocketformer_weights = {"source": "distilled", "teacher": spec.name}

    report = base_report("distill", spec, teacher_module, corpus, {
        "student_config": student_config, "init": how, "layer_mapping": mapping, "attention_loss": loss.attention,
        "attention_loss_off_because": None if loss.attention else
        ("disabled" if not attention else "student and teacher head counts differ (TinyBERT needs equal heads)"),
        "projection": loss.project_h is not None, "loss_weights": loss.weights, "train": config.to_dict()})
    report.update(measure(student, teacher_module, spec, s_spec, corpus, eval_sentences, reference))
    report["accuracy"] = {"start": start, "end": report["accuracy"]}
    report["history"] = history
    return CompressResult("distill", s_spec, student, report)
