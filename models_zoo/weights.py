"""Safe loading of local checkpoints: safetensors, or `torch.load(weights_only=True)`; never pickled code.

Accepts a file or a Hugging Face / timm folder (model.safetensors, pytorch_model.bin, ...). Keys are matched
as saved, or with a wrapper prefix added or removed (a BertModel checkpoint into our classifier wrapper).
"""
from __future__ import annotations

from pathlib import Path

from models_zoo.errors import WeightsError

FOLDER_FILES = ("model.safetensors", "pytorch_model.bin", "model.pth", "pytorch_model.pt")
CONTAINER_KEYS = ("state_dict", "model", "model_state_dict", "state_dict_ema")


def checkpoint_file(path: str | Path) -> Path:
    """The checkpoint file itself: `path`, or the first of FOLDER_FILES in a folder."""
    path = Path(path)
    if path.is_dir():
        found = [path / f for f in FOLDER_FILES if (path / f).exists()]
        if not found:
            raise WeightsError(f"no checkpoint in folder {path}: expected one of {', '.join(FOLDER_FILES)}")
        path = found[0]
    if not path.exists():
        raise WeightsError(f"weights file not found: {path}")
    return path


def checkpoint_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """{key: shape} of a checkpoint. A safetensors file is read from its header alone (no tensor is loaded: the
    head-size check runs before the build, which then reads the weights once); other formats are loaded."""
    path = checkpoint_file(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="numpy") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        except Exception as exc:  # a damaged header: read_state_dict says what is wrong
            raise WeightsError(f"cannot read weights {path}: {type(exc).__name__}: {str(exc)[:300]}") from None
    return {k: tuple(v.shape) for k, v in read_state_dict(path).items()}


def read_state_dict(path: str | Path) -> dict:
    import torch

    path = checkpoint_file(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickle with code, wrong format
        raise WeightsError(f"cannot read weights {path}: {type(exc).__name__}: {str(exc)[:300]}") from None
    for key in CONTAINER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(hasattr(v, "shape") for v in state.values()):
        raise WeightsError(f"{path} does not hold a state dict of tensors")
    return state


def _prefixes(keys, depth: int) -> set[str]:
    """"" and every dotted prefix of up to `depth` components found in `keys`."""
    found = {""}
    for key in keys:
        parts = key.split(".")[:-1]
        found.update(".".join(parts[:n]) + "." for n in range(1, min(depth, len(parts)) + 1))
    return found


def _best_key_mapping(state: dict, model_keys: set[str]) -> dict:
    """Keys as saved, or with a wrapper prefix stripped and/or another added (e.g. "bert." -> "model.bert."),
    whichever matches the most of the model's parameters."""
    best, best_count = state, len(model_keys & set(state))
    for strip in _prefixes(state, 2):
        stripped = {k[len(strip):]: v for k, v in state.items() if k.startswith(strip)}
        for add in _prefixes(model_keys, 3):
            count = sum(1 for k in stripped if add + k in model_keys)
            if count > best_count:
                best, best_count = {add + k: v for k, v in stripped.items()}, count
    return best


def load_into(module, path: str | Path, model: str, family: str | None = None) -> dict:
    """Load a checkpoint into `module` (the zoo model named `model`, of `family`, as error messages say);
    shape mismatches and missing backbone weights are errors."""
    state = read_state_dict(path)
    model_state = module.state_dict()
    state = _best_key_mapping(state, set(model_state))
    matched = set(state) & set(model_state)
    if not matched:
        raise WeightsError(f"{path} shares no parameter names with {model}"
                           + (f"; is it a {family} checkpoint?" if family else ""))
    wrong = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(model_state[k].shape)}"
             for k in sorted(matched) if state[k].shape != model_state[k].shape]
    if wrong:
        raise WeightsError(f"{path} does not fit {model} ({len(wrong)} shape mismatches), e.g. " + "; ".join(wrong[:3]))
    missing = sorted(set(model_state) - matched)
    # Task heads may be absent from a backbone checkpoint; everything else must be there.
    head_words = ("classifier", "head", "pooler")
    backbone_missing = [k for k in missing if not any(w in k for w in head_words)
                        and not k.endswith(("num_batches_tracked", "position_ids", "attention_bias_idxs"))]
    if backbone_missing:
        raise WeightsError(f"{path} lacks {len(backbone_missing)} weights of {model}, e.g. {backbone_missing[:3]}")
    module.load_state_dict({k: state[k] for k in matched}, strict=False)
    return {"path": str(path), "loaded": len(matched), "randomly_initialised": missing}
