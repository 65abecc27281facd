"""Export a compressed checkpoint through the normal pipeline (`sdk.export`, verified against the compressed
PyTorch model) next to the uncompressed model at the same precision, and measure what a phone would see:
artifact size, latency (`device_runtime` benchmark) and accuracy on held-out sentences against the float teacher.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sdk.compress.core import agreement


def artifact_outputs(path, spec, sentences: Sequence[str], threads: int | None = 2) -> np.ndarray:
    """Run an artifact on sentences tokenised at the spec's fixed sequence length; (n, width)."""
    import device_runtime
    from models_zoo.data import tokenize

    session = device_runtime.load(path, num_threads=threads, adapt_io=True)
    prep = spec.preprocessing()
    return np.concatenate([session.run(None, tokenize(s, prep))[0].reshape(1, -1) for s in sentences])


def export_and_measure(spec, weights, formats: Sequence[str], precision: str | None, out_dir: str | Path,
                       sentences: Sequence[str], reference: np.ndarray, label: str, threads: int = 2,
                       runs: int = 20) -> list[dict[str, Any]]:
    """Export `spec` with `weights` (None: the spec's default), verify, benchmark, and score on `sentences`."""
    import device_runtime
    from sdk.export.api import export

    rows = []
    for result in export(spec, list(formats), precision, out_dir=Path(out_dir) / label,
                         weights=str(weights) if weights else None):
        session = device_runtime.load(result.path, num_threads=threads, adapt_io=True)
        bench = session.benchmark(None if not sentences else _feed(spec, sentences[0]), warmup=3, runs=runs)
        got = artifact_outputs(result.path, spec, sentences, threads)
        rows.append({
            "model": label, "format": result.format, "precision": result.precision, "path": str(result.path),
            "size_bytes": result.size_bytes, "parity_passed": result.passed,
            "parity_vs_compressed_pytorch": {k: result.parity.get("lowering", {}).get(k)
                                             for k in ("max_abs_err", "sqnr_db", "cosine")},
            "latency_ms": {"p50": bench.latency.p50, "p90": bench.latency.p90, "threads": threads, "runs": runs,
                           "seq_len": spec.seq_len},
            "accuracy_vs_fp32_teacher": agreement(reference, got, spec.task.endswith("classification")),
        })
    return rows


def _feed(spec, sentence):
    from models_zoo.data import tokenize

    return tokenize(sentence, spec.preprocessing())


def compare_exports(result, checkpoint: Path, teacher_weights, formats: Sequence[str], precision: str | None,
                    out_dir: str | Path, sentences: Sequence[str], threads: int = 2, runs: int = 20,
                    teacher_spec=None) -> dict[str, Any]:
    """Before (the uncompressed model) and after (the checkpoint) through the same exporter and precision;
    accuracy of both artifacts against the float teacher in PyTorch on the same held-out sentences."""
    from sdk.compress.core import outputs, resolve

    spec = teacher_spec or result.spec
    base_spec = _base_spec(spec)
    _, teacher = resolve(base_spec, teacher_weights)
    reference = outputs(teacher, base_spec, list(sentences), max_len=base_spec.seq_len)
    before = export_and_measure(base_spec, teacher_weights, formats, precision, out_dir, sentences, reference,
                                "before", threads, runs)
    after = export_and_measure(base_spec, checkpoint, formats, precision, out_dir, sentences, reference,
                               "after", threads, runs)
    return {"before": before, "after": after}


def _base_spec(spec):
    """The zoo spec a compressed spec came from (dims from the checkpoint are applied at build time)."""
    from models_zoo import get_model

    base = get_model(spec.name.removesuffix("-tiny"), tiny=spec.is_tiny)
    return base.with_seq_len(spec.seq_len) if base.seq_len != spec.seq_len else base
