"""`pocketformer serve-bench`: replay a real sentence stream against four ways of serving one BERT-family model.

The configurations, each an artifact of the same model, format and precision (found in the export folders
beside the one given, by what their manifests record: sequence buckets in the entry's details, the packed entry
point's inputs; by the folder keys `<precision>-seqs16-32-64-128/` and `<precision>-packed128x16/` only where
the manifest says neither):
- fixed: every sentence padded to the artifact's one length (128 by default), one run per sentence;
- bucketed: each sentence padded to the smallest length the multi-length artifact holds, one run per sentence;
- packed: the packed entry point; whatever is queued when the engine frees up is packed into rows (no waiting);
- packed+batched: the same, but a batch waits up to `max_delay_ms` to fill its rows (dynamic batching);
- scheduled (only where a multi-row packed artifact is found, `export --pack 32x4,64x8,128x16`): the cost model
  measures each entry point at load and the scheduler (`device_runtime.scheduling`) picks, for what is queued,
  the rows with the lowest predicted time per sentence across row lengths (the bucketed artifact's lengths
  join as one-sentence entry points where found), or a wait of at most `max_delay_ms` for more.
Requests go through a `device_runtime.Batcher` in every configuration (batch 1 for fixed and bucketed), so queueing,
rejections and latencies are measured the same way. Arrivals follow a Poisson process at `rate` requests per
second (open loop), or `concurrency` clients each send their next sentence when the last one is answered
(closed loop). The sentences come from the standard library's docstrings (the compress recipes' corpus), a text
file (one sentence a line), or a folder: the docstrings of its .py files, else the sentences of its text files.
Beside sentences/s against fixed, the figures give what the stream's real token counts allow: fixed-length
tokens over real tokens (`token_ratio_allowed`), and the share of it each configuration reached.
"""
from __future__ import annotations

import random
import sys
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from device_runtime.errors import QueueFullError, UsageError

CONFIGS = ("fixed", "bucketed", "packed", "packed+batched", "scheduled")
OPTIONAL = ("scheduled",)  # run where its artifact is found; reported missing only when asked for by name


def stream_sentences(stream: str | Path | None, count: int, seed: int = 0) -> tuple[list[str], str]:
    """`count` sentences (shuffled with `seed`, repeated if the source is short) and where they come from."""
    if stream is None:
        from sdk.compress.data import stdlib_corpus

        corpus = stdlib_corpus()
        sentences, source = list(corpus.train) + list(corpus.heldout), corpus.source
    elif Path(stream).is_dir():
        sentences, source = folder_sentences(Path(stream))
    else:
        path = Path(stream)
        if not path.is_file():
            raise UsageError(f"no such stream file: {path}")
        sentences = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()
                     if line.strip()]
        source = str(path)
        if not sentences:
            raise UsageError(f"{path} holds no sentences (one a line)")
    random.Random(seed).shuffle(sentences)
    while len(sentences) < count:
        sentences = sentences + sentences
    return sentences[:count], source


def folder_sentences(folder: Path) -> tuple[list[str], str]:
    """The prose sentences of a folder: the docstrings of its .py files (read with `ast`, nothing imported), or,
    where it has none, of its text files split at sentence ends (`sdk.compress.data.sentences_from_docstring`'s
    filter: 6-40 words of prose). Each sentence once."""
    import ast

    from sdk.compress.data import sentences_from_docstring

    sources = sorted(folder.rglob("*.py"))
    texts: list[str] = []
    for path in sources:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        except (SyntaxError, ValueError):
            continue
        texts += [doc for node in ast.walk(tree) if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                                                     ast.AsyncFunctionDef))
                  for doc in [ast.get_docstring(node)] if doc]
    what = "docstrings of the .py files"
    if not sources:
        sources = sorted(p for p in folder.rglob("*") if p.is_file())
        texts = [p.read_text(encoding="utf-8", errors="replace") for p in sources]
        what = "sentences of the text files"
    sentences = list(dict.fromkeys(s for text in texts for s in sentences_from_docstring(text)))
    if not sentences:
        raise UsageError(f"{folder} holds no prose sentences ({len(sources)} files read)")
    return sentences, f"{what} in {folder} ({len(sources)} files, {len(sentences)} sentences)"


