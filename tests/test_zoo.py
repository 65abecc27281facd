"""The models zoo: registry, tiny variants, real sample data, preprocessing and safe weight loading."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models_zoo import UnknownModelError, WeightsError, get_model, list_models
from models_zoo.data import SAMPLE_SENTENCES, bert_vocab_path, tokenize
from converters.parity import check_spread, torch_outputs

FAMILIES = {"mobilevit", "efficientformer", "tinybert", "q8bert"}


def test_registry_covers_the_four_families():
    families = {get_model(name).family for name in list_models()}
    assert FAMILIES <= families
    assert {"mobilevit_xxs", "mobilevit_xs", "mobilevit_s", "efficientformer_l1", "efficientformer_l3",
            "efficientformer_l7", "tinybert_4l_312d", "tinybert_6l_768d", "q8bert"} <= set(list_models())


@pytest.mark.parametrize("name", list_models())
def test_every_model_has_a_small_tiny_variant_with_real_spread(name):
    spec = get_model(name)
    assert spec.name == name
    assert spec.tiny_overrides is not None, f"{name} has no tiny variant"
    tiny = spec.tiny()
    assert tiny.is_tiny and tiny.name == f"{name}-tiny" and tiny.family == spec.family
    module = tiny.build()
    assert sum(p.numel() for p in module.parameters()) < 2_000_000
    feeds = tiny.sample_inputs()
    assert len(feeds) >= 4
    outputs = torch_outputs(module, tiny.input_names, feeds)
    assert check_spread(outputs, name) > 1e-2
    # distinct real inputs give distinct outputs
    assert not np.allclose(outputs[0][0], outputs[1][0])


# -- calibration and verification data ------------------------------------------------------------------
def _same_feed(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _assert_real_photos(spec, feeds):
    prep = spec.preprocessing()
    mean = np.asarray(prep["mean"], np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(prep["std"], np.float32).reshape(1, 3, 1, 1)
    for feed in feeds:
        rgb = feed["pixel_values"] * std + mean  # back to [0, 1] pixels
        assert rgb.min() >= -1e-5 and rgb.max() <= 1 + 1e-5
        assert rgb.std() > 0.05  # not a flat image
        # A photograph is smooth at the pixel scale: neighbours correlate (uniform noise would give ~0; the
        # least smooth photo here, grass at 64x64, gives 0.40).
        left, right = rgb[..., :, :-1].ravel(), rgb[..., :, 1:].ravel()
        assert np.corrcoef(left, right)[0, 1] > 0.3


def _assert_real_sentences(spec, feeds):
    vocab = bert_vocab_path().read_text().splitlines()
    for feed in feeds:
        length = int(feed["attention_mask"].sum())
        assert (feed["attention_mask"][0, :length] == 1).all()  # padding only at the end
        ids = feed["input_ids"][0, :length]
        words = [vocab[i] for i in ids]
        assert words[0] == "[CLS]" and words[-1] == "[SEP]" and words.count("[SEP]") in (1, 2)
        body = [w for w in words if not w.startswith("[")]
        assert len(body) >= 5 and sum(w.strip("#").isalpha() for w in body) >= 0.7 * len(body)
        assert "[UNK]" not in words


@pytest.mark.parametrize("name", list_models())
def test_calibration_and_verification_feeds_are_disjoint_real_data(name):
    spec = get_model(name, tiny=True)
    verify, calibrate = spec.sample_inputs(), spec.calibration_inputs()
    assert len(verify) >= 6 and len(calibrate) >= 6
    for feed in verify:
        assert not any(_same_feed(feed, other) for other in calibrate), "a verification feed is also calibrated on"
    # No feed array of the model's content input (pixels, token ids) is shared either.
    content = spec.input_names[0]
    for feed in verify:
        assert not any(np.array_equal(feed[content], other[content]) for other in calibrate)
    for feeds in (verify, calibrate):  # and neither set repeats itself
        assert len({f[content].tobytes() for f in feeds}) == len(feeds)
    check = _assert_real_photos if spec.preprocessing()["kind"] == "image" else _assert_real_sentences
    check(spec, verify)
    check(spec, calibrate)


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(UnknownModelError) as err:
        get_model("mobilevit_xxxl")
    assert "mobilevit_xxs" in str(err.value) and "q8bert" in str(err.value)


def test_q8bert_exports_int8_by_default():
    assert get_model("q8bert").default_precision == "int8"
    assert get_model("tinybert_4l_312d").default_precision == "fp32"


def test_vision_samples_are_real_photos_normalised_with_the_models_own_mean_std():
    spec = get_model("efficientformer_l1")
    prep = spec.preprocessing()
    assert prep["mean"] == pytest.approx([0.485, 0.456, 0.406]) and prep["interpolation"] == "bicubic"
    feeds = spec.sample_inputs()
    pixels = np.stack([f["pixel_values"] for f in feeds])
    assert pixels.shape[1:] == (1, 3, 224, 224)
    # real photos: per-image statistics differ, values span the normalised range
    means = pixels.reshape(len(feeds), -1).mean(axis=1)
    assert means.std() > 0.05 and pixels.min() < -1.5 and pixels.max() > 1.5
    mobilevit = get_model("mobilevit_xxs").preprocessing()
    assert mobilevit["mean"] == [0.0, 0.0, 0.0] and mobilevit["size"] == [256, 256]


def test_text_samples_use_the_real_bert_vocabulary():
    vocab = bert_vocab_path().read_text().splitlines()
    assert len(vocab) == 30522
    spec = get_model("tinybert_4l_312d")
    feed = spec.sample_inputs()[0]
    ids = feed["input_ids"][0]
    length = int(feed["attention_mask"].sum())
    words = [vocab[i] for i in ids[:length]]
    assert words[0] == "[CLS]" and words[-1] == "[SEP]"
    assert "gripping" in words and "film" in words  # "A gripping, beautifully shot film ..."
    assert (ids[length:] == 0).all() and feed["input_ids"].dtype == np.int64


def test_sequence_length_is_a_parameter_and_long_text_is_truncated():
    spec = get_model("tinybert_4l_312d").with_seq_len(8)
    feed = tokenize(" ".join(SAMPLE_SENTENCES), spec.preprocessing())
    assert feed["input_ids"].shape == (1, 8) and feed["attention_mask"].all()
    assert feed["input_ids"][0, -1] == 102  # [SEP] kept at the end
    with pytest.raises(ValueError, match="sequence length"):
        get_model("tinybert_4l_312d").with_seq_len(4096)


def _zoo_import_graph() -> dict[str, set[str]]:
    """Which models_zoo modules each models_zoo module imports (anywhere in it, functions included)."""
    import ast
    from pathlib import Path

    import models_zoo

    folder = Path(models_zoo.__file__).parent
    modules = {p.stem for p in folder.glob("*.py") if p.stem != "__init__"}
    graph = {}
    for name in modules:
        edges = set()
        for node in ast.walk(ast.parse((folder / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("models_zoo"):
                parts = node.module.split(".")
                if len(parts) == 2:
                    edges.add(parts[1])
                else:  # `from models_zoo import x`: a submodule, or the package (which imports every family)
                    edges.update(a.name if a.name in modules else "__init__" for a in node.names)
            elif isinstance(node, ast.Import):
                edges.update(a.name.split(".")[1] if "." in a.name else "__init__"
                             for a in node.names if a.name.startswith("models_zoo"))
        graph[name] = edges
    return graph


def test_the_zoo_modules_import_each_other_without_a_cycle():
    """spec <-> weights was a cycle (spec.build imported weights, weights imported spec's types): none now."""
    graph = _zoo_import_graph()
    assert graph["weights"] <= {"errors"} and graph["errors"] == set()
    assert all("__init__" not in edges for edges in graph.values()), "a zoo module imports the package itself"
    done, path = set(), []

    def visit(node):
        if node in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(node):] + [node]))
        if node in done:
            return
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            visit(nxt)
        path.pop()
        done.add(node)

    for module in sorted(graph):
        visit(module)
    from models_zoo import UnknownModelError as A, WeightsError as B
    from models_zoo.spec import UnknownModelError as C, WeightsError as D  # still importable from spec
    assert A is C and B is D and issubclass(A, KeyError) and issubclass(B, ValueError)


