"""Sequence-length buckets (`export --seq-lens`): one artifact per format holding several lengths, verified at
each, and a `BucketedSession` that routes each request to the smallest length that fits.

Tiny TinyBERT at lengths 16 and 32: the real verification sentences run 13 to 24 tokens, so unpadded they are
routed to both buckets; hand-made sentences are too, and some are longer than the largest one.
The export is tests/conftest.py's `cached_export`, shared with tests/test_packing.py (serve-bench's bucketed
configuration) across modules, xdist workers and runs of the same sources."""
from __future__ import annotations

import numpy as np
import pytest

import device_runtime
from device_runtime import BucketedSession, SequenceTooLongError
from device_runtime.buckets import parse_lengths
from device_runtime.errors import UsageError

BERT = "tinybert_4l_312d"
LENGTHS = "16,32"
FORMATS = ["pte", "tflite", "onnx"]


@pytest.fixture(scope="module")
def bucketed(cached_export):
    """{format: ExportResult} of one multi-length export of the three runnable formats (one build)."""
    return {r.format: r for r in cached_export(BERT, FORMATS, "fp32", seq_lens=LENGTHS)}


def _sentence(length: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A real-vocabulary id sequence of `length` tokens ([CLS] ... [SEP]), unpadded."""
    rng = np.random.default_rng(seed)
    ids = np.concatenate([[101], rng.integers(1000, 29000, length - 2), [102]]).astype(np.int64)[None]
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


@pytest.mark.parametrize("fmt", FORMATS)
def test_one_artifact_holds_every_length_and_each_is_verified(bucketed, fmt):
    result = bucketed[fmt]
    assert result.passed, result.parity["failures"]
    assert result.path.parent.name == "fp32-seqs16-32"
    assert sorted(result.parity["lengths"]) == ["16", "32"]
    for figures in result.parity["lengths"].values():
        assert 0 < figures["lowering"]["max_abs_err"] < 1e-4  # real outputs, compared, not skipped
    # Unpadded sentences (13 to 24 tokens) were each routed to the smallest bucket that fits, both buckets were
    # used, and they agree with PyTorch on the unpadded sentence.
    unpadded = result.parity["unpadded"]
    assert unpadded["routed_to"] == [16 if n <= 16 else 32 for n in unpadded["token_counts"]]
    assert sorted(set(unpadded["routed_to"])) == [16, 32]
    assert unpadded["max_abs_err"] < 1e-4 and unpadded["cosine"] > 0.9999
    assert result.entry.details["buckets"]["lengths"] == [16, 32]


@pytest.mark.parametrize("fmt", FORMATS)
def test_requests_route_to_the_smallest_bucket_and_padding_changes_nothing(bucketed, fmt):
    session = device_runtime.load(bucketed[fmt].path, adapt_io=True)
    assert isinstance(session, BucketedSession) and session.lengths == [16, 32]
    assert [session.route(n) for n in (3, 16, 17, 32)] == [16, 16, 32, 32]
    assert session.get_inputs()[0].shape[1] is None
    for length in (5, 16, 23, 32):
        feed = _sentence(length, seed=length)
        padded = {k: np.pad(v, [(0, 0), (0, 32 - length)]) for k, v in feed.items()}
        # the same sentence padded by hand to the largest bucket: same logits as routed to the small one
        np.testing.assert_allclose(session.run(None, feed)[0], session.run(None, padded)[0], atol=2e-5)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_request_longer_than_the_largest_bucket_is_refused_naming_it_unless_truncating(bucketed, fmt):
    session = device_runtime.load(bucketed[fmt].path, adapt_io=True)
    with pytest.raises(SequenceTooLongError, match=r"33 tokens is longer than the largest bucket .*32"):
        session.run(None, _sentence(33))
    truncating = device_runtime.load(bucketed[fmt].path, adapt_io=True, truncate=True)
    long = _sentence(40)
    expected = session.run(None, {k: v[:, :32] for k, v in long.items()})[0]
    np.testing.assert_allclose(truncating.run(None, long)[0], expected, atol=1e-6)


def test_an_entry_point_named_opens_just_that_length(bucketed):
    pte = device_runtime.load(bucketed["pte"].path, method="seq16")
    assert not isinstance(pte, BucketedSession) and pte.get_inputs()[0].shape == (1, 16)
    tfl = device_runtime.load(bucketed["tflite"].path, signature="seq32")
    assert not isinstance(tfl, BucketedSession) and tfl.get_inputs()[0].shape == (1, 32)


def test_the_weights_are_stored_once(bucketed):
    """Each multi-length file is about the size of one copy of the fp32 weights (not one per length)."""
    from models_zoo import get_model

    module = get_model(BERT, tiny=True).build()
    params = sum(p.numel() for p in module.parameters()) * 4
    for fmt in ("pte", "tflite"):
        ratio = bucketed[fmt].size_bytes / params
        assert 0.9 < ratio < 1.15, f"{fmt}: {bucketed[fmt].size_bytes} bytes for {params} bytes of weights"


def test_cli_run_tokenises_without_padding_for_a_bucketed_artifact(bucketed, capsys):
    from sdk.cli.app import main

    assert main(["run", str(bucketed["pte"].path), "--text", "A gripping film."]) == 0
    assert "logits" in capsys.readouterr().out


def test_bad_length_lists_are_usage_errors():
    assert parse_lengths("32,16, 16") == [16, 32]
    for bad in ("", "16,x", "1", "8,-4"):
        with pytest.raises(UsageError):
            parse_lengths(bad)
    from sdk import export

    with pytest.raises(UsageError, match="BERT family"):
        export("mobilevit_xxs", ["pte"], tiny=True, seq_lens="8,16", out_dir="/nonexistent")
