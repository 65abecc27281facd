"""Linux-side validation of a saved Core ML package, and the figures read from its program.

coremltools converts on Linux but cannot predict there. `validate_package` checks everything else from the
saved package: it loads (`skip_model_load=True`), its inputs/outputs match the ModelSpec, the MIL op
histogram, no op newer than the deployment target, weight bytes per dtype (`weight_summary`, which also
measures the compressed tensors against the dense ones they decompress to).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from converters.base import ConversionError
from converters.coreml.toolchain import import_coremltools, mil_dtype, target_enum


class CoreMLValidationError(ConversionError):
    """The saved package does not load or does not match the ModelSpec (names, shapes, types, target ops)."""


_ARRAY_TYPES = {"FLOAT32": "float32", "FLOAT16": "float16", "DOUBLE": "float64", "INT32": "int32", "INT8": "int8"}


def _mil_program_ops(spec_proto):
    """Every MIL operation of the package's program (all functions, nested blocks included)."""
    program = spec_proto.mlProgram
    for function in program.functions.values():
        block = function.block_specializations[function.opset]
        stack = list(block.operations)
        while stack:
            op = stack.pop()
            yield op
            for inner in op.blocks:
                stack.extend(inner.operations)


def _value_bytes(value_type) -> tuple[str, int]:
    from coremltools.proto import MIL_pb2

    tensor = value_type.tensorType
    name = MIL_pb2.DataType.Name(tensor.dataType)
    digits = "".join(ch for ch in name if ch.isdigit())
    bits = 8 if name in ("BOOL", "FLOAT8E4M3FN", "FLOAT8E5M2") else int(digits or 8)
    count = 1
    for dim in tensor.dimensions:
        count *= dim.constant.size
    return name.lower(), (count * bits + 7) // 8


def weight_summary(spec_proto) -> dict[str, Any]:
    """Weight bytes per dtype (values stored in the weight blob), and the compressed tensors (constexpr ops):
    their stored bytes against the dense tensor they decompress to."""
    by_dtype: Counter = Counter()
    const_bytes: dict[str, int] = {}
    tensors = 0
    compressed = {"ops": 0, "stored_bytes": 0, "dense_bytes": 0, "by_op": Counter()}
    ops = list(_mil_program_ops(spec_proto))
    for op in ops:
        if op.type == "const":
            value = op.attributes["val"]
            if value.WhichOneof("value") == "blobFileValue":
                dtype, nbytes = _value_bytes(value.type)
                by_dtype[dtype] += nbytes
                const_bytes[op.outputs[0].name] = nbytes
                tensors += 1
    for op in ops:
        if not op.type.startswith("constexpr_"):
            continue
        stored = 0
        for key, value in op.attributes.items():
            if value.WhichOneof("value") == "blobFileValue":
                dtype, nbytes = _value_bytes(value.type)
                by_dtype[dtype] += nbytes
                stored += nbytes
        for argument in op.inputs.values():  # iOS18 constexpr ops take their parts from const ops
            stored += sum(const_bytes.get(a.name, 0) for a in argument.arguments)
        compressed["ops"] += 1
        compressed["by_op"][op.type] += 1
        compressed["stored_bytes"] += stored
        compressed["dense_bytes"] += _value_bytes(op.outputs[0].type)[1]
        tensors += 1
    compressed["by_op"] = dict(compressed["by_op"])
    compressed["factor_vs_dense"] = (compressed["stored_bytes"] / compressed["dense_bytes"]
                                     if compressed["dense_bytes"] else None)
    return {"total_bytes": int(sum(by_dtype.values())), "by_dtype": dict(by_dtype), "tensors": tensors,
            "compressed": compressed}


def op_histogram(spec_proto) -> dict[str, int]:
    return dict(Counter(op.type for op in _mil_program_ops(spec_proto)).most_common())


def ops_newer_than(histogram: dict[str, int], target_value) -> dict[str, str]:
    """Op types of the program that the deployment target lacks -> the target that introduced them
    ("unknown" for ops coremltools does not register)."""
    from coremltools.converters.mil.mil.ops.registry import SSAOpRegistry

    newer = {}
    for op_type in histogram:
        versions = SSAOpRegistry.core_ops.get(op_type)
        if not versions:
            newer[op_type] = "unknown"
            continue
        first = min(versions)
        if first > target_value:
            newer[op_type] = first.name
    return newer


