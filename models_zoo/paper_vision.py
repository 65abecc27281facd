"""The spec shared by the image classifiers this project writes from their papers (DynamicViT, MiniViT,
Mobile-Former): no library builds them, so preprocessing is stated here from each paper's evaluation code
instead of being read from a timm pretrained config, and an official checkpoint is loaded by renaming its keys
(and reshaping the few tensors whose layout differs) to this project's module names first."""
from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from models_zoo import weights as weights_io
from models_zoo.timm_vision import TimmVisionSpec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# One rename rule: (regex on the official key, replacement with \1.. groups). Rules are tried in order and the
# first that matches renames the key; a key no rule matches is kept as it is.
Rule = tuple[str, str]


def rename_keys(state: dict, rules: list[Rule], reshape: Callable[[str, Any], Any] | None = None) -> dict:
    """The official state dict under this project's names. `reshape(new_key, tensor)` adapts a tensor whose
    layout differs (a 1x1 convolution kept here as a plain matrix, ...)."""
    compiled = [(re.compile(f"^{pattern}$"), repl) for pattern, repl in rules]
    out = {}
    for key, value in state.items():
        new = key
        for pattern, repl in compiled:
            if pattern.match(key):
                new = pattern.sub(repl, key)
                break
        out[new] = reshape(new, value) if reshape is not None else value
    return out


@dataclass(frozen=True)
class PaperVisionSpec(TimmVisionSpec):
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def preprocessing(self) -> dict[str, Any]:
        return {"kind": "image", "size": [self.image_size, self.image_size], "crop_pct": self.crop_pct,
                "interpolation": self.interpolation, "mean": list(self.mean), "std": list(self.std)}

    def official_to_local(self, state: dict) -> dict:
        """Map an official checkpoint's state dict to this module's names; families override."""
        return state

    def build(self, weights: str | None = None, seed: int = 0):
        if weights is None:
            return super().build(None, seed)
        # The checkpoint is read safely, renamed, then loaded through the zoo's one loader (its shape and
        # missing-weight checks) from a temporary safetensors file.
        from safetensors.torch import save_file

        state = self.official_to_local(weights_io.read_state_dict(weights))
        state = {k: v.contiguous() for k, v in state.items()}
        with tempfile.TemporaryDirectory() as tmp:
            mapped = Path(tmp) / "mapped.safetensors"
            save_file(state, str(mapped))
            module = super().build(str(mapped), seed)
        module.pocketformer_weights["path"] = str(weights)
        return module
