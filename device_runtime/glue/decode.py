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


@register_glue(inputs=("start_ids",), outputs=("ids",))
def greedy_decode_fixed(step_fn: Callable[[np.ndarray], np.ndarray], start_ids: np.ndarray, length: int, eos_id: int,
                        pad_id: int = 0) -> np.ndarray:
    """Greedy decoding through a fixed-shape decoder: `step_fn` always gets `(B, length)` int64 ids (the tokens so
    far, the rest `pad_id`) and returns logits `(B, length, V)`; the argmax at the last real position (first index
    on ties) is written after it, until every row has produced `eos_id` or is `length` long. A finished row's
    later tokens stay `pad_id`. Returns `(B, length)` ids, start ids first: Hugging Face's greedy `generate` padded
    to `length`, for a decoder whose positions never see later ones (a causal or seq2seq mask), which is what makes
    the padded tail harmless. An artifact exported at one shape decodes this way (MiniVLM's caption stage)."""
    start = int_array(start_ids, "start_ids")
    if start.ndim == 1:
        start = start[None, :]
    if start.ndim != 2 or start.shape[1] == 0:
        raise ShapeError(f"start_ids has shape {list(np.shape(start_ids))}; expected (B, t) with t >= 1")
    for name, value in (("length", length), ("eos_id", eos_id), ("pad_id", pad_id)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise InputError(f"{name} must be an integer, got {value!r}")
    if length < start.shape[1]:
        raise InputError(f"length {length} is shorter than the {start.shape[1]} start ids")
    ids = np.full((start.shape[0], length), pad_id, dtype=np.int64)
    ids[:, :start.shape[1]] = start
    finished = np.zeros(start.shape[0], dtype=bool)
    for position in range(start.shape[1], length):
        if finished.all():
            break
        logits = np.asarray(step_fn(ids.copy()))  # a copy: a step_fn that keeps its input cannot see later writes
        if logits.ndim != 3 or logits.shape[:2] != ids.shape:
            raise ShapeError(f"step_fn returned logits of shape {list(logits.shape)} for ids of shape "
                             f"{list(ids.shape)}; expected (B, length, V)")
        last = logits[:, position - 1]
        if last.dtype.kind == "f" and not np.isfinite(last).all():
            raise NonFiniteInputError(f"step_fn returned non-finite logits at position {position - 1}: argmax over "
                                      "NaN is meaningless")
        token = np.where(finished, pad_id, np.argmax(last, axis=-1)).astype(np.int64)
        ids[:, position] = token
        finished |= token == eos_id
    return ids
