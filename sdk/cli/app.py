"""The `pocketformer` command line: a thin layer over `sdk` and `device_runtime`.

Exit codes scripts can trust:
  0  success
  1  verification failed (the artifact does not match PyTorch within the model's tolerance)
  2  bad usage or bad input (unknown model, format or option, unreadable file, wrong shape or dtype,
     an artifact modified since export)
  3  not supported here (format/precision combination, missing toolchain or runtime)
  4  the toolchain failed to convert the model
  5  the runtime failed while running the model
  70 an unexpected error: a bug (the message points at where it happened; --verbose shows the traceback)
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from device_runtime.errors import (EXIT_BAD_INPUT, EXIT_BUG, EXIT_OK, EXIT_UNSUPPORTED,  # noqa: F401 (re-exported)
                                   PocketformerError)
from sdk.cli.common import (CliError, add_device_args, add_feed_args, add_runtime_args,  # noqa: F401 (re-exported)
                            existing_artifact, print_table)
from sdk.cli.feeds import build_feed

# Subcommands in modules of their own; each has `add_parser(subparsers)`.
COMMAND_MODULES = ("sdk.cli.inspect", "sdk.cli.compress", "sdk.cli.verify", "sdk.cli.sweep", "sdk.cli.serve")


# -- zoo ---------------------------------------------------------------------------------------------
def cmd_zoo_list(args) -> int:
    from models_zoo import get_model, list_models

    rows = [("model", "family", "task", "inputs", "default precision", "tiny variant")]
    for name in list_models():
        spec = get_model(name)
        inputs = ", ".join(f"{s.name} {s.dtype}{list(s.shape)}" for s in spec.input_specs())
        rows.append((name, spec.family, spec.task, inputs, spec.default_precision,
                     "yes" if spec.tiny_overrides is not None else "NO"))
    print_table(rows)
    from sdk.export.pipeline import list_pipeline_models

    print("\npipeline models (several artifacts joined by numpy glue; `pocketformer export NAME [--tiny] --to "
          "FMT[,FMT]`, see docs/pipelines.md):")
    for name in list_pipeline_models():
        print(f"  {name}: stages detector, box_head, fusion, caption; tiny variant: yes")
    return EXIT_OK


def cmd_zoo_show(args) -> int:
    from models_zoo import get_model

    spec = get_model(args.model, tiny=args.tiny)
    print(json.dumps(spec.describe(), indent=2))
    return EXIT_OK


def cmd_formats(args) -> int:
    import device_runtime
    from converters import get_converter, list_converters

    rows = [("format", "suffix", "precisions", "converter here", "runtime backends here")]
    backends = device_runtime.list_backends()
    for fmt in list_converters():
        conv = get_converter(fmt)
        runtime = ", ".join(f"{b['name']} ({'ok' if b['unavailable'] is None else 'unavailable'})"
                            for b in backends.get(fmt, [])) or "none"
        rows.append((fmt, conv.suffix, " ".join(conv.precisions), conv.missing_toolchain() or "ok", runtime))
    print_table(rows)
    return EXIT_OK


# -- export ------------------------------------------------------------------------------------------
def cmd_export(args, option_dests: list[str]) -> int:
    from sdk.export.api import export
    from sdk.export.pipeline import is_pipeline_model
    from sdk.console.progress import Progress

    if is_pipeline_model(args.model):  # several artifacts and glue (MiniVLM): sdk/cli/pipeline.py
        from sdk.cli.pipeline import cmd_export_pipeline

        return cmd_export_pipeline(args, option_dests)
    if args.stage:
        raise CliError(f"--stage picks a pipeline model's stage formats; {args.model} is one artifact")

    formats = [f for part in args.to for f in part.split(",") if f]
    # Only the options the user gave: each converter's Options supplies its own defaults.
    # (`seq_lens` is among the dests only to keep it one flag for every format; export takes it by name.)
    options = {d: getattr(args, d) for d in option_dests if d != "seq_lens" and getattr(args, d) is not None}
    progress = Progress(enabled=not args.quiet)
    results = export(args.model, formats, args.precision, out_dir=args.out, weights=args.weights, tiny=args.tiny,
                     seq_len=args.seq_len, seq_lens=args.seq_lens, pack=args.pack, batch_sizes=args.batch_sizes,
                     calibration=args.calibration, eval=args.eval,
                     progress=progress, **options)
    for result in results:
        print(result.summary())
    if args.bundle:  # a verification bundle of what was just exported (sdk/device/bundles.py)
        from sdk.device.bundles import write_bundle

        print(f"bundle: {write_bundle([r.path for r in results], args.bundle, zip_=args.bundle.endswith('.zip'))}")
    print(f"report: {results[-1].report_path}")
    return EXIT_OK


# -- run ---------------------------------------------------------------------------------------------
def _open(args):
    import device_runtime

    return device_runtime.load(args.artifact, backend=args.backend, num_threads=args.threads, adapt_io=True)


def cmd_run(args) -> int:
    import numpy as np

    from device_runtime.pipeline import is_pipeline
    from sdk.export.records import report_for_artifact

    if is_pipeline(args.artifact):  # a folder (or bundle) with pipeline.json: sdk/cli/pipeline.py
        from sdk.cli.pipeline import cmd_run_pipeline

        return cmd_run_pipeline(args)
    if sum(bool(x) for x in (args.image, args.text, args.input)) > 1:
        raise CliError("give one of --image, --text or --input (both --image and --text are for a "
                       "vision-language pipeline)")
    artifact = existing_artifact(args.artifact, args.trust)
    feed = build_feed(artifact, args.image, args.text, args.input, trust=True)  # checked just above
    session = _open(args)
    if not feed:
        raise CliError("nothing to run on: give --image, --text or --input NAME=FILE.npy")
    outputs = session.run(None, feed)
    model, entry = report_for_artifact(artifact, trust=True)
    labels = model.get("labels")
    # Rankings are for classifiers; an embedding (or any output without classes) is shown as numbers, never as
    # "class i" probabilities it does not have.
    ranks = "embedding" not in str(model.get("task", "")) and "custom" != model.get("task")
    for info, out in zip(session.get_outputs(), outputs):
        print(f"{info.name}: {out.dtype.name}{list(out.shape)}")
        if ranks and out.ndim == 2 and out.shape[0] == 1 and np.issubdtype(out.dtype, np.floating):
            logits = out[0].astype(np.float64)
            probs = np.exp(logits - logits.max())
            probs /= probs.sum()
            for rank, idx in enumerate(np.argsort(-logits)[:args.top], 1):
                label = labels[idx] if labels and idx < len(labels) else f"class {idx}"
                print(f"  {rank}. {label:<40} p={probs[idx]:.4f}  logit={logits[idx]:+.4f}")
        else:
            norm = f"  (L2 norm {np.linalg.norm(out.ravel()):.4f})" if np.issubdtype(out.dtype, np.floating) else ""
            print("  " + np.array2string(out.ravel()[:10], precision=4) + norm)
    if (entry or {}).get("weights", {}).get("source") == "random":
        print("note: this artifact was exported with random weights; its predictions are not meaningful")
    return EXIT_OK


# -- bench -------------------------------------------------------------------------------------------
def cmd_bench(args) -> int:
    """Several artifacts, interleaved, here or on a device (--device); ratios against the first."""
    if getattr(args, "app", False):  # bundles run by the Android app (sdk/device/android.py)
        from sdk.device.android import cmd_bench_app

        return cmd_bench_app(args)
    from device_runtime.pipeline import is_pipeline
    from sdk.measure.bench import bench, format_table
    from sdk.console.progress import Progress

    if any(is_pipeline(a) for a in args.artifacts):  # stage by stage, the glue's share: sdk/cli/pipeline.py
        from sdk.cli.pipeline import cmd_bench_pipeline

        return cmd_bench_pipeline(args)
    progress = Progress(enabled=not args.quiet)
    artifacts = [existing_artifact(a, args.trust) for a in args.artifacts]
    feeds = None
    if args.image or args.text or args.input:
        feeds = [build_feed(a, args.image, args.text, args.input, trust=True) or None for a in artifacts]
    document = bench(
        artifacts, runs=args.runs, warmup=args.warmup, threads=args.threads, feeds=feeds, device=args.device,
        runner=args.runner, remote_python=args.remote_python, profile_runs=args.profile_runs,
        backend=args.backend, ssh_key=args.ssh_key, ssh_options=args.ssh_option,
        progress=progress.bar("bench"), note=progress.note, trust=args.trust)
    print(format_table(document))
    if args.json:
        from device_runtime.atomic import write_json as write_json_atomic

        write_json_atomic(Path(args.json), document)
        print(f"  written {args.json}")
    if args.verify:  # numerics on the same device, in the same trip (sdk/device/verify.py)
        from sdk.device.verify import verify_after_bench

        return verify_after_bench(artifacts, args)
    return EXIT_OK


# -- tune --------------------------------------------------------------------------------------------
def cmd_tune(args, option_dests: Sequence[str] = ()) -> int:
    from sdk.console.progress import Progress
    from sdk.measure.tune import format_tune, tune

    formats = [f for part in (args.formats or []) for f in part.split(",") if f] or None
    precisions = [p for part in (args.precisions or []) for p in part.split(",") if p] or None
    result = tune(args.model, out_dir=Path(args.out), tiny=args.tiny, seq_len=args.seq_len,
                  max_error=args.max_error, formats=formats, precisions=precisions, runs=args.runs,
                  warmup=args.warmup, threads=args.threads, weights=args.weights, eval=args.eval,
                  max_accuracy_drop=args.max_accuracy_drop, progress=Progress(enabled=not args.quiet),
                  stages=[s for part in args.stage for s in part.split(",") if s] or None,
                  **{d: getattr(args, d) for d in option_dests if getattr(args, d, None) is not None})
    print(format_tune(result))
    if result.get("pipeline"):  # stage by stage (sdk/measure/pipeline_tune.py): a pick per stage, verified end to end
        from sdk.cli.pipeline import tune_exit_code

        return tune_exit_code(result)
    return EXIT_OK if result.get("pick") else EXIT_UNSUPPORTED


# -- parser ------------------------------------------------------------------------------------------
def build_parser() -> tuple[argparse.ArgumentParser, list[str]]:
    from converters import PRECISIONS, list_converters

    parser = argparse.ArgumentParser(
        prog="pocketformer", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Export compressed Transformers to phones and edge boxes, verify them against PyTorch, "
                    "run and benchmark them.", epilog=__doc__.split("\n", 2)[2])
    sub = parser.add_subparsers(dest="command", required=True)

    zoo = sub.add_parser("zoo", help="the models zoo").add_subparsers(dest="zoo_command", required=True)
    zoo.add_parser("list", help="families, variants and input specs").set_defaults(func=cmd_zoo_list)
    show = zoo.add_parser("show", help="one model's full spec as JSON")
    show.add_argument("model")
    show.add_argument("--tiny", action="store_true", help="the tiny variant")
    show.set_defaults(func=cmd_zoo_show)

    sub.add_parser("formats", help="export formats and runtime backends, and whether each is installed here"
                   ).set_defaults(func=cmd_formats)

    exp = sub.add_parser("export", help="export a zoo model, verify it against PyTorch, write report.json",
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         epilog="precisions:\n" + "\n".join(f"  {k:<13} {v}" for k, v in PRECISIONS.items()))
    exp.add_argument("model", help="a zoo model name (see `pocketformer zoo list`); NAME-tiny for its tiny variant")
    exp.add_argument("--to", action="append", required=True, metavar="FORMAT",
                     help=f"format(s), repeat or comma-separate: {', '.join(list_converters())}")
    exp.add_argument("--precision", choices=list(PRECISIONS),
                     help="numeric precision (default: the model's own, fp32 except q8bert's int8)")
    exp.add_argument("--out", default="out", help="output root; artifacts go to OUT/MODEL/PRECISION/ (default: out)")
    exp.add_argument("--weights", help="a local checkpoint (safetensors, .pth/.bin, or a timm/HF folder); "
                                       "default: seeded random weights, said in the report")
    exp.add_argument("--tiny", action="store_true", help="export the tiny variant (same architecture, small dims)")
    exp.add_argument("--seq-len", type=int, help="sequence length for the BERT family (default 128)")
    exp.add_argument("--seq-lens", metavar="N,N,...",
                     help="BERT family: several lengths in one step (e.g. 16,32,64,128), each verified: one artifact "
                          "holding them all where the format allows (pte methods, tflite signatures, an ONNX dynamic "
                          "axis, Core ML enumerated shapes, or a range MIN-MAX there); the runtime pads each request "
                          "to the smallest that fits")
    exp.add_argument("--pack", metavar="CAPACITYxSEGMENTS",
                     help="BERT family: export the packed entry point instead, rows of CAPACITY tokens holding up "
                          "to SEGMENTS sentences (block-diagonal attention; e.g. 128x16); verified, and each "
                          "sentence's output equals running it alone. Several, comma-separated (32x4,64x8,128x16): "
                          "one .pte/.tflite with an entry point per row length, the weights stored once")
    exp.add_argument("--batch-sizes", metavar="N,N,...",
                     help="vision families: several batch sizes in one step (e.g. 1,2,4,8), each verified on distinct "
                          "real images: one artifact holding them all (pte methods batch1.. and forward=batch1, tflite signatures, the "
                          "ONNX dynamic batch axis; om: ATC profiles); the runtime pads fewer rows to the smallest "
                          "that fits and runs more in chunks, so a Batcher gets real batches")
    exp.add_argument("--calibration", metavar="PATH",
                     help="int8 calibration data: a folder of images, or a text file with one sentence a line "
                          "(default: the model's real sample inputs)")
    exp.add_argument("--eval", metavar="PATH",
                     help="your own labelled data: an image folder with one subfolder per class, or a TSV of "
                          "text<TAB>label (text_a<TAB>text_b<TAB>label for pairs); reports the top-1 accuracy of fp32 "
                          "PyTorch and of each artifact on it")
    exp.add_argument("--quiet", action="store_true", help="no progress lines")
    exp.add_argument("--bundle", metavar="PATH", help="also write a verification bundle of the exported artifacts "
                                                      "(a .zip when PATH ends in .zip; see `pocketformer bundle`)")
    exp.add_argument("--stage", action="append", default=[], metavar="STAGE=FORMAT[:PRECISION]",
                     help="pipeline models (minivlm): one stage's format and precision, e.g. detector=tflite:int8 "
                          "(repeatable; the others follow --to: one format for all, or two: vision stages, then "
                          "transformer stages)")
    option_dests = _add_converter_options(exp)
    exp.set_defaults(func=lambda a: cmd_export(a, option_dests))

    run = sub.add_parser("run", help="run an artifact on an image, a sentence or raw tensors; print top outputs")
    add_runtime_args(run)
    run.add_argument("--top", type=int, default=5, help="how many top classes to print (default 5)")
    run.set_defaults(func=cmd_run)

    bench = sub.add_parser(
        "bench", help="latency of artifacts, interleaved: load, first run, percentiles, peak memory, ratios",
        description="Benchmark one or more artifacts in one process, interleaved round by round so machine drift "
                    "hits them alike; ratios are against the first artifact. With --device, on your own device.")
    bench.add_argument("artifacts", nargs="+", metavar="artifact",
                       help="exported artifacts (.pte, .tflite, .onnx, ...); the format is read from the bytes")
    add_feed_args(bench)
    bench.add_argument("--backend", help="runtime backend (default: the first installed for each format)")
    bench.add_argument("--threads", type=int, help="CPU threads for the runtimes (default: each runtime's own)")
    bench.add_argument("--runs", type=int, default=50, help="timed runs per artifact (default 50)")
    bench.add_argument("--warmup", type=int, default=5, help="untimed warm-up runs per artifact (default 5)")
    bench.add_argument("--profile-runs", type=int, default=0, metavar="N",
                       help="also record each artifact's per-operator profile over N runs (into the JSON)")
    bench.add_argument("--json", help="also write the result document as JSON to this file")
    bench.add_argument("--quiet", action="store_true", help="no progress bar")
    add_device_args(bench)
    bench.add_argument("--app", action="store_true",
                       help="with --device adb:SERIAL: run bundles (or exports, bundled first) in the installed "
                            "Pocketformer Android app, pull its JSON and self-check (android_demo/)")
    bench.add_argument("--verify", action="store_true", help="also run the artifacts' real samples on the device and "
                       "judge its outputs against the host's (exit 1 when the tolerance is missed; JSON beside --json)")
    bench.set_defaults(func=cmd_bench)

    tun = sub.add_parser("tune", help="export to every format x precision that runs here, keep the accurate ones, "
                                      "benchmark them interleaved, pick the fastest")
    tun.add_argument("model", help="a zoo model name (NAME-tiny for its tiny variant), or a pipeline model (minivlm)")
    tun.add_argument("--max-error", type=float,
                     help="also require max abs error vs fp32 PyTorch <= this (default: the model's own tolerance)")
    tun.add_argument("--formats", action="append", help="limit to these formats (comma-separated or repeated)")
    tun.add_argument("--precisions", action="append", help="limit to these precisions (comma-separated or repeated)")
    tun.add_argument("--out", default="out", help="output root (default: out)")
    tun.add_argument("--tiny", action="store_true", help="the tiny variant")
    tun.add_argument("--seq-len", type=int, help="sequence length for the BERT family")
    tun.add_argument("--weights", help="a local checkpoint (default: seeded random weights)")
    tun.add_argument("--runs", type=int, default=50, help="timed runs per candidate (default 50)")
    tun.add_argument("--warmup", type=int, default=5, help="warm-up runs per candidate (default 5)")
    tun.add_argument("--threads", type=int, help="CPU threads for the runtimes")
    tun.add_argument("--eval", metavar="PATH", help="your own labelled data (as export --eval): each candidate's "
                                                    "top-1 accuracy is measured on it")
    tun.add_argument("--max-accuracy-drop", type=float, metavar="POINTS",
                     help="keep only candidates whose top-1 on --eval is within POINTS of fp32 PyTorch's")
    tun.add_argument("--stage", action="append", default=[], metavar="STAGE",
                     help="pipeline models (minivlm): tune only these stages (repeat or comma-separate; the others "
                          "take the first format at fp32)")
    tun.add_argument("--quiet", action="store_true", help="no progress lines")
    tune_dests = [d for d in _add_converter_options(tun) if d != "seq_lens"]  # the formats' own options, as export's
    tun.set_defaults(func=lambda a: cmd_tune(a, tune_dests))
    for module in COMMAND_MODULES:
        importlib.import_module(module).add_parser(sub)
    parser.add_argument("--verbose", action="store_true", help="show the toolchains' own log lines and warnings, "
                                                               "and tracebacks of unexpected errors")
    _add_verbose(sub)
    return parser, option_dests


def _add_verbose(subparsers) -> None:
    """`--verbose` after any subcommand too (SUPPRESS: a subcommand without it keeps the top-level value)."""
    for p in subparsers.choices.values():
        p.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                _add_verbose(action)


def _add_converter_options(exp: argparse.ArgumentParser) -> list[str]:
    """`export`'s format flags, generated from each converter's typed `Options` (one group per format).

    A field two formats declare is one flag (same meaning by contract). Defaults are left to the dataclass
    (argparse's default is None: "not given"), so the CLI and the Python API cannot disagree.
    """
    from converters import get_converter, list_converters
    from converters.base import option_field_type, option_fields, option_flag

    dests: list[str] = ["seq_lens"]  # export's own flag (Core ML's enumerated shapes are one way to honour it)
    for fmt in list_converters():
        conv = get_converter(fmt)
        fields = [f for f in option_fields(conv.Options) if f.name not in dests]
        if not fields:
            continue
        group = exp.add_argument_group(f"{fmt} options")
        for f in fields:
            meta, kind = f.metadata, option_field_type(conv.Options, f)
            kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": meta.get("help") or None}
            flag = option_flag(f)
            if kind is bool:
                kwargs["action"] = "store_const"
                kwargs["const"] = f.default is not True
                if f.default is True and kwargs["help"]:  # the flag switches off what the field turns on
                    kwargs["help"] = "do not " + kwargs["help"]
            else:
                kwargs.update(type=kind if kind in (int, float) else str, metavar=meta.get("metavar"))
                if meta.get("choices"):
                    kwargs["choices"] = list(meta["choices"])
            group.add_argument(flag, **kwargs)
            dests.append(f.name)
    return dests


def _bug_pointer(exc: BaseException) -> str:
    """Where an unexpected exception was raised, and the innermost frame of this product on the way."""
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "unknown location"
    where = lambda f: f"{f.filename}:{f.lineno} in {f.name}"  # noqa: E731
    ours = [f for f in frames if any(f"/{pkg}/" in f.filename for pkg in ("sdk", "converters", "device_runtime",
                                                                           "models_zoo"))]
    if ours and ours[-1] is not frames[-1]:
        return f"{where(frames[-1])}, via {where(ours[-1])}"
    return where(frames[-1])


def main(argv: Sequence[str] | None = None) -> int:
    from sdk.console.quiet import quiet_native_logs

    parser, _ = build_parser()
    args = parser.parse_args(argv)
    verbose = getattr(args, "verbose", False)
    try:
        with quiet_native_logs(verbose):
            return args.func(args)
    except KeyboardInterrupt:
        print("pocketformer: interrupted", file=sys.stderr)
        return 130
    except PocketformerError as exc:
        print(f"pocketformer: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # not a typed error: a bug, never reported as bad input
        if verbose:
            import traceback

            traceback.print_exc()
        print(f"pocketformer: internal error: {type(exc).__name__}: {str(exc)[:500]}\n"
              f"  at {_bug_pointer(exc)} (a bug; rerun with --verbose for the traceback)", file=sys.stderr)
        return EXIT_BUG


if __name__ == "__main__":
    sys.exit(main())
