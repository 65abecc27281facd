"""Hugging Face image folders, the rest of issue 22 part 1: bare image encoders (`MobileViTModel`, `ViTModel`,
`DeiTModel`) exported as image embedders, and the `size` {height, width} stretch of ViT's and DeiT's processors
as the shared preprocessing's `resize: "stretch"` (models_zoo.data, the Android core), matched against
transformers' own processors on non-square real photos.

The folders are made here as users make them (`save_pretrained` of tiny configs beside their image processor);
the exports are fp32 ONNX and TFLite only, so the module stays within seconds.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from device_runtime.errors import UsageError
from models_zoo import get_model
from conftest import save_hf_folders

VIT_DIMS = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
IMAGENET = dict(image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Tiny bare encoders (ViT without and with its pooler, a non-square ViT, DeiT stretched then cropped,
    MobileViT), saved with their processors; also the models themselves, to compare outputs with."""
    from transformers import (DeiTConfig, DeiTImageProcessor, DeiTModel, MobileViTConfig, MobileViTImageProcessor,
                              MobileViTModel, ViTConfig, ViTImageProcessor, ViTModel)

    root = tmp_path_factory.mktemp("hf-encoders")
    made = {
        "vit-enc": (ViTModel(ViTConfig(image_size=32, patch_size=8, **VIT_DIMS), add_pooling_layer=False),
                    ViTImageProcessor(size={"height": 32, "width": 32})),
        "vit-pool": (ViTModel(ViTConfig(image_size=32, patch_size=8, **VIT_DIMS)),
                     ViTImageProcessor(size={"height": 32, "width": 32})),
        "vit-wide": (ViTModel(ViTConfig(image_size=[24, 40], patch_size=8, **VIT_DIMS), add_pooling_layer=False),
                     ViTImageProcessor(size={"height": 24, "width": 40})),
        "deit-enc": (DeiTModel(DeiTConfig(image_size=64, patch_size=16, **VIT_DIMS), add_pooling_layer=False),
                     DeiTImageProcessor(size={"height": 72, "width": 72}, crop_size={"height": 64, "width": 64},
                                        **IMAGENET)),
        "mvit-enc": (MobileViTModel(MobileViTConfig(image_size=64, neck_hidden_sizes=[8, 8, 16, 16, 24, 24, 32],
                                                    hidden_sizes=[16, 24, 32], num_attention_heads=2)),
                     MobileViTImageProcessor(size={"shortest_edge": 72}, crop_size={"height": 64, "width": 64})),
    }
    return save_hf_folders(root, made)  # transformers' own init of these tiny configs barely varies by photo


def _theirs(model, pixels: np.ndarray, pooling: str):
    """The embedding transformers' own model gives, as the export's docstring chooses it."""
    import torch

    with torch.no_grad():
        out = model(pixel_values=torch.from_numpy(np.ascontiguousarray(pixels)))
    return (out.last_hidden_state[:, 0] if pooling == "cls" else out.pooler_output).numpy()


def test_bare_encoders_are_read_as_image_embedders(folders):
    import torch

    from models_zoo.user_models import supported_architectures

    root, models = folders
    assert {"MobileViTModel", "ViTModel", "DeiTModel"} <= set(supported_architectures())
    pooling = {"vit-enc": "cls", "vit-pool": "pooler", "deit-enc": "cls", "mvit-enc": "pooler"}
    for name, how in pooling.items():
        spec = get_model(str(root / name))
        described = spec.describe()
        assert (spec.task, spec.output_names, spec.labels()) == ("image-embedding", ("image_embedding",), None)
        assert spec.family == {"vit": "vit", "dei": "deit", "mvi": "mobilevit"}[name[:3]]
        assert "preprocessing_note" not in described and described["pooling"]
        assert spec.tolerance("int8").min_cosine and spec.tolerance("int8").min_top1 is None
        module = spec.build()
        feeds = [f["pixel_values"] for f in spec.sample_inputs()[:3]]  # 3 of the 6 photos: each forward costs
        with torch.no_grad():
            ours = np.concatenate([module(torch.from_numpy(x)).numpy() for x in feeds])
        # MobileViT: the folder's RGB->BGR flip is in the graph; its own model is fed BGR.
        theirs = np.concatenate([_theirs(models[name], x[:, ::-1] if name == "mvit-enc" else x, how) for x in feeds])
        assert ours.shape == (3, 32) and float(ours.std(0).min()) > 1e-3, (name, ours)  # differs photo to photo
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6, err_msg=name)
    assert "pooler's output" in get_model(str(root / "vit-pool")).describe()["pooling"]
    assert "class token" in get_model(str(root / "vit-enc")).describe()["pooling"]


