"""Ascend `.om` offline models (built by ATC from CANN) on an Ascend NPU.

Two runtimes, in precedence order, both imported lazily on load:
1. `ais_bench` (`ais_bench.infer.interface.InferSession`, Huawei's inference tool; handles dynamic profiles);
2. pyACL (`acl`, the Python binding shipped inside the CANN toolkit): static-shape models and `--dynamic_dims`
   profiles (each run selects its profile with `acl.mdl.set_input_dynamic_dims`, pyACL's
   aclmdlSetInputDynamicDims, on the input ATC adds for it, `ascend_mbatch_shape_data`).
Where neither is importable, `device_runtime.load` fails with `BackendUnavailableError` naming both packages.
Both need the CANN runtime and an NPU (`npu-smi info`); option `device_id` (default 0) picks the NPU.
`num_threads` has no meaning on the NPU and is ignored.

Sequence-length buckets. An `.om` compiled from `export --seq-lens` holds one `--dynamic_dims` profile per
length. The sessions list those lengths as `buckets` (pyACL reads them from the model's own profiles; ais_bench
from the manifest entry beside the `.om`, `report.json`, or the `--atc-script` folder's `atc_job.json`), so
`device_runtime.load` returns a `BucketedSession` that pads each request to the smallest profile that fits.

Sniffing. An `.om` starts with ATC's 256-byte `ModelFileHeader`: magic 0x444F4D49 ("DOMI"; the bytes
`IMOD` little-endian), header length 256, version, a 64-byte checksum, the model length, flags and the model
name. `read_om_header` parses it and reports truncated files (fewer bytes than the header says).

Nothing here has been run against a real `.om` or NPU: this host has neither CANN nor an Ascend device. The
code follows the ais_bench and pyACL APIs and is exercised in tests with stand-in modules only.
"""
from __future__ import annotations

import json
import struct
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from device_runtime.errors import BackendUnavailableError, CorruptArtifactError, ShapeError
from device_runtime.registry import (Backend, Format, read_head, register_backend, register_format,
                                     requires_module)
from device_runtime.session import Session, TensorInfo

OM_MAGIC = 0x444F4D49
OM_MAGIC_BYTES = struct.pack("<I", OM_MAGIC)  # b"IMOD"
OM_HEADER_LEN = 256
_CHECKSUM_LEN = 64
_NAME_OFFSET = 4 + 4 + 4 + _CHECKSUM_LEN + 4 + 4  # magic, headsize, version, checksum, length, 4 flag bytes
_NAME_LEN = 32

# ACL data type codes (aclDataType) -> numpy.
ACL_DTYPES = {0: np.float32, 1: np.float16, 2: np.int8, 3: np.int32, 4: np.uint8, 6: np.int16, 7: np.uint16,
              8: np.uint32, 9: np.int64, 10: np.uint64, 11: np.float64, 12: np.bool_}
ACL_MEM_MALLOC_HUGE_FIRST = 0
ACL_MEMCPY_HOST_TO_DEVICE = 1
ACL_MEMCPY_DEVICE_TO_HOST = 2
ACL_ERROR_REPEAT_INITIALIZE = 100002
# The input ATC adds to a model with dynamic profiles; a run writes the chosen profile into it.
ACL_DYNAMIC_TENSOR_NAME = "ascend_mbatch_shape_data"

INSTALL_AIS_BENCH = ("ais_bench is not installed: build and pip-install its aclruntime and ais_bench wheels from "
                     "https://gitee.com/ascend/tools/tree/master/ais-bench_workload (needs the CANN toolkit)")
INSTALL_ACL = ("pyACL (the `acl` module) is not importable: install the CANN toolkit and "
               "`source <ascend-toolkit>/set_env.sh` so its python/site-packages is on PYTHONPATH")


