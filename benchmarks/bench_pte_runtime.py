"""`.pte` on the device side through both ExecuTorch runtimes: start-up time, memory and steady-state latency.

The same file through device_runtime's two `.pte` backends:
- `executorch_numpy`: executorch-numpy-runtime (ExecuTorch 1.3.1, numpy only), in the torch-free Python 3.13
  device environment (scripts/py313_device_env.sh, .cache/py313-device), as a phone- or edge-side program runs it;
- `executorch`: the ExecuTorch binding (1.5.1, needs torch), in this Python.

1. Start: a fresh process does `import device_runtime`, `load(path)` and the first run; the best of --repeats
   processes, and the largest peak RSS seen (the numpy runtime builds a method on its first run, the binding at
   load: the sum is what compares). Goal (issue 23): <= 0.5 s and <= 120 MB through the numpy runtime.
2. Steady state: one long-lived process per runtime, timed in interleaved rounds (10 runs after 3 untimed, the
   first process alternating), so machine drift hits both alike. Goal: the numpy runtime's p50 within 5 % of
   the binding's.

    python benchmarks/bench_pte_runtime.py out/mobilevit_xxs/fp32/model.pte
    python benchmarks/bench_pte_runtime.py --export mobilevit_xxs            # full size, fp32, exported first
    python benchmarks/bench_pte_runtime.py --export mobilevit_xxs --tiny --json results.json

Times are wall-clock on this machine: see `uptime` (a load average above the core count makes them a busy
machine's), and both runtimes share its cores, one at a time.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEVICE_PYTHON = REPO / ".cache" / "py313-device" / "bin" / "python"
START_GOAL_S, MEMORY_GOAL_MB, P50_GOAL = 0.5, 120.0, 1.05
BLOCK, SETTLE = 10, 3

START = textwrap.dedent("""
    import json, resource, sys, time
    t0 = time.perf_counter()
    import device_runtime
    t1 = time.perf_counter()
    backend = None if sys.argv[2] == "default" else sys.argv[2]
    session = device_runtime.load(sys.argv[1], backend=backend)
    t2 = time.perf_counter()
    session.run(None, session.example_feed())
    t3 = time.perf_counter()
    print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "first_run_s": t3 - t2, "start_s": t3 - t0,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,  # Linux: KiB
                      "backend": session.backend, "runtime_version": session.info.get("runtime_version"),
                      "threads": session.info.get("threadpool_threads"), "python": sys.version.split()[0],
                      "torch_imported": "torch" in sys.modules}))
""")

# A timing worker: loads once, then answers each line "SETTLE COUNT" with COUNT timed raw runs (seconds).
WORKER = textwrap.dedent("""
    import json, sys, time
    import device_runtime
    backend = None if sys.argv[2] == "default" else sys.argv[2]
    session = device_runtime.load(sys.argv[1], backend=backend)
    run = session.raw_runner(session.validate_feed(session.example_feed()))
    run()
    print(json.dumps({"backend": session.backend}), flush=True)
    for line in sys.stdin:
        settle, count = (int(v) for v in line.split())
        for _ in range(settle):
            run()
        samples = []
        for _ in range(count):
            start = time.perf_counter(); run(); samples.append(time.perf_counter() - start)
        print(json.dumps(samples), flush=True)
