"""LiteRT / TensorFlow Lite `.tflite`: litert-torch -> fp32 flatbuffer -> (ai-edge-quantizer | PT2E) -> XNNPACK.

Routes, by precision:

- fp32: `litert_torch.convert` of the model, with named inputs and outputs (the spec's names).
- fp16: the fp32 flatbuffer with fp16 weights (ai-edge-quantizer float casting of FULLY_CONNECTED, CONV_2D,
  DEPTHWISE_CONV_2D and EMBEDDING_LOOKUP weights; the runtime dequantizes them once).
- int8-dynamic: the fp32 flatbuffer quantized by ai-edge-quantizer's dynamic-range recipe: int8 per-channel
  weights, float activations quantized per run inside the kernels. Works on all four families (litert-torch's
  own PT2E dynamic route does not: on the BERT family the interpreter refuses it, "op EMBEDDING_LOOKUP
  (kernel tflite/kernels/embedding_lookup.cc): zero_point == 0 was not true").
- int4-weight: ai-edge-quantizer's 4-bit FULLY_CONNECTED weights in blocks of 32 input channels where every
  layer's width allows it, else per channel (`int4_granularity`). It takes blockwise 4-bit only as dynamic, so
  the XNNPACK kernels quantize each layer's input to int8 per run, as in ExecuTorch; embedding tables are 4-bit.
- int8-static (calibrated on the spec's real sample inputs), two routes (`static_route`, `--int8-route`):
  - "pt2e" (default for models without embedding tables: the vision families): litert-torch's PT2E quantizer
    (per-channel weights, histogram observers) -> `convert_pt2e` -> `litert_torch.convert`. The quantized
    PyTorch model is the verification reference. litert-torch's quantizer annotates conv, linear, add and
    pooling only; LayerNorm, SiLU, softmax and the attention matmuls run in float between QUANTIZE and
    DEQUANTIZE ops (listed in `details["float_ops"]`), and XNNPACK takes the whole graph.
  - "aeq" (default for the BERT family): full-integer. ai-edge-quantizer's static recipe (int8 weights and
    activations for every op it supports) on the fp32 flatbuffer, calibrated with min/max over the samples;
    embedding tables are int8 too (hybrid lookup). Two changes make it accurate (tinybert-tiny, SQNR vs fp32
    12.4 dB -> 35 dB): the additive attention mask uses a bounded "minus infinity"
    (`_bounded_attention_mask`), so the int8 range of `scores + mask` is that of real scores instead of
    [-3.4e38, x]; and activation ranges are the min/max over the samples rather than ai-edge-quantizer's
    default moving average, which clips the extremes of a small calibration set. On the vision families this
    route is full-integer too but loses more (mobilevit-tiny: 14.8 dB against 23 dB for "pt2e"; int8
    LayerNorm is the main loss), so it is opt-in there.
  A converted model that LiteRT cannot prepare fails with the kernel named; `allow_fallback=True`
  (`--allow-fallback`) exports dynamic-range int8 instead and says so in the report.
  Model I/O is float by default: int8 inputs get a QUANTIZE op and int8 outputs a DEQUANTIZE op in the
  graph. `int8_io=True` (`--int8-io`) keeps int8 I/O; feed it quantized data (or load with adapt_io=True).

`details` in the report: the route, the op histogram, which ops XNNPACK took (and which it left to the
builtin kernels), the I/O types and, for int8-static, the ops that still compute in float (`float_ops`, float
in and float out) and whether there are none (`full_integer`).

The torch side (litert-torch conversion, PT2E, the attention-mask rewrite) and the converter are here; the
flatbuffer side (ai-edge-quantizer recipes, float I/O, inspection) is `converters.tflite.flatbuffer`.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path

from converters.base import (INT4_BLOCK, Conversion, ConversionError, Converter, Precision, UnsupportedError,
                             int4_blocks_fit, option, register_converter, write_bytes_atomic)
from converters.tflite.flatbuffer import (first_line, float_io, inspect_flatbuffer, prepare_check, quantize_static,
                                          quantize_weights, quiet, rename_signature, share_across_signatures)

# A masked attention score is pushed this many units below the lowest unmasked score seen in calibration:
# its softmax weight is then below exp(-30) ~ 1e-13 of the largest, i.e. zero in fp32 arithmetic.
MASK_MARGIN = 30.0


# ----------------------------------------------------------------------------------------------------
# Torch side
# ----------------------------------------------------------------------------------------------------
def _named_io(module, input_names, output_names):
    """The module with keyword inputs and a dict of outputs, so the flatbuffer's signature carries the
    spec's names (`pixel_values` -> `logits`) instead of `args_0` -> `output_0`."""
    import torch

    class NamedIO(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, **feed):
            result = self.inner(*[feed[n] for n in input_names])
            result = result if isinstance(result, (tuple, list)) else (result,)
            if len(result) != len(output_names):
                raise ValueError(f"the model returned {len(result)} outputs, the spec names {len(output_names)}")
            return dict(zip(output_names, result))

    named = NamedIO(module)
    named.training = False  # not .eval(): an exported (PT2E) GraphModule refuses train/eval switches
    return named


