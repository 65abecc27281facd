"""`pocketformer profile`, `analyze` and `report`: looking inside artifacts and runs."""
from __future__ import annotations

from pathlib import Path

from device_runtime.errors import EXIT_OK, EXIT_UNSUPPORTED
from sdk.cli.common import CliError, add_device_args, add_feed_args, existing_artifact, print_table
from sdk.cli.feeds import build_feed


# -- profile -----------------------------------------------------------------------------------------
def cmd_profile(args) -> int:
    """Per-operator profile of an artifact here (Session.profile) or on a device (--device)."""
    import device_runtime
    from device_runtime.profile import OpProfile, profile_capabilities

    if args.capabilities or not args.artifact:
        rows = [("format", "backend", "runtime here", "per-operator profiler")]
        for row in profile_capabilities():
            rows.append((row["format"], row["backend"], "yes" if row["runtime_here"] else "no",
                         row["profiler"] or f"none: {row['no_profiler']}"))
        print_table(rows)
        return EXIT_OK
    artifact = existing_artifact(args.artifact, args.trust)
    from sdk.measure.bench import bench, sample_feed

    # The model's first real sample when the manifest names a zoo model; else the session's example feed.
    feed = build_feed(artifact, args.image, args.text, args.input, trust=True) or sample_feed(artifact, trust=True)
    if args.device:
        document = bench(
            [artifact], runs=max(1, args.runs), warmup=args.warmup, threads=args.threads, feeds=[feed],
            device=args.device, runner=args.runner, remote_python=args.remote_python, profile_runs=args.runs,
            ssh_key=args.ssh_key, ssh_options=args.ssh_option, trust=True)
        result = document["results"][0]
        if not result.get("profile"):
            raise CliError(f"no per-operator profile from {args.device}: "
                           f"{result.get('profile_unavailable') or 'the runner printed none'}", EXIT_UNSUPPORTED)
        table = OpProfile.from_dict(result["profile"])
    else:
        session = device_runtime.load(artifact, backend=args.backend, num_threads=args.threads, adapt_io=True)
        table = session.profile(feed, runs=args.runs, warmup=args.warmup)
    print(table.to_text(top=args.top))
    if args.json:
        from device_runtime.atomic import write_json as write_json_atomic

        write_json_atomic(Path(args.json), {"artifact": str(artifact), "device": args.device or "local",
                                            "profile": table.to_dict()})
        print(f"  written {args.json}")
    return EXIT_OK


# -- analyze -----------------------------------------------------------------------------------------
def cmd_analyze(args) -> int:
    """Parameters, FLOPs, memory access cost, arithmetic intensity and the CPU roofline, per zoo model."""
    from models_zoo import list_models
    from sdk.measure.analysis import analyze_model, cpu_roofline, format_analysis

    names = args.models or list_models()
    roofline = cpu_roofline(threads=args.threads, measure=args.measure)
    rows = [analyze_model(name, tiny=args.tiny, seq_len=args.seq_len, roofline=roofline) for name in names]
    print(format_analysis(rows, roofline))
    if args.json:
        from device_runtime.atomic import write_json as write_json_atomic

        write_json_atomic(Path(args.json), {"roofline": roofline, "models": rows})
        print(f"  written {args.json}")
    return EXIT_OK


# -- report ------------------------------------------------------------------------------------------
def cmd_report(args) -> int:
    from sdk.report.html_page import build_report

    paths = build_report(Path(args.dir), html_path=Path(args.out) if args.out else None,
                         markdown_path=Path(args.markdown) if args.markdown else None,
                         profile=not args.no_profile, analysis=not args.no_analysis)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return EXIT_OK


def add_parser(sub) -> None:
    prof = sub.add_parser("profile", help="per-operator profile of an artifact (here or on a device)")
    prof.add_argument("artifact", nargs="?", help="an exported artifact")
    prof.add_argument("--capabilities", action="store_true",
                      help="list which backends have a per-operator profiler (and why not)")
    add_feed_args(prof)
    prof.add_argument("--backend", help="runtime backend")
    prof.add_argument("--threads", type=int, help="CPU threads")
    prof.add_argument("--runs", type=int, default=10, help="profiled runs (default 10)")
    prof.add_argument("--warmup", type=int, default=2, help="unrecorded warm-up runs (default 2)")
    prof.add_argument("--top", type=int, default=20, help="rows to print (default 20)")
    prof.add_argument("--json", help="also write the profile as JSON to this file")
    add_device_args(prof)
    prof.set_defaults(func=cmd_profile)

    ana = sub.add_parser("analyze", help="params, FLOPs, memory access cost, arithmetic intensity, CPU roofline")
    ana.add_argument("models", nargs="*", help="zoo models (default: all)")
    ana.add_argument("--tiny", action="store_true", help="the tiny variants")
    ana.add_argument("--seq-len", type=int, help="sequence length for the BERT family (default 128)")
    ana.add_argument("--threads", type=int, help="cores the roofline counts (default: all usable)")
    ana.add_argument("--measure", action="store_true",
                     help="also measure this CPU's fp32 matmul rate and memory bandwidth (a few seconds)")
    ana.add_argument("--json", help="also write the analysis as JSON to this file")
    ana.set_defaults(func=cmd_analyze)

    rep = sub.add_parser("report", help="one self-contained HTML page (and Markdown) from a run's folder")
    rep.add_argument("dir", help="a folder with report.json files (pocketformer export) and bench JSON files")
    rep.add_argument("--out", help="HTML file (default DIR/report.html)")
    rep.add_argument("--markdown", help="Markdown file (default DIR/report.md; images beside it)")
    rep.add_argument("--no-profile", action="store_true",
                     help="do not profile the slowest artifact when no bench JSON holds its profile")
    rep.add_argument("--no-analysis", action="store_true", help="skip FLOPs counting (no FLOPs-vs-latency plot)")
    rep.set_defaults(func=cmd_report)
