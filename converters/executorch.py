"""ExecuTorch `.pte`: `torch.export` -> (PT2E int8) -> XNNPACK-lowered program.

fp32 lowers the exported program to XNNPACK. int8 quantizes first with the XNNPACK PT2E quantizer: static
per-channel with activations calibrated on the real sample inputs (vision), or dynamic per-channel linear
layers (BERT family). Before lowering, `converters.rewrites` replaces LayerNorm and attention with
equivalent ops that XNNPACK takes, and `views_for_xnnpack` turns leftover squeezes/expands into views,
so the graph is not cut into dozens of partitions (MobileViT: 1 partition instead of 13).

fp16 (`half_for_xnnpack`): the module in float16 (`module.half()`), lowered to XNNPACK's fp16 kernels: weights
and activations fp16 inside the delegate, float32 inputs and outputs by casts at the boundary (`fp16_io=True`
keeps float16 I/O). XNNPACK takes no dtype cast, so the boundary casts run as ExecuTorch portable kernels. Two
changes keep the fp16 graph whole and finite:
- SiLU is decomposed as `x * sigmoid(x)` in float16 (`fp16_decompositions`). torch's own decomposition of a
  half SiLU computes in float32, with casts around every activation: MobileViT-XXS-tiny fell into 37 partitions,
  against 1.
- LayerNorm computes in float32 (`layernorm_in_fp32`), an fp32 island with its own casts, as the ONNX fp16
  conversion keeps it (converters/onnx.py `FP16_KEEP_FP32`). On a CPU with fp16 arithmetic (the Cortex-A76 board)
  the variance of an fp16 LayerNorm underflowed: XNNPACK runs with denormals flushed, the squares of small
  activations (< 6.1e-5, fp16's smallest normal) and LayerNorm's eps became 0, and rsqrt(0) turned a real photo's
  logits into NaN (MobileViT-XXS-tiny; x86, which widens fp16 to fp32 per kernel, was fine).
XNNPACK has no fp16 GELU (its partitioner says so): GELU runs as the portable fp16 kernel (the BERT family, one
cut per layer). `details["fp16"]` says where each op ran and in which dtype (`fp16_summary`).
XNNPACK runs fp16 only where the CPU has fp16 arithmetic (ARMv8.2-A FP16, `asimdhp`) or, on x86, F16C with AVX
(widened to fp32 per kernel); elsewhere (a Cortex-A72) it refuses the program at runtime creation
(`xnn_status_unsupported_hardware`), and device_runtime refuses it before loading (`backends.executorch`).
"""
from __future__ import annotations

import copy
import functools
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from converters import rewrites
from converters.base import (INT4_BLOCK, Conversion, ConversionError, Converter, Precision, UnsupportedError,
                             int4_blocks_fit, option, register_converter, write_bytes_atomic)
# The program's metadata method and its keys: one contract, defined where the runtime reads it.
from device_runtime.backends.executorch import (META_BUCKET_AXIS, META_BUCKETS, META_INPUTS, META_METHOD, META_OUTPUTS,
                                               META_VALUE_RANGES)


def _dynamic_quantizer():
    """XNNPACK's quantizer, minus its annotation transform.

    The stock `transform_for_annotation` turns scalars into float tensors, including the `arange + 0` index
    of transformers' mask code, and export then fails ("tensors used as indices must be long"). Dynamic
    linear-only quantization needs none of that transform.
    """
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer

    class LinearDynamicQuantizer(XNNPACKQuantizer):
        def transform_for_annotation(self, model):
            return model

    return LinearDynamicQuantizer


def quantize_embeddings(model):
    """Q8BERT's 8-bit embeddings: each `nn.Embedding` becomes int8 rows with a per-row symmetric scale,
    looked up by ExecuTorch's `quantized_decomposed::embedding_byte` kernel (XNNPACK has no gather, so this
    is where the BERT family's int8 file shrinks by the embedding table's 3/4)."""
    import torch
    import executorch.kernels.quantized  # noqa: F401  (registers quantized_decomposed ops: eager and export)

    class ByteEmbedding(torch.nn.Module):
        def __init__(self, embedding: torch.nn.Embedding) -> None:
            super().__init__()
            weight = embedding.weight.detach().float()
            scales = weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0
            self.register_buffer("weight", torch.clamp(torch.round(weight / scales[:, None]), -127, 127).to(torch.int8))
            self.register_buffer("scales", scales)

        def forward(self, indices):
            return torch.ops.quantized_decomposed.embedding_byte.default(
                self.weight, self.scales, None, -127, 127, indices)

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Embedding):
                setattr(parent, name, ByteEmbedding(child))
    return model


