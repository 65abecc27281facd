"""The zoo's typed errors, in a module of their own so that `spec` and `weights` both use them without
importing each other."""
from __future__ import annotations

from device_runtime.errors import PocketformerError


class UnknownModelError(PocketformerError, KeyError):
    """A model name that is not in the zoo."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0])


class WeightsError(PocketformerError, ValueError):
    """A weights file that is missing, unreadable or does not fit the model."""
