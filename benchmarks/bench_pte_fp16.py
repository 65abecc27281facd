"""`.pte` fp16 against fp32 on this CPU: the same model's two programs, each in a process of its own.

Both files run through `device_runtime.isolated.benchmark_isolated` (one worker process per artifact, rounds
interleaved with a rotating start, as `pocketformer bench` does): through the torch-free numpy runtime where the
device environment exists (.cache/py313-device, scripts/py313_device_env.sh), else, or with --binding, through the
ExecuTorch binding in this Python. It prints what the CPU offers fp16 (XNNPACK runs fp16 natively only with fp16
arithmetic: AVX512-FP16 on x86, ARMv8.2-A FP16 on arm64; with F16C alone it widens fp16 to fp32 inside each
kernel, so fp16 saves memory traffic, not arithmetic), the p50 of both programs, and their ratio.

    python benchmarks/bench_pte_fp16.py --export mobilevit_xxs                  # full size, exported first
    python benchmarks/bench_pte_fp16.py out/m/fp32/model.pte out/m/fp16/model.pte
    python benchmarks/bench_pte_fp16.py --export mobilevit_xxs --tiny --runs 5  # a smoke run, not a figure

Times are wall-clock on this machine: a load average above its core count (printed) makes them a busy machine's.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# What decides fp16 speed, by architecture: native fp16 arithmetic, the conversions, and AMX (x86).
FP16_FLAGS = {"x86_64": ("f16c", "avx2", "avx512f", "avx512_fp16", "amx_tile", "amx_bf16", "amx_fp16"),
              "aarch64": ("fphp", "asimdhp", "asimdfhm")}


def cpu_report() -> dict:
    from device_runtime.cpu import read_cpuinfo

    info = read_cpuinfo()
    flags = {f: f in info.flags for f in FP16_FLAGS.get(info.arch, ())}
    native = flags.get("avx512_fp16") or flags.get("asimdhp") or False
    return {"model": info.model, "arch": info.arch, "summary": info.summary(), "fp16_flags": flags,
            "fp16_arithmetic": bool(native),
            "xnnpack_fp16": ("native fp16 arithmetic" if native else
                             "fp16 storage, fp32 arithmetic inside each kernel (F16C)" if flags.get("f16c") else
                             "none: XNNPACK refuses fp16 programs here")}


def export_pair(name: str, tiny: bool, out: Path) -> tuple[Path, Path]:
    from sdk.console.progress import Progress
    from sdk.export.api import export

    paths = []
    for precision in ("fp32", "fp16"):
        result = export(name, "pte", precision, out_dir=out, tiny=tiny, progress=Progress())[0]
        print(result.summary())
        paths.append(result.path)
    return paths[0], paths[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", type=Path, help="the fp32 .pte, then the fp16 .pte of the same model")
    parser.add_argument("--export", help="export this zoo model to .pte fp32 and fp16 first (full size unless --tiny)")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "out" / "bench_pte_fp16")
    parser.add_argument("--runs", type=int, default=200, help="timed runs per program")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--binding", action="store_true",
                        help="run both through the ExecuTorch binding in this Python (default: the numpy runtime in "
                             "the device environment, where it exists)")
    parser.add_argument("--threads", type=int, help="CPU threads (the binding only: the numpy runtime's pool is fixed)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.export:
        fp32, fp16 = export_pair(args.export, args.tiny, args.out)
    elif len(args.paths) == 2:
        fp32, fp16 = args.paths
    else:
        parser.error("give the fp32 and the fp16 .pte, or --export MODEL")

    from device_runtime.isolated import benchmark_isolated

    cpu = cpu_report()
    backend = "executorch" if args.binding or args.threads else None
    doc = benchmark_isolated([str(fp32), str(fp16)], runs=args.runs, warmup=args.warmup, threads=args.threads,
                             names=["fp32", "fp16"], backend=backend, pte_python=None if backend else "default")
    by_name = {r["name"]: r for r in doc["results"]}
    p50 = {name: by_name[name]["latency"]["p50"] for name in ("fp32", "fp16")}
    load = os.getloadavg()[0]
    print(f"CPU: {cpu['summary']}")
    print("fp16 flags: " + ", ".join(f"{f} {'yes' if v else 'no'}" for f, v in cpu["fp16_flags"].items()))
    print(f"XNNPACK fp16 here: {cpu['xnnpack_fp16']}")
    for name in ("fp32", "fp16"):
        r = by_name[name]
        print(f"{name}: p50 {p50[name]:.3f} ms over {r['runs']} runs, {r['size_bytes'] / 1e6:.2f} MB, "
              f"peak RSS {r['peak_rss_mb']:.0f} MB ({r['backend']}, ExecuTorch {r.get('runtime_version')}, "
              f"Python {r['process']['python']})")
    ratio = p50["fp16"] / p50["fp32"]
    print(f"fp16 / fp32 p50: {ratio:.3f}x   (load average {load:.2f} on {os.cpu_count()} CPUs"
          f"{': a busy machine, not a figure' if load > (os.cpu_count() or 1) else ''})")
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu, "p50_ms": p50, "fp16_over_fp32": ratio, "load_average": load,
                                         "bench": doc}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
