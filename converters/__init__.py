"""Converters: one module per export format, each registering itself on import.

Converter modules import their toolchains lazily, so listing formats (and asking `unsupported_reason`)
works without every toolchain installed.
"""
import importlib
import pkgutil

from converters.base import (PRECISIONS, Conversion, ConversionError, Converter, UnknownFormatName,
                             UnsupportedError, atomic_path, get_converter, list_converters, register_converter,
                             resolve_precision, write_bytes_atomic)

_NOT_CONVERTERS = {"base", "rewrites", "fp16_scan"}
for _module in pkgutil.iter_modules(__path__):
    if _module.name not in _NOT_CONVERTERS and not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["PRECISIONS", "Conversion", "ConversionError", "Converter", "UnknownFormatName", "UnsupportedError",
           "atomic_path", "get_converter", "list_converters", "register_converter", "resolve_precision",
           "write_bytes_atomic"]
