"""Converters: one module per export format (a package where a format has several files: `tflite/`,
`coreml/`, `ascend/`), each registering itself on import.

Converter modules import their toolchains lazily, so listing formats (and asking `unsupported_reason`)
works without every toolchain installed.
"""
import importlib
import pkgutil

from converters.base import (PRECISIONS, Conversion, ConversionError, Converter, NoOptions, Precision,
                             UnknownFormatName, UnknownOptionError, UnsupportedError, atomic_path, get_converter,
                             list_converters, option, register_converter, resolve_precision, write_bytes_atomic)

# Helper modules (everything that registers no converter) are listed here; every other module or package is a format.
_NOT_CONVERTERS = {"base", "rewrites", "fp16_scan", "parity"}
for _module in pkgutil.iter_modules(__path__):
    if _module.name not in _NOT_CONVERTERS and not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["PRECISIONS", "Conversion", "ConversionError", "Converter", "NoOptions", "Precision", "UnknownFormatName",
           "UnknownOptionError", "UnsupportedError", "atomic_path", "option", "get_converter", "list_converters", "register_converter", "resolve_precision",
           "write_bytes_atomic"]
