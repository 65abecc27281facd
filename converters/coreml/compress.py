"""Core ML weight compression after conversion (`--compress`, and `int4-weight`), with `coremltools.optimize`:
int8 linear weights (symmetric, per channel), 4/6-bit k-means palettization, 50% magnitude pruning, and the
nominal size factor each should reach.
"""
from __future__ import annotations

from converters.base import UnsupportedError

COMPRESSIONS = {
    "int8": "int8 linear weight quantization (symmetric, per output channel); fp16/fp32 activations",
    "palettize4": "4-bit k-means palettization (16-entry lookup table per tensor)",
    "palettize6": "6-bit k-means palettization (64-entry lookup table per tensor)",
    "prune50": "magnitude pruning to 50% sparsity, stored sparse (bit mask + nonzero values)",
}
# Weights with at most this many elements stay uncompressed (coremltools' default; tiny tensors such as
# biases and norms gain nothing and lose accuracy).
WEIGHT_THRESHOLD = 2048
# The nominal weight-bytes factor of the compressed tensors against fp16 (lookup tables, scales and masks
# add a little): used by the tests and shown in the report (see `expected_factor` for fp32 packages).
EXPECTED_FACTOR_VS_FP16 = {"int8": 0.5, "palettize4": 0.25, "palettize6": 0.375, "prune50": 0.5 + 1 / 16}


def expected_factor(method: str, dense_bits: int = 16) -> float:
    """Nominal stored/dense bytes of a compressed tensor whose dense weights are `dense_bits` wide."""
    if method == "prune50":
        return 0.5 + 1 / dense_bits  # half the values, plus a 1-bit mask per element
    return {"int8": 8, "palettize4": 4, "palettize6": 6}[method] / dense_bits


def compress_model(mlmodel, method: str):
    """The compressed copy of `mlmodel` (weights over WEIGHT_THRESHOLD elements), via coremltools.optimize."""
    import coremltools.optimize.coreml as cto

    if method == "int8":
        config = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel",
                                             weight_threshold=WEIGHT_THRESHOLD)
        return cto.linear_quantize_weights(mlmodel, cto.OptimizationConfig(global_config=config))
    if method in ("palettize4", "palettize6"):
        config = cto.OpPalettizerConfig(mode="kmeans", nbits=int(method[-1]), granularity="per_tensor",
                                        weight_threshold=WEIGHT_THRESHOLD)
        return cto.palettize_weights(mlmodel, cto.OptimizationConfig(global_config=config))
    if method == "prune50":
        config = cto.OpMagnitudePrunerConfig(target_sparsity=0.5, weight_threshold=WEIGHT_THRESHOLD)
        return cto.prune_weights(mlmodel, cto.OptimizationConfig(global_config=config))
    raise UnsupportedError(f"unknown compression {method!r}; choose from {', '.join(COMPRESSIONS)}")
