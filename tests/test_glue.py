"""device_runtime.glue against torchvision / torch on real data: detector-style boxes and scores from real photos
(skimage) through a seeded conv, with overlaps, tied scores, zero-area and out-of-image boxes added; exact NMS
indices, RoIAlign to 1e-5 over aligned, sampling ratios, scales and output sizes; greedy decoding against
Hugging Face's `generate`. And every step's refusals. A few seconds in all."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision
from torchvision.models.detection._utils import BoxCoder

from device_runtime import DTypeError, NonFiniteInputError, ShapeError, ValueRangeError, glue
from device_runtime.errors import InputError, UsageError

STRIDE = 8
SIZE = 128  # the photos are resized to SIZE x SIZE; the feature map is SIZE / STRIDE a side


def _photos() -> np.ndarray:
    """Two real photos as a (2, 3, SIZE, SIZE) float32 batch in [0, 1]."""
    import skimage.data
    from skimage.transform import resize

    images = [resize(im, (SIZE, SIZE), anti_aliasing=True) for im in (skimage.data.astronaut(), skimage.data.coffee())]
    return np.stack([im.transpose(2, 0, 1) for im in images]).astype(np.float32)


@pytest.fixture(scope="module")
def detector():
    """A seeded conv "RPN" on real photos: the feature map, and per image the anchors, deltas, scores and the
    decoded boxes (torchvision's BoxCoder), plus hand-made ties, duplicates, zero-area and out-of-image boxes."""
    torch.manual_seed(0)
    backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, stride=2, padding=1), torch.nn.ReLU(),
                                   torch.nn.Conv2d(16, 16, 3, stride=2, padding=1), torch.nn.ReLU(),
                                   torch.nn.Conv2d(16, 16, 3, stride=2, padding=1), torch.nn.ReLU())
    sizes = (16.0, 32.0, 64.0)
    head = torch.nn.Conv2d(16, len(sizes) * 5, 1)
    with torch.no_grad():
        features = backbone(torch.from_numpy(_photos()))
        features = features / features.std()  # default init shrinks activations layer by layer: unit spread
        out = head(features)
    n, _, h, w = out.shape
    out = out.reshape(n, len(sizes), 5, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 5)
    cy, cx = torch.meshgrid((torch.arange(h) + 0.5) * STRIDE, (torch.arange(w) + 0.5) * STRIDE, indexing="ij")
    centres = torch.stack([cx, cy], -1).reshape(-1, 1, 2).expand(-1, len(sizes), 2).reshape(-1, 2)
    half = torch.tensor(sizes).repeat(h * w)[:, None] / 2
    anchors = torch.cat([centres - half, centres + half], 1)  # overlapping anchors, many past the image border
    deltas, scores = out[..., :4] * 0.5, torch.sigmoid(out[..., 4])
    boxes = [BoxCoder((1.0, 1.0, 1.0, 1.0)).decode_single(d, anchors) for d in deltas]
    per_image = []
    for b, s in zip(boxes, scores):
        b, s = b.clone(), torch.round(s * 50) / 50  # rounded scores: many exact ties
        b[::11, 2:] = b[::11, :2]  # zero-area boxes
        b[5::13] = b[4::13][: len(b[5::13])]  # exact duplicates
        per_image.append((b.numpy(), s.numpy()))
    assert np.ptp(features.numpy()) > 2 and len(np.unique(per_image[0][1])) > 10
    return {"features": features.numpy(), "anchors": anchors.numpy(), "deltas": deltas.numpy(),
            "boxes": per_image}


# -- NMS --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.7, 1.0])
def test_nms_keeps_exactly_torchvisions_indices_in_its_order(detector, threshold):
    for boxes, scores in detector["boxes"]:
        assert (boxes[:, 0] < 0).any() and (boxes[:, 2] > SIZE).any() and len(np.unique(scores)) < len(scores)
        ours = glue.nms(boxes, scores, threshold)
        theirs = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), threshold).numpy()
        assert ours.dtype == np.int64 and 0 < len(ours) <= len(boxes)
        np.testing.assert_array_equal(ours, theirs)


