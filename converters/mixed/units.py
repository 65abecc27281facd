"""The units a mixed-precision plan chooses among, and each unit's real inputs.

A unit is a named submodule holding convolutions or linear layers (what the int8 kernels speed up). The units
start as the model's top-level children that hold such layers; the one with the most quantizable weights is then
split into its own children, again and again, while the count stays within `max_units`. So the heavy parts (a
MobileViT block: its convolutions apart from its transformer) are chosen separately, and the search stays
bounded: every unit costs two small conversions and a timing.

`capture_inputs` records what each unit is called with on the real calibration samples (forward pre-hooks), so a
unit can be converted and timed alone (a partial graph) and calibrated on its own real inputs. A unit called
with anything but tensors (or constants that do not change between samples) is not measurable alone; the plan
keeps it float and says why.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator

MAX_UNITS = 12  # two conversions and two timings each: ~4 minutes for a full-size model on 2 cores


@dataclass
class Unit:
    name: str                      # "stages.2.1.transformer", or "blocks.0-3" for a run of a Sequential's children
    macs: int                      # multiply-accumulates of its convolutions and linear layers per inference
    members: tuple[str, ...] = ()  # the submodules it is made of (one, or a run of consecutive siblings)
    calls: list[tuple[tuple, dict]] = field(default_factory=list)  # (args, kwargs) of each call, all samples
    calls_per_sample: float = 1.0  # a unit run twice per inference (shared weights) costs its time twice

    def __post_init__(self) -> None:
        self.members = self.members or (self.name,)


@contextlib.contextmanager
def hooked(handles: list) -> Iterator[None]:
    """The forward (pre-)hooks in `handles` for the block's duration, removed however it ends: the module is
    left as it was given."""
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _quantizable_kinds() -> tuple:
    import torch

    return (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Linear)


def quantizable_params(module) -> int:
    kinds = _quantizable_kinds()
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, kinds) and m.weight is not None)


def macs_per_module(module, sample: tuple | None) -> dict[str, int]:
    """Multiply-accumulates of each module's convolutions and linear layers on `sample` (weights x output
    positions; the weight count when there is no sample): where the compute, hence the int8 saving, is."""
    import torch

    kinds = _quantizable_kinds()
    own: dict[str, int] = {n: m.weight.numel() for n, m in module.named_modules() if isinstance(m, kinds)}
    if sample is not None:
        measured: dict[str, int] = {}
        handles = []
        for name, mod in module.named_modules():
            if isinstance(mod, kinds):
                def hook(m, _args, output, name=name):
                    channels = output.shape[-1 if isinstance(m, torch.nn.Linear) else 1]
                    measured[name] = measured.get(name, 0) + m.weight.numel() * (output.numel() // channels)
                handles.append(mod.register_forward_hook(hook))
        with hooked(handles), torch.no_grad():
            module(*sample)
        own = {n: measured.get(n, 0) for n in own}  # a layer the forward never ran costs nothing
    totals: dict[str, int] = {}
    for name, macs in own.items():
        parts = name.split(".")
        for i in range(len(parts) + 1):
            key = ".".join(parts[:i])
            totals[key] = totals.get(key, 0) + macs
    return totals


def find_units(module, sample: tuple | None = None, max_units: int = MAX_UNITS) -> list[Unit]:
    """The units of `module`, in the order of its module tree (see the module docstring). A container with more
    children than the budget allows is split into runs of consecutive children where its children feed each
    other: a Sequential always, a ModuleList when, on `sample`, each child's input is the previous one's output.
    Units under 1/`max_units` of the model's quantizable weights are not split further (not worth a timing)."""
    modules = dict(module.named_modules())
    macs = macs_per_module(module, sample)
    weight = lambda name: macs.get(name, 0)  # noqa: E731
    floor = weight("") / max_units

    def parts_of(unit: Unit, room: int) -> list[Unit]:
        if len(unit.members) > 1 or unit.macs < floor:
            return []
        prefix = f"{unit.name}." if unit.name else ""
        kids = [(prefix + n, weight(prefix + n)) for n, _ in modules[unit.name].named_children()]
        kids = [(n, p) for n, p in kids if p > 0]
        if len(kids) < 2:
            return []
        if len(kids) <= room:
            return [Unit(n, p) for n, p in kids]
        names = [prefix + n for n, _ in modules[unit.name].named_children()]
        if room < 2 or not chained(module, modules[unit.name], names, sample):
            return []
        size = -(-len(names) // room)  # runs of consecutive children, those without weights too
        runs = [names[i:i + size] for i in range(0, len(names), size)]
        return [Unit(f"{run[0]}-{run[-1].rsplit('.', 1)[-1]}" if len(run) > 1 else run[0],
                     sum(weight(n) for n in run), tuple(run)) for run in runs]

    units = [Unit(n, weight(n)) for n, _ in module.named_children() if weight(n) > 0]
    while True:
        room = max_units - len(units) + 1
        split = next(((units.index(u), parts) for u in sorted(units, key=lambda u: -u.macs)
                      if (parts := parts_of(u, room))), None)  # the heaviest unit that splits within budget
        if split is None:
            return units
        index, parts = split
        units[index:index + 1] = parts


def chained(module, container, names: list[str], sample: tuple | None) -> bool:
    """Whether the children `names` of `container` feed each other in order (so a run of them is one graph)."""
    import torch

    if isinstance(container, torch.nn.Sequential):
        return True
    if sample is None:
        return False
    modules = dict(module.named_modules())
    seen: dict[str, tuple] = {}

    def hook(name):
        def record(_mod, args, kwargs, output):
            seen.setdefault(name, (args, kwargs, output))
        return record

    with hooked([modules[n].register_forward_hook(hook(n), with_kwargs=True) for n in names]), torch.no_grad():
        module(*sample)
    if set(seen) != set(names):
        return False
    for before, after in zip(names, names[1:]):
        output = seen[before][2]
        output = tuple(output) if isinstance(output, (tuple, list)) else (output,)
        args, kwargs = seen[after][0], seen[after][1]
        if kwargs or len(args) != len(output) or not all(
                isinstance(a, torch.Tensor) and isinstance(o, torch.Tensor) and a.shape == o.shape and torch.equal(a, o)
                for a, o in zip(args, output)):
            return False
    return True


def capture_inputs(module, units: list[Unit], samples: list[tuple]) -> None:
    """Run `module` on each sample, recording every unit's (args, kwargs) in `unit.calls` (detached copies)."""
    import torch

    modules = dict(module.named_modules())
    handles = []

    def recorder(unit: Unit):
        def hook(_mod, args, kwargs):
            unit.calls.append(_detached((args, kwargs)))
        return hook

    for unit in units:
        unit.calls = []
        handles.append(modules[unit.members[0]].register_forward_pre_hook(recorder(unit), with_kwargs=True))
    with hooked(handles), torch.no_grad():
        for sample in samples:
            module(*sample)
    for unit in units:
        unit.calls_per_sample = len(unit.calls) / max(1, len(samples))


def _detached(value):
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_detached(v) for v in value)
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    return value


