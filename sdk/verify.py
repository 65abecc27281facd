"""Parity of an artifact against PyTorch on real sample inputs: the numbers and the pass/fail rule."""
from __future__ import annotations

from typing import Any

import numpy as np

# Below this the reference outputs are too flat for an absolute-error check to mean anything
# (e.g. an uninitialised transformers model printing values near 1e-40).
MIN_REFERENCE_STD = 1e-3


class ParityError(RuntimeError):
    """The artifact's outputs differ from PyTorch's by more than the model's tolerance."""


class DegenerateReferenceError(RuntimeError):
    """The PyTorch reference outputs have no spread, so parity against them would prove nothing."""


def torch_outputs(module, input_names, feeds: list[dict]) -> list[list[np.ndarray]]:
    import torch

    outs = []
    with torch.no_grad():
        for feed in feeds:
            result = module(*[torch.from_numpy(feed[n]) for n in input_names])
            result = result if isinstance(result, (tuple, list)) else (result,)
            outs.append([r.detach().float().numpy() for r in result])
    return outs


def check_spread(outputs: list[list[np.ndarray]], what: str) -> float:
    flat = np.concatenate([o.ravel() for sample in outputs for o in sample]).astype(np.float64)
    if not np.all(np.isfinite(flat)):
        raise DegenerateReferenceError(f"{what}: reference outputs contain NaN or inf")
    std = float(flat.std())
    if std < MIN_REFERENCE_STD:
        raise DegenerateReferenceError(f"{what}: reference outputs have no spread (std {std:.3g} < "
                                       f"{MIN_REFERENCE_STD}); are the weights initialised?")
    return std


def compare(reference: list[list[np.ndarray]], actual: list[list[np.ndarray]], classifier: bool) -> dict[str, Any]:
    """Max/mean abs error, SQNR (dB), cosine similarity and, for classifiers, top-1 agreement."""
    ref = np.concatenate([o.ravel() for s in reference for o in s]).astype(np.float64)
    got = np.concatenate([o.ravel() for s in actual for o in s]).astype(np.float64)
    if ref.shape != got.shape:
        raise ParityError(f"artifact outputs have {got.size} values, PyTorch's have {ref.size}")
    err = got - ref
    noise = float(np.sum(err ** 2))
    sqnr = float("inf") if noise == 0 else float(10 * np.log10(np.sum(ref ** 2) / noise))
    denom = np.linalg.norm(ref) * np.linalg.norm(got)
    metrics = {
        "max_abs_err": float(np.max(np.abs(err))),
        "mean_abs_err": float(np.mean(np.abs(err))),
        "sqnr_db": sqnr,
        "cosine": float(ref @ got / denom) if denom else 0.0,
        "samples": len(reference),
    }
    if classifier:
        agree = [int(np.argmax(r[0])) == int(np.argmax(a[0])) for r, a in zip(reference, actual)]
        metrics["top1_agreement"] = float(np.mean(agree))
    return metrics


def judge(lowering: dict, quantization: dict | None, tolerance) -> list[str]:
    """The reasons an artifact fails its tolerance; empty when it passes."""
    failures = []
    if not np.isfinite(lowering["max_abs_err"]) or lowering["max_abs_err"] > tolerance.atol:
        failures.append(f"max abs error vs its PyTorch reference {lowering['max_abs_err']:.3g} > {tolerance.atol:g}")
    if quantization is not None and tolerance.min_sqnr_db is not None and quantization["sqnr_db"] < tolerance.min_sqnr_db:
        failures.append(f"SQNR vs fp32 {quantization['sqnr_db']:.1f} dB < {tolerance.min_sqnr_db:g} dB")
    return failures
