"""The zoo's library families: DeiT and TinyViT (timm), DistilBERT (transformers).

The CLI lists them; each full-size config matches its paper's parameter count and MACs within 0.5%; DeiT's eval
output is the average of its two heads; TinyViT's window partition is folded to rank 5 for Core ML; the compress
recipes refuse DistilBERT, naming what they cannot address. (Their tiny variants' exports are covered by the
registry-driven tests: test_executorch, test_tflite, test_onnx, test_coreml, test_ascend_om, test_analysis.)
"""
from __future__ import annotations

import pytest
import torch

from device_runtime.errors import UsageError
from models_zoo import WeightsError, get_model
from sdk.measure.analysis import count_flops, eager_attention

# (params in millions, GMACs at the model's own input). DeiT: Touvron et al. 2021, Table 1 / timm's model
# cards (5.91M / 1.26, 22.44M / 4.62, 87.34M / 17.66 with both heads); TinyViT: Wu et al. 2022, Table 4 /
# timm (1000 classes: 5.39M / 1.26, 11.00M / 2.02, 21.20M / 4.25); DistilBERT: Sanh et al. 2019 (66M; the
# encoder without a task head holds 66.36M) at sequence length 128: 5.59 GMACs. FlopCounterMode counts 2 FLOPs
# per multiply-accumulate.
PAPER = {
    "deit_tiny_distilled_patch16_224": (5.91, 1.26),
    "deit_small_distilled_patch16_224": (22.44, 4.62),
    "deit_base_distilled_patch16_224": (87.34, 17.66),
    "tiny_vit_5m_224": (5.39, 1.26),
    "tiny_vit_11m_224": (11.00, 2.02),
    "tiny_vit_21m_224": (21.20, 4.25),
    "distilbert_base_uncased": (66.36, 5.59),
}
FAMILIES = ("deit", "tinyvit", "distilbert")


def test_zoo_list_shows_the_library_families(capsys):
    from sdk.cli.app import EXIT_OK, main

    assert main(["zoo", "list"]) == EXIT_OK
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    for name in PAPER:
        assert name in rows, f"{name} missing from `zoo list`"
        assert get_model(name).family in rows[name] and rows[name][-1] == "yes"  # the tiny variant
    assert "input_ids int64[1, 128], attention_mask int64[1, 128]" in out  # DistilBERT: no token_type_ids
    assert {get_model(n).family for n in PAPER} == set(FAMILIES)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_full_size_params_and_macs_match_the_paper(name):
    spec = get_model(name)
    if spec.preprocessing()["kind"] == "image":
        # Shapes only: built and counted on the meta device, so even DeiT-B allocates nothing.
        with torch.device("meta"):
            module = spec.build()
            args = tuple(torch.empty(s.shape) for s in spec.input_specs())
        counted = module
    else:
        # transformers' mask code reads values, so DistilBERT runs for real (66M parameters, ~1 s).
        feed = spec.sample_inputs()[0]
        module = spec.build()
        args = tuple(torch.from_numpy(feed[n]) for n in spec.input_names)
        counted = module.model.distilbert  # the paper's count is the encoder's: the SST-2 head adds 0.59M
    eager_attention(module)
    flops = count_flops(module, args)
    assert flops["fused_attention_calls"] == 0
    params = sum(p.numel() for p in counted.parameters()) / 1e6
    macs = flops["flops"] / 2 / 1e9
    want_params, want_macs = PAPER[name]
    assert params == pytest.approx(want_params, rel=0.005), f"{name}: {params:.3f}M params"
    assert macs == pytest.approx(want_macs, rel=0.005), f"{name}: {macs:.3f} GMACs"


def test_deit_eval_output_is_the_average_of_its_two_heads():
    spec = get_model("deit_tiny_distilled_patch16_224", tiny=True)
    module = spec.build()
    x = torch.from_numpy(spec.sample_inputs()[0]["pixel_values"])
    with torch.no_grad():
        tokens = module.forward_features(x)
        cls_logits, dist_logits = module.head(tokens[:, 0]), module.head_dist(tokens[:, 1])
        out = module(x)
    assert spec.output_names == ("logits",) and out.shape == (1, 1000)
    assert not torch.allclose(cls_logits, dist_logits)  # two different heads...
    torch.testing.assert_close(out, (cls_logits + dist_logits) / 2)  # ...averaged in eval


# -- TinyViT: the rank-6 window partition, folded for Core ML ---------------------------------------------
def _max_rank(module, x) -> int:
    graph = torch.export.export(module, (x,)).graph
    return max(len(n.meta["val"].shape) for n in graph.nodes if isinstance(n.meta.get("val"), torch.Tensor))


def test_tinyvit_window_partition_folds_the_batch_of_one():
    from converters.rewrites import fold_window_batch

    spec = get_model("tiny_vit_5m_224", tiny=True)
    module = spec.build()
    x = torch.from_numpy(spec.sample_inputs()[0]["pixel_values"])
    folded = fold_window_batch(module)
    assert folded is not module and fold_window_batch(get_model("deit_tiny_distilled_patch16_224", tiny=True)
                                                      .build()) is not folded  # no TinyViT block: untouched
    assert _max_rank(module, x) == 6 and _max_rank(folded, x) == 5
    assert set(folded.state_dict()) == set(module.state_dict())
    with torch.no_grad():
        assert torch.equal(folded(x), module(x))  # the same values, not merely close
        assert folded(x.expand(2, -1, -1, -1)).shape == (2, 1000)  # other batches take timm's own path


