"""`pocketformer sweep` / `sdk.sweep.run.sweep(...)`: models x formats x precisions exported on Ray, each artifact
benchmarked on every device, into one report folder that `pocketformer report` reads.

    from sdk.sweep.run import sweep
    doc = sweep(["mobilevit_xxs", "tinybert_4l_312d"], formats=["onnx", "tflite"], precisions=["fp32", "int8"],
                devices=["local", "board0=ssh://pi@board0.local"], repeats=2, out_dir="out")

1. Plan (`sdk.sweep.jobs`): every combination through `sdk.export.plan.plan`; refusals are recorded with the
   converter's reason. One Ray task per artifact, exporting into its worker's scratch folder; this driver alone
   writes the merged folder (`out/<model>/<precision>/` and its report.json), so every manifest stays whole.
2. Cache: a unit whose content key has a finished result, with its artifact still in place, is not redone.
3. Run (`sdk.sweep.cluster`): at most `workers` export tasks in flight; each device's actor runs one benchmark at a
   time, fed as soon as an artifact exists (exports and benchmarks overlap). Every in-flight call has a
   deadline; a device that does not answer its first check within `connect_timeout` is reported unreachable and
   its benchmarks are recorded as failed with that reason, never waited on.
4. Failures: cluster failures (a killed worker, a dead node, a timeout, a dropped connection) are retried up to
   `retries` times; the product's own verdicts (refused, failed verification) are recorded at once. Every
   attempt is kept with its reason, and every unit ends `ok`, `cached`, `failed` or `refused`: none is dropped.
5. Output: the merged folder (artifacts and their report.json, `bench/.../*.json` documents per device and
   repeat), `sweep.json` (every unit, its attempts, the sweep's own figures) and `sweep.md` (the final table).
"""
from __future__ import annotations

import collections
import time
from pathlib import Path
from typing import Any, Sequence

from device_runtime import atomic, manifest
from device_runtime.errors import PocketformerError, UsageError
from sdk.sweep import cluster as ray_cluster
from sdk.console.progress import Progress
from sdk.export.records import tool_versions
from sdk.sweep.jobs import (BenchUnit, Cache, Device, ExportUnit, ExportJob, bench_key, cached_bench, cached_export,
                            model_label, pack, plan_exports, unpack)
from sdk.sweep.report import SweepLine, figures, write_documents

POLL_S = 0.5
ACTOR_START_S = 300  # a device actor's worker process starting (slow only on a loaded host)


