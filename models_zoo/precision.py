"""The precision vocabulary: one value type, shared by every format, the zoo, tune and analysis.

A `Precision` is a concrete numeric recipe (`fp32`, `fp16`, `int8-static`, `int8-dynamic`, `int4-weight`)
with what it means spelled out: weight bits, how activations are computed, and what the user asked for
(`int8`, the model family's own int8 recipe, resolves to `int8-static` or `int8-dynamic`). It is a `str`
subclass, so it prints, compares and serialises as its name (`Precision.of("int8-static") == "int8-static"`),
and its meaning is read from properties, never from the spelling of the name.
"""
from __future__ import annotations

from typing import Any

from device_runtime.errors import UsageError

# name -> (weight bits, activations, description). Activations: "float"; "static" (int8, ranges calibrated on
# real samples); "dynamic" (int8, quantized per run from the observed range).
_TABLE: dict[str, tuple[int, str, str]] = {
    "fp32": (32, "float", "float32 weights and activations"),
    "fp16": (16, "float", "float16 weights (and activations where the runtime computes in fp16)"),
    "int8-static": (8, "static", "int8 weights and activations, activation ranges calibrated on real sample inputs"),
    "int8-dynamic": (8, "dynamic", "int8 weights; activations quantized per run from their observed range "
                                   "(linear layers)"),
    "int4-weight": (4, "float", "4-bit weights of the linear layers (and embedding tables where the format looks "
                                "them up quantized), float activations; the XNNPACK 4-bit kernels (ExecuTorch, "
                                "LiteRT) quantize those layers' inputs to int8 per run, as int8-dynamic"),
    # Judged as int8 (tolerance_key): its int8 units are calibrated static int8, the rest stays float.
    "mixed": (8, "static", "per-unit precision chosen from measured cost: static int8 where it is faster on the "
                           "target and accurate enough, float elsewhere (converters.mixed)"),
}
FAMILY_INT8 = "int8"  # the alias resolved per family (ModelSpec.int8_scheme: "static" or "dynamic")

# Every name a user may write, with its meaning (the CLI's --precision choices).
PRECISIONS: dict[str, str] = {
    "fp32": _TABLE["fp32"][2], "fp16": _TABLE["fp16"][2],
    FAMILY_INT8: "the family's int8 recipe: int8-static for vision models, int8-dynamic for the BERT family",
    **{name: row[2] for name, row in _TABLE.items() if name not in ("fp32", "fp16")},
}
INT8_SCHEMES = ("static", "dynamic")


class UnknownPrecisionError(UsageError):
    """A precision name outside the vocabulary."""


class Precision(str):
    """A resolved precision. Build with `Precision.of(name)` or `resolve(...)`; immutable."""

    weight_bits: int
    activations: str
    requested: str

    def __new__(cls, name: str, requested: str | None = None) -> "Precision":
        if isinstance(name, Precision) and requested is None:
            return name
        if name not in _TABLE:
            raise UnknownPrecisionError(f"unknown precision {name!r}; choose from {', '.join(PRECISIONS)}")
        self = super().__new__(cls, name)
        bits, activations, _ = _TABLE[name]
        object.__setattr__(self, "weight_bits", bits)
        object.__setattr__(self, "activations", activations)
        object.__setattr__(self, "requested", requested or name)
        return self

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError("Precision is immutable")

    def __reduce__(self):  # pickles (multiprocessing, Ray) as its name and request
        return (Precision, (str(self), self.requested))

    @classmethod
    def of(cls, name: "str | Precision") -> "Precision":
        """A concrete precision by name (not the family alias `int8`, which needs `resolve`)."""
        return cls(name)

    @property
    def name(self) -> str:
        return str(self)

    @property
    def is_float(self) -> bool:
        """Float weights and activations (fp32, fp16): nothing quantized."""
        return self.weight_bits >= 16

    @property
    def is_quantized(self) -> bool:
        return not self.is_float

    @property
    def is_int8(self) -> bool:
        """int8 weights (static or dynamic activations)."""
        return self.weight_bits == 8

    @property
    def needs_calibration(self) -> bool:
        """Activation ranges come from calibration on real samples."""
        return self.activations == "static"

    @property
    def computes_int8(self) -> bool:
        """Whether the heavy layers compute in int8 (for roofline peaks): int8 static or dynamic."""
        return self.is_int8

    @property
    def tolerance_key(self) -> str:
        """Which of a model's tolerances judges it: `int8` for both int8 recipes, else its own name."""
        return FAMILY_INT8 if self.is_int8 else str(self)

    def describe(self) -> dict[str, Any]:
        return {"name": str(self), "requested": self.requested, "weight_bits": self.weight_bits,
                "activations": self.activations}


def resolve(requested: "str | Precision | None", family_default: str = "fp32", int8_scheme: str = "static",
            format_default: str | None = None) -> Precision:
    """The concrete precision for a request: the format's default (Core ML computes fp16) or the family's when
    None, and the alias `int8` made explicit with the family's scheme."""
    if isinstance(requested, Precision):
        return requested
    name = requested or format_default or family_default
    if name == FAMILY_INT8:
        if int8_scheme not in INT8_SCHEMES:
            raise UnknownPrecisionError(f"int8 scheme must be one of {INT8_SCHEMES}, not {int8_scheme!r}")
        return Precision(f"int8-{int8_scheme}", requested=name)
    if name not in _TABLE:
        raise UnknownPrecisionError(f"unknown precision {name!r}; choose from {', '.join(PRECISIONS)}")
    return Precision(name, requested=name)
