"""Pipelines on the device side (device_runtime.pipeline): a real multi-artifact pipeline, an ONNX detector run on a
real photo, glue (top-k, box decoding, clipping, NMS, padding to a fixed count, RoIAlign), a `.tflite` head and an
ONNX decoder driven token by token, checked against the same composition in PyTorch with torchvision's ops; the
same from a verification bundle; and every malformed pipeline.json refused at load, naming the problem.

The artifacts are exported here (TorchScript ONNX exports take ~0.2 s each). The `.tflite` head is a
FULLY_CONNECTED flatbuffer written with LiteRT's own schema module rather than through litert-torch, whose
import and conversion alone would cost ~20 s: LiteRT still runs it, through the project's tflite backend."""
from __future__ import annotations

import copy
import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torchvision.models.detection._utils import BoxCoder

import device_runtime
from device_runtime import NonFiniteInputError, PipelineError, PipelineSession, ShapeError
from device_runtime.bundle import BundleError
from device_runtime.errors import UsageError

IMAGE, STRIDE, TOP, KEEP, VOCAB = 64, 4, 24, 16, 12


class Detector(torch.nn.Module):
    """A conv backbone and a 1x1 head: a feature map, and per location one anchor's deltas and score."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
                                            torch.nn.Conv2d(8, 8, 3, stride=2, padding=1), torch.nn.ReLU())
        self.head = torch.nn.Conv2d(8, 5, 1)
        side = IMAGE // STRIDE
        cy, cx = torch.meshgrid((torch.arange(side) + 0.5) * STRIDE, (torch.arange(side) + 0.5) * STRIDE, indexing="ij")
        centres = torch.stack([cx, cy], -1).reshape(-1, 2)
        self.register_buffer("anchors", torch.cat([centres - 8, centres + 8], 1))

    def forward(self, image):
        features = self.backbone(image)
        out = self.head(features).flatten(2)[0].t()  # (locations, 5)
        anchors = self.anchors + 0 * out[:, :4]  # computed from the input: the exporter would fold a bare constant away
        return features, out[:, :4] * 0.5, torch.sigmoid(out[:, 4]), anchors


class Decoder(torch.nn.Module):
    """Token embedding plus a summary of the regions' logits: next-token logits at every position."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.memory, self.out = torch.nn.Embedding(VOCAB, 16), torch.nn.Linear(5, 16), torch.nn.Linear(16, VOCAB)

    def forward(self, input_ids, memory):
        return self.out(torch.tanh(self.embed(input_ids) + self.memory(memory).mean(0)))