def test_the_stretch_is_transformers_own_preprocessing(folders):
    from PIL import Image
    from transformers import DeiTImageProcessor, ViTImageProcessor
    from transformers.models.deit.image_processing_pil_deit import DeiTImageProcessorPil
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    from models_zoo.data import photo_paths, preprocess_image

    root, _ = folders
    photos = [p for p in photo_paths() if p.name in ("chelsea.png", "rocket.jpg")]  # 451x300 and 427x640
    cases = (("vit-enc", ViTImageProcessorPil, ViTImageProcessor, [32, 32]),
             ("vit-wide", ViTImageProcessorPil, ViTImageProcessor, [24, 40]),
             ("deit-enc", DeiTImageProcessorPil, DeiTImageProcessor, [64, 64]))
    for name, pil_cls, torchvision_cls, size in cases:
        prep = get_model(str(root / name)).preprocessing()
        assert prep["resize"] == "stretch" and prep["size"] == size, prep
        for photo in photos:
            image = Image.open(photo).convert("RGB")
            assert image.width != image.height
            ours = preprocess_image(photo, prep)
            # The Pillow backend resizes with Pillow as the zoo does: the same tensor, element for element.
            pil = pil_cls.from_pretrained(str(root / name))(image, return_tensors="np")["pixel_values"]
            np.testing.assert_array_equal(ours, pil, err_msg=f"{name} {photo.name}")
            # The default (torchvision) backend resamples on its own: measured at most one level of 255 apart on
            # 0.1-0.4 % of the elements (exactly 1/255, before normalisation), the rest equal.
            tv = torchvision_cls.from_pretrained(str(root / name))(image, return_tensors="np")["pixel_values"]
            levels = np.abs(ours - tv) * min(prep["std"]) * 255
            assert levels.max() <= 1 + 1e-4 and (levels < 1e-3).mean() > 0.99, (name, photo.name, levels.max())
            # The short-side crop (a block without the key, as before) is another image here: the mode counts.
            old = preprocess_image(photo, {k: v for k, v in prep.items() if k != "resize"})
            assert np.abs(old - ours).max() > 0.5


def test_embedding_folders_export_verify_and_run(folders, tmp_path, capsys):
    import device_runtime
    import sdk
    from PIL import Image
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    from models_zoo.data import photo_paths, preprocess_image
    from sdk.cli.app import EXIT_OK, main

    root, models = folders
    # ViT only: each export costs ~6-12 s here, and MobileViT's embedding (the wrapper's spatial mean) is checked
    # against transformers' pooler_output in the test above.
    results = sdk.export(str(root / "vit-enc"), ["onnx", "tflite"], out_dir=tmp_path)
    for result in results:
        report = json.loads(result.report_path.read_text())["model"]
        assert result.passed and report["task"] == "image-embedding" and not report.get("labels")
        assert report["outputs"] == ["image_embedding"]
        lowering = result.parity["lowering"]
        assert lowering["cosine"] > 0.9999 and lowering["sqnr_db"] > 60, (result.path, lowering)
    vit_onnx = results[0].path
    prep = json.loads(results[0].report_path.read_text())["model"]["preprocessing"]
    assert prep["resize"] == "stretch"  # in the manifest: `run` and bundles read it from there
    # The exported ViT fed through the zoo's preprocessing, as `pocketformer run --image` does, is transformers'
    # ViTModel fed by its own processor, on a non-square photo.
    photo = photo_paths()[0]
    pixels = ViTImageProcessorPil.from_pretrained(str(root / "vit-enc"))(Image.open(photo).convert("RGB"),
                                                                         return_tensors="np")["pixel_values"]
    ours = device_runtime.load(vit_onnx).run(None, {"pixel_values": preprocess_image(photo, prep)})[0]
    np.testing.assert_allclose(ours, _theirs(models["vit-enc"], pixels, "cls"), rtol=1e-4, atol=1e-5)
    capsys.readouterr()
    assert main(["run", str(vit_onnx), "--image", str(photo)]) == EXIT_OK
    printed = capsys.readouterr().out
    assert "image_embedding: float32[1, 32]" in printed and "L2 norm" in printed
    assert "class 0" not in printed and "p=" not in printed  # an embedding has no classes to rank


