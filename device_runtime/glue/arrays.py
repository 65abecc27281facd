"""Array glue: a reshape (an artifact's batch axis on or off between stages) and a constant (a value a stage needs
that no input carries, such as a decoder's start token), both as plain data in the manifest."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from device_runtime.errors import DTypeError, InputError, ShapeError
from device_runtime.glue.registry import register_glue

CONSTANT_DTYPES = ("bool", "int32", "int64", "float32", "float64")


@register_glue(inputs=("x",), outputs=("y",))
def reshape(x: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """`x` with a new `shape` (one entry may be -1), as `torch.reshape`: e.g. `(1, A)` detector scores to `(A,)`
    for NMS, or `(K, D)` regions to the `(1, K, D)` a transformer takes. The element count must match."""
    x = np.asarray(x)
    try:
        dims = [int(d) for d in shape]
        ok = all(d == int(s) for d, s in zip(dims, shape)) and all(d >= -1 for d in dims) and dims.count(-1) <= 1
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InputError(f"shape must be a list of sizes (at most one -1), got {shape!r}")
    try:
        return x.reshape(dims)
    except ValueError:
        raise ShapeError(f"x of shape {list(x.shape)} ({x.size} values) cannot be reshaped to {dims}") from None


@register_glue(inputs=(), outputs=("value",))
def constant(value: Any, dtype: str = "float32") -> np.ndarray:
    """The array `value` (a number or nested lists, from the manifest's JSON) in `dtype` (bool, int32, int64,
    float32 or float64), as `torch.tensor(value, dtype=...)`: a fixed input of a later stage, such as a decoder's
    `[[CLS]]` start ids."""
    if dtype not in CONSTANT_DTYPES:
        raise DTypeError(f"dtype must be one of {', '.join(CONSTANT_DTYPES)}, got {dtype!r}")
    try:
        arr = np.asarray(value)
    except ValueError:
        raise ShapeError(f"value must be a number or rectangular nested lists, got {value!r}"[:300]) from None
    if arr.dtype.kind not in "biuf":
        raise InputError(f"value must be numeric, got {arr.dtype.name} ({value!r})"[:300])
    if np.dtype(dtype).kind == "i" and arr.dtype.kind == "f" and not np.array_equal(arr, np.round(arr)):
        raise InputError(f"value holds non-integers; it cannot be {dtype} exactly")
    return arr.astype(dtype)
