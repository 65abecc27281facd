"""What every compression recipe shares: the model under compression, intermediate-layer taps, the TinyBERT
distillation losses, one training loop, accuracy/size/latency measurement and the checkpoint format.

A recipe takes a float *teacher* (the zoo model with its weights) and produces a *student* (the compressed
model: fake-quantized, distilled, pruned or binarized), trains the student against the teacher's own outputs
on real text (no labels needed), and hands back a `CompressResult`. `CompressResult.save(DIR)` writes
`DIR/model.safetensors` whose metadata declares the student's dims (`models_zoo.bert.ARCHITECTURE_KEY`), so
`pocketformer export NAME --weights DIR` builds exactly the compressed model and verifies the export against it.
"""
from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from models_zoo import ModelSpec, get_model
from models_zoo.bert import ARCHITECTURE_KEY, find_bert
from sdk.compress.data import Corpus, batches, get_corpus, tokenize_batch
from device_runtime.errors import UsageError

COMPRESS_KEY = "pocketformer.compress"
DEFAULT_TRAIN_LEN = 64   # tokens; docstring sentences are ~20 tokens, so little is truncated
EVAL_LEN = 128           # the zoo's default sequence length for the BERT family


# -- the model under compression --------------------------------------------------------------------
def resolve(model, weights: str | None = None, tiny: bool = False, seed: int = 0):
    """(spec, float module) from a zoo name, a spec, or (spec, module)."""
    spec = model[0] if isinstance(model, tuple) else model if isinstance(model, ModelSpec) else \
        get_model(model, tiny=tiny)
    unsupported = getattr(spec, "compression_unsupported", None)  # a BERT-like spec the recipes cannot address
    if unsupported:
        raise UsageError(f"cannot compress {spec.name} ({spec.family}): {unsupported}")
    if isinstance(model, tuple):
        return model
    if tiny and not spec.is_tiny:
        spec = spec.tiny()
    if not hasattr(spec, "with_architecture"):
        raise UsageError(f"compression recipes support the BERT family (BertSpec); {spec.name} is {spec.family}")
    module = spec.build(weights=str(weights) if weights else None, seed=seed)
    return spec, module


def architecture_of(module, spec) -> dict[str, Any]:
    """The dims of a (compressed) module, as `BertSpec.with_architecture` reads them from a checkpoint."""
    bert = find_bert(module)
    cfg = bert.config
    keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "initializer_range",
            "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "hidden_act")
    arch = {
        "source_model": spec.name,
        "task": spec.task,
        "config": {k: getattr(cfg, k) for k in keys},
        "layers": [{"heads": layer.attention.self.query.out_features // layer.attention.self.attention_head_size,
                    "intermediate_size": layer.intermediate.dense.out_features} for layer in bert.encoder.layer],
    }
    arch["config"]["num_hidden_layers"] = len(bert.encoder.layer)
    projection = getattr(module, "projection", None)
    if projection is not None:
        arch["embedding_projection"] = projection.out_features
    return arch


def param_count(module) -> int:
    return sum(p.numel() for p in module.state_dict().values() if p.is_floating_point())


def nonzero_count(module) -> int:
    return int(sum(int((p != 0).sum()) for p in module.state_dict().values() if p.is_floating_point()))


# -- taps: embeddings, hidden states and attention scores of every layer ------------------------------
class Taps:
    """Forward hooks on a BERT-family module: the embedding output, every layer's output and (optionally)
    every layer's raw attention scores QK^T/sqrt(d) (TinyBERT distils the scores before softmax)."""

    def __init__(self, module, attention: bool = False) -> None:
        self.bert = find_bert(module)
        self.embeddings = None
        self.hidden: list = []
        self._q: dict[int, Any] = {}
        self._k: dict[int, Any] = {}
        self.handles = [self.bert.embeddings.register_forward_hook(self._on_embeddings)]
        for i, layer in enumerate(self.bert.encoder.layer):
            self.handles.append(layer.register_forward_hook(self._on_layer))
            if attention:
                attn = layer.attention.self
                self.handles.append(attn.query.register_forward_hook(self._store(self._q, i)))
                self.handles.append(attn.key.register_forward_hook(self._store(self._k, i)))

    def _on_embeddings(self, _module, _inputs, output):
        self.embeddings, self.hidden = output, []

    def _on_layer(self, _module, _inputs, output):
        self.hidden.append(output[0] if isinstance(output, tuple) else output)

    @staticmethod
    def _store(table, index):
        def hook(_module, _inputs, output):
            table[index] = output
        return hook

    def attention_scores(self, index: int):
        attn = self.bert.encoder.layer[index].attention.self
        q, k = self._q[index], self._k[index]
        batch, length, _ = q.shape
        size = attn.attention_head_size
        q = q.view(batch, length, -1, size).transpose(1, 2)
        k = k.view(batch, length, -1, size).transpose(1, 2)
        return q @ k.transpose(-1, -2) * attn.scaling

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """TinyBERT's uniform mapping g(m) = m * N / M: student layer m (1-based) learns from teacher layer g(m)."""
    if student_layers > teacher_layers:
        raise UsageError(f"a student of {student_layers} layers cannot map onto a teacher of {teacher_layers}")
    return [int(round(m * teacher_layers / student_layers)) for m in range(1, student_layers + 1)]


