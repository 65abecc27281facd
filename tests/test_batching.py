"""Dynamic batching: per-request results, batches that really form, the delay bound, a bounded queue, close()."""
from __future__ import annotations

import threading
import time
from concurrent.futures import CancelledError

import numpy as np
import pytest

import device_runtime
from device_runtime import Batcher, QueueFullError, SessionPool, session_batch_runner
from device_runtime.errors import EXIT_UNSUPPORTED, PocketformerError, ShapeError, UsageError


def echo(delay_s: float = 0.0):
    """A fake run_batch: each request's output is its own id times 10, after `delay_s`."""
    def run_batch(feeds):
        time.sleep(delay_s)
        return [f["id"] * 10 for f in feeds]
    return run_batch


def test_each_caller_gets_its_own_results_in_order_across_threads():
    threads, per_thread = 16, 25
    got: dict[int, list] = {}
    with Batcher(echo(0.002), max_batch_size=8, max_queue_delay_ms=2, max_queue_size=1000) as batcher:
        barrier = threading.Barrier(threads)

        def client(k: int) -> None:
            barrier.wait()
            ids = [k * 1000 + i for i in range(per_thread)]
            futures = [batcher.submit({"id": i}) for i in ids[:10]]      # several in flight at once
            results = [f.result(10) for f in futures]
            results += [batcher.run({"id": i}, timeout=10) for i in ids[10:]]  # and one at a time
            got[k] = (ids, results)

        workers = [threading.Thread(target=client, args=(k,)) for k in range(threads)]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        metrics = batcher.metrics()
    assert len(got) == threads
    for ids, results in got.values():
        assert results == [i * 10 for i in ids]
    assert metrics["completed"] == threads * per_thread and metrics["rejected"] == 0
    assert sum(size * n for size, n in metrics["batch_size_histogram"].items()) == threads * per_thread


def test_batches_really_form_when_requests_arrive_together():
    with Batcher(echo(0.02), max_batch_size=8, max_queue_delay_ms=20, max_queue_size=100) as batcher:
        futures = [batcher.submit({"id": i}) for i in range(32)]
        assert [f.result(10) for f in futures] == [i * 10 for i in range(32)]
        metrics = batcher.metrics()
    histogram = metrics["batch_size_histogram"]
    assert max(histogram) > 1 and max(histogram) <= 8
    assert sum(size * n for size, n in histogram.items()) == 32
    assert metrics["batches"] < 32 and metrics["average_batch_size"] > 1
    for key in ("queue_wait_ms", "service_ms", "end_to_end_ms"):
        assert metrics[key]["count"] > 0 and metrics[key]["p99"] >= metrics[key]["p50"] >= 0
    assert metrics["batching"] == "custom"


def test_a_lone_request_waits_at_most_the_queue_delay():
    delay_ms, slack_s = 50, 1.0  # slack: a loaded 2-core CI machine may schedule the worker late
    with Batcher(echo(), max_batch_size=8, max_queue_delay_ms=delay_ms) as batcher:
        start = time.perf_counter()
        assert batcher.run({"id": 1}, timeout=10) == 10
        elapsed = time.perf_counter() - start
    assert delay_ms / 1e3 * 0.9 <= elapsed < delay_ms / 1e3 + slack_s  # waited for company, then went alone


def test_a_full_batch_does_not_wait_for_the_delay():
    with Batcher(echo(), max_batch_size=4, max_queue_delay_ms=60_000) as batcher:
        start = time.perf_counter()
        futures = [batcher.submit({"id": i}) for i in range(4)]
        assert [f.result(10) for f in futures] == [0, 10, 20, 30]
        assert time.perf_counter() - start < 10
        assert batcher.metrics()["batch_size_histogram"] == {4: 1}
        # A leftover request below max_batch_size is still served on close (drained), not after 60 s.
        last = batcher.submit({"id": 9})
    assert last.result(10) == 90


def _blocking_run_batch():
    entered, release = threading.Event(), threading.Event()

    def run_batch(feeds):
        entered.set()
        release.wait(10)
        return [f["id"] for f in feeds]

    return run_batch, entered, release