def _torch_feeds(spec, calibration):
    import torch

    return [{n: torch.from_numpy(feed[n]) for n in spec.input_names} for feed in calibration]


def _has_embedding(module) -> bool:
    import torch

    return any(isinstance(m, torch.nn.Embedding) for m in module.modules())


def _attention_configs(module) -> list:
    return [m.config for m in module.modules()
            if getattr(m, "config", None) is not None and hasattr(m.config, "_attn_implementation")]


def _bounded_attention_mask(module, spec, calibration) -> float | None:
    """Make the additive attention mask finite: `where(keep, 0, -bound)` instead of `where(keep, 0, -3.4e38)`.

    Full-integer attention quantizes `scores + mask` with one scale; with the dtype's minimum in it the
    scale is ~1e36 and every score rounds to zero. `bound` is the range of the unmasked scores seen on the
    calibration samples plus `MASK_MARGIN`, so masked positions still get zero weight after the softmax
    (same outputs in fp32, checked here) while the int8 range stays that of real scores. Applies to
    transformers models (the BERT family); returns None for models without such attention. Mutates `module`.
    """
    import torch

    configs = _attention_configs(module)
    if not configs:
        return None
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask
    from transformers.models.bert.modeling_bert import eager_attention_forward

    state = {"bound": None, "low": float("inf"), "high": float("-inf")}

    def bool_mask(*args, **kwargs):
        kwargs.pop("dtype", None)
        kwargs["allow_is_bidirectional_skip"] = False
        return sdpa_mask(*args, **kwargs)  # True where attention is allowed

    def attention(mod, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        if attention_mask is not None and attention_mask.dtype == torch.bool:
            if state["bound"] is None:  # observing: exact original semantics, record the score range
                scores = torch.matmul(query, key.transpose(2, 3)) * (scaling or query.size(-1) ** -0.5)
                state["low"] = min(state["low"], float(scores.min()))
                state["high"] = max(state["high"], float(scores.max()))
                attention_mask = torch.where(attention_mask, 0.0, torch.finfo(query.dtype).min)
            else:
                attention_mask = torch.where(attention_mask, 0.0, -state["bound"])
        return eager_attention_forward(mod, query, key, value, attention_mask, scaling, dropout, **kwargs)

    name = "pocketformer_bounded_mask"
    AttentionInterface.register(name, attention)
    AttentionMaskInterface.register(name, bool_mask)
    for config in configs:
        config._attn_implementation = name
    feeds = _torch_feeds(spec, calibration)
    with torch.no_grad():
        before = [module(*f.values()) for f in feeds]
        if state["low"] == float("inf"):
            raise ConversionError(f"{spec.name}: the attention-mask rewrite saw no attention scores")
        state["bound"] = float(state["high"] - state["low"] + MASK_MARGIN)
        after = [module(*f.values()) for f in feeds]
    err = max(float((a - b).abs().max()) for a, b in zip(after, before))
    if not err <= 1e-5:
        raise ConversionError(f"{spec.name}: the bounded attention mask changed the outputs by {err:.3g}")
    return state["bound"]


def _litert_convert(module, spec, calibration, quant_config=None, lengths: dict | None = None, axis=None) -> bytes:
    """litert-torch conversion with named I/O; the progress display and converter logs are silenced.
    `lengths` ({length: (spec, calibration)}) makes one signature per sequence length (`seq<N>`, the name
    `device_runtime.buckets` routes to), or per batch size with `axis=BATCH` (`batch<N>`, calibration feeds of N
    rows); litert-torch stores each weight once for all of them."""
    import torch
    import litert_torch

    from device_runtime.buckets import SEQUENCE

    entry_point = (axis or SEQUENCE).entry_point

    named = _named_io(module, spec.input_names, spec.output_names)
    previous = os.environ.get("LITERT_TORCH_SHOW_PROGRESS")
    os.environ["LITERT_TORCH_SHOW_PROGRESS"] = "n"
    try:
        with quiet(), torch.no_grad():
            if not lengths:
                edge = litert_torch.convert(named, sample_kwargs=_torch_feeds(spec, calibration)[0],
                                            quant_config=quant_config)
            else:
                converter = litert_torch
                for length, (length_spec, feeds) in sorted(lengths.items()):
                    converter = converter.signature(entry_point(length), named,
                                                    sample_kwargs=_torch_feeds(length_spec, feeds)[0])
                edge = converter.convert(quant_config=quant_config)
            return bytes(edge.model_content())
    except Exception as exc:
        raise ConversionError(f"litert-torch could not convert {spec.name}: {first_line(exc)}") from exc
    finally:
        if previous is None:
            os.environ.pop("LITERT_TORCH_SHOW_PROGRESS", None)
        else:
            os.environ["LITERT_TORCH_SHOW_PROGRESS"] = previous


def _pt2e_static(module, spec, calibration, quantizer=None):
    """litert-torch's PT2E static int8: the quantized GraphModule (the reference) and its flatbuffer.
    `quantizer`: another PT2E quantizer (mixed precision's, restricted to chosen submodules)."""
    import torch
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = quantizer or PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True,
                                                                                          is_dynamic=False))
    samples = [tuple(f.values()) for f in _torch_feeds(spec, calibration)]
    with torch.no_grad():
        graph = torch.export.export(module, samples[0]).module()
        prepared = prepare_pt2e(graph, quantizer)
        for sample in samples:
            prepared(*sample)
        quantized = move_exported_model_to_eval(convert_pt2e(prepared, fold_quantize=False))
    content = _litert_convert(quantized, spec, calibration, QuantConfig(pt2e_quantizer=quantizer))
    return quantized, content



