"""Core ML `.mlpackage` through coremltools' `MLModel.predict` (macOS only).

Core ML prediction exists only on macOS: coremltools on Linux converts and inspects packages but has no
predictor, so there this backend reports itself unavailable and `device_runtime.load` fails with
`BackendUnavailableError` saying so. On macOS it loads the package with the compute units asked for (default:
those recorded in the package by the converter, else all), so parity checks and benchmarks run through the
same `Session` API as every other format.

Inputs: Core ML has no int64 tensors, so integer inputs are int32 (`adapt_io=True` casts int64 ids
losslessly). Image inputs (`ct.ImageType`, from `--image-input`) are described as uint8 [1, H, W, 3] RGB arrays
and handed to Core ML as PIL images. Core ML picks its own threads; `num_threads` is recorded, not applied.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from device_runtime.errors import BackendUnavailableError, CorruptArtifactError, ExecutionError, UsageError
from device_runtime.registry import Backend, Format, module_present, register_backend, register_format
from device_runtime.session import Session, TensorInfo

NOT_ON_MAC = "Core ML prediction needs macOS (coremltools converts and validates on Linux but cannot run models)"
MODEL_ITEM = "com.apple.CoreML/model.mlmodel"
# Pocketformer's keys in the package's user-defined metadata, written by converters.coreml.converter under META_PREFIX;
# this backend reads these three.
META_PREFIX = "pocketformer."
META_INPUTS, META_COMPUTE_UNITS, META_LABELS = "inputs", "compute_units", "labels"
COMPUTE_UNITS = ("all", "cpu_only", "cpu_and_gpu", "cpu_and_ne")
_ARRAY_DTYPES = {"FLOAT32": np.float32, "FLOAT16": np.float16, "DOUBLE": np.float64, "INT32": np.int32,
                 "INT8": np.int8}


def is_mlpackage(path: Path) -> bool:
    """A Core ML package: a folder whose Manifest.json lists the Core ML model item, which exists under Data/."""
    manifest = path / "Manifest.json"
    if not path.is_dir() or not manifest.is_file():
        return False
    try:
        entries = json.loads(manifest.read_text()).get("itemInfoEntries", {})
    except (ValueError, UnicodeDecodeError):
        return False
    paths = {e.get("path") for e in entries.values() if isinstance(e, dict)}
    return MODEL_ITEM in paths and (path / "Data" / MODEL_ITEM).is_file()


def _available() -> str | None:
    if sys.platform != "darwin":
        return NOT_ON_MAC
    if not module_present("coremltools"):
        return "the coremltools package is not installed (pip install 'pocketformer[coreml]')"
    return None


def _import_coremltools():
    import logging

    logger = logging.getLogger("coremltools")
    level = logger.level
    logger.setLevel(logging.ERROR)  # its import-time notes about untested torch/scikit-learn versions
    try:
        import coremltools
    finally:
        logger.setLevel(level)
    return coremltools


class CoreMLSession(Session):
    format = "coreml"
    backend = "coremltools"
    # `MLModel.predict` makes no promise about concurrent calls on one model: `Session.run` locks (the default).
    reentrant = False

    def __init__(self, path: str, num_threads: int | None = None, compute_units: str | None = None,
                 function_name: str | None = None) -> None:
        super().__init__(path, num_threads)
        reason = _available()
        if reason:  # direct construction off macOS: the same clear error as device_runtime.load
            raise BackendUnavailableError(reason)
        ct = _import_coremltools()
        self._ct = ct
        try:
            spec = ct.utils.load_spec(str(path))
        except Exception as exc:
            raise CorruptArtifactError(f"{path} is not a readable Core ML package: {exc}") from None
        self.metadata = {k[len(META_PREFIX):]: v for k, v in spec.description.metadata.userDefined.items()
                         if k.startswith(META_PREFIX)}
        units = (compute_units or self.metadata.get(META_COMPUTE_UNITS) or "all").lower()
        if units not in COMPUTE_UNITS:
            raise UsageError(f"unknown compute units {compute_units!r}; choose from {', '.join(COMPUTE_UNITS)}")
        self.compute_units = units
        kwargs = {"compute_units": ct.ComputeUnit[units.upper()]}
        if function_name:
            kwargs["function_name"] = function_name
        try:
            self._model = ct.models.MLModel(str(path), **kwargs)
        except Exception as exc:
            raise CorruptArtifactError(f"Core ML could not load {path}: {exc}") from None
        dynamic_names = self._dynamic_axis_names()
        self._image_inputs: set[str] = set()
        self._inputs = [self._input_info(f, dynamic_names.get(f.name, {})) for f in spec.description.input]
        self._outputs = [self._output_info(f) for f in spec.description.output]
        self._spec_version = spec.specificationVersion

    # -- metadata --------------------------------------------------------------------------------
    def _dynamic_axis_names(self) -> dict[str, dict[int, str]]:
        try:
            inputs = json.loads(self.metadata.get(META_INPUTS, "[]"))
            return {i["name"]: {int(k): v for k, v in i.get("dynamic_axes", {}).items()} for i in inputs}
        except (ValueError, KeyError, TypeError):
            return {}

    def _input_info(self, feature, axis_names: dict[int, str]) -> TensorInfo:
        kind = feature.type.WhichOneof("Type")
        if kind == "imageType":
            image = feature.type.imageType
            channels = 1 if image.ColorSpace.Name(image.colorSpace) == "GRAYSCALE" else 3
            self._image_inputs.add(feature.name)
            return TensorInfo(feature.name, (1, int(image.height), int(image.width), channels), np.dtype(np.uint8))
        if kind != "multiArrayType":
            raise CorruptArtifactError(f"input {feature.name!r} is a Core ML {kind}, which this backend does not "
                                       "feed (tensors and images only)")
        return self._array_info(feature, axis_names)

    def _output_info(self, feature) -> TensorInfo:
        kind = feature.type.WhichOneof("Type")
        if kind == "multiArrayType":
            return self._array_info(feature, {})
        # Classifier outputs (a class label string, a dict of probabilities) come back as numpy arrays too.
        return TensorInfo(feature.name, (), np.dtype(object))

    @staticmethod
    def _array_info(feature, axis_names: dict[int, str]) -> TensorInfo:
        array = feature.type.multiArrayType
        type_name = array.ArrayDataType.Name(array.dataType)
        if type_name not in _ARRAY_DTYPES:
            raise CorruptArtifactError(f"tensor {feature.name!r} has Core ML type {type_name}, not supported")
        shape: list[int | None] = [int(d) for d in array.shape]
        varying: set[int] = set()
        flex = array.WhichOneof("ShapeFlexibility")
        if flex == "shapeRange":
            varying = {i for i, r in enumerate(array.shapeRange.sizeRanges) if r.lowerBound != r.upperBound}
        elif flex == "enumeratedShapes":
            shapes = [tuple(s.shape) for s in array.enumeratedShapes.shapes]
            varying = {i for i in range(len(shapes[0])) if len({s[i] for s in shapes}) > 1} if shapes else set()
        for i in varying:
            shape[i] = None
        return TensorInfo(feature.name, tuple(shape), np.dtype(_ARRAY_DTYPES[type_name]),
                          dynamic_axes={i: axis_names.get(i, f"dim{i}") for i in sorted(varying)})

    def _backend_info(self) -> dict:
        return {"runtime_version": self._ct.__version__, "compute_units": self.compute_units.upper(),
                "specification_version": self._spec_version,
                "num_threads_note": "Core ML chooses its own threads; num_threads is not applied",
                "metadata": {k: v for k, v in self.metadata.items() if k not in (META_LABELS, META_INPUTS)}}

    # -- running ---------------------------------------------------------------------------------
    def _execute(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        feed = {}
        for info, array in zip(self._inputs, arrays):
            feed[info.name] = self._to_image(info, array) if info.name in self._image_inputs else array
        try:
            result = self._model.predict(feed)
        except Exception as exc:
            # The feed was validated against the model's inputs already: this is the runtime failing, not bad input.
            raise ExecutionError(f"coreml failed while running {self.path}: {type(exc).__name__}: "
                                 f"{str(exc).strip()[:500]}") from exc
        outputs = []
        for info in self._outputs:
            value = result[info.name]
            if isinstance(value, dict):  # classifier probabilities: values in sorted label order
                value = np.asarray([value[k] for k in sorted(value)], dtype=np.float32)
            outputs.append(np.asarray(value))
        return outputs

    @staticmethod
    def _to_image(info: TensorInfo, array: np.ndarray):
        from PIL import Image

        pixels = array[0]
        return Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels, "L" if pixels.shape[-1] == 1
                               else "RGB")


register_format(Format("coreml", (".mlpackage",), is_mlpackage, "Core ML ML Program package"))
register_backend(Backend("coreml", "coremltools", CoreMLSession, _available))
