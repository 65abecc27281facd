"""One precision vocabulary across formats: each name means the same thing for every converter that takes it,
and a converter that cannot do one says so before any work."""
import pytest

from converters import PRECISIONS, get_converter, list_converters
from models_zoo import get_model


def test_every_converter_speaks_the_shared_vocabulary():
    for fmt in list_converters():
        converter = get_converter(fmt)
        assert set(converter.precisions) <= set(PRECISIONS) - {"int8"}, fmt  # "int8" resolves per family
        spec = get_model("tinybert_4l_312d", tiny=True)
        for precision in set(PRECISIONS) - {"int8"} - set(converter.precisions):
            reason = converter.unsupported_reason(spec, precision)
            # names the refused precision, or says what to ask for instead
            assert reason and (precision in reason or "--precision" in reason), (fmt, precision, reason)


@pytest.mark.parametrize("fmt", ["pte", "onnx", "tflite"])
@pytest.mark.parametrize("name", ["tinybert_4l_312d", "mobilevit_xxs"])
def test_int4_weight_is_4bit_verified_and_smaller(export_tiny, fmt, name):
    spec = get_model(name, tiny=True)
    result = export_tiny(name, fmt, "int4-weight")
    assert result.precision == "int4-weight" and result.passed
    quant = result.parity["quantization"]
    assert quant["max_abs_err"] > 1e-4, "weights were not really quantized"
    assert quant["sqnr_db"] >= spec.tolerance("int4-weight").min_sqnr_db
    fp32_bytes = 4 * sum(p.numel() for p in spec.build().parameters())
    # BERT: linear weights and the embedding table are quantized; vision: linear layers only (convs stay float).
    assert result.size_bytes < (0.35 if spec.family != "mobilevit" else 0.75) * fp32_bytes
    if fmt == "onnx":
        ops = result.details["graph"]["ops"]
        assert ops.get("com.microsoft:MatMulNBits", 0) > 0
        assert ("com.microsoft:GatherBlockQuantized" in ops) == (spec.family != "mobilevit")
    if fmt == "pte":
        assert result.details["delegation"]["partitions"] >= 1
    if fmt in ("pte", "tflite"):  # blocks of 32 where every linear width allows (tiny BERT: 32/64), else per channel
        assert ("32" in result.details["int4_granularity"]) == (spec.family != "mobilevit")


def test_int4_weight_tolerance_is_its_own():
    spec = get_model("mobilevit_xxs", tiny=True)
    assert spec.tolerance("int4-weight") != spec.tolerance("int8-static")
    assert spec.tolerance("int8-dynamic") == spec.tolerance("int8")
