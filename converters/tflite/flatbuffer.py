"""The flatbuffer side of the TFLite converter: ai-edge-quantizer and its recipes on the fp32 `.tflite`, float
I/O for int8 models (graph surgery), inspection of what XNNPACK takes, and the interpreter's prepare check.

Recipes, by precision (`quantize_weights`, `quantize_static`): fp16 casts FULLY_CONNECTED, CONV_2D,
DEPTHWISE_CONV_2D and EMBEDDING_LOOKUP weights; int8-dynamic is the dynamic-range recipe on every supported
op; int4-weight is 4-bit FULLY_CONNECTED weights (blockwise or per channel, as the caller decides from the
module) with 4-bit embedding rows; int8-static is int8 weights and activations on every supported op,
calibrated with min/max over the samples, with int8 embedding tables.
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

from converters.base import ConversionError

# litert-torch names the flatbuffer's one signature this; the calibrator feeds it by name.
SIGNATURE = "serving_default"
_BOUNDARY_OPS = {"QUANTIZE", "DEQUANTIZE"}


# -- toolchain noise (both sides) ---------------------------------------------------------------------
@contextlib.contextmanager
def quiet():
    """Silence Python-level chatter (progress bars, reports) of the toolchains."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def first_line(exc: BaseException, limit: int = 500) -> str:
    """The useful part of a toolchain error: the op it could not lower when it says so, else its start."""
    import re

    text = str(exc)
    for pattern in (r"Lowering not found: ([\w.:]+)", r"failed to legalize operation '([^']+)'",
                    r"Unsupported (?:op|operator)[: ]+'?(?!for\b)([\w.:]+)"):
        found = re.search(pattern, text)
        if found:
            return f"op {found.group(1)} cannot be lowered to LiteRT ({type(exc).__name__})"
    return f"{type(exc).__name__}: {text}".strip()[:limit]


# -- ai-edge-quantizer -------------------------------------------------------------------------------
def _run_quantizer(content: bytes, configure, calibration_feeds=None) -> bytes:
    """Run ai-edge-quantizer on a flatbuffer; `configure(quantizer, ops)` adds the recipe."""
    from ai_edge_quantizer import calibrator, qtyping, quantizer, recipe_manager
    from ai_edge_quantizer.utils import qsv_utils

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "fp32.tflite"
        src.write_bytes(content)
        q = quantizer.Quantizer(str(src))
        configure(q, qtyping.TFLOperationName)
        with quiet():
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



def quantize_weights(fp32: bytes, spec, precision: str, int4_granularity: str | None = None) -> bytes:
    """fp16, int8-dynamic or int4-weight from the fp32 flatbuffer; `int4_granularity` is "BLOCKWISE_32" or
    "CHANNELWISE" (a qtyping.QuantGranularity name)."""

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
            granularity = getattr(qtyping.QuantGranularity, int4_granularity)
            q.add_dynamic_config(".*", ops.FULLY_CONNECTED, 4, granularity=granularity)
            q.add_dynamic_config(".*", ops.EMBEDDING_LOOKUP, 4)  # hybrid lookup: 4-bit rows, float out
        else:
            q.add_dynamic_config(".*", ops.ALL_SUPPORTED, 8)

    try:
        return _run_quantizer(fp32, configure)
    except Exception as exc:
        raise ConversionError(f"ai-edge-quantizer could not make {precision} {spec.name}: "
                              f"{first_line(exc)}") from exc


def quantize_static(fp32: bytes, spec, calibration) -> bytes:
    """Full-integer int8 from the fp32 flatbuffer, calibrated on `calibration` (int64 ids fed as int32)."""
    feeds = [{n: (f[n].astype(np.int32) if f[n].dtype == np.int64 else f[n]) for n in spec.input_names}
             for f in calibration]

    def configure(q, ops):
        q.add_static_config(".*", ops.ALL_SUPPORTED, 8, 8)
        # int8 embedding tables (hybrid lookup, float rows, quantized right after)
        q.add_dynamic_config(".*", ops.EMBEDDING_LOOKUP, 8)

    try:
        return _run_quantizer(fp32, configure, feeds)
    except Exception as exc:
        raise ConversionError(f"ai-edge-quantizer static int8 failed on {spec.name}: {first_line(exc)}") from exc


