"""`pocketformer compress NAME --method qat|distill|prune|binarize --out DIR [...]`.

Writes DIR/model.safetensors (accepted by `pocketformer export NAME --weights DIR`; dims that changed travel in
its metadata), DIR/config.json, and DIR/compress_report.{json,md}: accuracy on held-out real sentences
against the float model, size and latency. With `--export FORMAT`, the uncompressed and the compressed model
are both exported at the same precision, verified, benchmarked and scored as artifacts.

    pocketformer compress minilm_l6_h384 --method qat --out out/minilm-qat --export pte
    pocketformer compress minilm_l6_h384 --method distill --student-layers 3 --out out/minilm-l3
    pocketformer compress minilm_l6_h384 --method prune --heads 0.25 --ffn 0.25 --out out/minilm-pruned
    pocketformer compress minilm_l6_h384 --method prune --sparsity 0.5 --out out/minilm-sparse
    pocketformer compress minilm_l6_h384 --method binarize --layers ffn --out out/minilm-bin
    pocketformer compress minivlm --tiny --method distill-vlm --out out/minivlm-distilled
"""
from __future__ import annotations

import argparse
from pathlib import Path

from device_runtime.errors import UsageError

METHODS = ("qat", "distill", "prune", "binarize", "distill-vlm")
DEFAULT_STEPS = {"qat": 100, "distill": 300, "prune": 100, "binarize": 200, "distill-vlm": 150}
# QAT and binarized weights are exactly representable at int8; the others export at the model's default.
DEFAULT_EXPORT_PRECISION = {"qat": "int8", "binarize": "int8"}


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("compress", help="compress a BERT-family model (QAT, distillation, pruning, binarization) "
                                               "and report the accuracy/size/latency trade-off",
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("model", help="a BERT-family zoo model (e.g. minilm_l6_h384, tinybert_4l_312d); NAME-tiny for its tiny variant")
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument("--out", required=True, help="output folder for the checkpoint and the report")
    p.add_argument("--weights", help="the model's weights (default: the spec's own: real weights for "
                                     "minilm_l6_h384, seeded random otherwise)")
    p.add_argument("--tiny", action="store_true", help="the tiny variant (mechanics only)")
    p.add_argument("--data", help="a text file, one sentence a line (default: the Python standard library's "
                                  "docstrings); for distill-vlm a TSV of image, split, question, answer "
                                  "(default tests/data/vl_questions.tsv)")
    train = p.add_argument_group("training (self-distillation against the float model)")
    train.add_argument("--steps", type=int, help=f"optimizer steps (default {DEFAULT_STEPS})")
    train.add_argument("--batch-size", type=int, default=16)
    train.add_argument("--lr", type=float, help="learning rate (default 5e-5; 1e-5 for qat; 1e-4 for distill and binarize)")
    train.add_argument("--max-len", type=int, default=64, help="training sequence length (tokens)")
    train.add_argument("--threads", type=int, help="torch CPU threads while training")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--eval-sentences", type=int, default=256, help="held-out sentences to score on")
    qat = p.add_argument_group("qat")
    qat.add_argument("--activations", choices=("dynamic", "symmetric", "ema"), default="dynamic",
                     help="activation fake-quant: per-token asymmetric (as the int8 artifact's kernels; default), "
                          "per-token symmetric, or Q8BERT's static EMA range")
    dist = p.add_argument_group("distill")
    dist.add_argument("--student-layers", type=int, help="student depth (default: half the teacher's)")
    dist.add_argument("--student-hidden", type=int, help="student width (default: the teacher's)")
    dist.add_argument("--student-heads", type=int, help="student attention heads (default: the teacher's)")
    dist.add_argument("--student-ffn", type=int, help="student FFN width (default: 4x its hidden width)")
    dist.add_argument("--init", choices=("teacher", "random"), default="teacher")
    prune = p.add_argument_group("prune (unstructured with --sparsity, structured with --heads/--ffn)")
    prune.add_argument("--sparsity", type=float, help="magnitude pruning: fraction of encoder weights set to zero")
    prune.add_argument("--sparsity-scope", choices=("layer", "global"), default="layer")
    prune.add_argument("--heads", type=float, help="structured: fraction of attention heads to remove")
    prune.add_argument("--ffn", type=float, help="structured: fraction of FFN channels to remove")
    prune.add_argument("--rounds", type=int, default=1, help="structured: prune in this many rounds")
    vlm = p.add_argument_group("distill-vlm (DistilVLM: a larger fusion transformer into MiniVLM's fusion stage)")
    vlm.add_argument("--teacher", default="random", help="'random' (a larger random-init fusion transformer: no "
                     "trained VL checkpoint exists offline) or a file written by distill_vlm.save_teacher")
    vlm.add_argument("--temperature", type=float, default=1.0, help="soft cross-entropy temperature on the VQA logits")
    vlm.add_argument("--baseline", action="store_true", help="also train the same student on the teacher's hard "
                     "labels alone and report its agreement")
    binar = p.add_argument_group("binarize")
    binar.add_argument("--layers", choices=("all", "ffn", "attention"), default="all",
                       help="which encoder Linear layers get 1-bit weights")
    exp = p.add_argument_group("export and measure (before and after, same precision)")
    exp.add_argument("--export", metavar="FORMAT", help="format(s), comma-separated (e.g. pte)")
    exp.add_argument("--precision", help="export precision (default: int8 for qat and binarize, else the model's)")
    exp.add_argument("--bench-runs", type=int, default=20)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_compress)
    return p


