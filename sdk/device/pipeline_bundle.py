"""A verification bundle of a pipeline folder (MiniVLM's, written by `sdk.export.pipeline`): the same
`pocketformer.bundle` v1 format as one artifact's (`sdk.device.bundles`), holding the whole pipeline as one
"artifact" (its `pipeline.json` at the bundle's root, the stage artifacts beside it under the same relative
paths), so `pocketformer verify BUNDLE --device ...` and `python -m device_runtime.bundle` run it end to end with
no change: `device_runtime.load(bundle/pipeline.json)` opens the pipeline.

What goes in: the pipeline's files and its report.json, the verification photos' feeds (photo, image size,
question tokens; the photos the export verified on), the host's pipeline outputs on them ("expected"), PyTorch's
(MiniVLM in fp32, torchvision glue: "reference"), the raw photos and questions, and SHA256SUMS. The device must
reproduce the host's outputs (the glue is deterministic numpy): the tolerance is an absolute 1e-3 over every
output, region masks and caption ids included, so a different NMS choice or caption token fails.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from device_runtime.bundle import BUNDLE_JSON, SCHEMA, SCHEMA_VERSION, run_feeds
from device_runtime.errors import UsageError
from device_runtime.pipeline import PIPELINE_JSON, read_pipeline
from sdk.device.bundle_files import seal_and_publish

DEVICE_TOLERANCE = {"atol": 1e-3}


def write_pipeline_bundle(folder: str | Path, out: str | Path, zip_: bool = False,
                          note: Callable[[str], None] | None = None) -> Path:
    """Bundle the pipeline folder `folder` (with pipeline.json and report.json) into `out` (a zip when `zip_`)."""
    from sdk.export.minivlm_pipeline import pipeline_model
    from sdk.export.pipeline import REPORT, VERIFICATION, copy_pipeline, load_verification

    note = note or (lambda message: None)
    root = Path(folder)
    pipeline = read_pipeline(root)  # refuses a folder that is no pipeline, naming the problem
    report_path = root / REPORT
    if not report_path.is_file():
        raise UsageError(f"{root} has no {REPORT}: bundle a pipeline exported by `pocketformer export`")
    report = json.loads(report_path.read_text(encoding="utf-8"))
    model = pipeline_model(pipeline.name)
    if model is None:
        raise UsageError(f"{pipeline.name} is not a pipeline model this SDK knows the samples of")
    out = Path(out)
    if out.exists() and out.is_dir() != (not zip_):
        raise UsageError(f"{out} exists and is a {'folder' if out.is_dir() else 'file'}; choose another path")
    if not (root / VERIFICATION).is_file():
        raise UsageError(f"{root} has no {VERIFICATION} (the export's verification feeds): re-export it")
    samples = load_verification(root / VERIFICATION)  # the photos the export verified on, and PyTorch's outputs
    feeds = [s["feed"] for s in samples]
    names = list(model.outputs)
    precisions = {s["precision"] for s in report["stages"].values()}
    lowest = min(precisions, key=lambda p: (p != "fp32", p))  # any quantized stage marks the whole pipeline
    with tempfile.TemporaryDirectory(prefix="pf-bundle-") as tmp:
        dest = Path(tmp) / "bundle"
        dest.mkdir()
        copy_pipeline(root, dest)
        note(f"running {root / PIPELINE_JSON} on {len(feeds)} samples for its expected outputs")
        expected, _ = run_feeds(dest / PIPELINE_JSON, feeds, names)
        listed_samples = []
        for i, (sample, outs) in enumerate(zip(samples, expected)):
            sid = f"{i:03d}"
            inputs = {}
            for name, array in sample["feed"].items():
                inputs[name] = f"inputs/{sid}/{name}.npy"
                _save(dest / inputs[name], array)
            for name, array in zip(names, outs):
                _save(dest / "expected" / PIPELINE_JSON / sid / f"{name}.npy", array)
            for name in names:
                _save(dest / "reference" / sid / f"{name}.npy", sample["outputs"][name])
            photo = dest / "raw" / f"{sid}-{sample['source']}"
            photo.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(_photo(sample["source"]), photo)
            listed_samples.append({"id": sid, "source": sample["source"], "inputs": inputs,
                                   "question": _question(sample["source"])})
        entry = {"file": PIPELINE_JSON, "format": "pipeline", "precision": lowest, "requested_precision": lowest,
                 "stages": report["stages"], "end_to_end": {k: report["end_to_end"].get(k) for k in
                                                            ("passed", "tolerance", "fused", "regions", "caption")},
                 "weights": report["model"].get("weights")}
        inputs_meta = [{"name": t.name, "shape": list(t.shape), "dtype": np.dtype(t.dtype).name,
                        "value_range": list(t.value_range) if t.value_range else None} for t in pipeline.inputs]
        meta = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "model": {**report["model"], "outputs": names, "inputs": inputs_meta, "task": "pipeline"},
                "artifacts": [{"file": PIPELINE_JSON, "entry": entry, "expected": f"expected/{PIPELINE_JSON}",
                               "tolerance": DEVICE_TOLERANCE}],
                "samples": listed_samples,
                "raw": {"kind": "image+question", "files": sorted(p.relative_to(dest).as_posix()
                                                                  for p in (dest / "raw").iterdir())}}
        (dest / BUNDLE_JSON).write_text(json.dumps(meta, indent=2, default=str), encoding="utf-8")
        seal_and_publish(dest, out, zip_)
    note(f"bundle: {out}")
    return out


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.asarray(array), allow_pickle=False)


def _photo(name: str) -> Path:
    from models_zoo.data import photo_paths

    return photo_paths((name,))[0]


def _question(source: str) -> str:
    """The question asked about photo `source` at export (sdk.export.minivlm_pipeline.QUESTIONS, one per photo)."""
    from models_zoo.data import SAMPLE_PHOTOS
    from sdk.export.minivlm_pipeline import QUESTIONS

    return QUESTIONS[SAMPLE_PHOTOS.index(source)] if source in SAMPLE_PHOTOS else ""
