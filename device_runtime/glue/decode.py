"""The decode loop: greedy token-by-token generation that calls a session (or any function) once per token."""
from __future__ import annotations

from typing import Callable

import numpy as np

from device_runtime.errors import InputError, NonFiniteInputError, ShapeError
from device_runtime.glue.checks import int_array
from device_runtime.glue.registry import register_glue


@register_glue(inputs=("start_ids",), outputs=("ids",))
def greedy_decode(step_fn: Callable[[np.ndarray], np.ndarray], start_ids: np.ndarray, eos_id: int, max_len: int,
                  pad_id: int | None = None) -> np.ndarray:
    """Greedy decoding: `step_fn(ids)` gets the int64 ids so far, `(B, t)`, and returns logits `(B, t, V)` (or
    `(B, V)` for the last position); the argmax of the last position (first index on ties, as `torch.argmax`) is
    appended, until every row has produced `eos_id` or the rows are `max_len` long (start ids included, like
    Hugging Face's `max_length`). A row that has finished is filled with `pad_id` (default `eos_id`).
    Returns `(B, T)` int64 ids, start ids first. In a pipeline, `step_fn` runs one of its artifacts."""
    ids = int_array(start_ids, "start_ids")
    if ids.ndim == 1:
        ids = ids[None, :]
    if ids.ndim != 2 or ids.shape[1] == 0:
        raise ShapeError(f"start_ids has shape {list(np.shape(start_ids))}; expected (B, t) with t >= 1")
    named = [("eos_id", eos_id), ("max_len", max_len)] + ([("pad_id", pad_id)] if pad_id is not None else [])
    for name, value in named:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise InputError(f"{name} must be an integer, got {value!r}")
    if max_len < ids.shape[1]:
        raise InputError(f"max_len {max_len} is shorter than the {ids.shape[1]} start ids")
    pad = eos_id if pad_id is None else pad_id
    finished = np.zeros(ids.shape[0], dtype=bool)
    while ids.shape[1] < max_len and not finished.all():
        logits = np.asarray(step_fn(ids))
        if logits.ndim == 3 and logits.shape[:2] == ids.shape:
            logits = logits[:, -1]
        if logits.ndim != 2 or logits.shape[0] != ids.shape[0]:
            raise ShapeError(f"step_fn returned logits of shape {list(logits.shape)} for ids of shape "
                             f"{list(ids.shape)}; expected (B, t, V) or (B, V)")
        if logits.dtype.kind == "f" and not np.isfinite(logits).all():
            raise NonFiniteInputError(f"step_fn returned non-finite logits at step {ids.shape[1]}: argmax over "
                                      "NaN is meaningless")
        token = np.where(finished, pad, np.argmax(logits, axis=-1)).astype(np.int64)
        ids = np.concatenate([ids, token[:, None]], axis=1)
        finished |= token == eos_id
    return ids
