"""`pocketformer sweep`: models x formats x precisions exported on Ray, benchmarked on every device."""
from __future__ import annotations

from pathlib import Path

from device_runtime.errors import EXIT_OK, EXIT_PARITY


def _split(values) -> list[str]:
    return [v for part in (values or []) for v in part.split(",") if v]


def cmd_sweep(args) -> int:
    from sdk.console.progress import Progress
    from sdk.sweep.run import sweep
    from sdk.sweep.report import format_sweep

    models = _split(args.models)
    if args.all_models:
        from models_zoo import list_models

        models = list_models()
    document = sweep(
        models, formats=_split(args.formats) or ["onnx"], precisions=_split(args.precisions) or [None],
        devices=args.device or ["local"], repeats=args.repeats, out_dir=Path(args.out), tiny=args.tiny,
        seq_len=args.seq_len, weights=args.weights, runs=args.runs, warmup=args.warmup, threads=args.threads,
        retries=args.retries, address=args.address, num_cpus=args.num_cpus, workers=args.workers,
        export_cpus=args.export_cpus, export_memory_gb=args.export_memory_gb, export_timeout=args.export_timeout,
        bench_timeout=args.bench_timeout, connect_timeout=args.connect_timeout, fresh=args.fresh,
        progress=Progress(enabled=not args.quiet), verbose=getattr(args, "verbose", False),
        remote_python=args.remote_python, ssh_key=args.ssh_key, ssh_options=args.ssh_option, runner=args.runner)
    print(format_sweep(document))
    failed = [u for u in document["exports"] + document["benchmarks"] if u["status"] == "failed"]
    # Exit 1 when anything failed (every failure is in sweep.json with its reason); refusals are not failures.
    return EXIT_PARITY if failed else EXIT_OK


def add_parser(sub) -> None:
    p = sub.add_parser(
        "sweep", help="export models x formats x precisions on Ray and benchmark each artifact on every device",
        description="Each export folder is a Ray task (CPU and memory requests); each device a Ray actor pinned by "
                    "the custom resource device:NAME, running one benchmark at a time. Finished results are cached "
                    "by content key, cluster failures retried, every failure recorded with its reason. Output: one "
                    "folder that `pocketformer report` reads, with sweep.json and sweep.md. Needs Ray: "
                    "pip install 'pocketformer[cluster]'.")
    p.add_argument("models", nargs="*", help="zoo models (NAME-tiny for a tiny variant); or --all-models")
    p.add_argument("--all-models", action="store_true", help="every registered model")
    p.add_argument("--formats", action="append", help="formats, comma-separated or repeated (default onnx)")
    p.add_argument("--precisions", action="append",
                   help="precisions, comma-separated or repeated (default: each model's own)")
    p.add_argument("--device", action="append", metavar="[NAME=]ADDRESS",
                   help="a benchmark target, repeatable: local, ssh://user@host[:port], adb:SERIAL; NAME is its "
                        "Ray resource device:NAME (default: local)")
    p.add_argument("--repeats", type=int, default=1, help="benchmarks of each artifact per device (default 1)")
    p.add_argument("--runs", type=int, default=20, help="timed runs per benchmark (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="warm-up runs per benchmark (default 3)")
    p.add_argument("--threads", type=int, help="runtime threads in benchmarks")
    p.add_argument("--out", default="out", help="the merged report folder (default: out)")
    p.add_argument("--tiny", action="store_true", help="the models' tiny variants")
    p.add_argument("--seq-len", type=int, help="sequence length for the BERT family")
    p.add_argument("--weights", help="a local checkpoint for every model (default: seeded random weights)")
    ray = p.add_argument_group("Ray")
    ray.add_argument("--address", help="an existing cluster (default: $RAY_ADDRESS, else a local Ray started here)")
    ray.add_argument("--num-cpus", type=int, help="CPUs of the local Ray started here (default: this machine's)")
    ray.add_argument("--workers", type=int, help="export tasks at once (default: cluster CPUs / --export-cpus)")
    ray.add_argument("--export-cpus", type=float, default=1, help="CPUs each export task requests (default 1)")
    ray.add_argument("--export-memory-gb", type=float, default=2.0,
                     help="memory each export task requests, GiB (default 2; full-size BERT-base needs ~6)")
    ray.add_argument("--retries", type=int, default=2,
                     help="retries of a unit after a cluster failure (killed worker, timeout; default 2)")
    ray.add_argument("--export-timeout", type=float, default=3600, help="seconds per export task (default 3600)")
    ray.add_argument("--bench-timeout", type=float, default=900, help="seconds per benchmark (default 900)")
    ray.add_argument("--connect-timeout", type=float, default=60,
                     help="seconds a device has to answer its first check before it is reported unreachable")
    ray.add_argument("--fresh", action="store_true", help="ignore the cache: redo every export and benchmark")
    dev = p.add_argument_group("remote devices")
    dev.add_argument("--remote-python", help="the devices' Python interpreter (default python3)")
    dev.add_argument("--ssh-key", help="private key for SSH devices")
    dev.add_argument("--ssh-option", action="append", default=[], metavar="KEY=VALUE", help="an ssh -o option")
    dev.add_argument("--runner", metavar="PATH", help="a native benchmark binary for adb/SSH devices")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.set_defaults(func=cmd_sweep)
