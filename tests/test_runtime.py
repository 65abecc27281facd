"""The device runtime: sniffing, clear errors on bad artifacts and bad feeds, hooks, benchmarks, no torch."""
from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

import device_runtime
from device_runtime import (CorruptArtifactError, DTypeError, MissingInputError, ShapeError,
                            UnexpectedInputError, UnknownFormatError)


@pytest.fixture(scope="module")
def pte(export_tiny):
    return export_tiny("mobilevit_xxs", "pte", "fp32").path


@pytest.fixture(scope="module")
def bert_pte(export_tiny):
    return export_tiny("tinybert_4l_312d", "pte", "fp32").path


def test_import_does_not_pull_torch():
    code = "import sys, device_runtime; assert 'torch' not in sys.modules, 'torch imported'; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_format_is_sniffed_from_bytes_not_the_suffix(pte, tmp_path):
    renamed = tmp_path / "artifact.bin"
    shutil.copy(pte, renamed)
    assert device_runtime.sniff_format(renamed) == "pte"
    session = device_runtime.load(renamed)
    assert session.format == "pte" and session.backend == "executorch"


def test_non_artifacts_are_refused_clearly(tmp_path):
    text = tmp_path / "model.pte"
    text.write_text("this is not a model\n" * 10)
    with pytest.raises(UnknownFormatError, match="not a known artifact format"):
        device_runtime.load(text)
    empty = tmp_path / "empty.pte"
    empty.write_bytes(b"")
    with pytest.raises(UnknownFormatError, match="empty"):
        device_runtime.load(empty)
    with pytest.raises(FileNotFoundError):
        device_runtime.load(tmp_path / "missing.pte")


@pytest.mark.parametrize("damage", ["truncate_half", "truncate_header", "scramble"])
def test_corrupt_pte_gives_a_clear_error_not_a_crash(pte, tmp_path, damage):
    data = bytearray(pte.read_bytes())
    if damage == "truncate_half":
        data = data[: len(data) // 2]
    elif damage == "truncate_header":
        data = data[:40]
    else:
        rng = np.random.default_rng(0)
        for pos in rng.integers(8, 4096, size=300):
            data[pos] ^= 0xFF
    bad = tmp_path / f"{damage}.pte"
    bad.write_bytes(bytes(data))
    # in a subprocess, so a native crash would show as a signal instead of killing the test run
    code = ("import device_runtime, sys\n"
            f"try:\n    device_runtime.load({str(bad)!r})\n"
            "except device_runtime.CorruptArtifactError as e:\n    print('CLEAR', e); sys.exit(0)\n"
            "print('LOADED'); sys.exit(1)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, f"rc={out.returncode} {out.stdout} {out.stderr[-500:]}"
    assert "not a loadable ExecuTorch program" in out.stdout


def test_bad_feeds_name_the_problem(pte):
    session = device_runtime.load(pte)
    good = np.zeros((1, 3, 64, 64), np.float32)
    with pytest.raises(MissingInputError, match="pixel_values"):
        session.run(None, {})
    with pytest.raises(UnexpectedInputError, match="image"):
        session.run(None, {"pixel_values": good, "image": good})
    with pytest.raises(ShapeError, match=r"\[1, 3, 32, 32\].*\[1, 3, 64, 64\]"):
        session.run(None, {"pixel_values": np.zeros((1, 3, 32, 32), np.float32)})
    with pytest.raises(DTypeError, match="float64.*float32"):
        session.run(None, {"pixel_values": good.astype(np.float64)})
    with pytest.raises(device_runtime.InputError, match="unknown output"):
        session.run(["probabilities"], {"pixel_values": good})
    out, = session.run(["logits"], {"pixel_values": good})
    assert out.shape == (1, 1000)


def test_adapt_io_casts_integer_feeds_losslessly(bert_pte):
    session = device_runtime.load(bert_pte)
    feed = {t.name: np.ones(t.shape, np.int32) for t in session.get_inputs()}
    with pytest.raises(DTypeError, match="int32.*int64"):
        session.run(None, feed)
    adapted = device_runtime.load(bert_pte, adapt_io=True)
    strict = {k: v.astype(np.int64) for k, v in feed.items()}
    np.testing.assert_array_equal(adapted.run(None, feed)[0], session.run(None, strict)[0])


def test_positional_and_keyword_calls_match(pte):
    session = device_runtime.load(pte)
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    a, = session(x)
    b, = session(pixel_values=x)
    c, = session.run(None, [x])
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


def test_hooks_see_every_run_and_can_be_removed(pte):
    session = device_runtime.load(pte)
    seen = []
    handle = session.add_hook(before=lambda s, feed: seen.append(("before", list(feed))),
                              after=lambda s, feed, outs, secs: seen.append(("after", outs[0].shape, secs > 0)))
    session.run(None, session.example_feed())
    assert seen == [("before", ["pixel_values"]), ("after", (1, 1000), True)]
    handle.remove()
    session.run(None, session.example_feed())
    assert len(seen) == 2


def test_benchmark_reports_load_first_run_and_percentiles(pte):
    session = device_runtime.load(pte, num_threads=1)
    result = session.benchmark(warmup=2, runs=20)
    lat = result.latency
    assert lat.unit == "ms" and result.runs == 20 and result.num_threads == 1
    assert 0 < lat.min <= lat.p50 <= lat.p90 <= lat.p99 <= lat.max
    assert result.load_time_ms > 0 and result.first_run_ms > 0
    assert session.info["threadpool_threads"] == 1
    with pytest.raises(ValueError, match="runs"):
        session.benchmark(runs=0)


def test_unknown_backend_is_an_error_never_a_fallback(pte):
    with pytest.raises(device_runtime.BackendUnavailableError, match="unknown backend 'tflite_runtime'"):
        device_runtime.load(pte, backend="tflite_runtime")