def _relative_mse(student, teacher, weight=None):
    """MSE normalised by the teacher's mean square, so terms of different scales weigh alike;
    `weight` (broadcastable 0/1) excludes padding."""
    import torch

    if weight is None:
        return torch.mean((student - teacher) ** 2) / torch.mean(teacher ** 2).clamp(min=1e-12)
    weight = weight.expand_as(teacher)
    total = weight.sum().clamp(min=1)
    return (((student - teacher) ** 2) * weight).sum() / total / ((teacher ** 2 * weight).sum() / total).clamp(min=1e-12)


class DistillLoss:
    """TinyBERT's losses: embedding-layer MSE, attention-score MSE, hidden-state MSE (through a learned
    projection W_e / W_h when widths differ) and the prediction layer: soft cross-entropy at temperature `t`
    for classifiers, MSE for sentence embeddings. Each MSE is relative to the teacher's mean square (a
    weighting choice of ours: BERT's hidden states are ~10x the embeddings' scale)."""

    def __init__(self, student_width: int, teacher_width: int, mapping: Sequence[int], classifier: bool,
                 weights: dict[str, float] | None = None, temperature: float = 1.0, attention: bool = True) -> None:
        import torch

        self.mapping = list(mapping)
        self.classifier = classifier
        self.temperature = temperature
        self.attention = attention
        self.weights = {"embedding": 1.0, "attention": 1.0, "hidden": 1.0, "prediction": 1.0, **(weights or {})}
        self.project_e = self.project_h = None
        if student_width != teacher_width:
            with torch.random.fork_rng():  # seeded, so a distillation run is reproducible
                torch.manual_seed(0)
                self.project_e = torch.nn.Linear(student_width, teacher_width)
                self.project_h = torch.nn.Linear(student_width, teacher_width)

    def parameters(self):
        return [p for m in (self.project_e, self.project_h) if m is not None for p in m.parameters()]

    def __call__(self, student_taps: Taps, teacher_taps: Taps, student_out, teacher_out, attention_mask):
        import torch
        import torch.nn.functional as F

        tokens = attention_mask.unsqueeze(-1).to(student_out.dtype)
        parts = {}
        w = self.weights
        if w["embedding"]:
            emb = student_taps.embeddings
            emb = self.project_e(emb) if self.project_e is not None else emb
            parts["embedding"] = _relative_mse(emb, teacher_taps.embeddings, tokens)
        if w["hidden"]:
            terms = []
            for m, g in enumerate(self.mapping):
                hidden = student_taps.hidden[m]
                hidden = self.project_h(hidden) if self.project_h is not None else hidden
                terms.append(_relative_mse(hidden, teacher_taps.hidden[g - 1], tokens))
            parts["hidden"] = torch.stack(terms).mean()
        if w["attention"] and self.attention:
            pair = (attention_mask[:, None, :, None] * attention_mask[:, None, None, :]).to(student_out.dtype)
            parts["attention"] = torch.stack([
                _relative_mse(student_taps.attention_scores(m), teacher_taps.attention_scores(g - 1), pair)
                for m, g in enumerate(self.mapping)]).mean()
        if w["prediction"]:
            if self.classifier:
                t = self.temperature
                parts["prediction"] = -(F.softmax(teacher_out / t, -1) * F.log_softmax(student_out / t, -1)).sum(-1).mean()
            else:
                parts["prediction"] = _relative_mse(student_out, teacher_out)
        loss = sum(w[k] * v for k, v in parts.items())
        return loss, {k: float(v.detach()) for k, v in parts.items()}


# -- training ---------------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    steps: int = 100
    batch_size: int = 16
    lr: float = 5e-5
    max_len: int = DEFAULT_TRAIN_LEN
    weight_decay: float = 0.0
    warmup: float = 0.1          # fraction of steps with a linear LR warm-up
    clip: float = 1.0
    seed: int = 0
    threads: int | None = None   # torch CPU threads while training (None: leave as is)
    # Dropout off by default: short fine-tunes against a teacher converge faster without it (the student is
    # kept in eval mode; gradients flow all the same).
    dropout: bool = False
    log_every: int = 10

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def to_tensors(feed: dict[str, np.ndarray], input_names: Sequence[str]):
    import torch

    return [torch.from_numpy(feed[n]) for n in input_names]


