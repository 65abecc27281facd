"""On-device benchmarks: parsers on real runner output, the adb transport up to the device, SSH end to end.

- Native runners' output (LiteRT `benchmark_model`, ExecuTorch `executor_runner`) is parsed from real samples
  recorded in tests/data/runner_output (sources in SOURCES.md); `executor_runner`'s bundle-IO lines from output
  assembled from ExecuTorch's format strings (no build of that runner is to be had here; SOURCES.md says so).
- No phone is attached here: the adb transport is tested with a stand-in `adb` on PATH that keeps a fake
  device folder and answers a runner invocation with a recorded real output. Everything up to the device
  (commands, flags, pushes, parsing, cleanup, error messages) is the real code.
- SSH is tested for real: an OpenSSH server (Debian's openssh-server) on 127.0.0.1, a free port, a throwaway
  host key and client key; `pocketformer bench model.pte --device ssh://USER@127.0.0.1:PORT` runs end to end
  with this machine as the device. Only 127.0.0.1 is ever contacted.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from device_runtime.profile import OpProfile
from device_runtime.remote.parsers import (RunnerOutputError, parse_benchmark_model, parse_benchmark_model_profile,
                                           parse_bundle_io, parse_executor_runner)
from device_runtime.remote.transport import (AdbTarget, DeviceAuthError, DeviceRuntimeMissingError,
                                             DeviceUnreachableError, SSHTarget, parse_device, remote_benchmark)
from sdk.cli.app import EXIT_BAD_INPUT, EXIT_OK, EXIT_UNSUPPORTED, main

from conftest import free_port as _free_port  # the sshd fixture lives in conftest.py (the arm64 board uses it too)

DATA = Path(__file__).parent / "data" / "runner_output"


def sample(name: str) -> str:
    return (DATA / name).read_text()


# -- parsers on real output -----------------------------------------------------------------------------
def test_every_sample_has_a_source():
    sources = (DATA / "SOURCES.md").read_text()
    for path in DATA.glob("*.txt"):
        assert f"`{path.name}`" in sources, f"{path.name} has no recorded source"


def test_benchmark_model_modern_log_with_percentiles():
    r = parse_benchmark_model(sample("benchmark_model_am62x_xnnpack.txt"))
    assert r["load_time_ms"] == pytest.approx(614.333)
    assert r["first_run_ms"] == pytest.approx(905.463)
    assert r["runs"] == 50
    lat = r["latency"]
    assert lat["mean"] == pytest.approx(899.641) and lat["p50"] == pytest.approx(899.281)
    assert lat["min"] == pytest.approx(898.007) and lat["max"] == pytest.approx(906.121)
    assert lat["p95"] == pytest.approx(904.305) and lat["std"] == pytest.approx(1.549)
    assert r["peak_rss_mb"] == pytest.approx(150.141) and r["load_rss_delta_mb"] == pytest.approx(146.363)
    assert r["delegation"] == {"delegate": "XNNPACK", "whole_graph": False}
    assert "profile" not in r


def test_benchmark_model_scientific_notation_and_op_profile():
    r = parse_benchmark_model(sample("benchmark_model_riscv64_qemu_op_profiling.txt"))
    assert r["latency"]["mean"] == pytest.approx(2950.34)  # avg=2.95034e+06 us
    assert r["latency"]["p50"] is None  # this build prints no median: not made up
    assert r["first_run_ms"] == pytest.approx(3512.391) and r["runs"] == 50
    profile = OpProfile.from_dict(r["profile"])
    # The regular runs' table (31 nodes), not the initialization one (AllocateTensors).
    assert len(profile) == 31 and "AllocateTensors" not in {row.op_type for row in profile}
    assert profile.runs == 50
    slowest = profile[0]
    assert slowest.op_type == "CONV_2D" and slowest.node == "[MobilenetV1/MobilenetV1/Conv2d_5_pointwise/Relu6]:10"
    assert slowest.mean_us == pytest.approx(277374.0)
    assert profile.coverage == pytest.approx(1.0, abs=0.01)
    by_type = {g["op_type"]: g for g in profile.by_op_type()}
    assert by_type["CONV_2D"]["nodes"] == 15 and by_type["DEPTHWISE_CONV_2D"]["nodes"] == 13


def test_benchmark_model_delegates_show_as_what_they_are():
    npu = parse_benchmark_model(sample("benchmark_model_imx8mp_npu_vx_delegate.txt"))
    assert npu["peak_rss_mb"] == pytest.approx(34.3164)  # the older "Peak memory footprint" wording
    assert npu["delegation"]["delegate"] == "EXTERNAL" and npu["delegation"]["whole_graph"] is True
    rows = npu["profile"]["rows"]
    assert [r["op_type"] for r in rows] == ["Vx Delegate"] and rows[0]["provider"] == "Vx Delegate"
    partial = parse_benchmark_model_profile(sample("benchmark_model_mi11_nnapi_op_profile.txt"))
    delegates = [r for r in partial if r.op_type == "TfLiteNnapiDelegate"]
    assert len(delegates) == 3 and len(partial) == 14
    assert sum(r.share for r in delegates) == pytest.approx(0.925, abs=0.01)
    assert "model/tf.math.multiply_23/Mul" in delegates[0].node and partial.notes


def test_benchmark_model_summary_only_and_failure():
    r = parse_benchmark_model(sample("benchmark_model_mi11_cpu_summary.txt"))
    assert r["latency"]["mean"] == pytest.approx(220.0) and r["load_time_ms"] == pytest.approx(1.43)
    with pytest.raises(RunnerOutputError, match="ANEURALNETWORKS_BAD_DATA"):
        parse_benchmark_model(sample("benchmark_model_mi11_nnapi_failed.txt"))
    with pytest.raises(RunnerOutputError, match="no operator-wise profile"):
        parse_benchmark_model_profile(sample("benchmark_model_am62x_cpu.txt"))


def test_executor_runner_output():
    r = parse_executor_runner(sample("executor_runner_arm64_xnnpack_etdump.txt"))
    assert r["latency"]["mean"] == pytest.approx(2.904883) and r["runs"] == 1
    assert r["etdump_path"] == "model/linear_model_f32.etdump"
    assert r["delegation"] == {"delegate": "XnnpackBackend"}
    mv2 = parse_executor_runner(sample("executor_runner_mv2_xnnpack.txt"))
    assert mv2["latency"]["mean"] == pytest.approx(15.013292)
    with pytest.raises(RunnerOutputError, match="prints no timing"):
        parse_executor_runner(sample("executor_runner_add_untimed.txt"))


def test_bundle_io_output():
    passed = parse_bundle_io(sample("executor_runner_bundleio_pass.txt"))
    assert passed["passed"] is True and "tolerance" not in passed
    (case,) = passed["cases"]
    assert case["index"] == 0 and case["passed"] is True
    assert case["stats"] == {"mean_absolute_error": 0.0, "max_absolute_error": 0.0, "mean_relative_error": 0.0,
                             "max_relative_error": 0.0}
    failed = parse_bundle_io(sample("executor_runner_bundleio_fail.txt"))
    assert failed["passed"] is False and failed["cases"][0]["passed"] is False
    assert failed["cases"][0]["stats"]["max_absolute_error"] == pytest.approx(0.000427)
    assert failed["tolerance"] == {"rtol": 0.0, "atol": pytest.approx(0.0003)}
    # A run on a plain .pte, or a runner built without bundle IO, checks nothing: an error, never a PASS.
    with pytest.raises(RunnerOutputError, match="did not check the bundled program.*Test_result"):
        parse_bundle_io(sample("executor_runner_mv2_xnnpack.txt"))
    with pytest.raises(RunnerOutputError, match="Execution of method forward failed with status 0x1"):
        parse_bundle_io("E 00:00:00.1 executorch:executor_runner.cpp:769] Execution of method forward failed with "
                        "status 0x1\n")


# A stand-in for `executor_runner` built with bundle IO: it takes the runner's flags, checks test case 0 of the .bpte
# with ExecuTorch's own `verify_method_outputs` (the binding's BundledModule, the C++ check the runner calls) at the
# given tolerance, and prints the runner's lines (executor_runner.cpp: 476, 883-887, 904-905 or 908-914).
STAND_IN_RUNNER = """#!{python}
import sys
flags = dict(a[2:].split("=", 1) for a in sys.argv[1:])
path, rtol, atol = flags["model_path"], float(flags["bundleio_rtol"]), float(flags["bundleio_atol"])
from executorch.extension.pybindings import portable_lib
bundled = portable_lib._load_bundled_program_from_buffer(open(path, "rb").read())
prefix = "I 00:00:00.000100 executorch:executor_runner.cpp:"
print(prefix + "476] Model file " + path + " is loaded.")
try:
    bundled.verify_result_with_bundled_expected_output("forward", 0, rtol, atol)
