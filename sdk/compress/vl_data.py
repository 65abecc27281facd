"""Image-question pairs for the vision-language recipes (`sdk.compress.distill_vlm`): a TSV written by hand for
scikit-image's bundled photos (tests/data/vl_questions.tsv), MiniVLM's detector run once per photo (its regions
are what teacher and student both read), and the stacked fusion-stage inputs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from device_runtime.errors import UsageError

SPLITS = ("train", "heldout")
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "tests" / "data" / "vl_questions.tsv"


# -- data: hand-written pairs for real photos; the detector's regions once per photo ----------------------------
@dataclass(frozen=True)
class VLPair:
    image: str
    split: str
    question: str
    answer: str


def read_pairs(path: str | Path | None = None) -> list[VLPair]:
    """The TSV's pairs (columns image, split, question, answer; '#' lines are comments, the first other line is
    the header). Every image must be one of scikit-image's bundled photos."""
    from models_zoo.data import photo_paths

    path = Path(path) if path else DEFAULT_DATA
    if not path.is_file():
        raise UsageError(f"no image-question file at {path}: pass --data with a TSV of image, split, question, "
                         f"answer (see tests/data/vl_questions.tsv)")
    rows = [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines()]
    rows = [(n, line) for n, line in enumerate(rows, 1) if line.strip() and not line.startswith("#")]
    pairs = []
    for n, line in rows[1:]:
        cols = line.split("\t")
        if len(cols) != 4 or cols[1] not in SPLITS or not cols[2].strip():
            raise UsageError(f"{path}:{n}: expected 4 tab-separated columns (image, split in {SPLITS}, question, "
                             f"answer), got {line!r}")
        pairs.append(VLPair(*(c.strip() for c in cols)))
    try:
        photo_paths(tuple(sorted({p.image for p in pairs})))
    except FileNotFoundError as exc:
        raise UsageError(f"{path}: {exc}") from None
    if {p.split for p in pairs} != set(SPLITS):
        raise UsageError(f"{path}: needs both train and heldout pairs")
    overlap = {p.image for p in pairs if p.split == "train"} & {p.image for p in pairs if p.split == "heldout"}
    if overlap:
        raise UsageError(f"{path}: photos {sorted(overlap)} are in both splits; held-out photos must be unseen")
    return pairs


def region_table(model, images: Sequence[str]) -> dict[str, tuple]:
    """Each photo through MiniVLM's TEE once: name -> (region_features (1, K, D), boxes (1, K, 4), mask (1, K)).
    The same tensors feed the teacher and the student (region alignment)."""
    import torch

    from models_zoo.data import photo_paths
    from models_zoo.minivlm import prepare_image

    table = {}
    with torch.no_grad():
        for name, path in zip(images, photo_paths(tuple(images))):
            image, hw = prepare_image(path, model.config.image_size)
            r = model.regions(torch.from_numpy(image), hw)
            table[name] = (r["region_features"], r["region_boxes"], r["region_mask"])
    return table


def make_feeds(pairs: Sequence[VLPair], regions: dict, cfg, cross: bool = True) -> dict[str, Any]:
    """Stacked fusion inputs. `cross`: every question asked of every photo of the set (the teacher labels any
    pair); otherwise each question with its own photo."""
    import torch

    from models_zoo.minivlm import tokenize_question

    images = sorted({p.image for p in pairs})
    combos = [(img, p.question) for img in images for p in pairs] if cross else [(p.image, p.question) for p in pairs]
    texts = {q: tokenize_question(q, cfg) for q in {q for _, q in combos}}
    ids = torch.from_numpy(np.concatenate([texts[q]["input_ids"] for _, q in combos])).long()
    mask = torch.from_numpy(np.concatenate([texts[q]["attention_mask"] for _, q in combos])).long()
    feats, boxes, rmask = (torch.cat([regions[img][i] for img, _ in combos]) for i in range(3))
    return {"input_ids": ids, "attention_mask": mask, "region_features": feats, "region_boxes": boxes,
            "region_mask": rmask.long(), "pairs": combos}


def feed_rows(feeds: dict, index) -> list:
    return [feeds[n][index] for n in ("input_ids", "attention_mask", "region_features", "region_boxes", "region_mask")]