# -- graph surgery and inspection ---------------------------------------------------------------------
def float_io(content: bytes) -> tuple[bytes, dict]:
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

    with quiet():
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

    signatures = interpreter.get_signature_list()  # a multi-length file: the first length's signature stands for all
    runner = interpreter.get_signature_runner(next(iter(signatures))) if signatures else None
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


def prepare_check(content: bytes, spec, what: str) -> None:
    """Load the flatbuffer as the runtime will; name the op the interpreter refuses, if any."""
    from ai_edge_litert.interpreter import Interpreter

    try:
        with quiet():
            Interpreter(model_content=content, num_threads=1).allocate_tensors()
    except Exception as exc:
        import re

        message = str(exc).strip()
        op = re.search(r"\((\w+)\) failed to prepare", message)
        kernel = re.search(r"([\w/]+\.cc)", message)
        hint = "".join([f": op {op.group(1)}" if op else "", f" (kernel {kernel.group(1)})" if kernel else ""])
        raise ConversionError(f"{what} of {spec.name} converts but LiteRT cannot prepare it{hint}. "
                              f"LiteRT says: {message[:400]}") from exc



def share_across_signatures(content: bytes) -> tuple[bytes, dict]:
    """A multi-signature file with what its signatures have in common stored once.

    litert-torch's multi-signature export already shares each weight buffer across signatures, but the rest
    of a tensor is per subgraph: after ai-edge-quantizer, the per-channel quantization parameters (the int8
    embedding table's 30522 scales and zero points: 366 KB) and the tensors' long scope names are repeated in
    every signature (measured: a 4-length TinyBERT-tiny int8 file was 1.96x the single-length one). Identical
    buffers are shared, identical quantization tables are serialised once and referenced by every tensor that
    has them (a flatbuffer table may be referenced more than once), and names longer than `NAME_LIMIT` keep
    their last characters. Returns the bytes and what was shared."""
    import hashlib

    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    first: dict[bytes, int] = {}
    alias: dict[int, int] = {}
    for i, buf in enumerate(model.buffers or []):
        if buf.data is None or not len(buf.data):
            continue  # the empty sentinel and activation buffers hold nothing to share
        data = np.ravel(np.asarray(buf.data)).view(np.uint8).tobytes()
        alias[i] = first.setdefault(hashlib.sha256(data).digest(), i)
    alias = {i: j for i, j in alias.items() if i != j}
    trimmed = 0
    for graph in model.subgraphs:
        for tensor in graph.tensors:
            tensor.buffer = alias.get(tensor.buffer, tensor.buffer)
            if tensor.name is not None and len(tensor.name) > NAME_LIMIT:
                tensor.name, trimmed = tensor.name[-NAME_LIMIT:], trimmed + 1
    for i in alias:
        model.buffers[i].data = None

    pack, packed = fb.QuantizationParametersT.Pack, {}

    def pack_once(params, builder):
        if params.details is not None:  # custom quantization: not compared, packed as it is
            return pack(params, builder)
        fields = [b"-" if (v := getattr(params, f)) is None else np.asarray(v).tobytes()
                  for f in ("min", "max", "scale", "zeroPoint")]
        key = hashlib.sha256(b"|".join(fields) + str(params.quantizedDimension).encode()).digest()
        if key not in packed:
            packed[key] = pack(params, builder)
        return packed[key]

    fb.QuantizationParametersT.Pack = pack_once  # the generated serialiser has no hook for shared tables
    try:
        out = _serialize(model)
    finally:
        fb.QuantizationParametersT.Pack = pack
    return out, {"buffers_shared": len(alias), "quantization_tables": len(packed), "names_trimmed": trimmed}


# Tensor names longer than this keep their last characters in a multi-signature file (litert-torch writes the
# whole module scope, kilobytes per tensor, in every signature).
NAME_LIMIT = 96


def rename_signature(content: bytes, name: str) -> bytes:
    """A single-signature flatbuffer with its signature renamed to `name` (e.g. `batch4`: the entry point name
    `device_runtime.buckets` routes to; litert-torch names it `serving_default`)."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    if len(model.signatureDefs or []) != 1:
        raise ConversionError(f"expected one signature to rename to {name!r}, found {len(model.signatureDefs or [])}")
    model.signatureDefs[0].signatureKey = name
    return _serialize(model)
