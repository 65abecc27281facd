"""ONNX `.onnx`: `torch.onnx.export` -> `onnx.checker` -> (ONNX Runtime quantization) -> (ORT offline optimisation).

Exporters. Opset 18 and above use the dynamo exporter (`torch.export` + onnxscript), the maintained path.
Below 18 the dynamo exporter cannot go (its version converter fails on LayerNormalization, an opset-17 op), so
the TorchScript exporter (`dynamo=False`) is used, with eager attention (`rewrites.eager_attention`) so the
graph holds only basic ops (MatMul, Softmax, ...). Which exporter ran is recorded in the details.

Shapes. Static by default (the spec's shapes; ORT plans memory once and folds shape arithmetic);
`dynamic_shapes=True` keeps the spec's named dynamic axes (the BERT family's `sequence`).

Precisions. fp32; fp16 (float16 weights and compute, float32 inputs/outputs kept so feeds need no cast);
int8-dynamic (`quantize_dynamic`, int8 weights of MatMul/Gemm, activations quantized per run: the BERT family's
recipe); int4-weight (`MatMulNBitsQuantizer`, 4-bit symmetric MatMul/Gemm weights in blocks of 32, float
activations); int8-static (`quantize_static`, QDQ, per-channel int8 weights, activation ranges calibrated on the
spec's real sample inputs: the vision families' recipe; `quantize_dynamic` makes conv nets 3-4x slower).
ORT quantizes the graph itself, so there is no PyTorch model of the quantized network: `Conversion.reference`
is the fp32 module and the pipeline's two figures (lowering, quantization) are both against fp32.

ORT offline optimisation (`ort_optimize="basic"|"extended"|"all"`). The artifact is then the graph ONNX Runtime
rewrote (constant folding, fusions into contrib ops such as `com.microsoft:FusedConv`, `Gelu`,
`SkipLayerNormalization`), saved as its own artifact `model.ort-<level>.onnx`, which the pipeline verifies
against PyTorch like any other. The details count the nodes before and after and which fused ops appeared, and
give the optimised graph's agreement with the unoptimised one on the calibration feeds. "all" adds layout
transforms (NCHWc) that tie the file to this CPU type and ORT build; "extended" is portable across ORT CPU hosts.
Optimised graphs contain ORT-only contrib ops: give ATC, TensorRT or other runtimes the plain `model.onnx`.
"""
from __future__ import annotations

import copy
import os
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import json

import numpy as np

from device_runtime.backends.onnxruntime import METADATA_VALUE_RANGES  # one key, defined where the runtime reads it
from device_runtime.buckets import ONNX_METADATA_KEY as BUCKETS_METADATA_KEY
from converters.base import (INT4_BLOCK, Conversion, ConversionError, Converter, Precision, UnsupportedError, option,
                             register_converter)
from converters import rewrites

DEFAULT_OPSET = 18          # the dynamo exporter's floor; LayerNormalization (17) stays one node
DYNAMO_MIN_OPSET = 18
MIN_OPSET = 9
ORT_LEVELS = ("basic", "extended", "all")
# Float32 -> float16 conversion keeps these in float32, as a precaution: normalisation statistics, softmax and
# erf are the Transformer ops most sensitive to fp16 range and rounding. On the tiny variants converting them too
# changed nothing measurable (SQNR vs fp32 62 vs 61 dB, MobileViT); it has not been measured on full-size models.
FP16_KEEP_FP32 = ["LayerNormalization", "ReduceMean", "Pow", "Sqrt", "Softmax", "Erf"]


# -- export ---------------------------------------------------------------------------------------
def torch_args(spec, feed: dict[str, np.ndarray]) -> tuple:
    import torch

    return tuple(torch.from_numpy(np.ascontiguousarray(feed[n])) for n in spec.input_names)


def dynamic_axes_of(spec, axes: bool = True, extra: dict[int, str] | None = None) -> dict:
    """The spec's named dynamic axes as `torch.onnx.export` wants them ({input: {axis: name}}), plus `extra`
    axes (e.g. {0: "batch"}) on every input."""
    out: dict[str, dict[int, str]] = {}
    for spec_input in spec.input_specs():
        named = dict(spec_input.dynamic_axes) if axes else {}
        named.update(extra or {})
        if named:
            out[spec_input.name] = named
    return out


