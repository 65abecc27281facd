"""Per-operator profiles behind one interface: `Session.profile(feed, runs, warmup) -> OpProfile`.

ExecuTorch through ETDump + the devtools Inspector (delegate calls shown as what they are, with the delegate's
own operators nested), ONNX Runtime through its profiler (see test_onnx.py), LiteRT and the others through a
clear error naming the format and why there is no profiler.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("executorch")

import device_runtime  # noqa: E402
from device_runtime.profile import (OpProfile, OpProfileRow, ProfilerUnavailableError,  # noqa: E402
                                    profile_capabilities)
from device_runtime.session import Session, TensorInfo  # noqa: E402


@pytest.fixture(scope="module")
def bert_pte(export_tiny):
    # TinyBERT's .pte mixes portable kernels (mask arithmetic) and XNNPACK delegate calls.
    return export_tiny("tinybert_4l_312d", "pte", "fp32").path


def test_executorch_profile_rows_delegates_and_kernels(bert_pte):
    session = device_runtime.load(bert_pte, num_threads=1)
    profile = session.profile(runs=4, warmup=1)
    assert isinstance(profile, OpProfile) and profile.runs == 4
    top = profile.top_level
    delegates = [r for r in top if r.op_type == "DELEGATE_CALL"]
    kernels = [r for r in top if r.op_type != "DELEGATE_CALL"]
    # Delegated subgraphs show as what they are: named after their backend, read from the program.
    assert delegates and all(r.provider == "XnnpackBackend" for r in delegates)
    assert kernels and all(r.provider == "kernel" for r in kernels)
    assert {"where", "embedding"} <= {r.op_type for r in kernels}
    # XNNPACK reports its own operators; they nest under their delegate call and are not counted twice.
    nested = [r for r in profile if r.level == 1]
    assert nested and {r.parent for r in nested} <= {r.node for r in delegates}
    assert any("Fully Connected" in r.op_type for r in nested)
    for row in profile:
        assert row.count == 4 and row.total_us >= 0
        assert row.p10_us <= row.p50_us <= row.p90_us
    assert [r.total_us for r in top] == sorted((r.total_us for r in top), reverse=True)
    assert sum(r.share for r in top) == pytest.approx(profile.coverage)
    # Every instruction of the method is a row, so the rows explain nearly all of Method::execute (the rest is
    # the executor's own loop).
    assert 0.8 <= profile.coverage <= 1.0 + 1e-9
    assert profile.unprofiled_mean_run_us > 0
    restored = OpProfile.from_dict(json.loads(json.dumps(profile.to_dict())))
    assert restored == list(profile) and restored.coverage == pytest.approx(profile.coverage)
    text = profile.to_text(top=5)
    assert "XnnpackBackend" in text and "more row(s)" in text


def test_executorch_wheel_without_event_tracer_is_detected(bert_pte, monkeypatch):
    from executorch.runtime import Runtime

    load_program = Runtime.load_program

    def no_tracer(self, data, **kwargs):  # what a wheel built without the event tracer gives: no events
        kwargs["enable_etdump"] = False
        return load_program(self, data, **kwargs)

    session = device_runtime.load(bert_pte)
    monkeypatch.setattr(Runtime, "load_program", no_tracer)
    with pytest.raises(ProfilerUnavailableError, match="without the event tracer"):
        session.profile(runs=2, warmup=0)


def test_etdump_without_execute_events_is_not_faked():
    from device_runtime.backends.executorch import build_etdump_profile

    with pytest.raises(ProfilerUnavailableError, match="no Method::execute"):
        build_etdump_profile([{"block": "Execute", "name": "OPERATOR_CALL", "raw": [1.0], "instruction": 0,
                               "delegated": False, "delegate_backend": None}], warmup=0)


def test_onnxruntime_table_is_the_shared_type():
    from device_runtime.backends import onnxruntime as ort_backend

    assert ort_backend.OpProfile is OpProfile and ort_backend.OpProfileRow is OpProfileRow


class _NoProfiler(Session):
    format = "tflite"
    backend = "ai_edge_litert"

    def __init__(self):
        super().__init__("model.tflite")
        self._inputs = [TensorInfo("x", (1,), np.dtype(np.float32))]

    def _execute(self, arrays):
        return arrays


def test_backends_without_profiler_say_so_by_format():
    with pytest.raises(ProfilerUnavailableError) as info:
        _NoProfiler().profile()
    message = str(info.value)
    assert "tflite" in message and "ai_edge_litert" in message and "benchmark_model" in message
    # The CLI maps it to "not supported here".
    from device_runtime.errors import EXIT_UNSUPPORTED

    assert info.value.exit_code == EXIT_UNSUPPORTED


def test_capability_table_covers_every_registered_backend():
    rows = profile_capabilities()
    registered = {(fmt, b.name) for fmt, entries in device_runtime.BACKENDS.items() for b in entries}
    assert {(r["format"], r["backend"]) for r in rows} == registered
    by_backend = {r["backend"]: r for r in rows}
    assert by_backend["executorch"]["profiler"] and by_backend["onnxruntime"]["profiler"]
    # No fake rows for LiteRT: the table says plainly why there is no profiler.
    assert by_backend["ai_edge_litert"]["profiler"] is None
    assert "no per-operator profiler" in by_backend["ai_edge_litert"]["no_profiler"]
    assert all(r["profiler"] or r["no_profiler"] for r in rows)


def test_cli_profile_and_capabilities(bert_pte, tmp_path, capsys):
    from sdk.cli.app import EXIT_OK, main

    assert main(["profile", "--capabilities"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "executorch" in out and "ETDump" in out and "ai_edge_litert" in out
    out_json = tmp_path / "profile.json"
    assert main(["profile", str(bert_pte), "--runs", "3", "--warmup", "1", "--top", "4",
                 "--json", str(out_json)]) == EXIT_OK
    printed = capsys.readouterr().out
    assert "per-operator profile" in printed and "DELEGATE_CALL" in printed
    data = json.loads(out_json.read_text())
    assert data["profile"]["runs"] == 3 and data["profile"]["rows"]
