"""Any `nn.Module` as the model: `spec_from_module(module, inputs=..., samples=...)` is a `ModelSpec`, so the
user's own Transformer goes through the export pipeline unchanged (`sdk.export(spec_from_module(...), ...)`).

- `inputs`: the names, shapes, dtypes and dynamic axes of the module's positional inputs, in order: a list of
  `InputSpec`, or of dicts `{"name", "shape", "dtype", "dynamic_axes"?, "value_range"?}`; or None, inferred
  from the first sample feed (names from its keys in order, shapes and dtypes from its arrays, no dynamic axes).
  Every sample must have exactly these shapes and dtypes (a dynamic axis only says which axis an artifact may
  vary, e.g. ONNX's `dynamic_shapes=True`; the samples are run at the declared shape).
- `samples`: the user's real feeds, batch 1 each: a list of dicts of numpy arrays (or torch tensors); or a
  folder of images, a text file with one sentence a line, or a list of raw items (paths, sentences), together
  with `preprocess` (a function from an image path or a sentence to a feed dict). They are split alternately
  into verification samples (0, 2, 4, ...: `sample_inputs`) and calibration samples (1, 3, 5, ...:
  `calibration_inputs`), held apart: at least 4 samples, no two identical, so a quantized artifact is never
  judged on what it was calibrated on.
- `task`: a name ending in "classification" ("image-classification", "text-classification") makes the module a
  classifier: its first output is (batch, classes), top-1 agreement is judged, and `labels` (optional) must
  name every class. Any other task ("embedding", "custom") is judged on error, SQNR and cosine only.
- Tolerances default by precision to the zoo's measured bounds: the BERT family's (`bert.BERT_TOLERANCES`) when
  an input is integer (token ids), else the vision families' (`timm_vision.VISION_TOLERANCES`, measured on
  4-D float images; also used for other float inputs). `tolerances={"int8": Tolerance(...)}` replaces any.
  Plain `int8` means int8-dynamic for token inputs (the BERT recipe) and int8-static (calibrated) otherwise,
  unless `int8_scheme` says.
- `build()` is a deep copy of the module as it was when the spec was made (a snapshot in eval mode: exports
  never mutate the user's module, nor does later training change what the spec describes), with
  `pocketformer_weights` = {"source": "module", "class", "state_dict_sha256"}; `build(weights=FILE)` loads a
  checkpoint into it (`weights.load_into`). `describe()` (the manifest's model section) adds the class, the
  state dict's hash and the samples' hash.

torch is imported inside functions only: importing `models_zoo` must not import it.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from device_runtime.errors import UsageError
from models_zoo import weights as weights_io
from models_zoo.bert import BERT_TOLERANCES
from models_zoo.data import IMAGE_SUFFIXES
from models_zoo.precision import INT8_SCHEMES
from models_zoo.spec import InputSpec, ModelSpec, Tolerance
from models_zoo.timm_vision import VISION_TOLERANCES

MIN_SAMPLES = 4  # two to verify and two to calibrate, held apart
FAMILY = "module"
# The keys `tolerances=` may set: the ones `ModelSpec.tolerance` looks up (an int8 recipe's own, else "int8").
TOLERANCE_KEYS = ("fp32", "fp16", "int8", "int8-static", "int8-dynamic", "int4-weight")
INPUT_KEYS = ("name", "shape", "dtype", "dynamic_axes", "value_range")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")

Feed = dict[str, np.ndarray]


class ModuleHeld:
    """What a `ModuleSpec` holds beyond plain data: the module's snapshot, its feeds and their hashes. Compared
    by identity and kept out of the spec's repr; `dataclasses.replace` passes it on unchanged."""

    def __init__(self, module, class_path: str, state_sha256: str, verification: list[Feed],
                 calibration: list[Feed], samples_sha256: str, samples_source: str,
                 preprocess: Callable[[Any], Any] | None) -> None:
        self.module = module
        self.class_path = class_path
        self.state_sha256 = state_sha256
        self.verification = verification
        self.calibration = calibration
        self.samples_sha256 = samples_sha256
        self.samples_source = samples_source
        self.preprocess = preprocess

    def __repr__(self) -> str:
        return (f"ModuleHeld({self.class_path}, {len(self.verification)} verification + "
                f"{len(self.calibration)} calibration samples)")