def _fc_tflite(path: Path, weight: np.ndarray, bias: np.ndarray, in_shape: list[int]) -> None:
    """A one-op FULLY_CONNECTED .tflite (input flattened to rows of weight.shape[1]) with LiteRT's schema API."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as fb

    buffers = [fb.BufferT()]

    def tensor(name, shape, data=None):
        if data is not None:
            buffers.append(fb.BufferT())
            buffers[-1].data = np.frombuffer(data.astype(np.float32).tobytes(), np.uint8)
        t = fb.TensorT()
        t.name, t.shape, t.type = name.encode(), np.array(shape, np.int32), fb.TensorType.FLOAT32
        t.buffer = len(buffers) - 1 if data is not None else 0
        return t

    rows = int(np.prod(in_shape)) // weight.shape[1]
    code = fb.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = fb.BuiltinOperator.FULLY_CONNECTED
    op = fb.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, np.array([0, 1, 2], np.int32), np.array([3], np.int32)
    op.builtinOptionsType, op.builtinOptions = fb.BuiltinOptions.FullyConnectedOptions, fb.FullyConnectedOptionsT()
    graph = fb.SubGraphT()
    graph.tensors = [tensor("regions", in_shape), tensor("w", weight.shape, weight), tensor("b", bias.shape, bias),
                     tensor("logits", [rows, weight.shape[0]])]
    graph.operators, graph.inputs, graph.outputs = [op], np.array([0], np.int32), np.array([3], np.int32)
    model = fb.ModelT()
    model.version, model.subgraphs, model.operatorCodes, model.buffers = 3, [graph], [code], buffers
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(builder.Output())


def _photo() -> np.ndarray:
    import skimage.data
    from skimage.transform import resize

    return resize(skimage.data.astronaut(), (IMAGE, IMAGE), anti_aliasing=True).transpose(2, 0, 1)[None].astype(np.float32)


def _stages(eos: int) -> list[dict]:
    glue = lambda name, step, inputs, **params: {"name": name, "glue": step, "inputs": inputs, "params": params}  # noqa: E731
    return [
        {"name": "detector", "artifact": "detector.onnx", "inputs": {"image": "input.image"}},
        glue("top", "top_k", {"x": "detector.scores"}, k=TOP),
        glue("anchors", "take", {"x": "detector.anchors", "indices": "top.indices"}),
        glue("deltas", "take", {"x": "detector.deltas", "indices": "top.indices"}),
        glue("decode", "decode_boxes", {"boxes": "anchors.selected", "deltas": "deltas.selected"}, weights=[1, 1, 1, 1]),
        glue("clip", "clip_boxes", {"boxes": "decode.boxes"}, image_size=[IMAGE, IMAGE]),
        glue("nms", "nms", {"boxes": "clip.boxes", "scores": "top.values"}, iou_threshold=0.3),
        glue("kept", "take", {"x": "clip.boxes", "indices": "nms.keep"}),
        glue("pad", "pad_to_fixed", {"x": "kept.selected"}, n=KEEP),
        glue("regions", "roi_align", {"features": "detector.features", "boxes": "pad.padded"}, output_size=2,
             spatial_scale=1 / STRIDE, sampling_ratio=2, aligned=True),
        {"name": "head", "artifact": "head.tflite", "inputs": {"regions": "regions.regions"}},
        {"name": "decoder", "artifact": "decoder.onnx", "inputs": {"memory": "head.logits"}, "loop_input": "input_ids"},
        {**glue("caption", "greedy_decode", {"start_ids": "input.start_ids"}, eos_id=eos, max_len=10),
         "step": "decoder"},
    ]


def _meta(eos: int) -> dict:
    return {"schema": "pocketformer.pipeline", "schema_version": 1, "name": "tiny-detect-describe",
            "inputs": [{"name": "image", "shape": [1, 3, IMAGE, IMAGE], "dtype": "float32"},
                       {"name": "start_ids", "shape": [1, None], "dtype": "int64", "value_range": [0, VOCAB - 1]}],
            "stages": _stages(eos),
            "outputs": [{"name": "logits", "from": "head.logits"},
                        {"name": "boxes", "from": "pad.padded", "shape": [KEEP, 4], "dtype": "float32"},
                        {"name": "mask", "from": "pad.mask", "shape": [KEEP], "dtype": "bool"},
                        {"name": "ids", "from": "caption.ids", "shape": [1, None], "dtype": "int64"}]}


def _torch_reference(detector, weight, bias, decoder, image, start, eos):
    """The same pipeline in PyTorch, with torchvision's ops."""
    with torch.no_grad():
        features, deltas, scores, anchors = detector(torch.from_numpy(image))
        values, top = torch.topk(scores, TOP)
        boxes = BoxCoder((1.0, 1.0, 1.0, 1.0)).decode_single(deltas[top], anchors[top])
        boxes = torchvision.ops.clip_boxes_to_image(boxes, (IMAGE, IMAGE))
        kept = boxes[torchvision.ops.nms(boxes, values, 0.3)][:KEEP]
        padded = torch.zeros(KEEP, 4)
        padded[: len(kept)] = kept
        regions = torchvision.ops.roi_align(features, [padded], 2, 1 / STRIDE, 2, aligned=True)
        logits = regions.flatten(1) @ torch.from_numpy(weight).t() + torch.from_numpy(bias)
        ids = torch.from_numpy(start)
        while ids.shape[1] < 10 and not (ids[0, -1] == eos and ids.shape[1] > start.shape[1]):
            ids = torch.cat([ids, decoder(ids, logits)[:, -1].argmax(-1, keepdim=True)], 1)
    return {"logits": logits.numpy(), "boxes": padded.numpy(), "mask": np.arange(KEEP) < len(kept), "ids": ids.numpy()}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("pipeline")
    detector, decoder = Detector().eval(), Decoder().eval()
    image, start = _photo(), np.array([[1, 2]], dtype=np.int64)
    kwargs = {"dynamo": False}  # the TorchScript exporter: ~0.2 s for these
    torch.onnx.export(detector, (torch.from_numpy(image),), folder / "detector.onnx", input_names=["image"],
                      output_names=["features", "deltas", "scores", "anchors"], **kwargs)
    torch.onnx.export(decoder, (torch.ones(1, 3, dtype=torch.long), torch.zeros(KEEP, 5)), folder / "decoder.onnx",
                      input_names=["input_ids", "memory"], output_names=["logits"],
                      dynamic_axes={"input_ids": {1: "t"}, "logits": {1: "t"}}, **kwargs)
    rng = np.random.default_rng(0)
    weight, bias = rng.standard_normal((5, 8 * 2 * 2)).astype(np.float32), rng.standard_normal(5).astype(np.float32)
    _fc_tflite(folder / "head.tflite", weight, bias, [KEEP, 8, 2, 2])
    free = _torch_reference(detector, weight, bias, decoder, image, start, eos=-1)
    eos = int(free["ids"][0, 4])  # a token the decoder really emits: the loop stops early on it
    (folder / "pipeline.json").write_text(json.dumps(_meta(eos), indent=1))
    expected = _torch_reference(detector, weight, bias, decoder, image, start, eos)
    assert expected["mask"].any() and not expected["mask"].all(), "NMS should leave fewer boxes than KEEP"
    assert np.ptp(expected["logits"]) > 1.0 and expected["ids"].shape[1] < 10
    return {"folder": folder, "feed": {"image": image, "start_ids": start}, "expected": expected, "eos": eos}


