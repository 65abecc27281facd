"""Accuracy of every format x precision against fp32 PyTorch, on the two real tasks (`models_zoo.tasks`).

- digits: MobileViT-XXS fine-tuned on scikit-learn's handwritten digits (396 held-out scans); the zoo's tiny
  variant by default, `--digits-full` trains the full-size model (minutes to tens of minutes on 2 cores);
- text: all-MiniLM-L6-v2's real weights (full size) with a 4-label head trained on the standard library's
  docstrings by topic, exported as the user's own `save_pretrained` folder (200 held-out sentences, a TSV).

Each candidate is what `pocketformer tune` would try here (`sdk.measure.tune.candidates`: every registered format
and precision this host can export and run; Core ML converts on Linux but cannot predict, so it is listed as
skipped), exported with `sdk.export(..., eval=...)`: verified against PyTorch, then its top-1 on the held-out set
run in `device_runtime`. An export refused by verification is a row with the reason. Accuracy only, no timing:
the figures do not depend on how busy the machine is, only on its CPU's kernels (recorded with the results).

    .venv/bin/python benchmarks/bench_accuracy.py                       # both tasks, tiny digits model
    .venv/bin/python benchmarks/bench_accuracy.py --tasks text --formats onnx,tflite --precisions fp32,int8

Writes OUT/results.json and OUT/table.md, and prints the table.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _task(name: str, work: Path, digits_full: bool):
    """(model to export, export kwargs, eval path, held-out count, PyTorch top-1 at training, description)."""
    from models_zoo import tasks

    if name == "digits":
        model = "mobilevit_xxs" if digits_full else "mobilevit_xxs-tiny"
        task = tasks.digits_task(work / "digits", model=model)
        return ("mobilevit_xxs", {"tiny": not digits_full, "weights": str(task.checkpoint)}, task.eval_dir,
                task.eval_samples, task.pytorch_top1,
                f"{model} fine-tuned on sklearn digits ({task.train_samples} train, {task.eval_samples} held out)")
    if name == "text":
        task = tasks.text_task(work / "text")
        return (str(task.folder), {}, task.eval_tsv, task.eval_samples, task.pytorch_top1,
                f"all-MiniLM-L6-v2 + {len(task.labels)}-label head on stdlib docstring topics "
                f"({task.train_samples} train, {task.eval_samples} held out)")
    raise SystemExit(f"unknown task {name!r}: digits or text")


def run_task(name: str, out: Path, formats, precisions, digits_full: bool) -> dict:
    import sdk
    from device_runtime.errors import PocketformerError
    from sdk.export.plan import resolve_spec
    from sdk.export.shapes import OneShape
    from sdk.measure.tune import candidates

    start = time.perf_counter()
    model, kwargs, eval_path, samples, trained_top1, about = _task(name, out / "tasks", digits_full)
    print(f"{name}: {about}; trained in {time.perf_counter() - start:.0f} s, PyTorch top-1 {trained_top1:.3f}",
          flush=True)
    spec = resolve_spec(model, kwargs.get("tiny", False), OneShape(None), kwargs.get("weights"))
    todo, skipped = candidates(spec, formats, precisions)
    rows, fp32_top1 = [], None
    for fmt, precision in todo:
        began = time.perf_counter()
        try:
            (result,) = sdk.export(model, fmt, precision, out_dir=out / name, eval=eval_path, **kwargs)
        except PocketformerError as exc:
            rows.append({"format": fmt, "precision": precision, "refused": f"{type(exc).__name__}: {exc}"})
            print(f"  {fmt} {precision}: refused: {str(exc)[:200]}", flush=True)
            continue
        accuracy = result.parity["accuracy"]
        fp32_top1 = accuracy["fp32_pytorch_top1"]
        quant = result.parity.get("quantization") or {}
        rows.append({"format": fmt, "precision": result.precision, "top1": accuracy["artifact_top1"],
                     "drop_points": accuracy["drop_points"], "sqnr_db_vs_fp32": quant.get("sqnr_db"),
                     "size_bytes": result.size_bytes, "export_s": time.perf_counter() - began})
        print(f"  {fmt} {result.precision}: top-1 {accuracy['artifact_top1']:.3f} "
              f"({0.0 - accuracy['drop_points']:+.1f} pt)", flush=True)
    return {"task": name, "about": about, "model": spec.name, "eval": str(eval_path), "samples": samples,
            "fp32_pytorch_top1": fp32_top1 if fp32_top1 is not None else trained_top1, "rows": rows,
            "skipped": skipped}


def table(results: list[dict]) -> str:
    lines = ["| task | artifact | precision | top-1 | vs fp32 PyTorch |", "|---|---|---|---|---|"]
    for task in results:
        lines.append(f"| {task['task']} ({task['samples']} held out) | PyTorch | fp32 | "
                     f"{100 * task['fp32_pytorch_top1']:.1f}% | |")
        for r in task["rows"]:
            suffix = {"pte": ".pte", "tflite": ".tflite", "onnx": ".onnx"}.get(r["format"], r["format"])
            if "refused" in r:
                reason = r["refused"].split(": ", 1)[-1].split(" (figures in")[0]
                verdict = "refused by verification" if "failed verification" in reason else "failed"
                lines.append(f"| | `{suffix}` | {r['precision']} | {verdict} | {reason} |")
            else:
                lines.append(f"| | `{suffix}` | {r['precision']} | {100 * r['top1']:.1f}% | "
                             f"{0.0 - r['drop_points']:+.1f} pt |")
        for s in task["skipped"]:
            lines.append(f"| | {s['format']} | {s['precision']} | not run here | {s['reason'][:90]} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="digits,text")
    parser.add_argument("--formats", default=None, help="comma-separated (default: every registered format)")
    parser.add_argument("--precisions", default=None, help="comma-separated (default: each format's own)")
    parser.add_argument("--digits-full", action="store_true", help="train and export the full-size MobileViT-XXS")
    parser.add_argument("--out", default=str(ROOT / "out" / "bench_accuracy"))
    args = parser.parse_args(argv)

    from device_runtime.atomic import write_json
    from device_runtime.measure import host_info

    out = Path(args.out)
    split = (lambda v: v.split(",") if v else None)
    results = [run_task(t, out, split(args.formats), split(args.precisions), args.digits_full)
               for t in args.tasks.split(",")]
    host = host_info()
    document = {"command": " ".join(["benchmarks/bench_accuracy.py", *(argv or sys.argv[1:])]), "host": host,
                "results": results}
    write_json(out / "results.json", document)
    text = table(results)
    (out / "table.md").write_text(text + "\n", encoding="utf-8")
    print(f"\nmachine: {host.get('cpu')}, Python {host.get('python')}\n{text}\nwritten {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