@dataclass(frozen=True)
class ModuleSpec(ModelSpec):
    """The spec of a user's `nn.Module` (see the module docstring); made by `spec_from_module`."""

    inputs: tuple[InputSpec, ...] = ()
    tolerance_defaults: str = ""  # where the default tolerances came from (describe() says)
    tolerance_overrides: tuple[str, ...] = ()
    held: ModuleHeld | None = field(default=None, compare=False, hash=False, repr=False)

    # -- building -------------------------------------------------------------------------------
    def build(self, weights: str | None = None, seed: int = 0):
        """A deep copy of the module's snapshot, in eval mode (`seed` is unused: the weights are the user's)."""
        module = copy.deepcopy(self._held.module).eval()
        info: dict[str, Any] = {"source": "module", "class": self._held.class_path,
                                "state_dict_sha256": self._held.state_sha256}
        if weights is not None:
            loaded = weights_io.load_into(module, weights, self.name)
            info = {"source": "checkpoint", **loaded, "class": self._held.class_path,
                    "state_dict_sha256": state_dict_sha256(module), "module_state_dict_sha256": self._held.state_sha256}
        module.pocketformer_weights = info
        return module

    def _build(self):  # build() never calls it
        return copy.deepcopy(self._held.module)

    @property
    def _held(self) -> ModuleHeld:
        if self.held is None:
            raise UsageError(f"{self.name}: a module spec is made by spec_from_module(module, ...)")
        return self.held

    # -- inputs ---------------------------------------------------------------------------------
    def input_specs(self) -> tuple[InputSpec, ...]:
        return self.inputs

    def _sample_feeds(self) -> list[Feed]:
        return [dict(f) for f in self._held.verification]

    def _calibration_feeds(self) -> list[Feed]:
        return [dict(f) for f in self._held.calibration]

    def feeds_from(self, path: str) -> list[Feed]:
        """Calibration feeds from the user's own data (`export(calibration=PATH)`): a folder of images or a text
        file with one sentence a line, each item turned into a feed by the spec's `preprocess`."""
        preprocess = self._held.preprocess
        if preprocess is None:
            raise UsageError(f"calibration data from {path} needs a preprocess function to turn its items into "
                             f"feeds of {self.name}: spec_from_module(..., preprocess=fn)")
        feeds, _ = _feeds_from_path(Path(path), preprocess, "calibration", self.inputs)
        for number, feed in enumerate(feeds):
            check_feed_matches(feed, self.inputs, f"calibration sample {number} (of {len(feeds)}, from {path})")
        return feeds

    def preprocessing(self) -> dict[str, Any]:
        prep: dict[str, Any] = {"kind": "tensor", "inputs": [s.name for s in self.inputs]}
        if self.held is not None:
            prep["samples"] = self._held.samples_source
            if self._held.preprocess is not None:
                prep["function"] = _qualified(self._held.preprocess)
        return prep

    # -- variants -------------------------------------------------------------------------------
    def variant_tags(self) -> tuple[str, ...]:
        # Not a registered zoo variant: a zoo model of the same name says nothing about this one's inputs.
        return ()

    def describe(self) -> dict[str, Any]:
        held = self._held
        return {**super().describe(), "class": held.class_path, "state_dict_sha256": held.state_sha256,
                "samples_sha256": held.samples_sha256,
                "samples": {"source": held.samples_source, "verification": len(held.verification),
                            "calibration": len(held.calibration)},
                "tolerances": {"defaults": self.tolerance_defaults, "overridden": list(self.tolerance_overrides)}}