def distill_loop(student, teacher, config: TrainConfig, params: list, batch: Callable[[int], Any],
                 step_loss: Callable[[Any], tuple[Any, dict]], taps: Sequence = (),
                 after_step: Callable[[], None] | None = None, log: Callable[[str], None] | None = None) -> list[dict]:
    """The training loop every distillation recipe shares: AdamW over `params` with a linear warm-up then linear
    decay, `batch(step)` -> the step's inputs, `step_loss(inputs)` -> (loss, its named parts), gradient clipping,
    `after_step` after each optimizer step (e.g. re-apply masks), the loss history (one entry per logged step).
    Seeds torch, sets the thread count, and on the way out removes `taps`, puts the student back in eval mode and
    restores the thread count, whatever happened."""
    import torch

    if config.steps <= 0:
        return []
    previous_threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    teacher.eval()
    student.train(config.dropout)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    warm = max(1, int(config.warmup * config.steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warm, max(0.0, (config.steps - s) / max(1, config.steps - warm))))
    history: list[dict] = []
    start = time.perf_counter()
    try:
        for step in range(config.steps):
            value, parts = step_loss(batch(step))
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            if config.clip:
                torch.nn.utils.clip_grad_norm_(params, config.clip)
            optimizer.step()
            schedule.step()
            if after_step is not None:
                with torch.no_grad():
                    after_step()
            if step % config.log_every == 0 or step == config.steps - 1:
                history.append({"step": step, "loss": float(value.detach()), **parts,
                                "elapsed_s": round(time.perf_counter() - start, 2)})
                if log:
                    log(f"  step {step:4d}/{config.steps}  loss {float(value.detach()):.4f}  " +
                        "  ".join(f"{k} {v:.4f}" for k, v in parts.items()))
    finally:
        for tap in taps:
            tap.remove()
        student.eval()
        torch.set_num_threads(previous_threads)
    return history


def train(student, teacher, spec, corpus: Corpus, config: TrainConfig, loss: DistillLoss,
          after_step: Callable[[], None] | None = None, log: Callable[[str], None] | None = None) -> list[dict]:
    """Train `student` to match the frozen `teacher` on the corpus' training sentences. Returns the loss
    history (one entry per logged step). `after_step` runs after each optimizer step (e.g. re-apply masks)."""
    import torch

    if config.steps <= 0:
        return []
    student_taps, teacher_taps = Taps(student, loss.attention), Taps(teacher, loss.attention)
    stream = batches(spec, corpus.train, config.batch_size, config.max_len, seed=config.seed)

    def step_loss(args):
        with torch.no_grad():
            teacher_out = teacher(*args)
        student_out = student(*args)
        return loss(student_taps, teacher_taps, student_out, teacher_out, args[1])

    params = [p for p in student.parameters() if p.requires_grad] + loss.parameters()
    return distill_loop(student, teacher, config, params, lambda step: to_tensors(next(stream), spec.input_names),
                        step_loss, taps=(student_taps, teacher_taps), after_step=after_step, log=log)


# -- measuring --------------------------------------------------------------------------------------
def recover(student, teacher, spec, corpus: Corpus, config: TrainConfig, heldout: Sequence[str], reference,
            *, attention: bool = True, after_step: Callable[[], None] | None = None, eval_spec=None,
            verbose: bool = False) -> tuple[dict[str, float], list[dict]]:
    """Score a compressed `student` against the teacher's `reference` outputs on `heldout`, then self-distil it
    back towards `teacher` (every layer's hidden states, and attention maps when `attention`) for
    `config.steps` steps. Returns (the score before training, the loss history)."""
    classifier = spec.task.endswith("classification")
    before = agreement(reference, outputs(student, eval_spec or spec, heldout), classifier)
    layers = len(find_bert(student).encoder.layer)
    loss = DistillLoss(1, 1, list(range(1, layers + 1)), classifier, attention=attention)
    return before, train(student, teacher, spec, corpus, config, loss, after_step=after_step, log=log_fn(verbose))


def outputs(module, spec, sentences: Sequence[str], batch_size: int = 32, max_len: int = EVAL_LEN) -> np.ndarray:
    """The module's output (sentence embedding or logits) for each sentence, stacked (n, width)."""
    import torch

    module.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(sentences), batch_size):
            feed = tokenize_batch(spec, sentences[start:start + batch_size], max_len)
            out.append(module(*to_tensors(feed, spec.input_names)).float().numpy())
    return np.concatenate(out)


