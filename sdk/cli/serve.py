"""`pocketformer serve-bench`: a load test of the serving configurations of one BERT-family model."""
from __future__ import annotations

from pathlib import Path

from device_runtime.errors import EXIT_OK
from sdk.cli.common import existing_artifact


def cmd_serve_bench(args) -> int:
    from sdk.serve.bench import format_serve_bench, serve_bench

    artifact = existing_artifact(args.artifact)
    configs = [c for part in (args.configs or []) for c in part.split(",") if c] or None
    document = serve_bench(artifact, stream=args.stream, count=args.count, rate=args.rate,
                           concurrency=args.concurrency, threads=args.threads, max_delay_ms=args.max_delay_ms,
                           max_queue_size=args.max_queue_size, progress=not args.quiet,
                           **({"configs": configs} if configs else {}))
    print(format_serve_bench(document))
    if args.json:
        from device_runtime.atomic import write_json

        write_json(Path(args.json), document)
        print(f"  written {args.json}")
    return EXIT_OK


def add_parser(sub) -> None:
    from sdk.serve.bench import CONFIGS

    p = sub.add_parser("serve-bench", help="replay a real sentence stream against fixed, bucketed, packed, "
                                           "packed+batched and cost-scheduled serving of one BERT-family model")
    p.add_argument("artifact", help="an exported artifact; the other configurations are found beside it "
                                    "(<precision>/, <precision>-seqs.../, <precision>-packed.../; 'scheduled' "
                                    "where a multi-row one is there: --pack 32x4,64x8,128x16)")
    p.add_argument("--stream", help="a text file, one sentence a line, or a folder (the docstrings of its .py files, "
                                    "else its text files' sentences); default: the standard library's docstrings")
    p.add_argument("--count", type=int, default=400, help="sentences to replay (default 400)")
    load = p.add_mutually_exclusive_group()
    load.add_argument("--rate", type=float, help="open loop: Poisson arrivals at this many requests per second")
    load.add_argument("--concurrency", type=int, default=8,
                      help="closed loop: clients, each sending its next sentence when answered (default 8)")
    p.add_argument("--threads", type=int, help="CPU threads for the runtime")
    p.add_argument("--max-delay-ms", type=float, default=5.0,
                   help="packed+batched: how long a batch waits to fill its rows (default 5)")
    p.add_argument("--max-queue-size", type=int, default=256,
                   help="requests waiting beyond this are rejected (default 256)")
    p.add_argument("--configs", action="append", metavar="NAME[,NAME]",
                   help=f"only these configurations ({', '.join(CONFIGS)})")
    p.add_argument("--json", help="also write the figures as JSON to this file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_serve_bench)
