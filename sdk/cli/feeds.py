"""Feeds from what a user has at hand: raw tensors in .npy files, an image, a sentence, preprocessed exactly
as the manifest beside the artifact says (the same code as export-time verification, `models_zoo.data`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from device_runtime.errors import UsageError


def parse_inputs(pairs: Sequence[str]) -> dict[str, Any]:
    import numpy as np

    feed = {}
    for pair in pairs:
        name, sep, file = pair.partition("=")
        if not sep:
            raise UsageError(f"--input expects NAME=FILE.npy, got {pair!r}")
        try:
            feed[name] = np.load(file, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read --input {name}: {exc}") from None
    return feed


def build_feed(artifact: Path, image: str | None, text: str | None, inputs: Sequence[str],
               trust: bool = False) -> dict[str, Any]:
    """A feed from a raw image or sentence, preprocessed as the report beside the artifact says."""
    from models_zoo import data
    from sdk.export.records import report_for_artifact

    if inputs:
        return parse_inputs(inputs)
    if image is None and text is None:
        return {}
    model, entry = report_for_artifact(artifact, trust=trust)
    prep = model.get("preprocessing")
    if not prep:
        raise UsageError(f"no report.json with preprocessing beside {artifact}; pass raw tensors with "
                       "--input NAME=FILE.npy")
    if image is not None:
        if prep["kind"] != "image":
            raise UsageError(f"{model.get('name')} takes {prep['kind']}, not an image; use --text")
        return {model["inputs"][0]["name"]: data.preprocess_image(image, prep)}
    if prep["kind"] != "text":
        raise UsageError(f"{model.get('name')} takes {prep['kind']}, not text; use --image")
    # An artifact with sequence-length buckets takes the real tokens (up to its largest length) and pads itself.
    buckets = (entry or {}).get("details", {}).get("buckets")
    return data.tokenize(text, prep, pad=not buckets)
