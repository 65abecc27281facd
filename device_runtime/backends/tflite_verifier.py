"""A pure-Python verifier of TFLite flatbuffers, run before any native interpreter reads the file.

The interpreter is native code and not every build verifies the flatbuffer before reading it (tflite_runtime
2.14 does not), so a truncated or corrupt file could crash the process. `verify_flatbuffer` walks the whole
TFLite schema first (offsets, vtables, vector bounds, tensor/buffer/op-code indices) and turns any
inconsistency into `CorruptArtifactError`; it returns what it read along the way (subgraph inputs/outputs,
signature defs, op count), which the backend uses to describe the model.

Standard library and numpy only: this runs on the device side too.
"""
from __future__ import annotations

import math
import mmap
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from device_runtime.errors import CorruptArtifactError

FILE_IDENTIFIER = b"TFL3"  # bytes 4..8 of every .tflite (the flatbuffer's file identifier)

# Every field of the TFLite schema (schema_py_generated of ai_edge_litert 2.3) that holds an offset, by
# table and field id: ("t", table) a sub-table, ("T", table) a vector of tables, ("v", element bytes) a
# vector of scalars, ("s",) a string, ("u", union) a union value whose type is field id - 1. Tables not
# listed (most builtin options) hold scalars only and get the generic vtable/size check.
_SCHEMA: dict[str, dict[int, tuple]] = {
    "Model": {1: ("T", "OperatorCode"), 2: ("T", "SubGraph"), 3: ("s",), 4: ("T", "Buffer"), 5: ("v", 4),
              6: ("T", "Metadata"), 7: ("T", "SignatureDef"), 8: ("T", "ExternalBufferGroup"),
              9: ("T", "ExternalBuffer")},
    "OperatorCode": {1: ("s",)},
    "SubGraph": {0: ("T", "Tensor"), 1: ("v", 4), 2: ("v", 4), 3: ("T", "Operator"), 4: ("s",)},
    "Tensor": {0: ("v", 4), 3: ("s",), 4: ("t", "QuantizationParameters"), 6: ("t", "SparsityParameters"),
               7: ("v", 4), 9: ("T", "VariantSubType")},
    "QuantizationParameters": {0: ("v", 4), 1: ("v", 4), 2: ("v", 4), 3: ("v", 8), 5: ("u", "QuantizationDetails")},
    "CustomQuantization": {0: ("v", 1)},
    "BlockwiseQuantization": {3: ("v", 4)},
    "MultiAxisQuantization": {3: ("v", 4)},
    "SparsityParameters": {0: ("v", 4), 1: ("v", 4), 2: ("T", "DimensionMetadata")},
    "DimensionMetadata": {3: ("u", "SparseIndexVector"), 5: ("u", "SparseIndexVector")},
    "Int32Vector": {0: ("v", 4)},
    "Uint16Vector": {0: ("v", 2)},
    "Uint8Vector": {0: ("v", 1)},
    "VariantSubType": {0: ("v", 4)},
    "Operator": {1: ("v", 4), 2: ("v", 4), 4: ("u", "BuiltinOptions"), 5: ("v", 1), 7: ("v", 1), 8: ("v", 4),
                 12: ("u", "BuiltinOptions2")},
    "Buffer": {0: ("v", 1)},
    "ExternalBufferGroup": {0: ("s",)},
    "ExternalBuffer": {4: ("s",)},
    "Metadata": {0: ("s",)},
    "TensorMap": {0: ("s",)},
    "SignatureDef": {0: ("T", "TensorMap"), 1: ("T", "TensorMap"), 2: ("s",)},
    "ConcatEmbeddingsOptions": {1: ("v", 4), 2: ("v", 4)},
    "FullyConnectedOptions": {5: ("v", 1)},
    "ReshapeOptions": {0: ("v", 4)},
    "SqueezeOptions": {0: ("v", 4)},
    "VarHandleOptions": {0: ("s",), 1: ("s",)},
    "BucketizeOptions": {0: ("v", 4)},
    "StablehloGatherOptions": {0: ("v", 8), 1: ("v", 8), 2: ("v", 8), 4: ("v", 8)},
    "StablehloTransposeOptions": {0: ("v", 8)},
    "StablehloDotGeneralOptions": {0: ("v", 8), 1: ("v", 8), 2: ("v", 8), 3: ("v", 8), 4: ("v", 4)},
    "StablehloReduceWindowOptions": {0: ("v", 8), 1: ("v", 8), 2: ("v", 8), 3: ("v", 8), 4: ("v", 8)},
    "StablehloBroadcastInDimOptions": {0: ("v", 8)},
    "StablehloDynamicSliceOptions": {0: ("v", 8)},
    "StablehloPadOptions": {0: ("v", 8), 1: ("v", 8), 2: ("v", 8)},
    "StablehloCustomCallOptions": {0: ("s",), 2: ("s",), 4: ("v", 4), 5: ("v", 1)},
    "StablehloReduceOptions": {0: ("v", 8)},
    "StablehloSliceOptions": {0: ("v", 8), 1: ("v", 8), 2: ("v", 8)},
    "StablehloConvolutionOptions": {0: ("v", 8), 1: ("v", 8), 2: ("v", 8), 3: ("v", 8), 4: ("v", 1), 7: ("v", 8),
                                    10: ("v", 8), 13: ("v", 8), 16: ("v", 4)},
    "StablehloScatterOptions": {1: ("v", 8), 2: ("v", 8), 3: ("v", 8)},
    "StablehloCaseOptions": {0: ("v", 4)},
    "StableHLOCompositeOptions": {0: ("s",), 2: ("v", 1)},
}
# Union members that hold offsets (the others are scalar-only tables: generic check).
_UNIONS: dict[str, dict[int, str]] = {
    "BuiltinOptions": {3: "ConcatEmbeddingsOptions", 8: "FullyConnectedOptions", 17: "ReshapeOptions",
                       30: "SqueezeOptions", 111: "VarHandleOptions", 115: "BucketizeOptions"},
    "BuiltinOptions2": {2: "StablehloBroadcastInDimOptions", 3: "StablehloSliceOptions",
                        4: "StablehloConvolutionOptions", 5: "StablehloCustomCallOptions", 6: "StablehloReduceOptions",
                        7: "StablehloScatterOptions", 9: "StablehloDynamicSliceOptions", 10: "StablehloPadOptions",
                        12: "StablehloDotGeneralOptions", 13: "StablehloReduceWindowOptions",
                        16: "StablehloGatherOptions", 17: "StablehloTransposeOptions", 21: "StableHLOCompositeOptions",
                        23: "StablehloCaseOptions"},
    "SparseIndexVector": {1: "Int32Vector", 2: "Uint16Vector", 3: "Uint8Vector"},
    "QuantizationDetails": {1: "CustomQuantization", 2: "BlockwiseQuantization", 3: "MultiAxisQuantization"},
}
# TFLite TensorType -> numpy dtype (None: no numpy equivalent, e.g. int4, resource handles).
TENSOR_TYPES: dict[int, Any] = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 5: None,
                                6: np.bool_, 7: np.int16, 8: np.complex64, 9: np.int8, 10: np.float64,
                                11: np.complex128, 12: np.uint64, 13: None, 14: None, 15: np.uint32, 16: np.uint16,
                                17: None, 18: None, 19: None, 20: None, 21: None, 22: None}
