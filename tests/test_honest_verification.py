"""Honest verification, the zoo's side: int8 calibrates on real data disjoint from the real data that verifies,
sentence pairs exercise token_type_ids, and each family's tolerances pass a good artifact and fail a broken one."""
from __future__ import annotations

import numpy as np
import pytest

from converters.parity import compare, judge, torch_outputs
from models_zoo import Tolerance, get_model, list_models
from models_zoo import data as zoo_data

TOKEN_TYPE_MODELS = [n for n in list_models() if "token_type_ids" in get_model(n).input_names]


def test_calibration_data_is_not_a_near_duplicate_of_verification_data():
    """Different files are not enough: the other view of a stereo pair would be nearly the same photo."""
    spec = get_model("mobilevit_xxs", tiny=True)
    prep = spec.preprocessing()

    def layout(path):  # the photo's coarse layout: 8x8 blocks of the 64x64 feed, per channel
        x = zoo_data.preprocess_image(path, prep)[0]
        return x.reshape(3, 8, 8, 8, 8).mean(axis=(2, 4)).ravel()

    verify = [layout(p) for p in zoo_data.photo_paths()]
    calibrate = [layout(p) for p in zoo_data.calibration_photo_paths()]
    worst = max(np.corrcoef(v, c)[0, 1] for v in verify for c in calibrate)
    assert worst < 0.75, worst  # measured 0.58
    # The check itself can fail: the stereo twin of a verification photo (left out of calibration) is caught.
    twin = layout(zoo_data.photo_paths(("motorcycle_right.png",))[0])
    assert max(np.corrcoef(v, twin)[0, 1] for v in verify) > 0.75  # measured 0.85
    assert not set(zoo_data.SAMPLE_PHOTOS) & set(zoo_data.CALIBRATION_PHOTOS)
    texts = set(zoo_data.SAMPLE_SENTENCES) | {s for p in zoo_data.SAMPLE_SENTENCE_PAIRS for s in p}
    assert not texts & (set(zoo_data.CALIBRATION_SENTENCES) | {s for p in zoo_data.CALIBRATION_SENTENCE_PAIRS for s in p})


# -- sentence pairs ------------------------------------------------------------------------------------------
def test_pairs_tokenise_as_cls_a_sep_b_sep_like_the_tokenizer_itself():
    prep = get_model("tinybert_4l_312d").preprocessing()
    a, b = zoo_data.SAMPLE_SENTENCE_PAIRS[0]
    feed = zoo_data.tokenize(a, prep, pair=b)
    encoding = zoo_data._tokenizer(str(zoo_data.bert_vocab_path()), True).encode(a, b)  # the library's own pairing
    length = len(encoding.ids)
    assert feed["input_ids"][0, :length].tolist() == encoding.ids
    assert feed["token_type_ids"][0, :length].tolist() == encoding.type_ids
    assert feed["attention_mask"][0].tolist() == [1] * length + [0] * (128 - length)
    assert (feed["input_ids"][0, length:] == 0).all() and (feed["token_type_ids"][0, length:] == 0).all()
    # One sentence is unchanged: [CLS] a [SEP], all token types 0.
    single = zoo_data.tokenize(a, prep)
    assert single["input_ids"][0, :int(single["attention_mask"].sum())].tolist() == \
        zoo_data._tokenizer(str(zoo_data.bert_vocab_path()), True).encode(a).ids
    assert not single["token_type_ids"].any()


def test_a_long_pair_is_truncated_longest_first_keeping_both_separators():
    prep = get_model("tinybert_4l_312d").with_seq_len(16).preprocessing()
    long = " ".join(zoo_data.SAMPLE_SENTENCES)
    feed = zoo_data.tokenize(long, prep, pair="A short question?")
    ids, types = feed["input_ids"][0].tolist(), feed["token_type_ids"][0].tolist()
    assert feed["attention_mask"].all() and ids[0] == 101 and ids[-1] == 102 and ids.count(102) == 2
    second = ids.index(102) + 1
    assert types == [0] * second + [1] * (16 - second)
    assert ids[second:-1] == zoo_data._tokenizer(str(zoo_data.bert_vocab_path()), True).encode(
        "A short question?", add_special_tokens=False).ids  # the short segment survives whole
    with pytest.raises(ValueError, match="at least 3"):
        zoo_data.tokenize("a", {**prep, "seq_len": 2}, pair="b")


