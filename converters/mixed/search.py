"""Per-unit precision chosen from measured cost: the search behind `export --precision mixed`.

1. Units (`converters.mixed.units`): the model's heavy submodules, at most `MAX_UNITS`, with their real inputs
   captured on the calibration samples.
2. Cost, on the target runtime: each unit alone (a partial graph, taking the inputs it really gets) converted in
   float and in int8 with float I/O (so its QUANTIZE/DEQUANTIZE pair at the boundary is paid, as it is beside
   float neighbours), both timed by the runtime itself, each in a process of its own with the rounds interleaved
   (`device_runtime.isolated`), at the target's thread count.
3. Sensitivity: the SQNR of the whole model's output, on the calibration samples, with only that unit in int8
   (the unit's own quantized PyTorch graph swapped in).
4. The choice (`converters.mixed.plan.choose`), then the whole-model check (`pick_whole`): fp32, uniform int8 and
   the mixed graph timed whole; the fastest ships.

The format's conversions come in as a `Toolchain` (the converter's own functions), so this module knows no
format. Every figure and the reason for every unit go to the plan (`details["mixed"]`, and `--mixed-plan FILE`).
"""
from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np

from converters.mixed import plan as plans
from converters.mixed.units import MAX_UNITS, UnitCall, capture_inputs, find_units, hooked

SQNR_CAP_DB = 200.0
RUNS, WARMUP = 30, 5  # per timed graph: rounds of 10 after 3 settling runs (device_runtime.isolated)


@dataclass
class Toolchain:
    """A format's conversions, as the mixed search needs them."""

    format: str
    suffix: str
    float_graph: Callable[..., bytes]  # (module, spec, calibration) -> artifact bytes
    int8_graph: Callable[..., tuple[Any, bytes]]  # (module, spec, calibration, members or None: all) -> (reference, bytes)
    int8_reference: Callable[..., Any]  # (module, samples as tuples of tensors) -> the int8 PyTorch model, all int8


@dataclass
class MixedResult:
    reference: Any  # the quantized PyTorch model the artifact must match; None: the fp32 model (nothing quantized)
    content: bytes
    details: dict[str, Any]


def timer_isolated(paths: list[str], feeds: list[dict], threads: int | None) -> list[float]:
    """Median ms of each artifact, each in a process of its own (the default timer; tests inject their own)."""
    from device_runtime.isolated import benchmark_isolated

    bench = benchmark_isolated(paths, runs=RUNS, warmup=WARMUP, threads=threads, feeds=feeds, pte_python=None)
    return [float(r["latency"]["p50"]) for r in bench["results"]]


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else ""


def _sqnr(reference: list[np.ndarray], actual: list[np.ndarray]) -> float:
    ref = np.concatenate([r.ravel() for r in reference]).astype(np.float64)
    err = ref - np.concatenate([a.ravel() for a in actual]).astype(np.float64)
    noise = float((err ** 2).sum())
    # Capped so a plan stays plain JSON: a unit whose int8 changes nothing (a residual branch zero-initialised)
    # would otherwise read infinite.
    return SQNR_CAP_DB if noise == 0 else min(SQNR_CAP_DB, 10.0 * float(np.log10(float((ref ** 2).sum()) / noise)))


def _outputs(module, samples: list[tuple]) -> list[np.ndarray]:
    import torch

    with torch.no_grad():
        outs = [module(*s) for s in samples]
    return [(o[0] if isinstance(o, (tuple, list)) else o).detach().float().numpy() for o in outs]


def _with_unit_swapped(module, call: UnitCall, quantized, samples: list[tuple]) -> list[np.ndarray]:
    """The model's outputs with the unit's output replaced by its quantized graph's, on its own inputs."""
    modules = dict(module.named_modules())
    first, last = modules[call.unit.members[0]], modules[call.unit.members[-1]]
    held: list[tuple] = []

    def grab(_m, args, kwargs):
        held.append(tuple(args[i] if kind == "arg" else kwargs[i] for kind, i in call.slots))

    def swap(_m, _args, _output):
        return quantized(*held.pop())

    with hooked([first.register_forward_pre_hook(grab, with_kwargs=True), last.register_forward_hook(swap)]):
        return _outputs(module, samples)


