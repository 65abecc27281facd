"""What `Session.run` costs on top of each runtime's own Python API (issue 6 goal: within 5 % or 50 µs,
whichever is larger), for every artifact given: `sdk.measure.bench.session_overhead` alternates the two calls on the
same feed and compares medians.

    python benchmarks/bench_session_overhead.py out/mobilevit_xxs/fp32/model.tflite out/.../model.pte ...
    python benchmarks/bench_session_overhead.py --export mobilevit_xxs,tinybert_4l_312d   # export fp32 first
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    from sdk.measure.bench import session_overhead
    from sdk.export.api import export

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifacts", nargs="*", type=Path)
    parser.add_argument("--export", help="comma-separated zoo models to export at fp32 and measure")
    parser.add_argument("--formats", default="pte,tflite,onnx", help="formats for --export")
    parser.add_argument("--tiny", action="store_true", help="export the tiny variants")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="pf-overhead-") as tmp:
        paths = list(args.artifacts)
        for model in (args.export.split(",") if args.export else []):
            paths += [r.path for r in export(model, args.formats.split(","), "fp32", out_dir=tmp, tiny=args.tiny)]
        if not paths:
            parser.error("give artifacts or --export MODELS")
        rows = [session_overhead(p, runs=args.runs, threads=args.threads) for p in paths]
    print(f"{'artifact':<58} {'backend':<15} {'own API µs':>10} {'Session µs':>10} {'overhead':>18}  goal")
    for r in rows:
        name = r["path"] if len(r["path"]) <= 58 else "…" + r["path"][-57:]
        print(f"{name:<58} {r['backend']:<15} {r['raw_median_us']:>10.1f} {r['session_run_median_us']:>10.1f} "
              f"{r['overhead_us']:>+8.1f} µs {r['overhead_pct']:>+6.1f}%  "
              f"{'met' if r['within_goal'] else 'MISSED'} (≤ {r['allowed_us']:.0f} µs)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0 if all(r["within_goal"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
