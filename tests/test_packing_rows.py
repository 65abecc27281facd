"""Packed rows in several lengths (`--pack 16x2,32x4`): one artifact, an entry point per row length, the weights
stored once; the cost model and the scheduler that pick, for what is queued, the rows with the lowest predicted
time per sentence (or a wait); and the typed refusals. Each sentence's output read back from packed rows of any
length equals the sentence run alone (fp32 against unpadded eager PyTorch, real verification sentences).

The scheduler's choices are tested on fake cost tables (pure functions); one tiny .tflite export (cached for
every run of the same sources by conftest's cached_export; litert-torch converts the two row lengths in about
half the time ExecuTorch takes) covers the export, the runtime and the Batcher; the .pte is a slow test."""
from __future__ import annotations

import random
import threading
import time

import numpy as np
import pytest

from device_runtime.errors import UsageError
from device_runtime.scheduling import CostTable, EntryCost, cheapest_rows, choose
from sdk.export.shapes import PackedRow, PackedRows, parse_pack

ROWS = "16x2,32x4"
MS = 1e-3
# A fake table shaped like a real one: a fixed cost per run plus a cost per token.
TABLE = CostTable((EntryCost("packed", 32, 4, 1.0 * MS), EntryCost("packed", 64, 8, 1.8 * MS),
                   EntryCost("packed", 128, 16, 3.5 * MS)))


# -- parsing ------------------------------------------------------------------------------------------------------
def test_pack_parses_several_row_lengths_and_keeps_one_row_as_before():
    assert parse_pack("128x16") == PackedRow(128, 16) and parse_pack("64") == PackedRow(64, 8)
    rows = parse_pack("128x16, 32x4,64x8")
    assert isinstance(rows, PackedRows) and rows.sizes == (32, 64, 128) and rows.text == "32x4,64x8,128x16"
    assert rows.segments(64) == 8 and rows.largest == PackedRow(128, 16)


@pytest.mark.parametrize("text,message", [
    ("", "--pack takes CAPACITYxSEGMENTS"), ("32x4,", "--pack takes CAPACITYxSEGMENTS"),
    ("32x", "no segment count"), ("x4", "--pack takes CAPACITYxSEGMENTS"), ("wide", "--pack takes CAPACITYxSEGMENTS"),
    ("32x4,32x8", "row length 32 twice"), ("32x0", "holds 1..16 sentences"), ("32x17", "holds 1..16 sentences"),
    ("1x1,32x4", "holds 1..1 sentences")])
def test_bad_pack_strings_are_refused_naming_the_problem(text, message):
    with pytest.raises(UsageError, match=message):
        parse_pack(text)


def test_packed_rows_are_refused_where_the_model_cannot_take_them(tmp_path):
    from sdk.export.plan import plan_work

    with pytest.raises(UsageError, match="no packed entry point"):
        plan_work("mobilevit_xxs", parse_pack(ROWS), ["pte"], "fp32", tmp_path, {}, tiny=True)
    with pytest.raises(UsageError, match="a packed row holds 2..512 tokens"):
        plan_work("tinybert_4l_312d", parse_pack("32x4,1024x16"), ["pte"], "fp32", tmp_path, {}, tiny=True)
    _, items = plan_work("tinybert_4l_312d", parse_pack(ROWS), ["pte", "onnx"], "fp32", tmp_path, {}, tiny=True)
    # .pte holds both row lengths in one artifact; ONNX (no multi-row packed export) one artifact per row length
    assert [(i.plan.converter.format, i.plan.folder.name, i.buckets is not None) for i in items] == [
        ("pte", "fp32-packed16x2-32x4", True), ("onnx", "fp32-packed16x2", False), ("onnx", "fp32-packed32x4", False)]


# -- the cost model and the scheduler (fake costs) ----------------------------------------------------------------
def _valid(plan, lengths):
    members = sorted(i for row in plan.rows for i in row.members)
    assert members == list(range(len(lengths)))  # every sentence once
    for row in plan.rows:
        assert sum(lengths[i] for i in row.members) <= row.entry.capacity and len(row.members) <= row.entry.segments


