"""`export --precision mixed` (converters.mixed): per-unit precision chosen from measured cost, on the tiny
MobileViT `.tflite`. The costs here come from an injected plan file (fake timings, so the choice is known in
advance and nothing is timed on a shared machine); the real timing path is the slow test at the end."""
import json

import numpy as np
import pytest

from converters.mixed import plan as plans
from converters.mixed.units import MAX_UNITS, find_units
from models_zoo import get_model

MODEL = "mobilevit_xxs"


def _units():
    import torch

    spec = get_model(MODEL, tiny=True)
    module = spec.build()
    sample = tuple(torch.from_numpy(spec.sample_inputs()[0][n]) for n in spec.input_names)
    return module, find_units(module, sample)


def _plan_file(path, units, measured_sqnr=()):
    """Fake costs: int8 pays on even-numbered units and is slower on odd ones; SQNR given except `measured_sqnr`."""
    rows = []
    for i, unit in enumerate(units):
        row = {"name": unit.name, "fp32_ms": 1.0, "int8_ms": 0.6 if i % 2 == 0 else 1.4}
        if unit.name not in measured_sqnr:
            row["sqnr_db"] = 40.0
        rows.append(row)
    path.write_text(json.dumps({"schema": plans.SCHEMA, "schema_version": plans.SCHEMA_VERSION, "format": "tflite",
                                "units": rows}))
    return rows


def test_units_are_the_heavy_submodules_within_budget():
    module, units = _units()
    names = dict(module.named_modules())
    assert 4 <= len(units) <= MAX_UNITS
    assert all(m in names for u in units for m in u.members)
    # The MobileViT block is split: its transformer (LayerNorm, softmax: float islands) is a unit apart from the
    # convolutions around it, so int8 can be chosen for one and not the other.
    transformer = [u.name for u in units if u.name.endswith("transformer")]
    assert transformer and any(u.name.endswith("conv_kxk") for u in units), [u.name for u in units]
    assert all(u.macs > 0 for u in units)
    # No unit inside another: each layer is chosen once.
    flat = [m for u in units for m in u.members]
    assert not [a for a in flat for b in flat if a != b and a.startswith(b + ".")]


def test_choice_rule_follows_measured_cost_and_sensitivity():
    floor = plans.unit_sqnr_floor(15.0, 10)
    assert floor == pytest.approx(25.0)
    slower, why = plans.choose({"fp32_ms": 1.0, "int8_ms": 1.2, "sqnr_db": 50.0}, floor)
    assert not slower and "slower" in why
    noise, why = plans.choose({"fp32_ms": 1.0, "int8_ms": 0.99, "sqnr_db": 50.0}, floor)
    assert not noise and "too little" in why
    lossy, why = plans.choose({"fp32_ms": 1.0, "int8_ms": 0.5, "sqnr_db": 20.0}, floor)
    assert not lossy and "SQNR 20.0 dB < 25.0 dB" in why
    paying, why = plans.choose({"fp32_ms": 1.0, "int8_ms": 0.5, "sqnr_db": 30.0}, floor)
    assert paying and "saves 0.500 ms" in why
    assert plans.pick_whole({"fp32": 6.0, "mixed": 5.0, "int8": 7.0}) == "mixed"
    assert plans.pick_whole({"fp32": 6.0, "mixed": 6.5, "int8": 7.0}) == "fp32"
    assert plans.pick_whole({"fp32": 6.0, "mixed": 6.0, "int8": 6.0}) == "fp32"  # a tie keeps the accurate one


def test_bad_plan_files_are_refused_naming_the_problem(tmp_path):
    names = ["stem", "stages.0"]
    bad = tmp_path / "plan.json"
    cases = {
        "not JSON": "{units: ",
        "schema": json.dumps({"units": []}),
        "no unit(s) stages.9": json.dumps({"schema": plans.SCHEMA, "schema_version": 1,
                                           "units": [{"name": "stages.9", "fp32_ms": 1.0}]}),
        "fp32_ms must be float": json.dumps({"schema": plans.SCHEMA, "schema_version": 1,
                                             "units": [{"name": "stem", "fp32_ms": "fast"}]}),
        "plan for onnx": json.dumps({"schema": plans.SCHEMA, "schema_version": 1, "format": "onnx", "units": []}),
    }
    for expected, text in cases.items():
        bad.write_text(text)
        with pytest.raises(plans.MixedPlanError) as info:
            plans.read_plan(bad, "tflite", names)
        assert expected in str(info.value) and str(bad) in str(info.value)
    bad.write_text(cases["no unit(s) stages.9"])
    with pytest.raises(plans.MixedPlanError) as info:
        plans.read_plan(bad, "tflite", names)
    assert "its units are: stem, stages.0" in str(info.value)


def test_export_refuses_a_bad_plan_before_building_the_model(tmp_path):
    from converters.base import UnsupportedError
    from sdk import export

    bad = tmp_path / "plan.json"
    bad.write_text(json.dumps({"schema": "something-else", "units": []}))
    with pytest.raises(UnsupportedError) as info:
        export(MODEL, "tflite", "mixed", out_dir=tmp_path / "out", tiny=True, mixed_plan=str(bad))
    assert "not a mixed-precision plan" in str(info.value) and str(bad) in str(info.value)
    with pytest.raises(UnsupportedError, match="--mixed-plan applies to --precision mixed"):
        export(MODEL, "tflite", "int8", out_dir=tmp_path / "out", tiny=True, mixed_plan=str(bad))
    assert not (tmp_path / "out").exists()