except RuntimeError:
    print(prefix + "908] Model output don't match expected BundleIO bpte ref data. rtol=%f atol=%f" % (rtol, atol))
    print(prefix + "913] TEST: BundleIO index[0] Test_result: FAIL")
    sys.exit(1)
print(prefix + "904] Model output match expected BundleIO bpte ref data.")
print(prefix + "905] TEST: BundleIO index[0] Test_result: PASS")
"""


def _runner(tmp_path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text(body)
    path.chmod(0o755)
    return str(path)


@pytest.fixture(scope="module")
def pte_bundle(pte, tmp_path_factory):
    from sdk.device.bundles import write_bundle

    return write_bundle([pte], tmp_path_factory.mktemp("bpte") / "pte.bundle.zip", zip_=True)


def test_verify_runs_executor_runner_on_the_bpte(pte_bundle, tmp_path, capsys):
    report = tmp_path / "report"
    runner = _runner(tmp_path, "executor_runner", STAND_IN_RUNNER.format(python=sys.executable))
    assert main(["verify", str(pte_bundle), "--bpte-runner", runner, "--report-dir", str(report), "--quiet"]) == EXIT_OK
    printed = capsys.readouterr().out
    (doc,) = [json.loads(p.read_text()) for p in report.glob("device_verify-*.json")]
    (result,) = doc["artifacts"]
    checked = result["bundle_io"]
    assert result["passed"] and checked["passed"] and checked["cases"] == [{"index": 0, "passed": True, "stats": None}]
    assert checked["bpte"] == "model.bpte" and checked["rtol"] == 0.0 and checked["exit_code"] == 0
    assert checked["test_cases_in_bpte"] == doc["samples"] >= 4
    # The model's bound on the first sample (max abs within atol, or rtol x the largest expected magnitude), as the
    # runner's atol with rtol 0: ExecuTorch's check is elementwise, |out - expected| <= atol + rtol * |expected|.
    from device_runtime.bundle import open_bundle

    with open_bundle(pte_bundle) as opened:
        first = opened.expected(opened.artifacts[0], opened.samples[0]["id"])
    tolerance = result["tolerance"]
    scale = max(float(np.abs(o).max()) for o in first)
    assert checked["atol"] == pytest.approx(max(tolerance["atol"], tolerance["rtol"] * scale))
    assert "executor_runner bundle IO (model.bpte" in printed and "case 0 PASS (of" in printed

    # The runner says FAIL (recorded output): the artifact fails, exit 1, with the runner's verdict in the report.
    failing = _runner(tmp_path, "failing_runner",
                      f"#!/bin/sh\ncat {DATA / 'executor_runner_bundleio_fail.txt'}\nexit 1\n")
    assert main(["verify", str(pte_bundle), "--bpte-runner", failing, "--quiet"]) == 1
    printed = capsys.readouterr().out
    assert "FAIL: ExecuTorch's executor_runner (bundle IO): test case 0 FAIL" in printed

    # A runner that checks nothing (no bundle IO in its build): a failure quoting what it printed, never a PASS.
    plain = _runner(tmp_path, "plain_runner", f"#!/bin/sh\ncat {DATA / 'executor_runner_mv2_xnnpack.txt'}\n")
    assert main(["verify", str(pte_bundle), "--bpte-runner", plain, "--quiet"]) == 1
    assert "did not check the bundled program" in capsys.readouterr().out
    assert main(["verify", str(pte_bundle), "--bpte-runner", str(tmp_path / "missing"), "--quiet"]) == EXIT_BAD_INPUT


def test_verify_runs_executor_runner_on_the_bpte_over_ssh(sshd, pte_bundle, tmp_path, capsys):
    runner = _runner(tmp_path, "executor_runner", STAND_IN_RUNNER.format(python=sys.executable))
    report = tmp_path / "report"
    assert main(["verify", str(pte_bundle), *_ssh_args(sshd), "--remote-python", sys.executable, "--bpte-runner",
                 runner, "--report-dir", str(report), "--quiet"]) == EXIT_OK, capsys.readouterr().out
    (doc,) = [json.loads(p.read_text()) for p in report.glob("device_verify-*.json")]
    checked = doc["artifacts"][0]["bundle_io"]
    assert checked["passed"] and checked["cases"][0]["passed"] and checked["exit_code"] == 0


def test_device_addresses():
    assert parse_device("ssh://pi@raspberrypi.local") == SSHTarget("raspberrypi.local", "pi", 22)
    assert parse_device("ssh://root@127.0.0.1:2222") == SSHTarget("127.0.0.1", "root", 2222)
    assert parse_device("ssh://[::1]:22") == SSHTarget("::1", None, 22)
    assert parse_device("adb:R58M123ABC") == AdbTarget("R58M123ABC")
    for bad in ("ssh://", "ssh://host:99999", "usb:1", "pi@host"):
        with pytest.raises(ValueError):
            parse_device(bad)


# -- adb, up to the device ----------------------------------------------------------------------------
FAKE_ADB = r'''#!PYTHON
"""A stand-in for adb: a fake device folder, and recorded real runner output for runner invocations."""
import os, shlex, shutil, subprocess, sys
root, log = os.environ["FAKE_ADB_ROOT"], os.environ["FAKE_ADB_LOG"]
args = sys.argv[1:]
serial = args[1] if args[:1] == ["-s"] else ""
args = args[2:] if serial else args
with open(log, "a") as fh:
    fh.write(shlex.join(["adb", *(["-s", serial] if serial else []), *args]) + "\n")
if serial == "missing":
    sys.exit(print(f"adb: device '{serial}' not found", file=sys.stderr) or 1)
if serial == "locked":
    sys.exit(print("adb: device unauthorized.", file=sys.stderr) or 1)
def local(path):
    return os.path.join(root, path.lstrip("/"))
if args[0] == "push":
    os.makedirs(os.path.dirname(local(args[2])), exist_ok=True)
    shutil.copy(args[1], local(args[2]))
    print(f"{args[1]}: 1 file pushed.")
elif args[0] == "pull":
    shutil.copy(local(args[1]), args[2])
    print(f"{args[1]}: 1 file pulled.")
elif args[0] == "shell":
    command = args[1]
    if "--graph=" in command or "--model_path=" in command:
        name = "FAKE_ADB_PROFILE" if "--enable_op_profiling=true" in command else "FAKE_ADB_OUTPUT"
        sys.stdout.write(open(os.environ[name]).read())
    else:  # echo, mkdir, mktemp, chmod, rm: run them against the fake device folder
        command = command.replace("/data/local/tmp", local("/data/local/tmp"))
        result = subprocess.run(command, shell=True, capture_output=True, text=True)
        sys.stdout.write(result.stdout.replace(root, ""))
        sys.stderr.write(result.stderr)
        sys.exit(result.returncode)
'''


@pytest.fixture
def fake_adb(tmp_path, monkeypatch):
    bindir, device = tmp_path / "bin", tmp_path / "device"
    bindir.mkdir()
    device.mkdir()
    adb = bindir / "adb"
    adb.write_text(FAKE_ADB.replace("PYTHON", sys.executable, 1))
    adb.chmod(0o755)
    log = tmp_path / "adb.log"
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_ADB_ROOT", str(device))
    monkeypatch.setenv("FAKE_ADB_LOG", str(log))
    monkeypatch.setenv("FAKE_ADB_OUTPUT", str(DATA / "benchmark_model_am62x_xnnpack.txt"))
    monkeypatch.setenv("FAKE_ADB_PROFILE", str(DATA / "benchmark_model_riscv64_qemu_op_profiling.txt"))
    # Artifacts are never run by the fake device: their bytes only need to sniff as their format.
    tflite = tmp_path / "model.tflite"
    tflite.write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(56))
    runner = tmp_path / "benchmark_model"
    runner.write_bytes(b"\x7fELF stand-in")
    return {"log": log, "device": device, "tflite": tflite, "runner": runner}


def test_adb_native_runner_up_to_the_device(fake_adb):
    doc = remote_benchmark("adb:R58M123ABC", [fake_adb["tflite"]], runner=str(fake_adb["runner"]), runs=50,
                           warmup=3, threads=4)
    calls = fake_adb["log"].read_text().splitlines()
    assert all(c.startswith("adb -s R58M123ABC ") for c in calls)
    pushes = [c for c in calls if " push " in c]
    assert any(c.endswith("/benchmark_model") for c in pushes) and any(c.endswith("a0_model.tflite") for c in pushes)
    run = next(c for c in calls if "--graph=" in c)
    workdir = run.split("--graph=")[1].split("/a0_model.tflite")[0]
    assert workdir.startswith("/data/local/tmp/pocketformer.")
    for flag in ("--num_runs=50", "--warmup_runs=3", "--num_threads=4", "--report_peak_memory_footprint=true"):
        assert flag in run
    assert any(f"rm -rf {workdir}" in c for c in calls)  # the working folder is removed afterwards
    assert not (fake_adb["device"] / workdir.lstrip("/")).exists()
    result = doc["results"][0]
    assert doc["device"] == "adb:R58M123ABC" and result["path"] == str(fake_adb["tflite"])
    assert result["latency"]["p50"] == pytest.approx(899.281) and result["ratio_vs_first"] == 1.0
    assert result["backend"] == "benchmark_model (native)"
    assert doc["host"]["cpu_info"]["source"] == "adb:R58M123ABC:/proc/cpuinfo"  # the device's CPU, read there


def test_adb_profile_through_the_cli(fake_adb, tmp_path, capsys):
    out = tmp_path / "profile.json"
    assert main(["profile", str(fake_adb["tflite"]), "--device", "adb:R58M123ABC", "--runner",
                 str(fake_adb["runner"]), "--json", str(out)]) == EXIT_OK
    assert "--enable_op_profiling=true" in fake_adb["log"].read_text()
    assert "CONV_2D" in capsys.readouterr().out
    assert len(json.loads(out.read_text())["profile"]["rows"]) == 31


def test_adb_errors_are_clear(fake_adb, capsys):
    with pytest.raises(DeviceUnreachableError, match="not found"):
        remote_benchmark("adb:missing", [fake_adb["tflite"]], runner=str(fake_adb["runner"]))
    with pytest.raises(DeviceAuthError, match="USB debugging"):
        remote_benchmark("adb:locked", [fake_adb["tflite"]], runner=str(fake_adb["runner"]))
    onnx = fake_adb["tflite"].with_name("model.onnx")
    onnx.write_bytes(b"\x08\x07\x12\x07pytorch" + bytes(8))
    code = main(["bench", str(onnx), "--device", "adb:R58M123ABC", "--runner", str(fake_adb["runner"])])
    assert code == EXIT_BAD_INPUT
    assert "not onnx" in capsys.readouterr().err


def test_adb_verify_up_to_the_device(fake_adb, export_tiny, tmp_path):
    """`verify --device adb:` through the real adb transport; the stand-in device runs the shipped runtime."""
    from sdk.device.bundles import write_bundle
    from sdk.device.verify import verify_on_device

    bundle = write_bundle([export_tiny("mobilevit_xxs", "tflite", "fp32").path], tmp_path / "b.zip", zip_=True)
    doc = verify_on_device(bundle, device="adb:R58M123ABC", remote_python=sys.executable)
    calls = fake_adb["log"].read_text().splitlines()
    assert any(" push " in c and c.endswith("/bundle.zip") for c in calls)
    assert any(" pull " in c and "/outputs.npz" in c for c in calls)
    assert any("-m device_runtime.bundle" in c for c in calls) and any("rm -rf /data/local/tmp/pocketformer." in c
                                                                       for c in calls)
    assert doc["device"] == "adb:R58M123ABC" and doc["passed"]
    assert doc["artifacts"][0]["vs_host"]["max_abs_err"] == 0.0


# -- SSH, end to end ------------------------------------------------------------------------------------
def _ssh_args(sshd, key=None, known_hosts=None, port=None):
    return ["--device", f"ssh://{sshd['user']}@127.0.0.1:{port or sshd['port']}", "--ssh-key", key or sshd["key"],
            "--ssh-option", f"UserKnownHostsFile={known_hosts or sshd['known_hosts']}",
            "--ssh-option", "StrictHostKeyChecking=yes"]


@pytest.fixture(scope="module")
def pte(export_tiny):
    return export_tiny("mobilevit_xxs", "pte", "fp32").path


def test_ssh_bench_end_to_end(sshd, pte, tmp_path, capsys):
    out = tmp_path / "remote.json"
    assert main(["bench", str(pte), *_ssh_args(sshd), "--remote-python", sys.executable, "--runs", "6",
                 "--warmup", "1", "--threads", "1", "--json", str(out), "--quiet"]) == EXIT_OK
    printed = capsys.readouterr().out
    assert f"ssh://{sshd['user']}@127.0.0.1:{sshd['port']}" in printed
    doc = json.loads(out.read_text())
    result = doc["results"][0]
    assert doc["device"] == f"ssh://{sshd['user']}@127.0.0.1:{sshd['port']}"
    assert result["path"] == str(pte) and result["backend"] == "executorch"
    assert result["runs"] == 6 and result["latency"]["p50"] > 0 and result["first_run_ms"] > 0
    assert result["peak_rss_mb"] > 0 and result["load_time_ms"] > 0
    assert result["model"] == "mobilevit_xxs-tiny" and result["verified"] is True  # from the host's report.json
    # The device ran the copy of device_runtime that was shipped to it, in a folder removed afterwards.
    assert "device_runtime.zip" in doc["host"]["device_runtime"]
    assert result["remote_path"].startswith("/tmp/pocketformer.")
    assert not Path(result["remote_path"]).parent.exists()


def test_ssh_errors_are_clear(sshd, pte, tmp_path, capsys):
    def run(*args):
        code = main(["bench", str(pte), "--runs", "1", "--warmup", "0", "--quiet", *args])
        return code, capsys.readouterr().err

    code, err = run(*_ssh_args(sshd, port=_free_port()), "--remote-python", sys.executable)
    assert code == EXIT_BAD_INPUT and "cannot reach" in err and "Connection refused" in err
    code, err = run(*_ssh_args(sshd, key=sshd["stranger"]), "--remote-python", sys.executable)
    assert code == EXIT_BAD_INPUT and "refused key authentication" in err
    code, err = run(*_ssh_args(sshd, known_hosts=sshd["empty_known_hosts"]), "--remote-python", sys.executable)
    assert code == EXIT_BAD_INPUT and "host key" in err
    code, err = run(*_ssh_args(sshd), "--remote-python", "/nonexistent/python3")
    assert code == EXIT_UNSUPPORTED and "has no Python" in err
    # A device whose Python lacks the format's runtime: hide executorch from the interpreter.
    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text("import sys\nsys.modules['executorch'] = None\n")
    wrapper = tmp_path / "python-without-executorch"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH="$PYTHONPATH:{block}" exec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    code, err = run(*_ssh_args(sshd), "--remote-python", str(wrapper))
    assert code == EXIT_UNSUPPORTED and "executorch" in err and "not installed" in err
    bare = shutil.which("python3", path="/usr/bin:/bin")
    if bare and subprocess.run([bare, "-c", "import numpy"], capture_output=True).returncode != 0:
        code, err = run(*_ssh_args(sshd), "--remote-python", bare)
        assert code == EXIT_UNSUPPORTED and "numpy" in err


def test_remote_runtime_missing_error_type(sshd, pte):
    with pytest.raises(DeviceRuntimeMissingError):
        remote_benchmark(f"ssh://{sshd['user']}@127.0.0.1:{sshd['port']}", [pte], runs=1, warmup=0,
                         remote_python="/nonexistent/python3", ssh_key=sshd["key"],
                         ssh_options=[f"UserKnownHostsFile={sshd['known_hosts']}", "StrictHostKeyChecking=yes"])


# -- the device side, without a transport ----------------------------------------------------------------
def test_device_side_is_torch_free():
    code = ("import sys, device_runtime.remote.bench_main, device_runtime.remote.transport, device_runtime.measure, "
            "device_runtime.cpu; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_bench_main_runs_from_the_shipped_zip(export_tiny, tmp_path):
    from device_runtime.remote.bench_main import BEGIN, END
    from device_runtime.remote.transport import zip_package

    onnx = export_tiny("mobilevit_xxs", "onnx", "fp32").path
    package = tmp_path / "device_runtime.zip"
    zip_package(package)
    env = {**os.environ, "PYTHONPATH": str(package)}
    result = subprocess.run([sys.executable, "-m", "device_runtime.remote.bench_main", str(onnx), "--runs", "3",
                             "--warmup", "1", "--framed"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    doc = json.loads(result.stdout.split(BEGIN, 1)[1].split(END, 1)[0])
    assert doc["host"]["device_runtime"].startswith(str(package))
    assert doc["host"]["cpu_info"]["flags"]  # the device side reads its own CPU record (device_runtime.cpu)
    assert doc["results"][0]["format"] == "onnx" and doc["results"][0]["latency"]["p50"] > 0
    # A failure on the device comes back as a JSON error with an exit code the host maps.
    bad = subprocess.run([sys.executable, "-m", "device_runtime.remote.bench_main", str(tmp_path / "nope.onnx"),
                          "--framed"], capture_output=True, text=True, cwd=tmp_path, env=env)
    error = json.loads(bad.stdout.split(BEGIN, 1)[1].split(END, 1)[0])["error"]
    assert bad.returncode == 2 and error["kind"] == "bad_input" and "no such artifact" in error["message"]


# -- transport hardening --------------------------------------------------------------------------------
def test_device_strings_cannot_smuggle_ssh_options():
    from device_runtime.errors import UsageError
    from device_runtime.remote.transport import SSHTransport

    for bad in ("ssh://-oProxyCommand=id@x", "ssh://-oProxyCommand=id", "ssh://u@-x", "adb:-s"):
        with pytest.raises(UsageError, match="refused|not an adb serial"):
            parse_device(bad)
    argv = SSHTransport(SSHTarget("pi.local", "pi", 22))._ssh("true")
    assert argv[argv.index("--") + 1] == "pi@pi.local"  # the destination comes after `--`, never as an option


def test_a_timed_out_remote_run_is_stopped_on_the_device(sshd):
    from device_runtime.remote.transport import make_transport

    transport = make_transport(f"ssh://{sshd['user']}@127.0.0.1:{sshd['port']}", sshd["key"],
                               [f"UserKnownHostsFile={sshd['known_hosts']}", "StrictHostKeyChecking=yes"])
    marker = f"{os.getpid()}{time.time_ns() % 100000}"
    start = time.monotonic()
    with pytest.raises(DeviceUnreachableError, match="stopped on the device"):
        transport.run(f"sleep 9{marker}", timeout=3)
    assert time.monotonic() - start < 12
    deadline = time.time() + 10  # the device (here: this machine behind sshd) no longer runs it
    while time.time() < deadline and subprocess.run(["pgrep", "-f", f"sleep 9{marker}"],
                                                    capture_output=True).returncode == 0:
        time.sleep(0.5)
    assert subprocess.run(["pgrep", "-f", f"sleep 9{marker}"], capture_output=True).returncode != 0