def export_onnx(module, spec, feed: dict[str, np.ndarray], path: Path, opset: int = DEFAULT_OPSET,
                dynamic_axes: dict | None = None, exporter: str = "auto") -> dict[str, Any]:
    """Write `module` as a single-file ONNX at `path` with the spec's input/output names; return what was done.

    `exporter`: "dynamo", "torchscript" or "auto" (dynamo from opset 18, TorchScript below).
    """
    import torch

    if not MIN_OPSET <= opset:
        raise UnsupportedError(f"opset {opset} is too old; use {MIN_OPSET} or newer")
    if exporter == "auto":
        exporter = "dynamo" if opset >= DYNAMO_MIN_OPSET else "torchscript"
    if exporter not in ("dynamo", "torchscript"):
        raise UnsupportedError(f"unknown exporter {exporter!r}; use dynamo, torchscript or auto")
    if exporter == "dynamo" and opset < DYNAMO_MIN_OPSET:
        raise UnsupportedError(f"the dynamo exporter cannot go below opset {DYNAMO_MIN_OPSET} on these models "
                               f"(its version converter fails on LayerNormalization); use exporter='torchscript'")
    args = torch_args(spec, feed)
    names = dict(input_names=list(spec.input_names), output_names=list(spec.output_names))
    start = time.perf_counter()
    try:
        if exporter == "dynamo":
            torch.onnx.export(module, args, str(path), dynamo=True, opset_version=opset, external_data=False,
                              dynamic_axes=dynamic_axes or None, verbose=False, **names)
        else:
            # TorchScript tracing: fused attention hides its math in one op no old opset has.
            traced = rewrites.eager_attention(copy.deepcopy(module))
            with torch.no_grad():
                torch.onnx.export(traced, args, str(path), dynamo=False, opset_version=opset,
                                  do_constant_folding=True, dynamic_axes=dynamic_axes or None, **names)
    except Exception as exc:  # exporter errors are many types; name the model, opset and exporter
        raise ConversionError(f"torch.onnx.export ({exporter}, opset {opset}) failed on {spec.name}: "
                              f"{type(exc).__name__}: {str(exc)[:800]}") from exc
    if not Path(path).is_file():
        raise ConversionError(f"torch.onnx.export wrote nothing at {path}")
    return {"exporter": exporter, "opset": opset, "export_s": round(time.perf_counter() - start, 3),
            "dynamic_axes": {k: {str(a): n for a, n in v.items()} for k, v in (dynamic_axes or {}).items()}}


def record_value_ranges(model, spec) -> None:
    """Record the spec's inclusive input value ranges in `metadata_props` (read back by the ORT backend)."""
    ranges = {s.name: list(s.value_range) for s in spec.input_specs() if getattr(s, "value_range", None)}
    for prop in [p for p in model.metadata_props if p.key == METADATA_VALUE_RANGES]:
        model.metadata_props.remove(prop)
    if ranges:
        model.metadata_props.add(key=METADATA_VALUE_RANGES, value=json.dumps(ranges))


def check_model(path: Path) -> None:
    """`onnx.checker` with full shape inference; a failure is a ConversionError naming the problem."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ConversionError(f"onnx.checker rejected {Path(path).name}: {str(exc)[:800]}") from None


def op_counts(model) -> Counter:
    """Node counts by op, contrib ops prefixed by their domain (e.g. `com.microsoft:FusedConv`)."""
    counts: Counter = Counter()
    for node in model.graph.node:
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}:{node.op_type}"
        counts[key] += 1
    return counts


def model_opset(model, domain: str = "") -> int | None:
    for entry in model.opset_import:
        if entry.domain in (domain, "ai.onnx" if domain == "" else domain):
            return int(entry.version)
    return None


# -- ONNX Runtime helpers (host side) -------------------------------------------------------------
def ort_session(path: Path | str, level: str | None = None, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if level is not None:
        options.graph_optimization_level = _ort_level(level)
    if threads:
        options.intra_op_num_threads = int(threads)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_outputs(path: Path | str, feeds: list[dict[str, np.ndarray]], level: str | None = None) -> list[list]:
    session = ort_session(path, level)
    names = [i.name for i in session.get_inputs()]
    return [session.run(None, {n: feed[n] for n in names}) for feed in feeds]


def agreement(reference: list[list], actual: list[list]) -> dict[str, float]:
    """Figures of `actual` against `reference` (see converters.parity.compare)."""
    from converters.parity import compare

    return compare(reference, actual)


def _ort_level(level: str):
    import onnxruntime as ort

    levels = {"disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    if level not in levels:
        raise UnsupportedError(f"unknown ORT optimisation level {level!r}; choose from {', '.join(ORT_LEVELS)}")
    return levels[level]


def optimize_with_ort(src: Path, dst: Path, level: str) -> dict[str, Any]:
    """Save ONNX Runtime's optimised graph of `src` at `dst`; return node counts before/after and fused ops."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = _ort_level(level)
    options.optimized_model_filepath = str(dst)
    start = time.perf_counter()
    try:
        ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ConversionError(f"ONNX Runtime could not optimise {src.name} at level {level}: {exc}") from exc
    before = op_counts(onnx.load(str(src), load_external_data=False))
    after = op_counts(onnx.load(str(dst), load_external_data=False))
    return {"level": level, "optimize_s": round(time.perf_counter() - start, 3),
            "nodes_before": sum(before.values()), "nodes_after": sum(after.values()),
            # ORT's fusions land in its contrib domains (com.microsoft, com.microsoft.nchwc)
            "fused_ops": {op: n for op, n in sorted(after.items()) if ":" in op},
            "ops_added": dict(sorted((after - before).items())),
            "ops_removed": dict(sorted((before - after).items())),
            "portable": level != "all"}


