"""fp16 risk scan: will this model survive float16 compute?

Core ML (and GPU/NPU delegates generally) run float16 by default, and a model whose activations exceed
±65504 overflows to inf, while values below 2**-25 flush to zero; users lose accuracy silently. Before an fp16
export, `scan` runs the PyTorch model on the real sample inputs and records, for every layer (module), the
largest absolute activation of every operation it runs (a dispatch mode sees functional ops too, such as the
attention matmul inside a block, which module forward hooks alone miss; forward hooks attribute each op to
its innermost module), and how many nonzero values would flush to zero. It also runs the model itself in
float16 and compares it with float32 on the same inputs: the best estimate of the fp16 error available
without the target runtime.

Masking constants (e.g. `torch.finfo(float32).min` added to attention scores) are not activations: values of
magnitude >= 2**100 are counted apart as mask sentinels. fp16 turns them into -inf, which softmax handles.

Imports nothing but numpy at module level (the converters package imports every module on import).
"""
from __future__ import annotations

import copy
import time
import warnings
from typing import Any, Sequence

import numpy as np

from converters.base import ConversionError

FP16_MAX = 65504.0
FP16_FLUSH = 2.0 ** -25   # nonzero magnitudes below this round to zero in fp16
MASK_SENTINEL = 2.0 ** 100  # magnitudes at or above this are masking constants, not activations
ROOT = "<root>"  # ops the top-level module runs itself (e.g. pooling in a wrapper's forward)
# Ops whose outputs only move or copy values another op produced (scanning them would only repeat figures).
_COPY_OPS = {"clone", "_to_copy", "copy_", "lift_fresh", "lift_fresh_copy", "cat", "stack", "detach", "alias",
             "contiguous", "expand", "repeat", "index", "embedding", "scalar_tensor", "full", "zeros", "ones",
             "empty", "zeros_like", "ones_like", "full_like", "arange"}


class Fp16RiskWarning(UserWarning):
    """Activations that fp16 cannot represent: the fp16 artifact may lose accuracy."""


class Fp16RiskError(ConversionError):
    """The fp16 risk scan found layers at risk and strict mode was asked for."""


def scan(module, input_names: Sequence[str], feeds: list[dict[str, np.ndarray]], *,
         underflow_fraction: float = 0.01, top: int = 10) -> dict[str, Any]:
    """Max |activation| per layer on the real `feeds`, overflow/underflow risks, and fp16-vs-fp32 error.

    A layer is at overflow risk when any op it runs produces |x| > 65504. It is at underflow risk when the
    values that would flush to zero in fp16 carry more than `underflow_fraction` of an op's output energy
    (sum of squares): losing many tiny values beside large ones is harmless (e.g. a layer scale initialised
    at 1e-5, whose branch a residual add absorbs anyway), losing most of a tensor is not.
    """
    import torch

    start = time.perf_counter()
    stats, sentinels = _activation_stats(module, input_names, feeds)
    layers: dict[str, dict[str, Any]] = {}
    for (layer, op), s in stats.items():
        entry = layers.setdefault(layer, {"max_abs": 0.0, "op": op})
        if s["max_abs"] > entry["max_abs"]:
            entry.update(max_abs=s["max_abs"], op=op)
    # In execution order: the first entry is where the overflow starts; later ones may only carry it on.
    overflow = [{"layer": layer, "op": op, "max_abs": s["max_abs"]}
                for (layer, op), s in stats.items() if s["max_abs"] > FP16_MAX]
    underflow = sorted(({"layer": layer, "op": op, "flushed_energy": s["flushed_energy"] / s["energy"],
                         "flushed_values": s["flushed"] / s["nonzero"], "max_abs": s["max_abs"]}
                        for (layer, op), s in stats.items()
                        if s["energy"] > 0 and s["flushed_energy"] / s["energy"] > underflow_fraction),
                       key=lambda r: -r["flushed_energy"])
    # Weights are cast to fp16 too: a parameter or buffer beyond the range becomes inf.
    weights_overflow = sorted(({"name": n, "max_abs": float(t.detach().abs().max())}
                               for n, t in list(module.named_parameters()) + list(module.named_buffers())
                               if t.is_floating_point() and t.numel() and float(t.detach().abs().max()) > FP16_MAX),
                              key=lambda r: -r["max_abs"])
    ranked = sorted(layers.items(), key=lambda kv: -kv[1]["max_abs"])
    peak_layer, peak = ranked[0] if ranked else ("", {"max_abs": 0.0, "op": ""})
    with torch.no_grad():
        comparison = _fp16_vs_fp32(module, input_names, feeds)
    return {
        "samples": len(feeds),
        "fp16_max": FP16_MAX,
        "max_abs_activation": peak["max_abs"],
        "peak_layer": peak_layer,
        "peak_op": peak["op"],
        "headroom": FP16_MAX / peak["max_abs"] if peak["max_abs"] else None,
        "largest": [{"layer": n, "op": e["op"], "max_abs": e["max_abs"]} for n, e in ranked[:top]],
        "overflow": overflow,
        "underflow": underflow,
        "weights_overflow": weights_overflow,
        "underflow_fraction": underflow_fraction,
        "mask_sentinels": sorted({layer for layer, _ in sentinels}),
        "layers_scanned": len(layers),
        "fp16_vs_fp32": comparison,
        "seconds": time.perf_counter() - start,
    }


