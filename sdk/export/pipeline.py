"""Exporting a pipeline model (MiniVLM): several artifacts, each its own format and precision, joined on the
device by numpy glue (`device_runtime.pipeline`), and verified stage by stage and end to end.

    sdk.export("minivlm-tiny", ["tflite", "pte"])                 # the TEE in .tflite, the transformer in .pte
    sdk.export("minivlm", ["onnx"], stages={"detector": ("tflite", "int8"), "fusion": "pte"})

1. Each stage's format and precision: one format for every stage; two formats: the vision stages (detector,
   box head) take the first and the transformer stages (fusion, caption) the second; `stages` overrides any
   stage (`"fmt"`, `("fmt", "precision")` or `{"format", "precision"}`). Anything refused is refused first.
2. The PyTorch model is built once; real photos (models_zoo.data's verification photos, never the BatchNorm
   calibration ones) and real questions go through it, giving every stage's real inputs.
3. Each stage module becomes a spec (`spec_from_module`) exported by `sdk.export` like any model: converted,
   verified alone against PyTorch on its held-out real inputs, recorded in its own report.json. Those inputs
   alternate: even-numbered photos verify, odd-numbered ones calibrate an int8 stage.
4. pipeline.json wires the artifacts with the glue; the whole pipeline is loaded with `device_runtime.load` and
   compared end to end with `MiniVLM` in PyTorch on the verification photos: VQA logits and the retrieval score
   (error, SQNR, cosine, top-1), the regions (mask and box agreement) and the greedy caption (token agreement).
   The figures go to the pipeline's report.json; a pipeline that misses its tolerance is a `ParityError`, and
   its pipeline.json is put back as it was.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from converters import get_converter, parity as checks
from converters.base import UnknownOptionError
from device_runtime import atomic
from device_runtime.errors import PocketformerError, UsageError
from device_runtime.pipeline import PIPELINE_JSON
from sdk.console.progress import Progress
from sdk.export.minivlm_pipeline import pipeline_model

REPORT = "report.json"
VERIFICATION = "verification.npz"  # the feeds and PyTorch outputs the pipeline was verified on (bundles reuse them)
REPORT_SCHEMA = "pocketformer.pipeline-report"
# End-to-end tolerances, from figures measured on the tiny and full variants' verification photos (see
# tests/test_minivlm_pipeline.py). fp32 artifacts differ from PyTorch by float rounding only, and NMS made the same
# choices on every photo: VQA and retrieval within 1e-3 relative, the same regions and caption. Once a stage is
# quantized, NMS may keep other boxes (a discrete choice on scores that moved), so regions and the caption may
# differ; the fused outputs must keep their direction (cosine) and most of their signal (SQNR).
E2E_TOLERANCES = {
    "fp32": {"max_rel_err": 1e-3, "min_cosine": 0.99999, "min_region_agreement": 1.0, "max_box_err": 1e-3,
             "min_caption_agreement": 1.0},
    "quantized": {"max_rel_err": None, "min_cosine": 0.9, "min_sqnr_db": 5.0, "min_region_agreement": 0.5,
                  "max_box_err": None, "min_caption_agreement": 0.0},
}


def is_pipeline_model(model: Any) -> bool:
    """Whether `model` names a pipeline model ("minivlm", "minivlm-tiny"): not a zoo model, exported here."""
    return isinstance(model, str) and pipeline_model(model) is not None


def list_pipeline_models() -> list[str]:
    from models_zoo.minivlm import minivlm_variants

    return minivlm_variants()


@dataclass
class PipelineExportResult:
    """What `sdk.export` returns (in a list of one) for a pipeline model."""

    model: str
    format: str
    path: Path  # the pipeline folder
    report_path: Path
    passed: bool
    stages: dict[str, Any]  # stage -> its ExportResult
    figures: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [f"{self.model} → {self.path} [pipeline: " + ", ".join(
            f"{name} {r.format} {r.precision}" for name, r in self.stages.items()) + "]"]
        lines += [f"  stage {name}: {r.summary()}" for name, r in self.stages.items()]
        e2e = self.figures
        lines.append(f"  end to end on {e2e['samples']} real photos: VQA/retrieval max abs err "
                     f"{e2e['fused']['max_abs_err']:.2g} (cosine {e2e['fused']['cosine']:.6f}), regions agree "
                     f"{e2e['regions']['agreement']:.0%}, caption tokens agree {e2e['caption']['agreement']:.0%}, "
                     f"glue {e2e['glue_share']:.0%} of stage time: {'passed' if self.passed else 'FAILED'}")
        return "\n".join(lines)


def stage_choices(model, formats: Sequence[str], precision: str | None,
                  stages: Mapping[str, Any] | None) -> dict[str, tuple[str, str | None]]:
    """{stage: (format, precision)} for every stage of `model` (see the module docstring); refuses an unknown
    stage, a malformed choice, or more than two formats without `stages`."""
    formats = [f for f in formats if f]
    if not formats and not stages:
        raise UsageError(f"{model.name}: give the format(s) to export (e.g. --to tflite,pte)")
    if len(formats) > 2:
        raise UsageError(f"{model.name} is one pipeline: give one format for every stage, or two (the vision stages "
                         f"{', '.join(model.vision_stages)} take the first, the others the second), not "
                         f"{len(formats)}; choose per stage with stages={{stage: (format, precision)}}")
    chosen: dict[str, tuple[str, str | None]] = {}
    for stage in model.stages:
        fmt = None if not formats else formats[0] if stage in model.vision_stages else formats[-1]
        chosen[stage] = (fmt, precision)
    unknown = sorted(set(stages or {}) - set(model.stages))
    if unknown:
        raise UsageError(f"{model.name} has no stage(s) {unknown}; its stages are {list(model.stages)}")
    for stage, value in (stages or {}).items():
        if isinstance(value, str):
            value = (value, precision)
        elif isinstance(value, Mapping):
            value = (value.get("format"), value.get("precision", precision))
        if not isinstance(value, (tuple, list)) or len(value) != 2 or not isinstance(value[0], str):
            raise UsageError(f"stages[{stage!r}] is a format, (format, precision) or {{\"format\", \"precision\"}}; "
                             f"got {value!r}")
        chosen[stage] = (value[0], value[1])
    empty = [s for s, (fmt, _) in chosen.items() if fmt is None]
    if empty:
        raise UsageError(f"{model.name}: no format for stage(s) {empty}")
    for fmt, _ in chosen.values():
        get_converter(fmt)  # an unknown format is refused here, naming the known ones
    return chosen


def parse_stage_flags(flags: Sequence[str]) -> dict[str, tuple[str, str | None]]:
    """`--stage detector=tflite:int8` (repeatable) as {stage: (format, precision or None)}."""
    out = {}
    for flag in flags:
        stage, sep, rest = flag.partition("=")
        fmt, _, prec = rest.partition(":")
        if not sep or not stage or not fmt:
            raise UsageError(f"--stage expects STAGE=FORMAT[:PRECISION], got {flag!r}")
        out[stage] = (fmt, prec or None)
    return out


def export_pipeline_model(model: str, formats: Sequence[str], precision: str | None, out_dir: str | Path, *,
                          stage_export: Callable[..., list], tiny: bool = False, progress: Progress | None = None,
                          stages: Mapping[str, Any] | None = None, **options: Any) -> list[PipelineExportResult]:
    """`sdk.export`'s route for a pipeline model: the zoo-only keywords are refused by name (each stage has one
    fixed shape and MiniVLM's weights are random), the rest goes to `export_pipeline`. `stage_export` is
    `sdk.export` itself (passed in: this module is below `sdk.export.api`, which routes here)."""
    zoo_only = {k: options.pop(k) for k in ("weights", "seq_len", "seq_lens", "pack", "batch_sizes", "calibration",
                                            "eval") if k in options}
    given = sorted(k for k, v in zoo_only.items() if v is not None)
    if given:
        raise UsageError(f"{model} is a pipeline of fixed-shape stages with random weights: "
                         f"{', '.join('--' + k.replace('_', '-') for k in given)} do not apply to it")
    return [export_pipeline(model, formats, precision, out_dir, stage_export=stage_export, tiny=tiny, stages=stages,
                            progress=progress, **options)]


def stage_spec(model, module, samples: list[dict], stage: str):
    """A pipeline stage as a spec `sdk.export` takes: its module, inputs, real samples, output names and tolerances
    (one way, so `tune`'s per-stage candidates are the artifacts the pipeline's export reuses)."""
    from models_zoo.module_spec import spec_from_module

    inputs, output_names = model.stage_io(stage)
    return spec_from_module(model.modules(module)[stage], inputs=inputs, name=f"{model.name}-{stage}",
                            samples=[s["stages"][stage] for s in samples], output_names=output_names,
                            tolerances=model.stage_tolerances(stage))


def export_pipeline(name: str, formats: Sequence[str], precision: str | None = None, out_dir: str | Path = "out",
                    *, stage_export: Callable[..., list], tiny: bool = False, stages: Mapping[str, Any] | None = None,
                    progress: Progress | None = None, **options: Any) -> PipelineExportResult:
    """Export, verify and record the pipeline model `name` in `out_dir/<name>/` (see the module docstring); each
    stage's spec goes through `stage_export` (`sdk.export`). `options` are the formats' own options, each given
    to the stages of the formats that declare it."""
    progress = progress or Progress(enabled=False)
    model = pipeline_model(f"{name}-tiny" if tiny and not name.endswith("-tiny") else name)
    if model is None:
        raise UsageError(f"{name!r} is not a pipeline model; pipeline models: {list_pipeline_models()}")
    chosen = stage_choices(model, formats, precision, stages)
    known = {o for fmt, _ in chosen.values() for o in get_converter(fmt).option_names()}
    if set(options) - known:
        raise UnknownOptionError(f"unknown export option(s) {sorted(set(options) - known)} for the formats of "
                                 f"{model.name}'s stages ({', '.join(sorted({f for f, _ in chosen.values()}))})")
    root = Path(out_dir) / model.name
    with progress.step(f"build {model.name} (random weights) and run it on real photos and questions"):
        module, samples = model.prepare()
    results, artifacts = {}, {}
    for stage in model.stages:
        fmt, prec = chosen[stage]
        spec = stage_spec(model, module, samples, stage)
        own = {k: v for k, v in options.items() if k in get_converter(fmt).option_names()}
        result = reusable(spec, fmt, prec, root, own)
        if result is not None:
            progress.note(f"  {spec.name} → {fmt} {result.precision}: unchanged and verified, kept ({result.path})")
        else:
            (result,) = stage_export(spec, [fmt], prec, out_dir=root, progress=progress, **own)
        results[stage], artifacts[stage] = result, result.path.relative_to(root).as_posix()
    manifest = model.manifest(artifacts)
    verification = samples[0::2]  # the photos no int8 stage was calibrated on
    quantized = any(r.precision.weight_bits < 32 for r in results.values())
    tolerance = E2E_TOLERANCES["quantized" if quantized else "fp32"]
    path = root / PIPELINE_JSON
    previous = path.read_bytes() if path.is_file() else None
    atomic.write_json(path, manifest)
    try:
        with progress.step(f"verify {model.name} end to end on {len(verification)} held-out real photos"):
            figures = verify_end_to_end(root, model, verification, tolerance)
    except BaseException:
        _restore(path, previous)
        raise
    report = {"schema": REPORT_SCHEMA, "schema_version": 1,
              "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"), "model": model.describe(),
              "pipeline": PIPELINE_JSON,
              "stages": {s: {"artifact": artifacts[s], "format": r.format, "precision": str(r.precision),
                             "sha256": r.entry.sha256, "size_bytes": r.size_bytes, "report": Path(
                                 r.report_path).relative_to(root).as_posix(), "parity": _brief(r.parity)}
                         for s, r in results.items()},
              "end_to_end": figures}
    report_path = root / REPORT
    atomic.write_json(report_path, report)
    save_verification(root / VERIFICATION, verification)
    result = PipelineExportResult(model.name, "pipeline", root, report_path, figures["passed"], results, figures)
    if not figures["passed"]:
        _restore(path, previous)
        raise checks.ParityError(f"{model.name} failed end-to-end verification: " + "; ".join(figures["failures"])
                                 + f" (figures in {report_path}; pipeline.json was not replaced)")
    return result


def reusable(spec, fmt: str, precision: str | None, root: Path, options: dict[str, Any]):
    """The `ExportResult` of the stage artifact already in place when re-exporting would make the same one: the
    same module (state dict), samples, tolerances, format, precision and options, its bytes unchanged and its
    verification passed. Else None. Changing one stage's format or precision then converts that stage only."""
    from device_runtime.manifest import load_entry
    from models_zoo import Precision
    from sdk.export.plan import plan
    from sdk.export.steps import ExportResult, model_section

    (p,) = plan(spec, [fmt], precision, root, options)
    if not p.final.is_file():
        return None
    try:
        record = load_entry(p.final)
    except PocketformerError:  # changed since export: make it again
        return None
    entry = record.entry
    if entry is None or not (entry.parity or {}).get("passed") or entry.options != p.kwargs \
            or entry.requested_precision != p.precision.requested \
            or json.dumps(record.model, sort_keys=True, default=str) != json.dumps(
                model_section(spec), sort_keys=True, default=str):
        return None
    return ExportResult(spec.name, entry.format, Precision.of(entry.precision), p.final, record.manifest.path, True,
                        entry.size_bytes, entry.parity, entry.details, entry)