def test_core_ml_refuses_the_rank_6_partition_and_takes_the_folded_one():
    """coremltools' own check, with its graph passes off (version 9.0 happens to squeeze this view away in its
    default passes; the fold makes the program valid whatever the passes do)."""
    ct = pytest.importorskip("coremltools")
    from timm.models.tiny_vit import TinyVitBlock

    from converters.rewrites import fold_window_batch

    torch.manual_seed(0)
    block, x = TinyVitBlock(dim=16, num_heads=2, window_size=2).eval(), torch.randn(1, 4, 4, 16)

    def convert(module):
        program = torch.export.export(module, (x,)).run_decompositions({})
        return ct.convert(program, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17,
                          inputs=[ct.TensorType(name="x", shape=x.shape)], pass_pipeline=ct.PassPipeline.EMPTY,
                          skip_model_load=True)

    with pytest.raises(ValueError, match="rank <= 5"):
        convert(block)
    assert convert(fold_window_batch(block)).get_spec().WhichOneof("Type") == "mlProgram"


# -- DistilBERT and the compress recipes -------------------------------------------------------------------
def test_distilbert_is_the_paper_model_without_token_types():
    spec = get_model("distilbert_base_uncased")
    assert spec.input_names == ("input_ids", "attention_mask") and spec.family == "distilbert"
    config = spec._hf_config()
    assert (config.n_layers, config.dim, config.n_heads, config.hidden_dim) == (6, 768, 12, 3072)
    ranges = {s.name: s.value_range for s in spec.input_specs()}
    assert ranges == {"input_ids": (0, 30521), "attention_mask": (0, 1)}
    tiny = spec.tiny()
    feeds = tiny.sample_inputs()
    assert len(feeds) == 12 and set(feeds[0]) == {"input_ids", "attention_mask"}


def _recipes():
    from sdk.compress import binarize, distill, prune_magnitude, prune_structured, qat

    return {"qat": lambda m: qat(m, tiny=True, steps=1),
            "distill": lambda m: distill(m, {"num_hidden_layers": 1}, steps=1, tiny=True),
            "prune-magnitude": lambda m: prune_magnitude(m, 0.5, tiny=True),
            "prune-structured": lambda m: prune_structured(m, tiny=True),
            "binarize": lambda m: binarize(m, tiny=True, steps=1)}


@pytest.mark.parametrize("recipe", ["qat", "distill", "prune-magnitude", "prune-structured", "binarize"])
def test_compress_recipes_refuse_distilbert_naming_what_is_unsupported(recipe):
    with pytest.raises(UsageError) as err:
        _recipes()[recipe]("distilbert_base_uncased")
    message = str(err.value)
    assert "distilbert_base_uncased-tiny" in message and "q_lin" in message and "encoder.layer" in message
    assert "export it as it is" in message.lower()  # and says what to do instead


def test_compress_cli_refuses_distilbert_with_exit_2(tmp_path, capsys):
    from sdk.cli.app import main

    code = main(["compress", "distilbert_base_uncased-tiny", "--method", "qat", "--out", str(tmp_path / "q")])
    assert code == 2 and "q_lin" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()  # nothing half-written


def test_distilbert_refuses_a_compressed_bert_checkpoint():
    with pytest.raises(WeightsError, match="q_lin"):
        get_model("distilbert_base_uncased").with_architecture({"source_model": "tinybert_4l_312d", "config": {}})


# -- the zoo section of the report: equal FLOPs, unequal latency ------------------------------------------
def _zoo_doc():
    def row(model, gmacs, mac_mb, ops, p50, partitions=1, precision="fp32"):
        return {"model": model, "family": model.split("_")[0],
                "analysis": {"params": 5e6, "flops": gmacs * 2e9, "mac_bytes": mac_mb * 1e6, "operator_nodes": ops,
                             "arithmetic_intensity": gmacs * 2e9 / (mac_mb * 1e6)},
                "artifacts": [{"format": "pte", "precision": precision, "partitions": partitions, "p50_ms": p50},
                              {"format": "onnx", "precision": "fp32", "partitions": None, "p50_ms": p50 * 1.5}]}

    from sdk.report.zoo import SCHEMA

    return {"schema": SCHEMA, "note": "measured", "models": [
        row("deit_tiny", 1.26, 40, 300, 10.0), row("tinyvit_5m", 1.26, 90, 700, 19.0, partitions=4),
        row("equal_speed", 1.20, 45, 310, 11.0), row("bigger", 4.6, 150, 300, 30.0),
        {"model": "not_registered", "skipped": "not registered"}]}


def test_zoo_pairs_name_the_factors_that_differ():
    from sdk.report.zoo import equal_flops_pairs

    pairs = equal_flops_pairs(_zoo_doc())
    # equal MACs and 1.9x (1.73x) apart: reported; 4.6 GMACs is not "equal"; 10 vs 11 ms is not "unequal"
    assert [(p["fast"], p["slow"]) for p in pairs] == [("deit_tiny", "tinyvit_5m"), ("equal_speed", "tinyvit_5m")]
    assert pairs[0]["latency_ratio"] == pytest.approx(1.9)
    reasons = " ".join(pairs[0]["reasons"])
    assert "memory traffic" in reasons and "2.25x" in reasons and "operator count 2.33x" in reasons
    assert "partitions 4 vs 1" in reasons


def test_report_gets_a_zoo_section_only_when_bench_zoo_json_is_there(tmp_path):
    from device_runtime.atomic import write_json
    from sdk.report.zoo import ZOO_FILE, zoo_sections

    assert zoo_sections(tmp_path) == []
    write_json(tmp_path / ZOO_FILE, _zoo_doc())
    section, = zoo_sections(tmp_path)
    assert "equal FLOPs, unequal latency" in section["html"] and "tinyvit_5m is 1.90x slower" in section["html"]
    assert "| deit_tiny | deit | 5.00 | 1.260 | 40.0 |" in section["md"] and "not registered" in section["md"]
