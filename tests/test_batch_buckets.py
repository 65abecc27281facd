"""Batch buckets (`export --batch-sizes`): a vision model at several batch sizes in one .pte (a method per size)
or .tflite (a signature per size), each verified against PyTorch on distinct real images, and the session that
pads fewer rows to the smallest bucket that fits, so a `Batcher` runs real batches on formats with fixed shapes.

Tiny MobileViT-XXS at batch sizes 1, 2 and 4, fp32; one export (and one single-batch export, for the size
comparison) for the whole module."""
from __future__ import annotations

import numpy as np
import pytest

import device_runtime
from converters import parity
from converters.base import UnsupportedError
from device_runtime import BucketedSession, Batcher, session_batch_runner
from device_runtime.buckets import parse_batch_sizes
from device_runtime.errors import UsageError
from models_zoo import get_model

MODEL = "mobilevit_xxs"
SIZES = [1, 2, 4]
FORMATS = ["pte", "tflite"]


@pytest.fixture(scope="module")
def exported(cached_export, export_tiny):
    """({format: multi-batch ExportResult}, {format: single-batch ExportResult}), one build each; the single-batch
    exports are the tiny fp32 ones other modules use too."""
    multi = cached_export(MODEL, FORMATS, "fp32", batch_sizes=",".join(map(str, SIZES)))
    return {r.format: r for r in multi}, {fmt: export_tiny(MODEL, fmt, "fp32") for fmt in FORMATS}


@pytest.fixture(scope="module")
def eager():
    """(the spec, its PyTorch module: the same seeded weights the export used, the real verification images)."""
    spec = get_model(MODEL, tiny=True)
    return spec, spec.build(), [f["pixel_values"] for f in spec.sample_inputs()]


