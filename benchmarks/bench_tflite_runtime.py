"""Device-side cost of running a `.tflite` with Pocketformer's runtime and no torch: start time and memory.

Each artifact is measured in a fresh Python process that does what a phone- or edge-side program does:
`import device_runtime`, `load(path)`, run the model. Goals (issue 3): start (import + load) < 0.5 s, and peak
resident memory < 150 MB + the model's size. The child also checks that torch was never imported.

    python benchmarks/bench_tflite_runtime.py out/mobilevit_xxs/fp32/model.tflite ...
    python benchmarks/bench_tflite_runtime.py --export mobilevit_xxs,tinybert_4l_312d --tiny   # export first
    python benchmarks/bench_tflite_runtime.py --export mobilevit_xxs --precision int8 --json results.json

Times are wall-clock on this machine; run it a few times on a loaded machine (the child is fresh each time,
but the page cache is warm after the first run, as it is on a device that has the model installed).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
START_GOAL_S = 0.5
BASE_MEMORY_GOAL_MB = 150.0

CHILD = textwrap.dedent("""
    import json, resource, sys, time
    t0 = time.perf_counter()
    import device_runtime
    t1 = time.perf_counter()
    session = device_runtime.load(sys.argv[1], num_threads=int(sys.argv[2]) if sys.argv[2] != "None" else None)
    t2 = time.perf_counter()
    feed = session.example_feed()
    session.run(None, feed)
    t3 = time.perf_counter()
    runs = []
    for _ in range(int(sys.argv[3])):
        s = time.perf_counter(); session.run(None, feed); runs.append(time.perf_counter() - s)
    runs.sort()
    print(json.dumps({
        "import_s": t1 - t0, "load_s": t2 - t1, "start_s": t2 - t0, "first_run_ms": (t3 - t2) * 1e3,
        "median_run_ms": runs[len(runs) // 2] * 1e3 if runs else None,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,  # Linux: KiB
        "backend": session.backend, "threads": session.info.get("threads"),
        "torch_imported": "torch" in sys.modules,
        "heavy_modules": sorted(m for m in ("torch", "litert_torch", "ai_edge_quantizer", "transformers", "timm",
                                             "tensorflow") if m in sys.modules),
    }))
""")


def measure(path: Path, threads: int | None, runs: int, repeats: int) -> dict:
    """The best of `repeats` fresh processes for start time; the largest peak RSS seen."""
    samples = []
    for _ in range(repeats):
        proc = subprocess.run([sys.executable, "-c", CHILD, str(path), str(threads), str(runs)], cwd=REPO,
                              capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"the child process failed on {path} (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
        samples.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    best = min(samples, key=lambda s: s["start_s"])
    size_mb = path.stat().st_size / 1e6
    memory_goal = BASE_MEMORY_GOAL_MB + size_mb
    peak = max(s["peak_rss_mb"] for s in samples)
    return {**best, "path": str(path), "size_mb": size_mb, "peak_rss_mb": peak, "memory_goal_mb": memory_goal,
            "memory_ratio": peak / memory_goal, "start_goal_s": START_GOAL_S,
            "start_ratio": best["start_s"] / START_GOAL_S, "repeats": repeats,
            "start_s_all": [round(s["start_s"], 4) for s in samples],
            "passed": peak < memory_goal and best["start_s"] < START_GOAL_S and not best["torch_imported"]}


def export_models(names: list[str], precision: str, tiny: bool, out_dir: Path) -> list[Path]:
    sys.path.insert(0, str(REPO))
    from sdk.export.api import export
    from sdk.console.progress import Progress

    paths = []
    for name in names:
        result = export(name, "tflite", precision, out_dir=out_dir, tiny=tiny, progress=Progress())[0]
        print(result.summary())
        paths.append(result.path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", type=Path, help=".tflite artifacts to measure")
    parser.add_argument("--export", default="", help="comma-separated zoo models to export to .tflite first")
    parser.add_argument("--precision", default="fp32", help="precision of --export (default fp32)")
    parser.add_argument("--tiny", action="store_true", help="export the tiny variants")
    parser.add_argument("--out", type=Path, default=REPO / "out" / "bench_tflite", help="where --export writes")
    parser.add_argument("--threads", type=int, default=None, help="interpreter threads (default: all cores)")
    parser.add_argument("--runs", type=int, default=10, help="timed runs after the first (default 10)")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per artifact (default 3)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    paths = list(args.paths)
    if args.export:
        paths += export_models([n for n in args.export.split(",") if n], args.precision, args.tiny, args.out)
    if not paths:
        parser.error("give .tflite paths or --export MODEL[,MODEL]")

    results = [measure(p, args.threads, args.runs, args.repeats) for p in paths]
    header = (f"{'artifact':<58} {'MB':>7} {'start s':>8} {'x goal':>7} {'(import':>8} {'load)':>7} "
              f"{'RSS MB':>8} {'goal MB':>8} {'x goal':>7} {'1st ms':>7} {'p50 ms':>7} torch  backend")
    print(header)
    for r in results:
        name = r["path"] if len(r["path"]) <= 58 else "..." + r["path"][-55:]
        print(f"{name:<58} {r['size_mb']:7.2f} {r['start_s']:8.3f} {r['start_ratio']:7.2f} {r['import_s']:8.3f} "
              f"{r['load_s']:7.3f} {r['peak_rss_mb']:8.1f} {r['memory_goal_mb']:8.1f} {r['memory_ratio']:7.2f} "
              f"{r['first_run_ms']:7.1f} {r['median_run_ms'] or float('nan'):7.2f} "
              f"{'YES' if r['torch_imported'] else 'no':<6} {r['backend']}")
    print(f"goals: start (import device_runtime + load) < {START_GOAL_S} s; peak RSS < {BASE_MEMORY_GOAL_MB:.0f} MB "
          f"+ model size; no torch. {'all met' if all(r['passed'] for r in results) else 'NOT all met'}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if all(r["passed"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