def _restore(path: Path, previous: bytes | None) -> None:
    if previous is None:
        path.unlink(missing_ok=True)
    else:
        atomic.write_text(path, previous.decode("utf-8"))


def _brief(parity: dict[str, Any]) -> dict[str, Any]:
    keep = ("passed", "failures", "tolerance", "reference", "samples")
    out = {k: parity.get(k) for k in keep if k in parity}
    for part in ("lowering", "quantization"):
        if parity.get(part):
            out[part] = {k: parity[part].get(k) for k in ("max_abs_err", "sqnr_db", "cosine") if k in parity[part]}
    return out


def verify_end_to_end(root: Path, model, samples: list[dict], tolerance: dict[str, Any]) -> dict[str, Any]:
    """Run the pipeline folder with `device_runtime.load` on `samples` and compare with PyTorch's outputs."""
    import device_runtime

    actual, timings = [], []
    with device_runtime.load(root, adapt_io=True) as session:
        names = [o.name for o in session.get_outputs()]
        for sample in samples:
            start = time.perf_counter()
            outs = dict(zip(names, session.run(None, sample["feed"])))
            timings.append({"total_ms": (time.perf_counter() - start) * 1e3,
                            **session.last_timings.to_dict()})
            actual.append(outs)
    refs = [s["outputs"] for s in samples]
    fused_names = ["vqa_logits", "retrieval_score"]
    checks.check_spread([[r[n] for n in fused_names] for r in refs], f"{model.name} (PyTorch VQA and retrieval)")
    fused = checks.compare([[r[n] for n in fused_names] for r in refs], [[a[n] for n in fused_names] for a in actual],
                           False, fused_names)
    scale = max(float(np.abs(r[n]).max()) for r in refs for n in fused_names)
    fused["max_rel_err"] = fused["max_abs_err"] / scale
    fused["vqa_top1_agreement"] = float(np.mean([int(np.argmax(r["vqa_logits"]) == np.argmax(a["vqa_logits"]))
                                                 for r, a in zip(refs, actual)]))
    regions = region_agreement(refs, actual)
    caption = {"agreement": float(np.mean([np.mean(r["caption_ids"] == a["caption_ids"])
                                           for r, a in zip(refs, actual)])),
               "identical": int(sum(np.array_equal(r["caption_ids"], a["caption_ids"]) for r, a in zip(refs, actual)))}
    failures = []
    if tolerance.get("max_rel_err") is not None and not fused["max_rel_err"] <= tolerance["max_rel_err"]:
        failures.append(f"VQA/retrieval max relative error {fused['max_rel_err']:.3g} > {tolerance['max_rel_err']:g}")
    if not fused["cosine"] >= tolerance["min_cosine"]:
        failures.append(f"VQA/retrieval cosine {fused['cosine']:.6f} < {tolerance['min_cosine']:g}")
    if tolerance.get("min_sqnr_db") is not None and not fused["sqnr_db"] >= tolerance["min_sqnr_db"]:
        failures.append(f"VQA/retrieval SQNR {fused['sqnr_db']:.1f} dB < {tolerance['min_sqnr_db']:g} dB")
    if not regions["agreement"] >= tolerance["min_region_agreement"]:
        failures.append(f"regions agree {regions['agreement']:.0%} < {tolerance['min_region_agreement']:.0%}")
    if tolerance.get("max_box_err") is not None and not regions["max_box_err"] <= tolerance["max_box_err"]:
        failures.append(f"region boxes differ by {regions['max_box_err']:.3g} > {tolerance['max_box_err']:g} "
                        "(normalised)")
    if not caption["agreement"] >= tolerance["min_caption_agreement"]:
        failures.append(f"caption tokens agree {caption['agreement']:.0%} < {tolerance['min_caption_agreement']:.0%}")
    glue_ms = sum(t["glue_ms"] for t in timings)
    stage_ms = sum(t["total_ms"] for t in timings)
    return {"passed": not failures, "failures": failures, "tolerance": tolerance, "samples": len(samples),
            "sources": [s["source"] for s in samples], "reference": "fp32 PyTorch MiniVLM (torchvision glue)",
            "fused": fused, "regions": regions, "caption": caption,
            "glue_share": glue_ms / stage_ms if stage_ms else 0.0, "timings": timings}


