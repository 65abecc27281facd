"""The measurement tools on pipelines: the glue share counts numpy glue only (a decode loop's artifact calls are the
artifact's time, proven with an artifact of known time); `bench` of a pipeline folder (per stage, glue steps, glue
share, end to end, the caption loop's tokens per second; in report.json and the CLI table); `tune` per stage
(onnx fp32 vs tflite fp32 on one stage, the pipeline written with the pick and verified end to end); the HTML
report's pipeline section; the zoo table's MiniVLM stage rows; a sweep's pipeline jobs (planned, no Ray).

One tiny MiniVLM export (all stages ONNX fp32 at opset 17, the TorchScript exporter: seconds) serves them all;
tests that change it work on a copy.
"""
from __future__ import annotations

import contextlib
import io
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from device_runtime.errors import UsageError
from device_runtime.session import Session, TensorInfo
from sdk.cli.app import EXIT_BAD_INPUT, EXIT_OK, main

VOCAB, DELAY_S, EMBED_DELAY_S = 6, 0.03, 0.02


# -- the glue share: a decode loop's artifact calls are the artifact's time ------------------------------------
class _Sleeper(Session):
    """An "artifact" whose every run takes a known time (sleeps), so the stage accounting can be checked."""

    format, backend = "fake", "sleep"

    def __init__(self, path, delay_s: float, inputs, outputs, fn) -> None:
        super().__init__(str(path), None)
        self.load_time_ms, self._delay, self._fn = 0.0, delay_s, fn
        self._inputs, self._outputs = inputs, outputs

    def _execute(self, arrays):
        time.sleep(self._delay)
        return self._fn(*arrays)


def _sleepy_pipeline(folder: Path) -> None:
    """embed (20 ms) -> decoder driven by greedy_decode (30 ms per call; token 3 always wins, EOS never: max_len)."""
    folder.mkdir()
    for name in ("embed.fake", "decoder.fake"):
        (folder / name).write_bytes(b"\0")
    (folder / "pipeline.json").write_text(json.dumps({
        "schema": "pocketformer.pipeline", "schema_version": 1, "name": "sleepy",
        "inputs": [{"name": "x", "shape": [1, 4], "dtype": "float32"},
                   {"name": "start_ids", "shape": [1, 1], "dtype": "int64"}],
        "stages": [{"name": "embed", "artifact": "embed.fake", "inputs": {"x": "input.x"}},
                   {"name": "decoder", "artifact": "decoder.fake", "inputs": {"memory": "embed.y"},
                    "loop_input": "input_ids"},
                   {"name": "caption", "glue": "greedy_decode", "step": "decoder",
                    "inputs": {"start_ids": "input.start_ids"}, "params": {"eos_id": 2, "max_len": 6}}],
        "outputs": [{"name": "ids", "from": "caption.ids", "shape": [1, None], "dtype": "int64"}]}))


def _fake_load(path, **_):
    f32, i64 = np.dtype(np.float32), np.dtype(np.int64)
    if Path(path).name == "embed.fake":
        return _Sleeper(path, EMBED_DELAY_S, [TensorInfo("x", (1, 4), f32)], [TensorInfo("y", (1, 4), f32)],
                        lambda x: [x * 2])

    def logits(input_ids, memory):
        out = np.zeros((1, input_ids.shape[1], VOCAB), np.float32)
        out[..., 3] = 1.0
        return [out]

    return _Sleeper(path, DELAY_S, [TensorInfo("input_ids", (1, None), i64), TensorInfo("memory", (1, 4), f32)],
                    [TensorInfo("logits", (1, None, VOCAB), f32)], logits)