def int4_in_blocks(module):
    """4-bit linear weights in blocks of INT4_BLOCK input channels, activations quantized to int8 per run
    (torchao's 8da4w, which XNNPACK lowers to its blockwise kernels); LayerNorm's linear means stay float."""
    import torch
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
    from torchao.quantization.granularity import PerGroup

    layernorm = rewrites.linear_layernorm_type()
    module = copy.deepcopy(module)  # quantize_ works in place
    quantize_(module, Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4,
                                                            weight_granularity=PerGroup(INT4_BLOCK)),
              filter_fn=lambda m, _: isinstance(m, torch.nn.Linear) and not isinstance(m, layernorm))
    return quantize_embeddings(module)


def quantize_pt2e(module, args: tuple, precision: str, calibration: list[tuple], int4_blocks: bool = False):
    """The quantized PyTorch model (simulated quantization): the reference the int8 artifact must match.
    int4-weight goes in blocks (`int4_in_blocks`) when `int4_blocks`, else per channel through PT2E."""
    import torch

    if precision == "int4-weight" and int4_blocks:
        return int4_in_blocks(module)
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                          get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    dynamic = precision in ("int8-dynamic", "int4-weight")
    # int4-weight per channel (widths that blocks do not fit): XNNPACK's qd8-f32-qc4w kernels, which take int8
    # activations quantized per run, as int8-dynamic.
    weight_range = dict(weight_qmin=-8, weight_qmax=7) if precision == "int4-weight" else {}
    quantizer_cls = _dynamic_quantizer() if dynamic else XNNPACKQuantizer
    config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=dynamic, **weight_range)
    if dynamic:
        # Linear layers only (the PRECISIONS definition): XNNPACK's 4-bit weights are for linear layers, and
        # its dynamically quantized convolutions fail at run time ("propagating input shapes failed").
        quantizer = quantizer_cls().set_module_type(torch.nn.Linear, config)
    else:
        quantizer = quantizer_cls().set_global(config)
    # LayerNorm stays float (as in Q8BERT); its rewritten linear means would otherwise be quantized.
    quantizer.set_module_type(rewrites.linear_layernorm_type(), None)
    graph = torch.export.export(quantize_embeddings(module), args).module()
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for sample in calibration:
            prepared(*sample)
    return convert_pt2e(prepared)


def views_for_xnnpack(graph_module):
    """Edge-dialect pass: ops XNNPACK lacks that are only views here become views it has.

    `matmul` on 4-D tensors leaves identity `expand_copy` nodes, and `unbind` leaves `squeeze_copy` of a
    size-1 dim; each would end a delegated partition. Identity expands are dropped; squeezes and
    unsqueezes become `view_copy` to the same shape.
    """
    from executorch.exir.dialects._ops import ops as exir_ops
    from torch.fx.passes.infra.pass_base import PassResult

    aten = exir_ops.edge.aten
    reshapes = (aten.squeeze_copy.dims, aten.squeeze_copy.dim, aten.unsqueeze_copy.default)
    graph = graph_module.graph
    changed = False
    for node in list(graph.nodes):
        if node.op != "call_function" or "val" not in node.meta:
            continue
        source = node.args[0] if node.args else None
        if node.target == aten.expand_copy.default and tuple(source.meta["val"].shape) == tuple(node.meta["val"].shape):
            node.replace_all_uses_with(source)
            graph.erase_node(node)
            changed = True
        elif node.target in reshapes:
            with graph.inserting_before(node):
                view = graph.call_function(aten.view_copy.default, (source, list(node.meta["val"].shape)))
            view.meta = dict(node.meta)
            node.replace_all_uses_with(view)
            graph.erase_node(node)
            changed = True
    graph_module.recompile()
    return PassResult(graph_module, changed)


# -- fp16 ---------------------------------------------------------------------------------------------------
def _silu(x):
    """SiLU in its input's dtype (float16 stays float16: XNNPACK's sigmoid and mul take it whole)."""
    import torch

    return x * torch.sigmoid(x)


