"""What a model needs for export: the `ModelSpec` base, its input spec, tolerances and the registry.

A family file subclasses `ModelSpec` (how to build, preprocess and sample that family) and registers one
small function per variant with `@register_model`; the function's `__name__` is the model's name.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np


class UnknownModelError(KeyError):
    """A model name that is not in the zoo."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0])


class WeightsError(ValueError):
    """A weights file that is missing, unreadable or does not fit the model."""


@dataclass(frozen=True)
class InputSpec:
    """One model input. `dynamic_axes` maps an axis to a symbolic name for formats that can vary it."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name, so the device side needs no torch
    dynamic_axes: dict[int, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype,
                "dynamic_axes": {str(k): v for k, v in self.dynamic_axes.items()}}


@dataclass(frozen=True)
class Tolerance:
    """What an export must meet on the real sample inputs.

    `atol` bounds the artifact against its own PyTorch reference (the quantized model for int8);
    `min_sqnr_db` bounds a quantized artifact against the fp32 model.
    """

    atol: float
    min_sqnr_db: float | None = None


@dataclass(frozen=True)
class ModelSpec:
    """Base of every family's spec. Subclasses implement `_build`, `input_specs`, `_sample_feeds`."""

    name: str
    family: str  # the paper's model family: mobilevit, efficientformer, tinybert, q8bert, ...
    task: str
    output_names: tuple[str, ...]
    tolerances: dict[str, Tolerance]
    default_precision: str = "fp32"
    # What plain "int8" means for this family: static (calibrated activations) or dynamic (linear layers).
    int8_scheme: str = "static"
    labels_source: str | None = None
    tiny_overrides: dict[str, Any] | None = None
    is_tiny: bool = False

    # -- variants -------------------------------------------------------------------------------
    def tiny(self) -> "ModelSpec":
        """The same architecture code with small dims, for tests and quick trials."""
        if self.tiny_overrides is None:
            raise ValueError(f"model {self.name!r} has no tiny variant")
        if self.is_tiny:
            return self
        return dataclasses.replace(self, name=f"{self.name}-tiny", is_tiny=True, **self.tiny_overrides)

    # -- building -------------------------------------------------------------------------------
    def build(self, weights: str | None = None, seed: int = 0):
        """The eval-mode PyTorch module: weights from a local checkpoint, or a seeded random init."""
        import torch

        from models_zoo import weights as weights_io

        with torch.random.fork_rng():
            torch.manual_seed(seed)
            module = self._build()
        if weights is None:
            module.pocketformer_weights = {"source": "random", "seed": seed,
                                           "warning": "weights are random: outputs are not meaningful predictions"}
        else:
            module.pocketformer_weights = {"source": "checkpoint", **weights_io.load_into(module, weights, self)}
        return module.eval()

    def _build(self):
        raise NotImplementedError

    # -- inputs ---------------------------------------------------------------------------------
    def input_specs(self) -> tuple[InputSpec, ...]:
        raise NotImplementedError

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.input_specs())

    def sample_inputs(self) -> list[dict[str, np.ndarray]]:
        """Feeds built from real data (photos, sentences), one dict per sample, batch 1 each."""
        feeds = self._sample_feeds()
        for feed in feeds:
            self.check_feed(feed)
        return feeds

    def _sample_feeds(self) -> list[dict[str, np.ndarray]]:
        raise NotImplementedError

    def calibration_inputs(self) -> list[dict[str, np.ndarray]]:
        """Real feeds for int8 calibration, kept apart from `sample_inputs` (which verify), so a quantized
        artifact is never judged on the inputs it was calibrated on."""
        return self.sample_inputs()

    def feeds_from(self, path: str) -> list[dict[str, np.ndarray]]:
        """Feeds from the user's own data: a folder of images, or a text file with one sentence a line."""
        from pathlib import Path

        from models_zoo.data import IMAGE_SUFFIXES, preprocess_image, tokenize

        prep, path = self.preprocessing(), Path(path)
        if prep["kind"] == "image":
            if not path.is_dir():
                raise ValueError(f"calibration for {self.name} is a folder of images; {path} is not a folder")
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            feeds = [{self.input_names[0]: preprocess_image(p, prep)} for p in files]
        else:
            if not path.is_file():
                raise ValueError(f"calibration for {self.name} is a text file, one sentence a line; {path} is not a file")
            lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            feeds = [tokenize(line, prep) for line in lines]
        if not feeds:
            raise ValueError(f"no calibration data in {path}")
        for feed in feeds:
            self.check_feed(feed)
        return feeds

    def check_feed(self, feed: dict[str, np.ndarray]) -> None:
        for spec in self.input_specs():
            arr = feed[spec.name]
            if tuple(arr.shape) != spec.shape or arr.dtype != np.dtype(spec.dtype):
                raise AssertionError(f"{self.name}: sample {spec.name} is {arr.dtype}{list(arr.shape)}, "
                                     f"spec says {spec.dtype}{list(spec.shape)}")

    def preprocessing(self) -> dict[str, Any]:
        """How raw data becomes a feed, as plain data so the device side can do it without torch."""
        raise NotImplementedError

    def labels(self) -> list[str] | None:
        return None

    def tolerance(self, precision: str) -> Tolerance:
        if precision in self.tolerances:
            return self.tolerances[precision]
        return self.tolerances["int8" if precision.startswith("int8") else precision]

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            "task": self.task,
            "inputs": [s.to_dict() for s in self.input_specs()],
            "outputs": list(self.output_names),
            "default_precision": self.default_precision,
            "int8_scheme": self.int8_scheme,
            "preprocessing": self.preprocessing(),
        }


_REGISTRY: dict[str, Callable[[str], ModelSpec]] = {}


def register_model(fn: Callable[[str], ModelSpec]) -> Callable[[str], ModelSpec]:
    """Register a variant; its name is the function's name (passed to it), never typed twice."""
    name = fn.__name__
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} registered twice")
    _REGISTRY[name] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def family_representatives() -> list[str]:
    """One registered model per family (its first variant by name): for matrices that need each family once."""
    seen: dict[str, str] = {}
    for name in list_models():
        seen.setdefault(get_model(name).family, name)
    return sorted(seen.values())


def get_model(name: str, tiny: bool = False) -> ModelSpec:
    """The spec of a zoo model; `name-tiny` or `tiny=True` gives its tiny variant."""
    base, _, suffix = name.partition("-")
    if suffix == "tiny":
        name, tiny = base, True
    if name not in _REGISTRY:
        raise UnknownModelError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    spec = _REGISTRY[name](name)
    return spec.tiny() if tiny else spec
