"""DistilVLM: distil a larger vision-language fusion transformer into MiniVLM's fusion stage (Fang et al.,
"Compressing Visual-linguistic Model via Knowledge Distillation", ICCV 2021, arXiv 2104.02096).

What the paper defines, as far as it could be read offline: only its abstract was reachable (arxiv.org/abs/
2104.02096, the ICCV open-access page); the body (sections, equations, hyper-parameters) was not, so no section
numbers are cited and every choice the abstract does not fix is marked "ours" below. From the abstract:
- Region alignment. Teacher and student must see the same visual tokens, or their hidden states and attention
  maps cannot be compared token by token: the paper adapts the teacher to the student's detector's region
  proposals. Here one detector, MiniVLM's TEE, produces the region features and boxes, computed once per image,
  and the very same tensors feed both transformers.
- Attention: "the mean square error loss to mimic the attention distribution inside the transformer block", i.e.
  MSE on the post-softmax attention probabilities of mapped layers.
- Hidden states: "a token-wise noise contrastive loss ... contrasting with negative representations stored in a
  sample queue". Each student token state, projected to the teacher's width by a learned linear map, must pick
  its own teacher token state out of the other tokens of the batch and a FIFO queue of teacher states from
  earlier batches (InfoNCE over cosine similarities).
- Task: the paper distils for VQA and captioning; here the VQA head's logits are distilled with Hinton's soft
  cross-entropy at temperature T (the abstract does not give the logit loss: ours, as `sdk.compress.distill`).

Ours, where the abstract is silent: the layer mapping is TinyBERT's uniform g(m) = m * N / M
(`sdk.compress.core.layer_map`; one-to-one when the depths are equal); attention maps are compared head by head
when both have the same head count, else averaged over heads; each MSE is relative to the teacher's mean square
(as `sdk.compress.core`'s losses, so terms of different scale weigh alike); the NCE temperature is 0.07 (MoCo's);
the queue holds 1,024 teacher token states per mapped layer (4,096 at full size).

The teacher. No trained vision-language checkpoint (Oscar, VinVL, MiniVLM) can be had offline, so the default
teacher is a *random-init* fusion transformer, larger than the student: BERT-base-shaped (12 x 768, 12 heads, the
shape of Oscar-B) for the full model, 4 x 64 with 4 heads for the tiny one. Its outputs mean nothing; what the
recipe shows is that the student learns to reproduce them, input by input, on real photos and questions.
`--teacher PATH` loads a teacher saved by `save_teacher`. Data: image-question pairs written by hand for
scikit-image's bundled photos (tests/data/vl_questions.tsv); every training question is asked of every training
photo (the teacher labels any pair), and the held-out pairs use held-out photos and questions.
"""
from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from device_runtime.errors import UsageError
from sdk.compress.core import (COMPRESS_KEY, CompressResult, TrainConfig, agreement, distill_loop, layer_map,
                               log_fn)
from sdk.compress.vl_data import DEFAULT_DATA, VLPair, feed_rows, make_feeds, read_pairs, region_table

TEACHER_KEY = "pocketformer.vlm_fusion"  # safetensors metadata: the fusion transformer's dims
DEFAULT_LR = 5e-3  # measured: at 1e-3 a 150-step run barely moves the student's per-input agreement
DIM_KEYS = ("hidden", "layers", "heads", "ffn", "box_hidden", "vocab_size", "max_positions", "num_answers",
            "initializer_range")


# -- the teacher -------------------------------------------------------------------------------------------------
def teacher_config(cfg, layers: int | None = None, hidden: int | None = None, heads: int | None = None):
    """The student's MiniVLM configuration with a larger fusion transformer: BERT-base's shape (Oscar-B's) at full
    size, 4 x 64 with 4 heads for the tiny variant (twice the tiny student's depth and width)."""
    base = (4, 64, 4) if cfg.is_tiny else (12, 768, 12)
    layers, hidden, heads = layers or base[0], hidden or base[1], heads or base[2]
    if hidden % heads:
        raise UsageError(f"teacher width {hidden} is not a multiple of its {heads} heads")
    return dataclasses.replace(cfg, name=f"{cfg.name}-teacher", layers=layers, hidden=hidden, heads=heads,
                               ffn=4 * hidden)