def read_om_header(path: str | Path) -> dict[str, Any]:
    """The fields of an `.om` file's header; `CorruptArtifactError` when it is not one or is truncated."""
    path = Path(path)
    size = path.stat().st_size
    head = read_head(path, OM_HEADER_LEN)
    if len(head) < 8 or head[:4] != OM_MAGIC_BYTES:
        raise CorruptArtifactError(f"{path} is not an Ascend .om model: it does not start with ATC's magic "
                                   f"number 0x{OM_MAGIC:08X} (bytes {OM_MAGIC_BYTES!r}); got {head[:8].hex(' ')}")
    if len(head) < OM_HEADER_LEN:
        raise CorruptArtifactError(f"{path} ({size} bytes) is truncated: an .om header alone is {OM_HEADER_LEN} bytes")
    headsize, version = struct.unpack_from("<II", head, 4)
    if headsize != OM_HEADER_LEN:
        raise CorruptArtifactError(f"{path}: .om header length field is {headsize}, expected {OM_HEADER_LEN}")
    (length,) = struct.unpack_from("<I", head, 12 + _CHECKSUM_LEN)
    is_encrypt, is_checksum, model_type, gen_mode = head[16 + _CHECKSUM_LEN: 20 + _CHECKSUM_LEN]
    name = head[_NAME_OFFSET:_NAME_OFFSET + _NAME_LEN].split(b"\0", 1)[0].decode("utf-8", "replace")
    if length and size < OM_HEADER_LEN + length:
        raise CorruptArtifactError(f"{path} is truncated: its header announces {length} bytes of model after the "
                                   f"{OM_HEADER_LEN}-byte header, the file has {size - OM_HEADER_LEN}")
    return {"version": f"0x{version:08X}", "model_length": length, "encrypted": bool(is_encrypt),
            "checksum": bool(is_checksum), "model_type": model_type, "gen_mode": gen_mode, "name": name,
            "size_bytes": size}


def is_om(path: Path) -> bool:
    if not path.is_file():
        return False
    head = read_head(path, 8)
    if len(head) >= 8 and head[:4] == OM_MAGIC_BYTES and struct.unpack_from("<I", head, 4)[0] == OM_HEADER_LEN:
        return True
    return path.suffix.lower() == ".om"  # claim it so loading says what is wrong with it


def _np_dtype(code_or_name) -> np.dtype:
    if isinstance(code_or_name, (int, np.integer)) and int(code_or_name) in ACL_DTYPES:
        return np.dtype(ACL_DTYPES[int(code_or_name)])
    name = str(code_or_name).rsplit(".", 1)[-1].lower()  # ais_bench: aclruntime.dtype.float32 -> "float32"
    aliases = {"float": "float32", "double": "float64", "half": "float16", "bool": "bool"}
    try:
        return np.dtype(aliases.get(name, name))
    except TypeError:
        raise CorruptArtifactError(f"unsupported .om tensor data type {code_or_name!r}") from None


def _tensor_info(name: str, dims, dtype) -> TensorInfo:
    shape, dynamic = [], {}
    for axis, d in enumerate(dims):
        if int(d) < 0:
            shape.append(None)
            dynamic[axis] = f"dim_{axis}"
        else:
            shape.append(int(d))
    return TensorInfo(name, tuple(shape), _np_dtype(dtype), None, dynamic)


def recorded_lengths(path: str | Path) -> list[int]:
    """The sequence lengths an `.om`'s export recorded (`details.buckets.lengths`): its manifest entry in the
    `report.json` beside it, else the `atc_job.json` of the `--atc-script` folder it was built in; [] if none."""
    path = Path(path)
    try:
        from device_runtime.manifest import read_manifest

        entry = read_manifest(path.parent).artifacts.get(path.name)
        if entry is not None:
            return sorted(int(n) for n in (entry.details.get("buckets") or {}).get("lengths") or [])
    except Exception:  # an unreadable manifest: the model's own profiles still run, unrouted
        pass
    job = path.parent / "atc_job.json"
    try:
        recorded = json.loads(job.read_text()) if job.is_file() else {}
        return sorted(int(n) for n in (recorded.get("buckets") or {}).get("lengths") or [])
    except (ValueError, TypeError, AttributeError):
        return []


