"""`pocketformer bundle`: a self-contained verification bundle from export folders (format: device_runtime.bundle).

    path = sdk.device.bundles.write_bundle(["out/mobilevit_xxs-tiny/fp32", "out/mobilevit_xxs-tiny/int8/model.tflite"],
                                    "mobilevit.bundle", zip_=True)

Each argument is an export folder (all its artifacts) or one artifact; all must be of one model. What goes in:
the artifacts and their manifest entries (checked against the bytes first), the model's real verification
samples (`ModelSpec.sample_inputs`, the exact tensors the export verified on) as `.npy`, each artifact's
outputs on them computed here with `device_runtime` (the "expected" outputs a device must reproduce), PyTorch's
fp32 outputs, the raw photos (as PNG) or sentences, the vocabulary of text models, the labels, a BundledProgram
`.bpte` for every `.pte` (ExecuTorch's own `executor_runner --bundleio` checks it), and `SHA256SUMS`.

Artifacts of the same file name from different folders (`fp32/model.tflite`, `int8/model.tflite`) are bundled
as `<folder>-<file>` (`fp32-model.tflite`), and their entries' "file" says so, so report.json keys stay unique.
The bundle is written whole or not at all (`device_runtime.atomic`).
"""
from __future__ import annotations

import json
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from device_runtime.bundle import BUNDLE_JSON, SCHEMA, SCHEMA_VERSION, run_feeds
from device_runtime.errors import UsageError
from device_runtime.manifest import MANIFEST_NAME, SCHEMA as MANIFEST_SCHEMA, SCHEMA_VERSION as MANIFEST_VERSION
from device_runtime.manifest import load_entry, read_manifest
from sdk.device.bundle_files import seal_and_publish, write_sums  # noqa: F401  (write_sums: public here too)


def _artifacts_of(paths: Sequence[str | Path]) -> list[Path]:
    """Export folders expanded to their listed artifacts; single artifacts as given."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir() and (p / MANIFEST_NAME).is_file():
            listed = sorted(read_manifest(p).artifacts)
            if not listed:
                raise UsageError(f"{p}/{MANIFEST_NAME} lists no artifact: export into {p} first")
            found += [p / name for name in listed]
        elif p.exists():
            found.append(p)
        else:
            raise UsageError(f"no such export folder or artifact: {p}")
    if not found:
        raise UsageError("nothing to bundle: give export folders (out/MODEL/PRECISION) or artifacts")
    return list(dict.fromkeys(found))


def _spec_for(model: dict[str, Any]):
    """The zoo spec whose inputs are exactly the exported model's (its samples are the verification inputs)."""
    from models_zoo import get_model
    from models_zoo.errors import UnknownModelError

    try:
        # A user's model folder is read again from where it was exported (its spec, tokenizer and preprocessing).
        spec = get_model(model["folder"] if model.get("folder") else model["name"])
    except (UnknownModelError, KeyError):
        raise UsageError(f"{model.get('name')!r} is not a zoo model: a bundle needs the zoo's real samples "
                         "(bundle zoo exports and model folders)") from None
    seq_len = (model.get("preprocessing") or {}).get("seq_len")
    if seq_len and hasattr(spec, "with_seq_len") and getattr(spec, "seq_len", seq_len) != seq_len:
        spec = spec.with_seq_len(seq_len)
    if json.loads(json.dumps(spec.describe()["inputs"])) != json.loads(json.dumps(model.get("inputs"))):
        raise UsageError(f"the zoo's {spec.name} no longer takes the inputs this export recorded: re-export it")
    return spec


