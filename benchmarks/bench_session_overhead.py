"""What `Session.run` costs on top of the runtime's own Python API (issue 6 goal: within 5 % or 50 µs,
whichever is larger).

For each artifact, two objects are loaded with the same thread count: Pocketformer's `device_runtime.load(path)`
and the runtime's own API as its documentation shows it (ONNX Runtime `InferenceSession.run`, LiteRT's
signature runner, ExecuTorch's `Runtime` method `execute` with torch tensors in and numpy out). They run the
same feed in alternating blocks, so machine drift hits both alike; the figure is the difference of medians.

    python benchmarks/bench_session_overhead.py out/mobilevit_xxs/fp32/model.tflite out/.../model.pte ...
    python benchmarks/bench_session_overhead.py --export mobilevit_xxs,tinybert_4l_312d --tiny   # export first
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GOAL_FRACTION, GOAL_US = 0.05, 50.0


def native_runner(path: Path, threads: int):
    """A zero-argument callable running the artifact through its runtime's own API, and the feed it uses."""
    import device_runtime

    session = device_runtime.load(str(path), num_threads=threads)  # only for the feed's names and shapes
    feed = session.example_feed()
    names = [t.name for t in session.get_inputs()]
    if session.format == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        native = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return (lambda: native.run(None, feed)), feed
    if session.format == "tflite":
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(path), num_threads=threads)
        interpreter.allocate_tensors()
        runner = interpreter.get_signature_runner()
        return (lambda: runner(**feed)), feed
    if session.format == "pte":
        import torch
        from executorch.runtime import Runtime

        method = Runtime.get().load_program(path).load_method("forward")
        return (lambda: [o.numpy() for o in method.execute([torch.from_numpy(feed[n]) for n in names])]), feed
    raise SystemExit(f"{path}: no native runner for format {session.format}")


def measure(path: Path, threads: int, rounds: int, block: int) -> dict:
    import device_runtime

    native, feed = native_runner(path, threads)
    session = device_runtime.load(str(path), num_threads=threads)
    for _ in range(3):  # warm both
        native()
        session.run(None, feed)
    times = {"native": [], "session": []}
    for _ in range(rounds):
        for kind, call in (("native", native), ("session", lambda: session.run(None, feed))):
            for _ in range(block):
                start = time.perf_counter()
                call()
                times[kind].append(time.perf_counter() - start)
    native_us = statistics.median(times["native"]) * 1e6
    session_us = statistics.median(times["session"]) * 1e6
    overhead = session_us - native_us
    allowed = max(GOAL_FRACTION * native_us, GOAL_US)
    return {"path": str(path), "format": session.format, "backend": session.backend, "threads": threads,
            "native_us": native_us, "session_us": session_us, "overhead_us": overhead,
            "overhead_fraction": overhead / native_us, "allowed_us": allowed, "goal_met": overhead <= allowed,
            "samples": len(times["native"])}


def export_tiny(models: list[str], formats: list[str], tiny: bool, out: Path) -> list[Path]:
    from sdk.export import export

    paths = []
    for model in models:
        for fmt in formats:
            paths += [r.path for r in export(model, fmt, "fp32", out_dir=out, tiny=tiny)]
    return paths


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifacts", nargs="*", type=Path)
    parser.add_argument("--export", help="comma-separated zoo models to export (fp32) and measure first")
    parser.add_argument("--formats", default="pte,tflite,onnx")
    parser.add_argument("--tiny", action="store_true", help="export the tiny variants")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--block", type=int, default=20, help="runs per block; blocks alternate")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    paths = list(args.artifacts)
    with tempfile.TemporaryDirectory(prefix="pf-overhead-") as tmp:
        if args.export:
            paths += export_tiny(args.export.split(","), args.formats.split(","), args.tiny, Path(tmp))
        if not paths:
            parser.error("give artifacts or --export MODELS")
        rows = [measure(p, args.threads, args.rounds, args.block) for p in paths]
    print(f"{'artifact':<60} {'native µs':>10} {'Session µs':>11} {'overhead':>16}  goal (≤ max(5%, 50 µs))")
    for r in rows:
        name = r["path"] if len(r["path"]) <= 60 else "…" + r["path"][-59:]
        print(f"{name:<60} {r['native_us']:>10.1f} {r['session_us']:>11.1f} "
              f"{r['overhead_us']:>+8.1f} µs {r['overhead_fraction']:>+6.1%}  {'met' if r['goal_met'] else 'MISSED'}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0 if all(r["goal_met"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
