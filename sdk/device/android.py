"""`pocketformer bench BUNDLE --device adb:SERIAL --app`: the Android demo app measures a bundle on the phone.

    doc = sdk.device.android.app_benchmark("adb:R58M123ABC", ["mobilevit.bundle"], runs=50, threads=4)

The app (android_demo/, package `dev.pocketformer.demo`) runs `.pte` through ExecuTorch's Android runtime and
`.tflite` through LiteRT, the way an Android app would ship the model, instead of the device's Python or a
native runner binary. The flow:

1. the bundle is checked here first (`device_runtime.bundle.open_bundle`: schema, every checksum); an export
   folder or artifact is bundled first (`sdk.device.bundles`);
2. it is pushed into the app's own external folder (`/sdcard/Android/data/dev.pocketformer.demo/files/`,
   readable by the app without storage permissions), in a fresh `pocketformer.XXXXXXXX` folder;
3. `adb shell am start -n dev.pocketformer.demo/.BenchActivity --es bundle P --es out R --ei runs N
   --ei warmup W --ei threads T` starts the benchmark screen, which runs without a touch;
4. the app verifies the bundle again (its Java core), times load, first run and the runs, runs every
   bundled sample for its self-check (against the host's outputs, the model's tolerance), and writes the
   result JSON atomically; an error is written there too, so this side reports it instead of timing out;
5. the JSON (schema `pocketformer.bench/1`, as `pocketformer bench --json`) is pulled and joined: each result
   gets its local path, model, precision and the host's parity figures, as `sdk.measure.bench.annotate` adds them.
"""
from __future__ import annotations

import json
import os
import secrets
import shlex
import tempfile
import time
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Sequence

from device_runtime.errors import EXIT_OK, EXIT_PARITY, EXIT_UNSUPPORTED, UsageError
from device_runtime.remote.transport import AdbTarget, AdbTransport, RemoteError, parse_device

APP_PACKAGE = "dev.pocketformer.demo"
ACTIVITY = f"{APP_PACKAGE}/.BenchActivity"
DEVICE_ROOT = f"/sdcard/Android/data/{APP_PACKAGE}/files"
DEFAULT_TIMEOUT_S = 1800  # how long `bench --app` waits for the app's result (a large model, many runs)


class AppNotInstalledError(RemoteError):
    """The phone does not have the Pocketformer demo app."""

    exit_code = EXIT_UNSUPPORTED


def is_bundle(path: Path) -> bool:
    if path.is_dir():
        return (path / "bundle.json").is_file()
    if path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            return "bundle.json" in zf.namelist()
    return False


def _bundle_of(path: Path, tmp: Path, note: Callable[[str], None]) -> Path:
    """`path` itself when it is a bundle, else a bundle of the export folder or artifact written into `tmp`."""
    if is_bundle(path):
        return path
    if not path.exists():
        raise UsageError(f"no such bundle, export folder or artifact: {path}")
    from sdk.device.bundles import write_bundle

    note(f"bundling {path} (the app runs bundles: inputs and expected outputs travel with the artifact)")
    return write_bundle([path], tmp / f"{path.stem}.bundle", note=note)