def test_a_full_queue_rejects_at_once_with_a_typed_error_and_nothing_leaks():
    baseline = threading.active_count()
    run_batch, entered, release = _blocking_run_batch()
    batcher = Batcher(run_batch, max_batch_size=1, max_queue_delay_ms=0, max_queue_size=4)
    first = batcher.submit({"id": 0})
    assert entered.wait(10)  # the worker holds request 0; the queue is empty again
    queued = [batcher.submit({"id": i}) for i in range(1, 5)]
    start = time.perf_counter()
    with pytest.raises(QueueFullError, match="queue is full") as info:
        batcher.submit({"id": 99})
    assert time.perf_counter() - start < 1.0  # refused at once, not after a wait
    assert isinstance(info.value, PocketformerError) and info.value.exit_code == EXIT_UNSUPPORTED
    metrics = batcher.metrics()
    assert metrics["rejected"] == 1 and metrics["queue_depth"] == 4 and metrics["max_queue_depth"] <= 4
    release.set()
    assert [f.result(10) for f in [first, *queued]] == [0, 1, 2, 3, 4]
    batcher.close()
    metrics = batcher.metrics()
    assert metrics["queue_depth"] == 0 and metrics["accepted"] == 5 and metrics["completed"] == 5
    assert threading.active_count() == baseline  # the worker thread is gone


def test_close_drains_pending_requests():
    run_batch, entered, release = _blocking_run_batch()
    batcher = Batcher(run_batch, max_batch_size=2, max_queue_delay_ms=0, max_queue_size=10)
    running = batcher.submit({"id": 0})
    assert entered.wait(10)
    pending = [batcher.submit({"id": i}) for i in range(1, 6)]
    closer = threading.Thread(target=batcher.close)  # close(drain=True) waits for the queue to empty
    closer.start()
    time.sleep(0.05)
    with pytest.raises(UsageError, match="closed"):
        batcher.submit({"id": 7})
    release.set()
    closer.join(10)
    assert not closer.is_alive()
    assert [f.result(0) for f in [running, *pending]] == [0, 1, 2, 3, 4, 5]


def test_close_without_drain_cancels_what_has_not_started():
    run_batch, entered, release = _blocking_run_batch()
    batcher = Batcher(run_batch, max_batch_size=1, max_queue_delay_ms=0, max_queue_size=10)
    running = batcher.submit({"id": 0})
    assert entered.wait(10)
    pending = [batcher.submit({"id": i}) for i in range(1, 4)]
    closer = threading.Thread(target=batcher.close, kwargs={"drain": False, "timeout": 10})
    closer.start()  # cancels the queued requests at once, then waits for the running batch
    deadline = time.perf_counter() + 10
    while not all(f.cancelled() for f in pending) and time.perf_counter() < deadline:
        time.sleep(0.01)
    assert not running.done()
    release.set()
    closer.join(10)
    assert not closer.is_alive()
    assert running.result(10) == 0  # already started: finished, not cancelled
    for f in pending:
        assert f.cancelled()
        with pytest.raises(CancelledError):
            f.result(0)
    assert batcher.metrics()["cancelled"] == 3 and batcher.metrics()["queue_depth"] == 0


def test_errors_reach_the_callers_of_their_batch():
    def failing(feeds):
        raise RuntimeError("kernel exploded")

    with Batcher(failing, max_batch_size=4, max_queue_delay_ms=5) as batcher:
        futures = [batcher.submit({"id": i}) for i in range(3)]
        for f in futures:
            with pytest.raises(RuntimeError, match="kernel exploded"):
                f.result(10)
        assert batcher.metrics()["failed"] == 3

    def partly(feeds):
        return [ValueError("bad") if f["id"] == 1 else f["id"] for f in feeds]

    with Batcher(partly, max_batch_size=4, max_queue_delay_ms=20) as batcher:
        futures = [batcher.submit({"id": i}) for i in range(3)]
        assert futures[0].result(10) == 0 and futures[2].result(10) == 2
        with pytest.raises(ValueError):
            futures[1].result(10)


def test_bad_controls_are_usage_errors():
    with pytest.raises(UsageError):
        Batcher(echo(), max_batch_size=0)
    with pytest.raises(UsageError):
        Batcher(echo(), max_queue_size=0)


# -- real sessions --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bert_onnx(export_tiny):
    return export_tiny("tinybert_4l_312d", "onnx", "fp32").path


