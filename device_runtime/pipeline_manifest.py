"""pipeline.json: the schema of a pipeline (`pocketformer.pipeline`, version 1), read and checked whole.

Standard library and numpy only; `device_runtime.pipeline` opens and runs what this module reads. The schema
is described in `device_runtime.pipeline`'s docstring and docs/pipelines.md.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from device_runtime.errors import PocketformerError, UsageError
from device_runtime.glue import GlueStep, get_glue
from device_runtime.session import TensorInfo, with_value_ranges

SCHEMA = "pocketformer.pipeline"
SCHEMA_VERSION = 1
PIPELINE_JSON = "pipeline.json"
INPUT = "input"  # the reserved stage name of wires from the pipeline's inputs
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_ARTIFACT_KEYS = {"name", "artifact", "inputs", "backend", "adapt_io", "options", "loop_input", "loop_output"}
_GLUE_KEYS = {"name", "glue", "inputs", "params", "step"}


class PipelineError(PocketformerError, ValueError):
    """A pipeline.json that cannot be run: not this schema, a newer version, or a stage, wire or artifact that
    does not hold together. The message names the stage and the field."""


@dataclass(frozen=True)
class Stage:
    name: str
    # the stage's input (an artifact's input name, a glue step's argument) -> a wire; a glue input may take a list
    # of wires (a feature pyramid's levels), given to the step as a list of arrays
    inputs: dict[str, str | list[str]]

    def wires(self) -> list[tuple[str, str]]:
        """(input, wire) for every wire into this stage, lists flattened."""
        return [(port, w) for port, value in self.inputs.items()
                for w in ([value] if isinstance(value, str) else value)]
    artifact: str | None = None
    glue: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    backend: str | None = None
    adapt_io: bool = True
    options: dict[str, Any] = field(default_factory=dict)
    loop_input: str | None = None
    loop_output: str | None = None
    step: str | None = None

    @property
    def kind(self) -> str:
        return "artifact" if self.artifact is not None else "glue"


@dataclass(frozen=True)
class Pipeline:
    """A checked pipeline.json: its folder, inputs, stages in run order and outputs ({name: wire}, in order)."""

    root: Path
    name: str
    inputs: list[TensorInfo]
    stages: list[Stage]
    outputs: dict[str, str]
    declared: dict[str, dict[str, Any]]  # output name -> its declared {"shape", "dtype"} (may be empty)


# -- reading and checking pipeline.json --------------------------------------------------------------------
def refuse(where: str, problem: str) -> PipelineError:
    return PipelineError(f"{where}: {problem}")


def tensor_info(entry: Any, where: str) -> TensorInfo:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise refuse(where, "each input is {\"name\", \"shape\", \"dtype\"}")
    shape, dtype = entry.get("shape"), entry.get("dtype")
    if not isinstance(shape, list) or not all(d is None or (isinstance(d, int) and d >= 0) for d in shape):
        raise refuse(where, f"input {entry['name']!r} needs a \"shape\": a list of sizes (null for a dynamic one)")
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise refuse(where, f"input {entry['name']!r} has dtype {dtype!r}, not a numpy dtype name") from None
    info = TensorInfo(entry["name"], tuple(shape), dtype,
                      dynamic_axes={i: f"{entry['name']}_{i}" for i, d in enumerate(shape) if d is None})
    return with_value_ranges([info], {info.name: entry.get("value_range")})[0]


def _stage(entry: Any, index: int) -> Stage:
    where = f"{PIPELINE_JSON} stage {index}"
    if not isinstance(entry, dict):
        raise refuse(where, "a stage is an object")
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.match(name) or name == INPUT:
        raise refuse(where, f"name {name!r} is not a valid stage name (letters, digits, _ and -; not {INPUT!r})")
    where = f"{PIPELINE_JSON} stage {name!r}"
    if ("artifact" in entry) == ("glue" in entry):
        raise refuse(where, "a stage has exactly one of \"artifact\" (a file in the folder) or \"glue\" (a step "
                     "name)")
    unknown = sorted(set(entry) - (_ARTIFACT_KEYS if "artifact" in entry else _GLUE_KEYS))
    if unknown:
        raise refuse(where, f"unknown field(s) {unknown}")
    inputs = entry.get("inputs", {})
    lists = "glue" in entry  # a glue input may take a list of wires; an artifact input is one tensor
    if not isinstance(inputs, dict) or not all(isinstance(k, str) and (isinstance(v, str) or (
            lists and isinstance(v, list) and v and all(isinstance(w, str) for w in v))) for k, v in inputs.items()):
        raise refuse(where, "\"inputs\" maps each input of the stage to a wire (\"input.NAME\" or "
                     "\"STAGE.OUTPUT\"" + (", or a list of them)" if lists else ")"))
    if "glue" in entry:
        params = entry.get("params", {})
        if not isinstance(params, dict):
            raise refuse(where, "\"params\" is an object of fixed parameters")
        return Stage(name, dict(inputs), glue=entry["glue"], params=dict(params), step=entry.get("step"))
    artifact = entry["artifact"]
    if not isinstance(artifact, str) or not artifact or PurePosixPath(artifact).is_absolute() \
            or ".." in PurePosixPath(artifact).parts or "\\" in artifact:
        raise refuse(where, f"artifact {artifact!r} must be a relative path inside the pipeline's folder")
    options = entry.get("options", {})
    if not isinstance(options, dict):
        raise refuse(where, "\"options\" is an object of load options")
    return Stage(name, dict(inputs), artifact=artifact, backend=entry.get("backend"),
                 adapt_io=bool(entry.get("adapt_io", True)), options=dict(options),
                 loop_input=entry.get("loop_input"), loop_output=entry.get("loop_output"))


def read_pipeline(folder: str | Path) -> Pipeline:
    """The pipeline.json in `folder`, checked whole except for the artifacts' own input and output names
    (known once they are opened: `open_pipeline` checks those)."""
    root = Path(folder)
    path = root / PIPELINE_JSON
    if not path.is_file():
        raise PipelineError(f"{root} is not a pipeline: it has no {PIPELINE_JSON}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PipelineError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict) or meta.get("schema") != SCHEMA:
        raise PipelineError(f"{path} is not a {SCHEMA} document (its \"schema\" is "
                            f"{meta.get('schema') if isinstance(meta, dict) else None!r})")
    version = meta.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise PipelineError(f"{path}: schema_version {version!r} is not a released version")
    if version > SCHEMA_VERSION:
        raise PipelineError(f"{path} is a {SCHEMA} version {version} pipeline; this Pocketformer reads version "
                            f"{SCHEMA_VERSION}: upgrade Pocketformer on this side, or re-export with this one")
    for key in ("inputs", "stages", "outputs"):
        if not isinstance(meta.get(key), list) or not meta[key]:
            raise PipelineError(f"{path} has no {key!r} (a non-empty list)")
    inputs = [tensor_info(e, f"{PIPELINE_JSON} inputs[{i}]") for i, e in enumerate(meta["inputs"])]
    stages = [_stage(e, i) for i, e in enumerate(meta["stages"])]
    _check_names([t.name for t in inputs], "input")
    _check_names([s.name for s in stages], "stage")
    outputs, declared = {}, {}
    for i, entry in enumerate(meta["outputs"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) \
                or not isinstance(entry.get("from"), str):
            raise PipelineError(f"{PIPELINE_JSON} outputs[{i}]: each output is {{\"name\", \"from\": wire}}")
        if entry["name"] in outputs:
            raise PipelineError(f"{PIPELINE_JSON}: output name {entry['name']!r} appears twice")
        outputs[entry["name"]] = entry["from"]
        declared[entry["name"]] = {k: entry[k] for k in ("shape", "dtype") if k in entry}
    pipeline = Pipeline(root, str(meta.get("name") or root.name), inputs, stages, outputs, declared)
    _check_graph(pipeline)
    return pipeline


def _check_names(names: list[str], what: str) -> None:
    seen = set()
    for name in names:
        if name in seen:
            raise PipelineError(f"{PIPELINE_JSON}: {what} name {name!r} appears twice")
        seen.add(name)


def _check_graph(p: Pipeline) -> None:
    """Glue names and params, artifact files, loop bindings, and every wire pointing at an earlier stage."""
    position = {s.name: i for i, s in enumerate(p.stages)}
    driven = {}
    for i, stage in enumerate(p.stages):
        where = f"{PIPELINE_JSON} stage {stage.name!r}"
        if stage.kind == "glue":
            step = _glue(stage, where)
            missing = [n for n in step.inputs if n not in stage.inputs]
            extra = sorted(set(stage.inputs) - set(step.inputs))
            if missing or extra:
                raise refuse(where, f"glue step {stage.glue!r} takes input(s) {list(step.inputs)}"
                             + (f"; missing {missing}" if missing else "") + (f"; unknown {extra}" if extra else ""))
            if step.calls_session != (stage.step is not None):
                raise refuse(where, f"glue step {stage.glue!r} " + (
                    "calls a session per step: name the artifact stage it drives in \"step\"" if step.calls_session
                    else "calls no session: remove \"step\""))
            if stage.step is not None:
                target = next((s for s in p.stages[:i] if s.name == stage.step), None)
                if target is None or target.loop_input is None:
                    raise refuse(where, f"\"step\" names {stage.step!r}, which is not an earlier artifact stage with "
                                 "a \"loop_input\"")
                driven[stage.step] = stage.name
        else:
            file = p.root / stage.artifact
            if not file.exists():
                raise refuse(where, f"artifact {stage.artifact!r} is missing from {p.root}")
        for port, wire in stage.wires():
            _check_wire(p, wire, f"{where} input {port!r}", position, before=i)
    idle = [s.name for s in p.stages if s.loop_input is not None and s.name not in driven]
    if idle:
        raise PipelineError(f"{PIPELINE_JSON} stage {idle[0]!r} has a \"loop_input\" but no glue stage drives it "
                            "(\"step\")")
    for output, wire in p.outputs.items():
        _check_wire(p, wire, f"{PIPELINE_JSON} output {output!r}", position, before=len(p.stages))
    for stage in p.stages:
        for port, wire in stage.wires():
            if wire.split(".", 1)[0] in driven:
                raise PipelineError(f"{PIPELINE_JSON} stage {stage.name!r} input {port!r} reads {wire!r}, but that "
                                    "stage runs only inside its decode loop")
    used = {w.split(".", 1)[1] for s in p.stages for _, w in s.wires() if w.startswith(INPUT + ".")}
    used |= {w.split(".", 1)[1] for w in p.outputs.values() if w.startswith(INPUT + ".")}
    unused = [t.name for t in p.inputs if t.name not in used]
    if unused:
        raise PipelineError(f"{PIPELINE_JSON}: input {unused[0]!r} feeds no stage")


def _glue(stage: Stage, where: str) -> GlueStep:
    try:
        step = get_glue(stage.glue)
    except UsageError as exc:
        raise refuse(where, str(exc)) from None
    problem = step.params_problem(stage.params)
    if problem:
        raise refuse(where, problem)
    return step


def _check_wire(p: Pipeline, wire: str, where: str, position: dict[str, int], before: int) -> None:
    source, dot, port = wire.partition(".")
    if not dot or not port:
        raise refuse(where, f"wire {wire!r} is not \"input.NAME\" or \"STAGE.OUTPUT\"")
    if source == INPUT:
        names = [t.name for t in p.inputs]
        if port not in names:
            raise refuse(where, f"wire {wire!r} names no pipeline input; inputs are {names}")
        return
    if source not in position:
        raise refuse(where, f"wire {wire!r} names no stage; stages are {list(position)}")
    if position[source] >= before:
        raise refuse(where, f"wire {wire!r} reads stage {source!r}, which does not run before it (stages run in the "
                     "order listed: a forward reference or a cycle)")
    stage = p.stages[position[source]]
    if stage.kind == "glue":
        outputs = get_glue(stage.glue).outputs
        if port not in outputs:
            raise refuse(where, f"wire {wire!r}: glue step {stage.glue!r} has no output {port!r}; its outputs are "
                         f"{list(outputs)}")
