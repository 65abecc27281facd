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
"""
from __future__ import annotations

import contextlib
import copy
import io
import os
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from converters.base import (INT4_BLOCK, Conversion, ConversionError, Converter, UnsupportedError, int4_blocks_fit,
                             register_converter,
                             write_bytes_atomic)

# A masked attention score is pushed this many units below the lowest unmasked score seen in calibration:
# its softmax weight is then below exp(-30) ~ 1e-13 of the largest, i.e. zero in fp32 arithmetic.
MASK_MARGIN = 30.0
SIGNATURE = "serving_default"
_BOUNDARY_OPS = {"QUANTIZE", "DEQUANTIZE"}


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


def _litert_convert(module, spec, calibration, quant_config=None) -> bytes:
    """litert-torch conversion with named I/O; the progress display and converter logs are silenced."""
    import torch
    import litert_torch

    named = _named_io(module, spec.input_names, spec.output_names)
    sample = _torch_feeds(spec, calibration)[0]
    previous = os.environ.get("LITERT_TORCH_SHOW_PROGRESS")
    os.environ["LITERT_TORCH_SHOW_PROGRESS"] = "n"
    try:
        with _quiet(), torch.no_grad():
            edge = litert_torch.convert(named, sample_kwargs=sample, quant_config=quant_config)
            return bytes(edge.model_content())
    except Exception as exc:
        raise ConversionError(f"litert-torch could not convert {spec.name}: {_first_line(exc)}") from exc
    finally:
        if previous is None:
            os.environ.pop("LITERT_TORCH_SHOW_PROGRESS", None)
        else:
            os.environ["LITERT_TORCH_SHOW_PROGRESS"] = previous


def _pt2e_static(module, spec, calibration):
    """litert-torch's PT2E static int8: the quantized GraphModule (the reference) and its flatbuffer."""
    import torch
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
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
# Flatbuffer side (ai-edge-quantizer, I/O surgery, inspection)
# ----------------------------------------------------------------------------------------------------
def _aeq(content: bytes, configure, calibration_feeds=None) -> bytes:
    """Run ai-edge-quantizer on a flatbuffer; `configure(quantizer, ops)` adds the recipe."""
    from ai_edge_quantizer import calibrator, qtyping, quantizer, recipe_manager
    from ai_edge_quantizer.utils import qsv_utils

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "fp32.tflite"
        src.write_bytes(content)
        q = quantizer.Quantizer(str(src))
        configure(q, qtyping.TFLOperationName)
        with _quiet():
            qsvs = None
            if q.need_calibration:
                manager = recipe_manager.RecipeManager()
                manager.load_quantization_recipe(q.get_quantization_recipe())
                # min/max over all samples: the default moving average clips the extremes of a small set
                cal = calibrator.Calibrator(str(src), num_threads=os.cpu_count() or 1,
                                            qsv_update_func=qsv_utils.min_max_update)
                cal.calibrate({SIGNATURE: calibration_feeds}, manager)
                qsvs = cal.get_model_qsvs()
            result = q.quantize(qsvs, enable_progress_report=False)
    return bytes(result.quantized_model)


def _float_io(content: bytes) -> tuple[bytes, dict]:
    """Float model I/O for a quantized flatbuffer: a QUANTIZE op in front of every int8 input and a
    DEQUANTIZE op after every int8 output, in the graph itself. Signature names stay the same."""
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    changed = {"inputs": [], "outputs": []}
    codes = {}

    def opcode(builtin: int) -> int:
        if builtin not in codes:
            for i, code in enumerate(model.operatorCodes):
                if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
                    codes[builtin] = i
                    break
            else:
                code = fb.OperatorCodeT()
                code.builtinCode, code.deprecatedBuiltinCode, code.version = builtin, builtin, 2
                model.operatorCodes.append(code)
                codes[builtin] = len(model.operatorCodes) - 1
        return codes[builtin]

    def float_twin(tensor) -> int:
        twin = copy.copy(tensor)
        twin.type, twin.quantization, twin.buffer = fb.TensorType.FLOAT32, None, 0
        twin.name = (tensor.name.decode() if isinstance(tensor.name, bytes) else tensor.name) + "_float"
        return twin

    remap = {}
    for s, graph in enumerate(model.subgraphs):
        prologue, epilogue = [], []
        for side, indices in (("inputs", graph.inputs), ("outputs", graph.outputs)):
            for k, t in enumerate(indices):
                tensor = graph.tensors[t]
                if tensor.type not in (fb.TensorType.INT8, fb.TensorType.UINT8) or tensor.quantization is None:
                    continue
                graph.tensors.append(float_twin(tensor))
                new = len(graph.tensors) - 1
                op = fb.OperatorT()
                if side == "inputs":
                    op.opcodeIndex, op.inputs, op.outputs = opcode(fb.BuiltinOperator.QUANTIZE), [new], [t]
                    prologue.append(op)
                else:
                    op.opcodeIndex, op.inputs, op.outputs = opcode(fb.BuiltinOperator.DEQUANTIZE), [t], [new]
                    epilogue.append(op)
                indices[k] = new
                remap[(s, t, side)] = new
                changed[side].append(int(t))
        graph.operators = prologue + list(graph.operators) + epilogue
    for sdef in model.signatureDefs or []:
        for side, maps in (("inputs", sdef.inputs), ("outputs", sdef.outputs)):
            for tmap in maps or []:
                tmap.tensorIndex = remap.get((sdef.subgraphIndex, tmap.tensorIndex, side), tmap.tensorIndex)
    if model.buffers and model.buffers[0].data is not None and len(model.buffers[0].data):
        raise ConversionError("buffer 0 of the quantized model is not the empty sentinel buffer")
    return _serialize(model), changed