def discover(artifact: str | Path) -> tuple[dict[str, Path], dict[str, Any]]:
    """The artifacts of each configuration beside `artifact` ({config: path}) and the model section.

    Every export folder of the model (`artifact`'s parent and its siblings) is read; an artifact of the same
    format and requested precision is classed by what its manifest says (`configuration_of`): sequence buckets
    in its entry's details, or the packed entry point's inputs. Only where the manifest says neither does the
    folder's key decide (`<precision>-seqs...`, `<precision>-packed...`); the rest serve fixed-length. For
    fixed, the registered length (the folder named as the precision) beats any other single length.
    """
    from device_runtime.manifest import ManifestError, load_entry, read_manifest

    artifact = Path(artifact)
    record = load_entry(artifact, trust=False)
    if record.entry is None:
        raise UsageError(f"{artifact} has no entry in a report.json beside it: export it with pocketformer export")
    model = record.model
    if (model.get("preprocessing") or {}).get("kind") != "text":
        raise UsageError(f"serve-bench replays sentences; {model.get('name')} takes "
                         f"{(model.get('preprocessing') or {}).get('kind')}")
    requested, fmt = record.entry.requested_precision, record.entry.format
    found: dict[str, Path] = {}
    registered = False  # whether "fixed" is already the registered length's artifact
    for folder in sorted(p for p in artifact.parent.parent.iterdir() if p.is_dir()):
        try:
            manifest = read_manifest(folder)
        except ManifestError:
            continue
        # the given artifact's own file name first, so it wins among its folder's artifacts of a kind
        names = sorted(manifest.artifacts, key=lambda n: (n != artifact.name, n))
        for name in names:
            entry, candidate = manifest.artifacts[name], folder / name
            if entry.format != fmt or entry.requested_precision != requested or not candidate.exists():
                continue
            kind = configuration_of(entry.details, manifest.model) or _kind_from_folder(folder.name, requested)
            if kind == "fixed" and folder.name == requested and not registered:
                found["fixed"], registered = candidate, True  # the registered length (128) beats any other
            elif kind == "packed":
                found.setdefault("packed", candidate)
                found.setdefault("packed+batched", candidate)
            elif kind == "rows":
                found.setdefault("scheduled", candidate)
            elif kind:
                found.setdefault(kind, candidate)
    return found, model


def configuration_of(details: dict[str, Any], model: dict[str, Any]) -> str | None:
    """"bucketed", "packed" or "rows" (packed rows in several lengths) from an artifact's manifest (its entry's details, its folder's model section),
    else None: sequence buckets list their lengths (`details.buckets.lengths`), and the packed entry point takes
    segment ids (`preprocessing.packing`, the `segment_ids` input)."""
    buckets = (details or {}).get("buckets") or {}
    if buckets.get("axis") == "packed":
        return "rows"
    if buckets.get("lengths") and buckets.get("axis", "sequence") == "sequence":
        return "bucketed"
    inputs = {i.get("name") if isinstance(i, dict) else i for i in model.get("inputs") or []}
    if (model.get("preprocessing") or {}).get("packing") or "segment_ids" in inputs:
        return "packed"
    return None


def _kind_from_folder(name: str, requested: str) -> str | None:
    """The fallback: the folder key the export wrote (`fp32`, `fp32-seq64`, `fp32-seqs16-32`, `fp32-packed128x16`)."""
    if name.startswith(f"{requested}-seqs"):
        return "bucketed"
    if name.startswith(f"{requested}-packed"):
        return "rows" if "-" in name[len(f"{requested}-packed"):] else "packed"
    if name == requested or name.startswith(f"{requested}-seq"):
        return "fixed"
    return None


def _feeds(kind: str, session, sentences: Sequence[str], prep: dict[str, Any]) -> tuple[list[dict], list[int]]:
    """Tokenised feeds for one configuration, and each sentence's real token count."""
    from models_zoo.data import tokenize

    if kind == "fixed":
        length, pad = int(session.get_inputs()[0].shape[1]), True
    elif kind == "bucketed":
        length, pad = session.lengths[-1], False
    else:  # packed: tokenised unpadded, truncated at the longest row
        from device_runtime.packing import row_shapes

        length, pad = row_shapes(session)[-1][0], False
    text_prep = {**prep, "seq_len": length, "input_names": ["input_ids", "attention_mask", "token_type_ids"]}
    if kind in ("fixed", "bucketed"):
        text_prep["input_names"] = [t.name for t in session.get_inputs()]
    feeds = [tokenize(s, text_prep, pad=pad) for s in sentences]
    real = [int(np.asarray(f["attention_mask"]).sum()) if "attention_mask" in f else len(f["input_ids"][0])
            for f in feeds]
    return feeds, real


