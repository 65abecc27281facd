"""Parity of an artifact (or any second computation) against a reference: the one place the figures are
computed and the one pass/fail rule.

Used by the export pipeline (artifact vs its PyTorch reference, and vs fp32), by Ascend (the ATC-ready ONNX
and AMCT's fake-quant model vs PyTorch), by the ONNX converter (ORT-optimised graph vs unoptimised) and by
the fp16 scan (PyTorch in float16 vs float32). numpy only, except `torch_outputs`, which imports torch.

Outputs are lists (one per sample) of lists (one per model output) of arrays. Shapes are compared output by
output; figures are given overall and per output.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from device_runtime.errors import EXIT_PARITY, PocketformerError

# Below this the reference outputs are too flat for an error check to mean anything
# (e.g. an uninitialised transformers model printing values near 1e-40).
MIN_REFERENCE_STD = 1e-3


class ParityError(PocketformerError, RuntimeError):
    """The artifact's outputs differ from the reference by more than the model's tolerance (or have other shapes)."""

    exit_code = EXIT_PARITY


class DegenerateReferenceError(PocketformerError, RuntimeError):
    """The reference outputs have no spread, so parity against them would prove nothing."""

    exit_code = EXIT_PARITY


Outputs = Sequence[Sequence[np.ndarray]]


def torch_outputs(module, input_names, feeds: list[dict]) -> list[list[np.ndarray]]:
    """Run a PyTorch module on numpy feeds (batch as given); outputs as float numpy arrays."""
    import torch

    outs = []
    with torch.no_grad():
        for feed in feeds:
            result = module(*[torch.from_numpy(feed[n]) for n in input_names])
            result = result if isinstance(result, (tuple, list)) else (result,)
            outs.append([r.detach().float().numpy() for r in result])
    return outs


def _flat(outputs: Outputs, index: int | None = None) -> np.ndarray:
    arrays = [np.asarray(o, np.float64).ravel() for sample in outputs
              for i, o in enumerate(sample) if index is None or i == index]
    return np.concatenate(arrays) if arrays else np.zeros(0)


def check_spread(outputs: Outputs, what: str) -> float:
    """The reference's standard deviation; raises `DegenerateReferenceError` when it is non-finite or flat."""
    flat = _flat(outputs)
    if not np.all(np.isfinite(flat)):
        raise DegenerateReferenceError(f"{what}: reference outputs contain NaN or inf")
    std = float(flat.std()) if flat.size else 0.0
    if std < MIN_REFERENCE_STD:
        raise DegenerateReferenceError(f"{what}: reference outputs have no spread (std {std:.3g} < "
                                       f"{MIN_REFERENCE_STD}); are the weights initialised?")
    return std


def check_shapes(reference: Outputs, actual: Outputs) -> None:
    """Same number of samples and outputs, and each output the same shape; else `ParityError` naming it."""
    if len(reference) != len(actual):
        raise ParityError(f"{len(actual)} samples of outputs, the reference has {len(reference)}")
    for s, (ref, got) in enumerate(zip(reference, actual)):
        if len(ref) != len(got):
            raise ParityError(f"sample {s}: {len(got)} outputs, the reference has {len(ref)}")
        for i, (r, g) in enumerate(zip(ref, got)):
            if tuple(np.shape(r)) != tuple(np.shape(g)):
                raise ParityError(f"sample {s}, output {i}: shape {list(np.shape(g))}, the reference's is "
                                  f"{list(np.shape(r))}")