def _torch(module, batch: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return module(torch.from_numpy(batch)).numpy()


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_batch_size_matches_pytorch_on_distinct_real_images(exported, eager, fmt):
    result = exported[0][fmt]
    assert result.passed, result.parity["failures"]
    assert result.path.parent.name == "fp32-batch1-2-4"
    assert result.entry.details["batch_sizes"] == SIZES
    assert sorted(result.parity["batch_sizes"], key=int) == ["1", "2", "4"]
    spec, module, images = eager
    tolerance = spec.tolerance("fp32")
    session = device_runtime.load(result.path)
    for size in SIZES:
        batch = np.concatenate(images[:size])  # distinct photos, not one repeated
        reference = _torch(module, batch)
        parity.check_spread([[reference]], f"batch {size}")  # non-degenerate outputs
        if size > 1:
            assert np.abs(reference[0] - reference[1]).max() > 1e-3  # the rows really are different images
        (got,) = session.run(None, {"pixel_values": batch})
        figures = parity.compare([[reference]], [[got]])
        assert 0 < figures["max_abs_err"] <= parity.error_bound(tolerance, figures), (size, figures)


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_batch_size_is_an_entry_point_of_one_file(exported, fmt):
    session = device_runtime.load(exported[0][fmt].path)
    assert isinstance(session, BucketedSession) and session.batch_sizes == SIZES and session.lengths == []
    assert session.get_inputs()[0].shape[0] is None and session.get_outputs()[0].shape[0] is None
    entries = {str(n): f"batch{n}" for n in SIZES}
    assert session.info["entry_points"] == entries
    if fmt == "pte":  # `forward` is batch 1, so tools that run `forward` still work
        assert {"forward", *entries.values()} <= set(session.info["methods"])
        plain = device_runtime.load(exported[0][fmt].path, method="forward")
        assert plain.get_inputs()[0].shape[0] == 1


@pytest.mark.parametrize("fmt", FORMATS)
def test_rows_are_padded_to_the_smallest_bucket_and_cut_back(exported, eager, fmt, monkeypatch):
    _, _, images = eager
    session = device_runtime.load(exported[0][fmt].path)
    assert [session.route(n) for n in (1, 2, 3, 4)] == [1, 2, 4, 4]
    assert session.buckets_for(6) == [4, 2] and session.buckets_for(9) == [4, 4, 1]
    alone = [session.run(None, {"pixel_values": image})[0] for image in images]
    ran = []
    for size, inner in session._sessions.items():  # which bucket runs, with how many rows
        monkeypatch.setattr(inner, "_execute", lambda arrays, size=size, run=inner._execute:
                            ran.append((size, arrays[0].shape[0])) or run(arrays))
    (three,) = session.run(None, {"pixel_values": np.concatenate(images[:3])})
    assert ran == [(4, 4)]  # 3 rows padded to the batch-4 entry point
    assert three.shape == (3, alone[0].shape[1])
    np.testing.assert_allclose(three, np.concatenate(alone[:3]), rtol=0, atol=1e-5)
    # Beyond the largest bucket: chunks of it (4 + 2), the same rows back in order.
    (six,) = session.run(None, {"pixel_values": np.concatenate(images[:6])})
    assert ran[1:] == [(4, 4), (2, 2)]
    np.testing.assert_allclose(six, np.concatenate(alone[:6]), rtol=0, atol=1e-5)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_batcher_over_the_session_runs_real_batches(exported, eager, fmt):
    _, _, images = eager
    session = device_runtime.load(exported[0][fmt].path)
    runner = session_batch_runner(session)
    assert runner.batching == "concatenate", runner.note
    serial = [session.run(None, {"pixel_values": image})[0] for image in images]
    with Batcher(runner, max_batch_size=4, max_queue_delay_ms=200, max_queue_size=16) as batcher:
        futures = [batcher.submit({"pixel_values": image}) for image in images]
        results = [f.result(timeout=60)[0] for f in futures]
        metrics = batcher.metrics()
    for got, want in zip(results, serial):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert max(metrics["batch_size_histogram"]) > 1, metrics["batch_size_histogram"]


def _pte_sections(path) -> tuple[int, int]:
    """(weight bytes: the named data every method refers to, bytes of one method's XNNPACK graph)."""
    from pathlib import Path

    from executorch.exir._serialize._program import deserialize_pte_binary

    pte = deserialize_pte_binary(Path(path).read_bytes())
    return (sum(len(b) for b in pte.named_data.buffers),
            max(len(d.data) for d in pte.program.backend_delegate_data))


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_weights_are_stored_once(exported, fmt):
    multi, single = exported[0][fmt], exported[1][fmt]
    if fmt == "tflite":
        assert multi.size_bytes <= 1.15 * single.size_bytes, (multi.size_bytes, single.size_bytes)
        return
    # ExecuTorch keeps the weights once, in named data all methods share; what each further method adds is its
    # own XNNPACK graph (no constants in it). That graph is 33 KB here against 434 KB of tiny weights (the file is
    # 1.16x the single-batch one); against a full-size model's weights it is small (README: 1.06x at 1,2,4,8).
    weights, graph = _pte_sections(single.path)
    assert _pte_sections(multi.path)[0] == weights
    extra = multi.size_bytes - single.size_bytes
    # ... and each method its execution plan (tensor list, memory plan: ~3 KB here)
    assert extra <= (len(SIZES) - 1) * graph + len(SIZES) * 4096, (multi.size_bytes, single.size_bytes, graph)
    assert multi.size_bytes - (len(SIZES) - 1) * graph <= 1.15 * single.size_bytes


def test_refused_for_the_bert_family_and_with_sequence_options(tmp_path):
    from sdk import export

    with pytest.raises(UsageError, match="packing"):
        export("tinybert_4l_312d", ["pte"], "fp32", tmp_path, tiny=True, batch_sizes="1,2")
    for extra in ({"seq_lens": "8,16"}, {"pack": "16x2"}, {"seq_len": 16}):
        with pytest.raises(UsageError, match="does not combine"):
            export(MODEL, ["pte"], "fp32", tmp_path, tiny=True, batch_sizes="1,2", **extra)
    with pytest.raises(UnsupportedError, match="not supported for coreml"):
        export(MODEL, ["pte", "coreml"], "fp32", tmp_path, tiny=True, batch_sizes="1,2")
    with pytest.raises(UsageError, match="at least 1"):
        parse_batch_sizes("0,2")
    assert parse_batch_sizes("4, 1,2,2") == [1, 2, 4]
    assert not list(tmp_path.iterdir())  # refused before anything was built or written