def fp16_decompositions() -> dict:
    """Decompositions applied to an fp16 program before lowering (see the module docstring)."""
    import torch

    return {torch.ops.aten.silu.default: _silu}


@functools.lru_cache(maxsize=None)
def fp32_island_type():
    """The fp32-island wrapper (one class per process)."""
    import torch

    class Fp32Island(torch.nn.Module):
        """`inner` (kept float32) on a float32 copy of its input; the result back in the input's dtype."""

        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner.float()

        def forward(self, x):
            return self.inner(x.float()).to(x.dtype)

    return Fp32Island


def layernorm_in_fp32(model):
    """Every LayerNorm (stock, or the rewrite's linear-mean form) of a half model computes in float32."""
    import torch

    norms = (torch.nn.LayerNorm, rewrites.linear_layernorm_type())
    island = fp32_island_type()
    for parent in list(model.modules()):
        if isinstance(parent, island):
            continue
        for name, child in list(parent.named_children()):
            if isinstance(child, norms):
                setattr(parent, name, island(child))
    return model


@functools.lru_cache(maxsize=None)
def float_io_type():
    """The float32-boundary wrapper of an fp16 model (one class per process)."""
    import torch

    class Float32IO(torch.nn.Module):
        """A float16 model with float32 inputs and outputs: floating inputs cast to float16 on the way in, float16
        outputs to float32 on the way out; integer and bool inputs (token ids, masks) pass unchanged."""

        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *args):
            out = self.inner(*(a.half() if a.is_floating_point() else a for a in args))
            if isinstance(out, (tuple, list)):
                return type(out)(o.float() if o.dtype == torch.float16 else o for o in out)
            return out.float() if out.dtype == torch.float16 else out

    return Float32IO


def half_for_xnnpack(module, fp16_io: bool = False):
    """The fp16 model that is exported: `module` (a copy, already rewritten) in float16, LayerNorm in float32, and
    float32 I/O unless `fp16_io`."""
    work = layernorm_in_fp32(module.half()).eval()
    return work if fp16_io else float_io_type()(work).eval()


def half_args(args: tuple) -> tuple:
    return tuple(a.half() if a.is_floating_point() else a for a in args)


def fp16_summary(edge_program, fp16_io: bool) -> dict:
    """What ran in fp16 and where: the ops inside XNNPACK by output dtype, and the ops left to portable kernels
    (dtype casts: at the inputs/outputs, around the fp32 LayerNorm islands, of constants; other fp16 ops)."""
    import torch
    from executorch.exir.backend.utils import get_delegates, get_non_lowered_nodes

    graph_module = edge_program.graph_module
    inside = Counter()
    for node in get_delegates(graph_module.graph):
        for inner in getattr(graph_module, node.name).original_module.graph.nodes:
            val = inner.meta.get("val") if inner.op == "call_function" else None
            if isinstance(val, torch.Tensor) and val.is_floating_point():
                inside[str(val.dtype).replace("torch.", "")] += 1
    casts, portable = Counter(), {"float16": Counter(), "float32": Counter()}
    for node in get_non_lowered_nodes(graph_module.graph):
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor):
            continue
        source = node.args[0] if node.args else None
        source_val = getattr(source, "meta", {}).get("val")
        if "_to_dim_order_copy" in _op_name(node.target) and isinstance(source_val, torch.Tensor) \
                and source_val.dtype != val.dtype:
            if source.op == "placeholder" and source.name in edge_program.graph_signature.user_inputs:
                kind = "inputs"
            elif any(user.op == "output" for user in node.users):
                kind = "outputs"
            elif source.op == "placeholder":
                kind = "constants"
            else:
                kind = "between partitions (fp32 islands)"
            casts[kind] += 1
        elif str(val.dtype).replace("torch.", "") in portable:
            portable[str(val.dtype).replace("torch.", "")][_op_name(node.target)] += 1
    # fp32 runs only in the LayerNorm islands: inside XNNPACK where the norm is the rewrite's linear-mean form, as
    # a portable native_layer_norm where it was left a stock LayerNorm (rewrite=False, or a subclass such as timm's).
    return {"io": "float16" if fp16_io else "float32", "xnnpack_ops_by_dtype": dict(inside),
            "portable_casts": dict(casts), "portable_fp16_ops": dict(portable["float16"]),
            "portable_fp32_ops": dict(portable["float32"]),
            "float32_ops": "LayerNorm (its statistics underflow in fp16 where XNNPACK flushes denormals)"}