# ----------------------------------------------------------------------------------------------------
# The converter
# ----------------------------------------------------------------------------------------------------
def int4_granularity(module) -> str:
    """Blocks of 32 input channels where every linear width allows them (all-MiniLM-L6-v2: 9.2 dB SQNR against
    6.5 per channel), else per channel (MobileViT has 80-wide layers)."""
    return f"BLOCKWISE_{INT4_BLOCK}" if int4_blocks_fit(module) else "CHANNELWISE"


WEIGHT_ROUTES = {  # precisions made by ai-edge-quantizer on the fp32 flatbuffer, weights only
    "fp16": "float16 weights",
    "int8-dynamic": "dynamic-range int8 (wi8 afp32)",
    "int4-weight": "int4 FULLY_CONNECTED weights, in blocks of 32 where widths allow, else per channel (XNNPACK "
                   "4-bit kernels: inputs quantized per run), 4-bit embedding lookup",
}


@register_converter
class TFLiteConverter(Converter):
    format = "tflite"
    suffix = ".tflite"
    description = "LiteRT / TensorFlow Lite flatbuffer, XNNPACK on CPU (Android, iOS, Linux, microcontrollers)"
    precisions = ("fp32", "fp16", "int8-static", "int8-dynamic", "int4-weight", "mixed")
    extra = "tflite"
    required_modules = ("litert_torch", "ai_edge_litert", "ai_edge_quantizer")

    @dataclass(frozen=True)
    class Options:
        int8_io: bool = option(False, "int8-static: keep int8 model inputs/outputs (feed data quantized with the "
                                      "input's scale and zero point) instead of float I/O")
        allow_fallback: bool = option(False, "int8-static: when an op blocks static int8, export dynamic-range "
                                             "int8 instead of failing (the report says so)")
        static_route: str = option("auto", "int8-static: pt2e (litert-torch PT2E: conv/linear/add/pool in int8, "
                                           "verified against the quantized PyTorch model), aeq (ai-edge-quantizer: "
                                           "full-integer), auto (aeq for models with embeddings, else pt2e, "
                                           "and aeq where pt2e cannot convert the model)",
                                   choices=("auto", "pt2e", "aeq"), flag="--int8-route")
        mixed_plan: str | None = option(None, "mixed: a plan file (converters.mixed.plan) to reuse, or a new file to "
                                              "write the measured plan to", metavar="FILE")
        mixed_threads: int = option(2, "mixed: the thread count int8's cost is measured at (the target's)")

    def unsupported_reason(self, spec, precision, **options) -> str | None:
        plan = options.get("mixed_plan")
        if plan and precision != "mixed":
            return f"--mixed-plan applies to --precision mixed, not {precision}"
        if precision == "mixed" and spec.int8_scheme != "static":
            return ("mixed precision chooses static int8 per unit from measured cost: for the vision families "
                    f"(int8-static); {spec.name}'s int8 is {spec.int8_scheme} (use --precision int8)")
        if plan and Path(plan).is_file():  # a malformed plan is refused before the model is built
            from converters.mixed.plan import MixedPlanError, read_plan

            try:
                read_plan(plan, self.format)
            except MixedPlanError as exc:
                return str(exc)
        return super().unsupported_reason(spec, precision, **options)

    def artifact_name(self, int8_io: bool = False, **options) -> str:
        return "model-int8io.tflite" if int8_io else "model.tflite"

    def convert(self, module, spec, precision, calibration, path: Path, int8_io: bool = False,
                allow_fallback: bool = False, static_route: str = "auto", mixed_plan: str | None = None,
                mixed_threads: int = 2, **_) -> Conversion:
        from converters import rewrites

        if int8_io and precision != "int8-static":
            raise UnsupportedError(f"--int8-io applies to int8-static only, not {precision}")
        if static_route not in ("auto", "pt2e", "aeq"):
            raise UnsupportedError(f"static_route must be auto, pt2e or aeq, not {static_route!r}")
        work = rewrites.eager_attention(copy.deepcopy(module))
        details: dict = {"calibration_samples": len(calibration)}
        reference = module
        effective = Precision.of(precision)  # what the artifact really is (a fallback changes it)

        if precision == "fp32":
            content = _litert_convert(work, spec, calibration)
            details["route"] = "litert-torch fp32"
        elif precision in WEIGHT_ROUTES:
            content = self._aeq_weights(work, spec, calibration, precision)
            details["route"] = f"litert-torch fp32 -> ai-edge-quantizer {WEIGHT_ROUTES[precision]}"
            if precision == "int4-weight":
                details["int4_granularity"] = int4_granularity(work)
        elif precision == "mixed":
            reference, content, details["mixed"] = self._mixed(work, spec, calibration, mixed_plan, mixed_threads)
            reference = module if reference is None else reference
            details["route"] = "litert-torch PT2E static int8 on the units where it pays (converters.mixed)"
            prepare_check(content, spec, "the mixed-precision model")
        else:
            route = static_route if static_route != "auto" else ("aeq" if _has_embedding(work) else "pt2e")
            try:
                if route == "pt2e":
                    try:
                        reference, content = _pt2e_static(work, spec, calibration)
                        details["route"] = "litert-torch PT2E static int8 (per-channel weights, histogram observers)"
                        prepare_check(content, spec, "the PT2E int8 model")
                    except ConversionError as exc:
                        # "auto" asks for a static int8 that works: when litert-torch cannot lower the PT2E
                        # graph (Mobile-Former's full-size models: a dequantize it cannot lay out as NHWC), the
                        # ai-edge-quantizer route makes one from the fp32 flatbuffer. Said in the details.
                        if static_route != "auto":
                            raise
                        details["pt2e_failed"] = str(exc)[:300]
                        route = "aeq"
                if route == "aeq":
                    bound = _bounded_attention_mask(work, spec, calibration)
                    fp32 = _litert_convert(work, spec, calibration)
                    content = quantize_static(fp32, spec, calibration)
                    details["route"] = ("litert-torch fp32 -> ai-edge-quantizer static int8 (wi8 ai8, min/max "
                                        "calibration)")
                    if bound is not None:
                        details["attention_mask_bound"] = bound
                    prepare_check(content, spec, "the static int8 model")
            except ConversionError as exc:
                if not allow_fallback:
                    raise
                content = self._aeq_weights(rewrites.eager_attention(copy.deepcopy(module)), spec, calibration,
                                            "int8-dynamic")
                reference = module
                details.update(route="FALLBACK to dynamic-range int8 (allow_fallback): static int8 failed",
                               fallback_reason=str(exc)[:500])
                effective = Precision("int8-dynamic", requested=Precision.of(precision).requested)
            if not int8_io and effective == "int8-static":
                content, changed = float_io(content)
                details["float_io"] = changed
        details["io"] = "int8" if int8_io and effective == "int8-static" else "float"
        write_bytes_atomic(path, content)
        try:
            details.update(inspect_flatbuffer(path))
            if effective in ("int8-static", "mixed"):
                details["full_integer"] = not details["float_ops"]  # every op computes in integers
            else:
                details.pop("float_ops")
        except Exception as exc:  # the artifact is written; the pipeline's load will report the real problem
            details["inspect_error"] = first_line(exc)
        return Conversion(path, reference, details, precision=effective if effective != precision else None)

    multi_length = True
    MULTI_LENGTH_PRECISIONS = ("fp32",) + tuple(WEIGHT_ROUTES)

    def convert_buckets(self, module, specs, precision, calibration, path: Path, int8_io: bool = False,
                        allow_fallback: bool = False, static_route: str = "auto", **_) -> Conversion:
        """One signature per length. fp32 and the weight-only precisions: the static int8 routes calibrate one
        graph at one shape, so `export --seq-lens` writes one artifact per length for int8-static."""
        from device_runtime.buckets import SEQUENCE

        return self._signatures(module, specs, precision, calibration, path, SEQUENCE)

    def convert_packed_rows(self, module, specs, precision, calibration, path: Path, int8_io: bool = False,
                            allow_fallback: bool = False, static_route: str = "auto", **_) -> Conversion:
        """Packed entry points in several row lengths (`export --pack 32x4,64x8,128x16`): one signature per row
        length (`pack<N>`), the weights and quantization tables stored once, at the precisions lengths take."""
        from device_runtime.buckets import PACKED
        from device_runtime.packing import packed_rows_details

        conversion = self._signatures(module, specs, precision, calibration, path, PACKED)
        shared = conversion.details["buckets"].get("shared")
        conversion.details["buckets"] = {**packed_rows_details({n: s.packing[1] for n, s in specs.items()}),
                                         "shared": shared}
        return conversion

    def _signatures(self, module, specs, precision, calibration, path: Path, axis) -> Conversion:
        """One signature per size along `axis` ({size: spec}, {size: calibration feeds at that size}), the
        weights and quantization tables stored once (`share_across_signatures`)."""
        from converters import rewrites
        from device_runtime.buckets import BATCH

        if precision not in self.MULTI_LENGTH_PRECISIONS:
            raise UnsupportedError(f"a multi-{'batch' if axis is BATCH else 'length'} .tflite is made at "
                                   f"{', '.join(self.MULTI_LENGTH_PRECISIONS)}, not {precision}")
        work = rewrites.eager_attention(copy.deepcopy(module))
        spec = specs[max(specs)]
        lengths = {length: (specs[length], calibration[length]) for length in specs}
        content = _litert_convert(work, spec, calibration[max(specs)], lengths=lengths, axis=axis)
        details: dict = {"route": f"litert-torch fp32, one signature per {'batch size' if axis is BATCH else 'length'}"}
        if precision in WEIGHT_ROUTES:
            content = quantize_weights(content, spec, precision,
                                       int4_granularity(work) if precision == "int4-weight" else None)
            details["route"] += f" -> ai-edge-quantizer {WEIGHT_ROUTES[precision]}"
        content, shared = share_across_signatures(content)
        entry_points = {str(n): axis.entry_point(n) for n in sorted(specs)}
        details["buckets"] = ({"axis": axis.name, "batch_sizes": sorted(specs), "entry_points": entry_points,
                               "shared": shared} if axis is BATCH else
                              {"lengths": sorted(specs), "entry_points": entry_points, "shared": shared})
        write_bytes_atomic(path, content)
        details.update({k: v for k, v in inspect_flatbuffer(path).items() if k != "float_ops"})
        return Conversion(path, module, details)

    def multi_length_reason(self, precision) -> str | None:
        if precision not in self.MULTI_LENGTH_PRECISIONS:
            return ("ai-edge-quantizer's static int8 calibrates one signature at a time; one artifact per "
                    "length instead")
        return None

    multi_batch = True

    def convert_batches(self, module, spec, precision, calibration, path: Path, int8_io: bool = False,
                        allow_fallback: bool = False, static_route: str = "auto", **_) -> Conversion:
        """One signature per batch size (`batch<N>`, `calibration[N]` holding feeds of N rows). int8-static
        calibrates one graph at one shape (as for lengths): the pipeline asks for one batch size at a time, and
        the file is the fixed-batch conversion with its one signature named `batch<N>`, so the runtime still
        pads fewer rows to it."""
        from device_runtime.buckets import BATCH

        if precision in self.MULTI_LENGTH_PRECISIONS:
            return self._signatures(module, {size: spec for size in calibration}, precision, calibration, path,
                                    BATCH)
        if len(calibration) != 1:
            raise UnsupportedError(f"a multi-batch .tflite is made at {', '.join(self.MULTI_LENGTH_PRECISIONS)}; "
                                   f"{precision} takes one batch size per artifact")
        (size, feeds), = calibration.items()
        conversion = self.convert(module, spec, precision, feeds, path, int8_io=int8_io,
                                  allow_fallback=allow_fallback, static_route=static_route)
        write_bytes_atomic(path, rename_signature(Path(path).read_bytes(), BATCH.entry_point(size)))
        conversion.details["buckets"] = {"axis": BATCH.name, "batch_sizes": [size],
                                         "entry_points": {str(size): BATCH.entry_point(size)}}
        return conversion

    def multi_batch_reason(self, precision) -> str | None:
        if precision not in self.MULTI_LENGTH_PRECISIONS:
            return "static int8 calibrates one signature at a time; one artifact per batch size instead"
        return None

    @staticmethod
    def _mixed(work, spec, calibration, plan: str | None, threads: int):
        """converters.mixed's search with this format's conversions: PT2E int8 (float I/O) on chosen units."""
        from converters.mixed.pt2e import pt2e_reference, unit_quantizer
        from converters.mixed.search import Toolchain, mixed_precision

        def int8_graph(module, graph_spec, feeds, members):
            reference, content = _pt2e_static(module, graph_spec, feeds, unit_quantizer(members))
            return reference, float_io(content)[0]

        toolchain = Toolchain("tflite", ".tflite", _litert_convert, int8_graph, pt2e_reference)
        result = mixed_precision(work, spec, calibration, toolchain, plan, threads)
        return result.reference, result.content, result.details

    @staticmethod
    def _aeq_weights(work, spec, calibration, precision) -> bytes:
        fp32 = _litert_convert(work, spec, calibration)
        return quantize_weights(fp32, spec, precision,
                                int4_granularity(work) if precision == "int4-weight" else None)