# -- spec_from_module ---------------------------------------------------------------------------------------
def spec_from_module(module, *, inputs: Sequence[InputSpec | Mapping[str, Any]] | None = None,
                     samples: Any, task: str = "custom", labels: Sequence[str] | None = None,
                     name: str | None = None, tolerances: Mapping[str, Tolerance | Mapping[str, Any]] | None = None,
                     preprocess: Callable[[Any], Any] | None = None, output_names: Sequence[str] | None = None,
                     int8_scheme: str | None = None) -> ModuleSpec:
    """The spec of the user's `module` (see the module docstring); every problem is a `UsageError` naming it."""
    import torch

    if not isinstance(module, torch.nn.Module):
        raise UsageError(f"spec_from_module takes a torch.nn.Module; got {type(module).__name__}")
    class_path = _qualified(type(module))
    name = _model_name(name, type(module).__name__)
    if not isinstance(task, str) or not task:
        raise UsageError(f"task is a name such as 'image-classification' or 'embedding'; got {task!r}")
    classifier = task.endswith("classification")
    if labels is not None and not classifier:
        raise UsageError(f"labels name a classifier's classes; task {task!r} is not a classifier "
                         f"(use task='image-classification' or 'text-classification')")

    given = _input_specs(inputs) if inputs is not None else None
    feeds, source = _read_samples(samples, preprocess, given)
    specs = given if given is not None else _inferred_inputs(feeds[0])
    for number, feed in enumerate(feeds):
        check_feed_matches(feed, specs, f"sample {number} (of {len(feeds)})")
    _check_distinct(feeds)

    try:
        snapshot = copy.deepcopy(module).eval()
    except Exception as exc:  # modules holding handles, locks or generators cannot be copied
        raise UsageError(f"cannot copy {class_path} (copy.deepcopy: {type(exc).__name__}: {exc}); the export "
                         f"works on a copy so that your module is never changed") from exc
    outputs = _run_once(snapshot, specs, feeds[0], class_path)
    names = _output_names(outputs, output_names, classifier)
    if classifier:
        shape = tuple(outputs[0].shape)
        if len(shape) != 2:
            raise UsageError(f"a classifier's first output is (batch, classes); {class_path} returns "
                             f"{list(shape)} for a sample (task {task!r})")
        if labels is not None and len(labels) != shape[1]:
            raise UsageError(f"{len(labels)} labels for {class_path}, whose output has {shape[1]} classes "
                             f"(output {names[0]!r} is {list(shape)}): give one label per class")

    token_inputs = any(np.dtype(s.dtype).kind in "iu" for s in specs)
    defaults = BERT_TOLERANCES if token_inputs else VISION_TOLERANCES
    chosen = {**defaults, **_tolerances(tolerances)}
    scheme = int8_scheme or ("dynamic" if token_inputs else "static")
    if scheme not in INT8_SCHEMES:
        raise UsageError(f"int8_scheme is one of {', '.join(INT8_SCHEMES)}; got {scheme!r}")
    held = ModuleHeld(snapshot, class_path, state_dict_sha256(snapshot), feeds[0::2], feeds[1::2],
                      feeds_sha256(feeds), source, preprocess)
    return ModuleSpec(
        name=name, family=FAMILY, task=task, output_names=names, tolerances=chosen, int8_scheme=scheme,
        label_names=tuple(str(label) for label in labels) if labels is not None else None,
        source=f"nn.Module {class_path}", inputs=specs,
        tolerance_defaults=("models_zoo.bert.BERT_TOLERANCES (integer token inputs)" if token_inputs else
                            "models_zoo.timm_vision.VISION_TOLERANCES (float inputs)"),
        tolerance_overrides=tuple(sorted(tolerances or {})), held=held)


# -- hashes -------------------------------------------------------------------------------------------------
def state_dict_sha256(module) -> str:
    """sha256 over the state dict in key order: each key, dtype, shape and the tensor's raw bytes."""
    import torch

    digest = hashlib.sha256()
    for key, value in module.state_dict().items():
        digest.update(key.encode() + b"\0")
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous()
            digest.update(f"{tensor.dtype}{list(tensor.shape)}".encode() + b"\0")
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        else:  # extra state (get_extra_state) is whatever the module returns
            digest.update(repr(value).encode())
    return digest.hexdigest()


def feeds_sha256(feeds: Iterable[Feed]) -> str:
    """sha256 over the feeds in order: each input's name, dtype, shape and bytes."""
    digest = hashlib.sha256()
    for feed in feeds:
        digest.update(_feed_digest(feed).encode())
    return digest.hexdigest()