def _serialize(model) -> bytes:
    """Pack a ModelT; weights >= 1 KiB go after the flatbuffer, 16-byte aligned (as ai-edge-quantizer does)."""
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils

    big = {}
    for i, buf in enumerate(model.buffers or []):
        if buf.data is not None and len(buf.data) >= 1024:
            big[i] = memoryview(np.ravel(np.asarray(buf.data)).view(np.uint8))
            buf.data, buf.offset, buf.size = None, 1, 1  # placeholders, patched below
    head = flatbuffer_utils.convert_object_to_bytearray(model)
    out = bytearray(head)
    packed = fb.Model.GetRootAs(out, 0)
    for i, data in big.items():
        out.extend(b"\0" * (-len(out) % 16))
        flatbuffer_utils.update_packed_buffer(packed.Buffers(i), offset=len(out), size=len(data))
        out.extend(data)
    return bytes(out)


def inspect_flatbuffer(path: Path) -> dict:
    """The op histogram, what XNNPACK took, I/O types and, for quantized models, the ops computing in float.

    The model is loaded the way the runtime loads it (default XNNPACK delegate); each DELEGATE node's
    partition is recovered by walking back from its outputs to its inputs through the original nodes.
    """
    from ai_edge_litert.interpreter import Interpreter

    with _quiet():
        interpreter = Interpreter(model_path=str(path), num_threads=1)
        interpreter.allocate_tensors()
    w = interpreter._interpreter
    n = w.NumNodes()
    names = [w.NodeName(i) for i in range(n)]
    ins = [list(w.NodeInputs(i)) for i in range(n)]
    outs = [list(w.NodeOutputs(i)) for i in range(n)]
    delegates = [i for i in range(n) if names[i] == "DELEGATE"]
    original = [i for i in range(n) if names[i] != "DELEGATE"]
    producer = {t: i for i in original for t in outs[i]}
    delegated: set[int] = set()
    for d in delegates:
        boundary, stack = set(ins[d]), list(outs[d])
        while stack:
            p = producer.get(stack.pop())
            if p is None or p in delegated:
                continue
            delegated.add(p)
            stack.extend(t for t in ins[p] if t >= 0 and t not in boundary)

    def dtype(t: int) -> str:
        return np.dtype(w.TensorType(t, 0)).name

    def is_float(tensors) -> bool:
        return any(dtype(t) in ("float32", "float16") for t in tensors if t >= 0)

    # float arithmetic: float in and float out (a CAST of an integer mask or a hybrid lookup of int8 rows
    # only produces floats; QUANTIZE/DEQUANTIZE are the boundaries themselves)
    float_ops = Counter(names[i] for i in original
                        if names[i] not in _BOUNDARY_OPS and is_float(ins[i]) and is_float(outs[i]))

    def io(named):
        return [{"name": name, "dtype": np.dtype(d["dtype"]).name, "shape": [int(x) for x in d["shape"]],
                 **({"scale": float(d["quantization"][0]), "zero_point": int(d["quantization"][1])}
                    if d["quantization"][0] else {})} for name, d in named]

    runner = interpreter.get_signature_runner() if interpreter.get_signature_list() else None
    return {
        "ops": len(original),
        "op_histogram": dict(Counter(names[i] for i in original).most_common()),
        "xnnpack": {
            "partitions": len(delegates),
            "delegated_ops": len(delegated),
            "not_delegated_ops": len(original) - len(delegated),
            "delegated": dict(Counter(names[i] for i in delegated).most_common()),
            "not_delegated": dict(Counter(names[i] for i in original if i not in delegated).most_common()),
        },
        "float_ops": dict(float_ops.most_common()),
        "inputs": io(runner.get_input_details().items() if runner else
                     [(d["name"], d) for d in interpreter.get_input_details()]),
        "outputs": io(runner.get_output_details().items() if runner else
                      [(d["name"], d) for d in interpreter.get_output_details()]),
    }


