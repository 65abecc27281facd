"""The `pocketformer` commands' pipeline side: `export` of a pipeline model (MiniVLM), `run` of a pipeline folder
(or a bundle holding one) on a photo and a question, `bench` of one stage by stage and `tune` of a pipeline model
per stage. `sdk.cli.app` routes here; nothing here imports it."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from device_runtime.errors import EXIT_OK, EXIT_PARITY, EXIT_UNSUPPORTED
from sdk.cli.common import CliError, existing_artifact

RANDOM_NOTE = ("note: this pipeline's weights are random (seeded; no trained MiniVLM weights exist offline), so the "
               "answers and the caption are meaningless words: they show the pipeline runs, not what it sees")


def cmd_export_pipeline(args, option_dests: list[str]) -> int:
    """`pocketformer export minivlm [--tiny] --to FMT[,FMT] [--stage STAGE=FMT[:PRECISION]] ...`."""
    from sdk.console.progress import Progress
    from sdk.export.api import export
    from sdk.export.pipeline import parse_stage_flags

    formats = [f for part in args.to for f in part.split(",") if f]
    options = {d: getattr(args, d) for d in option_dests if d != "seq_lens" and getattr(args, d) is not None}
    (result,) = export(args.model, formats, args.precision, out_dir=args.out, weights=args.weights, tiny=args.tiny,
                       seq_len=args.seq_len, seq_lens=args.seq_lens, pack=args.pack, batch_sizes=args.batch_sizes,
                       calibration=args.calibration, eval=args.eval, progress=Progress(enabled=not args.quiet),
                       stages=parse_stage_flags(args.stage) or None, **options)
    print(result.summary())
    print(f"pipeline: {result.path / 'pipeline.json'}")
    if args.bundle:
        from sdk.device.pipeline_bundle import write_pipeline_bundle

        print(f"bundle: {write_pipeline_bundle(result.path, args.bundle, zip_=args.bundle.endswith('.zip'))}")
    print(f"report: {result.report_path}")
    print(RANDOM_NOTE)
    return EXIT_OK


def _pipeline_report(session) -> dict[str, Any]:
    """The report.json beside the pipeline.json (an export's figures and model facts), or {}."""
    path = Path(session.pipeline.root) / "report.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def caption_text(ids: np.ndarray) -> str:
    """Caption ids -> words: bert-base-uncased WordPiece, [CLS] dropped, up to [SEP], '##' pieces joined."""
    from models_zoo.data import bert_vocab_path, wordpiece_vocab
    from models_zoo.minivlm import CLS_ID, PAD_ID, SEP_ID

    vocab = wordpiece_vocab(bert_vocab_path())
    words: list[str] = []
    for token in np.asarray(ids).ravel().tolist():
        if token == SEP_ID:
            break
        if token in (CLS_ID, PAD_ID):
            continue
        piece = vocab[token] if 0 <= token < len(vocab) else f"[{token}]"
        if piece.startswith("##") and words:
            words[-1] += piece[2:]
        else:
            words.append(piece)
    return " ".join(words)


def cmd_run_pipeline(args) -> int:
    """`pocketformer run PIPELINE --image PHOTO --text QUESTION`: top VQA answers, the retrieval score, the
    regions and a greedy caption."""
    import device_runtime
    from sdk.export.minivlm_pipeline import pipeline_model

    if args.input:
        raise CliError("a pipeline runs on --image PHOTO and --text QUESTION, not raw --input tensors")
    if args.image is None or args.text is None:
        raise CliError("a vision-language pipeline needs both --image PHOTO and --text \"a question\"")
    if not Path(args.image).is_file():
        raise CliError(f"no such image: {args.image}")
    if Path(args.artifact).is_dir() and not (Path(args.artifact) / "bundle.json").is_file():
        from device_runtime.pipeline import read_pipeline

        # Each stage's bytes against its export's report.json, as `run` checks one artifact (a bundle's
        # checksums are checked when it opens).
        for stage in read_pipeline(args.artifact).stages:
            if stage.artifact is not None:
                existing_artifact(str(Path(args.artifact) / stage.artifact), args.trust)
    try:
        backend = dict(b.split("=", 1) for b in args.backend.split(",")) if args.backend else None
    except ValueError:
        raise CliError(f"a pipeline takes --backend STAGE=BACKEND[,STAGE=BACKEND], got {args.backend!r}") from None
    with device_runtime.load(args.artifact, backend=backend, num_threads=args.threads, adapt_io=True) as session:
        model = pipeline_model(session.pipeline.name)
        if model is None:
            raise CliError(f"{session.pipeline.name} is not a pipeline model this SDK knows how to feed "
                           "(known: minivlm, minivlm-tiny); run it from Python with device_runtime.load")
        try:
            feed = model.feed(args.image, args.text)
        except (OSError, ValueError) as exc:
            raise CliError(f"cannot read {args.image} as an image: {exc}") from None
        outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))
        timings = session.last_timings
        stages = ", ".join(f"{s['name']} {s['format']}" for s in session.info["stages"] if s["kind"] == "artifact")
        report = _pipeline_report(session)  # inside: a bundle's extracted copy goes on close
    print(f"{session.pipeline.name} pipeline ({stages})")
    print(f"question: {args.text}")
    logits = outputs["vqa_logits"][0].astype(np.float64)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    print(f"top answers (placeholder answer names: MiniVLM's {len(logits)}-answer vocabulary is not available offline):")
    for rank, idx in enumerate(np.argsort(-logits)[:args.top], 1):
        print(f"  {rank}. {'answer ' + str(idx):<14} p={probs[idx]:.4f}  logit={logits[idx]:+.4f}")
    print(f"image-text retrieval score: {float(outputs['retrieval_score'].ravel()[0]):+.4f}")
    mask = outputs["region_mask"][0].astype(bool)
    print(f"regions: {int(mask.sum())} of {mask.size} slots; first boxes (x1, y1, x2, y2 as fractions of the image): "
          + "; ".join(" ".join(f"{v:.2f}" for v in box) for box in outputs["region_boxes"][0][mask][:3]))
    print(f"caption: {caption_text(outputs['caption_ids'])!r}")
    print(f"time: {timings.total_ms:.0f} ms over {len(timings.stages)} stages, glue {timings.glue_share:.0%}")
    weights = json.dumps((report.get("model") or {}).get("weights", "random"))
    if "random" in weights or not report:
        print(RANDOM_NOTE)
    return EXIT_OK