def test_a_calibration_text_file_may_hold_tab_separated_pairs(tmp_path):
    spec = get_model("tinybert_4l_312d", tiny=True)
    path = tmp_path / "calib.txt"
    path.write_text("One sentence alone.\nA premise here.\tA hypothesis there.\n", encoding="utf-8")
    single, pair = spec.feeds_from(str(path))
    assert not single["token_type_ids"].any() and pair["token_type_ids"].any()
    a, b = "A premise here.", "A hypothesis there."
    expected = zoo_data.tokenize(a, spec.preprocessing(), pair=b)
    assert all(np.array_equal(pair[k], expected[k]) for k in expected)


@pytest.mark.parametrize("name", TOKEN_TYPE_MODELS)
def test_token_type_ids_one_is_exercised_by_verification_and_calibration(name):
    spec = get_model(name, tiny=True)
    for feeds in (spec.sample_inputs(), spec.calibration_inputs()):
        assert any((f["token_type_ids"] == 1).any() for f in feeds)
        assert any(not f["token_type_ids"].any() for f in feeds)  # single sentences too


@pytest.mark.parametrize("name", sorted({get_model(n).family: n for n in TOKEN_TYPE_MODELS}.values()))
def test_the_bert_familys_tiny_output_depends_on_token_type_ids(name):
    spec = get_model(name, tiny=True)
    module = spec.build()
    pairs = [f for f in spec.sample_inputs() if f["token_type_ids"].any()]
    zeroed = [{**f, "token_type_ids": np.zeros_like(f["token_type_ids"])} for f in pairs]
    with_types, without = (torch_outputs(module, spec.input_names, feeds) for feeds in (pairs, zeroed))
    for a, b in zip(with_types, without):
        # Non-degenerate: the segment embedding moves the output by a real fraction of its scale.
        assert np.abs(a[0] - b[0]).max() > 0.05 * np.abs(a[0]).max()


# -- tolerances ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list_models())
def test_quantized_tolerances_have_a_floor_that_counts_in_the_verdict(name):
    spec = get_model(name)
    int8 = spec.tolerance("int8")
    assert isinstance(int8, Tolerance) and int8.min_sqnr_db is not None and int8.rtol is not None
    if spec.task.endswith("classification"):
        assert int8.min_top1 is not None
    else:
        assert int8.min_cosine is not None
    fp32 = spec.tolerance("fp32")
    assert fp32.rtol is not None and fp32.rtol <= 1e-3


def _perturbed(outputs, rel_noise, seed=0):
    """`outputs` plus Gaussian noise whose std is `rel_noise` of the outputs' largest magnitude."""
    rng = np.random.default_rng(seed)
    scale = max(float(np.abs(o).max()) for sample in outputs for o in sample)
    return [[o + rng.normal(0, rel_noise * scale, o.shape).astype(o.dtype) for o in sample] for sample in outputs]


def _verdict(spec, precision, reference, artifact):
    classifier = spec.task.endswith("classification")
    lowering = compare(reference, artifact, classifier)
    quantization = compare(reference, artifact, classifier) if precision != "fp32" else None
    return judge(lowering, quantization, spec.tolerance(precision))


@pytest.mark.parametrize("name", sorted({get_model(n).family: n for n in list_models()}.values()))
def test_tolerances_pass_a_close_artifact_and_fail_a_broken_one(name):
    """On the family's tiny model: output noise at a small fraction of the output scale passes fp32/int8; an
    artifact of other weights (a different seed: wrong weights, same shapes and spread) fails every precision,
    and so do one whose outputs are the right ones shuffled across samples and one that ignores its input
    (the mean output for every sample: the hardest to catch, as the tiny models' outputs vary little)."""
    spec = get_model(name, tiny=True)
    feeds = spec.sample_inputs()
    reference = torch_outputs(spec.build(seed=0), spec.input_names, feeds)
    assert _verdict(spec, "fp32", reference, _perturbed(reference, 1e-6)) == []
    assert _verdict(spec, "int8", reference, _perturbed(reference, 1e-3)) == []
    assert _verdict(spec, "fp32", reference, _perturbed(reference, 1e-2))  # fp32 is tight
    wrong_weights = torch_outputs(spec.build(seed=1), spec.input_names, feeds)
    shuffled = reference[1:] + reference[:1]
    mean = np.mean([sample[0] for sample in reference], axis=0)
    constant = [[mean.copy()] for _ in reference]
    for precision in spec.tolerances:
        for broken in (wrong_weights, shuffled, constant):
            assert _verdict(spec, precision, reference, broken), f"{precision}: a broken artifact passes"