def _figures(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    if ref.size == 0:
        return {"max_abs_err": 0.0, "mean_abs_err": 0.0, "max_rel_err": 0.0, "sqnr_db": float("inf"),
                "cosine": 1.0, "reference_scale": 0.0}
    finite = bool(np.all(np.isfinite(got)))
    err = got - ref
    noise = float(np.sum(err ** 2)) if finite else float("inf")
    signal = float(np.sum(ref ** 2))
    scale = float(np.max(np.abs(ref)))
    denom = float(np.linalg.norm(ref) * np.linalg.norm(got)) if finite else 0.0
    max_abs = float(np.max(np.abs(err))) if finite else float("inf")
    return {
        "max_abs_err": max_abs,
        "mean_abs_err": float(np.mean(np.abs(err))) if finite else float("inf"),
        # Error as a fraction of the reference's largest magnitude: what an "atol" means across models
        # whose outputs live on different scales (logits of 10 vs embeddings of 0.1).
        "max_rel_err": (max_abs / scale) if scale else float("inf"),
        "sqnr_db": (float("inf") if noise == 0 else float(10 * np.log10(signal / noise))) if finite
                   else float("-inf"),
        "cosine": float(ref @ got / denom) if denom else 0.0,
        "reference_scale": scale,
    }


def top1_agreement(reference: Outputs, actual: Outputs, output: int = 0) -> float:
    """Fraction of samples whose arg-max (of the given output, per batch row) agrees."""
    agree = []
    for ref, got in zip(reference, actual):
        r = np.asarray(ref[output]).reshape(np.shape(ref[output])[0], -1)
        g = np.asarray(got[output]).reshape(np.shape(got[output])[0], -1)
        agree.extend((np.argmax(r, axis=1) == np.argmax(g, axis=1)).tolist())
    return float(np.mean(agree)) if agree else 1.0


def compare(reference: Outputs, actual: Outputs, classifier: bool = False,
            output_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Max/mean abs error, relative error, SQNR (dB) and cosine, overall and per output; top-1 agreement for
    classifiers. Raises `ParityError` when the shapes differ (output by output)."""
    check_shapes(reference, actual)
    metrics: dict[str, Any] = {**_figures(_flat(reference), _flat(actual)), "samples": len(reference)}
    count = len(reference[0]) if reference else 0
    if count > 1:
        names = list(output_names or [])
        metrics["outputs"] = {(names[i] if i < len(names) else str(i)):
                              _figures(_flat(reference, i), _flat(actual, i)) for i in range(count)}
    if classifier:
        metrics["top1_agreement"] = top1_agreement(reference, actual)
    return metrics


def error_bound(tolerance, figures: dict) -> float:
    """The max abs error `figures` may have: `atol`, or `rtol` times the reference's scale if that is larger."""
    rtol = getattr(tolerance, "rtol", None)
    return max(tolerance.atol, (rtol or 0.0) * figures.get("reference_scale", 0.0))


def judge(lowering: dict, quantization: dict | None, tolerance) -> list[str]:
    """The reasons an artifact fails its tolerance; empty when it passes.

    `tolerance` has `atol` (absolute, vs its own reference), optional `rtol` (relative to the reference's
    largest magnitude; the check passes when either bound holds), `min_sqnr_db` (vs fp32),
    `min_cosine` and `min_top1` (vs fp32 when quantized, else vs the reference).
    """
    failures = []
    atol, rtol = tolerance.atol, getattr(tolerance, "rtol", None)
    err = lowering["max_abs_err"]
    bound = error_bound(tolerance, lowering)
    if not np.isfinite(err) or err > bound:
        how = f"{atol:g}" if bound == atol else f"{bound:.3g} (rtol {rtol:g} of the reference's scale)"
        failures.append(f"max abs error vs its PyTorch reference {err:.3g} > {how}")
    against = quantization if quantization is not None else lowering
    which = "vs fp32" if quantization is not None else "vs its PyTorch reference"
    min_sqnr = getattr(tolerance, "min_sqnr_db", None)
    if quantization is not None and min_sqnr is not None and not quantization["sqnr_db"] >= min_sqnr:
        failures.append(f"SQNR vs fp32 {quantization['sqnr_db']:.1f} dB < {min_sqnr:g} dB")
    min_cosine = getattr(tolerance, "min_cosine", None)
    if min_cosine is not None and not against["cosine"] >= min_cosine:
        failures.append(f"cosine {which} {against['cosine']:.4f} < {min_cosine:g}")
    min_top1 = getattr(tolerance, "min_top1", None)
    if min_top1 is not None and "top1_agreement" in against and not against["top1_agreement"] >= min_top1:
        failures.append(f"top-1 agreement {which} {against['top1_agreement']:.2f} < {min_top1:g}")
    return failures
