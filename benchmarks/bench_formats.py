"""PyTorch eager vs exported artifacts, on the same real inputs, in one interleaved run.

For each model: export (and verify) every requested format at fp32 and at the model's int8, then time
eager PyTorch and each artifact round-robin, so machine drift hits them alike. Prints latency p50, the
ratio to eager, size and export time, checks the goals, and writes everything to a JSON file.

    python benchmarks/bench_formats.py --models mobilevit_xxs tinybert_4l_312d --formats pte --runs 50
    python benchmarks/bench_formats.py --tiny                # every zoo model, tiny variants (a smoke run)

Goals (issue 2, full-size models): .pte fp32 <= 0.9x eager; int8 .pte <= 0.6x fp32 .pte; int8 file <= 0.3x fp32.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def eager_runner(spec, threads: int):
    import torch

    torch.set_num_threads(threads)
    module = spec.build()
    feed = spec.sample_inputs()[0]
    args = tuple(torch.from_numpy(feed[n]) for n in spec.input_names)

    def run():
        with torch.inference_mode():
            module(*args)
    return run


def artifact_runner(path: Path, feed: dict, threads: int):
    import device_runtime

    session = device_runtime.load(path, num_threads=threads, adapt_io=True)
    arrays = session._validate(feed)  # validated once; time the runtime, not the checks
    return lambda: session._execute(arrays)


def interleaved(runners: dict, runs: int, warmup: int) -> dict[str, dict]:
    for run in runners.values():
        for _ in range(warmup):
            run()
    samples = {name: [] for name in runners}
    for _ in range(runs):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            samples[name].append((time.perf_counter() - start) * 1e3)
    return {name: {"p50_ms": float(np.median(s)), "p90_ms": float(np.percentile(s, 90)),
                   "min_ms": float(np.min(s))} for name, s in samples.items()}


def bench_model(name: str, formats: list[str], tiny: bool, runs: int, warmup: int, threads: int,
                out_dir: Path) -> dict:
    from converters import get_converter, resolve_precision
    from models_zoo import get_model
    from sdk.export.api import export

    spec = get_model(name, tiny=tiny)
    feed = spec.sample_inputs()[0]
    exports, runners = {}, {"eager": eager_runner(spec, threads)}
    for fmt in formats:
        for precision in ("fp32", "int8"):
            resolved = resolve_precision(spec, precision)
            reason = get_converter(fmt).unsupported_reason(spec, resolved)
            if reason:
                print(f"  skip {fmt} {resolved}: {reason}")
                continue
            start = time.perf_counter()
            try:
                result = export(spec, fmt, precision, out_dir=out_dir)[0]
            except Exception as exc:  # a benchmark reports failures and goes on
                print(f"  FAILED {fmt} {resolved}: {type(exc).__name__}: {str(exc)[:300]}")
                continue
            key = f"{fmt} {precision}"
            exports[key] = {"path": str(result.path), "precision": result.precision, "size_mb": result.size_bytes / 1e6,
                            "export_s": time.perf_counter() - start, "parity": result.parity,
                            "details": result.details}
            if result.passed is not None:
                runners[key] = artifact_runner(result.path, feed, threads)
    timings = interleaved(runners, runs, warmup)
    return {"model": spec.name, "threads": threads, "runs": runs, "latency": timings, "exports": exports}


def print_model(entry: dict, formats: list[str]) -> list[str]:
    lat, exports = entry["latency"], entry["exports"]
    eager = lat["eager"]["p50_ms"]
    print(f"\n{entry['model']}  (threads={entry['threads']}, {entry['runs']} interleaved runs, p50)")
    print(f"  {'candidate':<16}{'p50 ms':>10}{'x eager':>9}{'size MB':>9}{'export s':>10}  parity")
    print(f"  {'eager':<16}{eager:>10.2f}{1.0:>9.2f}")
    for key, info in exports.items():
        p50 = lat.get(key, {}).get("p50_ms", float("nan"))
        parity = info["parity"]
        err = (f"max err {parity['lowering']['max_abs_err']:.1e}" if parity.get("lowering") else
               f"not run: {parity.get('skipped')}")
        if parity.get("quantization"):
            err += f", SQNR {parity['quantization']['sqnr_db']:.1f} dB"
        parts = info["details"].get("delegation", {}).get("partitions")
        err += f", {parts} partition(s)" if parts is not None else ""
        print(f"  {key:<16}{p50:>10.2f}{p50 / eager:>9.2f}{info['size_mb']:>9.2f}{info['export_s']:>10.1f}  {err}")
    misses = []
    for fmt in formats:
        fp32, int8 = exports.get(f"{fmt} fp32"), exports.get(f"{fmt} int8")
        if fmt == "pte" and fp32 and "pte fp32" in lat:
            ratio = lat["pte fp32"]["p50_ms"] / eager
            misses += [] if ratio <= 0.9 else [f"{entry['model']}: pte fp32 {ratio:.2f}x eager (goal <= 0.9)"]
        if fmt == "pte" and fp32 and int8 and "pte int8" in lat and "pte fp32" in lat:
            ratio = lat["pte int8"]["p50_ms"] / lat["pte fp32"]["p50_ms"]
            size = int8["size_mb"] / fp32["size_mb"]
            misses += [] if ratio <= 0.6 else [f"{entry['model']}: pte int8 {ratio:.2f}x pte fp32 (goal <= 0.6)"]
            misses += [] if size <= 0.3 else [f"{entry['model']}: pte int8 file {size:.2f}x fp32 (goal <= 0.3)"]
    return misses


def main() -> None:
    from models_zoo import list_models

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=None, help="zoo models (default: all)")
    parser.add_argument("--formats", nargs="*", default=["pte"], help="formats to export and time (default: pte)")
    parser.add_argument("--tiny", action="store_true", help="tiny variants (a quick smoke run)")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="out/bench", help="where artifacts go")
    parser.add_argument("--json", default="out/bench/results.json")
    args = parser.parse_args()

    results, misses = [], []
    for name in args.models or list_models():
        print(f"== {name}{' (tiny)' if args.tiny else ''}", flush=True)
        entry = bench_model(name, args.formats, args.tiny, args.runs, args.warmup, args.threads, Path(args.out))
        results.append(entry)
        misses += print_model(entry, args.formats)
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    print("\ngoals: " + ("all met" if not misses else f"{len(misses)} missed"))
    for miss in misses:
        print(f"  MISSED {miss}")
    print(f"results: {args.json}")


if __name__ == "__main__":
    main()