def run_config(kind: str, path: Path, sentences: Sequence[str], prep: dict[str, Any], *, rate: float | None,
               concurrency: int, threads: int | None, max_delay_ms: float, max_queue_size: int,
               progress: bool = False, single: Path | None = None) -> dict[str, Any]:
    """Serve `sentences` with one configuration; throughput, latency percentiles, padding and rejections.
    `single`: for "scheduled", a sequence-bucketed artifact whose lengths join the cost table."""
    import device_runtime
    from device_runtime.packing import packed_batch_runner

    session = device_runtime.load(path, num_threads=threads, adapt_io=True)
    feeds, real = _feeds(kind, session, sentences, prep)
    alone = device_runtime.load(single, num_threads=threads, adapt_io=True) if kind == "scheduled" and single else None
    costs = None
    if kind in ("packed", "packed+batched", "scheduled"):
        run_batch = packed_batch_runner(session, single=alone)
        runner = run_batch.runner
        costs = runner.costs
        batch_size = sum(segments for _, segments in runner.rows) * (1 if kind == "scheduled" else 2)
        batch_size = max(batch_size, runner.max_segments * 2)
        delay = max_delay_ms if kind != "packed" else 0.0
    else:
        run_batch, runner, batch_size, delay = device_runtime.session_batch_runner(session), None, 1, 0.0
    run_batch(feeds[:1])  # warm: the first run after load is cold on every runtime
    if runner is not None:
        runner.tokens = runner.computed = 0
    latencies: list[float] = []
    rejected = failed = 0
    lock = threading.Lock()
    done = threading.Semaphore(0)

    def finished(arrival: float):
        def callback(future):
            nonlocal failed
            with lock:
                if future.exception() is None:
                    latencies.append(time.perf_counter() - arrival)
                else:
                    failed += 1
            done.release()
        return callback

    with device_runtime.Batcher(run_batch, max_batch_size=batch_size, max_queue_delay_ms=delay,
                                max_queue_size=max_queue_size, name=kind) as batcher:
        start = time.perf_counter()
        submitted = 0
        if rate:  # open loop: Poisson arrivals
            gaps = np.random.default_rng(1).exponential(1.0 / rate, len(feeds))
            at = start
            for k, feed in enumerate(feeds):
                at += gaps[k]
                time.sleep(max(0.0, at - time.perf_counter()))
                try:
                    batcher.submit(feed).add_done_callback(finished(time.perf_counter()))
                    submitted += 1
                except QueueFullError:
                    rejected += 1
                _show(progress, kind, k + 1, len(feeds))
            for _ in range(submitted):
                done.acquire()
        else:  # closed loop: `concurrency` clients
            order = iter(range(len(feeds)))
            counter = [0]

            def client():
                nonlocal rejected
                for k in order:
                    arrival = time.perf_counter()
                    try:
                        batcher.submit(feeds[k]).result()
                        with lock:
                            latencies.append(time.perf_counter() - arrival)
                            counter[0] += 1
                    except QueueFullError:
                        with lock:
                            rejected += 1
                    _show(progress, kind, counter[0], len(feeds))

            clients = [threading.Thread(target=client) for _ in range(max(1, concurrency))]
            for c in clients:
                c.start()
            for c in clients:
                c.join()
        wall = time.perf_counter() - start
        metrics = batcher.metrics()
    if progress:
        print(file=sys.stderr)
    session.close()
    if alone is not None:
        alone.close()
    computed = _computed_tokens(kind, session, real, runner)
    ms = np.asarray(latencies) * 1e3
    return {"config": kind, "artifact": str(path), "sentences": len(feeds), "completed": len(latencies),
            "rejected": rejected, "failed": failed, "wall_s": wall,
            "sentences_per_s": len(latencies) / wall if wall > 0 else None,
            "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
            "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None,
            "padding_fraction": 1.0 - sum(real) / computed if computed else None,
            "mean_tokens": float(np.mean(real)), "batch_size_histogram": metrics.get("batch_size_histogram"),
            "queue_wait_ms": metrics.get("queue_wait_ms"), "service_ms": metrics.get("service_ms"),
            "real_tokens": int(sum(real)), "fixed_length": int(session.get_inputs()[0].shape[1] or 0)
            if kind == "fixed" else None, **({"costs": costs.to_dict()} if costs is not None else {})}


def _computed_tokens(kind: str, session, real: Sequence[int], runner) -> int:
    if runner is not None:
        return runner.computed
    if kind == "bucketed":
        return sum(session.route(n) for n in real)
    return len(real) * int(session.get_inputs()[0].shape[1])


