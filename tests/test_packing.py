"""Sequence packing: first-fit decreasing into rows, the packed entry point (block-diagonal attention, positions
restarting per sentence, per-sentence readout), and the equality that makes it safe: each sentence's output from
a packed row equals running that sentence alone.

fp32 is judged against unpadded eager PyTorch per sentence (cosine >= 0.9999 and the model's atol); int8 against
the same artifact run unpacked (one sentence per row). Real verification sentences and pairs, tiny models.
Serve-bench's fixed and bucketed configurations reuse exports other modules make too (`export_tiny`, and
`cached_export`'s multi-length export shared with tests/test_buckets.py)."""
from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest

import device_runtime
from device_runtime import Batcher, PackedRunner, packed_batch_runner
from device_runtime.errors import UsageError
from device_runtime.packing import first_fit_decreasing, pack, packing_report, padding_fraction, unpack
from models_zoo import get_model

CAPACITY, SLOTS = 64, 6


def test_first_fit_decreasing_respects_capacity_and_slots_and_places_every_sequence():
    lengths = [30, 9, 17, 25, 5, 5, 12, 40, 3, 8]
    rows = first_fit_decreasing(lengths, 64, 4)
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in r) <= 64 and len(r) <= 4 for r in rows)
    assert len(rows) == 3  # 154 tokens in rows of 64: 3 rows is the lower bound, and FFD reaches it here
    assert len(first_fit_decreasing(lengths, 64, 3)) == 4  # at most 3 per row: 10 sequences need 4
    assert first_fit_decreasing([6, 5, 5, 4], 10, 4) == [[0, 3], [1, 2]]  # longest first, first row that fits
    assert padding_fraction([6, 5, 5, 4], 2, 10) == 0.0
    with pytest.raises(UsageError, match="more than a packed row holds"):
        first_fit_decreasing([65], 64, 4)


def test_packing_report_gives_padding_before_and_after():
    report = packing_report([10, 20, 30, 12], capacity=64, max_segments=8, fixed_length=128)
    assert report["padding_fraction_fixed"] == pytest.approx(1 - 72 / 512)
    assert report["rows"] == 2 and report["padding_fraction_packed"] == pytest.approx(1 - 72 / 128)


def test_pack_builds_block_rows_with_restarting_positions_and_unpack_restores_order():
    spec = get_model("tinybert_4l_312d", tiny=True)
    feeds = spec.sample_inputs()
    rows = pack(feeds, CAPACITY, SLOTS)
    for row in rows:
        seg, pos = row.arrays["segment_ids"][0], row.arrays["position_ids"][0]
        for slot, index in enumerate(row.members, start=1):
            real = int(feeds[index]["attention_mask"].sum())
            where = np.flatnonzero(seg == slot)
            assert len(where) == real and np.array_equal(pos[where], np.arange(real))
            assert np.array_equal(row.arrays["input_ids"][0, where], feeds[index]["input_ids"][0, :real])
            # sentence pairs keep their token types
            assert np.array_equal(row.arrays["token_type_ids"][0, where], feeds[index]["token_type_ids"][0, :real])
    outputs = [np.arange(SLOTS)[None, :, None] + 100 * r for r in range(len(rows))]
    back = unpack(rows, outputs, len(feeds))
    assert [int(b[0, 0]) for b in back] == [100 * r + s for i in range(len(feeds))
                                            for r, row in enumerate(rows) for s, m in enumerate(row.members) if m == i]


@pytest.fixture(scope="module")
def packed(tmp_path_factory, export_tiny, cached_export):
    from sdk import export

    out = tmp_path_factory.mktemp("packed")
    results = export("tinybert_4l_312d", ["pte", "onnx"], "fp32", out, tiny=True, pack=f"{CAPACITY}x{SLOTS}")
    results += export("minilm_l6_h384", ["pte"], "fp32", out, tiny=True, pack=f"{CAPACITY}x{SLOTS}")
    results += export("tinybert_4l_312d", ["pte"], "int8", out, tiny=True, pack=f"{CAPACITY}x{SLOTS}")
    by_key = {(r.model, r.format, str(r.precision)): r for r in results}
    # serve-bench's other configurations of the packed fp32 .pte: fixed (the tiny variant's 32; test_input_safety
    # and test_profile export it too) and bucketed (tests/test_buckets.py's export); see _serving_tree
    by_key["fixed"] = export_tiny("tinybert_4l_312d", "pte", "fp32")
    by_key["bucketed"] = next(r for r in cached_export("tinybert_4l_312d", ["pte", "tflite", "onnx"], "fp32",
                                                        seq_lens="16,32") if r.format == "pte")
    return by_key


