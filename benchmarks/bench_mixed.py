"""fp32, uniform int8 and mixed precision (`export --precision mixed`) per vision family, on `.tflite`.

For one model of every vision family: export and verify fp32, the family's int8 (int8-static) and mixed; time the
three, each in a process of its own with the rounds interleaved (`device_runtime.isolated`), at 2 threads; and
compare each quantized artifact with fp32 PyTorch on the held-out verification photos (SQNR, top-1 agreement;
never the calibration photos). Prints the per-family table and the goal ratios, and writes a JSON file.

    python benchmarks/bench_mixed.py                      # full size: one model per vision family
    python benchmarks/bench_mixed.py --tiny               # tiny variants: a smoke run of the whole path
    python benchmarks/bench_mixed.py --models mobilevit_xxs mobileformer_508m

The mixed search's plan is written to OUT/<model>/mixed-plan.json and reused on the next run (delete it to measure
again: its timings belong to the machine they were taken on).

Goals (issue "Cost that follows the work", part 2): for every family, mixed at least as fast as the faster of fp32
and int8, and at least as accurate as int8 on held-out samples; mobilevit_xxs mixed <= 0.8x its fp32; Mobile-Former
int8-or-mixed never slower than its fp32.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

# Which model stands for each vision family (the issue's figures name the first two; the others: the smallest).
PREFERRED = ("mobilevit_xxs", "mobileformer_508m", "deit_tiny_distilled_patch16_224", "tiny_vit_5m_224",
             "efficientformer_l1", "mini_deit_tiny")
PRECISIONS = ("fp32", "int8", "mixed")
NOISE = 0.03  # a run-to-run spread of the isolated loops here: "as fast" allows it


def vision_models() -> list[str]:
    from models_zoo import family_representatives, get_model

    return [name for name in family_representatives(prefer=PREFERRED)
            if get_model(name).int8_scheme == "static" and get_model(name).preprocessing().get("kind") == "image"]


def _export(export, spec, precision: str, out: Path, options: dict):
    result = export(spec, "tflite", precision, out_dir=out, **options)[0]
    return result.path, result.entry


def reusable(out: Path, name: str, precision: str):
    """(path, manifest entry) of a verified .tflite already exported into OUT at this precision, or None."""
    from device_runtime.manifest import read_manifest

    folder = out / name / precision
    try:
        entry = read_manifest(folder).artifacts["model.tflite"]
    except Exception:  # no manifest, or none for this file: export it
        return None
    path = folder / entry.file
    return (path, entry) if entry.verified and entry.matches(path) else None


def bench_model(name: str, tiny: bool, runs: int, threads: int, out: Path, precisions=PRECISIONS,
                reuse: tuple[str, ...] = (), time_it: bool = True) -> dict:
    from device_runtime.isolated import benchmark_isolated
    from models_zoo import get_model
    from sdk.export.api import export

    spec = get_model(name, tiny=tiny)
    row: dict = {"model": spec.name, "family": spec.family, "threads": threads, "exports": {}}
    for precision in precisions:
        options = {"mixed_plan": str(out / spec.name / "mixed-plan.json"), "mixed_threads": threads} \
            if precision == "mixed" else {}
        (out / spec.name).mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        found = reusable(out, spec.name, precision) if reuse and precision in reuse else None
        try:
            path, entry = found or _export(export, spec, precision, out, options)
        except Exception as exc:  # a benchmark reports a failure and goes on
            row["exports"][precision] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            print(f"  FAILED {precision}: {row['exports'][precision]['error']}", flush=True)
            continue
        quant = entry.parity.get("quantization") or {}
        row["exports"][precision] = {
            "path": str(path), "size_mb": entry.size_bytes / 1e6, "export_s": time.perf_counter() - start,
            "reused": found is not None,
            "sqnr_db_vs_fp32": quant.get("sqnr_db"), "top1_vs_fp32": quant.get("top1_agreement"),
            "samples": quant.get("samples"), "passed": entry.verified, "mixed": entry.details.get("mixed")}
        print(f"  {precision}: {'reused' if found else 'exported in'} "
              f"{'' if found else format(row['exports'][precision]['export_s'], '.0f') + ' s'}", flush=True)
    done = {p: e for p, e in row["exports"].items() if "path" in e}
    if done and time_it:
        feed = spec.sample_inputs()[0]
        bench = benchmark_isolated([e["path"] for e in done.values()], runs=runs, warmup=5, threads=threads,
                                   feeds=[feed] * len(done), names=list(done), pte_python=None)
        for precision, result in zip(done, bench["results"]):
            done[precision]["p50_ms"] = result["latency"]["p50"]
        row["host"] = bench.get("host")
    return row


def goals(row: dict) -> tuple[dict, list[str]]:
    e = row["exports"]
    ms = {p: e[p].get("p50_ms") for p in PRECISIONS if p in e}
    ratios, misses = {}, []
    if None in ms.values() or len(ms) < 3:
        return ratios, [f"{row['model']}: not every precision was exported and timed"]
    best = min(ms["fp32"], ms["int8"])
    ratios["mixed/best"] = ms["mixed"] / best
    ratios["mixed/fp32"] = ms["mixed"] / ms["fp32"]
    if ratios["mixed/best"] > 1 + NOISE:
        misses.append(f"{row['model']}: mixed {ratios['mixed/best']:.2f}x the faster of fp32 and int8 (goal <= 1)")
    mixed_sqnr, int8_sqnr = e["mixed"].get("sqnr_db_vs_fp32"), e["int8"].get("sqnr_db_vs_fp32")
    if mixed_sqnr is not None and int8_sqnr is not None and mixed_sqnr < int8_sqnr:
        misses.append(f"{row['model']}: mixed SQNR {mixed_sqnr:.1f} dB < int8's {int8_sqnr:.1f} dB on held-out photos")
    if (e["mixed"].get("top1_vs_fp32") or 0) < (e["int8"].get("top1_vs_fp32") or 0):
        misses.append(f"{row['model']}: mixed agrees with fp32's top-1 less often than int8 does")
    if row["family"] == "mobilevit" and ratios["mixed/fp32"] > 0.8:
        misses.append(f"{row['model']}: mixed {ratios['mixed/fp32']:.2f}x fp32 (goal <= 0.8)")
    if row["family"] == "mobileformer" and min(ms["int8"], ms["mixed"]) > ms["fp32"] * (1 + NOISE):
        misses.append(f"{row['model']}: int8 and mixed both slower than fp32")
    return ratios, misses


def print_table(rows: list[dict]) -> list[str]:
    misses = []
    print(f"\n{'model':<34}{'fp32 ms':>9}{'int8 ms':>9}{'mixed ms':>10}{'mix/best':>9}{'mix/fp32':>9}"
          f"{'int8 dB':>9}{'mixed dB':>9}{'int8 top1':>10}{'mix top1':>9}  int8 units")
    for row in rows:
        e = row["exports"]
        ratios, missed = goals(row)
        misses += missed
        get = lambda p, k: (e.get(p) or {}).get(k)  # noqa: E731
        fmt = lambda v, spec=".2f": format(v, spec) if isinstance(v, (int, float)) else "-"  # noqa: E731
        mixed = get("mixed", "mixed") or {}
        units = f"{len(mixed.get('int8_units', []))}/{len(mixed.get('plan', {}).get('units', []))} " \
                f"({mixed.get('choice', '-')})" if mixed else "-"
        print(f"{row['model']:<34}{fmt(get('fp32', 'p50_ms')):>9}{fmt(get('int8', 'p50_ms')):>9}"
              f"{fmt(get('mixed', 'p50_ms')):>10}{fmt(ratios.get('mixed/best')):>9}{fmt(ratios.get('mixed/fp32')):>9}"
              f"{fmt(get('int8', 'sqnr_db_vs_fp32'), '.1f'):>9}{fmt(get('mixed', 'sqnr_db_vs_fp32'), '.1f'):>9}"
              f"{fmt(get('int8', 'top1_vs_fp32')):>10}{fmt(get('mixed', 'top1_vs_fp32')):>9}  {units}")
    return misses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=None, help="zoo models (default: one per vision family)")
    parser.add_argument("--tiny", action="store_true", help="tiny variants (a smoke run)")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="out/bench-mixed", help="where artifacts and plans go")
    parser.add_argument("--json", default=None, help="results file (default: OUT/results.json)")
    parser.add_argument("--precisions", default=",".join(PRECISIONS),
                        help="export only these (e.g. fp32,int8 on a busy machine, then the whole run on a quiet one)")
    parser.add_argument("--reuse", default="fp32,int8",
                        help="precisions whose verified export in OUT is reused rather than rebuilt (their export "
                             "times nothing; the mixed search times its units, so mixed is rebuilt by default)")
    args = parser.parse_args()
    out = Path(args.out)
    results_path = Path(args.json) if args.json else out / "results.json"

    wanted = tuple(p for p in args.precisions.split(",") if p)
    rows = []
    for name in args.models or vision_models():
        print(f"== {name}{' (tiny)' if args.tiny else ''}", flush=True)
        rows.append(bench_model(name, args.tiny, args.runs, args.threads, out, precisions=wanted,
                                reuse=tuple(p for p in args.reuse.split(",") if p), time_it="mixed" in wanted))
        results_path.parent.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(rows, indent=2, default=str))
    misses = print_table(rows)
    if rows and rows[0].get("host"):
        print(f"machine: {rows[0]['host'].get('cpu')} ({args.threads} threads; each artifact in its own process)")
    print("\ngoals: " + ("all met" if not misses else f"{len(misses)} missed"))
    for miss in misses:
        print(f"  MISSED {miss}")
    print(f"results: {results_path}")


if __name__ == "__main__":
    main()