def test_a_decode_loops_artifact_calls_count_as_the_artifacts_time_not_the_glues(tmp_path):
    from device_runtime.pipeline import open_pipeline

    _sleepy_pipeline(tmp_path / "sleepy")
    with open_pipeline(tmp_path / "sleepy", _fake_load) as session:
        (ids,) = session.run(None, {"x": np.ones((1, 4), np.float32), "start_ids": np.array([[1]])})
        timings = session.last_timings
    assert ids.tolist() == [[1, 3, 3, 3, 3, 3]]  # 5 decoder calls
    stages = timings.per_stage()
    assert list(stages) == ["embed", "decoder", "caption"]
    decoder, caption = stages["decoder"], stages["caption"]
    assert decoder["kind"] == "artifact" and decoder["calls"] == 5
    assert decoder["ms"] >= 5 * DELAY_S * 1e3  # every call's sleep is the decoder's
    assert caption["kind"] == "glue" and caption["ms"] < 0.5 * DELAY_S * 1e3  # argmax and concatenation only
    assert timings.artifact_ms >= (5 * DELAY_S + EMBED_DELAY_S) * 1e3
    # Before the split the loop's 150 ms of decoder calls were glue: a share above 0.85 here.
    assert timings.glue_ms == pytest.approx(caption["ms"]) and timings.glue_share < 0.05
    row = timings.to_dict()["stages"][-1]
    assert row["step"] == "decoder" and row["calls"] == 5 and row["step_ms"] == pytest.approx(decoder["ms"])
    assert timings.total_ms == pytest.approx(sum(s["ms"] for s in stages.values()))


# -- one tiny MiniVLM export for the rest -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from sdk.export.api import export

    out = tmp_path_factory.mktemp("minivlm-tools")
    (result,) = export("minivlm", ["onnx"], tiny=True, out_dir=out, opset=17)
    assert result.passed
    return result  # its folder is result.path


def _copy(folder: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "out" / folder.name
    shutil.copytree(folder, dest)
    return dest


def test_bench_a_pipeline_folder_per_stage_glue_and_end_to_end(exported, tmp_path):
    folder = _copy(exported.path, tmp_path)
    written = tmp_path / "bench.json"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["bench", str(folder), "--runs", "3", "--warmup", "1", "--threads", "1", "--json", str(written),
                     "--quiet"])
    assert code == EXIT_OK, printed.getvalue()
    doc = json.loads(written.read_text())
    assert doc["schema"] == "pocketformer.pipeline-bench" and doc["schema_version"] == 1
    assert doc["pipeline"] == "minivlm-tiny" and doc["runs"] == 3 and doc["feed"].startswith("the export's first")
    stages = {s["stage"]: s for s in doc["stages"]}
    for name in ("detector", "box_head", "fusion", "caption_step"):
        assert stages[name]["kind"] == "artifact" and stages[name]["format"] == "onnx"
        assert 0 < stages[name]["latency"]["p50"] <= stages[name]["latency"]["p90"]
    assert stages["rpn_nms"]["kind"] == "glue" and stages["rpn_nms"]["glue"] == "nms"
    assert set(doc["glue_steps"]) == {n for n, s in stages.items() if s["kind"] == "glue"}
    # The caption loop: its artifact's calls are caption_step's, one per token; tokens per second from them.
    loop = doc["loops"]["caption"]
    assert loop["step"] == "caption_step" and loop["tokens"] == stages["caption_step"]["calls"] >= 1
    assert loop["tokens_per_s"] > 0
    assert 0 < doc["glue_share"] < 1 and doc["end_to_end"]["latency"]["p50"] > 0
    # The stages' time is inside the end-to-end time (what is left: feed checks and bookkeeping).
    assert doc["glue_ms"]["p50"] + doc["artifact_ms"]["p50"] <= doc["end_to_end"]["latency"]["max"] * 1.05
    recorded = json.loads((folder / "report.json").read_text())
    assert recorded["bench"]["schema"] == doc["schema"] and recorded["end_to_end"]["passed"]
    table = printed.getvalue()
    assert "caption_step" in table and "glue share" in table and "tokens/s" in table and "rpn_nms" in table


def test_bench_refuses_what_does_not_apply_to_a_pipeline(exported, tmp_path, capsys):
    from sdk.measure.bench import bench

    with pytest.raises(UsageError, match="one pipeline at a time"):
        bench([exported.path, exported.path])
    with pytest.raises(UsageError, match="benchmarked here only"):
        bench([exported.path], device="ssh://pi@board.local")
    assert main(["bench", str(exported.path), "--input", "image=x.npy"]) == EXIT_BAD_INPUT
    assert "--input" in capsys.readouterr().err
    folder = _copy(exported.path, tmp_path)  # a stage changed since export: its figures would describe other bytes
    detector = folder / json.loads((folder / "report.json").read_text())["stages"]["detector"]["artifact"]
    detector.write_bytes(detector.read_bytes() + b"\0")
    assert main(["bench", str(folder), "--runs", "1", "--quiet"]) == EXIT_BAD_INPUT
    assert "modified since export" in capsys.readouterr().err


