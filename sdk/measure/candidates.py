"""What `tune` tries for one spec (a zoo model, the user's module, or one stage of a pipeline model): the format x
precision pairs that can be exported and run here, and an artifact's error against fp32 PyTorch.

`sdk.measure.tune` (one artifact per model) and `sdk.measure.pipeline_tune` (one per stage) both use them.
"""
from __future__ import annotations

from typing import Any, Sequence


def candidates(spec, formats: Sequence[str] | None = None, precisions: Sequence[str] | None = None
               ) -> tuple[list[tuple[str, str]], list[dict[str, str]]]:
    """(format, requested precision) pairs to try, and the skipped ones with the reason."""
    import device_runtime
    from converters import get_converter, list_converters, resolve_precision
    from converters.base import UnsupportedError

    todo, skipped = [], []
    for fmt in formats or list_converters():
        conv = get_converter(fmt)
        wanted = list(precisions) if precisions else list(conv.precisions)
        seen = set()
        for precision in wanted:
            try:
                resolved = resolve_precision(spec, precision, conv)
            except UnsupportedError as exc:
                skipped.append({"format": fmt, "precision": precision, "reason": str(exc)})
                continue
            if resolved in seen:
                continue
            seen.add(resolved)
            reason = conv.unsupported_reason(spec, resolved) or conv.verify_reason()
            if reason is None:
                try:
                    device_runtime.registry.choose_backend(fmt, None)
                except device_runtime.BackendUnavailableError as exc:
                    reason = f"no runtime for {fmt} here: {exc}"
            if reason:
                skipped.append({"format": fmt, "precision": resolved, "reason": reason})
            else:
                todo.append((fmt, resolved))
    return todo, skipped


def error_vs_fp32(parity: dict[str, Any]) -> float | None:
    """An artifact's max abs error against fp32 PyTorch: its quantization figure, else its lowering's."""
    quant = parity.get("quantization") or {}
    lowering = parity.get("lowering") or {}
    value = quant.get("max_abs_err", lowering.get("max_abs_err"))
    return float(value) if value is not None else None