class UnitCall:
    """One unit as a module of tensors only: the captured call's non-tensor arguments fixed, its tensors
    (positional and keyword, in order) as the inputs. `why_not` says why the unit cannot run alone (None: it can)."""

    def __init__(self, unit: Unit, submodule) -> None:  # submodule: torch.nn.ModuleList of its members
        import torch

        self.unit, self.why_not = unit, None
        first_args, first_kwargs = unit.calls[0] if unit.calls else ((), {})
        self.slots = [("arg", i) for i, a in enumerate(first_args) if isinstance(a, torch.Tensor)] + \
                     [("kw", k) for k, v in first_kwargs.items() if isinstance(v, torch.Tensor)]
        if not unit.calls:
            self.why_not = "it never ran on the calibration samples"
        elif not self.slots:
            self.why_not = "it takes no tensor input"
        else:
            for args, kwargs in unit.calls[1:]:
                if len(args) != len(first_args) or set(kwargs) != set(first_kwargs) or any(
                        not isinstance(a, torch.Tensor) and a is not b and a != b
                        for a, b in zip(list(args) + list(kwargs.values()),
                                        list(first_args) + list(first_kwargs.values()))):
                    self.why_not = "its non-tensor arguments change between samples"
                    break
        self.submodule = submodule  # a ModuleList of the unit's members

    def tensors(self, index: int) -> tuple:
        args, kwargs = self.unit.calls[index]
        return tuple(args[i] if kind == "arg" else kwargs[i] for kind, i in self.slots)

    def module(self):
        """A `torch.nn.Module` taking the unit's tensors positionally."""
        import torch

        first_args, first_kwargs = self.unit.calls[0]
        slots = self.slots
        inner = self.submodule if len(self.submodule) > 1 else self.submodule[0]

        class Call(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, *tensors):
                args, kwargs = list(first_args), dict(first_kwargs)
                for (kind, i), t in zip(slots, tensors):
                    if kind == "arg":
                        args[i] = t
                    else:
                        kwargs[i] = t
                if not isinstance(self.inner, torch.nn.ModuleList):
                    return self.inner(*args, **kwargs)
                out = self.inner[0](*args, **kwargs)  # a run of children that feed each other (`chained`)
                for child in self.inner[1:]:
                    out = child(*out) if isinstance(out, (tuple, list)) else child(out)
                return out

        call = Call()
        call.training = False
        return call