def cmd_bench_pipeline(args) -> int:
    """`pocketformer bench PIPELINE [--image PHOTO --text QUESTION]`: per-stage latency, the glue's share, end to
    end, the caption loop's tokens per second (sdk.measure.pipeline_bench)."""
    from sdk.console.progress import Progress
    from sdk.measure.bench import bench, format_table

    if len(args.artifacts) > 1:
        raise CliError(f"bench one pipeline at a time (its stages are what it compares); got {len(args.artifacts)} "
                       "paths")
    given = [flag for flag, on in (("--verify", args.verify), ("--app", getattr(args, "app", False)),
                                   ("--profile-runs", args.profile_runs), ("--runner", args.runner),
                                   ("--backend", args.backend), ("--input", args.input)) if on]
    if given:
        raise CliError(f"{', '.join(given)} do(es) not apply to a pipeline's bench (a pipeline runs on --image and "
                       "--text; `pocketformer verify BUNDLE --device ...` checks it on a device)")
    feeds = None
    if args.image or args.text:
        feeds = [_feed(args.artifacts[0], args.image, args.text)]
    document = bench(args.artifacts, runs=args.runs, warmup=args.warmup, threads=args.threads, feeds=feeds,
                     device=args.device, trust=args.trust, progress=Progress(enabled=not args.quiet).bar("bench"))
    print(format_table(document))
    if args.json:
        from device_runtime.atomic import write_json as write_json_atomic

        write_json_atomic(Path(args.json), document)
        print(f"  written {args.json}")
    return EXIT_OK


def _feed(path: str, image: str | None, text: str | None) -> dict[str, np.ndarray]:
    """A pipeline model's feed for a photo and a question (both needed)."""
    from device_runtime.pipeline import read_pipeline
    from sdk.export.minivlm_pipeline import pipeline_model

    if image is None or text is None:
        raise CliError("a vision-language pipeline needs both --image PHOTO and --text \"a question\"")
    if not Path(image).is_file():
        raise CliError(f"no such image: {image}")
    root = Path(path).parent if Path(path).name == "pipeline.json" else Path(path)
    if not root.is_dir():
        raise CliError("--image/--text feed a pipeline folder; a bundle runs on its own samples")
    model = pipeline_model(read_pipeline(root).name)
    if model is None:
        raise CliError(f"{read_pipeline(root).name} is not a pipeline model this SDK knows how to feed")
    try:
        return model.feed(image, text)
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read {image} as an image: {exc}") from None


def tune_exit_code(document: dict[str, Any]) -> int:
    """A pipeline's tune: 0 with a verified pick per stage and the pipeline verified end to end; 1 when the picks
    failed end to end; 3 when a stage had no candidate that exported and verified here."""
    if not document.get("failed"):
        return EXIT_OK
    return EXIT_PARITY if str(document["failed"]).startswith("end-to-end") else EXIT_UNSUPPORTED