def validate_package(path, spec, *, target: str | None = None, output_shapes: dict | None = None,
                     image_input: bool = False, flexible_axes: dict[str, set[int]] | None = None) -> dict[str, Any]:
    """Everything about a saved `.mlpackage` that can be checked without Core ML's predictor.

    Raises `CoreMLValidationError` listing the problems; returns the figures when there are none.
    """
    ct = import_coremltools()
    path = Path(path)
    target_value = target_enum(target)
    problems: list[str] = []
    try:
        mlmodel = ct.models.MLModel(str(path), skip_model_load=True)
        proto = mlmodel.get_spec()
    except Exception as exc:
        raise CoreMLValidationError(f"{path} does not load as a Core ML package: {type(exc).__name__}: {exc}") from exc
    if proto.WhichOneof("Type") != "mlProgram":
        problems.append(f"model type is {proto.WhichOneof('Type')}, not mlProgram")

    # Inputs and outputs against the ModelSpec.
    inputs = {f.name: f for f in proto.description.input}
    want_inputs = list(spec.input_names)
    if list(inputs) != want_inputs:
        problems.append(f"inputs are {list(inputs)}, the spec says {want_inputs}")
    io = {"inputs": [], "outputs": []}
    for s in spec.input_specs():
        feature = inputs.get(s.name)
        if feature is None:
            continue
        kind = feature.type.WhichOneof("Type")
        if image_input:
            image = feature.type.imageType
            got = {"name": s.name, "type": "image", "shape": [image.height, image.width],
                   "color": feature.type.imageType.ColorSpace.Name(image.colorSpace)}
            if kind != "imageType" or (image.height, image.width) != tuple(s.shape[-2:]) or got["color"] != "RGB":
                problems.append(f"input {s.name}: {got}, the spec wants an RGB image {list(s.shape[-2:])}")
            io["inputs"].append(got)
            continue
        array = feature.type.multiArrayType
        dtype = _ARRAY_TYPES.get(array.ArrayDataType.Name(array.dataType), "?")
        shape = tuple(int(d) for d in array.shape)
        flex_kind = array.WhichOneof("ShapeFlexibility")
        varying = _varying_axes(array, flex_kind)
        got = {"name": s.name, "type": "tensor", "dtype": dtype, "shape": list(shape),
               "flexible": None if not flex_kind else {"kind": flex_kind, "axes": sorted(varying)}}
        io["inputs"].append(got)
        if kind != "multiArrayType":
            problems.append(f"input {s.name} is a {kind}, not a tensor")
        if shape != tuple(s.shape):
            problems.append(f"input {s.name} has default shape {list(shape)}, the spec says {list(s.shape)}")
        if dtype != mil_dtype(s.dtype):
            problems.append(f"input {s.name} is {dtype}, expected {mil_dtype(s.dtype)} for spec dtype {s.dtype}")
        allowed = set(s.dynamic_axes) if flexible_axes is None else set(flexible_axes.get(s.name, set()))
        if flexible_axes is not None and varying != allowed:
            problems.append(f"input {s.name} varies on axes {sorted(varying)}, asked for {sorted(allowed)}")
        elif not varying <= set(s.dynamic_axes):
            problems.append(f"input {s.name} varies on axes {sorted(varying)}, the spec allows "
                            f"{sorted(s.dynamic_axes)}")
    outputs = {f.name: f for f in proto.description.output}
    if list(outputs) != list(spec.output_names):
        problems.append(f"outputs are {list(outputs)}, the spec says {list(spec.output_names)}")
    for name, feature in outputs.items():
        array = feature.type.multiArrayType
        dtype = _ARRAY_TYPES.get(array.ArrayDataType.Name(array.dataType), "?")
        shape = [int(d) for d in array.shape]
        io["outputs"].append({"name": name, "dtype": dtype, "shape": shape})
        if dtype != "float32":
            problems.append(f"output {name} is {dtype}, expected float32")
        want = (output_shapes or {}).get(name)
        if want is not None and shape and tuple(shape) != tuple(want):
            problems.append(f"output {name} has shape {shape}, PyTorch gives {list(want)}")

    # The program: op histogram, ops and opset the target lacks, weights.
    histogram = op_histogram(proto)
    newer = ops_newer_than(histogram, target_value)
    if newer:
        problems.append(f"ops the {target_value.name} target lacks: " +
                        ", ".join(f"{op} (from {first})" for op, first in newer.items()))
    if proto.specificationVersion > int(target_value):
        problems.append(f"specification version {proto.specificationVersion} is newer than the target's "
                        f"{int(target_value)}")
    opsets = sorted({f.opset for f in proto.mlProgram.functions.values()})
    weight_file = path / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    report = {
        "loads": True, "loaded_with": "ct.models.MLModel(path, skip_model_load=True)",
        "model_type": proto.WhichOneof("Type"), "specification_version": proto.specificationVersion,
        "target": target_value.name, "opsets": opsets, "io": io, "ops_total": sum(histogram.values()),
        "op_histogram": histogram, "ops_newer_than_target": newer, "weights": weight_summary(proto),
        "weight_file_bytes": weight_file.stat().st_size if weight_file.exists() else 0,
        "package_bytes": package_bytes(path), "problems": problems,
    }
    if problems:
        raise CoreMLValidationError(f"{path.name} failed Linux-side validation: " + "; ".join(problems))
    return report


def _varying_axes(array, flex_kind) -> set[int]:
    if flex_kind == "shapeRange":
        return {i for i, r in enumerate(array.shapeRange.sizeRanges) if r.lowerBound != r.upperBound}
    if flex_kind == "enumeratedShapes":
        shapes = [tuple(s.shape) for s in array.enumeratedShapes.shapes]
        return {i for i in range(len(shapes[0])) if len({sh[i] for sh in shapes}) > 1} if shapes else set()
    return set()


def package_bytes(path: Path) -> int:
    """Bytes on disk of a package folder (or a file)."""
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size
