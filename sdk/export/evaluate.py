"""Accuracy on the user's own labelled data (`export --eval PATH`, `sdk.export(..., eval=PATH)`).

Parity says an artifact computes what PyTorch computes; the user judges it by the task: "does int8 still get
91 % on my validation set?". PATH is one of:

- an image folder tree with one subfolder per class (torchvision's ImageFolder convention), each image
  preprocessed exactly as the model's samples are (`models_zoo.data.preprocess_image`);
- a TSV file of `text<TAB>label`, or `text_a<TAB>text_b<TAB>label` for sentence pairs, tokenized as the model's
  samples are.

Labels are matched to the model's label names (its `id2label`, `label_names` or the zoo's classes); a model
without names takes class indices (0, 1, ...). The top-1 accuracy of fp32 PyTorch and of each artifact (run in
`device_runtime`) on the same set go into the artifact's parity figures (`parity["accuracy"]`), with the
difference in points.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from converters import parity as checks
from device_runtime.errors import UsageError
from models_zoo import ModelSpec
from sdk.console.progress import Progress


@dataclass
class EvalSet:
    """A labelled set read once per export: feeds, label indices, where it came from, and fp32 PyTorch's top-1."""

    path: str
    feeds: list[dict]
    labels: list[int]
    fp32_top1: float | None = None

    def figures(self, top1: float) -> dict:
        return {"set": self.path, "samples": len(self.labels), "fp32_pytorch_top1": self.fp32_top1,
                "artifact_top1": top1, "drop_points": round(100.0 * ((self.fp32_top1 or 0.0) - top1), 3)}


def read_eval_set(spec: ModelSpec, path: str | Path) -> EvalSet:
    """The labelled feeds of `path` for `spec` (see the module docstring); every problem is a UsageError naming it."""
    from models_zoo.data import IMAGE_SUFFIXES, preprocess_image, tokenize

    if not spec.task.endswith("classification"):
        raise UsageError(f"--eval measures top-1 accuracy; {spec.name} is a {spec.task} model, not a classifier")
    path, prep = Path(path), spec.preprocessing()
    names = spec.labels()
    items: list[tuple[dict, str, str]] = []  # (feed, label as written, where)
    if prep["kind"] == "image":
        if not path.is_dir():
            raise UsageError(f"--eval for {spec.name} is an image folder with one subfolder per class; {path} is not "
                             f"a folder")
        for folder in sorted(p for p in path.iterdir() if p.is_dir()):
            for image in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
                items.append(({spec.input_names[0]: preprocess_image(image, prep)}, folder.name, str(image)))
    elif prep["kind"] == "text":
        if not path.is_file():
            raise UsageError(f"--eval for {spec.name} is a TSV file (text<TAB>label); {path} is not a file")
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) not in (2, 3) or not fields[-1].strip():
                raise UsageError(f"{path}:{number}: expected text<TAB>label or text_a<TAB>text_b<TAB>label")
            feed = tokenize(fields[0].strip(), prep, pair=fields[1].strip() if len(fields) == 3 else None)
            items.append((feed, fields[-1].strip(), f"{path}:{number}"))
    else:
        raise UsageError(f"--eval takes images or text; {spec.name}'s inputs are {prep['kind']}")
    if not items:
        raise UsageError(f"no labelled samples in {path}" + (" (expected one subfolder of images per class)"
                                                              if prep["kind"] == "image" else ""))
    return EvalSet(str(path), [feed for feed, _, _ in items], [_label_index(label, names, where, _classes(spec))
                                                               for _, label, where in items])


def _classes(spec: ModelSpec) -> int | None:
    return getattr(spec, "num_classes", None) or getattr(spec, "num_labels", None) or None


def _label_index(label: str, names: list[str] | None, where: str, classes: int | None) -> int:
    if names:
        if label in names:
            return names.index(label)
        shown = ", ".join(names[:20]) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")
        raise UsageError(f"{where}: unknown label {label!r}; the model's labels are: {shown}")
    if label.isdigit() and (classes is None or int(label) < classes):
        return int(label)
    raise UsageError(f"{where}: label {label!r}: this model has no label names, so labels are class indices "
                     f"0..{(classes or 1) - 1}")


def top1(outputs: list, labels: list[int]) -> float:
    predicted = [int(np.argmax(np.asarray(out[0]).reshape(-1))) for out in outputs]
    return float(np.mean([p == y for p, y in zip(predicted, labels)]))


# Feeds of one shape are run through PyTorch this many at a time: one feed per call cost ~7x more on a busy 2-core
# machine (all-MiniLM-L6-v2 at 32 tokens, 200 sentences), where eager PyTorch's threads contend most.
EVAL_BATCH = 32


def _batched_outputs(module, names: list[str], feeds: list[dict]) -> list[list[np.ndarray]]:
    """PyTorch's outputs for each feed, consecutive feeds of one shape stacked on the batch axis; a module that
    does not take a batch (an error, or outputs not split by it) runs one feed per call."""
    outputs: list[list[np.ndarray]] = []
    start = 0
    while start < len(feeds):
        shape = [feeds[start][n].shape for n in names]
        end = start + 1
        while end < len(feeds) and end - start < EVAL_BATCH and [feeds[end][n].shape for n in names] == shape:
            end += 1
        chunk = feeds[start:end]
        batched = None
        if len(chunk) > 1 and all(s[:1] == (1,) for s in shape):
            try:
                (batched,) = checks.torch_outputs(module, names, [{n: np.concatenate([f[n] for f in chunk])
                                                                   for n in names}])
            except Exception:  # noqa: BLE001 - a module that cannot take a batch is run per feed below
                batched = None
        if batched is not None and all(o.shape[:1] == (len(chunk),) for o in batched):
            outputs += [[o[i:i + 1] for o in batched] for i in range(len(chunk))]
        else:
            outputs += checks.torch_outputs(module, names, chunk)
        start = end
    return outputs


def pytorch_top1(module, spec: ModelSpec, evalset: EvalSet) -> float:
    evalset.fp32_top1 = top1(_batched_outputs(module, list(spec.input_names), evalset.feeds), evalset.labels)
    return evalset.fp32_top1


def artifact_top1(path: Path, evalset: EvalSet, label: str, progress: Progress) -> dict:
    """The artifact's top-1 on the set, run in `device_runtime` as on the device, with its figures."""
    import device_runtime

    with progress.step(f"accuracy of {label} on {len(evalset.labels)} labelled samples ({evalset.path})"):
        session = device_runtime.load(path, adapt_io=True)
        outputs = [session.run(None, feed) for feed in evalset.feeds]
    return evalset.figures(top1(outputs, evalset.labels))