def _show(enabled: bool, kind: str, done: int, total: int) -> None:
    if enabled and (done == total or done % max(1, total // 20) == 0):
        filled = int(30 * done / max(total, 1))
        print(f"\r  {kind:<15} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total}", end="", file=sys.stderr)


def serve_bench(artifact: str | Path, *, stream: str | Path | None = None, count: int = 400,
                rate: float | None = None, concurrency: int = 8, threads: int | None = None,
                max_delay_ms: float = 5.0, max_queue_size: int = 256, configs: Sequence[str] | None = None,
                progress: bool = False) -> dict[str, Any]:
    """Every configuration found beside `artifact`, against the same stream (see the module docstring).
    `configs` None: the four always, and "scheduled" where its artifact is found."""
    asked = configs is not None
    configs = list(configs) if asked else list(CONFIGS)
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        raise UsageError(f"unknown configuration(s) {unknown}; choose from {', '.join(CONFIGS)}")
    if rate is not None and rate <= 0 or concurrency < 1 or count < 1:
        raise UsageError(f"need rate > 0, concurrency >= 1 and count >= 1; got {rate}, {concurrency}, {count}")
    found, model = discover(artifact)
    sentences, source = stream_sentences(stream, count)
    prep = model["preprocessing"]
    rows, missing = [], {}
    for kind in configs:
        if kind not in found:
            if asked or kind not in OPTIONAL:
                missing[kind] = _export_hint(kind, model.get("name"), Path(artifact))
            continue
        rows.append(run_config(kind, found[kind], sentences, prep, rate=rate, concurrency=concurrency,
                               threads=threads, max_delay_ms=max_delay_ms, max_queue_size=max_queue_size,
                               progress=progress, single=found.get("bucketed")))
    base = next((r for r in rows if r["config"] == "fixed"), None)
    allowed = None
    if base and base["real_tokens"]:
        # What the tokens allow: every sentence padded to the fixed length, over the tokens it really has.
        allowed = base["sentences"] * base["fixed_length"] / base["real_tokens"]
    for r in rows:
        if base and base["sentences_per_s"] and r["sentences_per_s"]:
            r["throughput_vs_fixed"] = r["sentences_per_s"] / base["sentences_per_s"]
            if allowed:
                r["share_of_allowed"] = r["throughput_vs_fixed"] / allowed
    return {"model": model.get("name"), "stream": source, "sentences": len(sentences),
            "arrivals": f"Poisson at {rate}/s" if rate else f"closed loop, {concurrency} clients",
            "threads": threads, "token_ratio_allowed": allowed, "results": rows, "not_exported": missing}


def _export_hint(kind: str, model: str | None, artifact: Path) -> str:
    fmt = artifact.suffix.lstrip(".")
    flag = {"fixed": "", "bucketed": " --seq-lens 16,32,64,128",
            "scheduled": " --pack 32x4,64x8,128x16"}.get(kind, " --pack 128x16")
    return f"no {kind} artifact beside {artifact}: pocketformer export {model} --to {fmt}{flag}"


def format_serve_bench(document: dict[str, Any]) -> str:
    lines = [f"{document['model']}: {document['sentences']} sentences from {document['stream']}; "
             f"{document['arrivals']}, threads={document['threads'] or 'default'}",
             f"  {'config':<16}{'sent/s':>9}{'x fixed':>9}{'of max':>9}{'p50 ms':>9}{'p99 ms':>9}{'padding':>9}"
             f"{'rejected':>9}"]
    lines.append("  " + "-" * (len(lines[1]) - 2))

    def f(v, spec):
        width = int(spec.split(".")[0].rstrip("%f"))
        return format(v, spec) if isinstance(v, (int, float)) else "-".rjust(width)

    for r in document["results"]:
        lines.append(f"  {r['config']:<16}{f(r['sentences_per_s'], '9.1f')}{f(r.get('throughput_vs_fixed'), '9.2f')}"
                     f"{f(r.get('share_of_allowed'), '9.0%')}{f(r['p50_ms'], '9.2f')}{f(r['p99_ms'], '9.2f')}{f(r['padding_fraction'], '9.1%')}"
                     f"{r['rejected'] + r['failed']:>9}")
    allowed = document.get("token_ratio_allowed")
    if allowed:
        lines.append(f"  the stream's token counts allow {allowed:.2f}x fixed (fixed-length tokens / real tokens); "
                     f"'of max': the share of that reached")
    for kind, hint in document["not_exported"].items():
        lines.append(f"  {kind}: not run: {hint}")
    return "\n".join(lines)