def _unit_spec(spec, unit, call: UnitCall):
    """A minimal spec of the unit alone (names for its inputs and outputs) and its calibration feeds."""
    import torch

    tensors = call.tensors(0)
    with torch.no_grad():
        out = call.module()(*tensors)
    outs = out if isinstance(out, (tuple, list)) else (out,)
    if not all(isinstance(o, torch.Tensor) for o in outs):
        raise TypeError("its output is not a tensor or a tuple of tensors")
    names = [f"input_{i}" for i in range(len(tensors))]
    uspec = SimpleNamespace(name=f"{spec.name}[{unit.name}]", input_names=names,
                            output_names=[f"output_{i}" for i in range(len(outs))])
    feeds = [{n: t.numpy() for n, t in zip(names, call.tensors(i))} for i in range(len(unit.calls))]
    return uspec, feeds


def mixed_precision(module, spec, calibration: list[dict], toolchain: Toolchain, plan_path: str | None = None,
                    threads: int | None = 2, timer: Callable[..., list[float]] = timer_isolated,
                    progress: Callable[[str], None] | None = None) -> MixedResult:
    """The mixed artifact of `module` (see the module docstring). `plan_path`: a plan file to reuse (whatever it
    gives is not measured again), or a new file to write the completed plan to."""
    import torch
    from device_runtime.measure import host_info

    say = progress or (lambda _msg: None)
    samples = [tuple(torch.from_numpy(f[n]) for n in spec.input_names) for f in calibration]
    units = find_units(module, samples[0], MAX_UNITS)
    names = [u.name for u in units]
    given = plans.read_plan(plan_path, toolchain.format, names) if plan_path and Path(plan_path).is_file() else None
    floor = plans.unit_sqnr_floor(spec.tolerance("int8").min_sqnr_db or 0.0, len(units))
    plan = plans.new_plan(spec.name, toolchain.format, threads, host_info(), floor)
    if given:
        plan.update({k: given[k] for k in ("threads", "host") if k in given})
        plan["source"] = f"{plan_path} (figures it lacks measured here)"
    from_file = {u["name"]: u for u in (given or {}).get("units", [])}
    capture_inputs(module, units, samples)
    fp32_out = _outputs(module, samples)

    rows, graphs, measured = [], {}, False
    with tempfile.TemporaryDirectory(prefix="pf-mixed-") as folder:
        to_time: list[tuple[str, str, dict]] = []
        for unit in units:
            row = {"name": unit.name, "members": list(unit.members), "macs": unit.macs,
                   "calls_per_sample": unit.calls_per_sample, **from_file.get(unit.name, {})}
            rows.append(row)
            needs_cost = row.get("fp32_ms") is None or row.get("int8_ms") is None
            needs_sqnr = row.get("sqnr_db") is None
            if not (needs_cost or needs_sqnr) or row.get("measurable") is False:
                continue
            call = UnitCall(unit, torch.nn.ModuleList(dict(module.named_modules())[m] for m in unit.members))
            try:
                if call.why_not:
                    raise TypeError(call.why_not)
                say(f"mixed: unit {unit.name} alone, float and int8")
                uspec, feeds = _unit_spec(spec, unit, call)
                if needs_cost:
                    quantized, int8_bytes = toolchain.int8_graph(copy.deepcopy(call.module()), uspec, feeds, None)
                else:  # only its sensitivity is missing: the PyTorch side alone, no conversion
                    quantized = toolchain.int8_reference(copy.deepcopy(call.module()),
                                                         [call.tensors(i) for i in range(len(unit.calls))])
                if needs_sqnr:
                    row["sqnr_db"] = _sqnr(fp32_out, _with_unit_swapped(module, call, quantized, samples))
                if needs_cost:
                    float_bytes = toolchain.float_graph(call.module(), uspec, feeds)
                    for kind, content in (("fp32", float_bytes), ("int8", int8_bytes)):
                        path = Path(folder) / f"{len(to_time)}-{kind}{toolchain.suffix}"
                        path.write_bytes(content)
                        to_time.append((unit.name, kind, {"path": str(path), "feed": feeds[0]}))
            except Exception as exc:  # this unit cannot be measured alone: it stays float, and the plan says why
                row.update(measurable=False, reason=f"not measurable alone: {type(exc).__name__}: {_first_line(exc)}")
        if to_time:
            say(f"mixed: timing {len(to_time)} partial graphs, each in its own process, {threads} threads")
            times = timer([t[2]["path"] for t in to_time], [t[2]["feed"] for t in to_time], threads)
            by_name = {r["name"]: r for r in rows}
            for (name, kind, _), ms in zip(to_time, times):
                by_name[name][f"{kind}_ms"] = ms * by_name[name]["calls_per_sample"]
            measured = True

    for row in rows:
        if row.get("fp32_ms") is not None and row.get("int8_ms") is not None:
            row["saving_ms"] = row["fp32_ms"] - row["int8_ms"]
        if "int8" not in from_file.get(row["name"], {}):
            row["int8"], row["reason"] = plans.choose(row, floor)
    plan["units"] = rows
    chosen = [m for r in rows if r["int8"] for m in r["members"]]

    candidates: dict[str, tuple[Any, bytes]] = {}
    whole = dict((given or {}).get("whole") or {})
    say(f"mixed: {sum(r['int8'] for r in rows)} of {len(rows)} units in int8; converting the whole model")
    try:
        candidates["mixed"] = (toolchain.int8_graph(module, spec, calibration, chosen) if chosen
                               else (None, toolchain.float_graph(module, spec, calibration)))
    except Exception as exc:
        # A converter may refuse a graph quantized in parts that it takes whole or not at all (litert-torch's
        # layout pass on Mobile-Former: "non-NHWC compatible node ... dequantize" at a unit's boundary). Mixed
        # must never fail where fp32 converts: the chosen units stay float, and the plan says why.
        reason = f"the mixed graph could not be converted: {type(exc).__name__}: {_first_line(exc)}"
        say(f"mixed: {reason}; every unit stays float")
        for row in rows:
            if row["int8"]:
                row["int8"], row["reason"] = False, f"{reason} (alone: {row['reason']})"
        whole["mixed_error"], chosen = reason, []
        candidates["mixed"] = (None, toolchain.float_graph(module, spec, calibration))
    if whole.get("choice") is None and measured:
        # The whole-model check: the partial graphs' savings need not add up (boundaries shared between two int8
        # units cost once, not twice), so the three candidates are timed whole before one ships.
        candidates["fp32"] = (None, toolchain.float_graph(module, spec, calibration))
        try:
            candidates["int8"] = toolchain.int8_graph(module, spec, calibration, None)
        except Exception as exc:  # uniform int8 that cannot convert is no candidate; fp32 and mixed still are
            whole["int8_error"] = f"{type(exc).__name__}: {_first_line(exc)}"
        with tempfile.TemporaryDirectory(prefix="pf-mixed-") as folder:
            paths = []
            for kind, (_, content) in candidates.items():
                paths.append(str(Path(folder) / f"{kind}{toolchain.suffix}"))
                Path(paths[-1]).write_bytes(content)
            say("mixed: timing fp32, uniform int8 and mixed whole, each in its own process")
            times = timer(paths, [calibration[0]] * len(paths), threads)
        whole.update({f"{k}_ms": t for k, t in zip(candidates, times)})
        whole["choice"] = plans.pick_whole({k: t for k, t in zip(candidates, times)})
        whole["sqnr_db_on_calibration"] = {k: (None if ref is None else _sqnr(fp32_out, _outputs(ref, samples)))
                                           for k, (ref, _) in candidates.items()}
    elif whole.get("choice") is None:
        whole["note"] = "whole-model check not run: every figure came from the plan file"
    choice = whole.get("choice") or "mixed"
    if choice not in candidates:  # a plan file's choice: make that artifact
        candidates[choice] = ((None, toolchain.float_graph(module, spec, calibration)) if choice == "fp32"
                              else toolchain.int8_graph(module, spec, calibration, None))
    plan["whole"] = whole
    if plan_path and given is None:
        plans.write_plan(plan_path, plan)
    reference, content = candidates[choice]
    int8_units = [r["name"] for r in rows if (r["int8"] and choice == "mixed") or choice == "int8"]
    timed = ", ".join(f"{k} {whole[k + '_ms']:.3f} ms" for k in ("fp32", "mixed", "int8") if whole.get(k + "_ms"))
    overruled = f"float: the whole-model check shipped fp32 ({timed}); alone it measured: "
    details = {"choice": choice, "int8_units": int8_units,
               "float_units": [{"name": r["name"], "reason": (overruled if r["int8"] else "") + r["reason"]}
                               for r in rows if r["name"] not in int8_units],
               "plan": plan, "plan_file": str(plan_path) if plan_path else None,
               "plan_source": "measured here" if given is None else plan["source"]}
    return MixedResult(reference, content, details)
