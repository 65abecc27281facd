"""Shared process vs a process per artifact: what measuring several runtimes in one process does to their figures.

    .venv/bin/python benchmarks/bench_isolation.py --model mobilevit_xxs --formats pte tflite onnx --runs 50

Exports the model (fp32 and int8) to each format, then benchmarks the same artifacts twice, interleaved both
times: all in this one process (`device_runtime.measure.benchmark_artifacts`, what `bench` and `tune` did before)
and each in a worker process of its own (`device_runtime.isolated.benchmark_isolated`, what they do now). Prints
p50 per artifact both ways and the ratio. Goal: the isolated figure is what the artifact does alone, so the
fastest artifact alone is the one `tune` picks. Run it on a quiet machine.
"""
from __future__ import annotations

import argparse
import tempfile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mobilevit_xxs")
    parser.add_argument("--formats", nargs="+", default=["pte", "tflite", "onnx"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "int8"])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()

    from device_runtime.isolated import benchmark_isolated
    from device_runtime.measure import benchmark_artifacts
    from sdk.pipeline import export

    with tempfile.TemporaryDirectory(prefix="pf-isolation-") as out:
        paths = []
        for precision in args.precisions:
            for result in export(args.model, args.formats, precision, out_dir=out, tiny=args.tiny):
                paths.append(str(result.path))
        shared = benchmark_artifacts(paths, runs=args.runs, warmup=5, threads=args.threads)
        alone = benchmark_isolated(paths, runs=args.runs, warmup=5, threads=args.threads)
    print(f"{args.model}, {args.threads} threads, {args.runs} runs, p50 ms")
    print(f"{'artifact':<40} {'one process':>12} {'own process':>12} {'shared/own':>11}")
    for s, a in zip(shared["results"], alone["results"]):
        ratio = s["latency"]["p50"] / a["latency"]["p50"]
        print(f"{s['name']:<40} {s['latency']['p50']:>12.3f} {a['latency']['p50']:>12.3f} {ratio:>10.2f}x")
    pick_shared = min(shared["results"], key=lambda r: r["latency"]["p50"])["name"]
    pick_alone = min(alone["results"], key=lambda r: r["latency"]["p50"])["name"]
    print(f"fastest measured in one process: {pick_shared}; fastest measured alone: {pick_alone}")


if __name__ == "__main__":
    main()
