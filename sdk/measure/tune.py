"""`pocketformer tune NAME`: the fastest verified artifact of a model on this host (`sdk.tune(spec)` for the user's
own `nn.Module` through `spec_from_module`, as `sdk.export` takes it; a pipeline model stage by stage:
`sdk.measure.pipeline_tune`).

1. Candidates: every registered format x precision whose converter can export the model here and whose
   artifact this host can run (a format verified elsewhere, such as Core ML on Linux, is left out and said so).
   `mixed` (int8 only on the units where it measured faster, `converters.mixed`) is one of them for the vision
   families' `.tflite`, and is picked like any other, by its measured latency.
2. Export each with `sdk.export` (verified against PyTorch on the real samples); keep those that meet the
   model's own tolerance and, with `max_error`, whose max abs error against fp32 PyTorch is at most that; with
   `eval` and `max_accuracy_drop`, whose top-1 on the user's labelled data is within that many points of fp32
   PyTorch's (`accuracy_rejection`).
3. Benchmark the kept ones, each in a process of its own and the rounds interleaved across the processes
   (`device_runtime.isolated`), PyTorch eager included as a reference (not a candidate, run in this process).
4. Name the fastest by median latency: `OUT/<model>/tune.json` records every candidate and why the others were
   dropped, and `OUT/<model>/best<suffix>` links to the pick. `pocketformer report OUT` shows it.

No backend wins everywhere (see the baseline table in DESIGN.md): the pick is measured, never assumed.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

from device_runtime import atomic
from models_zoo.precision import Precision
from sdk.measure.candidates import candidates, error_vs_fp32  # noqa: F401 (tune's candidates, also used here)

TUNE_NAME = "tune.json"


def accuracy_rejection(accuracy: dict[str, Any] | None, max_drop: float | None) -> str | None:
    """Why a candidate's accuracy on --eval rules it out, or None to keep it: its top-1 lost more than `max_drop`
    points against fp32 PyTorch on the same set (a drop of exactly `max_drop` is kept; a gain is a negative drop).
    Which precision loses how much depends on the CPU's kernels; this rule does not."""
    if max_drop is None:
        return None
    if not accuracy:
        return "no top-1 on --eval was measured, so --max-accuracy-drop cannot be checked"
    drop = float(accuracy["drop_points"])
    if drop <= max_drop:
        return None
    return (f"top-1 {100 * accuracy['artifact_top1']:.1f}% is {drop:.1f} points below fp32 PyTorch's "
            f"> --max-accuracy-drop {max_drop:g}")


