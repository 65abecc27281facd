"""Pipelines: several exported artifacts and numpy glue steps run as one model, behind one `Session`.

A pipeline is a folder (or a verification bundle holding one) with a `pipeline.json` beside its artifacts.
`device_runtime.load(folder)` returns a `PipelineSession`: the same `run(output_names, feed)`,
`get_inputs()` / `get_outputs()`, hooks, `benchmark` and `close` as one artifact's session, and after each run
`session.last_timings` (per stage; artifacts and glue apart, a decode loop's artifact calls counted as the
artifact's, so a benchmark can report the numpy glue's share).
Each artifact is sniffed and opened as `device_runtime.load` opens it alone, so each has its own format and
precision (a `.tflite` int8 detector, a `.pte` transformer); glue steps come from `device_runtime.glue`.

Schema `pocketformer.pipeline`, version 1 (stages run in the order listed; a wire is "input.NAME" for a
pipeline input or "STAGE.OUTPUT" for an output of an earlier stage):

    {"schema": "pocketformer.pipeline", "schema_version": 1, "name": "minivlm",
     "inputs":  [{"name": "image", "shape": [1, 3, 224, 224], "dtype": "float32"}],
     "stages": [
       {"name": "detector", "artifact": "detector.tflite", "inputs": {"pixel_values": "input.image"}},
       {"name": "keep", "glue": "nms", "inputs": {"boxes": "detector.boxes", "scores": "detector.scores"},
        "params": {"iou_threshold": 0.5}},
       ...],
     "outputs": [{"name": "logits", "from": "head.logits"},
                 {"name": "boxes", "from": "pad.padded", "shape": [50, 4], "dtype": "float32"}]}

An artifact stage may also give "backend", "adapt_io" (default true: glue's float32/int64 arrays are cast or
quantized to what the artifact takes, int8 outputs dequantized) and "options" (e.g. {"signature": ...}).
A decode loop: an artifact stage with "loop_input" (the ids input; "loop_output" names the logits, default
its first output) does not run in sequence; a later glue stage that takes a `step_fn` (`greedy_decode`)
names it in "step" and calls it once per token, its other inputs wired as usual. An output that a glue stage
produces declares its "shape" and "dtype" (an artifact's come from the artifact).

Every problem is refused at load, before anything runs, with a `PipelineError` naming it: a newer schema
version, an unknown glue step or parameter, a missing artifact, a wire to an input or output that does not
exist, a forward reference or cycle, an artifact input left unwired.
"""
from __future__ import annotations

import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from device_runtime.errors import ExecutionError, PocketformerError, UsageError
from device_runtime.glue import get_glue
from device_runtime.pipeline_manifest import (INPUT, PIPELINE_JSON, SCHEMA, SCHEMA_VERSION, Pipeline, PipelineError,
                                              Stage, refuse, read_pipeline, tensor_info)
from device_runtime.session import Session, TensorInfo

__all__ = ["SCHEMA", "SCHEMA_VERSION", "PIPELINE_JSON", "Pipeline", "PipelineError", "Stage", "StageTiming",
           "PipelineTimings", "PipelineSession", "read_pipeline", "is_pipeline", "open_pipeline"]


@dataclass(frozen=True)
class StageTiming:
    """One stage's wall time in one run. A glue stage that drives a decode loop (`step`) has its artifact's calls
    timed apart: `ms` is its own numpy work only, `step_ms` the time in the `step` artifact's `calls` runs, which
    count as that artifact stage's time (not the glue's)."""

    stage: str
    kind: str  # "artifact" or "glue"
    ms: float
    step: str | None = None  # the artifact stage a decode loop calls
    step_ms: float = 0.0
    calls: int = 0