def sweep(models: Sequence[Any], formats: Sequence[str] = ("onnx",), precisions: Sequence[str | None] = (None,),
          devices: Sequence[str | Device] = ("local",), repeats: int = 1, *, out_dir: str | Path = "out",
          tiny: bool = False, seq_len: int | None = None, weights: str | Path | None = None, runs: int = 20,
          warmup: int = 3, threads: int | None = None, retries: int = 2, address: str | None = None,
          num_cpus: int | None = None, workers: int | None = None, export_cpus: float = 1,
          export_memory_gb: float = 2.0, export_timeout: float = 3600, bench_timeout: float = 900,
          connect_timeout: float = 60, fresh: bool = False, progress: Progress | None = None,
          verbose: bool = False, remote_python: str | None = None, ssh_key: str | None = None,
          ssh_options: Sequence[str] = (), runner: str | None = None, **options: Any) -> dict[str, Any]:
    """Run the sweep; returns the document also written to `out_dir/sweep.json`. See the module docstring.

    `models` are zoo model names, or specs as `sdk.export` takes them (`spec_from_module(module, ...)`: the user's
    own nn.Module, sent to the export tasks whole; its key holds the state dict's and the samples' hashes)."""
    started = time.perf_counter()  # wall time: planning, cache checks and the run; Ray's start-up apart
    for name, value, low in (("repeats", repeats, 0), ("runs", runs, 1), ("retries", retries, 0),
                             ("warmup", warmup, 0), ("export_cpus", export_cpus, 1e-9)):
        if value is None or value < low:
            raise UsageError(f"{name} must be at least {low:g} (got {value})")
    if not models:
        raise UsageError("give at least one model (see `pocketformer zoo list`)")
    settings = {"remote_python": remote_python, "ssh_key": ssh_key, "ssh_options": tuple(ssh_options),
                "runner": runner}
    targets = [Device.parse(d, **settings) for d in devices]
    names = [d.name for d in targets]
    if len(set(names)) != len(names):
        raise UsageError(f"two devices share a name ({', '.join(names)}): name them NAME=ADDRESS")
    out = Path(out_dir)
    tools = tool_versions()
    jobs, refused = plan_exports(models, formats, precisions or (None,), tiny=tiny, seq_len=seq_len,
                                 weights=weights, options=options, tools=tools)
    run = _Run(out, jobs, refused, targets, repeats, Cache(out, enabled=not fresh), tools,
               dict(runs=runs, warmup=warmup, threads=threads), retries, progress or Progress(enabled=False))
    info: dict[str, Any] = {"connect_s": 0.0, "interrupted": None}
    try:
        with ray_cluster.cluster(address, num_cpus, targets, verbose) as connected:
            info.update(connected)
            slots = max(1, int(info["cpus"] // export_cpus)) if info["cpus"] else 1
            run.workers = min(workers, slots) if workers else slots
            run.limits = {"export": export_timeout, "ready": ACTOR_START_S, "check": connect_timeout,
                          "bench": bench_timeout}
            run.export_resources = (export_cpus, export_memory_gb)
            run.execute(info["missing_devices"])
    except BaseException as exc:  # Ctrl-C, a lost cluster: what finished is cached; say what did not, then raise
        if run.started:
            info["interrupted"] = f"{type(exc).__name__}: {exc}"
            for unit in run.export_units + run.bench_units:
                if unit.status in ("pending", "running"):
                    unit.status, unit.reason = "interrupted", f"the sweep stopped first ({type(exc).__name__})"
        raise
    finally:
        if run.started:  # nothing ran when Ray itself was missing: no sweep.json to write
            document = {
                "schema": "pocketformer.sweep/1", "out": str(out), "cluster": info, "workers": run.workers,
                "settings": {"models": [model_label(m) for m in models], "formats": list(formats), "precisions": [
                    p or "default" for p in (precisions or (None,))], "devices": [vars(d) for d in targets],
                    "repeats": repeats, "tiny": tiny, "seq_len": seq_len, "weights": str(weights) if weights else None,
                    "runs": runs, "warmup": warmup, "threads": threads, "retries": retries,
                    "export_cpus": export_cpus, "export_memory_gb": export_memory_gb, "options": options},
                "tools": tools, "devices": run.device_states(),
                "exports": [u.record() for u in run.export_units], "benchmarks": [b.record() for b in run.bench_units]}
            ended = run.ended or time.perf_counter()  # Ray's shutdown is not the sweep's time
            document["figures"] = figures(document, ended - started - info["connect_s"])
            write_documents(out, document)
    return document


class _Device:
    """The driver's view of one device: its actor, state, queue and the call in flight."""

    def __init__(self, device: Device) -> None:
        self.device = device
        self.actor = None
        self.state = "idle"  # idle (no work yet: no actor) | starting | checking | up | down
        self.reason: str | None = None
        self.queue: collections.deque[BenchUnit] = collections.deque()
        # (ref, kind, unit, t0): kind "ready" (the actor started), "check" (the device answers) or "bench"
        self.inflight: tuple[Any, str, BenchUnit | None, float] | None = None
        self.host: dict[str, Any] | None = None


class _Run:
    def __init__(self, out: Path, jobs: list[ExportJob], refused: list[ExportUnit], devices: list[Device],
                 repeats: int, cache: Cache, tools: dict[str, str], bench_args: dict[str, Any], retries: int,
                 progress: Progress) -> None:
        self.out, self.cache, self.tools, self.bench_args, self.retries = out, cache, tools, bench_args, retries
        self.repeats = repeats
        self.export_units = [u for j in jobs for u in j.units] + refused
        self.bench_units: list[BenchUnit] = []
        self.devices = {d.name: _Device(d) for d in devices}
        self.pending: collections.deque[ExportJob] = collections.deque()
        self.exporting: dict[Any, tuple[ExportJob, float]] = {}
        self.payloads: dict[str, Any] = {}  # export key -> ObjectRef of its packed files
        self.line = SweepLine(progress)
        self.workers = 1
        self.limits: dict[str, float] = {}
        self.export_resources = (1.0, 2.0)
        self.started = False
        self.ended: float | None = None
        for job in jobs:
            for unit in job.units:
                record = cached_export(cache, out, unit)
                if record:
                    unit.status, unit.figures = "cached", record
            if any(u.status == "pending" for u in job.units):
                self.pending.append(job)

    # -- the loop ----------------------------------------------------------------------------------------
    def execute(self, missing: dict[str, str]) -> None:
        self.started = True
        for name, state in self.devices.items():
            if name in missing:
                state.state, state.reason = "down", missing[name]
        for unit in self.export_units:
            if unit.status == "cached":
                self._add_benchmarks(unit)
        while self.pending or self.exporting or any(d.queue or d.inflight for d in self.devices.values()):
            while self.pending and len(self.exporting) < self.workers:
                self._submit_export(self.pending.popleft())
            for state in self.devices.values():
                if state.state == "up" and state.inflight is None and state.queue:
                    self._submit_bench(state, state.queue.popleft())
            refs = list(self.exporting) + [d.inflight[0] for d in self.devices.values() if d.inflight]
            ready = set(ray_cluster.wait(refs, POLL_S))
            for ref in [r for r in self.exporting if r in ready]:
                job, t0 = self.exporting.pop(ref)
                self._export_done(job, ref, t0)
            for state in self.devices.values():
                if state.inflight and state.inflight[0] in ready:
                    self._device_done(state)
            self._deadlines()
            self.line.update(self.export_units, self.bench_units, self._bench_total())
        self.line.finish(self.export_units, self.bench_units, self._bench_total())
        self.ended = time.perf_counter()

    def _bench_total(self) -> int:
        """Benchmarks so far plus those the exports still running or pending will bring."""
        coming = sum(u.status in ("pending", "running") for u in self.export_units)
        return len(self.bench_units) + coming * len(self.devices) * self.repeats

    def _deadlines(self) -> None:
        now = time.monotonic()
        for ref, (job, t0) in list(self.exporting.items()):
            if now - t0 > self.limits["export"]:
                ray_cluster.stop_task(ref)
                del self.exporting[ref]
                self._export_failed(job, "Timeout", f"no result within {self.limits['export']:.0f} s", True, t0)
        for state in self.devices.values():
            if not state.inflight:
                continue
            ref, kind, unit, t0 = state.inflight
            limit = self.limits[kind]
            if now - t0 <= limit:
                continue
            ray_cluster.stop_actor(state.actor)  # a hung call cannot be interrupted otherwise
            state.inflight = None
            if kind == "ready":
                self._device_down(state, f"its actor did not start within {limit:.0f} s")
            elif kind == "check":
                self._device_down(state, f"unreachable: no answer to the first check within {limit:.0f} s")
            else:
                state.actor = ray_cluster.start_device(state.device, self.retries)
                self._bench_failed(state, unit, "Timeout", f"no result within {limit:.0f} s", True, t0)

    # -- exports -----------------------------------------------------------------------------------------
    def _submit_export(self, job: ExportJob) -> None:
        units = [u for u in job.units if u.status not in ("ok", "cached", "failed")]
        for unit in units:
            unit.status = "running"
        cpus, memory = self.export_resources
        ref = ray_cluster.submit_export({**job.request, "folder": job.folder},
                                      [{"format": u.format, "file": u.file, "options": u.options} for u in units],
                                      cpus, memory)
        self.exporting[ref] = (job, time.monotonic())

    def _export_done(self, job: ExportJob, ref, t0: float) -> None:
        try:
            result = ray_cluster.get(ref)
        except Exception as exc:  # the task did not return: triage decides whether to retry
            self._export_failed(job, *ray_cluster.triage(exc), t0)
            return
        worker = {**result["worker"], "started": result["started"], "seconds": result["ended"] - result["started"]}
        folder = self.out / job.folder
        by_file = {u.file: u for u in job.units}
        for outcome in result["outcomes"]:
            unit = by_file[outcome["file"]]
            attempt = {"attempt": len(unit.attempts) + 1, **worker, "export_s": outcome["export_s"]}
            if outcome["status"] != "ok":
                unit.attempts.append({**attempt, "error": outcome["error"], "reason": outcome["reason"]})
                unit.status, unit.reason = "failed", f"{outcome['error']}: {outcome['reason']}"
                continue
            if unit.kind == "pipeline":
                self._pipeline_done(unit, result["files"], outcome, attempt, worker)
                continue
            entry = manifest.ArtifactEntry.from_dict(outcome["entry"])
            try:
                unpack(result["files"], folder, unit.file)
                if not entry.matches(folder / unit.file):  # moved between hosts: check they arrived unchanged
                    raise manifest.ArtifactModifiedError(
                        f"{folder / unit.file}: the bytes written differ from those the worker exported")
                manifest.record_artifact(folder, result["model"], entry)
            except (PocketformerError, OSError) as exc:  # e.g. a full disk here: recorded, the sweep goes on
                unit.attempts.append({**attempt, "error": type(exc).__name__, "reason": str(exc)})
                unit.status, unit.reason = "failed", f"{type(exc).__name__} writing the merged folder: {exc}"
                continue
            unit.attempts.append(attempt)
            unit.status = "ok"
            unit.figures = {"export_s": outcome["export_s"], "size_bytes": entry.size_bytes, "sha256": entry.sha256,
                            "verified": outcome["verified"], "worker": worker}
            self.cache.put(unit.key, unit.figures)
            self._add_benchmarks(unit)
        for attempt in result["failed"]:
            manifest.record_failure(folder, result["model"], attempt)

    def _pipeline_done(self, unit: ExportUnit, files: dict[str, bytes], outcome: dict[str, Any],
                       attempt: dict[str, Any], worker: dict[str, Any]) -> None:
        """A pipeline job's folder into the merged one (replacing it whole), checked against the task's hash."""
        folder = self.out / unit.folder
        try:
            unpack(files, folder, unit.model)
            if manifest.sha256_of(folder / unit.model) != outcome["sha256"]:
                raise manifest.ArtifactModifiedError(f"{folder / unit.model}: the files written differ from those "
                                                     "the worker exported")
        except (PocketformerError, OSError) as exc:
            unit.attempts.append({**attempt, "error": type(exc).__name__, "reason": str(exc)})
            unit.status, unit.reason = "failed", f"{type(exc).__name__} writing the merged folder: {exc}"
            return
        unit.attempts.append(attempt)
        unit.status = "ok"
        unit.figures = {k: outcome[k] for k in ("export_s", "size_bytes", "sha256", "verified", "stages", "end_to_end")}
        unit.figures["worker"] = worker
        self.cache.put(unit.key, unit.figures)
        self._add_benchmarks(unit)

    def _export_failed(self, job: ExportJob, error: str, reason: str, retry: bool, t0: float) -> None:
        units = [u for u in job.units if u.status == "running"]
        for unit in units:
            unit.attempts.append({"attempt": len(unit.attempts) + 1, "error": error, "reason": reason,
                                  "seconds": time.monotonic() - t0})
        if retry and units and len(units[0].attempts) <= self.retries:
            self.pending.appendleft(job)
            return
        for unit in units:
            unit.status = "failed"
            unit.reason = f"{error}: {reason}" + (f" (after {len(unit.attempts)} attempts)" if retry else "")

    # -- benchmarks --------------------------------------------------------------------------------------
    def _add_benchmarks(self, unit: ExportUnit) -> None:
        for state in self.devices.values():
            for repeat in range(self.repeats):
                bench = BenchUnit(unit, state.device, repeat)
                bench.key = bench_key(bench, unit.figures["sha256"], tools=self.tools, **self.bench_args)
                self.bench_units.append(bench)
                record = cached_bench(self.cache, self.out, bench.key)
                formats = state.device.formats
                if record:
                    bench.status, bench.figures = "cached", record
                elif formats is not None and unit.format not in formats:
                    bench.status, bench.reason = "refused", (f"device {state.device.name} runs only "
                                                             f"{', '.join(formats)}")
                elif state.state == "down":
                    bench.status, bench.reason = "failed", f"device {state.device.name} {state.reason}"
                else:
                    state.queue.append(bench)
                    self._start(state)

    def _start(self, state: _Device) -> None:
        """Start a device's actor when it first has work (a fully cached rerun starts none), then check it."""
        if state.actor is None:
            state.actor, state.state = ray_cluster.start_device(state.device, self.retries), "starting"
            state.inflight = (state.actor.__ray_ready__.remote(), "ready", None, time.monotonic())

    def _submit_bench(self, state: _Device, unit: BenchUnit) -> None:
        export = unit.export
        if export.key not in self.payloads:
            names = [export.model] if export.kind == "pipeline" else [manifest.MANIFEST_NAME, export.file]
            self.payloads[export.key] = ray_cluster.put(pack(self.out / export.folder, names))
        unit.status = "running"
        a = self.bench_args
        ref = state.actor.bench.remote(self.payloads[export.key], export.file, a["runs"], a["warmup"], a["threads"])
        state.inflight = (ref, "bench", unit, time.monotonic())

    def _device_done(self, state: _Device) -> None:
        ref, kind, unit, t0 = state.inflight
        state.inflight = None
        try:
            value = ray_cluster.get(ref)
        except Exception as exc:
            error, reason, retry = ray_cluster.triage(exc)
            if kind == "bench":
                self._bench_failed(state, unit, error, reason, retry, t0)
            else:
                self._device_down(state, f"unreachable: {error}: {reason}" if kind == "check" else
                                  f"its actor failed to start: {error}: {reason}")
            return
        if kind == "ready":  # the deadline of the check starts now, not while a worker process was starting
            state.state, state.inflight = "checking", (state.actor.check.remote(), "check", None, time.monotonic())
            return
        if kind == "check":
            state.state, state.host = "up", value
            return
        self._bench_ok(state, unit, value, t0)

    def _bench_ok(self, state: _Device, unit: BenchUnit, document: dict[str, Any], t0: float) -> None:
        export = unit.export
        artifact = (self.out / export.folder / export.file).resolve()
        for result in document.get("results", []):
            result["path"] = str(artifact)
        document.update(device=state.device.name, device_address=state.device.address,
                        sweep={"key": unit.key, "repeat": unit.repeat, "export_key": export.key})
        rel = Path("bench") / export.folder / f"{export.file}@{state.device.name}.r{unit.repeat}.json"
        atomic.write_json(self.out / rel, document)
        latency = (document.get("results") or [{}])[0].get("latency") or {}
        stages = {}
        if document.get("schema") == "pocketformer.pipeline-bench":  # stage by stage (sdk.measure.pipeline_bench)
            latency = document["end_to_end"]["latency"]
            stages = {"stages": {s["artifact"]: s["latency"]["p50"] for s in document["stages"] if s.get("artifact")},
                      "glue_share": document["glue_share"]}
        unit.status = "ok"
        unit.attempts.append({"attempt": len(unit.attempts) + 1, "seconds": time.monotonic() - t0,
                              **document.get("sweep_worker", {})})
        unit.figures = {"bench_file": rel.as_posix(), "p50_ms": latency.get("p50"), "mean_ms": latency.get("mean"),
                        "seconds": time.monotonic() - t0, **stages}
        self.cache.put(unit.key, unit.figures)
        self._release(export)

    def _bench_failed(self, state: _Device, unit: BenchUnit, error: str, reason: str, retry: bool,
                      t0: float) -> None:
        unit.attempts.append({"attempt": len(unit.attempts) + 1, "error": error, "reason": reason,
                              "seconds": time.monotonic() - t0})
        if retry and len(unit.attempts) <= self.retries and state.state == "up":
            unit.status = "pending"
            state.queue.appendleft(unit)
            return
        unit.status, unit.reason = "failed", f"{error}: {reason}"
        self._release(unit.export)

    def _device_down(self, state: _Device, reason: str) -> None:
        state.state, state.reason = "down", reason
        while state.queue:
            unit = state.queue.popleft()
            unit.status, unit.reason = "failed", f"device {state.device.name} {reason}"

    def _release(self, export: ExportUnit) -> None:
        """Drop an artifact's packed bytes from the object store once no benchmark of it is left to run."""
        if not any(b.export is export and b.status in ("pending", "running") for b in self.bench_units):
            self.payloads.pop(export.key, None)

    def device_states(self) -> dict[str, Any]:
        return {name: {"address": s.device.address, "state": s.state, "reason": s.reason, "host": s.host}
                for name, s in self.devices.items()}