def tune(model, out_dir: str | Path = "out", *, tiny: bool = False, seq_len: int | None = None,
         max_error: float | None = None, formats: Sequence[str] | None = None,
         precisions: Sequence[str] | None = None, runs: int = 50, warmup: int = 5, threads: int | None = None,
         weights: str | None = None, eager: bool = True, eval: str | Path | None = None,  # noqa: A002
         max_accuracy_drop: float | None = None, progress=None, stages: Sequence[str] | None = None,
         **options: Any) -> dict[str, Any]:
    """Tune `model`: a zoo model's name, or a spec as `sdk.export` takes it (`spec_from_module(module, ...)`: the
    user's own nn.Module), or a pipeline model's name ("minivlm", "minivlm-tiny": stage by stage,
    `sdk.measure.pipeline_tune`; `stages` limits which). `options` are the formats' own export options (e.g.
    `opset=17`), each given to the formats that declare it. See the module docstring."""
    from sdk.export.pipeline import is_pipeline_model

    if is_pipeline_model(model):
        zoo_only = {"seq_len": seq_len, "weights": weights, "eval": eval, "max_accuracy_drop": max_accuracy_drop}
        given = sorted(k for k, v in zoo_only.items() if v is not None)
        if given:
            from device_runtime.errors import UsageError

            raise UsageError(f"{model} is a pipeline of fixed-shape stages with random weights: "
                             f"{', '.join('--' + k.replace('_', '-') for k in given)} do not apply to it")
        from sdk.measure.pipeline_tune import tune_pipeline

        return tune_pipeline(model, out_dir, tiny=tiny, formats=formats, precisions=precisions, stages=stages,
                             max_error=max_error, runs=runs, warmup=warmup, threads=threads, progress=progress,
                             **options)
    if stages is not None:
        from device_runtime.errors import UsageError

        raise UsageError(f"stages= picks a pipeline model's stages to tune; {getattr(model, 'name', model)} is "
                         "one artifact")
    from converters import get_converter, list_converters
    from converters.base import ConversionError, UnknownOptionError, UnsupportedError
    from sdk.export.api import export
    from sdk.export.plan import resolve_spec
    from sdk.export.shapes import OneShape
    from sdk.console.progress import Progress
    from device_runtime.atomic import write_json as write_json_atomic
    from sdk.export.records import tool_versions
    from device_runtime.measure import host_info
    from converters.parity import DegenerateReferenceError, ParityError

    progress = progress or Progress(enabled=False)
    if max_accuracy_drop is not None and eval is None:
        from device_runtime.errors import UsageError

        raise UsageError("--max-accuracy-drop needs --eval PATH: the labelled data the accuracy is measured on")
    spec = resolve_spec(model, tiny, OneShape(seq_len), weights)  # a zoo name, or the user's spec as given
    known = {o for fmt in (formats or list_converters()) for o in get_converter(fmt).option_names()}
    if set(options) - known:
        raise UnknownOptionError(f"unknown export option(s) {sorted(set(options) - known)} for the formats tuned "
                                 f"({', '.join(formats or list_converters())})")
    todo, skipped = candidates(spec, formats, precisions)
    kept, rejected = [], []
    for fmt, precision in todo:
        start = time.perf_counter()
        try:
            # mixed measures int8's cost per unit at the thread count the candidates are timed at
            own = {"mixed_threads": threads} if precision == "mixed" and threads else {}
            own.update((k, v) for k, v in options.items() if k in get_converter(fmt).option_names())
            result = export(spec, fmt, precision, out_dir=out_dir, weights=weights, eval=eval, progress=progress,
                            **own)[0]
        except (ParityError, DegenerateReferenceError) as exc:
            rejected.append({"format": fmt, "precision": precision, "reason": f"failed verification: {exc}"})
            continue
        except (ConversionError, UnsupportedError) as exc:
            rejected.append({"format": fmt, "precision": precision, "reason": f"{type(exc).__name__}: {exc}"})
            continue
        error = error_vs_fp32(result.parity)
        entry = {"format": fmt, "precision": result.precision, "path": str(result.path),
                 "size_bytes": result.size_bytes, "max_abs_err_vs_fp32": error,
                 "sqnr_db_vs_fp32": (result.parity.get("quantization") or {}).get("sqnr_db"),
                 "export_s": time.perf_counter() - start}
        accuracy = result.parity.get("accuracy")
        if accuracy:
            entry.update(top1=accuracy["artifact_top1"], fp32_pytorch_top1=accuracy["fp32_pytorch_top1"],
                         accuracy_drop_points=accuracy["drop_points"])
        if result.passed is None:
            rejected.append({**entry, "reason": f"parity not run here: {result.parity.get('skipped')}"})
        elif max_error is not None and (error is None or error > max_error):
            rejected.append({**entry, "reason": f"max abs error vs fp32 {error:.3g} > --max-error {max_error:g}"})
        elif (reason := accuracy_rejection(accuracy, max_accuracy_drop)) is not None:
            rejected.append({**entry, "reason": reason})
        else:
            kept.append(entry)

    folder = Path(out_dir) / spec.name
    document: dict[str, Any] = {"model": spec.name, "max_error": max_error, "eval": str(eval) if eval else None,
                                "max_accuracy_drop": max_accuracy_drop, "tolerance": {
        k: vars(v) for k, v in spec.tolerances.items()}, "skipped": skipped, "rejected": rejected,
        "candidates": kept, "pick": None, "tools": tool_versions(), "host": host_info()}  # CPU model and flags
    if kept:
        from device_runtime.isolated import benchmark_isolated
        from sdk.measure.bench import annotate, sample_feed

        paths = [c["path"] for c in kept]
        feed = sample_feed(paths[0]) or spec.sample_inputs()[0]
        references = [("eager PyTorch", EagerSession(spec, weights, threads), feed)] if eager else []
        # Each candidate in a process of its own: in one shared process the runtimes' thread pools slow each
        # other (TFLite fp32 on mobilevit_xxs: 11.1 ms shared vs 7.3 ms alone), which skewed the pick.
        with progress.step(f"benchmark {len(paths)} candidate(s), one process each, interleaved, {runs} runs each"):
            bench = benchmark_isolated(paths, runs=runs, warmup=warmup, threads=threads, feeds=[feed] * len(paths),
                                       references=references)
        annotate(bench)
        write_json_atomic(folder / "bench_tune.json", bench)
        by_path = {r["path"]: r for r in bench["results"] if not r.get("reference")}
        eager_row = next((r for r in bench["results"] if r.get("reference")), None)
        for c in kept:
            r = by_path[c["path"]]
            c.update(p50_ms=r["latency"]["p50"], p90_ms=r["latency"]["p90"], backend=r["backend"],
                     first_run_ms=r["first_run_ms"], load_time_ms=r["load_time_ms"])
        kept.sort(key=lambda c: c["p50_ms"])
        best = kept[0]
        for c in kept:
            c["x_best"] = c["p50_ms"] / best["p50_ms"]
        link = folder / f"best{Path(best['path']).suffix}"
        atomic.symlink(link, Path(best["path"]))
        document["pick"] = {**best, "link": str(link)}
        document["bench"] = str(folder / "bench_tune.json")
        if eager_row:
            document["eager_p50_ms"] = eager_row["latency"]["p50"]
            document["pick"]["x_eager"] = best["p50_ms"] / eager_row["latency"]["p50"]
        with progress.step("roofline bound of the pick"):
            document["roofline"] = roofline_of(spec, best, weights, threads)
    write_json_atomic(folder / TUNE_NAME, document)
    document["path"] = str(folder / TUNE_NAME)
    return document