def test_cheapest_rows_takes_the_shortest_rows_that_hold_the_queue():
    plan = cheapest_rows([10, 12], TABLE)
    assert [(r.entry.capacity, len(r.members)) for r in plan.rows] == [(32, 2)] and plan.seconds == 1.0 * MS
    # three sentences of 20: three rows of 32 (3 ms) cost more than one row of 64 (1.8 ms)
    plan = cheapest_rows([20, 20, 20], TABLE)
    assert [r.entry.capacity for r in plan.rows] == [64] and plan.per_sentence == pytest.approx(0.6 * MS)
    # 100 tokens: one row of 128 (3.5 ms) beats 64 + 64 (3.6 ms)
    assert [r.entry.capacity for r in cheapest_rows([40, 30, 20, 10], TABLE).rows] == [128]
    # a cheap one-sentence bucket wins for a lone short sentence; packing wins once several share a row
    mixed = CostTable(TABLE.entries + (EntryCost("single", 16, 1, 0.4 * MS),))
    assert [(r.entry.kind, r.entry.capacity) for r in cheapest_rows([9], mixed).rows] == [("single", 16)]
    assert [r.entry.kind for r in cheapest_rows([9, 9, 9], mixed).rows] == ["packed"]
    rng = random.Random(0)
    for _ in range(200):  # any queue: a valid plan, never dearer than rows of 128 alone (first-fit decreasing)
        lengths = [rng.randint(2, 128) for _ in range(rng.randint(1, 40))]
        plan = cheapest_rows(lengths, TABLE)
        _valid(plan, lengths)
        from device_runtime.packing import first_fit_decreasing

        assert plan.seconds <= len(first_fit_decreasing(lengths, 128, 16)) * 3.5 * MS + 1e-12
    with pytest.raises(UsageError, match="fits no entry point"):
        cheapest_rows([129], TABLE)
    with pytest.raises(UsageError, match="cost table"):
        CostTable((EntryCost("packed", 32, 4, 0.0),))


def test_the_scheduler_waits_only_when_a_fuller_row_is_predicted_cheaper_per_sentence():
    # one sentence queued, arrivals every 0.05 ms: waiting for more to share the row pays
    wait = choose([20], TABLE, waited_s=0.0, max_delay_s=5 * MS, gap_s=0.05 * MS, since_last_s=0.0, max_batch=32)
    assert wait.take == 0 and 0 < wait.wait_s <= 5 * MS and "wait" in wait.reason
    # arrivals 10 ms apart: the wait costs more than the row; run it now
    now = choose([20], TABLE, waited_s=0.0, max_delay_s=5 * MS, gap_s=10 * MS, max_batch=32)
    assert now.take == 1 and now.plan.rows[0].entry.capacity == 32
    # a burst that has ended (nothing for 4 ms) is not waited for, whatever the median gap
    assert choose([20], TABLE, max_delay_s=5 * MS, gap_s=0.05 * MS, since_last_s=4 * MS, max_batch=32).take == 1
    # past the delay, no arrival history, or a full batch: run everything queued
    assert choose([20], TABLE, waited_s=5 * MS, max_delay_s=5 * MS, gap_s=0.01 * MS, max_batch=32).take == 1
    assert choose([20, 20], TABLE, max_delay_s=5 * MS, gap_s=None, max_batch=32).take == 2
    assert choose([8] * 4, TABLE, max_delay_s=5 * MS, gap_s=0.01 * MS, max_batch=4).take == 4  # no room to wait
    # a closed loop whose every sender is queued already: nobody else can come, so no wait
    assert choose([20], TABLE, max_delay_s=5 * MS, gap_s=0.05 * MS, max_batch=32, expected_more=0).take == 1
    # the tail that would open a dear row leads the next batch instead: 4 x 30 fill a 128 row, a fifth needs
    # another row (one of 32: 2 ms more for one sentence, against 3.5 ms / 4 each)
    dear = CostTable((EntryCost("packed", 32, 4, 2.0 * MS), EntryCost("packed", 128, 16, 3.5 * MS)))
    tail = choose([30, 30, 30, 30, 30], dear, max_delay_s=5 * MS, gap_s=None, max_batch=32)
    assert tail.take == 4 and [r.entry.capacity for r in tail.plan.rows] == [128] and "lead" in tail.reason
    assert choose([30] * 5, dear, waited_s=5 * MS, max_delay_s=5 * MS, gap_s=None).take == 5  # overdue: all
    # within 3% per sentence, the whole queue goes (1 ms for the fifth: 0.9 against 0.875 ms a sentence)
    assert choose([30] * 5, TABLE, max_delay_s=5 * MS, gap_s=None, max_batch=32).take == 5


