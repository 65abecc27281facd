"""Hugging Face image models saved with `save_pretrained` (MobileViT, DeiT, ViT) as the user's own model.

`models_zoo.user_models` reads the folder's `config.json` and calls `vision_spec` when its architecture is one of
`HF_VISION`. The model is transformers' own class built from the folder (the config's architecture, else
`AutoModelForImageClassification`; `.from_pretrained(path, local_files_only=True)`, eager attention so exports
and FLOP counts see every matmul: DESIGN.md §2), wrapped to take `pixel_values` and return one tensor. The export
recipe is the zoo's vision family's: its tolerances and int8-static scheme.

- Classifiers (`...ForImageClassification`): the logits, with the labels of `id2label`.
- Bare encoders (`MobileViTModel`, `ViTModel`, `DeiTModel`): the image embedding (`image_embedding`, task
  "image-embedding", no labels, judged like the sentence embedders: error, SQNR and cosine). Which embedding:
  MobileViT's pooler_output (the global average pool of its last feature map; the mean of the map the folder
  has when it was saved without the expansion conv); ViT's and DeiT's pooler_output (dense + tanh on the class
  token) when the folder carries the pooler's weights, else the class token's final hidden state after the
  last LayerNorm. The pooler is what `model(...).pooler_output` gives that folder's user (a checkpoint with a
  trained pre-logits pooler, such as ViT's in21k ones), while folders saved without one (DINO's, and any backbone
  taken from a classifier) are used through the class token: the feature their classifier heads read, and
  transformers would fill a missing pooler with random weights.

The folder's `preprocessor_config.json` (read with `AutoImageProcessor`, so each processor class's defaults
apply) becomes the zoo's image preprocessing (size, crop_pct, interpolation, mean, std, and `resize`: the one
`models_zoo.data.preprocess_image` and the Android core apply, the SDK and `pocketformer run` on the device
alike), exactly:

- `size.shortest_edge` S with `crop_size` (h, w): resize the short side to S, centre-crop: crop_pct = min(h, w)/S.
- `size` {height: H, width: W} (ViT, DeiT) stretches the image to HxW, aspect ratio not kept: `resize` "stretch",
  each side to its size/crop_pct, then the centre crop of `crop_size` (h, w) where `do_center_crop` (crop_pct
  = h/H, which must also give w/W: a crop that is another fraction of each side is refused).
- `rescale_factor` f and `image_mean`/`image_std` (m, s) fold into the zoo's mean/std: (x*f - m)/s equals
  (x/255 - m/(255 f)) / (s/(255 f)); no `do_normalize` is m=0, s=1; no `do_rescale` is f=1.
- transformers truncates where the zoo rounds (the short-side resize's long side, the crop's offset): `rounding`
  "floor" makes the shared preprocessing do the same, so the tensor is the folder's processor's, pixel for pixel.
- `do_flip_channel_order` (MobileViT: the model was trained on BGR) is done inside the exported graph, first
  thing: every runtime is fed RGB as for every other zoo model, and the network still sees BGR.

Anything else it cannot honour (`do_resize` false, a resampling filter other than bilinear/bicubic, a crop larger
than the resize, `do_pad`, a crop that does not match the model's `image_size`) is refused with a UsageError naming the field, before any work.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from device_runtime.errors import UsageError
from models_zoo.errors import WeightsError
from models_zoo.spec import InputSpec, ModelSpec, Tolerance
from models_zoo.timm_vision import VISION_TOLERANCES, PhotoFeeds

# Hugging Face image architectures and the zoo family whose recipe fits each.
HF_VISION = {"MobileViTForImageClassification": "mobilevit", "DeiTForImageClassification": "deit",
             "DeiTForImageClassificationWithTeacher": "deit", "ViTForImageClassification": "vit",
             "MobileViTModel": "mobilevit", "ViTModel": "vit", "DeiTModel": "deit"}
# The bare encoders among them: exported as image embedders.
HF_VISION_ENCODERS = ("MobileViTModel", "ViTModel", "DeiTModel")
# PIL's resampling codes (what preprocessor_config.json stores) for the filters the shared preprocessing has.
RESAMPLE = {2: "bilinear", 3: "bicubic"}

# An embedding is judged as the sentence embedders are (models_zoo.minilm): error relative to its scale, and,
# when quantized, SQNR and cosine vs fp32 (top-1 means nothing without classes). fp32/fp16 are the vision
# families' relative bounds. int8 (static, calibrated on the 8 calibration photos, judged on the 6 others) vs
# fp32, measured on the tiny He-init encoders of tests/test_hf_image_folders.py, ONNX / TFLite: ViT (class token)
# 26.2 / 27.7 dB, cosine 0.9988 / 0.9992; ViT (pooler) 23.1 / 26.2 dB, 0.9975 / 0.9988; DeiT 22.3 / 23.8 dB,
# 0.9971 / 0.9979. The vision families' 15 dB floor stays, with the cosine that goes with it (15 dB is about
# cosine 0.984): 0.98. MobileViT quantizes worst (see models_zoo.mobilevit): its tiny encoder fails int8 here,
# 7.9 / 5.7 dB (cosine 0.92 / 0.86) with that init, 14.4 / 17.1 dB (0.99) with linear-gain He init; the export
# says so and keeps nothing, as for the classifiers.
EMBEDDING_TOLERANCES = {
    "fp32": VISION_TOLERANCES["fp32"],
    "fp16": VISION_TOLERANCES["fp16"],
    "int8": Tolerance(atol=1e-3, rtol=0.3, min_sqnr_db=15.0, min_cosine=0.98),
    "int4-weight": Tolerance(atol=1e-3, rtol=0.4, min_sqnr_db=12.0, min_cosine=0.95),
}


@dataclass(frozen=True)
class HfVisionSpec(PhotoFeeds, ModelSpec):
    task: str = "image-classification"
    output_names: tuple[str, ...] = ("logits",)
    tolerances: dict = field(default_factory=lambda: dict(VISION_TOLERANCES))
    num_classes: int = 0
    # The folder's preprocessing in the zoo's representation (`preprocessing()`).
    image_prep: dict[str, Any] = field(default_factory=dict)
    flip_channels: bool = False
    architecture: str = ""  # config.json's: the class built (Auto would build DeiT's without the teacher head)

    def input_specs(self) -> tuple[InputSpec, ...]:
        height, width = self.image_prep["size"]
        return (InputSpec("pixel_values", (1, 3, height, width), "float32"),)

    def preprocessing(self) -> dict[str, Any]:
        return {"kind": "image", **{k: (list(v) if isinstance(v, (list, tuple)) else v)
                                    for k, v in self.image_prep.items()}}

    def _load_kwargs(self) -> dict[str, Any]:
        return {}

    def _check(self, model, source: Path) -> None:
        if int(model.config.num_labels) != self.num_classes:
            raise WeightsError(f"{source} has {model.config.num_labels} classes; {self.name} has {self.num_classes}")

    def _wrap(self, model):
        return single_output(model, self.flip_channels, "logits")

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
                    str(source), local_files_only=True, attn_implementation="eager", output_loading_info=True,
                    **self._load_kwargs())
        except Exception as exc:  # transformers raises OSError/ValueError/RuntimeError for folders it cannot load
            raise WeightsError(f"transformers cannot load {source}: {type(exc).__name__}: {exc}") from None
        missing, wrong = list(info.get("missing_keys") or []), list(info.get("mismatched_keys") or [])
        if missing or wrong:  # a checkpoint that does not fit its own config is never run half-random
            raise WeightsError(f"{source} does not fit {self.name}: {len(missing)} weights missing "
                               f"{sorted(missing)[:3]}, {len(wrong)} of another shape {wrong[:3]}")
        self._check(model, source)
        module = self._wrap(model.eval())
        module.pocketformer_weights = {"source": "checkpoint", "path": str(source),
                                       "loaded": len(model.state_dict()), "randomly_initialised": []}
        return module

    def describe(self) -> dict[str, Any]:
        described = super().describe()
        if self.flip_channels:
            described["channel_order"] = ("the exported model takes RGB and flips it to BGR inside (the folder's "
                                          "do_flip_channel_order)")
        return described


@dataclass(frozen=True)
class HfVisionEmbeddingSpec(HfVisionSpec):
    """A bare image encoder whose output is one embedding per image, shape (1, width): see the module docstring."""
    task: str = "image-embedding"
    output_names: tuple[str, ...] = ("image_embedding",)
    tolerances: dict = field(default_factory=lambda: dict(EMBEDDING_TOLERANCES))
    pooling: str = "pooler"  # "pooler": transformers' pooler_output; "cls": the class token after the LayerNorm
    has_expansion: bool = True  # MobileViT: saved with its 1x1 expansion conv (transformers' expand_output)

    def _load_kwargs(self) -> dict[str, Any]:
        if self.family == "mobilevit":
            return {"expand_output": self.has_expansion}
        return {"add_pooling_layer": self.pooling == "pooler"}

    def _check(self, model, source: Path) -> None:
        pass  # no head to check: the weights' own shapes were checked against the config

    def _wrap(self, model):
        return single_output(model, self.flip_channels, "mean" if self.family == "mobilevit" else self.pooling)

    def labels(self) -> list[str] | None:
        return None

    def describe(self) -> dict[str, Any]:
        pooling = {"pooler": "the pooler's output (dense + tanh on the class token)",
                   "cls": "the class token's final hidden state (after the last LayerNorm)",
                   "mean": "the global average pool of the last feature map"}
        return {**super().describe(), "pooling": pooling["mean" if self.family == "mobilevit" else self.pooling]}


def single_output(model, flip_channels: bool, output: str):
    """`model` taking `pixel_values` and returning one tensor (no ModelOutput), RGB->BGR first if asked:
    `output` "logits", "pooler" (pooler_output), "cls" (last_hidden_state's first token) or "mean" (the spatial
    mean of a feature map (N, C, H, W): MobileViT's pooler_output, also without its expansion conv)."""
    import torch

    class SingleOutput(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.flip_channels = flip_channels

        def forward(self, pixel_values):
            if self.flip_channels:  # the processor's flip, in the graph: runtimes are fed RGB like every zoo model
                pixel_values = torch.flip(pixel_values, dims=[1])
            out = self.model(pixel_values=pixel_values)
            if output == "logits":
                return out.logits
            if output == "pooler":
                return out.pooler_output
            if output == "cls":
                return out.last_hidden_state[:, 0]
            return out.last_hidden_state.mean(dim=(-2, -1))

    return SingleOutput().eval()


def vision_spec(path: Path, config, architecture: str, labels: list[str], name: str) -> HfVisionSpec:
    """The spec of a Hugging Face image folder (`config`: its AutoConfig, `labels`: from id2label, unused for a
    bare encoder)."""
    # MobileViT is convolutional around its attention and takes any size; ViT and DeiT only their config's.
    fixed = None if HF_VISION[architecture] == "mobilevit" else getattr(config, "image_size", None)
    prep, flip = folder_preprocessing(path, fixed)
    weights = next((path / f for f in ("model.safetensors", "pytorch_model.bin") if (path / f).is_file()), None)
    if weights is None:
        raise WeightsError(f"{path} has no weights: expected model.safetensors or pytorch_model.bin")
    common = dict(name=name, family=HF_VISION[architecture], image_prep=prep, flip_channels=flip,
                  architecture=architecture, default_weights=str(weights), folder=str(path.resolve()),
                  source=f"Hugging Face folder {path} ({architecture})")
    if architecture not in HF_VISION_ENCODERS:
        return HfVisionSpec(num_classes=len(labels), label_names=tuple(labels), **common)
    from models_zoo.weights import checkpoint_shapes

    keys = checkpoint_shapes(weights)
    pooler = any(k == "pooler.dense.weight" or k.endswith(".pooler.dense.weight") for k in keys)
    expansion = any(k.startswith("conv_1x1_exp.") or ".conv_1x1_exp." in k for k in keys)
    return HfVisionEmbeddingSpec(pooling="pooler" if pooler else "cls", has_expansion=expansion, **common)


def _size(size, key: str):
    value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    return int(value) if value is not None else None


def _crop_pct(crop_hw: tuple[int, int], resized_hw: tuple[int, int]) -> float | None:
    """The largest crop_pct whose floor(crop/crop_pct) is exactly the resized size on both axes (a plain division
    can land a rounding step below it, and the image would be resized one pixel short), or None if none is."""
    crop_pct = crop_hw[0] / resized_hw[0]
    while math.floor(crop_hw[0] / crop_pct) < resized_hw[0]:
        crop_pct = math.nextafter(crop_pct, 0.0)
    fits = all(math.floor(c / crop_pct) == r for c, r in zip(crop_hw, resized_hw))
    return crop_pct if fits else None


def folder_preprocessing(path: Path, image_size) -> tuple[dict[str, Any], bool]:
    """(the zoo's preprocessing dict, flip RGB->BGR in the graph) from the folder's preprocessor_config.json; a
    UsageError naming the field it cannot honour. `image_size`: the one input size the model takes (ViT, DeiT:
    position embeddings of that grid; an int or (height, width)), None when any size goes (MobileViT)."""
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
    if do_crop and None in crop_hw:
        raise refuse("crop_size", f"is {crop} (expected height and width)")
    resize: dict[str, Any] = {}
    if _size(size, "shortest_edge") and not _size(size, "longest_edge"):
        short = _size(size, "shortest_edge")
        if crop_hw is None:
            raise refuse("do_center_crop", f"is false with size.shortest_edge {short} (the input size would "
                                           "depend on each image)")
        if max(crop_hw) > short:
            raise refuse("crop_size", f"{crop_hw} is larger than the resized image ({short})")
        crop_pct = _crop_pct((min(crop_hw),), (short,))
    elif _size(size, "height") and _size(size, "width"):
        resized = (_size(size, "height"), _size(size, "width"))
        crop_hw = crop_hw or resized
        if crop_hw[0] > resized[0] or crop_hw[1] > resized[1]:
            raise refuse("crop_size", f"{crop_hw} is larger than the resized image {resized}")
        crop_pct = _crop_pct(crop_hw, resized)
        if crop_pct is None:
            raise refuse("crop_size", f"{crop_hw[0]}x{crop_hw[1]} is not the same fraction of both sides of the "
                                      f"{resized[0]}x{resized[1]} stretch")
        resize = {"resize": "stretch"}
    else:
        raise refuse("size", f"is {size} (expected shortest_edge, or height and width)")
    if image_size is not None:
        model_hw = tuple(int(v) for v in image_size) if isinstance(image_size, (list, tuple)) else (
            int(image_size), int(image_size))
        if tuple(crop_hw) != model_hw:
            raise refuse("crop_size" if do_crop else "size", f"gives {crop_hw[0]}x{crop_hw[1]} images; the model "
                                                             f"takes {model_hw[0]}x{model_hw[1]} (config.json "
                                                             "image_size)")
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
            "mean": mean, "std": std, **resize, "rounding": "floor"}  # transformers' int() and // 2
    return prep, bool(getattr(proc, "do_flip_channel_order", False))
