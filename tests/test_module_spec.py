"""Any `nn.Module` as the model (`models_zoo.module_spec.spec_from_module`), through the export pipeline unchanged.

The user's model here is a Transformer of this file's own (a conv stem, one `nn.TransformerEncoderLayer`, a
linear head over 3 classes) on 1x3x32x32 images, trained for a few seconds on scikit-learn's bundled handwritten
digits 0-2 (real 8x8 scans, upsampled): random-init weights give near-tied logits that say nothing about what
int8 does (ONNX Runtime's int8 of the untrained net measured 7-15 dB vs fp32; trained, 29 dB). Its samples are
held-out scans. Without scikit-learn the photo test still runs: an untrained copy on scikit-image's bundled
photos, read from a folder through `preprocess`.
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from device_runtime.errors import UsageError
from models_zoo import InputSpec, Tolerance
from models_zoo.bert import BERT_TOLERANCES
from models_zoo.data import CALIBRATION_SENTENCES, SAMPLE_SENTENCES, photo_paths, preprocess_image
from models_zoo.module_spec import spec_from_module, state_dict_sha256
from models_zoo.timm_vision import VISION_TOLERANCES

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["zero", "one", "two"]
PREP_32 = {"size": [32, 32], "crop_pct": 1.0, "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.5] * 3}
TRAIN = 400  # digits 0-2: 537 scans; the first 400 train, 16 of the rest are the samples


def _vit_class():
    import torch
    from torch import nn

    class TinyViT(nn.Module):
        def __init__(self, classes: int = 3, dim: int = 16, patch: int = 8):
            super().__init__()
            self.stem = nn.Conv2d(3, dim, patch, stride=patch)
            self.encoder = nn.TransformerEncoderLayer(dim, 2, 2 * dim, dropout=0.0, batch_first=True)
            self.head = nn.Linear(dim, classes)

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            tokens = self.stem(image).flatten(2).transpose(1, 2)
            return self.head(self.encoder(tokens).mean(1))

    return TinyViT


@pytest.fixture(scope="module")
def digits():
    """(trained TinyViT, 16 held-out sample feeds, its held-out accuracy)."""
    pytest.importorskip("sklearn", reason="the digits task needs scikit-learn (the dev extra installs it)")
    import torch
    from sklearn.datasets import load_digits

    data = load_digits()
    keep = data.target < 3
    x = torch.tensor(data.images[keep] / 16.0, dtype=torch.float32)[:, None]
    x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    x, y = (x - 0.5) / 0.5, torch.tensor(data.target[keep])
    torch.manual_seed(2)
    model = _vit_class()()
    optimiser = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(5):
        order = torch.randperm(TRAIN)
        for start in range(0, TRAIN, 50):
            batch = order[start:start + 50]
            loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    model.eval()
    with torch.no_grad():
        accuracy = float((model(x[TRAIN:]).argmax(1) == y[TRAIN:]).float().mean())
    feeds = [{"image": x[i:i + 1].numpy().copy()} for i in range(TRAIN, TRAIN + 16)]
    return model, feeds, accuracy


@pytest.fixture(scope="module")
def exported(digits, tmp_path_factory):
    """fp32 to ONNX and .pte, int8 (the vision recipe: int8-static, calibrated) to ONNX, of the digits model."""
    import sdk

    model, feeds, _ = digits
    before = state_dict_sha256(model)
    out = tmp_path_factory.mktemp("module-exports")
    spec = spec_from_module(model, samples=feeds, task="image-classification", labels=LABELS,
                            inputs=[{"name": "image", "shape": [1, 3, 32, 32], "dtype": "float32"}])
    fp32 = sdk.export(spec, formats=["onnx", "pte"], precision="fp32", out_dir=out)
    int8 = sdk.export(spec, formats=["onnx"], precision="int8", out_dir=out)
    return spec, fp32, int8, before


def test_a_trained_module_exports_and_verifies_at_fp32_and_int8(digits, exported):
    model, feeds, accuracy = digits
    spec, fp32, int8, before = exported
    assert accuracy > 0.5  # 3 classes: chance is 0.33
    assert [r.format for r in fp32] == ["onnx", "pte"] and all(r.passed for r in fp32 + int8)
    assert str(int8[0].precision) == "int8-static"
    for result in fp32 + int8:
        low = result.parity["lowering"]
        assert low["samples"] == 8 and low["reference_scale"] > 0.1 and np.isfinite(low["max_abs_err"])
        assert low["top1_agreement"] >= 0.5
    quant = int8[0].parity["quantization"]
    # Quantized: a real error, but a bounded one (measured 29 dB vs fp32, top-1 7/8 on the held-out scans).
    assert 0 < quant["max_abs_err"] < 0.3 * quant["reference_scale"] and 15 < quant["sqnr_db"] < 80
    assert quant["cosine"] > 0.9 and int8[0].parity["on_calibration_samples"]["samples"] == 8
    assert int8[0].entry.calibration == {"source": "the spec's real calibration samples", "samples": 8}
    # The user's module is left as it was.
    assert state_dict_sha256(model) == before and not model.training


def test_the_manifest_records_the_class_hashes_and_labels(exported):
    spec, fp32, int8, _ = exported
    for result in fp32 + int8:
        report = json.loads(result.report_path.read_text())
        model = report["model"]
        assert model["class"].endswith("TinyViT") and model["family"] == "module"
        assert model["state_dict_sha256"] == spec.describe()["state_dict_sha256"] and len(model["samples_sha256"]) == 64
        assert model["labels"] == LABELS and model["task"] == "image-classification"
        assert model["inputs"][0]["name"] == "image" and model["outputs"] == ["logits"]
        assert model["samples"] == {"source": "16 feeds given", "verification": 8, "calibration": 8}
        weights = report["artifacts"][result.path.name]["weights"]
        assert weights["source"] == "module" and weights["state_dict_sha256"] == model["state_dict_sha256"]
    assert fp32[0].report_path.parent.name == "fp32" and int8[0].report_path.parent.name == "int8"


def test_build_is_a_copy_and_replace_keeps_the_module(digits):
    import torch

    model, feeds, _ = digits
    spec = spec_from_module(model, samples=feeds, task="image-classification")
    built = spec.build()
    assert built is not model and not built.training and spec.build() is not built
    assert built.pocketformer_weights == {"source": "module", "class": spec.describe()["class"],
                                          "state_dict_sha256": state_dict_sha256(model)}
    with torch.no_grad():
        assert torch.equal(built(torch.from_numpy(feeds[0]["image"])), model(torch.from_numpy(feeds[0]["image"])))
    renamed = dataclasses.replace(spec, name="digits")
    assert renamed.name == "digits" and renamed.held is spec.held and len(renamed.sample_inputs()) == 8
    # The verification and calibration samples alternate, held apart.
    verification, calibration = spec.sample_inputs(), spec.calibration_inputs()
    assert np.array_equal(verification[1]["image"], feeds[2]["image"])
    assert np.array_equal(calibration[1]["image"], feeds[3]["image"])


def test_inputs_and_tolerances_from_one_feed(digits):
    model, feeds, _ = digits
    spec = spec_from_module(model, samples=feeds, task="image-classification",
                            tolerances={"int8": Tolerance(atol=1e-3, rtol=0.5, min_sqnr_db=10.0)})
    assert spec.input_specs() == (InputSpec("image", (1, 3, 32, 32), "float32"),)
    assert spec.output_names == ("logits",) and spec.int8_scheme == "static" and spec.labels() is None
    assert spec.tolerance("int8-static").min_sqnr_db == 10.0 and spec.tolerance("fp32") == VISION_TOLERANCES["fp32"]
    assert spec.preprocessing() == {"kind": "tensor", "inputs": ["image"], "samples": "16 feeds given"}


def test_a_folder_of_photos_with_preprocess(tmp_path):
    """No scikit-learn needed: real photos read from a folder through the user's preprocess function."""
    import shutil

    import torch

    import sdk

    folder = tmp_path / "photos"
    folder.mkdir()
    for path in photo_paths()[:5]:
        shutil.copy2(path, folder / path.name)
    torch.manual_seed(0)
    model = _vit_class()(patch=4)
    spec = spec_from_module(model, samples=folder, preprocess=lambda p: {"image": preprocess_image(p, PREP_32)},
                            task="image-classification", name="photo-vit")
    assert len(spec.sample_inputs()) == 3 and len(spec.calibration_inputs()) == 2
    assert spec.describe()["samples"]["source"].startswith(f"5 images from {folder}")
    (result,) = sdk.export(spec, formats=["onnx"], precision="fp32", out_dir=tmp_path / "out")
    assert result.passed and result.parity["lowering"]["samples"] == 3
    assert len(spec.feeds_from(str(folder))) == 5  # `export(calibration=folder)` reads it the same way


