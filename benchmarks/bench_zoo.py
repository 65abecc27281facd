"""The seed's lesson, measured on the zoo: equal FLOPs do not mean equal latency.

    .venv/bin/python benchmarks/bench_zoo.py --out out/zoo              # every full-size zoo model (long)
    .venv/bin/python benchmarks/bench_zoo.py --models deit_tiny_distilled_patch16_224 tiny_vit_5m_224 --runs 3

For each full-size zoo model (every registered family, the paper families included once registered; a name that
is not registered is skipped and said so): params, MACs, memory access cost and arithmetic intensity
(`sdk.analysis.analyze_model`), then each format x precision is exported and verified (`sdk.pipeline.export`);
every verified artifact is timed at --threads threads in a process of its own (`device_runtime.isolated`,
rounds interleaved), and the fastest is the model's best. Prints the table and the pairs of models with about
equal MACs whose latency differs, with what differs (memory traffic, operator count, delegate partitions), and
writes OUT/bench_zoo.json, which `pocketformer report OUT` turns into the report's zoo section. Weights are
the zoo's defaults (seeded random unless a model ships real ones): latency does not depend on them. Run it on a
quiet machine: figures from a busy one are not latencies.
"""
from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone
from pathlib import Path


def partitions(result) -> int | None:
    """Delegate partitions of an export: ExecuTorch's XNNPACK delegates, LiteRT's XNNPACK partitions."""
    details = result.details or {}
    for key in ("delegation", "xnnpack"):
        if isinstance(details.get(key), dict) and details[key].get("partitions") is not None:
            return int(details[key]["partitions"])
    return None


def bench_model(name: str, formats, precisions, out: Path, runs: int, threads: int, log) -> dict:
    from device_runtime.errors import PocketformerError
    from device_runtime.isolated import benchmark_isolated
    from models_zoo import get_model
    from sdk.analysis import analyze_model
    from sdk.pipeline import export

    spec = get_model(name)
    row = {"model": name, "family": spec.family, "artifacts": [], "failed": []}
    start = time.perf_counter()
    analysis = analyze_model(spec)
    row["analysis"] = {k: analysis.get(k) for k in ("params", "flops", "mac_bytes", "weights_read_bytes",
                                                    "arithmetic_intensity", "operator_nodes", "inputs")}
    log(f"{name}: {analysis['params'] / 1e6:.2f}M params, {analysis['flops'] / 2e9:.3f} GMACs "
        f"({time.perf_counter() - start:.0f} s)")
    verified = []
    for precision in precisions:
        for fmt in formats:
            try:
                result = export(spec, fmt, precision, out_dir=out / "exports")[0]
            except (PocketformerError, ValueError, RuntimeError) as exc:  # refused, failed verification, ...
                row["failed"].append({"format": fmt, "precision": precision, "reason": str(exc)[:300]})
                log(f"  {fmt} {precision}: not verified: {str(exc)[:160]}")
                continue
            if result.passed is not True:  # e.g. Core ML off macOS: converted, never verified
                row["failed"].append({"format": fmt, "precision": precision,
                                      "reason": "not verified here (no runtime to check it against PyTorch)"})
                continue
            verified.append((result, fmt))
    if verified:
        doc = benchmark_isolated([str(r.path) for r, _ in verified], runs=runs, warmup=3, threads=threads,
                                 feeds=[spec.sample_inputs()[0]] * len(verified),
                                 names=[f"{fmt} {r.precision}" for r, fmt in verified])
        for (result, fmt), timing in zip(verified, doc["results"]):
            row["artifacts"].append({"format": fmt, "precision": str(result.precision), "path": str(result.path),
                                     "size_bytes": result.size_bytes, "partitions": partitions(result),
                                     "p50_ms": timing["latency"]["p50"], "latency": timing["latency"]})
            log(f"  {fmt} {result.precision}: p50 {timing['latency']['p50']:.2f} ms")
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", help="zoo model names (default: every registered model)")
    parser.add_argument("--formats", nargs="+", default=["pte", "tflite", "onnx"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "int8"])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="out/zoo", help="folder for the exports and bench_zoo.json")
    args = parser.parse_args(argv)

    from device_runtime.atomic import write_json
    from models_zoo import list_models
    from sdk.report_zoo import SCHEMA, ZOO_FILE, pair_lines, text_table

    out = Path(args.out)
    registered = set(list_models())
    names = args.models or sorted(registered)
    doc = {"schema": SCHEMA, "schema_version": 1, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "threads": args.threads, "runs": args.runs, "formats": args.formats, "precisions": args.precisions,
           "note": (f"Full-size models, p50 of the fastest verified artifact at {args.threads} threads, each artifact "
                    "in its own process; MACs from FlopCounterMode (eager attention), memory traffic and operator "
                    "count from the unfused torch.export graph (sdk.analysis)."),
           "models": []}
    for name in names:
        if name not in registered:
            print(f"{name}: skipped, not registered in this zoo", file=sys.stderr)
            doc["models"].append({"model": name, "skipped": "not registered"})
            continue
        doc["models"].append(bench_model(name, args.formats, args.precisions, out, args.runs, args.threads,
                                         lambda line: print(line, file=sys.stderr, flush=True)))
        write_json(out / ZOO_FILE, doc)  # after each model, so an interrupted run keeps what it measured
    write_json(out / ZOO_FILE, doc)
    print(text_table(doc))
    print()
    print("Equal FLOPs, unequal latency:")
    for line in pair_lines(doc):
        print(f"  {line}")
    print(f"\nwritten: {out / ZOO_FILE}  (pocketformer report {out} adds the zoo section)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
