"""The user's own model: a Hugging Face or timm folder as the model, and a checkpoint with a head of its own size.

A folder holding `config.json` is a model (`pocketformer export PATH --to pte`, `sdk.export(PATH)`):

- Hugging Face (`save_pretrained`): the architecture is read with transformers' own local loading
  (`AutoConfig.from_pretrained(path, local_files_only=True)`: nothing is downloaded) and mapped to the zoo family
  whose export recipe fits it (rewrites, int8 scheme, tolerances): `BertForSequenceClassification` to the BERT
  family (TinyBERT's recipe), `DistilBertForSequenceClassification` to DistilBERT's, a bare `BertModel` to the
  sentence-embedding recipe (all-MiniLM-L6-v2's: the attention-mask mean of the last hidden states). The dims come
  from the config, the head size and label names from `id2label`, the tokenizer from the folder's `vocab.txt` (or
  its `tokenizer.json`), the lower-casing and maximum length from `tokenizer_config.json`. Image classifiers
  (`MobileViTForImageClassification`, `DeiTForImageClassification[WithTeacher]`, `ViTForImageClassification`)
  are transformers' own model from the folder with the vision families' recipe, their labels from `id2label`
  and their preprocessing from `preprocessor_config.json` (`models_zoo.hf_vision`); the bare encoders
  (`MobileViTModel`, `ViTModel`, `DeiTModel`) likewise, exported as image embedders (no labels).
- timm (`config.json` with `architecture`, `num_classes`, `pretrained_cfg`): the zoo's spec of that architecture
  with the folder's class count, label names (`label_names`) and preprocessing (input size, mean/std, crop,
  interpolation from `pretrained_cfg`).

The folder's weights are the model's weights; they must fit its own config (`weights.load_into` refuses shape
mismatches and missing backbone weights). An architecture nothing maps is refused before any work, naming the
ones that are supported.

`for_checkpoint(spec, weights)`: a zoo spec rebuilt with the head size of the checkpoint it is given (a timm
MobileViT fine-tuned to 10 classes, a DistilBERT to 3 labels), read from the head weight's shape; the report
says so (`ModelSpec.head_note`).
"""
from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from device_runtime.errors import UsageError
from models_zoo.errors import WeightsError
from models_zoo.hf_vision import HF_VISION, vision_spec
from models_zoo.spec import ModelSpec, register_resolver

# Hugging Face architectures (config.json "architectures") and the zoo recipe each maps to.
HF_TEXT = {"BertForSequenceClassification": "bert", "DistilBertForSequenceClassification": "distilbert",
           "BertModel": "embedding"}
# The BERT config keys the zoo's builder takes from a folder (the rest are transformers' defaults).
BERT_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size",
             "max_position_embeddings", "type_vocab_size", "hidden_act", "layer_norm_eps", "initializer_range")
DISTILBERT_KEYS = ("dim", "n_layers", "n_heads", "hidden_dim", "vocab_size", "max_position_embeddings",
                   "activation", "initializer_range")
# The head's weight in each family's state dict (timm: head.fc / head / classifier; HF: classifier).
HEAD_KEYS = ("classifier.weight", "head.fc.weight", "head.weight", "fc.weight", "classifier.fc.weight")


def is_model_folder(name: str) -> bool:
    path = Path(name)
    return path.is_dir() and (path / "config.json").is_file()


def resolve_folder(name: str) -> ModelSpec | None:
    """`get_model`'s hook: the spec of a model folder, None for any other name."""
    return spec_from_folder(name) if is_model_folder(name) else None


register_resolver(resolve_folder)


def supported_architectures() -> list[str]:
    from models_zoo.spec import list_models, get_model
    from models_zoo.timm_vision import TimmVisionSpec

    timm = sorted({get_model(n).timm_name for n in list_models() if isinstance(get_model(n), TimmVisionSpec)
                   and get_model(n).timm_name})
    return [*HF_TEXT, *HF_VISION, *(f"timm:{t}" for t in timm)]


def spec_from_folder(path: str | Path) -> ModelSpec:
    """The spec of the model saved in `path` (see the module docstring)."""
    path = Path(path)
    try:
        raw = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {path / 'config.json'}: {exc}") from None
    if not isinstance(raw, dict):
        raise UsageError(f"{path / 'config.json'} is not a JSON object")
    if "architecture" in raw:
        return _timm_folder(path, raw)
    return _hf_folder(path, raw)


def _name(path: Path) -> str:
    # The folder's name is the model's name under out/ (and in reports); kept to safe characters.
    return re.sub(r"[^A-Za-z0-9_.]+", "_", path.resolve().name).strip("_.") or "model"


def _refuse(path: Path, found: str) -> UsageError:
    return UsageError(f"{path}: architecture {found} is not supported; supported: "
                      f"{', '.join(supported_architectures())}")