def test_tune_per_stage_picks_the_fastest_verified_and_writes_the_pipeline(exported, tmp_path):
    """box_head tuned over onnx fp32 and tflite fp32; the other stages kept (their export reused, not redone)."""
    from sdk.measure.tune import format_tune, tune

    folder = _copy(exported.path, tmp_path)
    report = json.loads((folder / "report.json").read_text())
    kept = {s: (folder / i["artifact"]).stat().st_mtime_ns for s, i in report["stages"].items()}
    doc = tune("minivlm-tiny", tmp_path / "out", formats=["onnx", "tflite"], precisions=["fp32"],
               stages=["box_head"], runs=3, warmup=1, threads=1, opset=17)
    assert doc["schema"] == "pocketformer.pipeline-tune" and doc["schema_version"] == 1 and not doc.get("failed")
    box = doc["stages"]["box_head"]
    assert box["tuned"] and sorted(c["format"] for c in box["candidates"]) == ["onnx", "tflite"]
    p50 = [c["p50_ms"] for c in box["candidates"]]
    assert p50 == sorted(p50) and box["pick"] == box["candidates"][0] and box["candidates"][0]["x_best"] == 1.0
    assert all(c["max_abs_err_vs_fp32"] < 1e-3 for c in box["candidates"])
    for stage in ("detector", "fusion", "caption"):
        info = doc["stages"][stage]
        assert not info["tuned"] and [(c["format"], c["precision"]) for c in info["candidates"]] == [("onnx", "fp32")]
        assert (folder / report["stages"][stage]["artifact"]).stat().st_mtime_ns == kept[stage]  # reused
    assert doc["picks"]["box_head"] == [box["pick"]["format"], "fp32"]
    wired = {s["name"]: s for s in json.loads((folder / "pipeline.json").read_text())["stages"]}
    assert wired["box_head"]["artifact"].endswith(f"box_head/fp32/model.{box['pick']['format']}")
    assert doc["end_to_end"]["passed"] and doc["end_to_end"]["regions"]["agreement"] == 1.0
    assert doc["bench"]["end_to_end"]["latency"]["p50"] > 0 and doc["bench"]["loops"]["caption"]["tokens_per_s"] > 0
    assert json.loads((folder / "tune.json").read_text())["picks"] == doc["picks"]
    text = format_tune(doc)
    assert "stage box_head" in text and "tflite" in text and "pick: detector onnx fp32" in text
    _report_shows_the_pipeline(tmp_path / "out", doc)


def _report_shows_the_pipeline(out: Path, tune_doc: dict) -> None:
    """`pocketformer report` on the tuned folder: the pipeline's per-stage table and glue share, and its tune."""
    from sdk.report.html_page import build_report

    paths = build_report(out, profile=False, analysis=False)
    page, md = paths["html"].read_text(), paths["markdown"].read_text()
    assert "Pipeline minivlm-tiny" in page and "glue share" in page
    for stage in ("detector", "rpn_nms", "caption_step"):
        assert f"<td>{stage}</td>" in page
    assert "tokens/s" in page and "Per-stage tune of minivlm-tiny" in page
    pick = tune_doc["stages"]["box_head"]["pick"]
    # the tune table's rows: stage, format, precision, backend, p50, x fastest, MB, error, pick
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in md.splitlines() if line.startswith("| box_head | ")]
    tuned = {r[1]: r[8] == "yes" for r in rows if len(r) == 9}
    assert tuned == {"onnx": pick["format"] == "onnx", "tflite": pick["format"] == "tflite"}


def test_tune_refusals_name_the_problem(tmp_path):
    from sdk.measure.tune import tune

    with pytest.raises(UsageError, match=r"no stage\(s\) \['decoder'\]"):
        tune("minivlm-tiny", tmp_path, stages=["decoder"])
    with pytest.raises(UsageError, match="--seq-len do not apply"):
        tune("minivlm-tiny", tmp_path, seq_len=16)
    with pytest.raises(UsageError, match="one artifact"):
        tune("tinybert_4l_312d", tmp_path, tiny=True, stages=["fusion"])
    assert not any(tmp_path.iterdir())