def region_agreement(refs: list[dict], actual: list[dict]) -> dict[str, Any]:
    """How many of the reference's regions the pipeline found: a region agrees when the pipeline kept a box within
    0.01 of it (normalised), in any slot. Compared as sets, because the slot order of proposals whose scores tie to
    within float rounding is not a difference (the fusion transformer has no region positions: its outputs do not
    depend on that order; measured at full size with random weights, fp32 rounding reordered 12 % of the slots while
    the fused outputs stayed within 9e-5). `max_box_err`: the farthest reference box from its nearest kept box."""
    agree, total, box_err = 0, 0, 0.0
    for r, a in zip(refs, actual):
        rm, am = r["region_mask"][0].astype(bool), np.asarray(a["region_mask"][0]).astype(bool)
        ref_boxes, got_boxes = r["region_boxes"][0][rm], np.asarray(a["region_boxes"][0])[am]
        if len(ref_boxes) and len(got_boxes):
            nearest = np.abs(ref_boxes[:, None, :] - got_boxes[None, :, :]).max(axis=2).min(axis=1)
            box_err = max(box_err, float(nearest.max()))
            agree += int((nearest <= 0.01).sum())
        elif len(ref_boxes):
            box_err = float("inf")
        total += int(max(rm.sum(), am.sum()))
    return {"agreement": agree / total if total else 1.0, "regions": total, "max_box_err": box_err,
            "masks_equal": int(sum(np.array_equal(r["region_mask"], a["region_mask"]) for r, a in zip(refs, actual)))}