def _text_class():
    import torch
    from torch import nn

    class TinyTextEncoder(nn.Module):
        """Bytes in, a mean-pooled sentence embedding and the token states out."""

        def __init__(self, dim: int = 16):
            super().__init__()
            self.embed = nn.Embedding(256, dim)
            self.encoder = nn.TransformerEncoderLayer(dim, 2, 2 * dim, dropout=0.0, batch_first=True)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
            states = self.encoder(self.embed(input_ids))
            mask = attention_mask.unsqueeze(-1).to(states.dtype)
            return (states * mask).sum(1) / mask.sum(1), states

    return TinyTextEncoder


def _bytes_feed(sentence: str, length: int = 16) -> dict:
    ids = list(sentence.encode("utf-8"))[:length]
    pad = length - len(ids)
    return {"input_ids": np.asarray([ids + [0] * pad], np.int64),
            "attention_mask": np.asarray([[1] * len(ids) + [0] * pad], np.int64)}


def test_a_text_file_with_preprocess_and_a_tuple_output(tmp_path):
    import torch

    import sdk

    text = tmp_path / "sentences.txt"
    text.write_text("\n".join(SAMPLE_SENTENCES[:4] + CALIBRATION_SENTENCES[:2]) + "\n\n", encoding="utf-8")
    torch.manual_seed(0)
    inputs = [{"name": n, "shape": (1, 16), "dtype": "int64", "dynamic_axes": {1: "sequence"}}
              for n in ("input_ids", "attention_mask")]
    spec = spec_from_module(_text_class()(), inputs=inputs, samples=text, preprocess=_bytes_feed, task="embedding")
    assert spec.name == "TinyTextEncoder" and spec.output_names == ("output_0", "output_1")
    assert spec.int8_scheme == "dynamic" and spec.tolerance("int8-dynamic") == BERT_TOLERANCES["int8"]
    assert spec.input_specs()[0].dynamic_axes == {1: "sequence"}
    assert len(spec.sample_inputs()) == 3 and len(spec.calibration_inputs()) == 3
    assert spec.preprocessing()["function"].endswith("_bytes_feed")
    assert len(spec.feeds_from(str(text))) == 6
    named = spec_from_module(_text_class()(), samples=text, preprocess=_bytes_feed, task="embedding",
                             output_names=["sentence_embedding", "token_states"])
    assert named.output_names == ("sentence_embedding", "token_states") and named.input_specs()[1].dynamic_axes == {}
    (result,) = sdk.export(named, formats=["onnx"], precision="fp32", out_dir=tmp_path / "out")
    assert result.passed and set(result.parity["lowering"]["outputs"]) == {"sentence_embedding", "token_states"}