def agreement(reference: np.ndarray, actual: np.ndarray, classifier: bool) -> dict[str, float]:
    """Per-sentence cosine similarity of outputs (mean, min, p5), and top-1 agreement for classifiers."""
    ref, got = reference.astype(np.float64), actual.astype(np.float64)
    cos = (ref * got).sum(1) / np.maximum(np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1), 1e-12)
    result = {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
              "cosine_p5": float(np.percentile(cos, 5)), "sentences": int(len(cos))}
    if classifier:
        result["top1_agreement"] = float((ref.argmax(1) == got.argmax(1)).mean())
    return result


def eager_latency_ms(modules: Sequence[Any], specs: Sequence[Any], runs: int = 20, threads: int = 2) -> list[float]:
    """Median eager PyTorch latency of each module on one batch-1 real sample at its spec's sequence length.
    The modules run interleaved, so load from other processes on a shared machine hits them alike."""
    import torch

    args = [to_tensors(spec.sample_inputs()[0], spec.input_names) for spec in specs]
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    times: list[list[float]] = [[] for _ in modules]
    try:
        with torch.no_grad():
            for module, a in zip(modules, args):
                module.eval()
                for _ in range(3):
                    module(*a)
            for _ in range(runs):
                for i, (module, a) in enumerate(zip(modules, args)):
                    start = time.perf_counter()
                    module(*a)
                    times[i].append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return [float(np.median(t) * 1e3) for t in times]


# -- the result and its checkpoint --------------------------------------------------------------------
@dataclass
class CompressResult:
    """A compressed model: `model` is the compressed PyTorch module (eval mode; the float module that the
    checkpoint holds), `spec` the zoo spec with its dims, `report` the measured trade-off."""

    method: str
    spec: Any
    model: Any
    report: dict[str, Any] = field(default_factory=dict)
    extra_files: dict[str, Callable[[Path], None]] = field(default_factory=dict)

    @property
    def architecture(self) -> dict[str, Any]:
        return architecture_of(self.model, self.spec)

    def save(self, out_dir: str | Path) -> Path:
        """Write OUT/model.safetensors (the checkpoint `export --weights` accepts), OUT/config.json (the dims,
        readable by people and transformers) and OUT/compress_report.json; returns the checkpoint folder."""
        from safetensors.torch import save_file

        from device_runtime.atomic import atomic_path, write_json as write_json_atomic

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        arch = self.architecture
        state = {k: v.detach().contiguous().clone() for k, v in self.model.state_dict().items()}
        meta = {ARCHITECTURE_KEY: json.dumps(arch), COMPRESS_KEY: json.dumps({"method": self.method})}
        with atomic_path(out / "model.safetensors") as tmp:
            save_file(state, str(tmp), metadata=meta)
        hf = {"architectures": ["BertModel"], "model_type": "bert", "vocab_size": find_bert(self.model).config.vocab_size,
              **arch["config"], "pocketformer": {k: v for k, v in arch.items() if k != "config"}}
        write_json_atomic(out / "config.json", hf)
        for name, writer in self.extra_files.items():
            with atomic_path(out / name) as tmp:  # each writer writes the file it is given
                writer(tmp)
        self.report.setdefault("checkpoint", {})
        self.report["checkpoint"].update({"path": str(out / "model.safetensors"),
                                          "size_bytes": (out / "model.safetensors").stat().st_size,
                                          "architecture": arch})
        write_json_atomic(out / "compress_report.json", self.report)
        return out


def base_report(method: str, spec, teacher, corpus: Corpus, options: dict) -> dict[str, Any]:
    return {"method": method, "model": spec.name, "teacher_weights": {k: v for k, v in
            getattr(teacher, "pocketformer_weights", {}).items() if k != "randomly_initialised"},
            "data": corpus.describe(), "options": options}


def measure(result_model, teacher, spec, compressed_spec, corpus: Corpus, eval_sentences: int,
            teacher_outputs: np.ndarray | None = None, latency: bool = True) -> dict[str, Any]:
    """Accuracy (cosine to the float teacher on held-out sentences), size and eager latency, before/after."""
    sentences = list(corpus.heldout[:eval_sentences])
    classifier = spec.task.endswith("classification")
    ref = teacher_outputs if teacher_outputs is not None else outputs(teacher, spec, sentences)
    got = outputs(result_model, compressed_spec, sentences)
    report = {"accuracy": agreement(ref, got, classifier),
              "size": {"params_before": param_count(teacher), "params_after": param_count(result_model),
                       "nonzero_after": nonzero_count(result_model),
                       "fp32_bytes_before": 4 * param_count(teacher), "fp32_bytes_after": 4 * param_count(result_model)}}
    if latency:
        before, after = eager_latency_ms([teacher, result_model], [spec, compressed_spec])
        report["eager_latency_ms"] = {"before": before, "after": after, "seq_len": spec.seq_len, "threads": 2}
    return report


def frozen_copy(module):
    teacher = copy.deepcopy(module).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def log_fn(verbose: bool) -> Callable[[str], None] | None:
    return print if verbose else None