@dataclass(frozen=True)
class PipelineTimings:
    """Wall time of each stage of one run, in milliseconds; a decode loop's artifact calls count as its artifact
    stage's time, so `glue_ms` and `glue_share` are the numpy glue's own work."""

    stages: list[StageTiming]

    @property
    def artifact_ms(self) -> float:
        return sum(s.ms for s in self.stages if s.kind == "artifact") + sum(s.step_ms for s in self.stages)

    @property
    def glue_ms(self) -> float:
        return sum(s.ms for s in self.stages if s.kind == "glue")

    @property
    def total_ms(self) -> float:
        return self.artifact_ms + self.glue_ms

    @property
    def glue_share(self) -> float:
        """The numpy glue's fraction of the stages' time (0 when nothing ran)."""
        return self.glue_ms / self.total_ms if self.total_ms > 0 else 0.0

    def per_stage(self) -> dict[str, dict[str, Any]]:
        """{stage: {"kind", "ms", "calls"}} in run order, a decode loop's artifact under its own stage name with
        the time of all its calls (and how many), the loop's glue stage with its numpy time only."""
        out: dict[str, dict[str, Any]] = {}
        for s in self.stages:
            if s.step is not None:
                out[s.step] = {"kind": "artifact", "ms": s.step_ms, "calls": s.calls}
            out[s.stage] = {"kind": s.kind, "ms": s.ms, "calls": 1}
        return out

    def to_dict(self) -> dict[str, Any]:
        stages = []
        for s in self.stages:
            row: dict[str, Any] = {"stage": s.stage, "kind": s.kind, "ms": s.ms}
            if s.step is not None:
                row.update(step=s.step, step_ms=s.step_ms, calls=s.calls)
            stages.append(row)
        return {"stages": stages, "artifact_ms": self.artifact_ms, "glue_ms": self.glue_ms,
                "total_ms": self.total_ms, "glue_share": self.glue_share}


# -- opening and running ---------------------------------------------------------------------------------
def is_pipeline(path: str | Path) -> bool:
    """Whether `path` is a pipeline folder, its pipeline.json, or a bundle (folder or zip) holding a pipeline."""
    path = Path(path)
    if path.is_dir():
        return (path / PIPELINE_JSON).is_file()
    if path.name == PIPELINE_JSON and path.is_file():
        return True
    try:
        if path.is_file() and zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                return PIPELINE_JSON in zf.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return False


def open_pipeline(path: str | Path, load_artifact: Callable[..., Session], backend: dict[str, str] | None = None,
                  num_threads: int | None = None, adapt_io: bool = False, allow_non_finite: bool = False,
                  **options: Any) -> "PipelineSession":
    """Check the pipeline at `path` (a folder, its pipeline.json, or a bundle holding one: its checksums are
    checked first), open every artifact stage with `load_artifact` (`device_runtime.load`) and return the session.
    `backend` maps stage names to backends (over the stages' own "backend"); `num_threads` goes to every stage."""
    if options:
        raise UsageError(f"unknown option(s) {sorted(options)} for a pipeline: give per-stage load options in "
                         f"{PIPELINE_JSON} (\"options\")")
    if backend is not None and not isinstance(backend, dict):
        raise UsageError(f"a pipeline's stages may each use a different format: give backend as {{stage: backend}}, "
                         f"not {backend!r}")
    path = Path(path)
    root, bundle = (path.parent if path.name == PIPELINE_JSON and path.is_file() else path), None
    if (root.is_dir() and (root / "bundle.json").is_file()) or root.is_file():
        from device_runtime.bundle import open_bundle  # a bundle: every file's checksum holds before anything runs

        bundle = open_bundle(root)
        root = bundle.root
    sessions: dict[str, Session] = {}
    try:
        pipeline = read_pipeline(root)
        unknown = sorted(set(backend or {}) - {s.name for s in pipeline.stages if s.kind == "artifact"})
        if unknown:
            raise UsageError(f"backend names stage(s) {unknown}, which are not artifact stages of {pipeline.name}")
        for stage in pipeline.stages:
            if stage.kind == "artifact":
                chosen = (backend or {}).get(stage.name, stage.backend)
                try:
                    sessions[stage.name] = load_artifact(root / stage.artifact, backend=chosen, num_threads=num_threads,
                                                         adapt_io=stage.adapt_io, allow_non_finite=allow_non_finite,
                                                         **stage.options)
                except PocketformerError as exc:
                    raise type(exc)(f"pipeline stage {stage.name!r} ({stage.artifact}): {exc}") from exc
        session = PipelineSession(pipeline, sessions, str(path), num_threads, bundle)
    except BaseException:
        for opened in sessions.values():
            opened.close()
        if bundle is not None:
            bundle.close()
        raise
    session.adapt_io, session.allow_non_finite = adapt_io, bool(allow_non_finite)
    return session