def _bert_feeds(session, n):
    rng = np.random.default_rng(1)
    feeds = []
    for _ in range(n):
        feed = session.example_feed()
        feed["input_ids"] = rng.integers(1, 100, feed["input_ids"].shape).astype(feed["input_ids"].dtype)
        feed["token_type_ids"][:] = 0
        feeds.append(feed)
    return feeds


def test_a_tiny_bert_session_round_trip_runs_per_item_on_a_static_batch(bert_onnx):
    # The ONNX converter's dynamic_shapes keeps only the spec's named axes (BERT's sequence), not a batch
    # axis: the export has batch 1, so the adapter runs requests one by one and says so.
    session = device_runtime.load(bert_onnx)
    runner = session_batch_runner(session)
    assert runner.batching == "per-item" and "static batch" in runner.note
    feeds = _bert_feeds(session, 12)
    reference = [session.run(None, f) for f in feeds]
    with Batcher(runner, max_batch_size=4, max_queue_delay_ms=10) as batcher:
        futures = [batcher.submit(f) for f in feeds]
        outputs = [f.result(30) for f in futures]
        metrics = batcher.metrics()
    for out, ref in zip(outputs, reference):
        assert len(out) == len(ref) and all(np.array_equal(a, b) for a, b in zip(out, ref))
    assert metrics["batching"] == "per-item" and "static batch" in metrics["batching_note"]


def _dynamic_batch_onnx(path, batch="batch"):
    """y = x @ W + 1 with x: float32[batch, 4] (a real ONNX model with a dynamic batch axis)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "one"], ["y"])],
        "dyn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.ones(3, np.float32), "one")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def test_a_dynamic_batch_session_concatenates_and_splits(tmp_path):
    session = device_runtime.load(_dynamic_batch_onnx(tmp_path / "dyn.onnx"))
    runner = session_batch_runner(session)
    assert runner.batching == "concatenate"
    rng = np.random.default_rng(2)
    feeds = [{"x": rng.standard_normal((1 + i % 2, 4)).astype(np.float32)} for i in range(16)]
    calls = []
    session.add_hook(before=lambda s, feed: calls.append(feed["x"].shape[0]))
    with Batcher(runner, max_batch_size=8, max_queue_delay_ms=50) as batcher:
        futures = [batcher.submit(f) for f in feeds]
        bad = batcher.submit({"x": np.zeros((1, 5), np.float32)})  # a bad feed fails alone
        outputs = [f.result(30) for f in futures]
        with pytest.raises(ShapeError):
            bad.result(30)
        metrics = batcher.metrics()
    for feed, (y,) in zip(feeds, outputs):
        assert y.shape == (feed["x"].shape[0], 3)
        np.testing.assert_allclose(y, feed["x"] @ (np.arange(12, dtype=np.float32).reshape(4, 3) / 10) + 1,
                                   rtol=1e-5, atol=1e-6)
    assert max(metrics["batch_size_histogram"]) > 1 and max(calls) > 2  # one run really took several rows
    assert metrics["batching"] == "concatenate"


def test_a_pool_behind_the_batcher(tmp_path):
    path = _dynamic_batch_onnx(tmp_path / "dyn.onnx")
    feeds = [{"x": np.full((1, 4), i, np.float32)} for i in range(20)]
    with SessionPool(path, size=2) as pool:
        with Batcher(session_batch_runner(pool), max_batch_size=4, max_queue_delay_ms=5, workers=2) as batcher:
            outputs = [f.result(30) for f in [batcher.submit(f) for f in feeds]]
    single = device_runtime.load(path)
    for feed, out in zip(feeds, outputs):
        np.testing.assert_allclose(out[0], single.run(None, feed)[0], rtol=1e-6)


def test_a_fixed_batch_concatenates_only_when_rows_match(tmp_path):
    session = device_runtime.load(_dynamic_batch_onnx(tmp_path / "fixed4.onnx", batch=4))
    runner = session_batch_runner(session)
    assert runner.batching == "concatenate" and "fixed at 4" in runner.note
    feeds = [{"x": np.full((1, 4), i, np.float32)} for i in range(4)]
    outputs = runner(feeds)
    assert [o[0].shape for o in outputs] == [(1, 3)] * 4
    partial = runner(feeds[:3])  # 3 rows do not fill the fixed batch of 4: each runs alone, and is refused
    assert all(isinstance(o, ShapeError) for o in partial)