def roofline_of(spec, pick: dict[str, Any], weights: str | None, threads: int | None) -> dict[str, Any]:
    """How close the pick runs to this CPU's roofline: FLOPs and unfused memory traffic of one inference
    against peak compute (at the pick's precision) and measured copy bandwidth."""
    from sdk.measure.analysis import analyze_model, cpu_roofline, roofline_bound

    try:
        row = analyze_model(spec, weights=weights)
        roofline = cpu_roofline(threads=threads, measure=True)
    except Exception as exc:  # the pick stands without it; say why the figure is missing
        return {"error": f"{type(exc).__name__}: {exc}"}
    bound = roofline_bound(row["flops"], row["mac_bytes"], roofline, pick["precision"])
    out = {"gflops": row["gflops"], "mac_mb": row["mac_bytes"] / 1e6, "cpu": roofline["cpu"],
           "cores": roofline["cores"], "peak_gops": roofline["peak_int8_gops" if Precision.of(pick["precision"]).computes_int8
                                                             else "peak_fp32_gflops"],
           "measured_fp32_matmul_gflops": roofline.get("measured_fp32_matmul_gflops"),
           "bandwidth_gbs": roofline.get("bandwidth_gbs"), **bound}
    if bound.get("compute_bound_ms"):
        # Against peak compute, the hard floor; the memory bound counts unfused traffic (an upper estimate:
        # fused kernels and caches move less), so a pick may beat it.
        out["fraction_of_peak"] = bound["compute_bound_ms"] / pick["p50_ms"]
        out["achieved_gops"] = row["flops"] / (pick["p50_ms"] * 1e-3) / 1e9
    return out