def test_pipeline_matches_the_pytorch_composition(built):
    with device_runtime.load(built["folder"], num_threads=1) as session:
        assert isinstance(session, PipelineSession)
        assert [t.name for t in session.get_inputs()] == ["image", "start_ids"]
        assert [(t.name, t.dtype.name) for t in session.get_outputs()] == [
            ("logits", "float32"), ("boxes", "float32"), ("mask", "bool"), ("ids", "int64")]
        outputs = dict(zip(["logits", "boxes", "mask", "ids"], session.run(None, built["feed"])))
        expected = built["expected"]
        np.testing.assert_allclose(outputs["boxes"], expected["boxes"], atol=1e-4)
        np.testing.assert_array_equal(outputs["mask"], expected["mask"])
        np.testing.assert_allclose(outputs["logits"], expected["logits"], atol=1e-4)
        np.testing.assert_array_equal(outputs["ids"], expected["ids"])
        assert outputs["ids"][0, -1] == built["eos"]
        ids, = session.run(["ids"], built["feed"])
        np.testing.assert_array_equal(ids, expected["ids"])
        formats = {s["name"]: s["format"] for s in session.info["stages"] if s["kind"] == "artifact"}
        assert formats == {"detector": "onnx", "head": "tflite", "decoder": "onnx"}


def test_per_stage_timings_split_artifacts_from_glue(built):
    with device_runtime.load(built["folder"], num_threads=1) as session:
        assert session.last_timings is None
        session(**built["feed"])
        timings = session.last_timings
        ran = [s.stage for s in timings.stages]
        assert ran == [s["name"] for s in _stages(0) if s["name"] != "decoder"]  # the decoder runs inside caption
        assert {s.kind for s in timings.stages} == {"artifact", "glue"}
        assert timings.artifact_ms > 0 and timings.glue_ms > 0 and 0 < timings.glue_share < 1
        assert timings.to_dict()["total_ms"] == pytest.approx(timings.artifact_ms + timings.glue_ms)


def test_bad_feeds_and_failing_stages_say_where(built):
    with device_runtime.load(built["folder"], num_threads=1) as session:
        with pytest.raises(ShapeError, match="'image'"):
            session.run(None, {**built["feed"], "image": built["feed"]["image"][:, :2]})
        with pytest.raises(NonFiniteInputError, match="'image'"):
            session.run(None, {**built["feed"], "image": np.full_like(built["feed"]["image"], np.nan)})
        with pytest.raises(device_runtime.ValueRangeError, match="start_ids"):
            session.run(None, {**built["feed"], "start_ids": np.array([[1, VOCAB]])})
    with pytest.raises(UsageError, match=r"\{stage: backend\}"):
        device_runtime.load(built["folder"], backend="onnxruntime")


def test_a_failing_glue_stage_is_an_error_naming_the_stage(built, tmp_path):
    folder = _variant(built, tmp_path, lambda m: m["stages"][6]["params"].update(iou_threshold="high"))
    with device_runtime.load(folder) as session, pytest.raises(device_runtime.InputError, match="stage 'nms'.*iou"):
        session.run(None, built["feed"])


def test_a_glue_input_may_take_a_list_of_wires(built, tmp_path):
    """A one-level "pyramid" through multiscale_roi_align, its features a list of wires: the same regions."""
    def edit(meta):
        meta["stages"][9] = {"name": "regions", "glue": "multiscale_roi_align",
                             "inputs": {"features": ["detector.features"], "boxes": "pad.padded"},
                             "params": {"output_size": 2, "strides": [STRIDE], "sampling_ratio": 2, "aligned": True}}
    with device_runtime.load(_variant(built, tmp_path, edit)) as session:
        logits, = session.run(["logits"], built["feed"])
    np.testing.assert_allclose(logits, built["expected"]["logits"], atol=1e-4)


