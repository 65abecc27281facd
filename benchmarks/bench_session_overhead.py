"""What `Session.run` costs on top of each runtime's own Python API (issue 6 goal: within 5 % or 50 µs,
whichever is larger), for every artifact given: `sdk.measure.bench.session_overhead` alternates the two calls on the
same feed and compares medians.

    python benchmarks/bench_session_overhead.py out/mobilevit_xxs/fp32/model.tflite out/.../model.pte ...
    python benchmarks/bench_session_overhead.py --export mobilevit_xxs,tinybert_4l_312d   # export fp32 first
    python benchmarks/bench_session_overhead.py --packed out/tinybert_4l_312d/fp32-packed32x4-64x8-128x16/model.pte

`--packed` (or a packed artifact given) also breaks down the per-run fixed cost of the serving path at each row
length, as serve-bench runs it (`adapt_io=True`, int64 ids): the runtime's own call, `Session.run` on a packed
row (feed checks, the int32 cast, the lock, routing to the row's entry point), and `PackedRunner.run` on the
sentences that fill the row (packing and reading the sentences back on top).
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
    parser.add_argument("--packed", action="store_true", help="also the serving path of packed artifacts per row")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="pf-overhead-") as tmp:
        paths = list(args.artifacts)
        for model in (args.export.split(",") if args.export else []):
            paths += [r.path for r in export(model, args.formats.split(","), "fp32", out_dir=tmp, tiny=args.tiny)]
        if not paths:
            parser.error("give artifacts or --export MODELS")
        rows = [session_overhead(p, runs=args.runs, threads=args.threads, feed=packed_feed(p)) for p in paths]
    print(f"{'artifact':<58} {'backend':<15} {'own API µs':>10} {'Session µs':>10} {'overhead':>18}  goal")
    for r in rows:
        name = r["path"] if len(r["path"]) <= 58 else "…" + r["path"][-57:]
        print(f"{name:<58} {r['backend']:<15} {r['raw_median_us']:>10.1f} {r['session_run_median_us']:>10.1f} "
              f"{r['overhead_us']:>+8.1f} µs {r['overhead_pct']:>+6.1f}%  "
              f"{'met' if r['within_goal'] else 'MISSED'} (≤ {r['allowed_us']:.0f} µs)")
    packed = [packed_path(p, args.runs, args.threads) for p in paths if args.packed and is_packed(p)]
    if packed:
        print(f"\n{'packed artifact, row':<58} {'own API µs':>10} {'Session µs':>10} {'fixed cost':>11} "
              f"{'runner µs':>10} {'pack+unpack':>12}")
    for artifact in packed:
        for r in artifact["rows"]:
            name = f"{artifact['path'][-44:]} {r['row']}"
            print(f"{name:<58} {r['raw_us']:>10.1f} {r['session_us']:>10.1f} {r['session_us'] - r['raw_us']:>+8.1f} µs "
                  f"{r['runner_us']:>10.1f} {r['runner_us'] - r['session_us']:>+9.1f} µs")
    if args.json:
        args.json.write_text(json.dumps({"session_overhead": rows, "packed_serving_path": packed}, indent=1)
                             if packed else json.dumps(rows, indent=1))
    return 0 if all(r["within_goal"] for r in rows) else 1


def is_packed(path: Path) -> bool:
    return packed_feed(path) is not None


def packed_feed(path: Path):
    """A full packed row of the longest row length for a packed artifact (its manifest's sample is a sentence,
    not a row); None for any other artifact."""
    import device_runtime
    from device_runtime.packing import PACKED_INPUTS, example_rows, row_shapes

    session = device_runtime.load(path)
    try:
        if sorted(t.name for t in session.get_inputs()) != sorted(PACKED_INPUTS):
            return None
        return example_rows(*row_shapes(session)[-1])
    finally:
        session.close()


def packed_path(path: Path, runs: int, threads: int | None) -> dict:
    """Per row length: median µs of the runtime's own call, of `Session.run` on the row, and of `PackedRunner.run`
    on the sentences filling it, interleaved (see the module docstring)."""
    import time

    import numpy as np

    import device_runtime
    from device_runtime.packing import PackedRunner, example_rows, row_shapes
    from device_runtime.scheduling import CostTable, EntryCost

    session = device_runtime.load(path, num_threads=threads, adapt_io=True)  # as serve-bench loads it
    out = []
    for capacity, segments in row_shapes(session):
        entry = session.entry(capacity) if hasattr(session, "entry") and getattr(session, "row_shapes", None) else session
        row = example_rows(capacity, segments)
        raw = entry.raw_runner(entry.validate_feed(row))
        each = capacity // segments  # sentences that fill the row exactly: one row, whatever the planner
        ids = np.ones((1, each), dtype=np.int64)
        feeds = [{"input_ids": ids, "attention_mask": ids, "token_type_ids": ids * 0}] * segments
        runner = PackedRunner(session, CostTable((EntryCost("packed", capacity, segments, 1e-3),)))
        calls = {"raw_us": raw, "session_us": lambda: session.run(None, row), "runner_us": lambda: runner.run(feeds)}
        samples = {k: [] for k in calls}
        for i in range(runs + 20):
            for k, fn in (list(calls.items()) if i % 2 else list(calls.items())[::-1]):
                start = time.perf_counter()
                fn()
                if i >= 20:
                    samples[k].append(time.perf_counter() - start)
        out.append({"row": f"{capacity}x{segments}", **{k: float(np.median(v) * 1e6) for k, v in samples.items()}})
    session.close()
    return {"path": str(path), "backend": session.backend, "rows": out}


if __name__ == "__main__":
    sys.exit(main())