def test_the_zoo_table_has_a_row_per_minivlm_stage(exported):
    """Params, MACs and memory traffic of each stage module, counted as for a single model."""
    from sdk.export.minivlm_pipeline import pipeline_model
    from sdk.report.zoo import pipeline_stage_rows, text_table

    rows = pipeline_stage_rows("minivlm", tiny=True)
    assert [r["stage"] for r in rows] == ["detector", "box_head", "fusion", "caption"]
    counted = {r["stage"]: r["analysis"] for r in rows}
    assert all(a["params"] > 0 and a["flops"] > 0 and a["mac_bytes"] > 0 for a in counted.values())
    module, _ = pipeline_model("minivlm-tiny").prepare()
    for stage, sub in pipeline_model("minivlm-tiny").modules(module).items():
        assert counted[stage]["params"] == sum(p.numel() for p in sub.parameters())
    # The TEE's detector runs convolutions over the whole image: more MACs than the box head on 8 regions.
    assert counted["detector"]["flops"] > 10 * counted["box_head"]["flops"]
    table = text_table({"models": [], "pipelines": rows})
    assert "minivlm-tiny / detector" in table and "a stage of minivlm-tiny" in table


def test_a_sweeps_pipeline_job_rows_per_stage_and_end_to_end(exported, tmp_path):
    """Without Ray: the plan (one job per format x precision, its own folder), the driver's record of the export
    task's outcome, the device actor's benchmark of the pipeline, and the table: end to end, then each stage."""
    from sdk.sweep.cluster import DeviceRunner, pipeline_outcome
    from sdk.sweep.jobs import Device, pack, plan_exports
    from sdk.sweep.report import table_rows

    args = dict(tiny=True, seq_len=None, weights=None, options={"opset": 17}, tools={"t": "1"})
    jobs, refused = plan_exports(["minivlm", "tinybert_4l_312d"], ["onnx"], ["fp32", "int8"], **args)
    pipelines = [j for j in jobs if j.units[0].kind == "pipeline"]
    assert not refused and len(pipelines) == 2 and len(jobs) == 4
    unit = next(j.units[0] for j in pipelines if j.requested == "fp32")
    assert unit.folder == "minivlm-tiny@onnx-fp32" and unit.file == "minivlm-tiny/pipeline.json"
    assert unit.options == {"opset": 17} and len({j.units[0].key for j in pipelines}) == 2
    with pytest.raises(UsageError, match="--weights and --seq-len do not apply"):
        plan_exports(["minivlm"], ["onnx"], ["fp32"], **{**args, "seq_len": 16})
    result = exported
    outcome = pipeline_outcome(result, unit.file, 1.0)
    assert outcome["verified"] and outcome["stages"]["caption"]["artifact"].endswith("caption/fp32/model.onnx")
    unit.status, unit.figures = "ok", {k: outcome[k] for k in ("export_s", "size_bytes", "sha256", "verified",
                                                               "stages", "end_to_end")}
    files = pack(result.path.parent, [result.path.name])
    doc = DeviceRunner(Device("local")).bench(files, unit.file, runs=2, warmup=0, threads=1)
    assert doc["schema"] == "pocketformer.pipeline-bench"
    stage_p50 = {s["artifact"]: s["latency"]["p50"] for s in doc["stages"] if s.get("artifact")}
    bench = {"model": unit.model, "format": unit.format, "precision": unit.precision, "device": "local",
             "status": "ok", "figures": {"p50_ms": doc["end_to_end"]["latency"]["p50"], "stages": stage_p50}}
    header, rows = table_rows({"devices": {"local": {}}, "exports": [unit.record()], "benchmarks": [bench]})
    assert header[-1] == "p50 on local" and rows[0][0] == "minivlm-tiny" and "pipeline: p50 end to end" in rows[0][3]
    assert rows[0][-1] == f"{doc['end_to_end']['latency']['p50']:.3f} ms"
    by_stage = {r[0]: r for r in rows[1:]}
    assert list(by_stage) == [f"minivlm-tiny / {s}" for s in ("detector", "box_head", "fusion", "caption")]
    caption = outcome["stages"]["caption"]["artifact"]  # the decode loop's artifact: its calls' time, per run
    assert by_stage["minivlm-tiny / caption"][-1] == f"{stage_p50[caption]:.3f} ms"
    assert all(r[3] == "stage verified" for r in by_stage.values())
