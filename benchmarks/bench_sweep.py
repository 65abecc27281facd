"""The same sweep with 1 and 2 export workers, then its cached rerun: wall times and the speedup.

    .venv/bin/python benchmarks/bench_sweep.py                         # tiny variants: a minute or two
    .venv/bin/python benchmarks/bench_sweep.py --full --models mobilevit_xxs tinybert_4l_312d

Each sweep starts its own local Ray (2 CPUs here; its start-up is reported apart) on a fresh folder, so both
pay the same cold worker imports. 1 worker: one export at a time with 2 CPUs (Ray sets OMP_NUM_THREADS=2, so
torch and the converters use both cores); 2 workers: two exports at once with 1 CPU each. Exports are
multi-threaded already, so the speedup on 2 cores comes only from the serial parts of an export (Python, the
converters' graph passes, verification) overlapping; it is not 2x, and the script prints what it measures.
The cached rerun redoes nothing: its wall time is the cost of planning, hashing and checking the cache.
Run it on a quiet machine.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["tinybert_4l_312d", "mobilevit_xxs"])
    parser.add_argument("--formats", nargs="+", default=["onnx", "tflite"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "int8-dynamic"])
    parser.add_argument("--full", action="store_true", help="the full-size models (default: their tiny variants)")
    parser.add_argument("--runs", type=int, default=10, help="timed runs of each artifact's benchmark")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray (default 2, this machine)")
    args = parser.parse_args()

    from sdk.sweep.run import sweep

    common = dict(formats=args.formats, precisions=args.precisions, devices=["local"], tiny=not args.full,
                  runs=args.runs, warmup=2, num_cpus=args.cpus, export_memory_gb=1.0 if not args.full else 4.0)
    rows = []
    with tempfile.TemporaryDirectory(prefix="pf-bench-sweep-") as root:
        for label, workers, out, fresh in (("1 worker x 2 CPUs", 1, "one", True),
                                           (f"{args.cpus} workers x 1 CPU", args.cpus, "two", True),
                                           (f"{args.cpus} workers, rerun (cached)", args.cpus, "two", False)):
            start = time.perf_counter()
            doc = sweep(args.models, out_dir=Path(root) / out, workers=workers,
                        export_cpus=args.cpus / workers, fresh=fresh, **common)
            total = time.perf_counter() - start
            fig = doc["figures"]
            failed = [f"{u['model']} {u['format']} {u['precision']}: {u['reason']}" for u in doc["exports"]
                      if u["status"] == "failed"]
            for line in failed:
                print(f"  failed: {line}")
            rows.append((label, fig["wall_s"], total - fig["wall_s"], fig["exports"], fig["benchmarks"],
                         fig["exports_per_minute_per_worker"], fig["worker_utilisation"]))
    variant = "full-size" if args.full else "tiny"
    print(f"sweep of {', '.join(args.models)} ({variant}) x {', '.join(args.formats)} x {', '.join(args.precisions)}, "
          f"benchmarked on this host ({args.runs} runs each)")
    print(f"{'run':<30}{'wall s':>9}{'Ray start s':>13}{'exp/min/worker':>16}{'busy':>7}  exports, benchmarks")
    for label, wall, ray_s, exports, benches, rate, busy in rows:
        print(f"{label:<30}{wall:9.1f}{ray_s:13.1f}{(f'{rate:.2f}' if rate else '-'):>16}"
              f"{(f'{100 * busy:.0f}%' if busy else '-'):>7}  {exports}, {benches}")
    one, two, cached = rows[0][1], rows[1][1], rows[2][1]
    print(f"speedup of {args.cpus} workers over 1 (wall, Ray start excluded): {one / two:.2f}x; "
          f"the cached rerun took {cached:.2f} s (planning, hashing, cache checks)")


if __name__ == "__main__":
    main()