class PipelineSession(Session):
    """A pipeline behind the `Session` interface. `stages` holds each artifact stage's own session (its format,
    backend and `info`); `last_timings` is a `PipelineTimings` of the most recent run (None before one).

    Runs are serialised by the session's lock (the stages' sessions are not all re-entrant, and `last_timings`
    belongs to one run); hold several for parallel runs (`device_runtime.SessionPool`)."""

    format = "pipeline"
    backend = "pipeline"

    def __init__(self, pipeline: Pipeline, sessions: dict[str, Session], path: str, num_threads: int | None,
                 bundle: Any = None) -> None:
        super().__init__(path, num_threads)
        self.pipeline, self.stages, self._bundle = pipeline, sessions, bundle
        self.last_timings: PipelineTimings | None = None
        self.load_time_ms = sum(s.load_time_ms for s in sessions.values())
        self._inputs = list(pipeline.inputs)
        self._check_artifact_wiring()
        self._outputs = [self._output_info(name, wire) for name, wire in pipeline.outputs.items()]

    def _check_artifact_wiring(self) -> None:
        for stage in self.pipeline.stages:
            where = f"{PIPELINE_JSON} stage {stage.name!r}"
            if stage.kind == "artifact":
                names = [t.name for t in self.stages[stage.name].get_inputs()]
                wanted = [n for n in names if n != stage.loop_input]
                missing = [n for n in wanted if n not in stage.inputs]
                extra = sorted(set(stage.inputs) - set(wanted))
                if missing or extra or (stage.loop_input is not None and stage.loop_input not in names):
                    raise refuse(where, f"artifact {stage.artifact} takes input(s) {names}"
                                 + (f"; unwired {missing}" if missing else "") + (f"; unknown {extra}" if extra else "")
                                 + ("" if stage.loop_input in names + [None] else
                                    f"; its loop_input {stage.loop_input!r} is not one of them"))
                outputs = [t.name for t in self.stages[stage.name].get_outputs()]
                if stage.loop_output is not None and stage.loop_output not in outputs:
                    raise refuse(where, f"loop_output {stage.loop_output!r} is not an output of {stage.artifact} "
                                 f"({outputs})")
            for port, wire in stage.wires():
                self._artifact_output(wire, f"{where} input {port!r}")
        for name, wire in self.pipeline.outputs.items():
            self._artifact_output(wire, f"{PIPELINE_JSON} output {name!r}")

    def _artifact_output(self, wire: str, where: str) -> TensorInfo | None:
        """The artifact output a wire reads (checked to exist), or None for a glue output or a pipeline input."""
        source, _, port = wire.partition(".")
        if source not in self.stages:
            return None
        infos = {t.name: t for t in self.stages[source].get_outputs()}
        if port not in infos:
            raise refuse(where, f"wire {wire!r}: artifact stage {source!r} has no output {port!r}; its outputs are "
                         f"{list(infos)}")
        return infos[port]

    def _output_info(self, name: str, wire: str) -> TensorInfo:
        declared = self.pipeline.declared.get(name, {})
        source = self._artifact_output(wire, f"{PIPELINE_JSON} output {name!r}")
        if source is None and wire.startswith(INPUT + "."):
            source = next(t for t in self._inputs if t.name == wire.split(".", 1)[1])
        if source is None and not {"shape", "dtype"} <= set(declared):
            raise PipelineError(f"{PIPELINE_JSON} output {name!r} comes from glue ({wire!r}): declare its \"shape\" "
                                "and \"dtype\"")
        if source is not None:
            stage = next((s for s in self.pipeline.stages if s.name == wire.split(".", 1)[0]), None)
            dtype = np.float32 if source.quantization and stage is not None and stage.adapt_io else source.dtype
            declared = {"shape": list(source.shape), "dtype": np.dtype(dtype).name, **declared}
        return tensor_info({"name": name, **declared}, f"{PIPELINE_JSON} output {name!r}")

    # -- running -----------------------------------------------------------------------------------------
    def _execute(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        values = {f"{INPUT}.{t.name}": a for t, a in zip(self._inputs, arrays)}
        timings = []
        for stage in self.pipeline.stages:
            if stage.loop_input is not None:
                continue  # runs inside the glue stage that drives it
            feed = {port: values[w] if isinstance(w, str) else [values[x] for x in w]
                    for port, w in stage.inputs.items()}
            loop = [0.0, 0]  # a decode loop's time in its artifact's calls, and how many
            start = time.perf_counter()
            try:
                outputs = self._run_stage(stage, feed, values, loop)
            except PocketformerError as exc:
                raise type(exc)(f"pipeline stage {stage.name!r}: {exc}") from exc
            except Exception as exc:
                raise ExecutionError(f"pipeline stage {stage.name!r} ({stage.artifact or stage.glue}) failed: "
                                     f"{type(exc).__name__}: {str(exc).strip()[:500]}") from exc
            elapsed = (time.perf_counter() - start) * 1e3
            timings.append(StageTiming(stage.name, stage.kind, max(0.0, elapsed - loop[0]), stage.step, loop[0],
                                       loop[1]))
            values.update({f"{stage.name}.{n}": v for n, v in outputs.items()})
        self.last_timings = PipelineTimings(timings)
        return [values[wire] for wire in self.pipeline.outputs.values()]

    def _run_stage(self, stage: Stage, feed: dict[str, np.ndarray], values: dict[str, np.ndarray],
                   loop: list) -> dict[str, np.ndarray]:
        if stage.kind == "artifact":
            session = self.stages[stage.name]
            return dict(zip((t.name for t in session.get_outputs()), session.run(None, feed)))
        step = get_glue(stage.glue)
        step_fn = self._step_fn(stage.step, values, loop) if stage.step is not None else None
        return dict(zip(step.outputs, step(feed, stage.params, step_fn=step_fn)))

    def _step_fn(self, name: str, values: dict[str, np.ndarray], loop: list) -> Callable[[np.ndarray], np.ndarray]:
        """The driven artifact stage as `ids -> logits`, its other inputs wired from this run's values. Each call's
        wall time is added to `loop[0]` and counted in `loop[1]`: it is the artifact's time, not the glue's (the
        loop's own numpy work, argmax and writing ids, is what remains of the glue stage's time)."""
        stage = next(s for s in self.pipeline.stages if s.name == name)
        session = self.stages[name]
        fixed = {port: values[wire] for port, wire in stage.inputs.items()}
        output = stage.loop_output or session.get_outputs()[0].name

        def step_fn(ids: np.ndarray) -> np.ndarray:
            start = time.perf_counter()
            try:
                return session.run([output], {**fixed, stage.loop_input: ids})[0]
            finally:
                loop[0] += (time.perf_counter() - start) * 1e3
                loop[1] += 1

        return step_fn

    def close(self) -> None:
        for session in self.stages.values():
            session.close()
        if self._bundle is not None:
            self._bundle.close()
            self._bundle = None

    def _backend_info(self) -> dict[str, Any]:
        stages = []
        for s in self.pipeline.stages:
            inner = self.stages.get(s.name)
            stages.append({"name": s.name, "kind": s.kind, "artifact": s.artifact, "glue": s.glue,
                           "format": inner.format if inner else None, "backend": inner.backend if inner else None})
        return {"pipeline": self.pipeline.name, "stages": stages,
                "last_timings": self.last_timings.to_dict() if self.last_timings else None}