def test_what_the_shared_preprocessing_cannot_honour_is_refused(folders, tmp_path):
    from models_zoo.data import crop_origin, describe_resize, photo_paths, preprocess_image

    root, _ = folders

    def with_processor(name: str, **changes) -> Path:
        folder = tmp_path / f"{name}-{len(list(tmp_path.iterdir()))}"
        shutil.copytree(root / name, folder)
        config = json.loads((folder / "preprocessor_config.json").read_text())
        (folder / "preprocessor_config.json").write_text(json.dumps({**config, **changes}))
        return folder

    # A crop that is another fraction of each side of the stretch (MobileViT takes any size, so only this refuses).
    folder = with_processor("mvit-enc", size={"height": 72, "width": 96}, crop_size={"height": 64, "width": 64})
    with pytest.raises(UsageError, match=r"crop_size 64x64 is not the same fraction of both sides of the 72x96"):
        get_model(str(folder))
    # A margin of 3 pixels: transformers puts the crop at 3 // 2 = 1 where the zoo's rounding puts it at 2; the
    # folder's block says "floor", so the crop is the processor's.
    prep = get_model(str(with_processor("mvit-enc", size={"height": 67, "width": 67},
                                        crop_size={"height": 64, "width": 64}))).preprocessing()
    assert prep["rounding"] == "floor" and crop_origin(prep, 67, 67) == (1, 1)
    assert crop_origin({**prep, "rounding": "round"}, 67, 67) == (2, 2)
    with pytest.raises(UsageError, match="rounding 'ceil' is not one of round, floor"):
        preprocess_image(photo_paths()[0], {**prep, "rounding": "ceil"})
    # A stretch to another size than the model's grid.
    folder = with_processor("vit-enc", size={"height": 48, "width": 48})
    with pytest.raises(UsageError, match=r"size gives 48x48 images; the model takes 32x32"):
        get_model(str(folder))
    # An even margin is exact: stretch to 68, crop 64 (crop_pct 64/68 gives 68 back on both sides).
    prep = get_model(str(with_processor("mvit-enc", size={"height": 68, "width": 68},
                                        crop_size={"height": 64, "width": 64}))).preprocessing()
    assert prep["resize"] == "stretch" and int(np.floor(64 / prep["crop_pct"])) == 68
    assert describe_resize(prep) == "stretch to 68x68, not keeping the aspect ratio, and centre-crop 64x64"
    # A block from a newer export, with a mode this code does not know, is refused before the image is read.
    with pytest.raises(UsageError, match="resize 'squash' is not one of short-side, stretch"):
        preprocess_image(photo_paths()[0], {**prep, "resize": "squash"})


def test_the_android_core_stretches_as_the_sdk(tmp_path):
    """android_demo's ImagePreprocessor on stretch and floor-rounding blocks vs models_zoo.data on real photos (ImageParityTest with
    fixtures of stretch cases), and the mode's unit tests (ImageResizeModeTest)."""
    from PIL import Image
    from test_android_core import compiled_core, run_junit

    from models_zoo.data import photo_paths, preprocess_image

    classpath = compiled_core()
    fixtures, out = tmp_path / "fixtures", tmp_path / "out"
    images = fixtures / "images"
    (images / "expected").mkdir(parents=True)
    out.mkdir()
    pngs = []
    for src in photo_paths(("chelsea.png", "rocket.jpg", "camera.png")):  # landscape, portrait, grey
        Image.open(src).save(images / f"{src.stem}.png", format="PNG")  # as bundles write raw photos
        pngs.append(images / f"{src.stem}.png")
    small = images / "chelsea_small.png"  # upscaling: a 61x47 photo stretched to 224x224
    Image.open(pngs[0]).convert("RGB").resize((61, 47), Image.BICUBIC).save(small)
    base = {"kind": "image", "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.5] * 3, "resize": "stretch"}
    preps = [{**base, "size": [224, 224], "crop_pct": 1.0},  # ViT
             {**base, "size": [24, 40], "crop_pct": 1.0},  # a non-square stretch
             {**base, "size": [224, 224], "crop_pct": 0.875, "interpolation": "bicubic",  # DeiT: 256, crop 224
              "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}]
    # A Hugging Face MobileViT folder's block: the short side, transformers' truncation ("floor") of the long side
    # and of the crop offset.
    preps.append({"kind": "image", "size": [64, 64], "crop_pct": 64 / 72, "interpolation": "bicubic",
                  "mean": [0.0] * 3, "std": [1.0] * 3, "rounding": "floor"})
    cases = []
    for p, prep in enumerate(preps):
        for photo in pngs + ([small] if p == 0 else []):
            rel = f"expected/{p}_{photo.stem}.npy"
            np.save(images / rel, preprocess_image(photo, prep))
            cases.append({"photo": photo.name, "prep": prep, "expected": rel})
    (images / "cases.json").write_text(json.dumps({"cases": cases}))
    result = run_junit(classpath, fixtures, out, classes=("ImageParityTest", "ImageResizeModeTest"))
    text = result.stdout + result.stderr
    assert result.returncode == 0 and "OK (3 tests)" in text, text[-4000:]
    got = json.loads((out / "images.json").read_text())["cases"]
    assert len(got) == len(cases) == 13
    # Pillow's resampling re-implemented: the same bytes but for float rounding of the normalisation.
    assert max(c["max_abs_diff"] for c in got) <= 1 / 255 / 0.225, got
    assert min(c["exact_fraction"] for c in got) > 0.5, got