def EagerSession(spec, weights: str | None = None, threads: int | None = None):
    """PyTorch eager behind the `Session` interface, so it can be timed in the same interleaved rounds."""
    import numpy as np
    import torch

    from device_runtime.session import Session, TensorInfo

    class _Eager(Session):
        format = "pytorch"
        backend = "eager"

        def __init__(self) -> None:
            super().__init__(f"<eager {spec.name}>", threads)
            start = time.perf_counter()
            if threads:
                torch.set_num_threads(threads)
            self._module = spec.build(weights=weights)
            self.load_time_ms = (time.perf_counter() - start) * 1e3
            self._inputs = [TensorInfo(s.name, tuple(s.shape), np.dtype(s.dtype)) for s in spec.input_specs()]
            self._outputs = [TensorInfo(n, (), np.dtype(np.float32)) for n in spec.output_names]

        def _execute(self, arrays):
            with torch.inference_mode():
                out = self._module(*[torch.from_numpy(a) for a in arrays])
            return [o.numpy() for o in (out if isinstance(out, (tuple, list)) else [out])]

    return _Eager()


def format_tune(document: dict[str, Any]) -> str:
    from device_runtime.cpu import describe_host

    if document.get("pipeline"):  # stage by stage (sdk.measure.pipeline_tune)
        from sdk.measure.pipeline_tune import format_pipeline_tune

        return format_pipeline_tune(document)

    lines = [f"tune {document['model']}" + (f" (max error vs fp32 <= {document['max_error']:g})"
                                            if document.get("max_error") is not None else ""),
             f"  machine: {describe_host(document.get('host'))}"]
    for c in document.get("candidates", []):
        err = c.get("max_abs_err_vs_fp32")
        lines.append(f"  {c['format']:<8}{c['precision']:<14}{c['p50_ms']:>9.3f} ms p50  x{c['x_best']:<6.2f}"
                     f"{c['size_bytes'] / 1e6:>8.2f} MB  max err {err if err is not None else float('nan'):.2g}"
                     f"  [{c['backend']}]")
    if document.get("eager_p50_ms"):
        lines.append(f"  {'eager PyTorch (reference)':<22}{document['eager_p50_ms']:>9.3f} ms p50")
    roof = document.get("roofline") or {}
    if roof.get("fraction_of_peak"):
        memory = (f"; its unfused traffic ({roof['mac_mb']:.0f} MB) at the measured {roof['bandwidth_gbs']:.0f} GB/s "
                  f"would take {roof['memory_bound_ms']:.2f} ms" if roof.get("memory_bound_ms") else "")
        lines.append(f"  roofline: {roof['gflops']:.2f} GFLOP; the pick computes at {roof['achieved_gops']:.0f} GOP/s, "
                     f"{roof['fraction_of_peak']:.0%} of this CPU's {roof['peak_gops']:.0f} peak at its precision "
                     f"({roof['compute_bound_ms']:.2f} ms){memory}")
    elif roof.get("error"):
        lines.append(f"  roofline: not computed ({roof['error'][:160]})")
    for r in document.get("rejected", []):
        lines.append(f"  dropped {r['format']} {r['precision']}: {r['reason'][:200]}")
    for s in document.get("skipped", []):
        lines.append(f"  skipped {s['format']} {s['precision']}: {s['reason'][:160]}")
    pick = document.get("pick")
    lines.append(f"pick: {pick['format']} {pick['precision']} -> {pick['path']} ({pick['p50_ms']:.3f} ms p50), "
                 f"linked as {pick['link']}" if pick else "pick: none (no candidate ran and met the bound)")
    lines.append(f"written {document.get('path')}")
    return "\n".join(lines)
