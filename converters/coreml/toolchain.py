"""coremltools for the Core ML converter: imported once and quietly, its progress bars silenced, and the
deployment targets (known without importing it) with the Core ML I/O type of a spec dtype.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import logging

import numpy as np

from converters.base import UnsupportedError

DEFAULT_TARGET = "ios17"
# --target names (lower case) -> coremltools.target attribute. ML Program needs iOS15 / macOS12 or newer.
_TARGET_GENERATIONS = {  # Core ML specification version -> the OS releases that introduced it
    6: ("iOS15", "macOS12", "watchOS8", "tvOS15"), 7: ("iOS16", "macOS13", "watchOS9", "tvOS16"),
    8: ("iOS17", "macOS14", "watchOS10", "tvOS17"), 9: ("iOS18", "macOS15", "watchOS11", "tvOS18"),
    10: ("iOS26", "macOS26", "watchOS26", "tvOS26"),
}
TARGETS = {n.lower(): n for names in _TARGET_GENERATIONS.values() for n in names}
# Each target's specification version (coremltools.target values), known without importing coremltools.
TARGET_VERSION = {n.lower(): v for v, names in _TARGET_GENERATIONS.items() for n in names}
IOS16, IOS18 = 7, 9


@functools.lru_cache(maxsize=1)
def import_coremltools():
    """coremltools, imported once with its import-time chatter (unsupported scikit-learn/torch versions, the
    missing native predictor on Linux) kept out of the user's terminal."""
    logger = logging.getLogger("coremltools")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        import coremltools
    finally:
        logger.setLevel(level)
    return coremltools


_TQDM_SITES = (("coremltools.converters.mil.mil.passes.pass_pipeline", "tqdm"),
               ("coremltools.converters.mil.frontend.torch.ops", "_tqdm"),
               ("coremltools.optimize.coreml._quantization_passes", "tqdm"),
               ("coremltools.optimize.coreml._post_training_quantization", "tqdm"))


@contextlib.contextmanager
def quiet_progress_bars():
    """Silence coremltools' own tqdm bars while it runs (the pipeline prints its own progress)."""
    patched = []
    for module_name, attr in _TQDM_SITES:
        try:
            module = importlib.import_module(module_name)
            original = getattr(module, attr)
        except (ImportError, AttributeError):
            continue
        setattr(module, attr, functools.partial(original, disable=True))
        patched.append((module, attr, original))
    try:
        yield
    finally:
        for module, attr, original in patched:
            setattr(module, attr, original)


def target_enum(name: str | None):
    ct = import_coremltools()
    key = (name or DEFAULT_TARGET).lower()
    if key not in TARGETS:
        raise UnsupportedError(f"unknown Core ML deployment target {name!r}; choose from {', '.join(TARGETS)}")
    try:
        return getattr(ct.target, TARGETS[key])
    except AttributeError:
        raise UnsupportedError(f"coremltools {ct.__version__} does not know target {TARGETS[key]}") from None


def mil_dtype(numpy_dtype: str) -> str:
    """The Core ML I/O type of a ModelSpec dtype: Core ML has no int64 tensors, so integer ids become int32."""
    kind = np.dtype(numpy_dtype)
    if np.issubdtype(kind, np.integer):
        return "int32"
    if kind == np.float16:
        return "float16"
    return "float32"
