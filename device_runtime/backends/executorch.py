"""ExecuTorch `.pte` programs through ExecuTorch's Python runtime (`executorch.runtime`).

ExecuTorch's Python binding exchanges torch tensors, so this backend imports torch, lazily, on load.
Input/output names are not part of a `.pte`; Pocketformer embeds them as a constant method
(`pocketformer_meta`, UTF-8 JSON as a uint8 tensor) and falls back to `input_0...` for foreign programs.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

from device_runtime.errors import CorruptArtifactError
from device_runtime.registry import Backend, Format, read_head, register_backend, register_format
from device_runtime.session import Session, TensorInfo

META_METHOD = "pocketformer_meta"
# ExecuTorch ScalarType codes (c10 numbering).
SCALAR_TYPES = {0: np.uint8, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.int64, 5: np.float16, 6: np.float32,
                7: np.float64, 11: np.bool_}


def is_pte(path: Path) -> bool:
    # A .pte is a flatbuffer whose file identifier (bytes 4..8) is "ET" + a two-digit schema version.
    if not path.is_file():
        return False
    head = read_head(path, 8)
    return len(head) == 8 and head[4:6] == b"ET" and head[6:8].isdigit()


def _available() -> str | None:
    if importlib.util.find_spec("executorch") is None:
        return "the executorch package is not installed (pip install 'pocketformer[pte]')"
    return None


class ExecuTorchSession(Session):
    format = "pte"
    backend = "executorch"

    def __init__(self, path: str, num_threads: int | None = None, method: str = "forward") -> None:
        super().__init__(path, num_threads)
        import torch  # noqa: F401  (ExecuTorch's binding needs it loaded first)
        import executorch.kernels.quantized  # noqa: F401  (int8 embedding lookups and other quantized kernels)
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime

        self._torch = torch
        if num_threads is not None:
            # Process-wide: ExecuTorch has one CPU threadpool shared by all programs.
            portable_lib._unsafe_reset_threadpool(int(num_threads))
        self._portable_lib = portable_lib
        size = Path(path).stat().st_size
        try:
            program = Runtime.get().load_program(Path(path))
        except Exception as exc:
            raise CorruptArtifactError(f"{path} ({size} bytes) is not a loadable ExecuTorch program: {exc}") from None
        if method not in program.method_names:
            raise CorruptArtifactError(f"{path} has no method {method!r}; methods: {sorted(program.method_names)}")
        try:
            self._method = program.load_method(method)
        except Exception as exc:
            raise CorruptArtifactError(f"cannot load method {method!r} of {path}: {exc}") from None
        self._program = program
        meta = self._embedded_meta(program)
        mm = self._method.metadata
        in_names = meta.get("inputs") or [f"input_{i}" for i in range(mm.num_inputs())]
        out_names = meta.get("outputs") or [f"output_{i}" for i in range(mm.num_outputs())]
        if len(in_names) != mm.num_inputs() or len(out_names) != mm.num_outputs():
            raise CorruptArtifactError(f"{path}: embedded names do not match the program's inputs/outputs")
        self._inputs = [self._info(n, mm.input_tensor_meta(i)) for i, n in enumerate(in_names)]
        self._outputs = [self._info(n, mm.output_tensor_meta(i)) for i, n in enumerate(out_names)]

    @staticmethod
    def _embedded_meta(program) -> dict:
        if META_METHOD not in program.method_names:
            return {}
        try:
            raw = program.load_method(META_METHOD).execute([])[0]
            return json.loads(bytes(raw.numpy().astype(np.uint8).tolist()).decode("utf-8"))
        except Exception:
            return {}

    @staticmethod
    def _info(name: str, meta) -> TensorInfo:
        code = int(meta.dtype())
        if code not in SCALAR_TYPES:
            raise CorruptArtifactError(f"tensor {name!r} has ExecuTorch scalar type {code}, which is not supported")
        return TensorInfo(name, tuple(int(d) for d in meta.sizes()), np.dtype(SCALAR_TYPES[code]))

    def _execute(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        outputs = self._method.execute([self._torch.from_numpy(a) for a in arrays])
        return [o.numpy() if hasattr(o, "numpy") else np.asarray(o) for o in outputs]

    def _backend_info(self) -> dict:
        from importlib.metadata import version

        return {"runtime_version": version("executorch"),
                "threadpool_threads": int(self._portable_lib._threadpool_get_thread_count()),
                "methods": sorted(self._program.method_names)}


register_format(Format("pte", (".pte",), is_pte, "ExecuTorch program"))
register_backend(Backend("pte", "executorch", ExecuTorchSession, _available))
