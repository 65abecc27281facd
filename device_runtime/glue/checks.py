"""Input checks shared by the glue steps: each refuses with the runtime's typed errors, naming the argument,
the problem and, where there is one, the fix. A glue step sits between two artifacts, so a bad value here is
usually an upstream stage's output: the message says which argument and which row."""
from __future__ import annotations

from typing import Any

import numpy as np

from device_runtime.errors import DTypeError, InputError, NonFiniteInputError, ShapeError


class InvalidBoxError(InputError):
    """A box whose second corner lies before its first (x2 < x1 or y2 < y1): a negative width or height.

    torchvision's ops assume `0 <= x1 <= x2` and `0 <= y1 <= y2` and silently give meaningless IoUs or zeros for
    such boxes; the glue refuses them instead, naming the row."""


def float_array(value: Any, name: str) -> np.ndarray:
    """`value` as a float32/float64 array; integers and other kinds are refused (say how to cast)."""
    arr = np.asarray(value)
    if arr.dtype not in (np.float32, np.float64):
        hint = "cast with .astype(np.float32)" if arr.dtype.kind in "iufb" else "pass a numeric float array"
        raise DTypeError(f"{name} has dtype {arr.dtype.name}; glue steps take float32 or float64 ({hint})")
    return arr


def int_array(value: Any, name: str) -> np.ndarray:
    """`value` as an int64 array; floats are refused (an index must be a whole number)."""
    arr = np.asarray(value)
    if arr.dtype.kind not in "iu":
        raise DTypeError(f"{name} has dtype {arr.dtype.name}; it must be an integer array (indices or ids)")
    return arr.astype(np.int64, copy=False)


def finite(arr: np.ndarray, name: str) -> np.ndarray:
    """Refuse NaN or Inf, naming the first position. Two reductions on the good path."""
    if arr.size and not (np.isfinite(arr.min()) and np.isfinite(arr.max())):
        bad = ~np.isfinite(arr)
        index = [int(i) for i in np.unravel_index(int(np.argmax(bad)), arr.shape)]
        raise NonFiniteInputError(f"{name} holds {arr[tuple(index)]} at index {index} ({int(bad.sum())} "
                                  "non-finite value(s)); boxes, scores and deltas must be finite")
    return arr


def boxes_xyxy(value: Any, name: str = "boxes", rank: int | None = 2) -> np.ndarray:
    """Finite float boxes `(x1, y1, x2, y2)` in the last axis (rank 2: `(N, 4)`), none with a negative size."""
    arr = float_array(value, name)
    if (rank is not None and arr.ndim != rank) or arr.ndim < 1 or arr.shape[-1] != 4:
        want = "(N, 4)" if rank == 2 else "(..., 4)"
        raise ShapeError(f"{name} has shape {list(arr.shape)}; expected {want} boxes as (x1, y1, x2, y2)")
    finite(arr, name)
    negative(arr, name)
    return arr


def negative(boxes: np.ndarray, name: str, offset: int = 0) -> None:
    """Refuse a box with x2 < x1 or y2 < y1 (columns `offset`..`offset + 3`), naming the first such row."""
    if not boxes.size:
        return
    flat = boxes.reshape(-1, boxes.shape[-1])
    bad = (flat[:, offset + 2] < flat[:, offset]) | (flat[:, offset + 3] < flat[:, offset + 1])
    if bad.any():
        row = int(np.argmax(bad))
        raise InvalidBoxError(f"{name} row {row} is {flat[row].tolist()}: a negative width or height (x2 < x1 or "
                              f"y2 < y1; {int(bad.sum())} such row(s)); boxes are (x1, y1, x2, y2) with x1 <= x2 "
                              "and y1 <= y2")


def vector(value: Any, name: str, length: int, owner: str) -> np.ndarray:
    """A 1-D float array of `length` entries (one per row of `owner`), finite."""
    arr = float_array(value, name)
    if arr.ndim != 1 or arr.shape[0] != length:
        raise ShapeError(f"{name} has shape {list(arr.shape)}; expected ({length},): one per row of {owner}")
    return finite(arr, name)


def pair(value: Any, name: str) -> tuple[int, int]:
    """An int or a pair of ints, each >= 1 (an output size)."""
    items = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value, value]
    try:
        ok = len(items) == 2 and all(int(v) == v and int(v) >= 1 for v in items)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InputError(f"{name} must be an int >= 1 or a pair of them, got {value!r}")
    return int(items[0]), int(items[1])
