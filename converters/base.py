"""What every converter shares: the `Converter` contract, typed options, the registry, the precision
vocabulary (defined in `models_zoo.precision`) and atomic writing (defined in `device_runtime.atomic`).

A converter module defines a `Converter` subclass and decorates it with `@register_converter`; the CLI's
`--to` choices and the test matrices come from this registry.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from device_runtime.atomic import atomic_path, write_bytes as write_bytes_atomic
from device_runtime.errors import (EXIT_CONVERSION, EXIT_UNSUPPORTED, PocketformerError, UsageError)
from models_zoo.precision import PRECISIONS, Precision, resolve  # noqa: F401  (the one vocabulary, re-exported)

INT4_BLOCK = 32  # 4-bit weights in blocks of 32 input channels: what XNNPACK's blockwise kernels take


def int4_blocks_fit(module) -> bool:
    """Whether every linear layer's input width is a multiple of INT4_BLOCK, so 4-bit weights can go in blocks
    (per channel loses too much: all-MiniLM-L6-v2 7.8 dB SQNR per channel against 11.1 in blocks, ExecuTorch)."""
    import torch

    widths = [m.in_features for m in module.modules() if isinstance(m, torch.nn.Linear)]
    return bool(widths) and all(w % INT4_BLOCK == 0 for w in widths)


class ConversionError(PocketformerError, RuntimeError):
    """The toolchain could not turn the model into the artifact (an op it cannot lower, a crash)."""

    exit_code = EXIT_CONVERSION


class UnsupportedError(PocketformerError, ValueError):
    """The converter cannot do what was asked (format/precision/model combination, missing toolchain)."""

    exit_code = EXIT_UNSUPPORTED


class UnknownFormatName(PocketformerError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


class UnknownOptionError(UsageError):
    """A converter option that no requested format declares (a misspelt or foreign key)."""


def requested_precision(spec, precision: str | None, converter: "Converter | None" = None) -> str:
    """What the user asked for, or the default: the format's own (Core ML computes fp16) or the model's."""
    return precision or (converter.default_precision if converter else None) or spec.default_precision


def resolve_precision(spec, precision: "str | Precision | None", converter: "Converter | None" = None) -> Precision:
    """The concrete precision: the default when None, and `int8` made explicit for the family."""
    try:
        return spec.resolve_precision(precision, converter.default_precision if converter else None)
    except UsageError as exc:
        raise UnsupportedError(str(exc)) from None


# -- options -------------------------------------------------------------------------------------------
def option(default: Any = None, help: str = "", *, choices: typing.Sequence[Any] | None = None,
           metavar: str | None = None, flag: str | None = None) -> Any:
    """A field of a converter's `Options` dataclass; its metadata generates the CLI flag."""
    return field(default=default, metadata={"help": help, "choices": tuple(choices) if choices else None,
                                            "metavar": metavar, "flag": flag})


@dataclass(frozen=True)
class NoOptions:
    """A format with no options of its own."""


def option_values(options: Any) -> dict[str, Any]:
    """A converter's Options as the keyword arguments its methods take."""
    return {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}


def option_fields(options_type: type) -> list[dataclasses.Field]:
    return list(dataclasses.fields(options_type))


def option_flag(f: dataclasses.Field) -> str:
    """The field's command-line flag: `--name` (`--no-name` for a switch that defaults to on)."""
    if f.metadata.get("flag"):
        return f.metadata["flag"]
    return ("--no-" if f.default is True else "--") + f.name.replace("_", "-")


def option_flags(options_type: type) -> list[str]:
    return [option_flag(f) for f in option_fields(options_type)]