def test_the_batcher_asks_a_scheduling_run_batch_and_still_honours_the_delay():
    from device_runtime import Batcher

    asked = []

    def run_batch(feeds):
        return [f * 10 for f in feeds]

    def schedule(sizes, **state):
        asked.append((list(sizes), state["max_batch"]))
        return (len(sizes), 0.0) if len(sizes) >= 3 else (0, 0.05)  # wait for three

    run_batch.size_of, run_batch.schedule = (lambda feed: feed + 1), schedule
    with Batcher(run_batch, max_batch_size=8, max_queue_delay_ms=2000) as batcher:
        futures = [batcher.submit(k) for k in range(3)]
        assert [f.result(timeout=10) for f in futures] == [0, 10, 20]
        assert batcher.metrics()["batch_size_histogram"] == {3: 1}
    assert asked[-1] == ([1, 2, 3], 8)  # sizes from size_of, oldest first
    run_batch.schedule = lambda sizes, **state: (0, 1.0)  # always "wait": the delay still ends it
    with Batcher(run_batch, max_batch_size=8, max_queue_delay_ms=30) as batcher:
        start = time.perf_counter()
        assert batcher.submit(4).result(timeout=10) == 40
        assert time.perf_counter() - start < 2.0


# -- one artifact, several row lengths (tiny .pte fp32) ------------------------------------------------------------
@pytest.fixture(scope="module")
def rows_tflite(cached_export):
    (result,) = cached_export("tinybert_4l_312d", ["tflite"], "fp32", pack=ROWS)
    return result


def _alone(feeds):
    import torch

    from models_zoo import get_model

    spec = get_model("tinybert_4l_312d", tiny=True)
    module = spec.build()
    with torch.no_grad():
        return [module(*(torch.from_numpy(f[n][:, :int(f["attention_mask"].sum())]) for n in spec.input_names)).numpy()
                for f in feeds]


def test_one_artifact_holds_every_row_length_each_verified_packed_and_alone(rows_tflite):
    import device_runtime
    from sdk.serve.bench import configuration_of

    assert rows_tflite.passed and rows_tflite.path.parent.name == "fp32-packed16x2-32x4"
    assert rows_tflite.details["buckets"]["shared"]["buffers_shared"] >= 1  # weights stored once
    buckets = rows_tflite.details["buckets"]
    assert buckets["axis"] == "packed" and buckets["row_lengths"] == [16, 32]
    assert buckets["rows"] == {"16": 2, "32": 4} and buckets["entry_points"] == {"16": "pack16", "32": "pack32"}
    for length in ("16", "32"):
        alone = rows_tflite.parity["packed_rows"][length]["alone"]
        assert alone["max_abs_err"] <= 1e-4 and alone["cosine"] >= 0.9999
    assert configuration_of(rows_tflite.details, {}) == "rows"  # serve-bench's "scheduled" configuration
    session = device_runtime.load(rows_tflite.path, adapt_io=True)  # int64 ids, int32 model
    assert session.row_shapes == [(16, 2), (32, 4)]
    assert set(session.info["entry_points"].values()) == {"pack16", "pack32"}