def test_random_weights_are_seeded_and_said_so():
    spec = get_model("mobilevit_xxs", tiny=True)
    a, b = spec.build(seed=3), spec.build(seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert a.pocketformer_weights["source"] == "random"


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_round_trip_through_a_local_checkpoint(tmp_path, suffix):
    from safetensors.torch import save_file

    spec = get_model("efficientformer_l1", tiny=True)
    source = spec.build(seed=7)
    path = tmp_path / f"ckpt{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"state_dict": state}, path)
    loaded = spec.build(weights=str(path), seed=0)
    assert loaded.pocketformer_weights["source"] == "checkpoint"
    x = torch.from_numpy(spec.sample_inputs()[0]["pixel_values"])
    with torch.no_grad():
        assert torch.equal(source(x), loaded(x))


def test_hf_backbone_checkpoint_loads_into_the_classifier(tmp_path):
    """A BertModel checkpoint (keys without the wrapper prefixes) fits; the classifier head stays random."""
    from safetensors.torch import save_file

    spec = get_model("tinybert_4l_312d", tiny=True)
    source = spec.build(seed=5)
    backbone = {k.removeprefix("model.bert."): v.contiguous() for k, v in source.state_dict().items()
                if k.startswith("model.bert.")}
    (tmp_path / "hf").mkdir()
    save_file(backbone, str(tmp_path / "hf" / "model.safetensors"))
    loaded = spec.build(weights=str(tmp_path / "hf"), seed=0)
    info = loaded.pocketformer_weights
    assert info["loaded"] == len(backbone) and any("classifier" in k for k in info["randomly_initialised"])
    emb = "model.bert.embeddings.word_embeddings.weight"
    assert torch.equal(loaded.state_dict()[emb], source.state_dict()[emb])


def test_bad_weights_give_clear_errors(tmp_path):
    spec = get_model("mobilevit_xxs", tiny=True)
    with pytest.raises(WeightsError, match="not found"):
        spec.build(weights=str(tmp_path / "missing.safetensors"))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(WeightsError, match="cannot read"):
        spec.build(weights=str(garbage))
    other = tmp_path / "other.pth"
    torch.save(get_model("efficientformer_l1", tiny=True).build().state_dict(), other)
    with pytest.raises(WeightsError, match="shares no parameter names|shape mismatch|lacks"):
        spec.build(weights=str(other))
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="no checkpoint in folder"):
        spec.build(weights=str(tmp_path / "empty"))


def test_pickled_code_is_refused(tmp_path):
    """torch.load(weights_only=True): a checkpoint that would run code on load is rejected."""
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": Evil()}, path)
    with pytest.raises(WeightsError, match="cannot read"):
        get_model("mobilevit_xxs", tiny=True).build(weights=str(path))
