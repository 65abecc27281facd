"""`tune` and `sweep` take the user's own `nn.Module` the way `sdk.export` does: a `spec_from_module(...)` spec.

The module is a tiny Transformer of this file's own over scikit-learn's handwritten digits read as 8 tokens of 8
pixels (real scans: its outputs differ from scan to scan). `tune(spec)` exports it to ONNX and TFLite fp32, verifies
both against PyTorch on its held-out samples, times them against eager PyTorch and links the faster; a sweep plans
it with a key that holds the module's hashes and its export task (run here directly, no Ray) exports the spec.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models_zoo.module_spec import spec_from_module

LABELS = ["zero", "one", "two"]


def _module(seed: int):
    import torch
    from torch import nn

    class RowTransformer(nn.Module):
        """Each image row a token: a projection, one encoder layer, mean-pooled, a 3-way head."""

        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(8, 16)
            self.encoder = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
            self.head = nn.Linear(16, 3)

        def forward(self, rows: torch.Tensor) -> torch.Tensor:
            return self.head(self.encoder(self.embed(rows)).mean(1))

    torch.manual_seed(seed)
    return RowTransformer().eval()


@pytest.fixture(scope="module")
def spec():
    pytest.importorskip("sklearn", reason="the digits need scikit-learn (the dev extra installs it)")
    from sklearn.datasets import load_digits

    data = load_digits()
    scans = [i for i in range(len(data.target)) if data.target[i] < 3][:8]
    feeds = [{"rows": (data.images[i][None] / 16.0).astype(np.float32)} for i in scans]
    return spec_from_module(_module(0), samples=feeds, task="image-classification", labels=LABELS,
                            name="row_transformer")


def test_tune_takes_a_user_module_spec(spec, tmp_path):
    import sdk
    from sdk.measure.tune import format_tune

    doc = sdk.tune(spec, tmp_path, formats=["onnx", "tflite"], precisions=["fp32"], runs=3, warmup=1, threads=1)
    assert doc["model"] == "row_transformer" and not doc["rejected"], doc["rejected"]
    assert sorted(c["format"] for c in doc["candidates"]) == ["onnx", "tflite"]
    assert all(c["max_abs_err_vs_fp32"] < 1e-4 and c["p50_ms"] > 0 for c in doc["candidates"])
    pick = doc["pick"]
    assert pick["p50_ms"] == min(c["p50_ms"] for c in doc["candidates"]) and doc["eager_p50_ms"] > 0
    assert Path(pick["link"]).resolve() == Path(pick["path"]).resolve()
    # Each candidate is the user's module: its manifest names the class and the state dict's hash.
    for c in doc["candidates"]:
        model = json.loads((Path(c["path"]).parent / "report.json").read_text())["model"]
        assert model["class"].endswith("RowTransformer") and model["state_dict_sha256"] == \
            spec.describe()["state_dict_sha256"] and model["labels"] == LABELS
    assert "pick: " in format_tune(doc) and json.loads((tmp_path / "row_transformer" / "tune.json").read_text())[
        "pick"]["path"] == pick["path"]


def test_sweep_plans_and_exports_a_user_module_spec(spec, tmp_path):
    """The sweep's planning and its export task (the function Ray runs, called here) with a spec: the content key
    follows the module's weights, and the task exports and verifies the spec it is given."""
    from sdk.sweep.cluster import export_folder
    from sdk.sweep.jobs import plan_exports

    args = dict(tiny=False, seq_len=None, weights=None, options={}, tools={"t": "1"})
    jobs, refused = plan_exports([spec], ["onnx"], ["fp32"], **args)
    assert not refused and len(jobs) == 1 and jobs[0].model == "row_transformer"
    (unit,) = jobs[0].units
    other = spec_from_module(_module(1), samples=[dict(f) for f in spec.held.verification + spec.held.calibration],
                             task="image-classification", labels=LABELS, name="row_transformer")
    assert repr(other) == repr(spec)  # the same name, class and inputs: only the weights tell them apart
    (again,), _ = plan_exports([other], ["onnx"], ["fp32"], **args)
    assert again.units[0].key != unit.key
    result = export_folder({**jobs[0].request, "folder": jobs[0].folder},
                           [{"format": u.format, "file": u.file, "options": u.options} for u in jobs[0].units])
    (outcome,) = result["outcomes"]
    assert outcome["status"] == "ok" and outcome["verified"] is True, outcome
    assert result["model"]["state_dict_sha256"] == spec.describe()["state_dict_sha256"]
    assert set(result["files"]) == {unit.file} and len(result["files"][unit.file]) == outcome["entry"]["size_bytes"]
