"""Device-side benchmark entry point: the same JSON document as `pocketformer bench`, measured on this device.

    python -m device_runtime.remote.bench_main model.tflite [other.tflite ...] --runs 50 --warmup 5 --threads 4

Needs Python, numpy and the artifacts' runtime (ai_edge_litert or tflite_runtime, onnxruntime, executorch);
never torch for its own sake. `pocketformer bench --device ssh://...` copies this package to the device and runs
it with `--framed`, which wraps the JSON in marker lines so runtime log lines on stdout cannot corrupt it.
Failures print a JSON document too (`{"error": {"kind", "type", "message"}}`) and exit 3 when a runtime is
missing, 2 for a bad artifact or feed, 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import sys

BEGIN = "-----BEGIN POCKETFORMER BENCH JSON-----"
END = "-----END POCKETFORMER BENCH JSON-----"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m device_runtime.remote.bench_main", description=__doc__.split("\n\n")[0])
    p.add_argument("artifacts", nargs="+", help="artifacts to benchmark, interleaved; ratios are against the first")
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int)
    p.add_argument("--backend", help="runtime backend (default: the first installed for each format)")
    p.add_argument("--feed", action="append", default=[], metavar="INDEX=FILE.npz",
                   help="the feed of artifact INDEX (0-based), as arrays named after its inputs")
    p.add_argument("--name", action="append", default=[], help="labels of the artifacts, in order")
    p.add_argument("--profile-runs", type=int, default=0, help="also profile each artifact per operator")
    p.add_argument("--framed", action="store_true", help="wrap the JSON in marker lines")
    p.add_argument("--json", help="also write the JSON to this file")
    return p


def _emit(document: dict, framed: bool, path: str | None) -> None:
    text = json.dumps(document, indent=2, default=str)
    if path:
        with open(path, "w") as fh:
            fh.write(text)
    sys.stdout.write(f"{BEGIN}\n{text}\n{END}\n" if framed else text + "\n")
    sys.stdout.flush()


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        import numpy as np

        from device_runtime.errors import BackendUnavailableError, CorruptArtifactError, InputError, UnknownFormatError
        from device_runtime.measure import SCHEMA, benchmark_artifacts
    except ImportError as exc:  # numpy missing: say so in the same channel
        _emit({"schema": "pocketformer.bench/1", "error": {"kind": "runtime_missing", "type": type(exc).__name__,
                                                           "message": f"{exc} (the device needs numpy)"}},
              args.framed, args.json)
        return 3
    try:
        feeds = [None] * len(args.artifacts)
        for spec in args.feed:
            index, _, path = spec.partition("=")
            with np.load(path, allow_pickle=False) as data:
                feeds[int(index)] = {k: data[k] for k in data.files}
        document = benchmark_artifacts(args.artifacts, runs=args.runs, warmup=args.warmup, threads=args.threads,
                                       feeds=feeds, names=args.name or None, backend=args.backend,
                                       profile_runs=args.profile_runs)
    except BackendUnavailableError as exc:
        _emit({"schema": SCHEMA, "error": {"kind": "runtime_missing", "type": type(exc).__name__,
                                           "message": str(exc)}}, args.framed, args.json)
        return 3
    except (FileNotFoundError, InputError, UnknownFormatError, CorruptArtifactError, ValueError) as exc:
        _emit({"schema": SCHEMA, "error": {"kind": "bad_input", "type": type(exc).__name__, "message": str(exc)}},
              args.framed, args.json)
        return 2
    except Exception as exc:  # report, never hang the host on a traceback it cannot read
        _emit({"schema": SCHEMA, "error": {"kind": "error", "type": type(exc).__name__, "message": str(exc)}},
              args.framed, args.json)
        return 1
    import device_runtime

    document["host"]["device_runtime"] = device_runtime.__file__  # which copy ran (the shipped zip, remotely)
    _emit(document, args.framed, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