_MAX_DEPTH = 64
_MAX_TABLES = 10_000_000


class _Corrupt(Exception):
    pass


class _Verifier:
    """A bounds-checked walk of a TFLite flatbuffer. Collects what the semantic checks need."""

    def __init__(self, buf, size: int) -> None:
        self.buf, self.size = buf, size
        self.tables = 0

    # -- primitives ------------------------------------------------------------------------------
    def _need(self, pos: int, n: int, what: str) -> None:
        if pos < 0 or n < 0 or pos + n > self.size:
            raise _Corrupt(f"{what} at byte {pos} (+{n}) lies outside the file ({self.size} bytes): truncated or corrupt")

    def u8(self, pos: int) -> int:
        return self.buf[pos]

    def u16(self, pos: int) -> int:
        return struct.unpack_from("<H", self.buf, pos)[0]

    def u32(self, pos: int) -> int:
        return struct.unpack_from("<I", self.buf, pos)[0]

    def i32(self, pos: int) -> int:
        return struct.unpack_from("<i", self.buf, pos)[0]

    def u64(self, pos: int) -> int:
        return struct.unpack_from("<Q", self.buf, pos)[0]

    def deref(self, pos: int, what: str) -> int:
        self._need(pos, 4, what)
        if pos % 4:
            raise _Corrupt(f"{what}: misaligned offset at byte {pos}")
        target = pos + self.u32(pos)
        self._need(target, 4, what)
        return target

    # -- tables ----------------------------------------------------------------------------------
    def table(self, pos: int, kind: str, depth: int = 0, deep: bool = True) -> dict[int, int]:
        """Check the table at `pos` and its vectors and strings, and (when `deep`) its sub-tables;
        return {field id: absolute field position}."""
        if depth > _MAX_DEPTH:
            raise _Corrupt(f"{kind}: nesting deeper than {_MAX_DEPTH}")
        self.tables += 1
        if self.tables > _MAX_TABLES:
            raise _Corrupt(f"more than {_MAX_TABLES} tables")
        self._need(pos, 4, kind)
        if pos % 4:
            raise _Corrupt(f"{kind} table misaligned at byte {pos}")
        vtable = pos - self.i32(pos)
        self._need(vtable, 4, f"{kind} vtable")
        if vtable % 2:
            raise _Corrupt(f"{kind} vtable misaligned at byte {vtable}")
        vsize, tsize = self.u16(vtable), self.u16(vtable + 2)
        if vsize < 4 or vsize % 2:
            raise _Corrupt(f"{kind} vtable has invalid size {vsize}")
        self._need(vtable, vsize, f"{kind} vtable")
        if tsize < 4:
            raise _Corrupt(f"{kind} table has invalid size {tsize}")
        self._need(pos, tsize, kind)
        fields = {}
        for fid in range((vsize - 4) // 2):
            off = self.u16(vtable + 4 + 2 * fid)
            if off:
                if off >= tsize:
                    raise _Corrupt(f"{kind} field {fid} at offset {off} beyond its table ({tsize} bytes)")
                fields[fid] = pos + off
        for fid, spec in _SCHEMA.get(kind, {}).items():
            if fid not in fields:
                continue
            where = fields[fid]
            self._need(where, 4, f"{kind} field {fid}")
            if not deep and spec[0] in "utT":
                continue  # the caller walks these itself
            if spec[0] == "u":
                type_pos = fields.get(fid - 1)
                member = _UNIONS[spec[1]].get(self.u8(type_pos)) if type_pos is not None else None
                self.table(self.deref(where, f"{kind}.{spec[1]}"), member or spec[1], depth + 1)
            elif spec[0] == "t":
                self.table(self.deref(where, f"{kind} field {fid}"), spec[1], depth + 1)
            elif spec[0] == "T":
                self.table_vector(where, spec[1], depth)
            elif spec[0] == "v":
                self.vector(where, spec[1], f"{kind} field {fid}")
            elif spec[0] == "s":
                self.string(where, f"{kind} field {fid}")
        return fields

    def table_vector(self, where: int, kind: str, depth: int) -> list[dict[int, int]]:
        start, n = self.vector(where, 4, f"vector of {kind}")
        return [self.table(self.deref(start + 4 * i, kind), kind, depth + 1) for i in range(n)]

    def vector(self, where: int, elem: int, what: str) -> tuple[int, int]:
        pos = self.deref(where, what)
        n = self.u32(pos)
        self._need(pos + 4, n * elem, f"{what} ({n} elements)")
        if elem > 1 and (pos + 4) % min(elem, 8):
            raise _Corrupt(f"{what}: misaligned vector at byte {pos}")
        return pos + 4, n

    def string(self, where: int, what: str) -> str:
        start, n = self.vector(where, 1, what)
        self._need(start + n, 1, what)
        if self.buf[start + n] != 0:
            raise _Corrupt(f"{what}: string without terminator at byte {start}")
        try:
            return bytes(self.buf[start:start + n]).decode("utf-8")
        except UnicodeDecodeError:
            raise _Corrupt(f"{what}: string at byte {start} is not UTF-8") from None

    # -- typed readers -----------------------------------------------------------------------------
    def ints(self, fields: dict[int, int], fid: int) -> list[int]:
        if fid not in fields:
            return []
        start, n = self.vector(fields[fid], 4, "index vector")
        return list(struct.unpack_from(f"<{n}i", self.buf, start))

    def scalar(self, fields: dict[int, int], fid: int, fmt: str, default: int = 0) -> int:
        return struct.unpack_from(fmt, self.buf, fields[fid])[0] if fid in fields else default


def verify_flatbuffer(path: str | os.PathLike) -> dict[str, Any]:
    """Check that `path` is a well-formed TFLite flatbuffer before any native code reads it.

    Returns a summary (subgraph inputs/outputs, signature defs, op count) read along the way; raises
    `CorruptArtifactError` saying what is wrong.
    """
    path = Path(path)
    size = path.stat().st_size
    if size < 8:
        raise CorruptArtifactError(f"{path} is {size} bytes, too short to be a TFLite model")
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if bytes(buf[4:8]) != FILE_IDENTIFIER:
            raise CorruptArtifactError(f"{path} is not a TFLite model (file identifier {bytes(buf[4:8])!r}, "
                                       f"expected {FILE_IDENTIFIER!r})")
        try:
            return _walk(_Verifier(buf, size), size)
        except _Corrupt as exc:
            raise CorruptArtifactError(f"{path} is not a valid TFLite flatbuffer: {exc}") from None
        except (struct.error, IndexError, UnicodeDecodeError) as exc:  # defence in depth: a bound we missed
            raise CorruptArtifactError(f"{path} is not a valid TFLite flatbuffer: {exc}") from None


def _walk(v: _Verifier, size: int) -> dict[str, Any]:
    root = v.u32(0)
    if root < 8 or root >= size:
        raise _Corrupt(f"root table offset {root} is outside the file")
    model = v.table(root, "Model", deep=False)
    version = v.scalar(model, 0, "<I")
    if version != 3:
        raise _Corrupt(f"schema version {version}, this runtime reads version 3")
    n_codes = len(v.table_vector(model[1], "OperatorCode", 0)) if 1 in model else 0
    buffers = v.table_vector(model[4], "Buffer", 0) if 4 in model else []
    buffer_bytes = []
    for i, buf in enumerate(buffers):
        offset, length = v.scalar(buf, 1, "<Q"), v.scalar(buf, 2, "<Q")
        if offset > 1:  # weights stored after the flatbuffer (models > 2 GB, or as ai-edge-quantizer writes)
            if offset + length > size:
                raise _Corrupt(f"buffer {i} points at bytes {offset}..{offset + length}, past the end of the file")
            buffer_bytes.append(length)
        else:
            buffer_bytes.append(v.vector(buf[0], 1, f"buffer {i}")[1] if 0 in buf else 0)
    if 2 not in model:
        raise _Corrupt("the model has no subgraphs")
    subgraphs = []
    for fid, kind in ((8, "ExternalBufferGroup"), (9, "ExternalBuffer")):
        if fid in model:
            v.table_vector(model[fid], kind, 0)
    graphs_at, n_graphs = v.vector(model[2], 4, "subgraphs")
    for si in range(n_graphs):
        sg = v.table(v.deref(graphs_at + 4 * si, "SubGraph"), "SubGraph", 1, deep=False)
        n_tensors = 0
        variable_bytes = 0  # tensors without data in the file: what the interpreter's arena holds
        if 0 in sg:
            tensors_at, n_tensors = v.vector(sg[0], 4, "tensors")
            for ti in range(n_tensors):
                tensor = v.table(v.deref(tensors_at + 4 * ti, "Tensor"), "Tensor")
                b = v.scalar(tensor, 2, "<I")
                if b >= len(buffers):
                    raise _Corrupt(f"subgraph {si} tensor {ti} uses buffer {b}, the model has {len(buffers)}")
                ttype = v.scalar(tensor, 1, "<b")
                if ttype not in TENSOR_TYPES:
                    raise _Corrupt(f"subgraph {si} tensor {ti} has unknown type {ttype}")
                dims = v.ints(tensor, 0)
                if any(d < -1 for d in dims):
                    raise _Corrupt(f"subgraph {si} tensor {ti} has a negative dimension {dims}")
                if not (b and buffer_bytes[b]) and TENSOR_TYPES[ttype] is not None:
                    variable_bytes += math.prod(max(d, 1) for d in dims) * np.dtype(TENSOR_TYPES[ttype]).itemsize
                # A dense constant must hold as many bytes as its shape says (kernels read that many).
                if b and buffer_bytes[b] and 6 not in tensor and TENSOR_TYPES[ttype] is not None:
                    need = math.prod(dims) * np.dtype(TENSOR_TYPES[ttype]).itemsize
                    if need > buffer_bytes[b]:
                        raise _Corrupt(f"subgraph {si} tensor {ti} of shape {dims} needs {need} bytes, its buffer "
                                       f"{b} holds {buffer_bytes[b]}")

        def check(indices, what, optional=False):
            bad = [i for i in indices if not (0 <= i < n_tensors or (optional and i == -1))]
            if bad:
                raise _Corrupt(f"subgraph {si} {what} refers to tensor {bad[0]}, the subgraph has {n_tensors}")
            return indices

        inputs, outputs = check(v.ints(sg, 1), "inputs"), check(v.ints(sg, 2), "outputs")
        n_ops = 0
        if 3 in sg:
            ops_at, n_ops = v.vector(sg[3], 4, "operators")
            for oi in range(n_ops):
                op = v.table(v.deref(ops_at + 4 * oi, "Operator"), "Operator")
                code = v.scalar(op, 0, "<I")
                if code >= n_codes:
                    raise _Corrupt(f"subgraph {si} operator {oi} uses op code {code}, the model has {n_codes}")
                check(v.ints(op, 1), f"operator {oi} inputs", optional=True)
                check(v.ints(op, 2), f"operator {oi} outputs", optional=True)
                check(v.ints(op, 8), f"operator {oi} intermediates", optional=True)
                custom_at, custom_size = v.scalar(op, 9, "<Q"), v.scalar(op, 10, "<Q")
                if custom_at > 1 and custom_at + custom_size > size:
                    raise _Corrupt(f"subgraph {si} operator {oi} has custom options past the end of the file")
        subgraphs.append({"inputs": inputs, "outputs": outputs, "tensors": n_tensors, "operators": n_ops,
                          "variable_tensor_bytes": variable_bytes})
    for meta in (v.table_vector(model[6], "Metadata", 0) if 6 in model else []):
        if v.scalar(meta, 1, "<I") >= len(buffers):
            raise _Corrupt(f"a metadata entry refers to buffer {v.scalar(meta, 1, '<I')}, the model has {len(buffers)}")
    signatures = []
    for sdef in (v.table_vector(model[7], "SignatureDef", 0) if 7 in model else []):
        index = v.scalar(sdef, 4, "<I")
        if index >= len(subgraphs):
            raise _Corrupt(f"a signature refers to subgraph {index}, the model has {len(subgraphs)}")
        maps = {}
        for fid, side in ((0, "inputs"), (1, "outputs")):
            entries = []
            for tmap in (v.table_vector(sdef[fid], "TensorMap", 0) if fid in sdef else []):
                name = v.string(tmap[0], "signature tensor name") if 0 in tmap else ""
                tensor = v.scalar(tmap, 1, "<I")
                if tensor >= subgraphs[index]["tensors"]:
                    raise _Corrupt(f"signature tensor {name!r} refers to tensor {tensor} of subgraph {index}, "
                                   f"which has {subgraphs[index]['tensors']}")
                entries.append((name, tensor))
            maps[side] = entries
        key = v.string(sdef[2], "signature key") if 2 in sdef else ""
        signatures.append({"key": key, "subgraph": index, **maps})
    return {"version": version, "subgraphs": subgraphs, "signatures": signatures, "op_codes": n_codes,
            "buffers": len(buffers), "tables": v.tables, "constant_bytes": sum(buffer_bytes)}
