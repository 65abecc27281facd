"""MiniVLM as a pipeline model (`sdk.export.pipeline`): its four stage modules, the real inputs every stage is
verified on, the pipeline.json wiring the device's numpy glue between the artifacts, and the PyTorch reference
the whole pipeline is compared with.

The glue follows `models_zoo.minivlm_glue` step for step, in `device_runtime.glue`'s terms (argument orders
differ: `decode_boxes(boxes, deltas)` there is `decode_boxes(deltas, boxes)` here; the clip size is wired, since
each photo fills its own part of the padded input; the anchors are made on the device from five numbers):

    detector -> anchors, decode, clip, drop tiny boxes, top pre_nms, NMS, pad to N proposals (+ mask)
             -> multi-level RoIAlign (4 x 4, aligned, 2 samples) -> box_head
             -> best class, decode, clip, keep real proposals, NMS, pad to K regions (+ mask), boxes / image size
             -> fusion (VQA logits, retrieval score); caption: greedy decoding through the fixed-shape caption stage
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np

from device_runtime.errors import UsageError

STAGES = ("detector", "box_head", "fusion", "caption")
TEE = ("detector", "box_head")  # the vision stages; the others are the fusion transformer's
# Real questions, one per verification photo (models_zoo.data.SAMPLE_PHOTOS, in order).
QUESTIONS = ("What animal is lying down?", "What is in the cup?", "What is the woman holding?",
             "Where is the rocket going?", "What color is the motorcycle?", "How many stars are in the sky?")
OUTPUTS = ("vqa_logits", "retrieval_score", "region_boxes", "region_mask", "caption_ids")


class MiniVLMPipeline:
    """One MiniVLM variant as a pipeline model: `stages`, `build()`, `samples(model)`, `manifest(artifacts)`."""

    stages = STAGES
    vision_stages = TEE
    outputs = OUTPUTS

    def __init__(self, variant: str = "minivlm", tiny: bool = False) -> None:
        from models_zoo.minivlm import minivlm_config

        self.variant, self.tiny = variant, tiny
        self.config = minivlm_config(variant, tiny)
        self.name = self.config.name
        self.specs = self.config.stage_specs()

    def describe(self) -> dict[str, Any]:
        cfg = self.config
        return {"name": self.name, "family": "minivlm", "task": "vision-language (VQA, retrieval, captioning)",
                "source": "MiniVLM (Wang et al., arXiv 2012.06946), written from the paper: models_zoo/minivlm.py",
                "stages": list(STAGES), "image_size": cfg.image_size, "text_len": cfg.text_len,
                "caption_len": cfg.caption_len, "num_regions": cfg.num_regions, "num_answers": cfg.num_answers,
                "answers": "placeholder names (answer 0, answer 1, ...): no trained answer vocabulary offline",
                "weights": self.specs["weights"]}

    def build(self):
        from models_zoo.minivlm import build_minivlm

        return build_minivlm(self.variant, tiny=self.tiny)

    def prepare(self) -> tuple[Any, list[dict[str, Any]]]:
        """(the built PyTorch model, `samples(model)`), made once per process for the variant last asked: a second
        export of it (another stage's format or precision) skips the build and the reference runs. The weights
        are seeded, so a fresh build would be the same; callers must not modify what this returns."""
        return _prepared(self.variant, self.tiny)

    @staticmethod
    def modules(model) -> dict[str, Any]:
        return {"detector": model.detector, "box_head": model.box_head, "fusion": model.fusion,
                "caption": model.caption_stage}

    def stage_tolerances(self, stage: str) -> dict[str, Any] | None:
        """The stage's own tolerances where the defaults of `spec_from_module` do not fit (None: the defaults).

        The detector's outputs are BiFPN feature maps, not logits: fp32 rounding there is measured at full size as
        3.7e-4 of the maps' largest value (69 dB; LiteRT's fp32 kernels against PyTorch over ~250 layers of a
        random-init EfficientNet-B0 and BiFPN, where each layer's summation order and XNNPACK's polynomial sigmoid
        differ a little), against the 1e-5 every logit output meets. 1e-3 with a 60 dB floor bounds that; the tiny
        detector meets 1e-5 still, and the whole pipeline's fp32 check (same regions, same caption) is unchanged."""
        if stage == "detector":
            from models_zoo.spec import Tolerance

            return {"fp32": Tolerance(atol=1e-4, rtol=1e-3, min_sqnr_db=60.0)}
        return None

    def stage_io(self, stage: str) -> tuple[list[dict], list[str]]:
        """A stage's inputs (spec_from_module's dicts) and output names, from `stage_specs()`."""
        spec = self.specs["stages"][stage]
        inputs = [{k: v for k, v in i.items() if k != "dynamic_axes"} for i in spec["inputs"]]
        return inputs, [o["name"] for o in spec["outputs"]]

    # -- real inputs ---------------------------------------------------------------------------------------
    def feed(self, image, question: str) -> dict[str, np.ndarray]:
        """The pipeline's feed for a photo (a path or an HxWx3 uint8 array) and a question."""
        from models_zoo.minivlm import prepare_image, tokenize_question

        pixels, hw = prepare_image(image, self.config.image_size)
        text = tokenize_question(question, self.config)
        return {"image": pixels, "image_hw": np.asarray(hw, dtype=np.int64), **text}

    def samples(self, model) -> list[dict[str, Any]]:
        """Per real photo (models_zoo.data's verification photos, never the BatchNorm calibration ones) and its
        question: the pipeline feed, every stage's feed as the PyTorch reference computes it, and the
        reference's outputs (`reference`). Even-numbered ones verify, odd-numbered ones calibrate (as
        `spec_from_module` splits each stage's samples), so int8 stages and the whole pipeline are judged on
        photos no stage was calibrated on."""
        from models_zoo.data import photo_paths

        return [self.reference(model, self.feed(path, question), source=path.name)
                for path, question in zip(photo_paths(), QUESTIONS)]

    def reference(self, model, feed: dict[str, np.ndarray], source: str = "") -> dict[str, Any]:
        import torch

        from models_zoo.minivlm_model import greedy_decode

        hw = tuple(int(v) for v in feed["image_hw"])
        with torch.no_grad():
            r = model.regions(torch.from_numpy(feed["image"]), hw)
            regions = (r["region_features"], r["region_boxes"], r["region_mask"])
            vqa, score = model.fusion(torch.from_numpy(feed["input_ids"]), torch.from_numpy(feed["attention_mask"]),
                                      *regions)
            caption = greedy_decode(model.caption_stage, *regions, self.config.caption_len)
        region = {"region_features": regions[0].numpy(), "region_boxes": regions[1].numpy(),
                  "region_mask": regions[2].numpy().astype(np.int64)}
        stage_feeds = {"detector": {"image": feed["image"]},
                       "box_head": {"roi_features": r["roi_features"].numpy()},
                       "fusion": {"input_ids": feed["input_ids"], "attention_mask": feed["attention_mask"], **region},
                       "caption": {"input_ids": caption.numpy().astype(np.int64), **region}}
        outputs = {"vqa_logits": vqa.numpy(), "retrieval_score": score.numpy(),
                   "region_boxes": region["region_boxes"], "region_mask": region["region_mask"],
                   "caption_ids": caption.numpy().astype(np.int64)}
        return {"source": source, "feed": feed, "stages": stage_feeds, "outputs": outputs}

    # -- pipeline.json ---------------------------------------------------------------------------------------
    def manifest(self, artifacts: dict[str, str]) -> dict[str, Any]:
        """pipeline.json for `artifacts` ({stage: path relative to the pipeline folder}), every glue setting from
        `stage_specs()["glue"]`."""
        from models_zoo.minivlm_glue import DELTA_CLAMP

        missing = [s for s in STAGES if s not in artifacts]
        if missing:
            raise UsageError(f"{self.name}: no artifact for stage(s) {missing}")
        cfg, g = self.config, self.specs["glue"]
        prop, roi, reg, cap, text = g["proposals"], g["roi_align"], g["regions"], g["caption"], g["text"]
        levels = [o["name"] for o in self.specs["stages"]["detector"]["outputs"][:len(g["anchors"]["strides"])]]
        k, d = cfg.num_regions, cfg.box_hidden

        def glue(name, step, inputs=None, **params):
            return {"name": name, "glue": step, "inputs": inputs or {}, "params": params}

        def take(name, x, indices):
            return glue(name, "take", {"x": x, "indices": indices})

        hw = "input.image_hw"
        stages = [
            {"name": "detector", "artifact": artifacts["detector"], "inputs": {"image": "input.image"}},
            glue("anchors", "anchor_grid", image_size=g["image"]["size"], strides=g["anchors"]["strides"],
                 scale=g["anchors"]["scale"], ratios=g["anchors"]["ratios"]),
            glue("objectness", "reshape", {"x": "detector.objectness"}, shape=[-1]),
            glue("rpn_deltas", "reshape", {"x": "detector.rpn_deltas"}, shape=[-1, 4]),
            glue("decoded", "decode_boxes", {"boxes": "anchors.anchors", "deltas": "rpn_deltas.y"},
                 weights=prop["box_coder_weights"], clip=DELTA_CLAMP),
            glue("clipped", "clip_boxes_to_image", {"boxes": "decoded.boxes", "image_hw": hw}),
            glue("big", "remove_small_boxes", {"boxes": "clipped.boxes"}, min_size=prop["min_size"]),
            take("big_boxes", "clipped.boxes", "big.keep"),
            take("big_scores", "objectness.y", "big.keep"),
            glue("pre_nms", "top_k", {"x": "big_scores.selected"}, k=prop["pre_nms_top_n"]),
            take("pre_nms_boxes", "big_boxes.selected", "pre_nms.indices"),
            glue("rpn_nms", "nms", {"boxes": "pre_nms_boxes.selected", "scores": "pre_nms.values"},
                 iou_threshold=prop["nms_iou"]),
            take("rpn_kept", "pre_nms_boxes.selected", "rpn_nms.keep"),
            glue("proposals", "pad_to_fixed", {"x": "rpn_kept.selected"}, n=prop["count"], mask_dtype="int64"),
            glue("rois", "multiscale_roi_align", {"features": [f"detector.{n}" for n in levels],
                                                  "boxes": "proposals.padded"},
                 output_size=roi["output_size"], strides=g["anchors"]["strides"],
                 sampling_ratio=roi["sampling_ratio"], aligned=roi["aligned"], canonical_scale=roi["canonical_size"],
                 canonical_level=roi["canonical_level"]),
            {"name": "box_head", "artifact": artifacts["box_head"], "inputs": {"roi_features": "rois.regions"}},
            glue("classes", "best_class", {"logits": "box_head.class_logits"}, background=reg["background_class"]),
            glue("refined", "decode_boxes", {"boxes": "proposals.padded", "deltas": "box_head.box_deltas"},
                 weights=reg["box_coder_weights"], clip=DELTA_CLAMP),
            glue("refined_clipped", "clip_boxes_to_image", {"boxes": "refined.boxes", "image_hw": hw}),
            glue("real", "nonzero", {"mask": "proposals.mask"}),
            take("real_boxes", "refined_clipped.boxes", "real.indices"),
            take("real_scores", "classes.scores", "real.indices"),
            take("real_features", "box_head.region_features", "real.indices"),
            glue("det_nms", "nms", {"boxes": "real_boxes.selected", "scores": "real_scores.selected"},
                 iou_threshold=reg["nms_iou"]),
            take("det_boxes", "real_boxes.selected", "det_nms.keep"),
            take("det_features", "real_features.selected", "det_nms.keep"),
            glue("det_normalised", "normalize_boxes", {"boxes": "det_boxes.selected", "image_hw": hw}),
            glue("features_k", "pad_to_fixed", {"x": "det_features.selected"}, n=reg["count"]),
            glue("boxes_k", "pad_to_fixed", {"x": "det_normalised.boxes"}, n=reg["count"], mask_dtype="int64"),
            glue("region_features", "reshape", {"x": "features_k.padded"}, shape=[1, k, d]),
            glue("region_boxes", "reshape", {"x": "boxes_k.padded"}, shape=[1, k, 4]),
            glue("region_mask", "reshape", {"x": "boxes_k.mask"}, shape=[1, k]),
        ]
        regions = {"region_features": "region_features.y", "region_boxes": "region_boxes.y",
                   "region_mask": "region_mask.y"}
        stages += [
            {"name": "fusion", "artifact": artifacts["fusion"],
             "inputs": {"input_ids": "input.input_ids", "attention_mask": "input.attention_mask", **regions}},
            {"name": "caption_step", "artifact": artifacts["caption"], "inputs": dict(regions),
             "loop_input": "input_ids", "loop_output": "token_logits"},
            glue("caption_start", "constant", value=[[cap["start"]]], dtype="int64"),
            {**glue("caption", "greedy_decode_fixed", {"start_ids": "caption_start.value"}, length=cap["max_len"],
                    eos_id=cap["end"], pad_id=cap["fill"]), "step": "caption_step"},
        ]
        fusion_in = {i["name"]: i for i in self.specs["stages"]["fusion"]["inputs"]}
        inputs = [{"name": "image", "shape": [1, 3, cfg.image_size, cfg.image_size], "dtype": "float32"},
                  {"name": "image_hw", "shape": [2], "dtype": "int64", "value_range": [1, cfg.image_size]},
                  *({k: fusion_in[n][k] for k in ("name", "shape", "dtype", "value_range")}
                    for n in ("input_ids", "attention_mask"))]
        outputs = [{"name": "vqa_logits", "from": "fusion.vqa_logits"},
                   {"name": "retrieval_score", "from": "fusion.retrieval_score"},
                   {"name": "region_boxes", "from": "region_boxes.y", "shape": [1, k, 4], "dtype": "float32"},
                   {"name": "region_mask", "from": "region_mask.y", "shape": [1, k], "dtype": "int64"},
                   {"name": "caption_ids", "from": "caption.ids", "shape": [1, cap["max_len"]], "dtype": "int64"}]
        return {"schema": "pocketformer.pipeline", "schema_version": 1, "name": self.name,
                "preprocessing": {"image": g["image"], "text": text, "caption": cap,
                                  "vocab": "bert-base-uncased WordPiece (models_zoo.data.bert_vocab_path)"},
                "inputs": inputs, "stages": stages, "outputs": outputs}


@functools.lru_cache(maxsize=1)
def _prepared(variant: str, tiny: bool) -> tuple[Any, list[dict[str, Any]]]:
    model = MiniVLMPipeline(variant, tiny)
    module = model.build()
    return module, model.samples(module)


def pipeline_model(name: str) -> MiniVLMPipeline | None:
    """The pipeline model called `name` ("minivlm", or "minivlm-tiny" for its tiny variant), or None."""
    from models_zoo.minivlm import minivlm_variants

    base, tiny = (name[:-5], True) if name.endswith("-tiny") else (name, False)
    return MiniVLMPipeline(base, tiny) if base in minivlm_variants() else None
