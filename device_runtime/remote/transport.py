"""Running benchmarks on the user's own devices: SSH (Linux boards) and adb (Android), behind one interface.

    remote_benchmark("ssh://pi@raspberrypi.local", ["model.tflite"], runs=50)
    remote_benchmark("adb:R58M123ABC", ["model.tflite"], runner="bazel-bin/.../benchmark_model")

A `Transport` can run a shell command on the device, push files and pull them back. SSH uses the system `ssh`
and `scp` (OpenSSH; key-based only: `BatchMode=yes`, so no password prompt can hang a run); adb uses `adb -s
SERIAL`. The orchestration is shared:

- Python mode (no `--runner`): the artifacts, their feeds (`.npz`) and this `device_runtime` package (zipped,
  pure Python) are copied to a fresh temporary folder on the device, and `python -m
  device_runtime.remote.bench_main` runs there with the device's Python. The device needs Python, numpy and
  the format's runtime; not torch (except for `.pte`, whose Python binding is built on torch: use
  `--runner executor_runner` on devices without it). It prints the same JSON document as a local
  `pocketformer bench`.
- Native mode (`--runner PATH`): the runner binary is pushed too and run once per artifact: LiteRT's
  `benchmark_model` for `.tflite`, ExecuTorch's `executor_runner` for `.pte`; their output is parsed into the
  same document (see `parsers`).

Errors say what is wrong: host unreachable, authentication refused, unknown host key, no Python or numpy or
runtime on the device, a runner that failed (with its last lines).
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from device_runtime.errors import EXIT_UNSUPPORTED, ArtifactNotFoundError, BackendUnavailableError, PocketformerError, UsageError
from device_runtime.measure import SCHEMA, add_ratios
from device_runtime.remote.bench_main import BEGIN, END


class RemoteError(PocketformerError, RuntimeError):
    """A remote benchmark could not be run."""


class DeviceUnreachableError(RemoteError):
    """No connection to the device (refused, timed out, unknown host, no such adb serial)."""


class DeviceAuthError(RemoteError):
    """The device refused us: key authentication failed, unknown or changed host key, adb unauthorized."""


class ToolMissingError(RemoteError):
    """A local tool the transport needs (ssh, scp, adb) is not installed."""

    exit_code = EXIT_UNSUPPORTED


class DeviceRuntimeMissingError(BackendUnavailableError):
    """The device lacks Python, numpy or the artifact format's runtime."""


# -- device addresses -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SSHTarget:
    host: str
    user: str | None = None
    port: int = 22

    @property
    def label(self) -> str:
        return f"ssh://{self.user + '@' if self.user else ''}{self.host}:{self.port}"


@dataclass(frozen=True)
class AdbTarget:
    serial: str

    @property
    def label(self) -> str:
        return f"adb:{self.serial}"


_SSH_URL = re.compile(r"^ssh://(?:(?P<user>[^@/:\s]+)@)?(?P<host>\[[0-9a-fA-F:.]+\]|[^@/:\s\[\]]+)"
                      r"(?::(?P<port>\d+))?/?$")


def parse_device(device: str) -> SSHTarget | AdbTarget:
    """`ssh://[user@]host[:port]` or `adb:SERIAL` (`adb:` alone: the only attached device)."""
    device = device.strip()
    if device.startswith("ssh://"):
        m = _SSH_URL.match(device)
        if not m:
            raise UsageError(f"cannot read --device {device!r}: expected ssh://[user@]host[:port]")
        port = int(m.group("port") or 22)
        for part, value in (("user", m.group("user")), ("host", m.group("host"))):
            if value and value.startswith("-"):  # ssh/scp would read it as an option (-oProxyCommand=...)
                raise UsageError(f"--device {device!r}: a {part} starting with '-' is refused (it would reach ssh "
                                 f"as an option)")
        if not 0 < port < 65536:
            raise UsageError(f"--device {device!r}: port {port} is out of range")
        return SSHTarget(m.group("host").strip("[]"), m.group("user"), port)
    if device.startswith("adb:") or device == "adb":
        serial = device[4:] if device.startswith("adb:") else ""
        if serial.startswith("-") or any(c.isspace() for c in serial):
            raise UsageError(f"--device {device!r}: not an adb serial (see `adb devices`)")
        return AdbTarget(serial)
    raise UsageError(f"unknown --device {device!r}: use ssh://[user@]host[:port] or adb:SERIAL")