def test_a_bundle_holding_the_pipeline_loads_and_is_checked(built, tmp_path):
    root = tmp_path / "bundle"
    shutil.copytree(built["folder"], root)
    np.save(root / "image.npy", built["feed"]["image"])
    np.save(root / "start_ids.npy", built["feed"]["start_ids"])
    meta = {"schema": "pocketformer.bundle", "schema_version": 1, "model": {"name": "tiny-detect-describe"},
            "artifacts": [{"file": f} for f in ("detector.onnx", "head.tflite", "decoder.onnx")],
            "samples": [{"id": "s0", "inputs": {"image": "image.npy", "start_ids": "start_ids.npy"}}]}
    (root / "bundle.json").write_text(json.dumps(meta))
    sums = "".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n" for p in sorted(root.iterdir()))
    (root / "SHA256SUMS").write_text(sums)
    archive = tmp_path / "pipeline.bundle.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in root.iterdir():
            zf.write(p, p.name)
    with device_runtime.load(archive) as session:
        extracted = session.pipeline.root
        logits, ids = session.run(["logits", "ids"], built["feed"])
    np.testing.assert_allclose(logits, built["expected"]["logits"], atol=1e-4)
    np.testing.assert_array_equal(ids, built["expected"]["ids"])
    assert not extracted.exists()  # close removed the extracted copy
    (root / "pipeline.json").write_text((root / "pipeline.json").read_text().replace('"k": 24', '"k": 20'))
    with pytest.raises(BundleError, match="pipeline.json does not match its checksum"):
        device_runtime.load(root)


def _variant(built, tmp_path: Path, edit) -> Path:
    folder = tmp_path / "variant"
    shutil.copytree(built["folder"], folder)
    meta = copy.deepcopy(json.loads((folder / "pipeline.json").read_text()))
    edit(meta)
    (folder / "pipeline.json").write_text(json.dumps(meta))
    return folder


def _set(path: list, value):
    def edit(meta):
        target = meta
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return edit


REFUSALS = {
    "newer schema": (_set(["schema_version"], 2), r"version 2 pipeline; this Pocketformer reads version 1"),
    "foreign schema": (_set(["schema"], "pocketformer.bundle"), "not a pocketformer.pipeline document"),
    "unknown glue step": (_set(["stages", 6, "glue"], "soft_nms"), r"stage 'nms'.*unknown glue step 'soft_nms'; "
                                                                     r"registered steps: .*roi_align"),
    "unknown parameter": (_set(["stages", 6, "params"], {"iou": 0.5}), r"stage 'nms'.*no parameter\(s\) \['iou'\]"),
    "missing artifact": (_set(["stages", 10, "artifact"], "missing.tflite"), "artifact 'missing.tflite' is missing"),
    "artifact outside": (_set(["stages", 10, "artifact"], "../head.tflite"), "relative path inside"),
    "no such glue output": (_set(["stages", 7, "inputs", "x"], "clip.box"),
                            r"'clip.box': glue step 'clip_boxes' has no output 'box'; its outputs are \['boxes'\]"),
    "no such artifact output": (_set(["stages", 9, "inputs", "features"], "detector.feature"),
                                r"artifact stage 'detector' has no output 'feature'; its outputs are \['features'"),
    "no such input": (_set(["stages", 0, "inputs", "image"], "input.picture"), "names no pipeline input"),
    "forward reference": (_set(["stages", 6, "inputs", "scores"], "kept.selected"),
                          r"stage 'nms' input 'scores'.*'kept', which does not run before it.*cycle"),
    "cycle": (_set(["stages", 6, "inputs", "scores"], "nms.keep"), "'nms', which does not run before it"),
    "unwired artifact input": (_set(["stages", 10, "inputs"], {}), r"stage 'head'.*unwired \['regions'\]"),
    "list wire into an artifact": (_set(["stages", 10, "inputs", "regions"], ["regions.regions"]),
                                   r"stage 'head'.*maps each input of the stage to a wire"),
    "loop without step": (lambda m: m["stages"][12].pop("step"), "name the artifact stage it drives"),
    "glue output undeclared": (lambda m: m["outputs"][1].pop("shape"), r"output 'boxes' comes from glue.*declare"),
    "duplicate stage": (_set(["stages", 7, "name"], "nms"), "stage name 'nms' appears twice"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_malformed_pipelines_are_refused_at_load_naming_the_problem(built, tmp_path, case):
    edit, message = REFUSALS[case]
    with pytest.raises(PipelineError, match=message):
        device_runtime.load(_variant(built, tmp_path, edit))