def run_method(args):
    """The recipe call an argparse namespace describes; returns a CompressResult."""
    from sdk.compress.core import TrainConfig

    method = args.method
    default_lr = {"qat": 1e-5, "distill": 1e-4, "binarize": 1e-4, "distill-vlm": 5e-3}.get(method, 5e-5)
    config = TrainConfig(steps=args.steps if args.steps is not None else DEFAULT_STEPS[method],
                         batch_size=args.batch_size, lr=args.lr or default_lr, max_len=args.max_len,
                         seed=args.seed, threads=args.threads)
    common = dict(weights=args.weights, tiny=args.tiny, data=args.data, eval_sentences=args.eval_sentences,
                  config=config, verbose=not args.quiet)
    if method == "distill-vlm":
        from sdk.compress.distill_vlm import distill_vlm

        config.log_every = 1  # the report keeps the losses of every step
        return distill_vlm(args.model, teacher=args.teacher, data=args.data, tiny=args.tiny, config=config,
                           temperature=args.temperature, baseline=args.baseline, seed=args.seed,
                           verbose=not args.quiet)
    if method == "qat":
        from sdk.compress.quant import qat

        return qat(args.model, activations=args.activations, **common)
    if method == "distill":
        from sdk.compress.distill import distill

        student = {k: v for k, v in {"num_hidden_layers": args.student_layers, "hidden_size": args.student_hidden,
                                     "num_attention_heads": args.student_heads,
                                     "intermediate_size": args.student_ffn}.items() if v is not None}
        if args.student_hidden is not None and args.student_ffn is None:
            student["intermediate_size"] = 4 * args.student_hidden
        if "num_hidden_layers" not in student:
            from models_zoo import get_model

            spec = get_model(args.model, tiny=args.tiny)
            student["num_hidden_layers"] = max(1, int(spec.config.get("num_hidden_layers", 12)) // 2)
        return distill(args.model, student, init=args.init, seed=args.seed, **common)
    if method == "prune":
        structured = args.heads is not None or args.ffn is not None
        if structured == (args.sparsity is not None):
            raise UsageError("--method prune needs either --sparsity (magnitude) or --heads/--ffn (structured)")
        if structured:
            from sdk.compress.prune import prune_structured

            return prune_structured(args.model, heads=args.heads or 0.0, ffn=args.ffn or 0.0, rounds=args.rounds,
                                    seed=args.seed, **common)
        from sdk.compress.prune import prune_magnitude

        return prune_magnitude(args.model, args.sparsity, scope=args.sparsity_scope, **common)
    from sdk.compress.binarize import binarize

    return binarize(args.model, scope=args.layers, **common)


def cmd_compress(args) -> int:
    from sdk.compress.report import summary_lines, write_markdown
    from device_runtime.atomic import write_json as write_json_atomic

    if args.method == "distill-vlm" and args.export:
        raise UsageError("--export is not available for distill-vlm: the student is MiniVLM's fusion stage, "
                         "exported with the MiniVLM pipeline")
    result = run_method(args)
    out = result.save(args.out)
    if args.export:
        from sdk.compress.deploy import compare_exports

        formats = [f for f in args.export.split(",") if f]
        precision = args.precision or DEFAULT_EXPORT_PRECISION.get(args.method)
        from sdk.compress.data import get_corpus

        sentences = list(get_corpus(args.data).heldout[:min(args.eval_sentences, 64)])
        result.report["exports"] = compare_exports(result, out, args.weights, formats, precision, out / "export",
                                                   sentences, runs=args.bench_runs)
        write_json_atomic(out / "compress_report.json", result.report)
    write_markdown(result.report, out / "compress_report.md")
    for line in summary_lines(result.report):
        print(line)
    if args.method == "distill-vlm":
        print(f"student fusion stage: {out / 'model.safetensors'}  (sdk.compress.distill_vlm.load_student)")
    else:
        print(f"checkpoint: {out / 'model.safetensors'}  (pocketformer export {result.spec.name.removesuffix('-tiny')}"
              f"{' --tiny' if result.spec.is_tiny else ''} --weights {out} --to pte)")
    print(f"report: {out / 'compress_report.md'}")
    return 0


def main(argv=None) -> int:
    """Stand-alone entry point (until `pocketformer` wires `add_parser` in)."""
    parser = argparse.ArgumentParser(prog="pocketformer")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    import sys

    sys.exit(main())
