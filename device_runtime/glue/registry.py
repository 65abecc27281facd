"""The glue registry: each step registers itself by its function's name, as backends do in
`device_runtime.registry`; a pipeline manifest names a step by that string."""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from device_runtime.errors import UsageError


@dataclass(frozen=True)
class GlueStep:
    """One registered step: the function, the arrays it takes (`inputs`), what it returns (`outputs`), its fixed
    parameters (`params`; `required` are those without a default) and whether it drives a session per call
    (`calls_session`: the step takes a `step_fn`, which a pipeline binds to one of its artifacts)."""

    name: str
    fn: Callable[..., Any]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    params: tuple[str, ...]
    required: tuple[str, ...]
    calls_session: bool = False

    @property
    def description(self) -> str:
        return (inspect.getdoc(self.fn) or "").split("\n\n")[0].replace("\n", " ")

    def params_problem(self, params: Mapping[str, Any]) -> str | None:
        """Why `params` cannot be given to this step (an unknown or missing name), or None when they can."""
        unknown = sorted(set(params) - set(self.params))
        if unknown:
            return (f"glue step {self.name!r} has no parameter(s) {unknown}; its parameters are "
                    f"{list(self.params) or 'none'}")
        missing = [p for p in self.required if p not in params]
        if missing:
            return f"glue step {self.name!r} needs parameter(s) {missing}"
        return None

    def __call__(self, arrays: Mapping[str, Any], params: Mapping[str, Any] | None = None,
                 step_fn: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[np.ndarray, ...]:
        """Run the step on named arrays and fixed params; always returns a tuple in `outputs` order."""
        params = dict(params or {})
        problem = self.params_problem(params)
        if problem:
            raise UsageError(problem)
        missing = [n for n in self.inputs if n not in arrays]
        if missing:
            raise UsageError(f"glue step {self.name!r} needs input(s) {missing}; its inputs are {list(self.inputs)}")
        if self.calls_session and not callable(step_fn):
            raise UsageError(f"glue step {self.name!r} calls a session per step: pass step_fn (ids -> logits)")
        extra = {"step_fn": step_fn} if self.calls_session else {}
        result = self.fn(**{n: arrays[n] for n in self.inputs}, **params, **extra)
        return result if isinstance(result, tuple) else (result,)


GLUE: dict[str, GlueStep] = {}


def register_glue(inputs: tuple[str, ...], outputs: tuple[str, ...]) -> Callable[[Callable], Callable]:
    """Register the decorated function as a glue step named by its `__name__`. `inputs` are its array
    arguments; every other argument (but `step_fn`) is a fixed parameter."""

    def decorate(fn: Callable) -> Callable:
        signature = inspect.signature(fn).parameters
        unknown = [n for n in inputs if n not in signature]
        if unknown:
            raise TypeError(f"{fn.__name__} has no argument(s) {unknown}")
        params = tuple(n for n in signature if n not in inputs and n != "step_fn")
        required = tuple(n for n in params if signature[n].default is inspect.Parameter.empty)
        GLUE[fn.__name__] = GlueStep(fn.__name__, fn, tuple(inputs), tuple(outputs), params, required,
                                     calls_session="step_fn" in signature)
        return fn

    return decorate


def get_glue(name: str) -> GlueStep:
    """The registered step called `name`; an unknown name is a `UsageError` listing the steps there are."""
    try:
        return GLUE[name]
    except KeyError:
        raise UsageError(f"unknown glue step {name!r}; registered steps: {', '.join(sorted(GLUE))}") from None


def list_glue() -> list[dict[str, Any]]:
    """Every registered step: name, inputs, outputs, params and the first line of its docstring."""
    return [{"name": s.name, "inputs": list(s.inputs), "outputs": list(s.outputs), "params": list(s.params),
             "description": s.description} for s in GLUE.values()]