def test_bert_family_is_refused_before_any_work():
    from converters import get_converter

    reason = get_converter("tflite").unsupported_reason(get_model("tinybert_4l_312d", tiny=True), "mixed")
    assert reason and "vision families" in reason


def test_tune_offers_mixed_for_vision_models():
    from sdk.measure.tune import candidates

    todo, _ = candidates(get_model(MODEL, tiny=True), ["tflite"])
    assert ("tflite", "mixed") in todo
    _, skipped = candidates(get_model("tinybert_4l_312d", tiny=True), ["tflite"], ["mixed"])
    assert skipped and "vision families" in skipped[0]["reason"]


def test_mixed_export_keeps_slow_units_float_records_why_and_verifies(tmp_path):
    """Injected costs: units where int8 is slower stay float, the rest go int8; the unit without an SQNR in the
    file is measured; the artifact is verified on held-out samples against its own quantized PyTorch model and
    against fp32, and the manifest records the choice."""
    from sdk import export

    _, units = _units()
    plan_path = tmp_path / "plan.json"
    measured = {units[0].name}
    rows = _plan_file(plan_path, units, measured_sqnr=measured)
    before = plan_path.read_text()
    (result,) = export(MODEL, "tflite", "mixed", out_dir=tmp_path / "out", tiny=True, mixed_plan=str(plan_path))
    assert result.passed and result.precision == "mixed"
    mixed = result.details["mixed"]
    slower = {r["name"] for r in rows if r["int8_ms"] > r["fp32_ms"]}
    assert {f["name"] for f in mixed["float_units"]} == slower
    assert set(mixed["int8_units"]) == {u.name for u in units} - slower
    assert all("slower" in f["reason"] for f in mixed["float_units"])
    assert mixed["choice"] == "mixed" and "whole-model check not run" in mixed["plan"]["whole"]["note"]
    sqnr = {u["name"]: u["sqnr_db"] for u in mixed["plan"]["units"]}
    assert all(np.isfinite(sqnr[n]) and sqnr[n] > 15.0 for n in measured)  # measured here, on calibration samples
    assert plan_path.read_text() == before  # a given plan file is the user's: never rewritten
    # Some convolutions compute in int8 and some in float: neither uniform int8 nor fp32.
    assert result.details["float_ops"].get("CONV_2D", 0) > 0
    assert result.details["op_histogram"].get("QUANTIZE", 0) + result.details["op_histogram"].get("DEQUANTIZE", 0) > 0
    # Verified on held-out real samples: vs its own quantized reference, and vs fp32 (really quantized).
    assert result.parity["samples"].startswith("verification (held out")
    assert result.parity["reference"].startswith("mixed PyTorch")
    quant = result.parity["quantization"]
    tolerance = get_model(MODEL, tiny=True).tolerance("int8")
    assert quant["sqnr_db"] >= tolerance.min_sqnr_db and quant["max_abs_err"] > 1e-5
    report = json.loads(result.report_path.read_text())
    entry = next(a for a in report["artifacts"].values() if a["precision"] == "mixed")
    assert entry["details"]["mixed"]["float_units"] == mixed["float_units"]
    assert entry["options"]["mixed_plan"] == str(plan_path)


def test_a_mixed_graph_the_converter_refuses_ships_float_and_says_why(tmp_path, monkeypatch):
    """Measured on full-size Mobile-Former: litert-torch's layout pass refused the graph quantized in parts
    ("non-NHWC compatible node ... dequantize"). The export must not fail where fp32 converts: every unit stays
    float, each saying why, and the artifact is still verified."""
    from sdk import export

    def refuse(members):
        raise AssertionError("Attempting to convert non-NHWC compatible node to NHWC: dequantize_per_tensor_7")

    monkeypatch.setattr("converters.mixed.pt2e.unit_quantizer", refuse)
    _, units = _units()
    plan_path = tmp_path / "plan.json"
    rows = _plan_file(plan_path, units)
    (result,) = export(MODEL, "tflite", "mixed", out_dir=tmp_path / "out", tiny=True, mixed_plan=str(plan_path))
    mixed = result.details["mixed"]
    assert result.passed and result.precision == "mixed" and mixed["int8_units"] == []
    paid = {r["name"] for r in rows if r["int8_ms"] < r["fp32_ms"]}
    reasons = {f["name"]: f["reason"] for f in mixed["float_units"]}
    assert set(reasons) == {u.name for u in units}
    assert all("could not be converted" in reasons[n] and "non-NHWC" in reasons[n] for n in paid)
    assert "non-NHWC" in mixed["plan"]["whole"]["mixed_error"]
    assert result.details["op_histogram"].get("QUANTIZE", 0) == 0  # a float graph, verified as one


@pytest.mark.slow
def test_measured_plan_is_written_and_never_slower_than_fp32_or_int8(tmp_path):
    """The real path: every unit timed alone on LiteRT (one process each), then fp32, uniform int8 and mixed
    timed whole; the plan file is written and the shipped choice is the fastest of the three."""
    from sdk import export

    plan_path = tmp_path / "new-plan.json"
    (result,) = export(MODEL, "tflite", "mixed", out_dir=tmp_path / "out", tiny=True, mixed_plan=str(plan_path),
                       mixed_threads=2)
    assert result.passed
    written = plans.read_plan(plan_path, "tflite")
    assert all(u.get("fp32_ms") and u.get("int8_ms") for u in written["units"] if u.get("measurable", True))
    whole = written["whole"]
    assert whole[f"{whole['choice']}_ms"] == min(whole["fp32_ms"], whole["int8_ms"], whole["mixed_ms"])