# -- transports -------------------------------------------------------------------------------------------
class Transport:
    label = ""
    tmp_root = "/tmp"

    def run(self, command: str, timeout: float | None = None) -> subprocess.CompletedProcess:
        raise NotImplementedError

    def push(self, sources: Sequence[Path], remote_dir: str) -> None:
        raise NotImplementedError

    def pull(self, remote: str, local: Path) -> None:
        raise NotImplementedError

    @staticmethod
    def bounded(command: str, timeout: float | None) -> str:
        """`command` under the device's own `timeout` (coreutils, busybox, Android's toybox), when it has one: a
        run the host gives up on is killed on the device too, not left running while its folder is removed."""
        if not timeout:
            return command
        limit = max(1, int(timeout))
        return (f"if command -v timeout >/dev/null 2>&1; then exec timeout -k 5 {limit} sh -c {shlex.quote(command)}; "
                f"else exec sh -c {shlex.quote(command)}; fi")

    def check(self) -> None:
        """Fail with a clear error unless a trivial command runs on the device."""
        result = self.run("echo pocketformer-ok", timeout=60)
        if result.returncode != 0 or "pocketformer-ok" not in result.stdout:
            self._raise(result, "connect to")

    def mkdtemp(self) -> str:
        result = self.run(f"mkdir -p {shlex.quote(self.tmp_root)} && mktemp -d "
                          f"{shlex.quote(self.tmp_root)}/pocketformer.XXXXXX", timeout=60)
        path = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
        if result.returncode != 0 or not path.startswith("/"):
            raise RemoteError(f"cannot create a working folder on {self.label}: {_text(result) or 'mktemp failed'}")
        return path

    def cleanup(self, path: str) -> None:
        if path and path.startswith(self.tmp_root.rstrip("/") + "/pocketformer."):
            self.run(f"rm -rf {shlex.quote(path)}", timeout=60)

    def _raise(self, result: subprocess.CompletedProcess, action: str) -> None:
        raise RemoteError(f"could not {action} {self.label} (exit {result.returncode}): {_text(result)}")


def _stopped(transport: Transport, result: subprocess.CompletedProcess, timeout: float | None) -> None:
    """The device's `timeout` stopped the command (exit 124, or 137 after the -k grace): say so."""
    if timeout and result.returncode in (124, 137):
        raise DeviceUnreachableError(f"{transport.label}: no answer within {timeout:.0f} s; the command was "
                                     f"stopped on the device")


def _text(result: subprocess.CompletedProcess) -> str:
    return "\n".join(part.strip() for part in (result.stderr, result.stdout) if part and part.strip())[-2000:]