# -- quantization ---------------------------------------------------------------------------------
class _FeedReader:
    """ORT's CalibrationDataReader protocol over the spec's real sample feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]], names: list[str]) -> None:
        self._iter = iter([{n: feed[n] for n in names} for feed in feeds])

    def get_next(self):
        return next(self._iter, None)

    def rewind(self):  # pragma: no cover - ORT calls it for some calibrators only
        pass


def quantize(src: Path, dst: Path, precision: str, calibration: list[dict], work: Path) -> dict[str, Any]:
    """ORT quantization of `src` into `dst`: dynamic (MatMul/Gemm) or static QDQ calibrated on `calibration`."""
    import logging

    start = time.perf_counter()
    prepared = work / "prepared.onnx"
    # ORT's quantizer logs a WARNING on the root logger for every rank-1 weight it cannot quantize per channel
    # (LayerNorm scales; it quantizes them per tensor instead): keep the console readable.
    root = logging.getLogger()
    level, root.level = root.level, max(root.level, logging.ERROR)
    try:
        return _quantize(src, dst, precision, calibration, prepared, start)
    finally:
        root.setLevel(level)


def _quantize(src, dst, precision, calibration, prepared, start) -> dict[str, Any]:
    import onnxruntime as ort
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # Symbolic shape inference + ORT's basic optimisation: the quantizer then sees fused Conv/BN, known shapes.
    quant_pre_process(str(src), str(prepared), skip_symbolic_shape=False)
    names = [i.name for i in ort_session(prepared, "disabled").get_inputs()]
    # reduce_range (7-bit weights): ONNX Runtime's x86 int8 kernels multiply u8/s8 pairs with 16-bit saturating
    # adds (vpmaddubsw) where the CPU path has no VNNI dot product in use, and an artifact runs on CPUs we do not
    # choose. Measured here on an AMD EPYC (Zen 4) with 8-bit weights, tiny variants, held-out samples: DeiT-B
    # int8-static 8.3 dB SQNR vs fp32 (input-ignoring artifact: 7.5), DynamicViT 10.1, Mobile-Former 13.6,
    # MiniLM int8-dynamic 17.4, all below their floors (the same code passed on an Intel Xeon in
    # earlier CI runs); with 7-bit weights all four pass here. ORT's own advice for non-VNNI machines.
    if precision == "int8-dynamic":
        # Linear layers only (the PRECISIONS definition); quantized embeddings lose accuracy for no speed.
        quantize_dynamic(str(prepared), str(dst), op_types_to_quantize=["MatMul", "Gemm"], per_channel=True,
                         weight_type=QuantType.QInt8, reduce_range=True)
        recipe = {"method": "onnxruntime.quantization.quantize_dynamic", "ops": ["MatMul", "Gemm"],
                  "weights": "int8 per-channel (7-bit range)", "activations": "uint8, range observed per run"}
    elif precision == "int8-static":
        quantize_static(str(prepared), str(dst), _FeedReader(calibration, names), quant_format=QuantFormat.QDQ,
                        per_channel=True, reduce_range=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
        recipe = {"method": "onnxruntime.quantization.quantize_static", "format": "QDQ",
                  "weights": "int8 symmetric per-channel (7-bit range)", "activations": "int8 asymmetric, MinMax",
                  "calibration_samples": len(calibration)}
    elif precision == "int4-weight":
        import onnx
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        # MatMulNBits: 4-bit symmetric weights in blocks of 32 along the input dim, dequantized in the kernel;
        # activations stay float (accuracy_level None). Embedding tables and convolutions stay float.
        model = onnx.load(str(prepared))
        gemms = gemm_to_matmul(model)
        quantizer = MatMulNBitsQuantizer(model, bits=4, block_size=INT4_BLOCK, is_symmetric=True,
                                         op_types_to_quantize=("MatMul", "Gather"))
        quantizer.process()
        quantized = sum(n.op_type in ("MatMulNBits", "GatherBlockQuantized") for n in quantizer.model.model.graph.node)
        if not quantized:
            raise ConversionError("int4-weight: the graph has no MatMul with constant weights to quantize")
        quantizer.model.save_model_to_file(str(dst))
        recipe = {"method": "onnxruntime.quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer",
                  "weights": f"int4 symmetric, blocks of {INT4_BLOCK}", "activations": "float",
                  "matmuls_quantized": quantized, "gemms_rewritten": gemms}
    else:  # pragma: no cover - guarded by the caller
        raise UnsupportedError(precision)
    recipe["quantize_s"] = round(time.perf_counter() - start, 3)
    recipe["onnxruntime"] = ort.__version__
    return recipe


def gemm_to_matmul(model) -> int:
    """Rewrite Gemm nodes with a constant weight (what exporters emit for 2-D `nn.Linear`) as MatMul + Add, in
    place, so MatMulNBitsQuantizer (which takes MatMul only) quantizes those layers too. Returns the count."""
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    nodes, rewritten = [], 0
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type != "Gemm" or node.input[1] not in weights or attrs.get("transA", 0)
                or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0):
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(weights[node.input[1]])
        name = f"{node.name or node.output[0]}_matmul"
        graph.initializer.append(numpy_helper.from_array(weight.T.copy() if attrs.get("transB", 0) else weight,
                                                         f"{name}_weight"))
        has_bias = len(node.input) > 2 and node.input[2]
        matmul_out = f"{name}_out" if has_bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], f"{name}_weight"], [matmul_out], name=name))
        if has_bias:
            nodes.append(helper.make_node("Add", [matmul_out, node.input[2]], [node.output[0]], name=f"{name}_bias"))
        rewritten += 1
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input}
    for name in [t.name for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(next(t for t in graph.initializer if t.name == name))
    onnx.checker.check_model(model)
    return rewritten


def to_fp16(src: Path, dst: Path) -> dict[str, Any]:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from onnxruntime.transformers.onnx_model import OnnxModel

    model = onnx.load(str(src))
    # The dynamo exporter records every intermediate's float32 type; stale after conversion, drop them.
    del model.graph.value_info[:]
    half = OnnxModel(convert_float_to_float16(model, keep_io_types=True, op_block_list=FP16_KEEP_FP32))
    half.topological_sort()  # the converter appends its Cast nodes at the end of the node list
    onnx.save(half.model, str(dst))
    return {"method": "onnxruntime.transformers.float16.convert_float_to_float16", "io": "float32",
            "kept_fp32_ops": FP16_KEEP_FP32}


# -- the converter --------------------------------------------------------------------------------
@register_converter
class OnnxConverter(Converter):
    format = "onnx"
    suffix = ".onnx"
    description = "ONNX model for ONNX Runtime (any OS; CPU, CUDA, DirectML, CoreML, NNAPI execution providers)"
    precisions = ("fp32", "fp16", "int8-static", "int8-dynamic", "int4-weight")
    extra = "onnx"
    required_modules = ("onnx", "onnxscript", "onnxruntime")
    @dataclass(frozen=True)
    class Options:
        opset: int | None = option(None, "ONNX opset (onnx: 18, the dynamo exporter; below 18 the TorchScript "
                                         "exporter; om: 11)", metavar="N")
        dynamic_shapes: bool = option(False, "keep the model's named dynamic axes (e.g. BERT sequence length) "
                                             "instead of static shapes")
        dynamic_batch: bool = option(False, "a dynamic batch axis on every input, so a Batcher stacks requests "
                                            "into one run (vision models' dynamic batching)")
        ort_optimize: str | None = option(None, "save ONNX Runtime's offline-optimised graph as model.ort-LEVEL.onnx "
                                                "(fusions into ORT contrib ops; 'all' is tied to this CPU type)",
                                          choices=ORT_LEVELS)
        exporter: str = option("auto", "the torch exporter: dynamo (torch.export + onnxscript), torchscript, or "
                                       "auto (dynamo from opset 18, TorchScript below)",
                               choices=("auto", "dynamo", "torchscript"))

    def artifact_name(self, ort_optimize: str | None = None, dynamic_batch: bool = False, **_: Any) -> str:
        stem = "model-batched" if dynamic_batch else "model"
        return f"{stem}.ort-{ort_optimize}.onnx" if ort_optimize else f"{stem}.onnx"

    multi_length = True

    def convert_buckets(self, module, specs, precision, calibration, path: Path, **options) -> Conversion:
        """One model with a dynamic sequence axis (ONNX's own way to hold every length), its verified lengths
        listed in metadata_props for `device_runtime.buckets`. Calibration (int8-static) uses every length's
        samples, so the activation ranges cover them all."""
        import onnx

        options["dynamic_shapes"] = True
        largest = max(specs)
        feeds = [feed for length in sorted(specs) for feed in calibration[length]]
        conversion = self.convert(module, specs[largest], precision, feeds, path, **options)
        # The lengths go into the written model here, so `convert` takes nothing but its Options.
        model = onnx.load(str(conversion.path), load_external_data=False)
        model.metadata_props.add(key=BUCKETS_METADATA_KEY, value=json.dumps(sorted(specs)))
        onnx.save(model, str(conversion.path))
        conversion.details["buckets"] = {"lengths": sorted(specs), "entry_points": "one dynamic sequence axis"}
        return conversion

    multi_batch = True

    def convert_batches(self, module, spec, precision, calibration, path: Path, **options) -> Conversion:
        """`export --batch-sizes`: the dynamic batch axis (`dynamic_batch`), traced and calibrated on the largest
        batch's feeds; the verified batch sizes are listed in metadata_props (`session.batch_sizes`)."""
        import onnx

        from device_runtime.buckets import ONNX_BATCH_METADATA_KEY

        sizes = sorted(calibration)
        conversion = self.convert(module, spec, precision, calibration[sizes[-1]], path,
                                  **{**options, "dynamic_batch": True})
        model = onnx.load(str(path), load_external_data=False)
        model.metadata_props.add(key=ONNX_BATCH_METADATA_KEY, value=json.dumps(sizes))
        onnx.save(model, str(path))
        conversion.details["buckets"] = {"axis": "batch", "batch_sizes": sizes, "entry_points": "one dynamic batch axis"}
        return conversion

    def convert(self, module, spec, precision, calibration, path: Path, opset: int | None = None,
                dynamic_shapes: bool = False, ort_optimize: str | None = None, exporter: str = "auto",
                dynamic_batch: bool = False) -> Conversion:
        import onnx

        precision = Precision.of(precision)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if ort_optimize is not None:
            _ort_level(ort_optimize)  # refuse a bad level before exporting
        opset = int(opset) if opset else DEFAULT_OPSET
        axes = dynamic_axes_of(spec, axes=dynamic_shapes, extra={0: "batch"} if dynamic_batch else None) or None
        details: dict[str, Any] = {}
        with tempfile.TemporaryDirectory(prefix="pf-onnx-", dir=path.parent) as tmp:
            work = Path(tmp)
            exported = work / "exported.onnx"
            details["export"] = export_onnx(module, spec, calibration[0], exported, opset, axes, exporter)
            check_model(exported)
            current = exported
            if precision == "fp16":
                details["fp16"] = to_fp16(current, work / "fp16.onnx")
                current = work / "fp16.onnx"
            elif precision.is_quantized:
                details["quantization"] = quantize(current, work / "quantized.onnx", precision, calibration, work)
                current = work / "quantized.onnx"
            if current is not exported:
                check_model(current)
            if ort_optimize:
                optimized = work / "optimized.onnx"
                details["ort_optimization"] = info = optimize_with_ort(current, optimized, ort_optimize)
                # The optimised graph must compute what the plain one does (the pipeline then checks it
                # against PyTorch too).
                plain = ort_outputs(current, calibration, level="disabled")
                fused = ort_outputs(optimized, calibration, level="disabled")
                info["agreement_vs_unoptimized"] = agreement(plain, fused)
                current = optimized
            model = onnx.load(str(current), load_external_data=False)
            record_value_ranges(model, spec)
            onnx.save(model, str(current))
            details["graph"] = {"nodes": len(model.graph.node), "ops": dict(op_counts(model).most_common()),
                                "opset": model_opset(model), "ir_version": int(model.ir_version)}
            os.replace(current, path)
        return Conversion(path, module, details)

