"""The Core ML package's interface: its input types (tensors, flexible sequence lengths, RGB images normalised
inside the model), the descriptions an app developer sees in Xcode, and Pocketformer's metadata keys.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np

from converters.coreml.toolchain import mil_dtype
from device_runtime.backends.coreml import META_COMPUTE_UNITS, META_INPUTS, META_LABELS, META_PREFIX

FLEX_ENUMERATED, FLEX_RANGE = "enumerated", "range"  # `--seq-lens` kinds: EnumeratedShapes or a RangeDim


class ImageNormalize:
    """For `--image-input`: Core ML's ImageType computes `scale * pixel + bias` with one scale for all
    channels. With per-channel std we pick scale = 1/(255*s) (s the mean std), bias = -mean/s, and finish
    with a constant per-channel multiply s/std_c inside the model: exact normalisation either way."""

    @staticmethod
    def scale_bias(prep) -> dict[str, Any]:
        mean = [float(m) for m in prep["mean"]]
        std = [float(s) for s in prep["std"]]
        ref = float(np.mean(std))
        factors = None if max(std) - min(std) < 1e-9 else [ref / s for s in std]
        return {"scale": 1.0 / (255.0 * ref), "bias": [-m / ref for m in mean], "channel_factors": factors}

    @classmethod
    def wrap(cls, module, prep):
        import torch

        factors = cls.scale_bias(prep)["channel_factors"]
        if factors is None:
            return module

        class ChannelScale(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner
                self.register_buffer("factors", torch.tensor(factors, dtype=torch.float32).view(1, -1, 1, 1))

            def forward(self, pixel_values):
                return self.inner(pixel_values * self.factors)

        return ChannelScale(module).eval()


def input_types(ct, spec, prep, image_input, flex, flex_axes):
    """The coremltools input types: tensors (int32 ids, flexible sequence axes when asked) or RGB images."""
    types = []
    for s in spec.input_specs():
        if image_input:
            info = ImageNormalize.scale_bias(prep)
            types.append(ct.ImageType(name=s.name, shape=s.shape, scale=info["scale"], bias=info["bias"],
                                      color_layout=ct.colorlayout.RGB, channel_first=True))
            continue
        shape: Any = s.shape
        if flex and s.name in flex_axes:
            kind, lengths = flex
            axes = flex_axes[s.name]
            if kind == FLEX_ENUMERATED:
                shapes = [tuple(n if i in axes else d for i, d in enumerate(s.shape)) for n in lengths]
                shape = ct.EnumeratedShapes(shapes=shapes, default=tuple(s.shape))
            else:
                shape = ct.Shape(tuple(ct.RangeDim(lengths[0], lengths[1], default=d) if i in axes else d
                                       for i, d in enumerate(s.shape)))
        types.append(ct.TensorType(name=s.name, shape=shape, dtype=np.dtype(mil_dtype(s.dtype)).type))
    return types


def image_details(prep):
    """How `--image-input` normalises (for details.io in the report)."""
    info = ImageNormalize.scale_bias(prep)
    return {"color_layout": "RGB", "scale": info["scale"], "bias": info["bias"],
            "in_model_channel_factors": info["channel_factors"],
            "note": "Core ML computes scale*pixel + bias (one scale for all channels); per-channel std is "
                    "finished by a constant multiply inside the model" if info["channel_factors"] else
                    "Core ML's scale*pixel + bias reproduces the mean/std normalisation exactly"}


def describe_input(s, prep, image_input) -> str:
    shape = "x".join(str(d) for d in s.shape)
    if prep.get("kind") == "image":
        from models_zoo.data import describe_resize

        # Core ML's image input takes the crop itself: the app resizes (short side or stretch) as described.
        if image_input:
            return (f"RGB image {s.shape[-1]}x{s.shape[-2]} ({describe_resize(prep)}); normalised inside the "
                    f"model with mean {prep['mean']} and std {prep['std']}")
        return (f"float32 [{shape}] NCHW image, RGB scaled to [0, 1] then normalised with mean {prep['mean']} "
                f"and std {prep['std']} ({describe_resize(prep)}, {prep['interpolation']})")
    texts = {"input_ids": "WordPiece token ids (bert-base-uncased vocabulary, lower-cased), padded with 0",
             "attention_mask": "1 for real tokens, 0 for padding",
             "token_type_ids": "segment ids: 0 for the first sentence, 1 for the second"}
    return f"{texts.get(s.name, s.name)}; {mil_dtype(s.dtype)} [{shape}]"


def describe_output(name, labels) -> str:
    if name == "logits" and labels:
        preview = ", ".join(labels[:3])
        return (f"unnormalised scores over {len(labels)} classes ({preview}, ...); class names in the metadata "
                f"key '{META_PREFIX}{META_LABELS}' (JSON list, in output order)")
    return f"{name} (float32)"


def set_metadata(mlmodel, spec, precision, compress, units, module, prep, image_input):
    """Author, license, descriptions and the Pocketformer keys (read back by device_runtime.backends.coreml)."""
    from importlib import metadata

    try:
        version = metadata.version("pocketformer")
    except metadata.PackageNotFoundError:
        version = "unknown"
    weights = getattr(module, "pocketformer_weights", {}) or {}
    source = weights.get("source", "unknown")
    labels = spec.labels()
    mlmodel.author = f"Pocketformer {version}"
    mlmodel.license = ("Apache-2.0 (architecture code: timm / transformers). Weights: " +
                       ("random initialisation, not a trained model" if source == "random" else
                        f"from {weights.get('path', 'a local checkpoint')}, under that checkpoint's license"))
    mlmodel.short_description = (
        f"{spec.name}: {spec.family} {spec.task}, exported by Pocketformer ({precision}"
        f"{', ' + compress if compress else ''})" +
        (". WARNING: random weights, outputs are not meaningful predictions" if source == "random" else ""))
    mlmodel.version = version
    for s in spec.input_specs():
        mlmodel.input_description[s.name] = describe_input(s, prep, image_input)
    for name in spec.output_names:
        mlmodel.output_description[name] = describe_output(name, labels)
    meta = {
        "model": spec.name, "family": spec.family, "task": spec.task, "precision": precision,
        "compress": compress or "", META_COMPUTE_UNITS: units.upper(), "image_input": str(bool(image_input)),
        META_INPUTS: json.dumps([s.to_dict() for s in spec.input_specs()]),
        "outputs": json.dumps(list(spec.output_names)),
        "preprocessing": json.dumps(prep), "weights": json.dumps(weights, default=str),
    }
    if labels:
        meta[META_LABELS] = json.dumps(labels)
    for key, value in meta.items():
        mlmodel.user_defined_metadata[META_PREFIX + key] = value
