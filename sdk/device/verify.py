"""`pocketformer verify BUNDLE --device ...` / `sdk.verify_on_device(...)`: does the artifact compute the same
thing on the device as on the host?

    result = sdk.verify_on_device("mobilevit.bundle.zip", device="ssh://pi@raspberrypi.local", report_dir="out")
    result["passed"], result["artifacts"][0]["vs_host"]["max_abs_err"]

The bundle is checked here (every checksum), then run where asked:

- `local`: in this process, through `device_runtime` (what a device with Python runs, without a transport);
- `ssh://[user@]host[:port]` and `adb:SERIAL`: the bundle (as one zip) and this `device_runtime` package are
  copied to a fresh folder on the device, exactly as `pocketformer bench --device` ships them
  (`device_runtime.remote.transport`), and `python -m device_runtime.bundle` runs there with the device's
  Python. It checks the checksums again on the device, runs every sample and writes the outputs into one .npz,
  which is copied back. The figures are computed here, never on the device.

Figures per artifact (`converters.parity.compare`): against the host's outputs of the same artifact ("vs_host":
max/mean abs error, SQNR, cosine, top-1 agreement for classifiers) and against PyTorch's fp32 outputs
("vs_reference"). The model's tolerance for the artifact's precision decides (`converters.parity.judge`): the
device-vs-host error must be within its atol/rtol, and a quantized artifact must still meet its SQNR, cosine
and top-1 floors against fp32 PyTorch. The result is a JSON document (schema `pocketformer.device-verify/1`)
written into `report_dir`, where `pocketformer report` shows it beside the device latency.

An emulated board (its CPU says "emulated", see scripts/arm64_board.sh) is recorded as such: its timings are
"emulation", not device timings, and reports keep them apart.

ExecuTorch's own check (`bpte_runner=`, `--bpte-runner PATH_ON_DEVICE`): the bundle holds a BundledProgram `.bpte`
per `.pte` (its test cases: the samples and the host's outputs). Given the path of an `executor_runner` built with
bundle IO on the device, each chosen `.pte`'s `.bpte` is copied there and run over the same transport
(`RUNNER --model_path=X.bpte --bundleio_rtol=0 --bundleio_atol=A`), and its `Test_result: PASS/FAIL` lines are
parsed (`device_runtime.remote.parsers.parse_bundle_io`) into the artifact's "bundle_io" and verdict. The model's
bound (max abs error within atol, or rtol times the expected output's largest magnitude) is passed as the runner's
atol with rtol 0, since ExecuTorch's check is elementwise |out - expected| <= atol + rtol * |expected|. The portable
runner checks test case 0 only (the first sample); the report says how many cases the .bpte holds.
"""
from __future__ import annotations

import re
import shlex
import tempfile
import zipfile
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from types import SimpleNamespace
from typing import Any, Callable, Sequence

import numpy as np

from device_runtime import atomic
from device_runtime.bundle import BEGIN, END, Bundle, open_bundle, read_outputs, run_artifact
from device_runtime.errors import EXIT_PARITY, PocketformerError, UsageError

SCHEMA = "pocketformer.device-verify/1"


class DeviceVerificationError(PocketformerError, RuntimeError):
    """The device's outputs miss the model's tolerance against the host's (exit 1)."""

    exit_code = EXIT_PARITY


def emulation(host: dict[str, Any] | None) -> str | None:
    """The emulator's description when the device's CPU says it is emulated (the arm64 board does), else None."""
    cpu = str((host or {}).get("cpu") or "")
    match = re.search(r"\(emulated[^)]*\)", cpu)
    return match.group(0).strip("()") if match else None


def _machine() -> dict[str, Any]:
    from device_runtime.measure import host_info

    return host_info()


def _run_local(bundle: Bundle, files, backend, threads):
    runs = {}
    outputs = {}
    for file in files:
        outputs[file], runs[file] = run_artifact(bundle, file, backend, threads)
    return outputs, runs, _machine()


def bpte_tolerance(bundle: Bundle, artifact: dict[str, Any]) -> float:
    """The runner's atol for an artifact: the model's bound on test case 0 (the first sample's expected outputs)."""
    tolerance = artifact["tolerance"]
    scale = max(float(np.abs(o).max()) if o.size else 0.0
                for o in bundle.expected(artifact, bundle.samples[0]["id"]))
    return max(float(tolerance.get("atol") or 0.0), float(tolerance.get("rtol") or 0.0) * scale)