def test_nms_on_the_threshold_ties_and_degenerate_boxes():
    boxes = np.array([[0, 0, 2, 1], [0, 0, 1, 1], [0, 0, 2, 1], [5, 5, 5, 5], [5, 5, 5, 5], [0, 0, 2, 1]], np.float32)
    scores = np.array([0.9, 0.8, 0.9, 0.5, 0.5, 0.9], np.float32)  # IoU(0, 1) is exactly 0.5
    for threshold in (0.5, 0.49, 0.7):
        np.testing.assert_array_equal(glue.nms(boxes, scores, threshold), torchvision.ops.nms(
            torch.from_numpy(boxes), torch.from_numpy(scores), threshold).numpy())
    assert glue.nms(boxes, scores, 0.5).tolist() == [0, 1, 3, 4]  # ties by index; 0.5 is not > 0.5
    assert glue.nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.5).shape == (0,)


@pytest.mark.parametrize("copies", [1, 6])  # torchvision's two paths: coordinate offsets (small), per class (> 4000)
def test_batched_nms_matches_torchvision(detector, copies):
    boxes, scores = detector["boxes"][0]
    boxes, scores = np.concatenate([boxes] * copies), np.concatenate([scores] * copies)
    idxs = np.random.default_rng(1).integers(0, 4, len(boxes))
    ours = glue.batched_nms(boxes, scores, idxs, 0.5)
    theirs = torchvision.ops.batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(idxs),
                                         0.5).numpy()
    assert boxes.size > 4000 if copies > 1 else boxes.size <= 4000
    if copies == 1:
        np.testing.assert_array_equal(ours, theirs)
    else:  # the per-class path sorts its result unstably: equal scores come in any order, the same boxes are kept
        np.testing.assert_array_equal(np.sort(ours), np.sort(theirs))
        np.testing.assert_array_equal(scores[ours], scores[theirs])
        assert (np.diff(ours)[np.diff(scores[ours]) == 0] > 0).all()  # ours: ties in index order


def test_box_iou_matches_torchvision(detector):
    boxes = detector["boxes"][0][0][:60]
    other = boxes[::-1].copy()
    np.testing.assert_allclose(glue.box_iou(boxes, other), torchvision.ops.box_iou(
        torch.from_numpy(boxes), torch.from_numpy(other)).numpy(), atol=1e-6, equal_nan=True)


# -- decoding and clipping --------------------------------------------------------------------------------
@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_decode_boxes_matches_boxcoder_including_the_clip(detector, weights):
    anchors, deltas = detector["anchors"], detector["deltas"][0].copy()
    deltas[0, 2:] = 40.0  # exp(40) would overflow the box; the clip caps it as torchvision does
    two_classes = np.concatenate([deltas, deltas[::-1]], axis=1)
    for codes in (deltas, two_classes):
        ours = glue.decode_boxes(anchors, codes, weights)
        theirs = BoxCoder(weights).decode_single(torch.from_numpy(codes), torch.from_numpy(anchors)).numpy()
        assert ours.shape == theirs.shape and ours.dtype == np.float32 and np.isfinite(ours).all()
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-4)  # exp differs by an ulp between libms


