"""What a model needs for export: the `ModelSpec` base, its input spec, tolerances and the registry.

A family file subclasses `ModelSpec` (how to build, preprocess and sample that family) and registers one
small function per variant with `@register_model`; the function's `__name__` is the model's name.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from device_runtime.errors import UsageError
from models_zoo import weights as weights_io
from models_zoo.errors import UnknownModelError, WeightsError  # noqa: F401  (re-exported)
from models_zoo.precision import Precision, resolve


@dataclass(frozen=True)
class InputSpec:
    """One model input. `dynamic_axes` maps an axis to a symbolic name for formats that can vary it.

    `value_range` is the inclusive `(min, max)` an integer input may hold (token ids `(0, vocab_size - 1)`,
    token types `(0, type_vocab_size - 1)`, a mask `(0, 1)`), or None. Exports record it in the artifact's
    metadata and the manifest, and `device_runtime` checks feeds against it before the native runtime runs.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name, so the device side needs no torch
    dynamic_axes: dict[int, str] = field(default_factory=dict)
    value_range: tuple[int, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype,
                "dynamic_axes": {str(k): v for k, v in self.dynamic_axes.items()},
                "value_range": list(self.value_range) if self.value_range is not None else None}


@dataclass(frozen=True)
class Tolerance:
    """What an export must meet on the real verification samples (`converters.parity.judge` applies it).

    Against the artifact's own PyTorch reference (the quantized model for int8), the max abs error must be
    within `atol` or within `rtol` times the reference's largest magnitude, whichever is larger: `rtol` is the
    bound for outputs whose scale varies across variants (logits of 10 vs embeddings of 0.1), `atol` a floor.
    A quantized artifact is also judged against the fp32 model: `min_sqnr_db`, and `min_cosine` (embeddings)
    and `min_top1` (classifiers: the fraction of samples whose arg-max agrees), which without quantization
    are judged against the reference instead.
    """

    atol: float
    min_sqnr_db: float | None = None
    rtol: float | None = None
    min_cosine: float | None = None
    min_top1: float | None = None


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
    # The user's own model (models_zoo.user_models): its label names, the checkpoint `build()` loads when given
    # none, where it came from, and what was changed to fit its checkpoint (a head of another size).
    label_names: tuple[str, ...] | None = None
    default_weights: str | None = None
    source: str | None = None
    folder: str | None = None  # the model folder the spec was read from (bundles and reports read it again)
    head_note: str | None = None

    # -- variants -------------------------------------------------------------------------------
    def tiny(self) -> "ModelSpec":
        """The same architecture code with small dims, for tests and quick trials."""
        if self.tiny_overrides is None:
            raise UsageError(f"model {self.name!r} has no tiny variant")
        if self.is_tiny:
            return self
        return dataclasses.replace(self, name=f"{self.name}-tiny", is_tiny=True, **self.tiny_overrides)

    # -- building -------------------------------------------------------------------------------
    def build(self, weights: str | None = None, seed: int = 0):
        """The eval-mode PyTorch module: weights from a local checkpoint, or a seeded random init."""
        import torch

        if weights is None and self.default_weights is not None and not self.is_tiny:
            weights = self.default_weights
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            module = self._build()
        if weights is None:
            module.pocketformer_weights = {"source": "random", "seed": seed,
                                           "warning": "weights are random: outputs are not meaningful predictions"}
        else:
            loaded = weights_io.load_into(module, weights, self.name, self.family)
            module.pocketformer_weights = {"source": "checkpoint", **loaded}
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
        """Real feeds for int8 calibration, disjoint from `sample_inputs` (which verify), so a quantized
        artifact is never judged on the inputs it was calibrated on."""
        feeds = self._calibration_feeds()
        for feed in feeds:
            self.check_feed(feed)
        return feeds

    def _calibration_feeds(self) -> list[dict[str, np.ndarray]]:
        # Every zoo family overrides this with data of its own (tests/test_zoo.py checks that the two sets are
        # disjoint for each registered model); an ad-hoc spec without calibration data calibrates on its samples.
        return self._sample_feeds()

    def feeds_from(self, path: str) -> list[dict[str, np.ndarray]]:
        """Feeds from the user's own data: a folder of images, or a text file with one sentence a line (a line
        with a tab in it is a sentence pair: the text before the first tab, then the text after it)."""
        from pathlib import Path

        from models_zoo.data import IMAGE_SUFFIXES, preprocess_image, tokenize

        prep, path = self.preprocessing(), Path(path)
        if prep["kind"] == "image":
            if not path.is_dir():
                raise UsageError(f"calibration for {self.name} is a folder of images; {path} is not a folder")
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            feeds = [{self.input_names[0]: preprocess_image(p, prep)} for p in files]
        else:
            if not path.is_file():
                raise UsageError(f"calibration for {self.name} is a text file, one sentence a line; {path} is not a file")
            lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            pairs = [line.split("\t", 1) for line in lines]
            feeds = [tokenize(p[0].strip(), prep, pair=p[1].strip()) if len(p) == 2 else tokenize(p[0], prep)
                     for p in pairs]
        if not feeds:
            raise UsageError(f"no calibration data in {path}")
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
        return list(self.label_names) if self.label_names else None

    def tolerance(self, precision: "str | Precision") -> Tolerance:
        """The tolerance that judges an export at `precision` (both int8 recipes share `int8`'s unless the
        spec names one of them)."""
        if str(precision) in self.tolerances:
            return self.tolerances[str(precision)]
        return self.tolerances[Precision.of(precision).tolerance_key]

    def resolve_precision(self, requested: "str | Precision | None", format_default: str | None = None) -> Precision:
        """The concrete precision of a request for this model (`int8` -> this family's int8 recipe)."""
        return resolve(requested, self.default_precision, self.int8_scheme, format_default)

    def variant_tags(self) -> tuple[str, ...]:
        """What makes this spec's inputs differ from its registered variant's, as short tags for folder names:
        `seq64` when a named dynamic axis (e.g. the BERT family's sequence) was set to 64."""
        try:
            registered = {s.name: s for s in get_model(self.name).input_specs()}
        except UnknownModelError:
            return ()
        tags = []
        for spec in self.input_specs():
            base = registered.get(spec.name)
            for axis, axis_name in sorted(spec.dynamic_axes.items()):
                if base is not None and axis < len(base.shape) and spec.shape[axis] != base.shape[axis]:
                    tag = f"{axis_name[:3]}{spec.shape[axis]}"
                    if tag not in tags:
                        tags.append(tag)
        return tuple(tags)

    def folder_key(self, precision: "str | Precision") -> str:
        """The export folder's name under `out/<model>/`: the requested precision and the variant tags, so
        exports that differ in what changes the artifact never share a folder (or its report.json)."""
        requested = precision.requested if isinstance(precision, Precision) else str(precision)
        return "-".join((requested, *self.variant_tags()))

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
            **({"source": self.source} if self.source else {}),
            **({"folder": self.folder} if self.folder else {}),
            **({"head": self.head_note} if self.head_note else {}),
        }