def test_refusals_name_the_problem(tmp_path):
    import torch

    torch.manual_seed(0)
    model = _vit_class()()
    feeds = [{"image": np.random.default_rng(i).standard_normal((1, 3, 32, 32)).astype(np.float32)} for i in range(6)]
    with pytest.raises(UsageError, match="3 samples given; at least 4"):
        spec_from_module(model, samples=feeds[:3])
    with pytest.raises(UsageError, match="2 labels for .*TinyViT, whose output has 3 classes"):
        spec_from_module(model, samples=feeds, task="image-classification", labels=["cat", "dog"])
    wrong = feeds[:4] + [{"image": np.zeros((1, 3, 28, 28), np.float32)}]
    with pytest.raises(UsageError, match=r"sample 4 \(of 5\): input 'image' is float32\[1, 3, 28, 28\], the "
                                         r"inputs say float32\[1, 3, 32, 32\]"):
        spec_from_module(model, samples=wrong)
    with pytest.raises(UsageError, match=r"sample 0 \(of 6\): input 'image' is float64"):
        spec_from_module(model, samples=[{"image": f["image"].astype(np.float64)} for f in feeds],
                         inputs=[InputSpec("image", (1, 3, 32, 32), "float32")])
    with pytest.raises(UsageError, match="samples 0 and 4 are identical"):
        spec_from_module(model, samples=feeds[:4] + feeds[:1])
    with pytest.raises(UsageError, match="labels name a classifier's classes"):
        spec_from_module(model, samples=feeds, task="embedding", labels=LABELS)
    with pytest.raises(UsageError, match="holds images; give preprocess=fn"):
        spec_from_module(model, samples=photo_paths()[0].parent)
    with pytest.raises(UsageError, match="batch 1"):
        spec_from_module(model, samples=[{"image": np.zeros((2, 3, 32, 32), np.float32)}] * 4)
    with pytest.raises(UsageError, match="failed on sample 0"):
        spec_from_module(model, samples=[{"image": f["image"][:, :1]} for f in feeds])
    with pytest.raises(UsageError, match="unknown precision 'int9'"):
        spec_from_module(model, samples=feeds, tolerances={"int9": Tolerance(atol=1.0)})
    with pytest.raises(UsageError, match="calibration data from .* needs a preprocess function"):
        spec_from_module(model, samples=feeds).feeds_from(str(tmp_path))


def test_importing_the_zoo_does_not_import_torch():
    code = "import sys, models_zoo, models_zoo.module_spec; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
