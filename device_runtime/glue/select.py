"""Selection glue: the top k, a gather by indices, and padding a variable number of rows to the fixed count an
exported artifact's static input needs (with a mask saying which rows are real)."""
from __future__ import annotations

import numpy as np

from device_runtime.errors import DTypeError, InputError, ShapeError, ValueRangeError
from device_runtime.glue.checks import int_array
from device_runtime.glue.registry import register_glue

MASK_DTYPES = ("bool", "int32", "int64", "float32")


def _count(value, name: str, minimum: int) -> int:
    try:
        ok = int(value) == value and int(value) >= minimum
    except (TypeError, ValueError):
        ok = False
    if not ok or isinstance(value, bool):
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _axis(value, ndim: int, name: str) -> int:
    try:
        axis = int(value)
    except (TypeError, ValueError):
        raise InputError(f"axis must be an integer, got {value!r}") from None
    if not -ndim <= axis < ndim:
        raise ShapeError(f"axis {axis} is out of range for {name} of rank {ndim}")
    return axis % ndim


@register_glue(inputs=("x",), outputs=("values", "indices"))
def top_k(x: np.ndarray, k: int, axis: int = -1, largest: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The `k` largest (or smallest) entries along `axis`, sorted, and their int64 indices, as `torch.topk`
    with `sorted=True`. Equal values come in index order (torch leaves their order unspecified). A `k` larger
    than the axis takes the whole axis (like an RPN's `min(pre_nms_top_n, num_anchors)`), never an error."""
    x = np.asarray(x)
    if x.ndim == 0 or x.dtype.kind not in "iuf":
        raise (ShapeError if x.ndim == 0 else DTypeError)(
            f"x must be a numeric array of rank >= 1, got {x.dtype.name}{list(x.shape)}")
    if x.dtype.kind == "f" and np.isnan(x).any():
        raise InputError("x holds NaN; top_k needs comparable values (torch puts NaN first, numpy last)")
    axis = _axis(axis, x.ndim, "x")
    k = min(_count(k, "k", 0), x.shape[axis])
    if largest:  # ascending sort of a decreasing key; ~x (= -x - 1) cannot overflow an integer as -x can
        keyed = -x if x.dtype.kind == "f" else ~x
    else:
        keyed = x
    order = np.argsort(keyed, axis=axis, kind="stable")
    indices = np.take(order, np.arange(k), axis=axis).astype(np.int64)
    return np.take_along_axis(x, indices, axis=axis), indices


@register_glue(inputs=("x", "indices"), outputs=("selected",))
def take(x: np.ndarray, indices: np.ndarray, axis: int = 0) -> np.ndarray:
    """Rows of `x` at `indices` along `axis` (e.g. the boxes NMS kept), in the order given. An index outside
    `[0, size - 1]` is refused (negative indices are not wrapped: an upstream bug should not pass as data)."""
    x = np.asarray(x)
    if x.ndim == 0:
        raise ShapeError("x is a scalar; take needs an array with the axis to select along")
    indices = int_array(indices, "indices")
    axis = _axis(axis, x.ndim, "x")
    size = x.shape[axis]
    if indices.size and (indices.min() < 0 or indices.max() >= size):
        bad = int(indices.ravel()[np.argmax((indices.ravel() < 0) | (indices.ravel() >= size))])
        raise ValueRangeError(f"indices holds {bad}; x has {size} entries along axis {axis} (valid: 0..{size - 1})")
    return np.take(x, indices, axis=axis)


@register_glue(inputs=("x",), outputs=("padded", "mask"))
def pad_to_fixed(x: np.ndarray, n: int, fill: float = 0.0, mask_dtype: str = "bool") -> tuple[np.ndarray, np.ndarray]:
    """Exactly `n` rows (axis 0) with a validity mask: fewer rows are padded with `fill`, more are cut to the
    first `n` (NMS and top_k put the best first). Export boundaries are static: a region transformer exported
    for 50 regions takes 50, and the mask (`mask_dtype`: bool, int32, int64 or float32) tells it which are real."""
    x = np.asarray(x)
    if x.ndim == 0:
        raise ShapeError("x is a scalar; pad_to_fixed pads axis 0 of an array")
    n = _count(n, "n", 0)
    if mask_dtype not in MASK_DTYPES:
        raise InputError(f"mask_dtype must be one of {', '.join(MASK_DTYPES)}, got {mask_dtype!r}")
    kept = min(x.shape[0], n)
    padded = np.full((n, *x.shape[1:]), fill, dtype=x.dtype)
    padded[:kept] = x[:kept]
    mask = np.zeros(n, dtype=mask_dtype)
    mask[:kept] = 1
    return padded, mask
