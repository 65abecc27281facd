"""The sweep's Ray side: the cluster connection, the export task, the device actor, and failure triage.

- With no address (and no `RAY_ADDRESS`) a local Ray is started with this machine's CPUs, no dashboard, and one
  `device:<name>` resource per device of the sweep (this host has them all). With an address, an existing
  cluster is used: hosts with devices joined with `ray start --address ... --resources '{"device:board0": 1}'`,
  and a device no node offers is reported at once instead of an actor waiting forever for its resource.
- An export is a task with CPU and memory requests. Ray sets OMP_NUM_THREADS to its CPU count, so a one-CPU
  export runs torch single-threaded and two of them share two cores instead of oversubscribing them.
- A device is an actor holding its `device:<name>` resource (and no CPU: the work runs on the device, or is a
  benchmark the host's cores should not also be exporting on). Its methods run one at a time: one benchmark
  per device at once.

Retries are the driver's (`sdk.sweep.run`), not Ray's `max_retries`: each attempt's reason is then recorded, and
a deterministic failure (the converter refused, parity failed) is not retried at all. Device actors do use
`max_restarts`, so an actor whose process died comes back for the next attempt.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from device_runtime.errors import BackendUnavailableError, PocketformerError
from sdk.sweep.jobs import Device, pack, unpack

INSTALL_HINT = "pip install 'pocketformer[cluster]' (Ray 2.60)"


class ClusterMissingError(BackendUnavailableError):
    """Ray is not installed here: `pocketformer sweep` needs it (`tune` does not)."""


def require_ray():
    try:
        import ray
    except ImportError:
        raise ClusterMissingError(f"pocketformer sweep runs on Ray, which is not installed here: {INSTALL_HINT}; "
                                  "`pocketformer tune` runs without it") from None
    return ray


@contextlib.contextmanager
def cluster(address: str | None, num_cpus: int | None, devices: Sequence[Device],
            verbose: bool = False) -> Iterator[dict[str, Any]]:
    """Connect to (or start) Ray for the sweep; yields what the cluster offers. Shuts down only a Ray it started."""
    ray = require_ray()
    address = address or os.environ.get("RAY_ADDRESS") or None
    started = False
    start = time.perf_counter()
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=verbose)
        else:
            ray.init(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False, log_to_driver=verbose,
                     resources={d.resource: 1 for d in devices})
            started = True
    try:
        resources = ray.cluster_resources()
        missing = {d.name: (f"no node of the cluster offers the resource {d.resource}: on the host that has the "
                            f"device, run ray start --address ... --resources '{{\"{d.resource}\": 1}}'")
                   for d in devices if resources.get(d.resource, 0) < 1}
        yield {"address": address or ("local (started here)" if started else "local (already running)"),
               "started_here": started, "cpus": int(resources.get("CPU", 0)),
               "nodes": len([n for n in ray.nodes() if n.get("Alive")]), "missing_devices": missing,
               "ray": ray.__version__, "connect_s": time.perf_counter() - start}
    finally:
        if started:
            ray.shutdown()


# -- the export task ------------------------------------------------------------------------------------
EXPORT_TASK = "pocketformer-export"


def export_folder(request: dict[str, Any], units: list[dict[str, Any]]) -> dict[str, Any]:
    """On a worker: export artifacts of one folder into a scratch folder, verify them (sdk.export.api), and return
    their bytes, manifest entries and failures. The driver writes them into the merged folder."""
    from device_runtime import manifest
    from sdk.export.api import export

    started = time.time()
    scratch = Path(tempfile.mkdtemp(prefix="pf-sweep-export-"))
    outcomes = []
    try:
        if request.get("pipeline"):
            return export_pipeline(request, units[0], scratch, started)
        for unit in units:
            t0 = time.perf_counter()
            try:
                (result,) = export(request["model"], unit["format"], request["precision"], out_dir=scratch,
                                   weights=request["weights"], tiny=request["tiny"], seq_len=request["seq_len"],
                                   **unit["options"])
            except PocketformerError as exc:  # the toolchain's own verdict: recorded, not retried
                outcomes.append({"file": unit["file"], "status": "failed", "error": type(exc).__name__,
                                 "reason": str(exc), "export_s": time.perf_counter() - t0})
                continue
            outcomes.append({"file": result.path.name, "status": "ok", "entry": result.entry.to_dict(),
                             "verified": result.passed, "export_s": time.perf_counter() - t0})
        folder = scratch / request["folder"]
        found = manifest.read_manifest(folder)
        return {"outcomes": outcomes, "model": found.model, "failed": found.failed,
                "files": pack(folder, [o["file"] for o in outcomes if o["status"] == "ok"]),
                "worker": _where(), "started": started, "ended": time.time()}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def export_pipeline(request: dict[str, Any], unit: dict[str, Any], scratch: Path, started: float) -> dict[str, Any]:
    """A pipeline model's job (`sdk.sweep.jobs.plan_pipeline`): the whole pipeline exported into `scratch` and
    verified stage by stage and end to end; its folder's files, each stage's figures and the end-to-end verdict."""
    from sdk.export.api import export

    t0 = time.perf_counter()
    try:
        (result,) = export(request["model"], [unit["format"]], request["precision"], out_dir=scratch / request["folder"],
                           tiny=request["tiny"], **unit["options"])
    except PocketformerError as exc:  # refused, failed verification (a stage or end to end): recorded, not retried
        outcome = {"file": unit["file"], "status": "failed", "error": type(exc).__name__, "reason": str(exc),
                   "export_s": time.perf_counter() - t0}
        return {"outcomes": [outcome], "model": {}, "failed": [], "files": {}, "worker": _where(),
                "started": started, "ended": time.time()}
    outcome = pipeline_outcome(result, unit["file"], time.perf_counter() - t0)
    return {"outcomes": [outcome], "model": {}, "failed": [], "files": pack(result.path.parent, [result.path.name]),
            "worker": _where(), "started": started, "ended": time.time()}


def pipeline_outcome(result, file: str, export_s: float) -> dict[str, Any]:
    """What the driver records of a pipeline export (a `PipelineExportResult`): the folder's hash and size, each
    stage's artifact (relative to the folder), format, precision, size and verdict, and the end-to-end verdict."""
    from device_runtime import manifest
    from device_runtime.measure import artifact_size

    stages = {s: {"artifact": Path(r.path).relative_to(result.path).as_posix(), "format": r.format,
                  "precision": str(r.precision), "size_bytes": r.size_bytes,
                  "max_abs_err": (r.parity.get("lowering") or {}).get("max_abs_err"), "verified": r.passed}
              for s, r in result.stages.items()}
    return {"file": file, "status": "ok", "verified": result.passed, "export_s": export_s,
            "sha256": manifest.sha256_of(result.path), "size_bytes": artifact_size(str(result.path)),
            "stages": stages, "end_to_end": {k: result.figures.get(k) for k in ("passed", "glue_share")}}