def _bpte_jobs(bundle: Bundle, chosen, files) -> list[tuple[str, Path | None, float]]:
    """(artifact file, its .bpte in the bundle or None, atol) of each chosen .pte."""
    return [(file, (bundle.root / f"{Path(file).stem}.bpte") if (bundle.root / f"{Path(file).stem}.bpte").is_file()
             else None, bpte_tolerance(bundle, artifact))
            for artifact, file in zip(chosen, files) if file.endswith(".pte")]


def bpte_command(runner: str, bpte: str, atol: float) -> list[str]:
    return [runner, f"--model_path={bpte}", "--bundleio_rtol=0", f"--bundleio_atol={atol:.9g}"]


def _bundle_io(jobs, run_one, runner: str, cases: int) -> dict[str, dict[str, Any]]:
    """{artifact: the runner's verdict}: `run_one(bpte, atol)` -> (exit code, output text) runs it on the device."""
    from device_runtime.remote.parsers import RunnerOutputError, parse_bundle_io

    results = {}
    for file, bpte, atol in jobs:
        record: dict[str, Any] = {"runner": runner, "bpte": bpte.name if bpte else None, "atol": atol, "rtol": 0.0,
                                  "test_cases_in_bpte": cases}
        if bpte is None:
            record.update(passed=False, error=f"the bundle holds no .bpte for {file} (bundle it where ExecuTorch's "
                                              f"devtools import)")
        else:
            code, text = run_one(bpte, atol)
            record["exit_code"] = code
            try:
                record.update(parse_bundle_io(text))
            except RunnerOutputError as exc:
                record.update(passed=False, error=str(exc))
        results[file] = record
    return results


def _run_bpte_local(jobs, runner: str, cases: int, timeout: float) -> dict[str, dict[str, Any]]:
    import subprocess

    def run_one(bpte: Path, atol: float):
        try:
            result = subprocess.run(bpte_command(runner, str(bpte), atol), capture_output=True, text=True,
                                    timeout=timeout)
        except FileNotFoundError:
            raise UsageError(f"no such bundle-IO runner: {runner}") from None
        return result.returncode, (result.stdout or "") + (result.stderr or "")

    return _bundle_io(jobs, run_one, runner, cases)


def _run_bpte_remote(transport, workdir: str, jobs, runner: str, cases: int, timeout: float, note):
    present = [bpte for _, bpte, _ in jobs if bpte is not None]
    if present:
        note(f"copying {len(present)} .bpte file(s) to {transport.label}:{workdir}")
        transport.push(present, workdir)

    def run_one(bpte: Path, atol: float):
        note(f"running {runner} on {bpte.name} on {transport.label}")
        args = bpte_command(runner, f"{workdir}/{bpte.name}", atol)
        result = transport.run(" ".join(shlex.quote(a) for a in args) + " 2>&1", timeout=timeout)
        if result.returncode == 127:
            raise UsageError(f"{transport.label} cannot execute {runner} (exit 127: not there, wrong architecture "
                             f"or missing libraries?): {(result.stdout or '')[-500:]}")
        return result.returncode, (result.stdout or "") + (result.stderr or "")

    return _bundle_io(jobs, run_one, runner, cases)


def _run_remote(bundle: Bundle, files, device, backend, threads, remote_python, ssh_key, ssh_options, adb,
                timeout, note, bpte=None):
    from device_runtime.remote.transport import zip_package, make_transport, run_framed

    transport = make_transport(device, ssh_key, ssh_options, adb)
    note(f"connecting to {transport.label}")
    transport.check()
    workdir = transport.mkdtemp()
    try:
        with tempfile.TemporaryDirectory(prefix="pf-verify-") as tmp:
            tmp = Path(tmp)
            package, packed = tmp / "device_runtime.zip", tmp / "bundle.zip"
            zip_package(package)
            with zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as zf:  # one file to copy, checked there again
                for path in sorted(p for p in bundle.root.rglob("*") if p.is_file()):
                    zf.write(path, path.relative_to(bundle.root).as_posix())
            note(f"copying the bundle and the device runtime to {transport.label}:{workdir}")
            transport.push([package, packed], workdir)
            args = [*shlex.split(remote_python), "-m", "device_runtime.bundle", f"{workdir}/bundle.zip",
                    "--out", f"{workdir}/outputs.npz", *[a for f in files for a in ("--artifact", f)],
                    *(["--backend", backend] if backend else []), *(["--threads", str(threads)] if threads else [])]
            note(f"running the bundle on {transport.label} with {remote_python}")
            summary = run_framed(transport, workdir, remote_python, args, timeout, markers=(BEGIN, END))
            transport.pull(f"{workdir}/outputs.npz", tmp / "outputs.npz")
            outputs = read_outputs(tmp / "outputs.npz", bundle.output_names)
        bundle_io = _run_bpte_remote(transport, workdir, *bpte, timeout, note) if bpte else {}
    finally:
        transport.cleanup(workdir)
    return outputs, summary["artifacts"], {**summary.get("machine", {}), "device": transport.label}, bundle_io