def _feed_digest(feed: Feed) -> str:
    digest = hashlib.sha256()
    for key, arr in feed.items():
        arr = np.ascontiguousarray(arr)
        digest.update(f"{key}\0{arr.dtype.str}{list(arr.shape)}\0".encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


# -- inputs -------------------------------------------------------------------------------------------------
def _input_specs(inputs) -> tuple[InputSpec, ...]:
    if isinstance(inputs, (str, bytes, Mapping)) or not isinstance(inputs, Iterable):
        raise UsageError("inputs is a list with one InputSpec or dict {name, shape, dtype, dynamic_axes?} per "
                         f"positional input of the module; got {type(inputs).__name__}")
    specs = []
    for number, item in enumerate(inputs):
        specs.append(item if isinstance(item, InputSpec) else _input_from_dict(item, number))
    if not specs:
        raise UsageError("inputs is empty: the module takes at least one input")
    for spec in specs:
        _check_input_spec(spec)
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise UsageError(f"input names repeat: {names}")
    return tuple(specs)


def _input_from_dict(item, number: int) -> InputSpec:
    if not isinstance(item, Mapping):
        raise UsageError(f"input {number} is a {type(item).__name__}; give an InputSpec or a dict "
                         f"{{name, shape, dtype, dynamic_axes?}}")
    unknown = sorted(set(item) - set(INPUT_KEYS))
    missing = [k for k in ("name", "shape", "dtype") if k not in item]
    if unknown or missing:
        raise UsageError(f"input {number} ({item.get('name', '?')}): "
                         + (f"unknown key(s) {', '.join(map(str, unknown))}" if unknown else "")
                         + ("; " if unknown and missing else "")
                         + (f"missing {', '.join(missing)}" if missing else "")
                         + f" (keys: {', '.join(INPUT_KEYS)})")
    try:
        axes = {int(axis): str(axis_name) for axis, axis_name in (item.get("dynamic_axes") or {}).items()}
        shape = tuple(int(d) for d in item["shape"])
        dtype = np.dtype(item["dtype"]).name
        value_range = item.get("value_range")
        value_range = (int(value_range[0]), int(value_range[1])) if value_range is not None else None
    except (TypeError, ValueError, IndexError, AttributeError) as exc:
        raise UsageError(f"input {number} ({item.get('name', '?')}): {type(exc).__name__}: {exc}") from None
    return InputSpec(str(item["name"]), shape, dtype, axes, value_range)


def _check_input_spec(spec: InputSpec) -> None:
    if not spec.name or not isinstance(spec.name, str):
        raise UsageError(f"an input needs a name; got {spec.name!r}")
    try:
        np.dtype(spec.dtype)
    except TypeError:
        raise UsageError(f"input {spec.name!r}: unknown dtype {spec.dtype!r}") from None
    if any(int(d) < 1 for d in spec.shape):
        raise UsageError(f"input {spec.name!r}: shape {list(spec.shape)} has a dimension below 1")
    bad = [a for a in spec.dynamic_axes if not 0 <= int(a) < len(spec.shape)]
    if bad:
        raise UsageError(f"input {spec.name!r}: dynamic axis {bad[0]} is outside its shape {list(spec.shape)}")


def _inferred_inputs(feed: Feed) -> tuple[InputSpec, ...]:
    return tuple(InputSpec(key, tuple(int(d) for d in arr.shape), arr.dtype.name) for key, arr in feed.items())


def check_feed_matches(feed: Feed, specs: Sequence[InputSpec], what: str) -> None:
    """`feed` has exactly the inputs of `specs`, each at its shape and dtype; else a UsageError naming `what`."""
    names = [s.name for s in specs]
    missing = [n for n in names if n not in feed]
    extra = [k for k in feed if k not in names]
    if missing or extra:
        raise UsageError(f"{what} has inputs {list(feed)}; the module's inputs are {names}"
                         + (f" (missing {missing})" if missing else "") + (f" (unexpected {extra})" if extra else ""))
    for spec in specs:
        arr = feed[spec.name]
        if tuple(arr.shape) != tuple(spec.shape) or arr.dtype != np.dtype(spec.dtype):
            raise UsageError(f"{what}: input {spec.name!r} is {arr.dtype.name}{list(arr.shape)}, the inputs say "
                             f"{np.dtype(spec.dtype).name}{list(spec.shape)}")


# -- samples ------------------------------------------------------------------------------------------------
def _read_samples(samples, preprocess, specs) -> tuple[list[Feed], str]:
    """The user's feeds (converted to numpy) and a short description of where they came from."""
    if preprocess is not None and not callable(preprocess):
        raise UsageError(f"preprocess is a function from an image path or a sentence to a feed dict; got "
                         f"{type(preprocess).__name__}")
    if isinstance(samples, (str, Path)):
        feeds, source = _feeds_from_path(Path(samples), preprocess, "samples", specs)
    elif isinstance(samples, Mapping):
        raise UsageError("samples is a list of feeds (dicts of arrays, batch 1 each), not one feed: "
                         "give at least 4 real samples")
    elif isinstance(samples, Iterable) and not isinstance(samples, bytes):
        items = list(samples)
        if all(isinstance(item, Mapping) for item in items):
            feeds = [_as_feed(item, f"sample {i}", specs) for i, item in enumerate(items)]
            source = f"{len(feeds)} feeds given"
        else:
            if preprocess is None:
                first = next(item for item in items if not isinstance(item, Mapping))
                raise UsageError(f"samples holds {type(first).__name__} items, not feed dicts: give "
                                 f"preprocess=fn to turn each into a feed")
            feeds = [_preprocessed(preprocess, item, specs) for item in items]
            source = f"{len(feeds)} items given, preprocessed by {_qualified(preprocess)}"
    else:
        raise UsageError(f"samples is a list of feeds (dicts of arrays), a folder of images or a text file; got "
                         f"{type(samples).__name__}")
    if len(feeds) < MIN_SAMPLES:
        raise UsageError(f"{len(feeds)} sample{'s' if len(feeds) != 1 else ''} given; at least {MIN_SAMPLES} are "
                         f"needed: half verify the exports and half calibrate them (at least 2 each), held apart")
    return feeds, source


def _feeds_from_path(path: Path, preprocess, what: str, specs) -> tuple[list[Feed], str]:
    """Feeds from a folder of images (sorted by name) or a text file (one sentence a line), via `preprocess`."""
    if path.is_dir():
        items: list[Any] = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not items:
            raise UsageError(f"{what}: no images in {path} (looked for {', '.join(IMAGE_SUFFIXES)})")
        kind = "images"
    elif path.is_file():
        if path.suffix.lower() in IMAGE_SUFFIXES:
            raise UsageError(f"{what}: {path} is one image; give a folder of images (or a list of feeds)")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"{what}: cannot read {path} as a UTF-8 text file (one sentence a line): {exc}") from None
        items = [line.strip() for line in text.splitlines() if line.strip()]
        if not items:
            raise UsageError(f"{what}: {path} has no sentences (one a line)")
        kind = "sentences"
    else:
        raise UsageError(f"{what}: {path} is neither a folder of images nor a text file")
    if preprocess is None:
        raise UsageError(f"{what}: {path} holds {kind}; give preprocess=fn (an image path or a sentence -> a feed "
                         f"dict) to turn each into a feed")
    feeds = [_preprocessed(preprocess, item, specs) for item in items]
    return feeds, f"{len(feeds)} {kind} from {path}, preprocessed by {_qualified(preprocess)}"