def option_field_type(options_type: type, f: dataclasses.Field):
    """The field's base type (`int | None` -> int), from the dataclass's resolved annotations."""
    hint = typing.get_type_hints(options_type).get(f.name, str)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def make_options(options_type: type, values: Mapping[str, Any], fmt: str = "") -> Any:
    """A frozen `options_type` from `values`; an unknown key or a value outside its choices is a `UsageError`
    naming the valid ones."""
    fields = {f.name: f for f in option_fields(options_type)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        valid = ", ".join(sorted(fields)) or "none"
        raise UnknownOptionError(f"unknown {fmt + ' ' if fmt else ''}option(s) {', '.join(unknown)}; valid: {valid}")
    for name, value in values.items():
        f = fields[name]
        choices = f.metadata.get("choices")
        if value is not None and choices and value not in choices:
            raise UsageError(f"{fmt} option {name}={value!r}: choose from {', '.join(map(str, choices))}")
        kind = option_field_type(options_type, f)
        if value is not None and kind in (bool, int, float, str) and not isinstance(value, kind):
            if not (kind is float and isinstance(value, int) and not isinstance(value, bool)):
                raise UsageError(f"{fmt} option {name}={value!r}: expected {kind.__name__}")
    return options_type(**values)


@dataclass
class Conversion:
    """What a converter hands back: the artifact, the PyTorch module it must match, and details for the report.

    `reference` is the module the artifact is verified against: the fp32 model for float exports, the
    quantized PyTorch model (simulated quantization) for int8 exports. `precision` is what the artifact really
    is when the converter fell back (only where the user allowed it), else None; `tolerance_as` names the
    precision whose tolerance judges it when that is not its own (a palettized fp16 Core ML package is judged
    as int8 is).
    """

    path: Path
    reference: Any
    details: dict[str, Any] = field(default_factory=dict)
    precision: Precision | None = None
    tolerance_as: str | None = None


class Converter:
    """Contract of one export format."""

    format: str = ""          # the name used by --to
    suffix: str = ""          # the artifact's suffix (a folder for package formats)
    description: str = ""
    precisions: tuple[str, ...] = ()  # resolved precisions (see resolve_precision)
    default_precision: str | None = None  # the format's own default, when it has one (else the model's)
    extra: str = ""           # the pip extra that installs this format's toolchain
    required_modules: tuple[str, ...] = ()
    # The format's own options: a frozen dataclass whose fields (declared with `option(...)`) are the keyword
    # arguments `convert`, `artifact_name`, `verify_reason` and `unsupported_reason` take. The CLI generates
    # `export`'s flags from it; a field two formats declare must mean the same thing in both.
    Options: type = NoOptions

    def options(self, **values) -> Any:
        """This format's typed options from keyword values; an unknown key is an error naming the valid ones."""
        return make_options(self.Options, values, self.format)

    def option_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in option_fields(self.Options))

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

        `calibration` holds real sample feeds (numpy, batch 1), kept apart from the verification samples.
        `options` are the fields of this format's `Options` (validated by the pipeline). Raise
        `ConversionError` naming the op that cannot be lowered.
        """
        raise NotImplementedError

    # Whether `convert_buckets` writes one artifact holding several sequence lengths (`export --seq-lens`);
    # otherwise the pipeline writes one artifact per length.
    multi_length: bool = False

    def convert_buckets(self, module, specs: dict, precision: str, calibration: dict, path: Path,
                        **options) -> Conversion:
        """One artifact holding every length of `specs` ({length: spec at that length}; `calibration` likewise),
        with the weights stored once and the entry points `device_runtime.buckets` routes to. The returned
        `Conversion.reference` is {length: module} when the reference differs per length (quantized), else the
        fp32 module."""
        raise NotImplementedError

    def multi_length_reason(self, precision) -> str | None:
        """Why `convert_buckets` cannot make this precision (the pipeline then writes one artifact per length)."""
        return None if self.multi_length else f"{self.format} has no multi-length export here"

    # Whether `convert_batches` writes an artifact holding several batch sizes (`export --batch-sizes`, the
    # vision families); the pipeline refuses the format otherwise, unless an option of its own takes them.
    multi_batch: bool = False

    def convert_batches(self, module, spec, precision: str, calibration: dict, path: Path, **options) -> Conversion:
        """One artifact holding every batch size of `calibration` ({batch size: real calibration feeds of that
        many rows, distinct images stacked}), with the weights stored once and the entry points (`batch<N>`)
        `device_runtime.buckets` routes to, or one dynamic batch axis. `Conversion.reference` is {size: module}
        when the reference differs per size (quantized per shape), else the module."""
        raise NotImplementedError

    def multi_batch_reason(self, precision) -> str | None:
        """Why `convert_batches` cannot hold several batch sizes at this precision (the pipeline then writes one
        artifact per batch size, each through `convert_batches` with one size)."""
        return None if self.multi_batch else f"{self.format} has no multi-batch export here"


_CONVERTERS: dict[str, Converter] = {}


def register_converter(cls: type[Converter]) -> type[Converter]:
    if cls.format in _CONVERTERS:
        raise RuntimeError(f"converter {cls.format!r} registered twice")
    _CONVERTERS[cls.format] = cls()
    return cls


def list_converters() -> list[str]:
    return sorted(_CONVERTERS)


def get_converter(fmt: str) -> Converter:
    if fmt not in _CONVERTERS:
        raise UnknownFormatName(f"unknown format {fmt!r}; formats: {', '.join(list_converters())}")
    return _CONVERTERS[fmt]