def risks(report: dict[str, Any], min_sqnr_db: float | None = None) -> list[str]:
    """Human-readable risks found by `scan` (empty when fp16 looks safe)."""
    found = []
    if report["overflow"]:
        worst: dict[str, dict] = {}
        for r in report["overflow"]:
            worst.setdefault(r["layer"], r)
        found.append("activations beyond ±65504 (fp16 overflow), in execution order, in " + ", ".join(
            f"{layer} ({r['op']}, max {r['max_abs']:.3g})" for layer, r in list(worst.items())[:8]))
    if report["underflow"]:
        found.append("values that flush to zero in fp16 (fp16 underflow) carry more than "
                     f"{report['underflow_fraction']:.0%} of the output in " + ", ".join(
                         f"{r['layer']} ({r['op']}, {r['flushed_energy']:.0%} of its energy)"
                         for r in report["underflow"][:8]))
    if report.get("weights_overflow"):
        found.append("weights beyond ±65504 (inf in fp16): " + ", ".join(
            f"{r['name']} (max {r['max_abs']:.3g})" for r in report["weights_overflow"][:8]))
    comparison = report["fp16_vs_fp32"]
    if "error" in comparison:
        found.append(f"the PyTorch model could not run in float16 ({comparison['error']})")
    elif not comparison["finite"]:
        found.append("the PyTorch model run in float16 gives inf/NaN outputs")
    elif min_sqnr_db is not None and comparison["sqnr_db"] < min_sqnr_db:
        found.append(f"the PyTorch model run in float16 is {comparison['sqnr_db']:.1f} dB from float32 "
                     f"(tolerance {min_sqnr_db:g} dB)")
    return found


def check(module, spec, feeds: list[dict[str, np.ndarray]], strict: bool = False, **scan_options) -> dict[str, Any]:
    """Scan, then warn (`Fp16RiskWarning`) or, with `strict`, raise `Fp16RiskError` naming the layers at risk."""
    tolerance = spec.tolerances.get("fp16")
    report = scan(module, spec.input_names, feeds, **scan_options)
    found = risks(report, tolerance.min_sqnr_db if tolerance else None)
    report["risks"] = found
    if found:
        message = (f"fp16 risk in {spec.name}: " + "; ".join(found) +
                   ". Export at --precision fp32, or rescale those layers.")
        if strict:
            raise Fp16RiskError(message + " (--strict)")
        warnings.warn(message, Fp16RiskWarning, stacklevel=2)
    return report


# -- internals --------------------------------------------------------------------------------------------

def _activation_stats(module, input_names, feeds):
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    stack: list[str] = [ROOT]
    stats: dict[tuple[str, str], dict[str, float]] = {}
    sentinels: set[tuple[str, str]] = set()

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = func.overloadpacket.__name__
            if getattr(func, "is_view", False) or name in _COPY_OPS:
                return out
            first = out[0] if isinstance(out, (tuple, list)) and out else out
            if isinstance(first, torch.Tensor) and first.is_floating_point() and first.numel():
                # Inside __torch_dispatch__ this mode is popped, so the bookkeeping ops below are not recorded.
                _record(first, (stack[-1], name))
            return out

    def _record(tensor, key):
        a = tensor.detach().abs().float().reshape(-1)
        peak = float(a.max())
        if not peak < MASK_SENTINEL:  # mask constants (or inf/NaN): counted apart, left out of the figures
            big = ~(a < MASK_SENTINEL)
            sentinels.add(key)
            a = a.masked_fill(big, 0.0)
            peak = float(a.max())
        small = a < FP16_FLUSH
        zeros = int((a == 0).sum())
        flushed = int(small.sum()) - zeros
        s = stats.setdefault(key, {"max_abs": 0.0, "flushed": 0, "nonzero": 0, "flushed_energy": 0.0, "energy": 0.0})
        s["max_abs"] = max(s["max_abs"], peak)
        s["nonzero"] += a.numel() - zeros
        s["energy"] += float(torch.dot(a, a))
        if flushed:
            tiny = a[small]
            s["flushed"] += flushed
            s["flushed_energy"] += float(torch.dot(tiny, tiny))

    def enter(name):
        def hook(_module, _args):
            stack.append(name)
        return hook

    def leave(_module, _args, _output):
        stack.pop()

    handles = []
    for name, sub in module.named_modules():
        if name:
            handles.append(sub.register_forward_pre_hook(enter(name)))
            handles.append(sub.register_forward_hook(leave))
    try:
        with torch.no_grad(), Recorder():
            for feed in feeds:
                del stack[1:]
                module(*[torch.from_numpy(feed[n]) for n in input_names])
    finally:
        for h in handles:
            h.remove()
    return stats, sentinels


def _fp16_vs_fp32(module, input_names, feeds, max_samples: int = 4) -> dict[str, Any]:
    import torch

    from converters.parity import compare, torch_outputs

    feeds = feeds[:max_samples]  # float16 convolutions are slow on CPU; a few real samples tell enough
    try:
        half = copy.deepcopy(module).half()
        ref = torch_outputs(module, input_names, feeds)
        halved = [{n: (f[n].astype(np.float16) if np.issubdtype(f[n].dtype, np.floating) else f[n])
                   for n in input_names} for f in feeds]
        got = torch_outputs(half, input_names, halved)
    except Exception as exc:  # an op without a CPU half kernel: report it, do not fail the export
        return {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
    figures = compare(ref, got, classifier=True)
    finite = bool(np.isfinite(figures["max_abs_err"]))
    result = {
        "what": "the PyTorch model run in float16 vs float32 on the sample inputs (CPU kernels; Core ML's "
                "fp16 kernels differ, so this estimates the artifact's fp16 error, it does not measure it)",
        "samples": len(feeds), "finite": finite,
        **{k: figures[k] for k in ("max_abs_err", "mean_abs_err", "sqnr_db")},
    }
    if finite:
        result["cosine"] = figures["cosine"]
        result["argmax_agreement"] = figures["top1_agreement"]
    return result