def _latency(run_ms: Sequence[float]) -> dict[str, Any]:
    ms = np.asarray(run_ms, np.float64)
    return {"runs": int(ms.size), "p50": float(np.median(ms)) if ms.size else None,
            "mean": float(ms.mean()) if ms.size else None}


def compare_artifact(bundle: Bundle, artifact: dict[str, Any], outputs: dict[str, list[np.ndarray]]) -> dict[str, Any]:
    """The figures and the verdict of one artifact's device outputs against the bundle's."""
    from converters.parity import ParityError, compare, judge
    from models_zoo import Precision

    samples = [s["id"] for s in bundle.samples]
    missing = [s for s in samples if s not in outputs]
    if missing:
        raise DeviceVerificationError(f"the device returned no outputs of {artifact['file']} for sample {missing[0]}")
    got = [outputs[s] for s in samples]
    expected = [bundle.expected(artifact, s) for s in samples]
    classifier = str(bundle.model.get("task", "")).endswith("classification")
    names = bundle.output_names
    entry = artifact["entry"]
    tolerance = SimpleNamespace(**{"atol": 0.0, "rtol": None, "min_sqnr_db": None, "min_cosine": None,
                                   "min_top1": None, **artifact["tolerance"]})
    try:
        vs_host = compare(expected, got, classifier, names)
        references = [bundle.reference(s) for s in samples]
        vs_reference = compare(references, got, classifier, names) if all(r is not None for r in references) else None
    except ParityError as exc:  # other shapes or counts than the host's: a failed verification, said plainly
        return {"file": PurePosixPath(artifact["file"]).name, "passed": False, "failures": [str(exc)]}
    quantized = Precision.of(entry["precision"]).weight_bits < 32
    failures = [f.replace("vs its PyTorch reference", "vs the host's outputs")
                for f in judge(vs_host, vs_reference if quantized else None, tolerance)]
    return {"file": PurePosixPath(artifact["file"]).name, "format": entry.get("format"),
            "precision": entry.get("precision"), "passed": not failures, "failures": failures,
            "tolerance": artifact["tolerance"], "vs_host": vs_host, "vs_reference": vs_reference,
            "host_backend": (entry.get("runtime") or {}).get("backend")}