def build_fusion(cfg, seed: int):
    """A seeded random-init fusion stage (MiniVLM's `FusionStage` over its own `FusionTransformer`)."""
    import torch

    from models_zoo.bert import init_bert_weights
    from models_zoo.minivlm_layers import FusionStage, FusionTransformer

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        body = FusionTransformer(cfg)
        init_bert_weights(body, cfg.initializer_range)
    return FusionStage(body).eval()


def save_fusion(stage, cfg, path: str | Path, method: str | None = None) -> Path:
    """A fusion stage's state dict as safetensors, its dims in the metadata (what `load_fusion` rebuilds from)."""
    from safetensors.torch import save_file

    from device_runtime.atomic import atomic_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {TEACHER_KEY: json.dumps({k: getattr(cfg, k) for k in DIM_KEYS})}
    if method:
        meta[COMPRESS_KEY] = json.dumps({"method": method, "stage": "fusion"})
    state = {k: v.detach().contiguous().clone() for k, v in stage.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return path


save_teacher = save_fusion


def load_fusion(path: str | Path, cfg):
    """(stage, its config) from `save_fusion`'s file; `cfg` supplies what the file does not (the detector's)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise UsageError(f"no fusion-transformer checkpoint at {path} (write one with save_teacher)")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if TEACHER_KEY not in meta:
        raise UsageError(f"{path} has no {TEACHER_KEY!r} metadata: not written by save_teacher/save_fusion")
    dims = json.loads(meta[TEACHER_KEY])
    if dims["box_hidden"] != cfg.box_hidden:
        raise UsageError(f"{path}: its region features are {dims['box_hidden']} wide, the detector's "
                         f"{cfg.box_hidden}: teacher and student must read the same regions")
    fused = dataclasses.replace(cfg, **dims)
    stage = build_fusion(fused, seed=0)
    missing, unexpected = stage.load_state_dict(load_file(str(path)), strict=False)
    if missing or unexpected:
        raise UsageError(f"{path} does not match a fusion stage of its declared dims: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return stage.eval(), fused


# -- taps and the losses -----------------------------------------------------------------------------------------
class FusionTaps:
    """Forward hooks on a fusion stage's BERT encoder: every layer's output and its attention probabilities
    (eager attention returns them). `clear()` before each forward."""

    def __init__(self, stage) -> None:
        self.hidden: list = []
        self.attentions: list = []
        self.handles = []
        for layer in stage.body.encoder.layer:
            self.handles.append(layer.register_forward_hook(lambda _m, _i, out: self.hidden.append(out)))
            self.handles.append(layer.attention.self.register_forward_hook(
                lambda _m, _i, out: self.attentions.append(out[1])))

    def clear(self) -> None:
        self.hidden, self.attentions = [], []

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def relative_mse(student, teacher, weight):
    """MSE over the weighted (0/1) entries, relative to the teacher's mean square there."""
    weight = weight.expand_as(teacher)
    total = weight.sum().clamp(min=1)
    err = (((student - teacher) ** 2) * weight).sum() / total
    return err / ((teacher ** 2 * weight).sum() / total).clamp(min=1e-12)


class DistilVLMLoss:
    """The paper's terms (module docstring): attention-distribution MSE and token-wise NCE on hidden states per
    mapped layer, soft cross-entropy on the VQA logits at temperature `temperature`. `hidden_loss="mse"` swaps
    the NCE for TinyBERT's projected MSE. With weights {"hard": 1, others 0} it is the no-distillation baseline:
    cross-entropy against the teacher's arg-max answer (its hard label), nothing else."""

    def __init__(self, student_width: int, teacher_width: int, mapping: Sequence[int], weights: dict | None = None,
                 temperature: float = 1.0, hidden_loss: str = "nce", nce_temperature: float = 0.07,
                 queue_size: int = 1024, seed: int = 0) -> None:
        import torch

        if hidden_loss not in ("nce", "mse"):
            raise UsageError(f"hidden_loss must be 'nce' or 'mse', got {hidden_loss!r}")
        self.mapping, self.temperature, self.hidden_loss = list(mapping), temperature, hidden_loss
        self.nce_temperature, self.queue_size = nce_temperature, queue_size
        self.weights = {"attention": 1.0, "hidden": 1.0, "prediction": 1.0, "hard": 0.0, **(weights or {})}
        unknown = set(self.weights) - {"attention", "hidden", "prediction", "hard"}
        if unknown:
            raise UsageError(f"unknown loss weights {sorted(unknown)}")
        with torch.random.fork_rng():  # seeded, so a run is reproducible
            torch.manual_seed(seed)
            self.project = torch.nn.Linear(student_width, teacher_width)
        self.queues: dict[int, Any] = {}

    def parameters(self):
        return list(self.project.parameters()) if self.weights["hidden"] else []

    def _nce(self, layer: int, student, teacher):
        import torch
        import torch.nn.functional as F

        q = F.normalize(self.project(student), dim=-1)
        k = F.normalize(teacher, dim=-1).detach()
        queue = self.queues.get(layer)
        keys = k if queue is None else torch.cat([k, queue])
        logits = q @ keys.T / self.nce_temperature
        loss = F.cross_entropy(logits, torch.arange(len(q)))
        self.queues[layer] = keys[:self.queue_size]  # newest first: this batch's states, then the older ones
        return loss

    def __call__(self, s_taps: FusionTaps, t_taps: FusionTaps, s_logits, t_logits, valid):
        import torch
        import torch.nn.functional as F

        w, parts = self.weights, {}
        tokens = valid.bool()
        if w["attention"]:
            pair = (valid[:, None, :, None] * valid[:, None, None, :]).to(s_logits.dtype)
            terms = []
            for m, g in enumerate(self.mapping):
                s, t = s_taps.attentions[m], t_taps.attentions[g - 1]
                if s.shape[1] != t.shape[1]:  # different head counts: compare the heads' mean distribution
                    s, t = s.mean(1, keepdim=True), t.mean(1, keepdim=True)
                terms.append(relative_mse(s, t, pair))
            parts["attention"] = torch.stack(terms).mean()
        if w["hidden"]:
            terms = []
            for m, g in enumerate(self.mapping):
                s, t = s_taps.hidden[m][tokens], t_taps.hidden[g - 1][tokens]
                terms.append(self._nce(m, s, t) if self.hidden_loss == "nce" else
                             relative_mse(self.project(s), t, torch.ones_like(t)))
            parts["hidden"] = torch.stack(terms).mean()
        if w["prediction"]:
            temp = self.temperature
            parts["prediction"] = -(F.softmax(t_logits / temp, -1) * F.log_softmax(s_logits / temp, -1)).sum(-1).mean()
        if w["hard"]:
            parts["hard"] = F.cross_entropy(s_logits, t_logits.argmax(-1))
        loss = sum(w[k] * v for k, v in parts.items())
        return loss, {k: float(v.detach()) for k, v in parts.items()}


# -- training and measuring --------------------------------------------------------------------------------------
def vqa_logits(stage, feeds: dict, batch_size: int = 64) -> np.ndarray:
    import torch

    stage.eval()
    n = len(feeds["pairs"])
    with torch.no_grad():
        return np.concatenate([stage(*feed_rows(feeds, slice(i, i + batch_size)))[0].float().numpy()
                               for i in range(0, n, batch_size)])


def vl_agreement(reference: np.ndarray, actual: np.ndarray) -> dict[str, float]:
    """`core.agreement` on the VQA logits (cosine, top-1), plus the cosine after removing the teacher's mean
    logits over the set from both: raw cosine also rewards learning the teacher's average answer profile, the
    centred one only input-by-input agreement."""
    result = agreement(reference, actual, classifier=True)
    mean = reference.mean(0, keepdims=True)
    centred = agreement(reference - mean, actual - mean, classifier=False)
    result["centred_cosine_mean"] = centred["cosine_mean"]
    result["pairs"] = result.pop("sentences")
    return result


def train_fusion(student, teacher, feeds: dict, loss: DistilVLMLoss, config: TrainConfig,
                 log=None) -> list[dict]:
    """Train `student` against the frozen `teacher` on shuffled batches of `feeds`; one history entry per logged
    step (every step by default: the report keeps the losses per step). The loop is `core.distill_loop`."""
    import torch

    if config.steps <= 0:
        return []
    rng = np.random.default_rng(config.seed)
    s_taps, t_taps = FusionTaps(student), FusionTaps(teacher)
    n, order = len(feeds["input_ids"]), np.array([], dtype=int)

    def batch(step):  # an epoch's permutation, refilled as it runs out: every pair once before any twice
        nonlocal order
        if len(order) < config.batch_size:
            order = np.concatenate([order, rng.permutation(n)])
        index, order = torch.from_numpy(order[:config.batch_size]), order[config.batch_size:]
        return feed_rows(feeds, index)

    def step_loss(args):
        s_taps.clear(), t_taps.clear()
        with torch.no_grad():
            t_logits = teacher(*args)[0]
        s_logits = student(*args)[0]
        return loss(s_taps, t_taps, s_logits, t_logits, torch.cat([args[1], args[4]], dim=1))

    params = [p for p in student.parameters() if p.requires_grad] + loss.parameters()
    return distill_loop(student, teacher, config, params, batch, step_loss, taps=(s_taps, t_taps), log=log)


@dataclass
class VLMCompressResult(CompressResult):
    """A distilled fusion stage: `save` writes OUT/model.safetensors (the stage's state dict, dims in its
    metadata; `load_fusion` rebuilds it, `load_student` puts it into a MiniVLM) and OUT/compress_report.json."""

    @property
    def architecture(self) -> dict[str, Any]:
        return self.report["options"]["student"]

    def save(self, out_dir: str | Path) -> Path:
        from device_runtime.atomic import write_json as write_json_atomic

        out = Path(out_dir)
        path = save_fusion(self.model, self.spec, out / "model.safetensors", method=self.method)
        self.report["checkpoint"] = {"path": str(path), "size_bytes": path.stat().st_size, "stage": "fusion",
                                     "architecture": self.architecture}
        write_json_atomic(out / "compress_report.json", self.report)
        return out


def load_student(path: str | Path, model) -> None:
    """Put a distilled fusion stage (a `VLMCompressResult.save` folder or file) into MiniVLM `model`: its fusion
    and caption stages share the body, so both take the distilled weights."""
    stage, _ = load_fusion(path, model.config)
    model.fusion.body.load_state_dict(stage.body.state_dict())


def _model_config(model: str, tiny: bool):
    from models_zoo.minivlm import minivlm_variants

    name = model.removesuffix("-tiny")
    if name not in minivlm_variants():
        raise UsageError(f"distill-vlm compresses a MiniVLM ({minivlm_variants()}), not {model!r}")
    return name, tiny or model.endswith("-tiny")


def distill_vlm(model: str = "minivlm", teacher: str | None = None, data: str | Path | None = None, *,
                tiny: bool = False, steps: int = 150, config: TrainConfig | None = None, temperature: float = 1.0,
                hidden_loss: str = "nce", loss_weights: dict | None = None, baseline: bool = False, seed: int = 0,
                verbose: bool = False) -> VLMCompressResult:
    """Distil a teacher fusion transformer (`teacher`: None or "random" for the larger random-init one, or a path
    written by `save_teacher`) into MiniVLM's fusion stage on the image-question pairs in `data`. The report has
    the student's agreement with the teacher on the held-out pairs before and after (and, with `baseline`, after
    the same training on the teacher's hard labels alone), the losses per step and the sizes."""
    from models_zoo.minivlm import build_minivlm

    from sdk.compress.core import param_count

    name, tiny = _model_config(model, tiny)
    mini = build_minivlm(name, tiny=tiny, seed=seed)
    cfg = mini.config
    config = config or TrainConfig(steps=steps, seed=seed, lr=DEFAULT_LR, batch_size=16, log_every=1)
    if teacher in (None, "", "random"):
        t_cfg = teacher_config(cfg)
        teacher_stage, teacher_from = build_fusion(t_cfg, seed + 1), f"random init (seed {seed + 1})"
    else:
        teacher_stage, t_cfg = load_fusion(teacher, cfg)
        teacher_from = str(teacher)
    if t_cfg.num_answers != cfg.num_answers:
        raise UsageError(f"the teacher has {t_cfg.num_answers} answers, the student {cfg.num_answers}")
    for p in teacher_stage.parameters():
        p.requires_grad_(False)

    pairs = read_pairs(data)
    train_pairs = [p for p in pairs if p.split == "train"]
    held_pairs = [p for p in pairs if p.split == "heldout"]
    regions = region_table(mini, sorted({p.image for p in pairs}))
    train_feeds, held_photos = make_feeds(train_pairs, regions, cfg), sorted({p.image for p in held_pairs})
    # Two held-out sets, both on photos never trained on: the held-out photos with their own questions (new
    # words too, whose random embeddings the student never saw trained), and with the training questions.
    held = {"": make_feeds(held_pairs, regions, cfg),
            "_unseen_photos": make_feeds([VLPair(image, "heldout", q.question, q.answer) for image in held_photos
                                          for q in train_pairs], regions, cfg, cross=False)}
    reference = {k: vqa_logits(teacher_stage, f) for k, f in held.items()}

    def score(stage, label: str) -> None:
        for suffix, feeds in held.items():
            accuracy[label + suffix] = vl_agreement(reference[suffix], vqa_logits(stage, feeds))

    mapping = layer_map(cfg.layers, t_cfg.layers)
    queue = 1024 if cfg.is_tiny else 4096
    start_student = copy.deepcopy(mini.fusion)
    student = copy.deepcopy(start_student)
    loss = DistilVLMLoss(cfg.hidden, t_cfg.hidden, mapping, loss_weights, temperature, hidden_loss,
                         queue_size=queue, seed=seed)
    accuracy: dict[str, Any] = {}
    score(student, "start")
    history = train_fusion(student, teacher_stage, train_feeds, loss, config, log=log_fn(verbose))
    score(student, "end")
    baseline_history = None
    if baseline:
        plain = copy.deepcopy(start_student)
        hard = DistilVLMLoss(cfg.hidden, t_cfg.hidden, mapping, {"attention": 0, "hidden": 0, "prediction": 0,
                                                                 "hard": 1}, seed=seed)
        baseline_history = train_fusion(plain, teacher_stage, train_feeds, hard, config)
        score(plain, "hard_labels_only")

    dims = {k: getattr(cfg, k) for k in DIM_KEYS}
    t_params, s_params = param_count(teacher_stage), param_count(student)
    images = sorted({p.image for p in pairs})
    report = {
        "method": "distill-vlm", "model": cfg.name,
        "teacher_weights": {"source": teacher_from, "warning": "no trained vision-language checkpoint is "
                            "available offline: the teacher's outputs are not meaningful answers"},
        "data": {"source": f"{Path(data) if data else DEFAULT_DATA} ({len(pairs)} hand-written pairs for "
                           f"{len(images)} scikit-image photos)",
                 "train_sentences": len(train_feeds["pairs"]), "heldout_sentences": len(held[""]["pairs"]),
                 "heldout_unseen_photos_pairs": len(held["_unseen_photos"]["pairs"]),
                 "train_photos": sorted({p.image for p in train_pairs}),
                 "heldout_photos": held_photos,
                 "pairing": "training: every training question asked of every training photo; held-out: each held-out "
                            "photo with every held-out question, and (accuracy keys *_unseen_photos) with every "
                            "training question"},
        "options": {"teacher": {k: getattr(t_cfg, k) for k in DIM_KEYS}, "student": dims,
                    "layer_mapping": mapping, "hidden_loss": hidden_loss, "temperature": temperature,
                    "nce_temperature": loss.nce_temperature, "queue_size": queue, "loss_weights": loss.weights,
                    "region_alignment": "one detector (MiniVLM's TEE): the same region features, boxes and mask "
                                        "feed teacher and student", "train": config.to_dict()},
        "accuracy": accuracy, "history": history,
        "size": {"params_before": t_params, "params_after": s_params, "nonzero_after": s_params,
                 "fp32_bytes_before": 4 * t_params, "fp32_bytes_after": 4 * s_params,
                 "note": "the fusion transformers only (teacher before, student after); the detector is shared"},
    }
    if baseline_history is not None:
        report["baseline_history"] = baseline_history
    student.pocketformer_weights = {"source": "distill-vlm", "teacher": teacher_from}
    return VLMCompressResult("distill-vlm", cfg, student, report)