def _hf_folder(path: Path, raw: dict) -> ModelSpec:
    architectures = raw.get("architectures") or []
    kind = next((HF_TEXT[a] for a in architectures if a in HF_TEXT), None)
    vision = next((a for a in architectures if a in HF_VISION), None)
    if kind is None and vision is None:
        raise _refuse(path, ", ".join(architectures) or f"(none; model_type {raw.get('model_type', '?')})")
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # transformers raises ValueError/OSError/KeyError for configs it cannot read
        raise UsageError(f"transformers cannot read {path / 'config.json'}: {type(exc).__name__}: {exc}") from None
    if kind is None:
        return vision_spec(path, config, vision, _id2label(config), _name(path))
    labels = _id2label(config) if kind != "embedding" else None
    keys = DISTILBERT_KEYS if kind == "distilbert" else BERT_KEYS
    dims = {k: getattr(config, k) for k in keys if getattr(config, k, None) is not None}
    prep = _tokenizer_settings(path, int(dims.get("max_position_embeddings", 512)))
    common = dict(name=_name(path), config=dims, default_weights=str(path), folder=str(path.resolve()), seq_len=prep["seq_len"],
                  vocab=prep["vocab"], lowercase=prep["lowercase"], source=f"Hugging Face folder {path} "
                  f"({architectures[0]})")
    if kind == "embedding":
        from models_zoo.minilm import SentenceEmbeddingSpec

        return SentenceEmbeddingSpec(family="minilm", use_token_type_ids="type_vocab_size" in dims, **common)
    if kind == "distilbert":
        from models_zoo.distilbert import DistilBertSpec

        return DistilBertSpec(num_labels=len(labels), label_names=tuple(labels), **common)
    from models_zoo.bert import BertSpec

    return BertSpec(family="tinybert", num_labels=len(labels), label_names=tuple(labels), **common)


def _id2label(config) -> list[str]:
    id2label = getattr(config, "id2label", None) or {}
    count = int(getattr(config, "num_labels", 0) or len(id2label))
    return [str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(count)]


def _tokenizer_settings(path: Path, max_positions: int) -> dict[str, Any]:
    """The folder's own vocabulary (vocab.txt, else tokenizer.json), lower-casing and maximum length (its
    tokenizer_config.json, capped at 128 tokens: the family's export length, which --seq-len changes)."""
    vocab = next((path / f for f in ("vocab.txt", "tokenizer.json") if (path / f).is_file()), None)
    if vocab is None:
        raise UsageError(f"{path} has no tokenizer: expected vocab.txt or tokenizer.json beside config.json")
    settings: dict[str, Any] = {}
    if (path / "tokenizer_config.json").is_file():
        try:
            settings = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
        except ValueError as exc:
            raise UsageError(f"cannot read {path / 'tokenizer_config.json'}: {exc}") from None
    longest = settings.get("model_max_length")
    longest = int(longest) if isinstance(longest, (int, float)) and longest < 100_000 else max_positions
    return {"vocab": str(vocab), "lowercase": bool(settings.get("do_lower_case", True)),
            "seq_len": min(128, longest, max_positions)}


def _timm_folder(path: Path, raw: dict) -> ModelSpec:
    from models_zoo.spec import get_model, list_models
    from models_zoo.timm_vision import TimmVisionSpec

    architecture = str(raw["architecture"])
    base = next((s for s in (get_model(n) for n in list_models())
                 if isinstance(s, TimmVisionSpec) and s.timm_name == architecture), None)
    if base is None:
        raise _refuse(path, f"timm:{architecture}")
    classes = int(raw.get("num_classes", base.num_classes))
    names = raw.get("label_names")
    if names is not None and len(names) != classes:
        raise UsageError(f"{path / 'config.json'}: {len(names)} label_names for num_classes {classes}")
    cfg = raw.get("pretrained_cfg") or {}
    size = cfg.get("input_size", [3, base.image_size, base.image_size])
    if len(size) != 3 or size[1] != size[2]:
        raise UsageError(f"{path / 'config.json'}: pretrained_cfg input_size {size} is not [3, N, N]")
    weights = next((path / f for f in ("model.safetensors", "pytorch_model.bin") if (path / f).is_file()), None)
    if weights is None:
        raise WeightsError(f"{path} has no weights: expected model.safetensors or pytorch_model.bin")
    return replace(base, name=_name(path), num_classes=classes, label_names=tuple(names) if names else None,
                   image_size=int(size[1]), pretrained_cfg={k: cfg[k] for k in ("mean", "std", "crop_pct",
                                                                                  "interpolation") if k in cfg},
                   default_weights=str(weights), source=f"timm folder {path} ({architecture})", tiny_overrides=None,
                   folder=str(path.resolve()))


def checkpoint_head_size(weights: str | Path) -> int | None:
    """The class count of a checkpoint's classification head (its weight's rows), or None when it has none."""
    from models_zoo.weights import checkpoint_shapes

    shapes = checkpoint_shapes(weights)
    for key in HEAD_KEYS:
        found = [k for k in shapes if k == key or k.endswith("." + key)]
        if found and len(shapes[found[0]]) == 2:
            return int(shapes[found[0]][0])
    return None


def for_checkpoint(spec: ModelSpec, weights: str | Path | None) -> ModelSpec:
    """`spec` with the head size of `weights` where it differs (and the folder's label names, when `weights` is a
    Hugging Face folder with `id2label`); the spec as it is otherwise."""
    if weights is None:
        return spec
    field = "num_classes" if hasattr(spec, "num_classes") else "num_labels" if hasattr(spec, "num_labels") else None
    if field is None or getattr(spec, field) == 0:  # an embedding model has no head to resize
        return spec
    classes = checkpoint_head_size(weights)
    if classes is None or classes == getattr(spec, field):
        return spec
    names = None
    folder = Path(weights)
    if folder.is_dir() and (folder / "config.json").is_file():
        try:
            id2label = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("id2label") or {}
            names = tuple(str(id2label[str(i)]) for i in range(classes)) if len(id2label) == classes else None
        except (ValueError, KeyError, AttributeError):
            names = None
    note = (f"head resized to the checkpoint's {classes} classes (the zoo's {spec.name} has "
            f"{getattr(spec, field)}), read from its head weight's shape")
    return replace(spec, **{field: classes}, label_names=names, head_note=note)