def test_sentences_planned_across_row_lengths_equal_each_sentence_alone(rows_tflite):
    import device_runtime
    from device_runtime import PackedRunner
    from device_runtime.errors import ValueRangeError
    from models_zoo import get_model

    feeds = get_model("tinybert_4l_312d", tiny=True).sample_inputs()
    session = device_runtime.load(rows_tflite.path, adapt_io=True)  # int64 ids, int32 model
    # fake costs making rows of 16 cheap: short sentences go there, the others to rows of 32
    table = CostTable((EntryCost("packed", 16, 2, 0.2 * MS), EntryCost("packed", 32, 4, 1.0 * MS)))
    runner = PackedRunner(session, table)
    lengths = [int(f["attention_mask"].sum()) for f in feeds]
    used = {capacity for _, capacity, _ in runner.plan(lengths)}
    assert used == {16, 32}, lengths
    got = [out[0] for out in runner.run(feeds)]
    expected = _alone(feeds)
    worst = max(float(np.abs(e - g).max()) for e, g in zip(expected, got))
    assert worst <= 1e-4 and np.std([g[0, 0] for g in got]) > 1e-3, worst  # equal, and not a constant readout
    measured = PackedRunner(session)  # no table given: each entry point measured at load
    assert [(e.capacity, e.segments) for e in measured.costs.entries] == [(16, 2), (32, 4)]
    assert all(e.seconds > 0 for e in measured.costs.entries)
    bad = dict(feeds[0], input_ids=np.full_like(feeds[0]["input_ids"], 10**9))
    with pytest.raises(ValueRangeError, match="input_ids"):  # a bad id is still a typed error, before the runtime
        runner.run([bad])


def test_a_scheduled_batcher_serves_threads_with_the_same_outputs(rows_tflite):
    import device_runtime
    from device_runtime import Batcher, PackedRunner, packed_batch_runner
    from models_zoo import get_model

    feeds = get_model("tinybert_4l_312d", tiny=True).sample_inputs() * 2
    session = device_runtime.load(rows_tflite.path, adapt_io=True)  # int64 ids, int32 model
    direct = [o[0] for o in PackedRunner(session, TABLE_TINY).run(feeds)]
    run_batch = packed_batch_runner(session, TABLE_TINY)
    assert callable(run_batch.schedule) and "scheduled by cost" in run_batch.note
    results = [None] * len(feeds)
    with Batcher(run_batch, max_batch_size=8, max_queue_delay_ms=20) as batcher:
        def call(k):
            results[k] = batcher.submit(feeds[k]).result(timeout=60)[0]

        threads = [threading.Thread(target=call, args=(k,)) for k in range(len(feeds))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        histogram = batcher.metrics()["batch_size_histogram"]
    for want, got in zip(direct, results):
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert sum(k * v for k, v in histogram.items()) == len(feeds)


TABLE_TINY = CostTable((EntryCost("packed", 16, 2, 0.5 * MS), EntryCost("packed", 32, 4, 1.0 * MS)))


@pytest.mark.slow
def test_the_pte_holds_a_method_per_row_length_equal_to_each_sentence_alone(cached_export):
    import device_runtime
    from device_runtime import PackedRunner
    from models_zoo import get_model

    (result,) = cached_export("tinybert_4l_312d", ["pte"], "fp32", pack=ROWS)
    assert result.passed and result.details["buckets"]["entry_points"] == {"16": "pack16", "32": "pack32"}
    session = device_runtime.load(result.path)
    assert session.row_shapes == [(16, 2), (32, 4)]
    feeds = get_model("tinybert_4l_312d", tiny=True).sample_inputs()
    got = [out[0] for out in PackedRunner(session, TABLE_TINY).run(feeds)]
    assert max(float(np.abs(e - g).max()) for e, g in zip(_alone(feeds), got)) <= 1e-4


def test_a_stream_folder_gives_its_docstrings_or_its_text_files_sentences(tmp_path):
    from sdk.serve.bench import folder_sentences, stream_sentences

    code = tmp_path / "code"
    code.mkdir()
    (code / "mod.py").write_text('"""The module reads a stream of sentences from a folder of files.\n\n'
                                 '    >>> not_prose()\n"""\n\ndef f():\n    """Return the answer to the question asked."""\n')
    sentences, source = folder_sentences(code)
    assert sentences == ["The module reads a stream of sentences from a folder of files.",
                         "Return the answer to the question asked."] and "docstrings" in source
    text = tmp_path / "text"
    text.mkdir()
    (text / "LICENSE").write_text("You may copy and distribute the program in any medium. Keep this notice intact "
                                  "in every copy you give away.\n")
    assert stream_sentences(text, 3)[0] == ["You may copy and distribute the program in any medium.",
                                            "Keep this notice intact in every copy you give away.",
                                            "You may copy and distribute the program in any medium."]
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no prose sentences"):
        folder_sentences(tmp_path / "empty")