_REGISTRY: dict[str, Callable[[str], ModelSpec]] = {}
# Functions from a name to a spec (or None) asked before the registry: the user's own models. A hook rather than
# an import, so this module does not import the modules built on it.
_RESOLVERS: list[Callable[[str], "ModelSpec | None"]] = []


def register_resolver(resolve: Callable[[str], "ModelSpec | None"]) -> None:
    _RESOLVERS.append(resolve)


def register_model(fn: Callable[[str], ModelSpec]) -> Callable[[str], ModelSpec]:
    """Register a variant; its name is the function's name (passed to it), never typed twice."""
    name = fn.__name__
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} registered twice")
    _REGISTRY[name] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def family_representatives(prefer: Sequence[str] = ()) -> list[str]:
    """One registered model per family, for matrices that need each family once: the variant named in `prefer`
    where the family has one (a caller that already uses a variant elsewhere reuses its work), else the first
    variant by name."""
    seen: dict[str, str] = {}
    for name in [*prefer, *list_models()]:
        seen.setdefault(get_model(name).family, name)
    return sorted(seen.values())


def get_model(name: str, tiny: bool = False) -> ModelSpec:
    """The spec of a zoo model; `name-tiny` or `tiny=True` gives its tiny variant. A name some resolver knows
    (`register_resolver`: a Hugging Face or timm folder, `models_zoo.user_models`) is the user's own model."""
    for resolve in _RESOLVERS:
        spec = resolve(name)
        if spec is not None:
            return spec.tiny() if tiny else spec
    base, _, suffix = name.partition("-")
    if suffix == "tiny":
        name, tiny = base, True
    if name not in _REGISTRY:
        raise UnknownModelError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    spec = _REGISTRY[name](name)
    return spec.tiny() if tiny else spec