def delegation_summary(edge_program) -> dict:
    """How much of the graph XNNPACK took: partitions, delegated ops, and the ops left to portable kernels."""
    from executorch.exir.backend.utils import get_delegates, get_non_lowered_nodes

    graph_module = edge_program.graph_module
    delegates = get_delegates(graph_module.graph)
    delegated = Counter()
    for node in delegates:
        lowered = getattr(graph_module, node.name)
        for inner in lowered.original_module.graph.nodes:
            if inner.op == "call_function":
                delegated[_op_name(inner.target)] += 1
    portable = Counter(_op_name(n.target) for n in get_non_lowered_nodes(graph_module.graph))
    portable.pop("getitem", None)
    return {
        "backend": "XnnpackBackend",
        "partitions": len(delegates),
        "delegated_ops": sum(delegated.values()),
        "portable_ops": sum(portable.values()),
        "portable_op_types": dict(portable.most_common()),
    }


def _op_name(target) -> str:
    name = getattr(target, "__name__", str(target))
    return name.split("::")[-1]


@register_converter
class ExecuTorchConverter(Converter):
    format = "pte"
    suffix = ".pte"
    description = "ExecuTorch program, XNNPACK-delegated (Android, iOS, Linux)"
    precisions = ("fp32", "fp16", "int8-static", "int8-dynamic", "int4-weight")
    extra = "pte"
    required_modules = ("executorch",)

    @dataclass(frozen=True)
    class Options:
        rewrite: bool = option(True, "rewrite modules XNNPACK cannot take whole (LayerNorm, attention masks) into "
                                     "equivalent ones it can (the artifact is still checked against the original)")
        fp16_io: bool = option(False, "fp16: float16 model inputs and outputs (default: float32, cast at the "
                                      "boundary, so feeds need no cast)")

    multi_length = True

    def convert(self, module, spec, precision, calibration, path: Path, rewrite: bool = True,
                fp16_io: bool = False) -> Conversion:
        from device_runtime.buckets import SEQUENCE

        return self._program(module, {None: spec}, precision, {None: calibration}, path, rewrite, SEQUENCE, fp16_io)

    def convert_buckets(self, module, specs, precision, calibration, path: Path, rewrite: bool = True,
                        fp16_io: bool = False) -> Conversion:
        """One program; with several lengths, one method per length (`seq<N>`) and `forward` = the largest.
        ExecuTorch stores a constant used by several methods once (measured: 4 lengths of TinyBERT-tiny in a
        file 1.02x the single-length one)."""
        from device_runtime.buckets import SEQUENCE

        return self._program(module, specs, precision, calibration, path, rewrite, SEQUENCE, fp16_io)

    def convert_packed_rows(self, module, specs, precision, calibration, path: Path, rewrite: bool = True,
                            fp16_io: bool = False) -> Conversion:
        """Packed entry points in several row lengths (`export --pack 32x4,64x8,128x16`): one method per row
        length (`pack<N>`) and `forward` = the longest, the weights stored once, as for lengths. `specs` and
        `calibration` are keyed by row length; `module` serves every row length (its output has the segment
        count of the row length it is traced at)."""
        from device_runtime.buckets import PACKED
        from device_runtime.packing import packed_rows_details

        conversion = self._program(module, specs, precision, calibration, path, rewrite, PACKED, fp16_io)
        conversion.details["buckets"] = packed_rows_details({n: s.packing[1] for n, s in specs.items()})
        return conversion

    multi_batch = True

    def convert_batches(self, module, spec, precision, calibration, path: Path, rewrite: bool = True,
                        fp16_io: bool = False) -> Conversion:
        """One program with one method per batch size (`batch<N>`, traced on `calibration[N]`, feeds of N rows)
        and `forward` = the smallest (batch 1 where it is one), the weights stored once. int8-static quantizes
        per batch size (a quantized graph is traced at one shape), calibrated on the same images stacked N at a
        time: the per-channel weights quantize identically, so the methods share them."""
        from device_runtime.buckets import BATCH

        return self._program(module, {size: spec for size in calibration}, precision, calibration, path, rewrite,
                             BATCH, fp16_io)

    def _program(self, module, specs, precision, calibration, path: Path, rewrite: bool, axis,
                 fp16_io: bool = False) -> Conversion:
        """The program of `convert` / `convert_buckets` / `convert_batches`: `specs` and `calibration` are keyed by
        the bucket's size along `axis` (or None: one plain `forward`)."""
        precision = Precision.of(precision)
        if fp16_io and precision != "fp16":
            raise UnsupportedError(f"--fp16-io applies to fp16 only, not {precision}")
        import torch
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

        from device_runtime.buckets import BATCH

        entry_point = axis.entry_point
        bucketed = len(specs) > 1 or axis is BATCH  # a single batch size is still a bucket (rows are padded to it)
        # Always a copy: quantization rewrites the module in place, and the caller's model must stay fp32 for the
        # formats exported after this one.
        work = rewrites.for_xnnpack(copy.deepcopy(module)) if rewrite else copy.deepcopy(module)
        int4_blocks = precision == "int4-weight" and int4_blocks_fit(work)  # decided once, here
        if precision == "fp16":
            work = half_for_xnnpack(work, fp16_io)
        spec = specs[max(specs, key=lambda k: k or 0)]
        exported, references = {}, {}
        try:
            for length, length_spec in specs.items():
                feeds = calibration[length]
                args = tuple(torch.from_numpy(feeds[0][n]) for n in length_spec.input_names)
                samples = [tuple(torch.from_numpy(feed[n]) for n in length_spec.input_names) for feed in feeds]
                lowered_module, references[length] = work, module
                if precision.is_quantized:
                    # Per length: a quantized graph is traced at one shape. The weights quantize identically
                    # (per channel, from the same fp32 weights), so the methods still share them.
                    lowered_module = references[length] = quantize_pt2e(work, args, precision, samples, int4_blocks)
                if precision == "fp16":
                    program = torch.export.export(lowered_module, half_args(args) if fp16_io else args)
                    exported[length] = program.run_decompositions(fp16_decompositions())
                else:
                    exported[length] = torch.export.export(lowered_module, args)
        except Exception as exc:
            raise ConversionError(f"ExecuTorch could not export {spec.name} ({precision}): "
                                  f"{type(exc).__name__}: {str(exc)[:500]}") from exc
        # `forward`: the largest length (a full sentence), or the smallest batch (one request); the same program
        # as that bucket's method, which costs the file ~3 KB (MobileViT-XXS-tiny).
        forward = (min if axis is BATCH else max)(exported, key=lambda k: k or 0)
        names = {length: entry_point(length) for length in specs} if bucketed else {}
        programs = {"forward": exported[forward]}
        if bucketed:
            programs.update({names[length]: program for length, program in exported.items()})
        ranges = {s.name: list(s.value_range) for s in spec.input_specs() if getattr(s, "value_range", None)}
        meta = {META_INPUTS: list(spec.input_names), META_OUTPUTS: list(spec.output_names),
                META_VALUE_RANGES: ranges, "model": spec.name, "precision": precision}
        if bucketed:
            meta[META_BUCKETS] = {str(length): names[length] for length in sorted(specs)}
            meta[META_BUCKET_AXIS] = axis.name
        try:
            edge = to_edge_transform_and_lower(
                programs, transform_passes=[views_for_xnnpack] if rewrite else None,
                partitioner=[XnnpackPartitioner()],
                constant_methods={META_METHOD: torch.tensor(list(json.dumps(meta).encode()), dtype=torch.uint8)})
            delegation = delegation_summary(edge.exported_program("forward"))
            fp16 = fp16_summary(edge.exported_program("forward"), fp16_io) if precision == "fp16" else None
            program = edge.to_executorch()
        except Exception as exc:
            raise ConversionError(f"ExecuTorch could not lower {spec.name} ({precision}): "
                                  f"{type(exc).__name__}: {str(exc)[:500]}") from exc
        write_bytes_atomic(path, program.buffer)
        details = {"delegation": delegation, "rewrites": rewrite}
        if fp16:
            details["fp16"] = fp16
        if bucketed:
            details["buckets"] = ({"axis": axis.name, "batch_sizes": sorted(specs), "entry_points": meta[META_BUCKETS]}
                                  if axis is BATCH else
                                  {"lengths": sorted(specs), "entry_points": meta[META_BUCKETS]})
        if precision == "int4-weight":
            details["int4_granularity"] = f"blocks of {INT4_BLOCK}" if int4_blocks else "per channel"
        reference = references if bucketed and precision.is_quantized else next(iter(references.values()))
        return Conversion(path, reference, details)
