"""Benchmarks measure each artifact in a process of its own (as on the device), interleaved across processes."""
from __future__ import annotations

import numpy as np
import pytest

from device_runtime.isolated import WorkerError, benchmark_isolated


def test_each_artifact_runs_in_its_own_process_without_torch_for_tflite_and_onnx(export_tiny):
    tflite = export_tiny("mobilevit_xxs", "tflite", "fp32").path
    onnx = export_tiny("mobilevit_xxs", "onnx", "fp32").path
    document = benchmark_isolated([str(tflite), str(onnx)], runs=6, warmup=1, threads=1)
    first, second = document["results"]
    assert first["format"] == "tflite" and second["format"] == "onnx"
    assert first["process"]["pid"] != second["process"]["pid"]
    assert first["process"]["imports_torch"] is False and second["process"]["imports_torch"] is False
    for result in (first, second):
        assert len(result["latency"]) and result["latency"]["p50"] > 0 and result["runs"] == 6
        assert result["peak_rss_mb"] > 10  # the worker's own high-water mark, not this test process's
    assert "one process per artifact" in document["isolation"] and document["ratio_basis"] == "p50"


def test_a_bad_feed_in_a_worker_is_reported_with_the_workers_error(export_tiny):
    import os

    onnx = export_tiny("mobilevit_xxs", "onnx", "fp32").path
    with pytest.raises(WorkerError, match="ShapeError") as info:
        benchmark_isolated([str(onnx)], runs=2, warmup=0, feeds=[{"pixel_values": np.zeros((1, 3, 8, 8), np.float32)}])
    assert info.value.exit_code == 2  # bad input, as in-process
    # Only benchmark workers count: this test process may hold other children (the session's sshd).
    children = [p for p in os.listdir("/proc") if p.isdigit() and _parent(p) == os.getpid() and
                b"device_runtime.isolated" in _cmdline(p)]
    assert not children, "a benchmark worker was left running"


def _cmdline(pid: str) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read()
    except OSError:
        return b""


def _parent(pid: str) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return None
