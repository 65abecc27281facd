"""The mixed-precision plan: per unit, what it costs in float and in int8 on the target, how much accuracy int8
loses there, and the choice; read from and written to a small JSON file (`--mixed-plan FILE`).

The rule (`choose`): a unit goes int8 when int8 saves time there, by more than `MIN_SAVING_FRACTION` of its
float time (a saving within timing noise is no reason to lose accuracy), and its SQNR, with only that unit in
int8, is at least `unit_sqnr_floor`: the model's int8 floor raised by 10*log10(units), so that even if every
unit sat at that floor their independent errors together would still meet the model's int8 tolerance.
Then the whole-model check (`pick_whole`): the mixed artifact, fp32 and uniform int8 are timed whole, each in its
own process; when one of the other two is faster the plan becomes it (all units float, or all int8), so the
mixed artifact is never slower than the faster of the two.

A plan file may give any part: a unit's `fp32_ms`/`int8_ms` (its timed partial graphs), `sqnr_db`, or `int8`
(the decision itself, which then stands); what it lacks is measured. A unit the model does not have, a wrong
schema or format, or a non-numeric figure is refused (`MixedPlanError`), naming the problem and the valid units.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from device_runtime import atomic
from device_runtime.errors import UsageError

SCHEMA = "pocketformer.mixed-plan"
SCHEMA_VERSION = 1
MIN_SAVING_FRACTION = 0.03  # of the unit's float time: the run-to-run spread of a timed partial graph here
UNIT_FIELDS = {"fp32_ms": float, "int8_ms": float, "sqnr_db": float, "int8": bool, "reason": str, "macs": int,
               "members": list, "calls_per_sample": float, "saving_ms": float, "measurable": bool}
CHOICES = ("mixed", "fp32", "int8")


class MixedPlanError(UsageError):
    """A mixed-precision plan file that cannot be used (unreadable, another model's or format's, malformed)."""


def unit_sqnr_floor(int8_floor_db: float, units: int) -> float:
    return float(int8_floor_db) + 10.0 * math.log10(max(1, units))


def choose(unit: dict[str, Any], floor_db: float) -> tuple[bool, str]:
    """(int8?, why) for one unit from its measured figures (see the module docstring)."""
    if not unit.get("measurable", True) or unit.get("fp32_ms") is None or unit.get("int8_ms") is None:
        return False, f"float: not measured alone ({unit.get('reason') or 'no timing'})"
    fp32, int8 = float(unit["fp32_ms"]), float(unit["int8_ms"])
    saving = fp32 - int8
    timing = f"fp32 {fp32:.3f} ms, int8 {int8:.3f} ms"
    if saving <= MIN_SAVING_FRACTION * fp32:
        verb = "is slower" if saving < 0 else "saves too little"
        return False, f"float: int8 {verb} here ({timing}: saving {saving:+.3f} ms <= {MIN_SAVING_FRACTION:.0%})"
    sqnr = unit.get("sqnr_db")
    if sqnr is None:
        return False, f"float: saves {saving:.3f} ms but its SQNR was not measured"
    if sqnr < floor_db:
        return False, f"float: saves {saving:.3f} ms but SQNR {sqnr:.1f} dB < {floor_db:.1f} dB"
    return True, f"int8: saves {saving:.3f} ms ({timing}), SQNR {sqnr:.1f} dB >= {floor_db:.1f} dB"


def pick_whole(whole: dict[str, float]) -> str:
    """Which of mixed, fp32 and uniform int8 to ship, by whole-model median latency (ties keep the more accurate:
    fp32 over mixed over int8)."""
    order = {"fp32": 0, "mixed": 1, "int8": 2}
    timed = [(whole[k], order[k], k) for k in ("fp32", "mixed", "int8") if whole.get(k) is not None]
    return min(timed)[2] if timed else "mixed"


def read_plan(path: str | Path, fmt: str, unit_names: list[str] | None = None) -> dict[str, Any]:
    """The plan in `path`, checked (see the module docstring); `unit_names` are the model's units (None: the
    units are not checked yet, as when an export is planned before the model is built)."""
    path = Path(path)
    where = f"mixed-precision plan {path}"
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise MixedPlanError(f"{where}: cannot read it ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise MixedPlanError(f"{where}: not JSON ({exc})") from None
    if not isinstance(plan, dict) or plan.get("schema") != SCHEMA:
        raise MixedPlanError(f"{where}: not a mixed-precision plan (\"schema\" must be {SCHEMA!r}); write one with "
                             f"export --precision mixed --mixed-plan NEW_FILE")
    if plan.get("schema_version") != SCHEMA_VERSION:
        raise MixedPlanError(f"{where}: schema_version {plan.get('schema_version')!r}, this version reads "
                             f"{SCHEMA_VERSION}")
    if plan.get("format") not in (None, fmt):
        raise MixedPlanError(f"{where}: it is a plan for {plan['format']}, not {fmt}: costs differ per runtime")
    units = plan.get("units")
    if not isinstance(units, list) or not all(isinstance(u, dict) and isinstance(u.get("name"), str) for u in units):
        raise MixedPlanError(f"{where}: \"units\" must be a list of objects, each with a \"name\"")
    for unit in units:
        for key, value in unit.items():
            kind = UNIT_FIELDS.get(key)
            if key == "name" or kind is None or value is None:
                continue
            ok = isinstance(value, bool) if kind is bool else (
                isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                if kind in (int, float) else isinstance(value, kind))
            if not ok:
                raise MixedPlanError(f"{where}: unit {unit['name']!r}: {key} must be {kind.__name__}, got {value!r}")
    names = [u["name"] for u in units]
    if len(set(names)) != len(names):
        raise MixedPlanError(f"{where}: a unit is listed twice")
    if unit_names is not None:
        unknown = [n for n in names if n not in unit_names]
        if unknown:
            raise MixedPlanError(f"{where}: this model has no unit(s) {', '.join(unknown)}; its units are: "
                                 f"{', '.join(unit_names)}")
    whole = plan.get("whole") or {}
    if not isinstance(whole, dict) or whole.get("choice") not in (None, *CHOICES):
        raise MixedPlanError(f"{where}: \"whole\".\"choice\" must be one of {', '.join(CHOICES)}")
    return plan


def write_plan(path: str | Path, plan: dict[str, Any]) -> None:
    atomic.write_json(Path(path), plan)


def new_plan(model: str, fmt: str, threads: int | None, host: dict[str, Any], floor_db: float) -> dict[str, Any]:
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "model": model, "format": fmt, "threads": threads,
            "host": host, "rule": {"min_saving_fraction": MIN_SAVING_FRACTION, "unit_sqnr_floor_db": floor_db},
            "units": [], "whole": {}}