def _serving_tree(root, results) -> dict:
    """Each result's artifact and its folder's report.json copied into root/<model>/<folder>/, side by side as one
    `pocketformer export` run writes them (serve-bench finds a model's configurations there); {config: path}."""
    paths = {}
    for config, result in results.items():
        folder = root / result.path.parent.parent.name / result.path.parent.name
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy2(result.path.parent / "report.json", folder / "report.json")
        shutil.copy2(result.path, folder / result.path.name)
        paths[config] = folder / result.path.name
    return paths


def _alone(model: str, feeds):
    """Eager PyTorch on each sentence alone, unpadded."""
    import torch

    spec = get_model(model, tiny=True)
    module = spec.build()
    with torch.no_grad():
        return [module(*(torch.from_numpy(f[n][:, :int(f["attention_mask"].sum())]) for n in spec.input_names)).numpy()
                for f in feeds]


def _agreement(expected, got):
    """(the largest abs error over every sentence, the lowest cosine of any one sentence), by converters.parity."""
    from converters.parity import compare

    worst = compare([[e] for e in expected], [[g] for g in got])["max_abs_err"]
    cosine = min(compare([[e]], [[g]])["cosine"] for e, g in zip(expected, got))
    return worst, cosine


@pytest.mark.parametrize("model,fmt", [("tinybert_4l_312d", "pte"), ("tinybert_4l_312d", "onnx"),
                                       ("minilm_l6_h384", "pte")])
def test_fp32_packed_outputs_equal_each_sentence_run_alone(packed, model, fmt):
    result = packed[(f"{model}-tiny", fmt, "fp32")]
    assert result.passed and result.path.parent.name == f"fp32-packed{CAPACITY}x{SLOTS}"
    spec = get_model(model, tiny=True)
    feeds = spec.sample_inputs()
    runner = PackedRunner(device_runtime.load(result.path))
    got = [out[0] for out in runner.run(feeds)]
    worst, cosine = _agreement(_alone(model, feeds), got)
    assert worst <= spec.tolerance("fp32").atol and cosine >= 0.9999, (worst, cosine)
    assert np.std([g[0, 0] for g in got]) > 1e-3  # the sentences differ: not a constant readout
    assert runner.padding_fraction < 0.5  # 12 sentences of 9-30 tokens in rows of 64


def test_int8_packed_outputs_equal_the_same_artifact_run_unpacked(packed):
    result = packed[("tinybert_4l_312d-tiny", "pte", "int8-dynamic")]
    spec = get_model("tinybert_4l_312d", tiny=True)
    feeds = spec.sample_inputs()
    session = device_runtime.load(result.path)
    runner = PackedRunner(session)
    packed_out = [o[0] for o in runner.run(feeds)]
    alone_rows = pack(feeds, CAPACITY, 1)
    alone = unpack(alone_rows, [session.run(None, r.arrays)[0] for r in alone_rows], len(feeds))
    worst, cosine = _agreement(alone, packed_out)
    tol = spec.tolerance("int8")
    scale = max(float(np.abs(a).max()) for a in alone)
    assert worst <= max(tol.atol, tol.rtol * scale) and cosine >= 0.999, (worst, cosine)