def _sources(spec, count: int) -> tuple[list[str], dict[str, Any], list[tuple[str, Callable[[Path], None]]]]:
    """Each sample's source (photo name or sentence), bundle.json's "raw" block and the raw files to write."""
    from models_zoo import data

    prep = spec.preprocessing()
    if prep["kind"] == "image":
        photos = data.photo_paths()
        if len(photos) != count:
            raise UsageError(f"{spec.name}: {count} samples but {len(photos)} sample photos; the zoo changed")

        def png(src: Path):
            def write(dest: Path) -> None:
                from PIL import Image

                Image.open(src).save(dest, format="PNG")
            return write
        raw = [(f"raw/{p.stem}.png", png(p)) for p in photos]
        return [p.name for p in photos], {"images": [r for r, _ in raw]}, raw
    sentences = list(data.SAMPLE_SENTENCES) + [f"{a}\t{b}" for a, b in data.SAMPLE_SENTENCE_PAIRS]
    if len(sentences) != count:
        raise UsageError(f"{spec.name}: {count} samples but {len(sentences)} sample sentences; the zoo changed")
    text = "".join(s + "\n" for s in sentences)
    return sentences, {"sentences": "raw/sentences.txt"}, [("raw/sentences.txt",
                                                            lambda dest: dest.write_text(text, encoding="utf-8"))]


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.ascontiguousarray(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    np.save(path, array, allow_pickle=False)


def _reference(spec, entries, feeds) -> list[list[np.ndarray]] | None:
    """PyTorch's eager fp32 outputs, from the weights the export used (None when they are not at hand)."""
    from converters.parity import torch_outputs

    weights = entries[0].weights or {}
    if weights.get("source") == "checkpoint":
        path = weights.get("path")
        if not path or not Path(path).exists():
            return None
        module = spec.build(weights=path)
    else:
        module = spec.build(seed=int(weights.get("seed", 0)))
    return torch_outputs(module, spec.input_names, feeds)


def _bpte(pte: Path, dest: Path, feeds, expected, input_names) -> None:
    """ExecuTorch's BundledProgram: the program plus one test case per sample (inputs, expected outputs)."""
    import torch
    from executorch.devtools import BundledProgram
    from executorch.devtools.bundled_program.config import MethodTestCase, MethodTestSuite
    from executorch.devtools.bundled_program.serialize import serialize_from_bundled_program_to_flatbuffer

    cases = [MethodTestCase(inputs=[torch.from_numpy(np.ascontiguousarray(f[n])) for n in input_names],
                            expected_outputs=[torch.from_numpy(np.ascontiguousarray(o)) for o in outs])
             for f, outs in zip(feeds, expected)]
    program = BundledProgram(None, [MethodTestSuite(method_name="forward", test_cases=cases)],
                             pte_file_path=str(pte))
    dest.write_bytes(serialize_from_bundled_program_to_flatbuffer(program))


def write_bundle(paths: Sequence[str | Path], out: str | Path, zip_: bool = False, trust: bool = False,
                 note: Callable[[str], None] | None = None) -> Path:
    """Write one bundle for the artifacts in `paths` to `out` (a folder, or a zip when `zip_`); returns `out`."""
    note = note or (lambda message: None)
    if len(paths) == 1 and (Path(paths[0]) / "pipeline.json").is_file():  # a pipeline folder (MiniVLM's)
        from sdk.device.pipeline_bundle import write_pipeline_bundle

        return write_pipeline_bundle(paths[0], out, zip_=zip_, note=note)
    artifacts = _artifacts_of(paths)
    records = [load_entry(a, trust=trust) for a in artifacts]  # refuses bytes changed since export
    for record in records:
        if record.entry is None:
            raise UsageError(f"{record.path} is not listed in a report.json beside it: bundle exported artifacts")
    models = {json.dumps(r.model, sort_keys=True, default=str) for r in records}
    if len(models) > 1:
        raise UsageError("one bundle holds one model: these artifacts come from different models or variants")
    model = records[0].model
    spec = _spec_for(model)
    feeds = spec.sample_inputs()
    names = [r.path.name for r in records]
    bundled = [r.path.name if names.count(r.path.name) == 1 else f"{r.path.parent.name}-{r.path.name}"
               for r in records]
    output_names = list(model.get("outputs") or spec.output_names)
    ranges = {i["name"]: i.get("value_range") for i in model.get("inputs") or []}
    sources, raw_block, raw_files = _sources(spec, len(feeds))
    out = Path(out)
    if out.exists() and out.is_dir() != (not zip_):
        raise UsageError(f"{out} exists and is a {'folder' if out.is_dir() else 'file'}; choose another path")
    with tempfile.TemporaryDirectory(prefix="pf-bundle-") as tmp:
        root = Path(tmp) / "bundle"
        root.mkdir()
        samples = []
        for i, (feed, source) in enumerate(zip(feeds, sources)):
            sid = f"{i:03d}"
            rels = {}
            for name in spec.input_names:
                rels[name] = f"inputs/{sid}/{name}.npy"
                _save(root / rels[name], feed[name])
            samples.append({"id": sid, "source": source, "inputs": rels})
        entries, listed = [], []
        for record, name in zip(records, bundled):
            note(f"running {record.path} on {len(feeds)} samples for its expected outputs")
            (root / "artifacts").mkdir(exist_ok=True)
            copy = shutil.copytree if record.path.is_dir() else shutil.copy2
            copy(record.path, root / "artifacts" / name)
            expected, _ = run_feeds(record.path, feeds, output_names, ranges)
            for sample, outs in zip(samples, expected):
                for oname, array in zip(output_names, outs):
                    _save(root / "expected" / name / sample["id"] / f"{oname}.npy", array)
            entry = {**record.entry.to_dict(), "file": name}
            tolerance = (record.entry.parity or {}).get("tolerance") or vars(spec.tolerance(record.entry.precision))
            listed.append({"file": f"artifacts/{name}", "entry": entry, "expected": f"expected/{name}",
                           "tolerance": tolerance})
            entries.append(record.entry)
            if record.path.suffix == ".pte":
                note(f"writing the BundledProgram of {name}")
                try:
                    _bpte(record.path, root / f"{Path(name).stem}.bpte", feeds, expected, spec.input_names)
                except ImportError as exc:  # the bundle still verifies through device_runtime without it
                    note(f"  no .bpte: ExecuTorch's devtools are not importable here ({exc})")
        note("running PyTorch (eager, fp32) for the reference outputs")
        reference = _reference(spec, entries, feeds)
        for sample, outs in zip(samples, reference or []):
            for oname, array in zip(output_names, outs):
                _save(root / "reference" / sample["id"] / f"{oname}.npy", array)
        for rel, write in raw_files:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            write(root / rel)
        meta: dict[str, Any] = {
            "schema": SCHEMA, "schema_version": SCHEMA_VERSION,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model": {k: v for k, v in model.items() if k != "labels"},
            "artifacts": listed, "samples": samples, "raw": raw_block}
        prep = model.get("preprocessing") or {}
        if prep.get("kind") == "text":
            from models_zoo import data

            # The device side reads a WordPiece vocab.txt (one token a line, by id): a folder's tokenizer.json is
            # written out as one.
            (root / "vocab.txt").write_text("".join(f"{token}\n" for token in data.wordpiece_vocab(
                prep.get("vocab") or data.bert_vocab_path())), encoding="utf-8")
            meta["vocab"] = "vocab.txt"
        if model.get("labels"):
            (root / "labels.txt").write_text("".join(f"{label}\n" for label in model["labels"]), encoding="utf-8")
            meta["labels"] = "labels.txt"
        (root / BUNDLE_JSON).write_text(json.dumps(meta, indent=2, default=str), encoding="utf-8")
        manifest = {"schema": MANIFEST_SCHEMA, "schema_version": MANIFEST_VERSION, "updated": meta["created"],
                    "model": model, "artifacts": {a["entry"]["file"]: a["entry"] for a in listed}, "failed": []}
        (root / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, default=str), encoding="utf-8")
        seal_and_publish(root, out, zip_)
    note(f"bundle: {out}")
    return out