def profile_lengths(inputs: Sequence[TensorInfo], profiles: Sequence[Sequence[int]]) -> list[int]:
    """The sequence length of each `--dynamic_dims` profile (the concatenated shapes of `inputs`, as pyACL's
    get_input_dynamic_dims gives them), when every dynamic axis of a profile has one value; else []."""
    ranks = [len(t.shape) for t in inputs]
    lengths = []
    for dims in profiles:
        if len(dims) != sum(ranks):
            return []
        values, start = set(), 0
        for info, rank in zip(inputs, ranks):
            values.update(int(dims[start + axis]) for axis in info.dynamic_axes)
            start += rank
        if len(values) != 1:
            return []
        lengths.append(values.pop())
    return sorted(lengths) if len(set(lengths)) == len(lengths) else []


class AisBenchSession(Session):
    """An `.om` through ais_bench's `InferSession` (static, dynamic-batch and dynamic-dims models)."""

    format = "om"
    backend = "ais_bench"
    reentrant = False  # one ACL context and one set of device buffers per InferSession: `Session.run` locks

    def __init__(self, path: str, num_threads: int | None = None, device_id: int = 0) -> None:
        super().__init__(path, num_threads)
        self.header = read_om_header(path)
        try:
            from ais_bench.infer.interface import InferSession
        except ImportError as exc:
            raise BackendUnavailableError(f"{INSTALL_AIS_BENCH} ({exc})") from None
        self.device_id = int(device_id)
        try:
            self._session = InferSession(self.device_id, str(path))
        except Exception as exc:  # ais_bench raises RuntimeError/ValueError with ACL's code in the message
            raise CorruptArtifactError(f"ais_bench could not load {path} on NPU {self.device_id}: {exc}") from None
        self._inputs = [_tensor_info(a.name, a.shape, a.datatype) for a in self._session.get_inputs()]
        self._outputs = [_tensor_info(a.name, a.shape, a.datatype) for a in self._session.get_outputs()]
        dynamic = any(t.dynamic_axes for t in self._inputs)
        # ais_bench's modes: "static", or "dymdims" where the feed's shapes pick the compiled profile.
        self._mode = "dymdims" if dynamic else "static"
        if dynamic:  # a --seq-lens .om: route each request to the smallest profile (device_runtime.buckets)
            self.buckets = {length: None for length in recorded_lengths(path)}

    def _execute(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        return [np.asarray(o) for o in self._session.infer(arrays, mode=self._mode)]

    def _backend_info(self) -> dict[str, Any]:
        return {"device_id": self.device_id, "om_header": self.header, "mode": self._mode}

    def close(self) -> None:
        free = getattr(self._session, "free_resource", None)
        if free:
            free()


class AclSession(Session):
    """An `.om` through pyACL (`acl`): load, allocate device buffers, copy, execute, copy back.

    Static-shape models, and `--dynamic_dims` profiles: buffers are sized for the largest profile, and each run
    sets the profile its shapes match (`acl.mdl.set_input_dynamic_dims`) and reads each output's shape for it
    (`acl.mdl.get_cur_output_dims`). Dynamic batch or image-size profiles: use ais_bench.
    """

    format = "om"
    backend = "acl"
    reentrant = False  # one context and one set of device buffers: `Session.run` locks

    def __init__(self, path: str, num_threads: int | None = None, device_id: int = 0) -> None:
        super().__init__(path, num_threads)
        self.header = read_om_header(path)
        try:
            import acl
        except ImportError as exc:
            raise BackendUnavailableError(f"{INSTALL_ACL} ({exc})") from None
        self._acl = acl
        self.device_id = int(device_id)
        self._resources: list[tuple[str, Any]] = []
        try:
            self._open(str(path))
        except Exception:
            self.close()
            raise

    def _check(self, ret, what: str) -> None:
        if ret not in (0, None):
            raise CorruptArtifactError(f"pyACL {what} failed for {self.path} on NPU {self.device_id}: error {ret}")

    def _open(self, path: str) -> None:
        acl = self._acl
        ret = acl.init()
        if ret not in (0, ACL_ERROR_REPEAT_INITIALIZE):
            self._check(ret, "acl.init")
        self._check(acl.rt.set_device(self.device_id), "acl.rt.set_device")
        self._resources.append(("device", self.device_id))
        context, ret = acl.rt.create_context(self.device_id)
        self._check(ret, "acl.rt.create_context")
        # An ACL context is current only in the thread that created it: another thread must make it current.
        self._context, self._owner_thread = context, threading.get_ident()
        self._resources.append(("context", context))
        self._model_id, ret = acl.mdl.load_from_file(path)
        self._check(ret, "acl.mdl.load_from_file")
        self._resources.append(("model", self._model_id))
        self._desc = acl.mdl.create_desc()
        self._resources.append(("desc", self._desc))
        self._check(acl.mdl.get_desc(self._desc, self._model_id), "acl.mdl.get_desc")
        n_inputs = acl.mdl.get_num_inputs(self._desc)
        index, ret = acl.mdl.get_input_index_by_name(self._desc, ACL_DYNAMIC_TENSOR_NAME)
        self._dynamic_index = int(index) if ret == 0 else None  # ATC's profile input: not the user's
        self._user_inputs = [i for i in range(n_inputs) if i != self._dynamic_index]
        self._inputs = [self._describe(i, "input") for i in self._user_inputs]
        self._outputs = [self._describe(i, "output") for i in range(acl.mdl.get_num_outputs(self._desc))]
        self._profiles: list[tuple[int, ...]] = []
        if self._dynamic_index is not None:
            self._profiles = self._dynamic_dims_profiles(path)
            lengths = profile_lengths(self._inputs, self._profiles) or recorded_lengths(path)
            self.buckets = {length: None for length in lengths}
        elif any(t.dynamic_axes for t in self._inputs):
            raise BackendUnavailableError(f"{path} has dynamic inputs without compiled profiles (a shape range); "
                                          f"the pyACL backend runs static and --dynamic_dims models: install "
                                          f"ais_bench ({INSTALL_AIS_BENCH})")
        # Sized by ACL for the largest profile; a smaller profile uses the front of each buffer.
        self._in_sizes = [acl.mdl.get_input_size_by_index(self._desc, i) for i in range(n_inputs)]
        self._out_sizes = [acl.mdl.get_output_size_by_index(self._desc, i) for i in range(len(self._outputs))]
        self._in_ds, self._in_bufs = self._dataset(self._in_sizes)
        self._out_ds, self._out_bufs = self._dataset(self._out_sizes)

    def _dynamic_dims_profiles(self, path: str) -> list[tuple[int, ...]]:
        """The model's --dynamic_dims profiles, each the concatenated shapes of the user inputs."""
        acl = self._acl
        count, ret = acl.mdl.get_input_dynamic_gear_count(self._desc, -1)
        if ret != 0 or not count:
            raise BackendUnavailableError(f"{path} has dynamic batch or image-size profiles; the pyACL backend "
                                          f"runs static and --dynamic_dims models: install ais_bench "
                                          f"({INSTALL_AIS_BENCH})")
        gears, ret = acl.mdl.get_input_dynamic_dims(self._desc, -1, count)
        self._check(ret, "acl.mdl.get_input_dynamic_dims")
        return [tuple(int(d) for d in g["dims"][:int(g.get("dimCount", len(g["dims"])))]) for g in gears]

    def _set_profile(self, arrays: list[np.ndarray]) -> None:
        """Select the compiled profile these shapes are (a request must already be padded to one)."""
        dims = tuple(int(d) for a in arrays for d in a.shape)
        if dims not in self._profiles:
            shown = "; ".join(",".join(map(str, p)) for p in self._profiles)
            raise ShapeError(f"{self.path}: no compiled --dynamic_dims profile takes input shapes "
                             f"{[list(a.shape) for a in arrays]} (profiles, the inputs' shapes concatenated: "
                             f"{shown}); pad to one, or load with device_runtime.load, which does")
        self._check(self._acl.mdl.set_input_dynamic_dims(self._model_id, self._in_ds, self._dynamic_index,
                                                         {"name": "", "dimCount": len(dims), "dims": list(dims)}),
                    "acl.mdl.set_input_dynamic_dims")

    def _describe(self, index: int, kind: str) -> TensorInfo:
        acl = self._acl
        name = getattr(acl.mdl, f"get_{kind}_name_by_index")(self._desc, index)
        dims, ret = getattr(acl.mdl, f"get_{kind}_dims")(self._desc, index)
        self._check(ret, f"acl.mdl.get_{kind}_dims")
        dtype = getattr(acl.mdl, f"get_{kind}_data_type")(self._desc, index)
        return _tensor_info(name, dims["dims"], dtype)

    def _dataset(self, sizes: list[int]):
        acl = self._acl
        dataset = acl.mdl.create_dataset()
        self._resources.append(("dataset", dataset))
        buffers = []
        for size in sizes:
            buf, ret = acl.rt.malloc(size, ACL_MEM_MALLOC_HUGE_FIRST)
            self._check(ret, "acl.rt.malloc")
            self._resources.append(("device_mem", buf))
            data = acl.create_data_buffer(buf, size)
            self._resources.append(("data_buffer", data))
            _, ret = acl.mdl.add_dataset_buffer(dataset, data)
            self._check(ret, "acl.mdl.add_dataset_buffer")
            buffers.append(buf)
        return dataset, buffers

    def _execute(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        acl = self._acl
        if threading.get_ident() != self._owner_thread:  # called (under the session lock) from another thread
            self._check(acl.rt.set_context(self._context), "acl.rt.set_context")
        if self._profiles:
            self._set_profile(arrays)
        for array, index in zip(arrays, self._user_inputs):
            buf, size = self._in_bufs[index], self._in_sizes[index]
            raw = np.ascontiguousarray(array).tobytes()
            if len(raw) != size and not (self._profiles and len(raw) < size):
                raise CorruptArtifactError(f"input needs {size} bytes on the NPU, the feed has {len(raw)}")
            self._check(acl.rt.memcpy(buf, size, acl.util.bytes_to_ptr(raw), len(raw), ACL_MEMCPY_HOST_TO_DEVICE),
                        "acl.rt.memcpy (host to device)")
        self._check(acl.mdl.execute(self._model_id, self._in_ds, self._out_ds), "acl.mdl.execute")
        outputs = []
        for i, (info, buf, size) in enumerate(zip(self._outputs, self._out_bufs, self._out_sizes)):
            shape = info.shape
            if self._profiles:  # this profile's output shape (the buffer holds the largest)
                dims, ret = acl.mdl.get_cur_output_dims(self._desc, i)
                self._check(ret, "acl.mdl.get_cur_output_dims")
                shape = tuple(int(d) for d in dims["dims"])
            if any(d is None for d in shape):  # not expected of a static model: take the whole buffer
                shape, nbytes = tuple(-1 if d is None else d for d in shape), size
            else:
                nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(info.dtype).itemsize
            if nbytes > size:
                raise CorruptArtifactError(f"output {info.name!r} of shape {list(shape)} needs {nbytes} bytes, its "
                                           f"buffer has {size}")
            host, ret = acl.rt.malloc_host(nbytes)
            self._check(ret, "acl.rt.malloc_host")
            try:
                self._check(acl.rt.memcpy(host, nbytes, buf, nbytes, ACL_MEMCPY_DEVICE_TO_HOST),
                            "acl.rt.memcpy (device to host)")
                raw = acl.util.ptr_to_bytes(host, nbytes)
            finally:
                acl.rt.free_host(host)
            outputs.append(np.frombuffer(raw, dtype=info.dtype).reshape(shape).copy())
        return outputs

    def _backend_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"device_id": self.device_id, "om_header": self.header}
        if self._profiles:
            info["dynamic_dims_profiles"] = [list(p) for p in self._profiles]
        return info

    def close(self) -> None:
        acl = getattr(self, "_acl", None)
        if acl is None:
            return
        release = {"data_buffer": acl.destroy_data_buffer, "device_mem": acl.rt.free,
                   "dataset": acl.mdl.destroy_dataset, "desc": acl.mdl.destroy_desc, "model": acl.mdl.unload,
                   "context": acl.rt.destroy_context, "device": acl.rt.reset_device}
        while self._resources:
            kind, handle = self._resources.pop()
            try:
                release[kind](handle)
            except Exception:  # best effort: never mask the error that made us close
                pass

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


register_format(Format("om", (".om",), is_om, "Ascend offline model (ATC, CANN)"))
register_backend(Backend("om", "ais_bench", AisBenchSession, requires_module("ais_bench", INSTALL_AIS_BENCH), precedence=0))
register_backend(Backend("om", "acl", AclSession, requires_module("acl", INSTALL_ACL), precedence=1))