def test_clip_boxes_matches_torchvision(detector):
    boxes = detector["boxes"][0][0]
    theirs = torchvision.ops.clip_boxes_to_image(torch.from_numpy(boxes), (SIZE, SIZE // 2)).numpy()
    np.testing.assert_array_equal(glue.clip_boxes(boxes, (SIZE, SIZE // 2)), theirs)


# -- RoIAlign ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_roi_align_matches_torchvision(detector, aligned, sampling_ratio):
    features = detector["features"]
    rows = [np.concatenate([np.full((len(b), 1), i, np.float32), b], 1)[::4] for i, (b, _) in enumerate(detector["boxes"])]
    rois = np.concatenate(rows)  # both images; zero-area, duplicate and out-of-map boxes among them
    for scale in (1 / STRIDE, 0.25, 1.0):
        for size in ((4, 4), (7, 7), (2, 3)):
            ours = glue.roi_align(features, rois, size, scale, sampling_ratio, aligned)
            theirs = torchvision.ops.roi_align(torch.from_numpy(features), torch.from_numpy(rois), size, scale,
                                               sampling_ratio, aligned).numpy()
            assert ours.shape == theirs.shape and np.ptp(theirs) > 0.1
            np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)


def test_roi_align_takes_torchvisions_box_forms(detector):
    features, (boxes, _) = detector["features"], detector["boxes"][0]
    as_list = [boxes[:20], detector["boxes"][1][0][:7]]
    theirs = torchvision.ops.roi_align(torch.from_numpy(features), [torch.from_numpy(b) for b in as_list], 3, 0.125)
    np.testing.assert_allclose(glue.roi_align(features, as_list, 3, 0.125), theirs.numpy(), atol=1e-5)
    one = features[:1]
    np.testing.assert_allclose(glue.roi_align(one, boxes[:20], 3, 0.125), torchvision.ops.roi_align(
        torch.from_numpy(one), [torch.from_numpy(boxes[:20])], 3, 0.125).numpy(), atol=1e-5)
    assert glue.roi_align(one, np.zeros((0, 4), np.float32), 3).shape == (0, features.shape[1], 3, 3)


def test_multiscale_roi_align_matches_torchvisions_pooler(detector):
    """A three-level pyramid (strides 8, 16, 32) from the photos' feature map; boxes of every size, so every level
    is used, as torchvision's `MultiScaleRoIAlign` (FPN's level rule) pools them."""
    finest = torch.from_numpy(detector["features"])
    pyramid = {"p3": finest, "p4": torch.nn.functional.avg_pool2d(finest, 2), "p5": torch.nn.functional.avg_pool2d(finest, 4)}
    boxes = [b[::5] for b, _ in detector["boxes"]]  # every anchor size (16, 32, 64) among them
    pooler = torchvision.ops.MultiScaleRoIAlign(["p3", "p4", "p5"], output_size=4, sampling_ratio=2, canonical_scale=32)
    theirs = pooler(pyramid, [torch.from_numpy(b) for b in boxes], [(SIZE, SIZE)] * 2).numpy()
    ours = glue.multiscale_roi_align([p.numpy() for p in pyramid.values()], boxes, 4, strides=[8, 16, 32],
                                     sampling_ratio=2, canonical_scale=32)
    side = np.sqrt(np.concatenate([(b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) for b in boxes]))
    assert (side < 32).any() and ((side > 33) & (side < 63)).any() and (side > 65).any()  # every level takes boxes
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)


def test_remove_small_boxes_matches_torchvision(detector):
    boxes = detector["boxes"][0][0]
    for min_size in (0.0, 1e-3, 8.0, 40.0):
        np.testing.assert_array_equal(glue.remove_small_boxes(boxes, min_size), torchvision.ops.remove_small_boxes(
            torch.from_numpy(boxes), min_size).numpy())


# -- selection --------------------------------------------------------------------------------------------
def test_top_k_matches_torch_topk(detector):
    scores = detector["deltas"][0]  # continuous values: no ties, so the order is defined on both sides
    for axis, largest in ((0, True), (-1, True), (0, False)):
        values, indices = glue.top_k(scores, 3, axis=axis, largest=largest)
        tv, ti = torch.topk(torch.from_numpy(scores), 3, dim=axis, largest=largest)
        np.testing.assert_array_equal(indices, ti.numpy())
        np.testing.assert_array_equal(values, tv.numpy())
    tied = np.array([3, 1, 3, 2, 3, np.iinfo(np.int64).min, np.iinfo(np.int64).max])
    values, indices = glue.top_k(tied, 4)  # ties in index order; no integer overflow at the extremes
    assert indices.tolist() == [6, 0, 2, 4] and values.tolist()[1:] == [3, 3, 3]
    assert glue.top_k(scores[:, 0], 10_000)[1].shape == (len(scores),)  # k past the end takes all


def test_take_and_pad_to_fixed():
    boxes = np.arange(20, dtype=np.float32).reshape(5, 4)
    np.testing.assert_array_equal(glue.take(boxes, np.array([3, 0])), torch.from_numpy(boxes)[[3, 0]].numpy())
    padded, mask = glue.pad_to_fixed(boxes[:3], 5)
    assert padded.shape == (5, 4) and mask.tolist() == [True, True, True, False, False]
    np.testing.assert_array_equal(padded, np.concatenate([boxes[:3], np.zeros((2, 4), np.float32)]))
    cut, mask = glue.pad_to_fixed(boxes, 2, mask_dtype="int64")
    assert cut.tolist() == boxes[:2].tolist() and mask.dtype == np.int64 and mask.tolist() == [1, 1]


# -- the decode loop --------------------------------------------------------------------------------------
def test_greedy_decode_matches_hugging_face_generate():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=40, n_positions=32, n_embd=32, n_layer=1, n_head=2)).eval()
    with torch.no_grad():
        for p in model.parameters():  # explicit init: a bare v5 config can leave weights uninitialised
            torch.nn.init.normal_(p, std=0.5)
    start = np.array([[5, 7, 9], [1, 2, 3]], dtype=np.int64)

    def step(ids):
        with torch.no_grad():
            return model(torch.from_numpy(ids)).logits.numpy()

    free = glue.greedy_decode(step, start, eos_id=-1, max_len=12)  # no eos: runs to max_len
    assert free.shape == (2, 12) and np.ptp(step(free)) > 1.0
    eos = int(free[0, 5])  # a token row 0 really produces: row 0 stops there, row 1 may run on
    ours = glue.greedy_decode(step, start, eos_id=eos, max_len=12, pad_id=0)
    with torch.no_grad():
        theirs = model.generate(torch.from_numpy(start), attention_mask=torch.ones(2, 3, dtype=torch.long),
                                do_sample=False, max_length=12, eos_token_id=eos, pad_token_id=0).numpy()
    np.testing.assert_array_equal(ours, theirs)
    assert (ours[0, 6:] == 0).all() if ours.shape[1] > 6 else True



def test_greedy_decode_fixed_matches_generate_padded_to_the_fixed_length():
    """A fixed-shape decoder gets the whole (B, length) buffer each step; on a causal model the [PAD] tail changes
    nothing, so the ids are Hugging Face's greedy `generate`, padded to the length."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(1)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=40, n_positions=32, n_embd=32, n_layer=1, n_head=2)).eval()
    with torch.no_grad():
        for p in model.parameters():
            torch.nn.init.normal_(p, std=0.5)
    shapes = []

    def step(ids):
        shapes.append(ids.shape)
        with torch.no_grad():
            return model(torch.from_numpy(ids)).logits.numpy()

    start = np.array([[5, 7]], dtype=np.int64)
    free = glue.greedy_decode_fixed(step, start, length=10, eos_id=-1, pad_id=0)
    assert free.shape == (1, 10) and set(shapes) == {(1, 10)} and len(np.unique(free)) > 3
    eos = int(free[0, 5])  # a token it really produces: it stops there
    ours = glue.greedy_decode_fixed(step, start, length=10, eos_id=eos, pad_id=0)
    with torch.no_grad():
        theirs = model.generate(torch.from_numpy(start), attention_mask=torch.ones(1, 2, dtype=torch.long),
                                do_sample=False, max_length=10, eos_token_id=eos, pad_token_id=0).numpy()
    np.testing.assert_array_equal(ours[:, :theirs.shape[1]], theirs)
    assert (ours[:, theirs.shape[1]:] == 0).all() and theirs.shape[1] < 10
    assert glue.greedy_decode_fixed(step, np.array([[5, 7]]), 2, eos_id=eos).tolist() == [[5, 7]]


# -- region glue (MiniVLM's TEE) ---------------------------------------------------------------------------
def test_anchor_grid_matches_torchvisions_anchor_generator_and_minivlms_anchors():
    """torchvision's generator rounds its base anchors and puts centres at index * stride: with ratios whose
    sides are whole pixels, ours are its anchors shifted by half a stride, in its order (level, row, column,
    ratio). And exactly the anchors MiniVLM's detector outputs are laid out against."""
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.image_list import ImageList

    from models_zoo.minivlm import minivlm_config

    size, strides, ratios = 128, (8, 16, 32), (1.0, 4.0, 0.25)
    generator = AnchorGenerator(tuple((4 * s,) for s in strides), (ratios,) * len(strides))
    images = ImageList(torch.zeros(1, 3, size, size), [(size, size)])
    theirs = generator(images, [torch.zeros(1, 1, size // s, size // s) for s in strides])[0].numpy()
    shift = np.repeat([s / 2 for s in strides], [(size // s) ** 2 * len(ratios) for s in strides])[:, None]
    ours = glue.anchor_grid(image_size=size, strides=strides, scale=4.0, ratios=ratios)
    assert ours.dtype == np.float32 and ours.shape == theirs.shape
    np.testing.assert_array_equal(ours, theirs + shift)
    for cfg in (minivlm_config(tiny=True), minivlm_config()):
        np.testing.assert_array_equal(glue.anchor_grid(cfg.image_size, (8, 16, 32, 64, 128), cfg.anchor_scale,
                                                       cfg.anchor_ratios), cfg.anchors())


def test_clip_and_normalise_by_a_wired_image_size_match_torch(detector):
    for (boxes, _), hw in zip(detector["boxes"], [(96, 128), (128, 70)]):  # a landscape and a portrait photo
        ours = glue.clip_boxes_to_image(boxes, np.array(hw, np.int64))
        theirs = torchvision.ops.clip_boxes_to_image(torch.from_numpy(boxes), hw).numpy()
        np.testing.assert_array_equal(ours, theirs)
        assert (ours != boxes).any() and ours[:, 2].max() == hw[1] and ours[:, 3].max() == hw[0]
        norm = glue.normalize_boxes(ours, np.array(hw))
        torch_norm = (torch.from_numpy(ours) / torch.tensor([hw[1], hw[0], hw[1], hw[0]], dtype=torch.float32))
        np.testing.assert_array_equal(norm, torch_norm.numpy())
        assert norm.dtype == np.float32 and norm.max() == 1.0 and norm.min() == 0.0


def test_best_class_is_softmax_then_max_over_the_non_background_classes(detector):
    rows = detector["features"][0].reshape(16, -1).T[:200]  # (200, 16) real activations as class logits,
    rows = rows[:, rows.std(0) > 0]  # the live channels (ReLU leaves some at 0),
    logits = 2 * (rows - rows.mean(0)) / rows.std(0)  # each standardised: no one class wins every row
    scores, labels = glue.best_class(logits)
    probs = torch.softmax(torch.from_numpy(logits), dim=1)
    best, theirs = probs[:, 1:].max(dim=1)
    np.testing.assert_array_equal(labels, theirs.numpy() + 1)
    np.testing.assert_allclose(scores, best.numpy(), rtol=1e-6)
    assert labels.dtype == np.int64 and len(np.unique(labels)) > 3 and (labels > 0).all()
    all_scores, all_labels = glue.best_class(logits, background=None)
    np.testing.assert_array_equal(all_labels, probs.argmax(dim=1).numpy())
    assert (all_labels == 0).any()  # column 0 wins somewhere: leaving it out above was a real choice


def test_nonzero_reshape_and_constant_match_torch():
    mask = np.array([1, 0, 1, 1, 0, 0], np.int64)
    np.testing.assert_array_equal(glue.nonzero(mask), torch.nonzero(torch.from_numpy(mask)).flatten().numpy())
    assert glue.nonzero(mask.astype(bool)).tolist() == [0, 2, 3] and glue.nonzero(np.zeros(3)).shape == (0,)
    x = np.arange(24, dtype=np.float32).reshape(1, 6, 4)
    np.testing.assert_array_equal(glue.reshape(x, [-1, 4]), torch.from_numpy(x).reshape(-1, 4).numpy())
    step = glue.get_glue("reshape")
    (y,) = step({"x": x}, {"shape": [1, 1, 24]})
    assert y.shape == (1, 1, 24)
    for value, dtype in (([[101]], "int64"), ([0.5, 2.0], "float32"), (3, "int32")):
        np.testing.assert_array_equal(glue.constant(value, dtype), torch.tensor(value, dtype=getattr(torch, dtype)))
        assert glue.constant(value, dtype).dtype == np.dtype(dtype)
    assert glue.get_glue("constant").inputs == () and glue.get_glue("anchor_grid").inputs == ()

# -- refusals ---------------------------------------------------------------------------------------------
def test_bad_inputs_are_refused_naming_the_problem():
    good = np.array([[0, 0, 4, 4], [1, 1, 5, 5]], np.float32)
    scores = np.array([0.5, 0.6], np.float32)
    cases = [
        (lambda: glue.nms(good[:, :3], scores, 0.5), ShapeError, r"shape \[2, 3\].*\(N, 4\)"),
        (lambda: glue.nms(good.astype(np.int64), scores, 0.5), DTypeError, "int64.*astype"),
        (lambda: glue.nms(np.where(good == 4, np.nan, good), scores, 0.5), NonFiniteInputError, r"nan at index \[0, 2\]"),
        (lambda: glue.nms(good[:, [2, 1, 0, 3]], scores, 0.5), glue.InvalidBoxError, "row 0.*negative width"),
        (lambda: glue.nms(good, scores[:1], 0.5), ShapeError, "one per row of boxes"),
        (lambda: glue.roi_align(np.zeros((2, 3, 8, 8), np.float32), good, 2), ShapeError, "features hold 2 images"),
        (lambda: glue.roi_align(np.zeros((1, 3, 8, 8), np.float32), np.array([[1, 0, 0, 2, 2]], np.float32), 2),
         ValueRangeError, "batch index 1.0"),
        (lambda: glue.roi_align(np.zeros((1, 3, 8, 8), np.float32), good, 0), InputError, "output_size"),
        (lambda: glue.take(good, np.array([0, 2])), ValueRangeError, "holds 2.*0..1"),
        (lambda: glue.take(good, np.array([-1])), ValueRangeError, "holds -1"),
        (lambda: glue.pad_to_fixed(good, -1), InputError, "n must be an integer >= 0"),
        (lambda: glue.multiscale_roi_align([np.zeros((1, 3, 8, 8), np.float32)] * 2, good, 2, strides=[4, 16]),
         InputError, "consecutive powers of two"),
        (lambda: glue.decode_boxes(good, np.zeros((2, 5), np.float32)), ShapeError, r"\(2, 4 \* K\)"),
        (lambda: glue.greedy_decode(lambda ids: np.zeros((1, 3)), np.array([[1, 2]]), 0, 1), InputError, "max_len 1"),
        (lambda: glue.get_glue("soft_nms"), UsageError, "registered steps: .*nms"),
        (lambda: glue.anchor_grid(100, [8, 16], 4.0, [1.0]), InputError, "divisible by every stride"),
        (lambda: glue.clip_boxes_to_image(good, np.array([4])), ShapeError, "image_hw.*height, width"),
        (lambda: glue.normalize_boxes(good, np.array([0, 4])), InputError, "zero size"),
        (lambda: glue.best_class(np.zeros((2, 1), np.float32)), ShapeError, "background column"),
        (lambda: glue.best_class(np.zeros((2, 3), np.float32), background=3), InputError, "column index 0..2"),
        (lambda: glue.nonzero(np.ones((2, 2))), ShapeError, "1-D"),
        (lambda: glue.reshape(good, [3, -1]), ShapeError, r"cannot be reshaped to \[3, -1\]"),
        (lambda: glue.reshape(good, [-1, -1]), InputError, "at most one -1"),
        (lambda: glue.constant([1.5], "int64"), InputError, "non-integers"),
        (lambda: glue.constant([1], "complex64"), DTypeError, "dtype must be one of"),
        (lambda: glue.greedy_decode_fixed(lambda ids: np.zeros((1, 3)), np.array([[1]]), 4, 2), ShapeError, r"expected \(B, length, V\)"),
        (lambda: glue.get_glue("nms")({"boxes": good, "scores": scores}, {"iou": 0.5}), UsageError, "no parameter"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()


def test_every_registered_step_is_tested_here_and_imports_without_torch():
    tested = {"nms", "batched_nms", "box_iou", "decode_boxes", "clip_boxes", "remove_small_boxes", "roi_align",
              "multiscale_roi_align", "top_k", "take", "pad_to_fixed", "greedy_decode", "greedy_decode_fixed",
              "anchor_grid", "clip_boxes_to_image", "normalize_boxes", "best_class", "nonzero", "reshape", "constant"}
    assert set(glue.GLUE) == tested, "a new glue step needs a test against its torch counterpart here"
    assert glue.get_glue("top_k").outputs == ("values", "indices") and glue.get_glue("greedy_decode").calls_session
    code = "import sys, device_runtime.glue, device_runtime.pipeline; assert 'torch' not in sys.modules; print('ok')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