def verify_on_device(bundle: str | Path, device: str = "local", artifacts: Sequence[str] | None = None,
                     backend: str | None = None, threads: int | None = None, remote_python: str = "python3",
                     ssh_key: str | None = None, ssh_options: Sequence[str] = (), adb: str = "adb",
                     report_dir: str | Path | None = None, timeout: float = 1800,
                     note: Callable[[str], None] | None = None, bpte_runner: str | None = None) -> dict[str, Any]:
    """Run a bundle on `device` and judge its outputs against the host's; see the module docstring."""
    note = note or (lambda message: None)
    device = (device or "local").strip()
    with open_bundle(bundle) as opened:
        files = list(artifacts or [PurePosixPath(a["file"]).name for a in opened.artifacts])
        chosen = [opened.artifact(f) for f in files]  # refuses a name the bundle does not hold
        files = [PurePosixPath(a["file"]).name for a in chosen]
        jobs = _bpte_jobs(opened, chosen, files) if bpte_runner else []
        if bpte_runner and not jobs:
            raise UsageError("--bpte-runner checks .pte artifacts; none of the chosen ones is a .pte")
        if device == "local":
            outputs, runs, machine = _run_local(opened, files, backend, threads)
            bundle_io = _run_bpte_local(jobs, bpte_runner, len(opened.samples), timeout) if jobs else {}
            label = "local"
        else:
            outputs, runs, machine, bundle_io = _run_remote(
                opened, files, device, backend, threads, remote_python, ssh_key, ssh_options, adb, timeout, note,
                bpte=(jobs, bpte_runner, len(opened.samples)) if jobs else None)
            label = machine.pop("device")
        emulated = emulation(machine)
        results = []
        for artifact, file in zip(chosen, files):
            figures = compare_artifact(opened, artifact, outputs.get(file, {}))
            run = runs.get(file) or {}
            figures.update(backend=run.get("backend"), load_time_ms=run.get("load_time_ms"),
                           latency={**_latency(run.get("run_ms") or []),
                                    "kind": "emulation" if emulated else "device",
                                    "note": "one run per sample, cold caches: a sanity figure; use bench for "
                                            "latency" + (f"; timed under {emulated}, not a device timing"
                                                         if emulated else "")})
            if file in bundle_io:
                figures["bundle_io"] = checked = bundle_io[file]
                if not checked["passed"]:
                    figures["passed"] = False
                    figures.setdefault("failures", []).append(
                        "ExecuTorch's executor_runner (bundle IO): " + (checked.get("error") or ", ".join(
                            f"test case {c['index']} FAIL" for c in checked["cases"] if not c["passed"])))
            results.append(figures)
        document = {"schema": SCHEMA, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "device": label, "emulated": emulated, "machine": machine, "bundle": str(bundle),
                    "model": opened.model.get("name"), "samples": len(opened.samples),
                    "passed": all(r["passed"] for r in results), "artifacts": results}
    if report_dir is not None:
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{document['model']}-{label}").strip("_")
        path = Path(report_dir) / f"device_verify-{slug}.json"
        atomic.write_json(path, document)
        document["written"] = str(path)
    return document


def format_result(document: dict[str, Any]) -> str:
    """One line per artifact: the figures against the host and PyTorch, and the verdict."""
    head = (f"{document['device']}{' (' + document['emulated'] + ')' if document.get('emulated') else ''}: "
            f"{document['model']}, {document['samples']} real samples")
    lines = [head, f"  {'artifact':<24}{'backend':<16}{'max abs vs host':>16}{'SQNR dB':>9}{'cosine':>9}"
                   f"{'top-1':>7}{'max abs vs PyTorch':>20}  verdict"]

    def f(value, spec):
        return format(value, spec) if isinstance(value, (int, float)) and value == value else "-"

    for r in document["artifacts"]:
        host, ref = r.get("vs_host") or {}, r.get("vs_reference") or {}
        verdict = "PASS" if r["passed"] else "FAIL: " + "; ".join(r.get("failures", []))
        lines.append(f"  {r['file'][:23]:<24}{str(r.get('backend'))[:15]:<16}{f(host.get('max_abs_err'), '16.3g')}"
                     f"{f(host.get('sqnr_db'), '9.1f')}{f(host.get('cosine'), '9.6f')}"
                     f"{f(host.get('top1_agreement'), '7.2f')}{f(ref.get('max_abs_err'), '20.3g')}  {verdict}")
        checked = r.get("bundle_io")
        if checked:
            cases = ", ".join(f"case {c['index']} {'PASS' if c['passed'] else 'FAIL'}" for c in checked.get("cases", []))
            lines.append(f"    executor_runner bundle IO ({checked.get('bpte')}, atol {checked['atol']:.3g}): "
                         f"{cases or checked.get('error')} (of {checked['test_cases_in_bpte']} in the .bpte)")
    if document.get("written"):
        lines.append(f"  written {document['written']}")
    return "\n".join(lines)


def verify_after_bench(artifacts: Sequence[str | Path], args) -> int:
    """`bench --verify`: bundle the benchmarked artifacts (a temporary zip) and verify it on the same device with
    the same connection flags; the JSON goes beside the bench --json file. Exit 1 when a tolerance is missed."""
    from sdk.device.bundles import write_bundle

    with tempfile.TemporaryDirectory(prefix="pf-bench-verify-") as tmp:
        bundle = write_bundle(artifacts, Path(tmp) / "bench.bundle.zip", zip_=True, trust=True)  # bench checked them
        document = verify_on_device(bundle, device=args.device or "local", backend=args.backend,
                                    threads=args.threads, remote_python=args.remote_python, ssh_key=args.ssh_key,
                                    ssh_options=args.ssh_option,
                                    report_dir=Path(args.json).parent if args.json else None)
    print(format_result(document))
    return 0 if document["passed"] else EXIT_PARITY