def _preprocessed(preprocess, item, specs) -> Feed:
    try:
        out = preprocess(str(item) if isinstance(item, Path) else item)
    except UsageError:
        raise
    except Exception as exc:  # the user's function: name what it was given
        raise UsageError(f"preprocess failed on {str(item)[:200]!r}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(out, Mapping):
        if specs is not None and len(specs) == 1 and hasattr(out, "shape"):
            out = {specs[0].name: out}
        else:
            raise UsageError(f"preprocess returned a {type(out).__name__} for {str(item)[:200]!r}; it returns a "
                             f"feed dict {{input name: array}}")
    return _as_feed(out, f"preprocess({str(item)[:200]!r})", specs)


def _as_feed(item: Mapping, what: str, specs) -> Feed:
    """A feed of numpy arrays (torch tensors converted), batch 1."""
    if not item:
        raise UsageError(f"{what} is an empty feed")
    feed = {}
    for key, value in item.items():
        if not isinstance(key, str):
            raise UsageError(f"{what}: input names are strings; got {key!r}")
        if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
            value = value.detach().cpu().numpy()
        arr = np.asarray(value)
        if arr.dtype == object:
            raise UsageError(f"{what}: input {key!r} is not a numeric array ({type(value).__name__})")
        if arr.ndim and arr.shape[0] != 1 and not (specs is not None and _declared_shape(specs, key) == arr.shape):
            raise UsageError(f"{what}: input {key!r} has shape {list(arr.shape)}; each sample is one example with "
                             f"batch 1 (split a batch into samples)")
        feed[key] = np.ascontiguousarray(arr)
    return feed


def _declared_shape(specs, key) -> tuple[int, ...] | None:
    return next((tuple(s.shape) for s in specs if s.name == key), None)


def _check_distinct(feeds: list[Feed]) -> None:
    seen: dict[str, int] = {}
    for number, feed in enumerate(feeds):
        digest = _feed_digest(feed)
        if digest in seen:
            raise UsageError(f"samples {seen[digest]} and {number} are identical; give distinct samples (one of "
                             f"them would verify an artifact calibrated on the other)")
        seen[digest] = number


# -- outputs, tolerances, names -----------------------------------------------------------------------------
def _run_once(module, specs, feed: Feed, class_path: str) -> list:
    """The module's outputs (a list of tensors) on one sample."""
    import torch

    args = [torch.from_numpy(np.ascontiguousarray(feed[s.name])) for s in specs]
    try:
        with torch.no_grad():
            result = module(*args)
    except Exception as exc:
        raise UsageError(f"{class_path} failed on sample 0 with inputs "
                         f"{[f'{s.name}: {s.dtype}{list(s.shape)}' for s in specs]} (positional, in that order): "
                         f"{type(exc).__name__}: {str(exc)[:500]}") from exc
    outputs = list(result) if isinstance(result, (tuple, list)) else [result]
    if isinstance(result, Mapping) or not outputs or not all(isinstance(o, torch.Tensor) for o in outputs):
        kinds = type(result).__name__ if not isinstance(result, (tuple, list)) else \
            f"{type(result).__name__} of {', '.join(type(o).__name__ for o in outputs) or 'nothing'}"
        raise UsageError(f"{class_path} returns a {kinds}; the export takes a module that returns a tensor or a "
                         f"tuple of tensors (wrap it: return the tensors, e.g. outputs.logits)")
    return outputs


def _output_names(outputs: list, given: Sequence[str] | None, classifier: bool) -> tuple[str, ...]:
    if given is not None:
        names = (given,) if isinstance(given, str) else tuple(str(n) for n in given)
        if len(names) != len(outputs):
            raise UsageError(f"{len(names)} output_names {list(names)} for a module that returns {len(outputs)} "
                             f"output{'s' if len(outputs) != 1 else ''}")
        if len(set(names)) != len(names):
            raise UsageError(f"output_names repeat: {list(names)}")
        return names
    if len(outputs) == 1:
        return ("logits",) if classifier else ("output",)
    return tuple(f"output_{i}" for i in range(len(outputs)))


def _tolerances(given) -> dict[str, Tolerance]:
    if given is None:
        return {}
    if not isinstance(given, Mapping):
        raise UsageError(f"tolerances is a dict {{precision: Tolerance}}; got {type(given).__name__}")
    out = {}
    for key, value in given.items():
        if key not in TOLERANCE_KEYS:
            raise UsageError(f"tolerances: unknown precision {key!r} (one of {', '.join(TOLERANCE_KEYS)})")
        if isinstance(value, Mapping):
            try:
                value = Tolerance(**value)
            except TypeError as exc:
                raise UsageError(f"tolerances[{key!r}]: {exc} (fields: "
                                 f"{', '.join(f.name for f in dataclasses.fields(Tolerance))})") from None
        if not isinstance(value, Tolerance):
            raise UsageError(f"tolerances[{key!r}] is a {type(value).__name__}; give a models_zoo.Tolerance")
        out[key] = value
    return out


def _model_name(name: str | None, class_name: str) -> str:
    if name is None:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", class_name).strip("_.-") or "model"
    if not isinstance(name, str) or not _NAME.match(name):
        raise UsageError(f"name {name!r} names the export folder out/<name>/: letters, digits, '_', '.', '-' only")
    return name


def _qualified(obj) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"