def save_verification(path: Path, samples: list[dict]) -> None:
    """The verification photos' pipeline feeds and PyTorch outputs, `<i>/feed/<name>` and `<i>/reference/<name>`,
    with each photo's name in `<i>/source`: a bundle holds exactly what the export verified on, without torch."""
    arrays = {}
    for i, sample in enumerate(samples):
        arrays.update({f"{i}/feed/{k}": v for k, v in sample["feed"].items()})
        arrays.update({f"{i}/reference/{k}": v for k, v in sample["outputs"].items()})
        arrays[f"{i}/source"] = np.asarray(sample["source"])
    with atomic.atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def load_verification(path: Path) -> list[dict]:
    """What `save_verification` wrote: [{"source", "feed", "outputs"}] in order."""
    samples: dict[int, dict] = {}
    with np.load(path, allow_pickle=False) as data:
        for key in data.files:
            index, kind, *name = key.split("/")
            sample = samples.setdefault(int(index), {"feed": {}, "outputs": {}})
            if kind == "source":
                sample["source"] = str(data[key])
            else:
                sample["feed" if kind == "feed" else "outputs"][name[0]] = data[key]
    return [samples[i] for i in sorted(samples)]


def copy_pipeline(root: Path, dest: Path) -> None:
    """The pipeline's files (pipeline.json, report.json and the artifacts it names) into `dest`."""
    manifest = json.loads((root / PIPELINE_JSON).read_text(encoding="utf-8"))
    for rel in [PIPELINE_JSON, REPORT] + [s["artifact"] for s in manifest["stages"] if "artifact" in s]:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (root / rel).is_dir() else shutil.copy2)(root / rel, dest / rel)
