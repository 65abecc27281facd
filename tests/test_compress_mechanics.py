"""Compression mechanics on tiny models: each recipe changes what it should, training lowers its loss, shapes
stay consistent, the checkpoint rebuilds the compressed model exactly, and its export passes parity."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from converters import get_converter
from models_zoo import WeightsError, get_model
from models_zoo.bert import ARCHITECTURE_KEY, find_bert
from sdk.compress import (binarize, distill, layer_map, prune_magnitude, prune_structured, qat, stdlib_corpus,
                          unpack_binary)
from sdk.compress.core import outputs
from sdk.compress.quant import fake_quant
from sdk.export.api import export

MODEL = "minilm_l6_h384"
# Tiny models, small batches, few held-out sentences: mechanics, not accuracy.
FAST = dict(tiny=True, eval_sentences=16, batch_size=8, max_len=32, log_every=1)
SENTENCES = ["Return the number of items in the container.", "Open the file and read its contents."]
# The compressed checkpoints are exported to ONNX: what is tested is that export takes them and they pass parity,
# the same for every format, and ONNX's export is the quickest (each format's own paths have their own tests).
needs_onnx = pytest.mark.skipif(get_converter("onnx").missing_toolchain() is not None,
                                reason=str(get_converter("onnx").missing_toolchain()))


def _loss_fell(history) -> bool:
    losses = [h["loss"] for h in history]
    return np.mean(losses[-3:]) < np.mean(losses[:3])


def _rebuilds_exactly(result, folder) -> None:
    """The checkpoint, read the way `pocketformer export --weights` reads it, is the compressed model."""
    rebuilt = get_model(result.spec.name.removesuffix("-tiny"), tiny=True).build(weights=str(folder))
    assert rebuilt.pocketformer_weights["architecture"] == result.architecture
    np.testing.assert_array_equal(outputs(rebuilt, result.spec, SENTENCES), outputs(result.model, result.spec, SENTENCES))


def test_layer_mapping_is_tinybert_uniform():
    assert layer_map(3, 6) == [2, 4, 6]
    assert layer_map(4, 12) == [3, 6, 9, 12]
    assert layer_map(6, 6) == [1, 2, 3, 4, 5, 6]
    with pytest.raises(ValueError):
        layer_map(7, 6)


def test_training_text_is_real_english_split_by_source_module():
    corpus = stdlib_corpus()
    assert len(corpus.train) > 1000 and len(corpus.heldout) > 200
    assert not set(corpus.train) & set(corpus.heldout)
    words = " ".join(corpus.heldout).lower().split()
    assert {"the", "return", "file"} <= set(words)
    assert all(s[0].isupper() and s.endswith(".") and ">>>" not in s for s in corpus.train[:500])


def test_fake_quant_rounds_to_the_grid_with_a_straight_through_gradient():
    x = torch.linspace(-2, 2, 101, requires_grad=True)
    y = fake_quant(x, torch.tensor(1.5 / 127))
    q = y.detach() / (1.5 / 127)
    assert torch.allclose(q, q.round(), atol=1e-4) and q.abs().max() <= 127  # clamped to the 8-bit range
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))  # STE: identity gradient, clipped region included


@needs_onnx
def test_qat_snaps_weights_to_the_int8_grid_and_exports_int8(tmp_path):
    result = qat(MODEL, steps=4, lr=1e-3, **FAST)
    original = get_model(MODEL, tiny=True).build()
    assert set(result.model.state_dict()) == set(original.state_dict())  # plain checkpoint layout
    for module in result.model.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
            w = module.weight.detach()
            grid = w / (w.abs().amax(dim=1, keepdim=True) / 127)
            assert torch.allclose(grid, grid.round(), atol=2e-3), "weights must lie on their int8 grid"
    changed = [k for k, v in original.state_dict().items() if not torch.equal(v, result.model.state_dict()[k])]
    assert changed, "QAT must change the weights"
    acc = result.report["accuracy"]
    assert {"fp32_vs_ptq_int8", "fp32_vs_qat_int8"} <= set(acc) and result.report["history"]
    folder = result.save(tmp_path / "qat")
    _rebuilds_exactly(result, folder)
    exported = export(MODEL, "onnx", "int8", out_dir=tmp_path / "export", weights=folder, tiny=True)[0]
    assert exported.passed and exported.precision == "int8-dynamic"
    # weights are on the exporter's own grid, so int8 costs only activation rounding here
    assert exported.parity["quantization"]["cosine"] > 0.999


@needs_onnx
def test_distilling_into_a_narrower_student_learns_through_projections(tmp_path):
    student = {"num_hidden_layers": 1, "hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 32}
    result = distill(MODEL, student, steps=15, lr=2e-3, **FAST)
    assert _loss_fell(result.report["history"])
    options = result.report["options"]
    assert options["projection"] and options["layer_mapping"] == [2] and options["attention_loss"]
    assert set(result.report["history"][0]) >= {"embedding", "attention", "hidden", "prediction"}
    bert = find_bert(result.model)
    assert len(bert.encoder.layer) == 1 and bert.config.hidden_size == 16
    # a projection keeps the student in the teacher's 32-wide embedding space
    assert outputs(result.model, result.spec, SENTENCES).shape == (2, 32)
    acc = result.report["accuracy"]
    assert acc["end"]["cosine_mean"] > acc["start"]["cosine_mean"]
    folder = result.save(tmp_path / "student")
    _rebuilds_exactly(result, folder)
    exported = export(MODEL, "onnx", "fp32", out_dir=tmp_path / "export", weights=folder, tiny=True)[0]
    assert exported.passed and exported.size_bytes < 0.6 * result.report["size"]["fp32_bytes_before"]


def test_same_width_student_starts_from_the_mapped_teacher_layers():
    result = distill(MODEL, {"num_hidden_layers": 1}, steps=0, **FAST)
    teacher = get_model(MODEL, tiny=True).build()
    s, t = find_bert(result.model).state_dict(), find_bert(teacher).state_dict()
    assert torch.equal(s["encoder.layer.0.attention.self.query.weight"], t["encoder.layer.1.attention.self.query.weight"])
    assert torch.equal(s["embeddings.word_embeddings.weight"], t["embeddings.word_embeddings.weight"])
    assert "layers [2]" in result.report["options"]["init"]


@needs_onnx
def test_magnitude_pruning_hits_the_sparsity_in_every_layer_and_keeps_it_while_training(tmp_path):
    result = prune_magnitude(MODEL, 0.5, steps=5, lr=1e-3, **FAST)
    per_layer = result.report["sparsity"]["per_layer"]
    assert len(per_layer) == 2 * 6 and all(abs(s - 0.5) < 0.01 for s in per_layer.values())
    assert _loss_fell(result.report["history"])
    global_ = prune_magnitude(MODEL, 0.5, scope="global", steps=0, **FAST)
    assert abs(global_.report["sparsity"]["encoder_linear_overall"] - 0.5) < 0.01
    assert len({round(s, 3) for s in global_.report["sparsity"]["per_layer"].values()}) > 1
    folder = result.save(tmp_path / "sparse")
    _rebuilds_exactly(result, folder)
    exported = export(MODEL, "onnx", "fp32", out_dir=tmp_path / "export", weights=folder, tiny=True)[0]
    assert exported.passed


def test_structured_pruning_removes_heads_and_channels_physically(tmp_path):
    result = prune_structured(MODEL, heads=0.5, ffn=0.5, steps=5, lr=1e-3, calibration_batches=2, **FAST)
    removed = result.report["removed"]
    assert removed["heads"] == 2 and removed["ffn_channels"] == 64
    assert _loss_fell(result.report["history"])
    for layer in find_bert(result.model).encoder.layer:
        heads = layer.attention.self.query.out_features // layer.attention.self.attention_head_size
        assert heads >= 1 and layer.attention.output.dense.in_features == layer.attention.self.value.out_features
        assert layer.output.dense.in_features == layer.intermediate.dense.out_features >= 1
    size = result.report["size"]
    encoder = lambda m: sum(p.numel() for p in find_bert(m).encoder.parameters())  # noqa: E731
    assert encoder(result.model) < 0.6 * encoder(get_model(MODEL, tiny=True).build())
    assert size["params_after"] < size["params_before"]
    folder = result.save(tmp_path / "pruned")
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="pt") as fh:
        arch = json.loads(fh.metadata()[ARCHITECTURE_KEY])
    assert [l["heads"] for l in arch["layers"]] == [l["heads"] for l in removed["per_layer"]]
    _rebuilds_exactly(result, folder)


@needs_onnx
def test_binarized_layers_hold_two_values_per_channel_and_export(tmp_path):
    result = binarize(MODEL, scope="ffn", steps=5, lr=1e-3, **FAST)
    for name, module in find_bert(result.model).encoder.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        magnitudes = module.weight.detach().abs()
        two_valued = torch.allclose(magnitudes, magnitudes[:, :1].expand_as(magnitudes), rtol=1e-6)
        assert two_valued == (".attention." not in f".{name}"), name  # FFN binarized, attention untouched
    acc = result.report["accuracy"]
    assert acc["binarized_trained"]["cosine_mean"] > acc["binarized_untrained"]["cosine_mean"]
    assert result.report["size"]["one_bit_bytes_of_binarized_layers"] < result.report["size"]["fp32_bytes_of_binarized_layers"] / 10  # 1 bit + a scale per row
    folder = result.save(tmp_path / "binary")
    state = result.model.state_dict()
    for key, weight in unpack_binary(folder / "binary.safetensors").items():
        torch.testing.assert_close(weight, state[f"model.{key}"], rtol=1e-6, atol=0)  # dequantize on load
    exported = export(MODEL, "onnx", "int8", out_dir=tmp_path / "export", weights=folder, tiny=True)[0]
    assert exported.passed


def test_a_checkpoint_for_another_task_is_refused(tmp_path):
    folder = prune_magnitude(MODEL, 0.1, steps=0, **FAST).save(tmp_path / "ckpt")
    with pytest.raises(WeightsError, match="sentence-embedding"):
        get_model("tinybert_4l_312d", tiny=True).build(weights=str(folder))


@needs_onnx
def test_cli_compress_writes_a_checkpoint_and_report_that_export_accepts(tmp_path, capsys):
    from sdk.cli.app import main as pocketformer
    from sdk.cli.compress import main as compress_main

    out = tmp_path / "pruned"
    assert compress_main(["compress", f"{MODEL}-tiny", "--method", "prune", "--heads", "0.5", "--ffn", "0.5",
                          "--steps", "2", "--batch-size", "4", "--eval-sentences", "8", "--out", str(out),
                          "--export", "onnx", "--bench-runs", "3", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "prune-structured" in printed and f"--weights {out}" in printed
    report = json.loads((out / "compress_report.json").read_text())
    before, after = report["exports"]["before"][0], report["exports"]["after"][0]
    assert before["parity_passed"] and after["parity_passed"]
    assert after["size_bytes"] < before["size_bytes"]  # physically smaller artifact
    assert after["latency_ms"]["p50"] > 0 and 0 < after["accuracy_vs_fp32_teacher"]["cosine_mean"] <= 1.0001
    assert (out / "compress_report.md").read_text().count("| after | onnx | fp32 |") == 1
    assert json.loads((out / "config.json").read_text())["pocketformer"]["layers"]

    assert pocketformer(["export", MODEL, "--tiny", "--weights", str(out), "--to", "onnx",
                         "--out", str(tmp_path / "export"), "--quiet"]) == 0
    entry = json.loads((tmp_path / "export" / f"{MODEL}-tiny" / "fp32" / "report.json").read_text())["artifacts"]["model.onnx"]
    assert entry["parity"]["passed"] and entry["weights"]["architecture"]["layers"] == report["checkpoint"]["architecture"]["layers"]
