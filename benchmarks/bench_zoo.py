"""The seed's lesson, measured on the zoo: equal FLOPs do not mean equal latency.

    .venv/bin/python benchmarks/bench_zoo.py --out out/zoo              # every full-size zoo model (long)
    .venv/bin/python benchmarks/bench_zoo.py --models deit_tiny_distilled_patch16_224 tiny_vit_5m_224 --runs 3
    .venv/bin/python benchmarks/bench_zoo.py --phase export --out out/zoo   # exports may run on a busy machine,
    .venv/bin/python benchmarks/bench_zoo.py --phase time --out out/zoo     # the timing only on a quiet one

For each full-size zoo model (every registered family, the paper families included once registered; a name that
is not registered is skipped and said so): params, MACs, memory access cost and arithmetic intensity
(`sdk.measure.analysis.analyze_model`), then each format x precision is exported and verified (`sdk.export.api.export`);
every verified artifact is timed at --threads threads in a process of its own (`device_runtime.isolated`,
rounds interleaved), and the fastest is the model's best. Prints the table and the pairs of models with about
equal MACs whose latency differs, with what differs (memory traffic, operator count, delegate partitions), and
writes OUT/bench_zoo.json, which `pocketformer report OUT` turns into the report's zoo section. Weights are
the zoo's defaults (seeded random unless a model ships real ones): latency does not depend on them. Run it on a
quiet machine: figures from a busy one are not latencies.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

EXPORTS_FILE = "bench_zoo_exports.json"  # the export phase's rows, which the time phase reads


def partitions(result) -> int | None:
    """Delegate partitions of an export: ExecuTorch's XNNPACK delegates, LiteRT's XNNPACK partitions."""
    details = result.details or {}
    for key in ("delegation", "xnnpack"):
        if isinstance(details.get(key), dict) and details[key].get("partitions") is not None:
            return int(details[key]["partitions"])
    return None


def export_model(name: str, formats, precisions, out: Path, log, earlier: dict | None = None) -> dict:
    """Analysis and every verified export of one model (no timing: this phase may run on a busy machine).

    `earlier` (this model's row from an earlier export run) is kept: only the format x precision pairs it
    neither exported nor saw fail are tried, so a run resumes, or adds formats to what is there."""
    from device_runtime.errors import PocketformerError
    from models_zoo import get_model
    from sdk.measure.analysis import analyze_model
    from sdk.export.api import export

    spec = get_model(name)
    if earlier is not None:
        row = earlier
        log(f"{name}: exported before; trying only what it has not")
    else:
        row = {"model": name, "family": spec.family, "artifacts": [], "failed": []}
        start = time.perf_counter()
        analysis = analyze_model(spec)
        row["analysis"] = {k: analysis.get(k) for k in ("params", "flops", "mac_bytes", "weights_read_bytes",
                                                        "arithmetic_intensity", "operator_nodes", "inputs")}
        log(f"{name}: {analysis['params'] / 1e6:.2f}M params, {analysis['flops'] / 2e9:.3f} GMACs "
            f"({time.perf_counter() - start:.0f} s)")
    # the requested precision ("int8") names what was asked; the artifact's own precision may be more exact
    tried = {(a["format"], a.get("asked", a["precision"])) for a in row["artifacts"] + row["failed"]}
    for precision in precisions:
        for fmt in formats:
            if (fmt, precision) in tried:
                continue
            start = time.perf_counter()
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
            row["artifacts"].append({"format": fmt, "precision": str(result.precision), "asked": precision,
                                     "path": str(result.path), "size_bytes": result.size_bytes,
                                     "partitions": partitions(result)})
            log(f"  {fmt} {result.precision}: verified ({time.perf_counter() - start:.0f} s)")
    return row


def time_model(row: dict, runs: int, threads: int, log) -> dict:
    """Time each verified artifact of `row` in a process of its own, rounds interleaved; adds p50_ms/latency."""
    from device_runtime.isolated import benchmark_isolated
    from models_zoo import get_model

    artifacts = [a for a in row.get("artifacts", []) if Path(a["path"]).exists()]
    if not artifacts:
        return row
    feed = get_model(row["model"]).sample_inputs()[0]
    doc = benchmark_isolated([a["path"] for a in artifacts], runs=runs, warmup=3, threads=threads,
                             feeds=[feed] * len(artifacts),
                             names=[f"{a['format']} {a['precision']}" for a in artifacts])
    for artifact, timing in zip(artifacts, doc["results"]):
        artifact["p50_ms"] = timing["latency"]["p50"]
        artifact["latency"] = timing["latency"]
        log(f"  {row['model']} {artifact['format']} {artifact['precision']}: p50 {artifact['p50_ms']:.2f} ms")
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", help="zoo model names (default: every registered model)")
    parser.add_argument("--formats", nargs="+", default=["pte", "tflite", "onnx"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "int8"])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="out/zoo", help="folder for the exports and bench_zoo.json")
    parser.add_argument("--pipelines", nargs="*", default=["minivlm"],
                        help="pipeline models whose stages get rows (params, MACs, memory traffic; default minivlm)")
    parser.add_argument("--phase", choices=("all", "export", "time"), default="all",
                        help="export: analyse and export only (a busy machine will do), writing OUT/" + EXPORTS_FILE
                             + " (models already there are kept: an interrupted run resumes); time: time what "
                             "that file lists (quiet machine); all: both")
    args = parser.parse_args(argv)

    from device_runtime.atomic import write_json
    from models_zoo import list_models
    from sdk.report.zoo import SCHEMA, ZOO_FILE, pair_lines, text_table

    out = Path(args.out)
    registered = set(list_models())
    names = args.models or sorted(registered)
    doc = {"schema": SCHEMA, "schema_version": 1, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "threads": args.threads, "runs": args.runs, "formats": args.formats, "precisions": args.precisions,
           "note": (f"Full-size models, p50 of the fastest verified artifact at {args.threads} threads, each artifact "
                    "in its own process; MACs from FlopCounterMode (eager attention), memory traffic and operator "
                    "count from the unfused torch.export graph (sdk.measure.analysis)."),
           "models": []}
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    exports_path = out / EXPORTS_FILE
    exported = {}
    if args.phase in ("export", "time") and exports_path.exists():
        earlier = json.loads(exports_path.read_text())
        if args.phase == "export":  # the formats of every run so far
            doc.update(formats=sorted(set(earlier["formats"]) | set(args.formats)),
                       precisions=sorted(set(earlier["precisions"]) | set(args.precisions)))
        exported = {r["model"]: r for r in earlier["models"]}
        if args.phase == "time":  # say what was exported, not this command's defaults
            doc.update(formats=earlier["formats"], precisions=earlier["precisions"])
    for name in names:
        if name not in registered:
            print(f"{name}: skipped, not registered in this zoo", file=sys.stderr)
            doc["models"].append({"model": name, "skipped": "not registered"})
            continue
        if args.phase == "time":
            if name not in exported:
                print(f"{name}: skipped, not in {exports_path} (run --phase export first)", file=sys.stderr)
                continue
            row = exported[name]
        else:
            row = export_model(name, args.formats, args.precisions, out, log, earlier=exported.get(name))
        if args.phase == "export":
            exported[name] = row
            write_json(exports_path, {**doc, "models": list(exported.values())})
            continue
        doc["models"].append(time_model(row, args.runs, args.threads, log))
        write_json(out / ZOO_FILE, doc)  # after each model, so an interrupted run keeps what it measured
    if args.phase == "export":
        print(f"exported: {exports_path}; now, on a quiet machine: --phase time --out {out}")
        return 0
    from sdk.report.zoo import pipeline_stage_rows

    doc["pipelines"] = [row for name in args.pipelines for row in pipeline_stage_rows(name)]
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
