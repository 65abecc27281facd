"""The export plan: the shape keywords parsed once into one value, conflicts refused at the door, and the work
items each format gets (one artifact holding every size where it can, its own option where it takes the sizes
itself, one artifact per size otherwise). Planning only: nothing here converts, so it runs in seconds."""
from __future__ import annotations

import pytest

from converters.base import UnknownOptionError, UnsupportedError
from device_runtime.errors import UsageError
from sdk.export.plan import plan_work
from sdk.export.shapes import BatchSizes, Lengths, OneShape, PackedRow, parse_shapes

ASCEND = {"atc_script": True, "soc_version": "Ascend310P3"}  # writes the ATC job: plannable without CANN


@pytest.mark.parametrize("given, shapes", [
    ({}, OneShape()),
    ({"seq_len": 64}, OneShape(64)),
    ({"seq_lens": "32,16"}, Lengths((16, 32))),
    ({"seq_lens": [16, 64]}, Lengths((16, 64))),
    ({"batch_sizes": "1,2,4"}, BatchSizes((1, 2, 4))),
    ({"pack": "128x16"}, PackedRow(128, 16)),
    ({"pack": "64"}, PackedRow(64, 8)),
])
def test_the_four_keywords_parse_into_one_value(given, shapes):
    assert parse_shapes(**given) == shapes


@pytest.mark.parametrize("given, message", [
    ({"batch_sizes": "1,2", "seq_len": 64}, "--batch-sizes is for the vision families; it does not combine with "
                                             "--seq-len"),
    ({"batch_sizes": "1,2", "seq_lens": "16,32", "pack": "64x4"}, "does not combine with --seq-lens, --pack"),
    ({"seq_lens": "16,32", "seq_len": 64}, "give --seq-len or --seq-lens, not both"),
    ({"seq_lens": "16,32", "pack": "64x4"}, "give --seq-lens or --pack, not both"),
    ({"pack": "64x4", "seq_len": 64}, "a packed row's length is its capacity"),
    ({"pack": "wide"}, "--pack takes CAPACITYxSEGMENTS"),
    ({"seq_lens": [16, "x"]}, "sequence lengths must be integers"),
])
def test_conflicting_or_malformed_shapes_are_refused_at_the_door(given, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        parse_shapes(**given)


def test_a_range_of_lengths_goes_only_to_a_format_that_takes_it():
    # Core ML takes "16-64" (a flexible range) through its own option; a bucketed format cannot.
    shapes = parse_shapes(seq_lens="16-64")
    assert shapes.sizes == () and shapes.text == "16-64"
    assert _items("tinybert_4l_312d", shapes, ["coreml"], "fp32")[0][-1] == "16-64"
    with pytest.raises(UsageError, match="sequence lengths must be integers, got '16-64'"):
        _items("tinybert_4l_312d", shapes, ["coreml", "pte"], "fp32")


def _items(model, shapes, formats, precision=None, options=None):
    _, items = plan_work(model, shapes, formats, precision, "out", dict(options or {}), tiny=True)
    return [(i.plan.converter.format, str(i.plan.precision), i.plan.final.parent.name, i.buckets,
             i.plan.kwargs.get("seq_lens") or i.plan.kwargs.get("dynamic_batch_size")) for i in items]


def test_lengths_one_artifact_where_the_format_can_its_own_option_where_it_takes_them():
    items = _items("tinybert_4l_312d", Lengths((16, 32)), ["pte", "tflite", "onnx", "coreml", "om"], "fp32",
                   {"target": "ios18", **ASCEND})
    lengths = Lengths((16, 32))
    assert items == [("coreml", "fp32", "fp32", None, "16,32"), ("om", "fp32", "fp32", None, "16,32"),
                     ("pte", "fp32", "fp32-seqs16-32", lengths, None),
                     ("tflite", "fp32", "fp32-seqs16-32", lengths, None),
                     ("onnx", "fp32", "fp32-seqs16-32", lengths, None)]


def test_a_precision_that_cannot_hold_every_size_gets_one_artifact_per_size():
    # TFLite int8-static calibrates per signature: one file per length, each in its length's folder (the tiny
    # variant's own length, 32, is the plain folder), and one per batch size in <precision>-batch<N>/.
    assert _items("tinybert_4l_312d", Lengths((16, 32)), ["tflite"], "int8-static") == [
        ("tflite", "int8-static", "int8-static-seq16", None, None),
        ("tflite", "int8-static", "int8-static", None, None)]
    assert _items("mobilevit_xxs", BatchSizes((1, 2)), ["tflite"], "int8-static") == [
        ("tflite", "int8-static", "int8-static-batch1", BatchSizes((1,)), None),
        ("tflite", "int8-static", "int8-static-batch2", BatchSizes((2,)), None)]


def test_batch_sizes_plan_and_refusals():
    sizes = BatchSizes((1, 2, 4))
    assert _items("mobilevit_xxs", sizes, ["pte", "onnx", "om"], options=ASCEND) == [
        ("om", "fp32", "fp32", None, "1,2,4"), ("pte", "fp32", "fp32-batch1-2-4", sizes, None),
        ("onnx", "fp32", "fp32-batch1-2-4", sizes, None)]
    with pytest.raises(UnsupportedError, match="--batch-sizes is not supported for coreml"):
        _items("mobilevit_xxs", sizes, ["pte", "coreml"])
    with pytest.raises(UsageError, match="is a BERT-family model: it batches through packing"):
        _items("tinybert_4l_312d", sizes, ["pte"])


def test_every_refusal_comes_before_any_work():
    # A format that takes the lengths itself used to be exported before a vision model's lengths were refused
    # for the others, and a format option of one format was refused for the other formats' per-length exports.
    with pytest.raises(UsageError, match="has no sequence length: --seq-lens is for the BERT family"):
        _items("mobilevit_xxs", Lengths((16, 32)), ["coreml", "pte"], options={"target": "ios18"})
    with pytest.raises(UnknownOptionError, match="unknown export option"):
        _items("tinybert_4l_312d", Lengths((16, 32)), ["pte", "tflite"], options={"no_such_option": 1})
    assert _items("tinybert_4l_312d", Lengths((16, 32)), ["pte", "tflite"], "int8-static",
                  {"int8_io": True})[-1][:3] == ("tflite", "int8-static", "int8-static")


def test_packed_row_and_one_shape():
    assert _items("tinybert_4l_312d", PackedRow(64, 4), ["pte"]) == [("pte", "fp32", "fp32-packed64x4", None, None)]
    assert _items("tinybert_4l_312d", OneShape(16), ["onnx"]) == [("onnx", "fp32", "fp32-seq16", None, None)]
    with pytest.raises(UsageError, match="has no packed entry point"):
        _items("mobilevit_xxs", PackedRow(64, 4), ["pte"])