@contextlib.contextmanager
def _quiet():
    """Silence Python-level chatter (progress bars, reports) of the toolchains."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def _first_line(exc: BaseException, limit: int = 500) -> str:
    """The useful part of a toolchain error: the op it could not lower when it says so, else its start."""
    import re

    text = str(exc)
    for pattern in (r"Lowering not found: ([\w.:]+)", r"failed to legalize operation '([^']+)'",
                    r"Unsupported (?:op|operator)[: ]+'?(?!for\b)([\w.:]+)"):
        found = re.search(pattern, text)
        if found:
            return f"op {found.group(1)} cannot be lowered to LiteRT ({type(exc).__name__})"
    return f"{type(exc).__name__}: {text}".strip()[:limit]


def _prepare_check(content: bytes, spec, what: str) -> None:
    """Load the flatbuffer as the runtime will; name the op the interpreter refuses, if any."""
    from ai_edge_litert.interpreter import Interpreter

    try:
        with _quiet():
            Interpreter(model_content=content, num_threads=1).allocate_tensors()
    except Exception as exc:
        import re

        message = str(exc).strip()
        op = re.search(r"\((\w+)\) failed to prepare", message)
        kernel = re.search(r"([\w/]+\.cc)", message)
        hint = "".join([f": op {op.group(1)}" if op else "", f" (kernel {kernel.group(1)})" if kernel else ""])
        raise ConversionError(f"{what} of {spec.name} converts but LiteRT cannot prepare it{hint}. "
                              f"LiteRT says: {message[:400]}") from exc


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
    precisions = ("fp32", "fp16", "int8-static", "int8-dynamic", "int4-weight")
    extra = "tflite"
    required_modules = ("litert_torch", "ai_edge_litert", "ai_edge_quantizer")
    cli_options = (
        ("--int8-io", {"action": "store_true", "dest": "int8_io",
                       "help": "int8-static: keep int8 model inputs/outputs (feed data quantized with the "
                               "input's scale and zero point) instead of float I/O"}),
        ("--allow-fallback", {"action": "store_true", "dest": "allow_fallback",
                              "help": "int8-static: when an op blocks static int8, export dynamic-range "
                                      "int8 instead of failing (the report says so)"}),
        ("--int8-route", {"choices": ("auto", "pt2e", "aeq"), "default": "auto", "dest": "static_route",
                          "help": "int8-static: pt2e (litert-torch PT2E: conv/linear/add/pool in int8, "
                                  "verified against the quantized PyTorch model), aeq (ai-edge-quantizer: "
                                  "full-integer), auto (aeq for models with embeddings, else pt2e)"}),
    )

    def artifact_name(self, int8_io: bool = False, **options) -> str:
        return "model-int8io.tflite" if int8_io else "model.tflite"

    def convert(self, module, spec, precision, calibration, path: Path, int8_io: bool = False,
                allow_fallback: bool = False, static_route: str = "auto", **_) -> Conversion:
        from converters import rewrites

        if int8_io and precision != "int8-static":
            raise UnsupportedError(f"--int8-io applies to int8-static only, not {precision}")
        if static_route not in ("auto", "pt2e", "aeq"):
            raise UnsupportedError(f"static_route must be auto, pt2e or aeq, not {static_route!r}")
        work = rewrites.eager_attention(copy.deepcopy(module))
        details: dict = {"precision": precision, "calibration_samples": len(calibration)}
        reference = module

        if precision == "fp32":
            content = _litert_convert(work, spec, calibration)
            details["route"] = "litert-torch fp32"
        elif precision in WEIGHT_ROUTES:
            content = self._aeq_weights(work, spec, calibration, precision)
            details["route"] = f"litert-torch fp32 -> ai-edge-quantizer {WEIGHT_ROUTES[precision]}"
            if precision == "int4-weight":
                details["int4_granularity"] = int4_granularity(work)
        else:
            route = static_route if static_route != "auto" else ("aeq" if _has_embedding(work) else "pt2e")
            try:
                if route == "pt2e":
                    reference, content = _pt2e_static(work, spec, calibration)
                    details["route"] = "litert-torch PT2E static int8 (per-channel weights, histogram observers)"
                    _prepare_check(content, spec, "the PT2E int8 model")
                else:
                    bound = _bounded_attention_mask(work, spec, calibration)
                    fp32 = _litert_convert(work, spec, calibration)
                    content = self._aeq_static(fp32, spec, calibration)
                    details["route"] = ("litert-torch fp32 -> ai-edge-quantizer static int8 (wi8 ai8, min/max "
                                        "calibration)")
                    if bound is not None:
                        details["attention_mask_bound"] = bound
                    _prepare_check(content, spec, "the static int8 model")
            except ConversionError as exc:
                if not allow_fallback:
                    raise
                content = self._aeq_weights(rewrites.eager_attention(copy.deepcopy(module)), spec, calibration,
                                            "int8-dynamic")
                reference = module
                details.update(route="FALLBACK to dynamic-range int8 (allow_fallback): static int8 failed",
                               fallback_reason=str(exc)[:500], precision="int8-dynamic")
            if not int8_io and details["precision"] == "int8-static":
                content, changed = _float_io(content)
                details["float_io"] = changed
        details["io"] = "int8" if int8_io and details["precision"] == "int8-static" else "float"
        write_bytes_atomic(path, content)
        try:
            details.update(inspect_flatbuffer(path))
            if details["precision"] == "int8-static":
                details["full_integer"] = not details["float_ops"]  # every op computes in integers
            else:
                details.pop("float_ops")
        except Exception as exc:  # the artifact is written; the pipeline's load will report the real problem
            details["inspect_error"] = _first_line(exc)
        return Conversion(path, reference, details)

    @staticmethod
    def _aeq_weights(work, spec, calibration, precision) -> bytes:
        fp32 = _litert_convert(work, spec, calibration)

        def configure(q, ops):
            if precision == "fp16":
                from ai_edge_quantizer import qtyping

                config = qtyping.OpQuantizationConfig(
                    weight_tensor_config=qtyping.TensorQuantizationConfig(
                        num_bits=16, dtype=qtyping.TensorDataType.FLOAT),
                    compute_precision=qtyping.ComputePrecision.FLOAT, explicit_dequantize=True)
                for op in (ops.FULLY_CONNECTED, ops.CONV_2D, ops.DEPTHWISE_CONV_2D, ops.EMBEDDING_LOOKUP):
                    q.update_quantization_recipe(regex=".*", operation_name=op, op_config=config,
                                                 algorithm_key="float_casting")
            elif precision == "int4-weight":
                from ai_edge_quantizer import qtyping

                # ai-edge-quantizer takes blockwise 4-bit only as dynamic (XNNPACK qd8-qb4w kernels).
                granularity = getattr(qtyping.QuantGranularity, int4_granularity(work))
                q.add_dynamic_config(".*", ops.FULLY_CONNECTED, 4, granularity=granularity)
                q.add_dynamic_config(".*", ops.EMBEDDING_LOOKUP, 4)  # hybrid lookup: 4-bit rows, float out
            else:
                q.add_dynamic_config(".*", ops.ALL_SUPPORTED, 8)

        try:
            return _aeq(fp32, configure)
        except Exception as exc:
            raise ConversionError(f"ai-edge-quantizer could not make {precision} {spec.name}: "
                                  f"{_first_line(exc)}") from exc

    @staticmethod
    def _aeq_static(fp32: bytes, spec, calibration) -> bytes:
        feeds = [{n: (f[n].astype(np.int32) if f[n].dtype == np.int64 else f[n]) for n in spec.input_names}
                 for f in calibration]

        def configure(q, ops):
            q.add_static_config(".*", ops.ALL_SUPPORTED, 8, 8)
            # int8 embedding tables (hybrid lookup, float rows, quantized right after)
            q.add_dynamic_config(".*", ops.EMBEDDING_LOOKUP, 8)

        try:
            return _aeq(fp32, configure, feeds)
        except Exception as exc:
            raise ConversionError(f"ai-edge-quantizer static int8 failed on {spec.name}: {_first_line(exc)}") from exc