def app_benchmark(device: str, bundles: Sequence[str | os.PathLike], *, runs: int = 50, warmup: int = 5,
                  threads: int | None = None, artifact: str | None = None, adb: str = "adb",
                  timeout: float = 1800, poll_s: float = 0.5, keep: bool = False,
                  note: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run each bundle's .pte/.tflite artifacts in the Android app on `device` (adb:SERIAL); one document."""
    from device_runtime.bundle import open_bundle
    from device_runtime.measure import add_ratios, checked_arguments

    note = note or (lambda message: None)
    target = parse_device(device)
    if not isinstance(target, AdbTarget):
        raise UsageError(f"--app drives the Android app over adb: give --device adb:SERIAL, not {device!r}")
    checked_arguments(list(bundles), runs, warmup, None, None)
    if threads is not None and not 0 <= threads <= 64:
        raise UsageError(f"--threads must be in 0..64, got {threads}")
    transport = AdbTransport(target, adb)
    note(f"connecting to {transport.label}")
    transport.check()
    listed = transport.run(f"pm list packages {APP_PACKAGE}", timeout=60)
    if f"package:{APP_PACKAGE}" not in (listed.stdout or "").split():
        raise AppNotInstalledError(f"{transport.label} does not have the Pocketformer app ({APP_PACKAGE}): build and "
                                   f"install it first (android_demo/README.md: ./gradlew :app:installDebug, or "
                                   f"adb install app-debug.apk), or drop --app to use the device's Python")
    documents = []
    with tempfile.TemporaryDirectory(prefix="pf-app-") as tmp:
        tmp = Path(tmp)
        for given in map(Path, bundles):
            bundle = _bundle_of(given, tmp, note)
            with open_bundle(bundle) as opened:  # refuse a damaged bundle before it travels
                meta = opened.meta
            doc = _run_one(transport, bundle, runs, warmup, threads, artifact, timeout, poll_s, keep, note)
            documents.append(_join(doc, bundle, meta, transport.label))
    document = documents[0]
    for other in documents[1:]:
        document["results"] += other["results"]
    return add_ratios(document)


def _run_one(transport: AdbTransport, bundle: Path, runs, warmup, threads, artifact, timeout, poll_s, keep,
             note) -> dict[str, Any]:
    workdir = f"{DEVICE_ROOT}/pocketformer.{secrets.token_hex(4)}"
    result = transport.run(f"mkdir -p {shlex.quote(workdir)}", timeout=60)
    if result.returncode != 0:
        raise RemoteError(f"cannot create {workdir} on {transport.label}: {(result.stderr or result.stdout).strip()}")
    name = "bundle.zip" if bundle.is_file() else "bundle"
    remote_bundle, remote_out = f"{workdir}/{name}", f"{workdir}/result.json"
    try:
        with tempfile.TemporaryDirectory(prefix="pf-app-push-") as stage:
            link = Path(stage) / name  # pushed under this name, whatever the local one
            os.symlink(bundle.resolve(), link)
            note(f"pushing {bundle} to {transport.label}:{remote_bundle}")
            transport.push([link], workdir)
        extras = ["--es", "bundle", remote_bundle, "--es", "out", remote_out, "--ei", "runs", str(runs),
                  "--ei", "warmup", str(warmup), "--ei", "threads", str(threads or 0)]
        if artifact:
            extras += ["--es", "artifact", artifact]
        note(f"starting {ACTIVITY} on {transport.label}")
        started = transport.run(" ".join(shlex.quote(a) for a in ["am", "start", "-W", "-n", ACTIVITY, *extras]),
                                timeout=120)
        text = f"{started.stdout or ''}{started.stderr or ''}"
        if started.returncode != 0 or "Error" in text:
            raise RemoteError(f"the app did not start on {transport.label}: {text.strip()[-500:]} (is the installed "
                              f"app current? android_demo/README.md)")
        deadline = time.monotonic() + timeout
        while True:
            probe = transport.run(f"test -f {shlex.quote(remote_out)} && echo ready || echo waiting", timeout=60)
            if "ready" in (probe.stdout or ""):
                break
            if time.monotonic() > deadline:
                transport.run(f"am force-stop {APP_PACKAGE}", timeout=60)
                raise RemoteError(f"the app wrote no result within {timeout:.0f} s on {transport.label} (stopped it); "
                                  f"its log: adb logcat -s Pocketformer")
            time.sleep(poll_s)
        with tempfile.TemporaryDirectory(prefix="pf-app-pull-") as pulled:
            local = Path(pulled) / "result.json"
            transport.pull(remote_out, local)
            try:
                document = json.loads(local.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise RemoteError(f"the app's result from {transport.label} is not JSON: {exc}") from None
    finally:
        if not keep:
            transport.run(f"rm -rf {shlex.quote(workdir)}", timeout=60)
    if not isinstance(document, dict) or document.get("schema") != "pocketformer.bench/1":
        raise RemoteError(f"the app's result from {transport.label} is not a pocketformer.bench/1 document")
    if "error" in document:
        error = document["error"] or {}
        message = f"on {transport.label}, the app: {error.get('message')}"
        if error.get("kind") in ("bad_bundle", "bad_input"):
            raise UsageError(message)
        raise RemoteError(f"{message} ({error.get('type')})")
    for result in document.get("results") or []:
        result["remote_path"] = f"{remote_bundle}/{result.get('path')}"
    return document


def _join(document: dict[str, Any], bundle: Path, meta: dict[str, Any], label: str) -> dict[str, Any]:
    """The host's facts beside the phone's figures: local path, model, precision, the export's parity."""
    entries = {a["file"]: a["entry"] for a in meta.get("artifacts") or []}
    model = meta.get("model") or {}
    document["device"] = label
    for result in document.get("results") or []:
        relative = result.get("path") or ""
        entry = entries.get(relative) or {}
        result["path"] = str(bundle / PurePosixPath(relative)) if bundle.is_dir() else f"{bundle}!{relative}"
        result["bundle"] = str(bundle)
        result["model"], result["family"] = model.get("name"), model.get("family")
        result["precision"] = entry.get("precision", result.get("precision"))
        parity = entry.get("parity") or {}
        result["verified"] = parity.get("passed")
        result["max_abs_err"] = (parity.get("lowering") or {}).get("max_abs_err")
        result["sqnr_db_vs_fp32"] = (parity.get("quantization") or {}).get("sqnr_db")
        result["device_verified"] = (result.get("self_check") or {}).get("passed")
    if document.get("results"):
        first = document["results"][0]
        for key in ("path", "format", "backend", "load_time_ms", "first_run_ms", "latency", "peak_rss_mb"):
            document.setdefault(key, first.get(key))
    return document


def cmd_bench_app(args) -> int:
    """`pocketformer bench ... --app`: the CLI side (sdk/cli/app.py's cmd_bench hands over here)."""
    from sdk.measure.bench import format_table
    from sdk.console.progress import Progress

    if not args.device:
        raise UsageError("--app runs the bundle in the Android app on a phone: give --device adb:SERIAL")
    for flag, value in (("--runner", args.runner), ("--image", args.image), ("--text", args.text),
                        ("--input", args.input), ("--profile-runs", args.profile_runs), ("--backend", args.backend),
                        ("--verify", getattr(args, "verify", False))):
        if value:
            raise UsageError(f"{flag} does not apply with --app: the app runs the bundle's own inputs with its "
                             f"ExecuTorch or LiteRT runtime, and self-checks them itself")
    progress = Progress(enabled=not args.quiet)
    document = app_benchmark(args.device, args.artifacts, runs=args.runs, warmup=args.warmup, threads=args.threads,
                             timeout=DEFAULT_TIMEOUT_S, note=progress.note)
    print(format_table(document))
    failed = [r for r in document["results"] if r.get("device_verified") is False]
    for r in document["results"]:
        check = r.get("self_check") or {}
        verdict = {True: "passed", False: "FAILED", None: "no tolerance"}[check.get("passed")]
        lowering = check.get("lowering") or {}
        error = lowering.get("max_abs_err", float("nan"))
        print(f"  self-check {r['name']}: {verdict} (max abs error vs the host {error:.3g}"
              f"{', ' + '; '.join(check.get('failures') or []) if check.get('failures') else ''})")
    if args.json:
        from device_runtime.atomic import write_json

        write_json(Path(args.json), document)
        print(f"  written {args.json}")
    return EXIT_PARITY if failed else EXIT_OK