class SSHTransport(Transport):
    """OpenSSH client (`ssh`, `scp`): key-based, non-interactive."""

    def __init__(self, target: SSHTarget, key: str | None = None, options: Sequence[str] = (),
                 connect_timeout: int = 15) -> None:
        for tool in ("ssh", "scp"):
            if shutil.which(tool) is None:
                raise ToolMissingError(f"`{tool}` is not installed here (Debian: apt-get install openssh-client)")
        self.target = target
        self.label = target.label
        common = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={connect_timeout}", "-o", "LogLevel=ERROR"]
        for option in options:
            common += ["-o", option]
        if key:
            if not Path(key).is_file():
                raise UsageError(f"no such SSH key: {key}")
            common += ["-i", str(key), "-o", "IdentitiesOnly=yes"]
        self._common = common
        self._dest = f"{target.user}@{target.host}" if target.user else target.host

    def _ssh(self, command: str) -> list[str]:
        return ["ssh", "-p", str(self.target.port), *self._common, "--", self._dest, command]

    def run(self, command: str, timeout: float | None = None) -> subprocess.CompletedProcess:
        try:
            result = subprocess.run(self._ssh(self.bounded(command, timeout)), capture_output=True, text=True,
                                    timeout=timeout + 10 if timeout else None,  # the device's timeout fires first
                                    stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise DeviceUnreachableError(f"{self.label}: no answer within {timeout:.0f} s") from None
        if result.returncode == 255:
            self._classify(result)
        _stopped(self, result, timeout)
        return result

    def push(self, sources: Sequence[Path], remote_dir: str) -> None:
        host = f"[{self.target.host}]" if ":" in self.target.host else self.target.host
        dest = f"{self.target.user + '@' if self.target.user else ''}{host}:{remote_dir.rstrip('/')}/"
        args = ["scp", "-q", "-r", "-P", str(self.target.port), *self._common, "--", *[str(s) for s in sources], dest]
        result = subprocess.run(args, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            self._classify(result)
            raise RemoteError(f"copying to {self.label}:{remote_dir} failed: {_text(result)}")

    def pull(self, remote: str, local: Path) -> None:
        host = f"[{self.target.host}]" if ":" in self.target.host else self.target.host
        src = f"{self.target.user + '@' if self.target.user else ''}{host}:{remote}"
        result = subprocess.run(["scp", "-q", "-P", str(self.target.port), *self._common, "--", src, str(local)],
                                capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            self._classify(result)
            raise RemoteError(f"copying {self.label}:{remote} back failed: {_text(result)}")

    def _classify(self, result: subprocess.CompletedProcess) -> None:
        err = result.stderr or ""
        last = err.strip().splitlines()[-1] if err.strip() else f"ssh exited {result.returncode}"
        if re.search(r"Connection refused|Connection timed out|Operation timed out|No route to host|"
                     r"Network is unreachable|Could not resolve hostname|Name or service not known|"
                     r"Connection closed by .* port|kex_exchange_identification", err):
            raise DeviceUnreachableError(f"cannot reach {self.label}: {last}")
        if "Host key verification failed" in err or "REMOTE HOST IDENTIFICATION HAS CHANGED" in err:
            raise DeviceAuthError(f"{self.label}: the host key is unknown or has changed ({last}); add it to "
                                  f"known_hosts (ssh-keyscan -p {self.target.port} {self.target.host}) or pass "
                                  f"--ssh-option StrictHostKeyChecking=accept-new")
        if re.search(r"Permission denied|Too many authentication failures|no mutual signature", err):
            raise DeviceAuthError(f"{self.label} refused key authentication ({last}); give the key with "
                                  f"--ssh-key or load it into ssh-agent (passwords are never used)")
        raise RemoteError(f"ssh to {self.label} failed: {last}")


class AdbTransport(Transport):
    """Android Debug Bridge: `adb -s SERIAL shell|push|pull`; files go under /data/local/tmp."""

    tmp_root = "/data/local/tmp"

    def __init__(self, target: AdbTarget, adb: str = "adb") -> None:
        if shutil.which(adb) is None:
            raise ToolMissingError(f"`{adb}` is not installed here (Android SDK platform-tools)")
        self.target = target
        self.label = target.label
        self._adb = [adb] + (["-s", target.serial] if target.serial else [])

    def run(self, command: str, timeout: float | None = None) -> subprocess.CompletedProcess:
        try:
            result = subprocess.run(self._adb + ["shell", self.bounded(command, timeout)], capture_output=True,
                                    text=True, timeout=timeout + 10 if timeout else None, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise DeviceUnreachableError(f"{self.label}: no answer within {timeout:.0f} s") from None
        self._classify(result)
        _stopped(self, result, timeout)
        return result

    def push(self, sources: Sequence[Path], remote_dir: str) -> None:
        for source in sources:  # staged symlinks are pushed as their targets, under the staged name
            result = subprocess.run(self._adb + ["push", str(Path(source).resolve()),
                                                 f"{remote_dir.rstrip('/')}/{Path(source).name}"],
                                    capture_output=True, text=True, stdin=subprocess.DEVNULL)
            self._classify(result)
            if result.returncode != 0:
                raise RemoteError(f"adb push {source} to {self.label}:{remote_dir} failed: {_text(result)}")

    def pull(self, remote: str, local: Path) -> None:
        result = subprocess.run(self._adb + ["pull", remote, str(local)], capture_output=True, text=True,
                                stdin=subprocess.DEVNULL)
        self._classify(result)
        if result.returncode != 0:
            raise RemoteError(f"adb pull {self.label}:{remote} failed: {_text(result)}")

    def _classify(self, result: subprocess.CompletedProcess) -> None:
        err = (result.stderr or "") + (result.stdout or "" if result.returncode else "")
        if re.search(r"device '.*' not found|no devices/emulators found|device offline|more than one device", err):
            raise DeviceUnreachableError(f"{self.label}: {err.strip().splitlines()[-1]} (see `adb devices`)")
        if "unauthorized" in err:
            raise DeviceAuthError(f"{self.label} is unauthorized: accept the USB debugging prompt on the phone")


def make_transport(device: str, ssh_key: str | None = None, ssh_options: Sequence[str] = (),
                   adb: str = "adb") -> Transport:
    target = parse_device(device)
    if isinstance(target, SSHTarget):
        return SSHTransport(target, ssh_key, ssh_options)
    return AdbTransport(target, adb)


# -- orchestration ----------------------------------------------------------------------------------------
RUNNER_FORMATS = {"tflite": "benchmark_model", "pte": "executor_runner"}


def remote_benchmark(device: str, artifacts: Sequence[str | os.PathLike], *, runs: int = 50, warmup: int = 5,
                     threads: int | None = None, feeds: Sequence[Mapping[str, Any] | None] | None = None,
                     names: Sequence[str] | None = None, runner: str | None = None, remote_python: str = "python3",
                     profile_runs: int = 0, ssh_key: str | None = None, ssh_options: Sequence[str] = (),
                     adb: str = "adb", keep: bool = False, timeout: float = 1800,
                     progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Benchmark artifacts on a device; the same document as `device_runtime.measure.benchmark_artifacts`."""
    from device_runtime.registry import sniff_format

    artifacts = [Path(a) for a in artifacts]
    for artifact in artifacts:
        if not artifact.exists():
            raise ArtifactNotFoundError(f"no such artifact: {artifact}")
    formats = [sniff_format(a) for a in artifacts]
    names = list(names) if names is not None else [a.name for a in artifacts]
    note = progress or (lambda message: None)
    transport = make_transport(device, ssh_key, ssh_options, adb)
    note(f"connecting to {transport.label}")
    transport.check()
    workdir = transport.mkdtemp()
    try:
        if runner:
            document = _native(transport, workdir, artifacts, formats, names, runner, runs, warmup, threads,
                               profile_runs, timeout, note)
        else:
            document = _python(transport, workdir, artifacts, names, feeds, runs, warmup, threads, remote_python,
                               profile_runs, timeout, note)
    finally:
        if not keep:
            transport.cleanup(workdir)
    document["device"] = transport.label
    for result, artifact in zip(document["results"], artifacts):
        result["remote_path"] = result.get("path")
        result["path"] = str(artifact)
    return add_ratios(document)


def _python(transport: Transport, workdir: str, artifacts, names, feeds, runs, warmup, threads, python,
            profile_runs, timeout, note) -> dict[str, Any]:
    import numpy as np

    with tempfile.TemporaryDirectory(prefix="pf-remote-") as tmp:
        tmp = Path(tmp)
        package = tmp / "device_runtime.zip"
        zip_package(package)
        uploads, remote_args = [package], []
        for i, (artifact, name) in enumerate(zip(artifacts, names)):
            staged = tmp / f"a{i}_{artifact.name}"
            os.symlink(artifact.resolve(), staged)  # scp -r follows it; unique names for same-named files
            uploads.append(staged)
            remote_args.append(f"{workdir}/{staged.name}")
        feed_args = []
        for i, feed in enumerate(feeds or []):
            if feed:
                path = tmp / f"feed{i}.npz"
                np.savez(path, **{k: np.asarray(v) for k, v in feed.items()})
                uploads.append(path)
                feed_args += ["--feed", f"{i}={workdir}/{path.name}"]
        note(f"copying {len(artifacts)} artifact(s) and the device runtime to {transport.label}:{workdir}")
        transport.push(uploads, workdir)
    args = [*shlex.split(python), "-m", "device_runtime.remote.bench_main", "--framed", "--runs", str(runs), "--warmup",
            str(warmup), *(["--threads", str(threads)] if threads else []), *feed_args,
            *(["--profile-runs", str(profile_runs)] if profile_runs else [])]
    for name in names:
        args += ["--name", name]
    note(f"running the benchmark on {transport.label} with {python}")
    return run_framed(transport, workdir, python, args + remote_args, timeout)


def run_framed(transport: Transport, workdir: str, python: str, args: Sequence[str], timeout: float | None,
               markers: tuple[str, str] = (BEGIN, END)) -> dict:
    """Run `args` (a device_runtime module under the device's `python`) in `workdir` with the pushed
    `device_runtime.zip` on its path, and return the framed JSON it printed; a typed error when it failed
    (the runtime missing on the device, bad input, or another remote error)."""
    command = (f"cd {shlex.quote(workdir)} && PYTHONPATH={shlex.quote(workdir + '/device_runtime.zip')} "
               + " ".join(shlex.quote(a) for a in args))
    result = transport.run(command, timeout=timeout)
    document = _framed(result.stdout, *markers)
    if document is None:
        _explain_python_failure(transport, result, python)
    if "error" in document:
        error = document["error"]
        message = f"on {transport.label}: {error.get('message')}"
        if error.get("kind") == "runtime_missing":
            raise DeviceRuntimeMissingError(message)
        if error.get("kind") == "bad_input":
            raise UsageError(message)
        raise RemoteError(f"{message} ({error.get('type')})")
    return document


def _framed(stdout: str, begin: str = BEGIN, end: str = END) -> dict[str, Any] | None:
    """The JSON document a device-side module printed between its `begin` and `end` marker lines."""
    if begin not in stdout or end not in stdout:
        return None
    body = stdout.split(begin, 1)[1].split(end, 1)[0]
    try:
        return json.loads(body)
    except json.JSONDecodeError:
        return None


def _explain_python_failure(transport: Transport, result: subprocess.CompletedProcess, python: str) -> None:
    text = _text(result)
    if result.returncode == 127 or re.search(r"(not found|No such file or directory)", text) and \
            shlex.split(python)[0] in text:
        raise DeviceRuntimeMissingError(f"{transport.label} has no Python at {python!r} (give the device's "
                                        f"interpreter with --remote-python): {text.splitlines()[-1] if text else ''}")
    missing = re.search(r"No module named '([\w.]+)'", text)
    if missing:
        module = missing.group(1).split(".")[0]
        raise DeviceRuntimeMissingError(f"{transport.label}: {python} cannot import {module!r}; install it on the "
                                        f"device (pip install {module}); the device needs Python, numpy and the "
                                        f"artifact format's runtime")
    raise RemoteError(f"the benchmark on {transport.label} failed (exit {result.returncode}): {text}")


def zip_package(target: Path) -> None:
    """This `device_runtime` package as a zip (pure Python: importable from the zip on any device)."""
    root = Path(__file__).resolve().parents[1]
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(root.rglob("*.py")):
            if "__pycache__" not in path.parts:
                zf.write(path, Path("device_runtime") / path.relative_to(root))


def _native(transport: Transport, workdir: str, artifacts, formats, names, runner, runs, warmup, threads,
            profile_runs, timeout, note) -> dict[str, Any]:
    from device_runtime.cpu import host_fields, parse_cpuinfo
    from device_runtime.remote.parsers import parse_benchmark_model, parse_executor_runner

    runner_path = Path(runner)
    if not runner_path.is_file():
        raise UsageError(f"no such runner binary: {runner}")
    unsupported = sorted({f for f in formats if f not in RUNNER_FORMATS})
    if unsupported:
        raise UsageError(f"--runner benchmarks {', '.join(f'.{f} with {r}' for f, r in RUNNER_FORMATS.items())}; "
                         f"not {', '.join(unsupported)} (drop --runner to use the device's Python runtime)")
    kinds = {RUNNER_FORMATS[f] for f in formats}
    if len(kinds) > 1:
        raise UsageError(f"one --runner cannot run {' and '.join(sorted(kinds))} artifacts; bench each format apart")
    kind = kinds.pop()
    note(f"copying {runner_path.name} and {len(artifacts)} artifact(s) to {transport.label}:{workdir}")
    with tempfile.TemporaryDirectory(prefix="pf-remote-") as tmp:
        staged = []
        for i, artifact in enumerate(artifacts):
            link = Path(tmp) / f"a{i}_{artifact.name}"
            os.symlink(artifact.resolve(), link)
            staged.append(link)
        transport.push([runner_path, *staged], workdir)
    remote_runner = f"{workdir}/{runner_path.name}"
    transport.run(f"chmod +x {shlex.quote(remote_runner)}", timeout=60)
    results = []
    for artifact, link, name in zip(artifacts, staged, names):
        remote_model = f"{workdir}/{link.name}"
        if kind == "benchmark_model":
            args = [remote_runner, f"--graph={remote_model}", f"--num_runs={runs}", f"--warmup_runs={max(1, warmup)}",
                    "--report_peak_memory_footprint=true"]
            if threads:
                args.append(f"--num_threads={threads}")
            if profile_runs:
                args.append("--enable_op_profiling=true")
        else:
            args = [remote_runner, f"--model_path={remote_model}", f"--num_executions={runs + 1}",
                    "--print_output=none"]
            if threads:
                args.append(f"--cpu_threads={threads}")
        note(f"running {runner_path.name} on {name}")
        result = transport.run(" ".join(shlex.quote(a) for a in args) + " 2>&1", timeout=timeout)
        if result.returncode == 127:
            raise DeviceRuntimeMissingError(f"{transport.label} cannot execute {runner_path.name} (exit 127: wrong "
                                            f"architecture or missing libraries?): {_text(result)}")
        parse = parse_benchmark_model if kind == "benchmark_model" else parse_executor_runner
        figures = parse(result.stdout + (result.stderr or ""))
        figures.update(name=name, path=remote_model, format="tflite" if kind == "benchmark_model" else "pte",
                       backend=f"{runner_path.name} (native)", num_threads=threads, warmup=warmup,
                       size_bytes=artifact.stat().st_size)
        figures.setdefault("runs", runs)
        results.append(figures)
    # A native runner prints no CPU: read the device's own /proc/cpuinfo (absent or unreadable: said in the record).
    cpuinfo = transport.run("cat /proc/cpuinfo", timeout=60)
    read = cpuinfo.returncode == 0
    host = host_fields(parse_cpuinfo(cpuinfo.stdout if read else "",
                                     f"{transport.label}:/proc/cpuinfo" + ("" if read else " (could not be read)")))
    return {"schema": SCHEMA, "runs": runs, "warmup": warmup, "threads": threads, "runner": runner_path.name,
            "order": "sequential: one runner invocation per artifact", "host": host, "results": results}
