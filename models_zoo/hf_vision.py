"""Hugging Face image classifiers saved with `save_pretrained` (MobileViT, DeiT, ViT) as the user's own model.

`models_zoo.user_models` reads the folder's `config.json` and calls `vision_spec` when its architecture is one of
`HF_VISION`. The model is transformers' own class built from the folder (the config's architecture, else
`AutoModelForImageClassification`; `.from_pretrained(path, local_files_only=True)`, eager attention so exports
and FLOP counts see every matmul: DESIGN.md §2), wrapped to take `pixel_values` and return the logits tensor
only. The export recipe is the zoo's vision family's: its tolerances and int8-static scheme.

The folder's `preprocessor_config.json` (read with `AutoImageProcessor`, so each processor class's defaults
apply) becomes the zoo's image preprocessing (size, crop_pct, interpolation, mean, std: the one
`models_zoo.data.preprocess_image`, device_runtime and the Android core all apply), exactly where it can be:

- `size.shortest_edge` S with `crop_size` (h, w): resize the short side to S, centre-crop: crop_pct = min(h, w)/S.
- `rescale_factor` f and `image_mean`/`image_std` (m, s) fold into the zoo's mean/std: (x*f - m)/s equals
  (x/255 - m/(255 f)) / (s/(255 f)); no `do_normalize` is m=0, s=1; no `do_rescale` is f=1.
- `do_flip_channel_order` (MobileViT: the model was trained on BGR) is done inside the exported graph, first
  thing: every runtime is fed RGB as for every other zoo model, and the network still sees BGR.
- `size` {height, width} (ViT, DeiT) *stretches* the image to that size; the zoo's preprocessing keeps the
  aspect ratio (short side, centre crop). Both are the same on a square photo; on others the network sees a
  centre crop instead of the squeezed whole. The spec says so (`describe()["preprocessing_note"]`), since that
  resize has no representation in the shared preprocessing; a non-square stretch is refused.

Anything else it cannot honour (`do_resize` false, a resampling filter other than bilinear/bicubic, a crop larger
than the resize, `do_pad`, a crop that does not match the model's `image_size`) is refused with a UsageError
naming the field, before any work.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from device_runtime.errors import UsageError
from models_zoo.errors import WeightsError
from models_zoo.spec import InputSpec, ModelSpec
from models_zoo.timm_vision import VISION_TOLERANCES, PhotoFeeds

# Hugging Face image-classification architectures and the zoo family whose recipe fits each.
HF_VISION = {"MobileViTForImageClassification": "mobilevit", "DeiTForImageClassification": "deit",
             "DeiTForImageClassificationWithTeacher": "deit", "ViTForImageClassification": "vit"}
# PIL's resampling codes (what preprocessor_config.json stores) for the filters the shared preprocessing has.
RESAMPLE = {2: "bilinear", 3: "bicubic"}


@dataclass(frozen=True)
class HfVisionSpec(PhotoFeeds, ModelSpec):
    task: str = "image-classification"
    output_names: tuple[str, ...] = ("logits",)
    tolerances: dict = field(default_factory=lambda: dict(VISION_TOLERANCES))
    num_classes: int = 0
    # The folder's preprocessing in the zoo's representation (`preprocessing()`), and what could not be matched.
    image_prep: dict[str, Any] = field(default_factory=dict)
    flip_channels: bool = False
    architecture: str = ""  # config.json's: the class built (Auto would build DeiT's without the teacher head)
    preprocessing_note: str | None = None

    def input_specs(self) -> tuple[InputSpec, ...]:
        height, width = self.image_prep["size"]
        return (InputSpec("pixel_values", (1, 3, height, width), "float32"),)

    def preprocessing(self) -> dict[str, Any]:
        return {"kind": "image", **{k: (list(v) if isinstance(v, (list, tuple)) else v)
                                    for k, v in self.image_prep.items()}}


    def build(self, weights: str | None = None, seed: int = 0):
        """transformers' model loaded from the folder (or from `weights`, another save_pretrained folder of the
        same architecture): its checkpoint keys are transformers' to map (v5 renames attention weights on load,
        which `weights.load_into` cannot follow)."""
        import torch

        source = Path(weights) if weights is not None else Path(self.folder)
        if source.is_file() and (source.parent / "config.json").is_file():  # a folder's model.safetensors
            source = source.parent
        if not (source.is_dir() and (source / "config.json").is_file()):
            raise UsageError(f"{self.name}: weights for a Hugging Face folder model are another save_pretrained "
                             f"folder of {self.source}; {source} is not one")
        import transformers

        # The folder's own class where transformers has it (DeiT with and without teacher share a model_type).
        cls = getattr(transformers, self.architecture, None) or transformers.AutoModelForImageClassification
        try:
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                model, info = cls.from_pretrained(
                    str(source), local_files_only=True, attn_implementation="eager", output_loading_info=True)
        except Exception as exc:  # transformers raises OSError/ValueError/RuntimeError for folders it cannot load
            raise WeightsError(f"transformers cannot load {source}: {type(exc).__name__}: {exc}") from None
        missing, wrong = list(info.get("missing_keys") or []), list(info.get("mismatched_keys") or [])
        if missing or wrong:  # a checkpoint that does not fit its own config is never run half-random
            raise WeightsError(f"{source} does not fit {self.name}: {len(missing)} weights missing "
                               f"{sorted(missing)[:3]}, {len(wrong)} of another shape {wrong[:3]}")
        if int(model.config.num_labels) != self.num_classes:
            raise WeightsError(f"{source} has {model.config.num_labels} classes; {self.name} has {self.num_classes}")
        module = logits_only(model.eval(), self.flip_channels)
        module.pocketformer_weights = {"source": "checkpoint", "path": str(source),
                                       "loaded": len(model.state_dict()), "randomly_initialised": []}
        return module

    def describe(self) -> dict[str, Any]:
        described = super().describe()
        if self.flip_channels:
            described["channel_order"] = ("the exported model takes RGB and flips it to BGR inside (the folder's "
                                          "do_flip_channel_order)")
        if self.preprocessing_note:
            described["preprocessing_note"] = self.preprocessing_note
        return described


def logits_only(model, flip_channels: bool):
    """`model` taking `pixel_values` and returning its logits tensor (no ModelOutput), RGB->BGR first if asked."""
    import torch

    class LogitsOnly(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.flip_channels = flip_channels

        def forward(self, pixel_values):
            if self.flip_channels:  # the processor's flip, in the graph: runtimes are fed RGB like every zoo model
                pixel_values = torch.flip(pixel_values, dims=[1])
            return self.model(pixel_values=pixel_values).logits

    return LogitsOnly().eval()


def vision_spec(path: Path, config, architecture: str, labels: list[str], name: str) -> HfVisionSpec:
    """The spec of a Hugging Face image classifier folder (`config`: its AutoConfig, `labels`: from id2label)."""
    # MobileViT is convolutional around its attention and takes any size; ViT and DeiT only their config's.
    fixed = None if HF_VISION[architecture] == "mobilevit" else getattr(config, "image_size", None)
    prep, flip, note = folder_preprocessing(path, fixed)
    weights = next((path / f for f in ("model.safetensors", "pytorch_model.bin") if (path / f).is_file()), None)
    if weights is None:
        raise WeightsError(f"{path} has no weights: expected model.safetensors or pytorch_model.bin")
    return HfVisionSpec(name=name, family=HF_VISION[architecture], num_classes=len(labels),
                        label_names=tuple(labels), image_prep=prep, flip_channels=flip, architecture=architecture,
                        preprocessing_note=note,
                        default_weights=str(weights), folder=str(path.resolve()),
                        source=f"Hugging Face folder {path} ({architecture})")


def _size(size, key: str):
    value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    return int(value) if value is not None else None


def folder_preprocessing(path: Path, image_size: int | None) -> tuple[dict[str, Any], bool, str | None]:
    """(the zoo's preprocessing dict, flip RGB->BGR in the graph, a note on what differs) from the folder's
    preprocessor_config.json; a UsageError naming the field it cannot honour. `image_size`: the one input size
    the model takes (ViT, DeiT: position embeddings of that grid), None when any size goes (MobileViT)."""
    config_file = path / "preprocessor_config.json"
    if not config_file.is_file():
        raise UsageError(f"{path} has no preprocessor_config.json: save the model's image processor beside it "
                         f"(processor.save_pretrained({str(path)!r}))")
    from transformers import AutoImageProcessor

    try:
        proc = AutoImageProcessor.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # transformers raises ValueError/OSError/KeyError for configs it cannot read
        raise UsageError(f"transformers cannot read {config_file}: {type(exc).__name__}: {exc}") from None

    def refuse(field_name: str, why: str) -> UsageError:
        return UsageError(f"{config_file}: {field_name} {why}; the exported model's preprocessing (shared by the "
                          f"SDK, device_runtime and the Android core) cannot honour it")

    if not getattr(proc, "do_resize", True):
        raise refuse("do_resize", "is false (images of any size)")
    resample = getattr(proc, "resample", 3)
    resample = int(getattr(resample, "value", resample))
    if resample not in RESAMPLE:
        raise refuse("resample", f"is {resample} (only 2, bilinear, and 3, bicubic, are supported)")
    if getattr(proc, "do_pad", False):
        raise refuse("do_pad", "is true")
    size, crop = proc.size, getattr(proc, "crop_size", None)
    do_crop = bool(getattr(proc, "do_center_crop", False)) and crop is not None
    crop_hw = (_size(crop, "height"), _size(crop, "width")) if do_crop else None
    note = None
    if _size(size, "shortest_edge") and not _size(size, "longest_edge"):
        short = _size(size, "shortest_edge")
        if crop_hw is None:
            raise refuse("do_center_crop", f"is false with size.shortest_edge {short} (the input size would "
                                           "depend on each image)")
    elif _size(size, "height") and _size(size, "width"):
        height, width = _size(size, "height"), _size(size, "width")
        if height != width:
            raise refuse("size", f"stretches images to {height}x{width} (not square)")
        short, crop_hw = height, crop_hw or (height, width)
        note = (f"the folder's processor stretches each image to {height}x{width}"
                f"{f' and centre-crops {crop_hw[0]}x{crop_hw[1]}' if do_crop else ''}; exports resize the short "
                f"side to {height} and centre-crop {crop_hw[0]}x{crop_hw[1]} (keeping the aspect ratio): the same "
                "on square images, a centre crop instead of the squeezed whole image on others")
    else:
        raise refuse("size", f"is {size} (expected shortest_edge, or height and width)")
    if None in crop_hw or max(crop_hw) > short:
        raise refuse("crop_size", f"{crop_hw} is larger than the resized image ({short})")
    if image_size is not None and tuple(crop_hw) != (int(image_size), int(image_size)):
        raise refuse("crop_size" if do_crop else "size", f"gives {crop_hw[0]}x{crop_hw[1]} images; the model "
                                                         f"takes {image_size}x{image_size} (config.json image_size)")
    # The largest crop_pct whose floor(min(crop)/crop_pct) is exactly the short side (a plain division can land
    # a rounding step below it, and the image would be resized one pixel short).
    crop_pct = min(crop_hw) / short
    while math.floor(min(crop_hw) / crop_pct) < short:
        crop_pct = math.nextafter(crop_pct, 0.0)
    factor = float(getattr(proc, "rescale_factor", 1 / 255)) if getattr(proc, "do_rescale", True) else 1.0
    if getattr(proc, "do_normalize", False):
        mean, std = [float(v) for v in proc.image_mean], [float(v) for v in proc.image_std]
        if len(mean) != 3 or len(std) != 3:
            raise refuse("image_mean/image_std", f"are {mean}/{std} (3 values each expected)")
    else:
        mean, std = [0.0] * 3, [1.0] * 3
    scale = 255.0 * factor  # the zoo scales by 1/255 first: fold the folder's own factor into mean and std
    if not math.isclose(scale, 1.0, rel_tol=1e-9):
        mean, std = [m / scale for m in mean], [s / scale for s in std]
    prep = {"size": [crop_hw[0], crop_hw[1]], "crop_pct": crop_pct, "interpolation": RESAMPLE[resample],
            "mean": mean, "std": std}
    return prep, bool(getattr(proc, "do_flip_channel_order", False)), note