def test_batched_and_packed_requests_from_threads_match_direct_runs(packed):
    result = packed[("tinybert_4l_312d-tiny", "pte", "fp32")]
    spec = get_model("tinybert_4l_312d", tiny=True)
    feeds = spec.sample_inputs() * 3
    session = device_runtime.load(result.path)
    direct = [o[0] for o in PackedRunner(session).run(feeds)]
    results = [None] * len(feeds)
    with Batcher(packed_batch_runner(session), max_batch_size=8, max_queue_delay_ms=20) as batcher:
        def call(k):
            results[k] = batcher.submit(feeds[k]).result(timeout=60)[0]

        threads = [threading.Thread(target=call, args=(k,)) for k in range(len(feeds))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        metrics = batcher.metrics()
    for want, got in zip(direct, results):
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert max(int(k) for k in metrics["batch_size_histogram"]) > 1  # requests were really packed together


def test_a_sentence_longer_than_a_row_fails_alone_and_a_non_packed_artifact_is_refused(packed):
    result = packed[("tinybert_4l_312d-tiny", "pte", "fp32")]
    session = device_runtime.load(result.path)
    run_batch = packed_batch_runner(session)
    short = get_model("tinybert_4l_312d", tiny=True).sample_inputs()[0]
    ids = np.full((1, CAPACITY + 1), 1000, dtype=np.int64)
    long = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    out = run_batch([short, long])
    assert isinstance(out[1], UsageError) and "does not fit a packed row" in str(out[1])
    assert isinstance(out[0], list)
    unpacked = device_runtime.Session("model.onnx")
    unpacked._inputs = [device_runtime.TensorInfo(n, (1, 16), np.dtype(np.int64)) for n in spec_names()]
    with pytest.raises(UsageError, match="not a packed entry point"):
        PackedRunner(unpacked)


def spec_names():
    return get_model("tinybert_4l_312d", tiny=True).input_names


def test_serve_bench_replays_a_real_stream_against_the_four_configurations(packed, tmp_path, capsys):
    """Closed loop on the standard library's docstring sentences; every configuration answers every sentence,
    and packing computes less padding than the fixed length does."""
    from sdk.cli.app import main

    report = tmp_path / "serve.json"
    tree = _serving_tree(tmp_path / "out", {k: packed[k] for k in ("fixed", "bucketed")} |
                         {"packed": packed[("tinybert_4l_312d-tiny", "pte", "fp32")]})
    assert main(["serve-bench", str(tree["fixed"]), "--count", "48", "--concurrency", "4", "--threads", "2",
                 "--json", str(report), "--quiet"]) == 0
    out = capsys.readouterr().out
    import json

    document = json.loads(report.read_text())
    rows = {r["config"]: r for r in document["results"]}
    assert set(rows) == {"fixed", "bucketed", "packed", "packed+batched"} and not document["not_exported"]
    assert all(r["completed"] == 48 and r["rejected"] == 0 and r["failed"] == 0 for r in rows.values())
    assert "docstrings of the Python standard library" in document["stream"]
    # docstring sentences run ~10-50 tokens: most of a 32-token row is not padding, yet less so than packed
    assert rows["packed+batched"]["padding_fraction"] < rows["fixed"]["padding_fraction"]
    assert rows["bucketed"]["padding_fraction"] < rows["fixed"]["padding_fraction"]
    assert max(int(k) for k in rows["packed+batched"]["batch_size_histogram"]) > 1
    assert "x fixed" in out and "packed+batched" in out


def test_serve_bench_refuses_a_missing_or_empty_stream(packed, tmp_path):
    from sdk.serve.bench import serve_bench

    with pytest.raises(UsageError, match="no such stream file"):
        serve_bench(packed["fixed"].path, stream=tmp_path / "nope.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(UsageError, match="holds no sentences"):
        serve_bench(packed["fixed"].path, stream=empty)


def test_serve_bench_finds_configurations_by_their_manifest_entries(tmp_path):
    """Buckets in an entry's details, or the packed entry point's inputs, say what an artifact serves, whatever
    its folder is called; the folder key decides only where the manifest says neither."""
    from device_runtime.manifest import ArtifactEntry, record_artifact, sha256_of
    from sdk.serve.bench import discover

    spec = get_model("tinybert_4l_312d", tiny=True)
    text_model = {**spec.describe(), "labels": spec.labels()}
    packed_model = {**spec.with_packing(CAPACITY, SLOTS).describe(), "labels": spec.labels()}

    def artifact(folder, name="model.pte", model=text_model, details=None, fmt="pte", requested="fp32"):
        path = tmp_path / "m" / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"stand-in {folder}/{name}".encode())
        record_artifact(path.parent, model, ArtifactEntry(
            file=name, format=fmt, precision=requested, requested_precision=requested, sha256=sha256_of(path),
            size_bytes=path.stat().st_size, details=details or {}))
        return path

    fixed = artifact("fp32")
    artifact("fp32-seq64")  # another single length: the registered one wins
    bucketed = artifact("fp32-mine", details={"buckets": {"lengths": [16, 32], "entry_points": {}}})
    packed_path = artifact("fp32-rows", model=packed_model)
    artifact("fp32-batches", details={"buckets": {"axis": "batch", "batch_sizes": [1, 2]}})  # not sequences
    artifact("fp32-seqs8-16", name="model.onnx", fmt="onnx",  # another format: not a configuration of a .pte
             details={"buckets": {"lengths": [8, 16], "entry_points": "one dynamic sequence axis"}})
    artifact("int8-seqs8-16", requested="int8", details={"buckets": {"lengths": [8, 16], "entry_points": {}}})
    found, model = discover(fixed)
    assert found == {"fixed": fixed, "bucketed": bucketed, "packed": packed_path, "packed+batched": packed_path}
    assert model["name"] == spec.name
    # a manifest that says nothing of buckets (written before they were recorded): the folder key still finds it
    old = artifact("fp32-seqs16-32")
    (bucketed.parent / "report.json").unlink()
    assert discover(fixed)[0]["bucketed"] == old