""")


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def measure_start(python: str, path: Path, backend: str, repeats: int) -> dict:
    samples = []
    for _ in range(repeats):
        proc = subprocess.run([python, "-c", START, str(path), backend], capture_output=True, text=True,
                              env=child_env(), timeout=600)
        if proc.returncode:
            raise RuntimeError(f"{python} failed on {path} (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
        samples.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    best = min(samples, key=lambda s: s["start_s"])
    return {**best, "peak_rss_mb": max(s["peak_rss_mb"] for s in samples),
            "start_s_all": [round(s["start_s"], 3) for s in samples]}


def measure_steady(workers: dict[str, tuple[str, str]], path: Path, runs: int) -> dict[str, list[float]]:
    """{label: samples} of interleaved rounds across one worker process per runtime."""
    procs = {}
    try:
        for label, (python, backend) in workers.items():
            procs[label] = subprocess.Popen([python, "-c", WORKER, str(path), backend], stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                            env=child_env())
            json.loads(procs[label].stdout.readline())  # loaded and run once
        samples = {label: [] for label in procs}
        order = list(procs)
        for i in range(-(-runs // BLOCK)):
            for label in order[i % 2:] + order[:i % 2]:
                procs[label].stdin.write(f"{SETTLE} {min(BLOCK, runs - i * BLOCK)}\n")
                procs[label].stdin.flush()
                samples[label] += json.loads(procs[label].stdout.readline())
        return samples
    finally:
        for proc in procs.values():
            proc.stdin.close()
            proc.wait(timeout=60)


def export_model(name: str, tiny: bool, out: Path) -> Path:
    sys.path.insert(0, str(REPO))
    from sdk.console.progress import Progress
    from sdk.export.api import export

    result = export(name, "pte", "fp32", out_dir=out, tiny=tiny, progress=Progress())[0]
    print(result.summary())
    return result.path


def p50_ms(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[len(ordered) // 2] * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", nargs="?", type=Path, help="a .pte to measure")
    parser.add_argument("--export", help="export this zoo model to .pte fp32 first (full size unless --tiny)")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "out" / "bench_pte")
    parser.add_argument("--device-python", default=str(DEVICE_PYTHON),
                        help="the torch-free Python >= 3.12 with executorch-numpy-runtime (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per runtime for the start figures")
    parser.add_argument("--runs", type=int, default=200, help="timed steady-state runs per runtime")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    path = export_model(args.export, args.tiny, args.out) if args.export else args.path
    if path is None:
        parser.error("give a .pte or --export MODEL")
    runtimes = {"numpy runtime": (args.device_python, "executorch_numpy"), "binding": (sys.executable, "executorch")}
    start = {label: measure_start(python, path, backend, args.repeats) for label, (python, backend) in runtimes.items()}
    steady = measure_steady(runtimes, path, args.runs)
    p50 = {label: p50_ms(s) for label, s in steady.items()}
    load = os.getloadavg()[0]
    doc = {"path": str(path), "size_mb": path.stat().st_size / 1e6, "cpu": platform.processor() or platform.machine(),
           "cores": os.cpu_count(), "load_average_1m": load, "busy": load > 1.5, "start": start, "p50_ms": p50,
           "p50_ratio": p50["numpy runtime"] / p50["binding"], "runs": args.runs}
    with open("/proc/cpuinfo") as fh:
        doc["cpu"] = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), doc["cpu"])
    print(f"{path} ({doc['size_mb']:.2f} MB) on {doc['cpu']}, {doc['cores']} cores, load average {load:.2f}"
          + (" (a busy machine: figures are inflated)" if doc["busy"] else ""))
    print(f"  {'runtime':<15}{'backend':<18}{'ET':>7}{'python':>8}{'import s':>10}{'load s':>8}{'1st run s':>10}"
          f"{'start s':>9}{'peak MB':>9}{'p50 ms':>9} torch")
    for label, s in start.items():
        print(f"  {label:<15}{s['backend']:<18}{s['runtime_version']:>7}{s['python']:>8}{s['import_s']:>10.3f}"
              f"{s['load_s']:>8.3f}{s['first_run_s']:>10.3f}{s['start_s']:>9.3f}{s['peak_rss_mb']:>9.1f}"
              f"{p50[label]:>9.3f} {'YES' if s['torch_imported'] else 'no'}")
    numpy_start = start["numpy runtime"]
    doc["goals"] = {"start_s": numpy_start["start_s"] <= START_GOAL_S,
                    "peak_rss_mb": numpy_start["peak_rss_mb"] <= MEMORY_GOAL_MB,
                    "p50_within_5pct": doc["p50_ratio"] <= P50_GOAL, "no_torch": not numpy_start["torch_imported"]}
    print(f"  goals (numpy runtime): start <= {START_GOAL_S} s, peak <= {MEMORY_GOAL_MB:.0f} MB, p50 <= 1.05x the "
          f"binding's (is {doc['p50_ratio']:.3f}x), no torch: "
          + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in doc["goals"].items()))
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2))
    return 0 if all(doc["goals"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
