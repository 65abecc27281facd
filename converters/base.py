"""What every converter shares: the precision vocabulary, the `Converter` contract, the registry and
atomic artifact writing.

A converter module defines a `Converter` subclass and decorates it with `@register_converter`; the CLI's
`--to` choices and the test matrices come from this registry.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

# One vocabulary for every format. "int8" means the model family's own int8 recipe (`ModelSpec.int8_scheme`:
# static, calibrated activations, for the vision families; dynamic, linear layers, for the BERT family).
PRECISIONS = {
    "fp32": "float32 weights and activations",
    "fp16": "float16 weights (and activations where the runtime computes in fp16)",
    "int8": "the family's int8 recipe: int8-static for vision models, int8-dynamic for the BERT family",
    "int8-static": "int8 weights and activations, activation ranges calibrated on real sample inputs",
    "int8-dynamic": "int8 weights; activations quantized per run from their observed range (linear layers)",
    "int4-weight": "4-bit weights of the linear layers (and embedding tables where the format looks them up "
                   "quantized), float activations; the XNNPACK 4-bit kernels (ExecuTorch, LiteRT) quantize those "
                   "layers' inputs to int8 per run, as int8-dynamic",
}


INT4_BLOCK = 32  # 4-bit weights in blocks of 32 input channels: what XNNPACK's blockwise kernels take


def int4_blocks_fit(module) -> bool:
    """Whether every linear layer's input width is a multiple of INT4_BLOCK, so 4-bit weights can go in blocks
    (per channel loses too much: all-MiniLM-L6-v2 7.8 dB SQNR per channel against 11.1 in blocks, ExecuTorch)."""
    import torch

    widths = [m.in_features for m in module.modules() if isinstance(m, torch.nn.Linear)]
    return bool(widths) and all(w % INT4_BLOCK == 0 for w in widths)


class ConversionError(RuntimeError):
    """The toolchain could not turn the model into the artifact (an op it cannot lower, a crash)."""


class UnsupportedError(ValueError):
    """The converter cannot do what was asked (format/precision/model combination, missing toolchain)."""


class UnknownFormatName(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def requested_precision(spec, precision: str | None, converter: "Converter | None" = None) -> str:
    """What the user asked for, or the default: the format's own (Core ML computes fp16) else the model's."""
    return precision or (converter.default_precision if converter else None) or spec.default_precision


def resolve_precision(spec, precision: str | None, converter: "Converter | None" = None) -> str:
    """The concrete precision: the default when None, and `int8` made explicit for the family."""
    precision = requested_precision(spec, precision, converter)
    if precision not in PRECISIONS:
        raise UnsupportedError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if precision == "int8":
        return f"int8-{spec.int8_scheme}"
    return precision


@dataclass
class Conversion:
    """What a converter hands back: the artifact, the PyTorch module it must match, and details for the report.

    `reference` is the module the artifact is verified against: the fp32 model for float exports, the
    quantized PyTorch model (simulated quantization) for int8 exports.
    """

    path: Path
    reference: Any
    details: dict[str, Any] = field(default_factory=dict)


class Converter:
    """Contract of one export format."""

    format: str = ""          # the name used by --to
    suffix: str = ""          # the artifact's suffix (a folder for package formats)
    description: str = ""
    precisions: tuple[str, ...] = ()  # resolved precisions (see resolve_precision)
    default_precision: str | None = None  # the format's own default, when it has one (else the model's)
    extra: str = ""           # the pip extra that installs this format's toolchain
    required_modules: tuple[str, ...] = ()
    # Format-specific command-line options: (flag, argparse kwargs). The CLI adds them to `export` in a
    # group named after the format and passes their values to `convert` as keyword arguments (dest names).
    # A flag declared by two formats must mean the same thing in both.
    cli_options: tuple[tuple[str, dict], ...] = ()

    def artifact_name(self, **options) -> str:
        """File (or folder) name of the artifact inside `out/<model>/<precision>/`."""
        return f"model{self.suffix}"

    def verify_reason(self, **options) -> str | None:
        """None when the artifact can be run on this host for numerical parity, else why not
        (the pipeline then records the reason instead of parity figures, and never claims parity)."""
        return None

    def missing_toolchain(self) -> str | None:
        from device_runtime.registry import module_present

        missing = [m for m in self.required_modules if not module_present(m)]
        if missing:
            return f"{', '.join(missing)} not installed (pip install 'pocketformer[{self.extra}]')"
        return None

    def unsupported_reason(self, spec, precision: str, **options) -> str | None:
        """None when this converter can export `spec` at the resolved `precision` with these options,
        else why not."""
        if precision not in self.precisions:
            return f"{self.format} does not support precision {precision} (supports: {', '.join(self.precisions)})"
        return self.missing_toolchain()

    def convert(self, module, spec, precision: str, calibration: list[dict], path: Path,
                **options) -> Conversion:
        """Write the artifact to `path` (a temporary path; the pipeline moves it into place once verified).

        `calibration` holds the spec's real sample feeds (numpy, batch 1). Unknown `options` are ignored
        (the CLI passes every format's options). Raise `ConversionError` naming the op that cannot be lowered.
        """
        raise NotImplementedError


_CONVERTERS: dict[str, Converter] = {}


def register_converter(cls: type[Converter]) -> type[Converter]:
    if cls.format in _CONVERTERS:
        raise ValueError(f"converter {cls.format!r} registered twice")
    _CONVERTERS[cls.format] = cls()
    return cls


def list_converters() -> list[str]:
    return sorted(_CONVERTERS)


def get_converter(fmt: str) -> Converter:
    if fmt not in _CONVERTERS:
        raise UnknownFormatName(f"unknown format {fmt!r}; formats: {', '.join(list_converters())}")
    return _CONVERTERS[fmt]


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside `final`; move it into place only if the block succeeds.

    On an exception or Ctrl-C the temporary file (or folder) is removed, so `final` is either the old
    artifact or the complete new one, never a half-written file.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    tmp = tmp_dir / final.name
    try:
        yield tmp
        if not tmp.exists():
            raise ConversionError(f"the converter wrote nothing for {final}")
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