def submit_export(request: dict[str, Any], units: list[dict[str, Any]], cpus: float, memory_gb: float):
    ray = require_ray()
    task = ray.remote(export_folder).options(num_cpus=cpus, memory=int(memory_gb * 2**30), max_retries=0,
                                             name=EXPORT_TASK)
    return task.remote(request, units)


def _where() -> dict[str, Any]:
    import ray

    # Outside a Ray worker (the task's function called directly) asking for the node would start a local Ray.
    node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    return {"host": socket.gethostname(), "pid": os.getpid(), "node": node}


# -- the device actor ------------------------------------------------------------------------------------
class DeviceRunner:
    """One device: checks it answers, then benchmarks one artifact at a time (sdk.measure.bench) from its host."""

    def __init__(self, device: Device) -> None:
        self.device = device

    def check(self) -> dict[str, Any]:
        if not self.device.is_local:
            from device_runtime.remote.transport import make_transport

            make_transport(self.device.address, self.device.ssh_key, self.device.ssh_options).check()
        return _where()

    def bench(self, files: dict[str, bytes], file: str, runs: int, warmup: int, threads: int | None) -> dict:
        from sdk.measure.bench import bench

        d = self.device
        scratch = Path(tempfile.mkdtemp(prefix="pf-sweep-bench-"))
        try:
            unpack(files, scratch)
            started = time.time()
            document = bench([scratch / file], runs=runs, warmup=warmup, threads=threads,
                             device=None if d.is_local else d.address, runner=d.runner,
                             remote_python=d.remote_python, ssh_key=d.ssh_key, ssh_options=d.ssh_options)
            document["sweep_worker"] = {**_where(), "started": started, "ended": time.time()}
            return document
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def start_device(device: Device, restarts: int):
    ray = require_ray()
    actor = ray.remote(DeviceRunner).options(resources={device.resource: 1}, num_cpus=0, max_restarts=restarts,
                                             max_task_retries=0, name=None)
    return actor.remote(device)


def put(value: Any):
    return require_ray().put(value)


def wait(refs: list, timeout: float) -> list:
    """The refs that are ready: waits up to `timeout` for the first, then takes all that are ready by then."""
    ray = require_ray()
    if not refs:
        time.sleep(timeout)
        return []
    ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
    if ready:
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
    return ready


def get(ref) -> Any:
    return require_ray().get(ref)


def stop_task(ref) -> None:
    with contextlib.suppress(Exception):
        require_ray().cancel(ref, force=True)


def stop_actor(actor) -> None:
    with contextlib.suppress(Exception):
        require_ray().kill(actor, no_restart=True)


# -- failures ---------------------------------------------------------------------------------------------
def _transient_types() -> tuple[type, ...]:
    from device_runtime.isolated import WorkerError
    from device_runtime.remote.transport import DeviceUnreachableError

    return DeviceUnreachableError, WorkerError


def triage(exc: BaseException) -> tuple[str, str, bool]:
    """(error type, reason, worth retrying) of a failed task or actor call.

    A typed error of the product is its verdict on the input (retry only the connection kinds); a dead worker,
    node or actor, a lost object, memory pressure or a timeout are the cluster's and are retried; any other
    exception inside a task is unexpected (a bug or a flaky tool) and gets the bounded retries too."""
    ray = require_ray()
    errors = ray.exceptions
    if isinstance(exc, errors.RayTaskError):
        cause = exc.cause if exc.cause is not None else exc
        if isinstance(cause, PocketformerError):
            return type(cause).__name__, str(cause), isinstance(cause, _transient_types())
        return type(cause).__name__, _short(str(cause)), True
    system = (errors.WorkerCrashedError, errors.RayActorError, errors.NodeDiedError, errors.ObjectLostError,
              errors.OutOfMemoryError, errors.TaskCancelledError, errors.LocalRayletDiedError,
              errors.OwnerDiedError, errors.ObjectStoreFullError, errors.TaskUnschedulableError)
    if isinstance(exc, system):
        return type(exc).__name__, _short(str(exc)), True
    if isinstance(exc, PocketformerError):
        return type(exc).__name__, str(exc), isinstance(exc, _transient_types())
    return type(exc).__name__, _short(str(exc)), True


def _short(text: str, limit: int = 600) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    head = lines[0] if lines else text
    return head if len(head) <= limit else head[:limit] + " ..."
