"""`pocketformer sweep` on a real Ray: tiny models x 2 formats x 2 precisions, benchmarked on this host, on the
SSH device of the sshd fixture (127.0.0.1) and on the emulated arm64 board when it is built; a cached rerun; a
worker killed in the middle; a device that never answers. One Ray (2 CPUs) is shared by the in-process tests;
the kill test runs the CLI, which starts its own local Ray as a user's would.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from device_runtime import manifest

ROOT = Path(__file__).resolve().parents[1]
BOARD = ROOT / ".cache" / "arm64-board"
MODELS = ["tinybert_4l_312d"]  # the cheapest tiny model to export: the matrix is what is tested
FORMATS = ["tflite", "onnx"]  # tflite first: the slow emulated board starts its benchmarks while onnx exports
PRECISIONS = ["fp32", "int8-dynamic"]
DEVICES = ("local", "sshdev", "silent", "board0")
EXPORT_TASK = "ray::pocketformer-export"


@pytest.fixture(scope="module")
def ray_2cpu():
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'pocketformer[cluster]'")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             resources={f"device:{name}": 1 for name in DEVICES})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def silent_port():
    """A TCP port that accepts connections and never says a word: an SSH device that hangs, not refuses."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held, stop = [], threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def _devices(sshd, silent_port):
    from sdk.sweep.jobs import Device

    ssh = dict(ssh_key=sshd["key"], ssh_options=(f"UserKnownHostsFile={sshd['known_hosts']}",
                                                 "StrictHostKeyChecking=yes"))
    address = f"ssh://{sshd['user']}@127.0.0.1:{sshd['port']}"
    devices = [Device("local"), Device("sshdev", address, remote_python=sys.executable, **ssh),
               Device("silent", f"ssh://{sshd['user']}@127.0.0.1:{silent_port}", remote_python=sys.executable, **ssh)]
    if shutil.which("qemu-aarch64-static") and (BOARD / "READY").is_file():
        # The board's runtimes: LiteRT (its onnxruntime wheel does not import under qemu, see test_arm64_board.py).
        devices.append(Device("board0", address, remote_python=str(BOARD / "bin" / "python"), formats=("tflite",),
                              **ssh))
    return devices


def test_sweep_on_devices_then_a_cached_rerun_then_the_report(ray_2cpu, sshd, silent_port, tmp_path):
    """One test, not four sharing a fixture: under `pytest -n 2` tests of a module may land on both workers, and
    each would run the whole sweep again."""
    from sdk.sweep.run import sweep

    out = tmp_path / "sweep"
    devices = _devices(sshd, silent_port)
    args = dict(formats=FORMATS, precisions=PRECISIONS, devices=devices, tiny=True, out_dir=out, runs=5,
                warmup=1, connect_timeout=5, export_memory_gb=0.5)
    start = time.perf_counter()
    first = sweep(MODELS, **args)
    first_s = time.perf_counter() - start
    start = time.perf_counter()
    again = sweep(MODELS, **args)
    again_s = time.perf_counter() - start
    from sdk.sweep.report import format_sweep

    print(format_sweep(first), f"\nfirst sweep {first_s:.1f} s, rerun {again_s:.1f} s", format_sweep(again), sep="\n")
    swept = {"out": out, "first": first, "again": again, "first_s": first_s, "again_s": again_s,
             "devices": [d.name for d in devices]}
    _every_combination_benchmarked_on_each_device(swept)
    _an_unreachable_device_is_reported_not_waited_on(swept)
    _a_rerun_finds_everything_cached(swept)
    _the_merged_folder_is_a_report(swept)


def _every_combination_benchmarked_on_each_device(swept):
    doc, out = swept["first"], swept["out"]
    exports = doc["exports"]
    assert len(exports) == len(MODELS) * len(FORMATS) * len(PRECISIONS)
    assert all(e["status"] == "ok" and e["figures"]["verified"] is True for e in exports), \
        [(e["model"], e["format"], e["precision"], e["reason"]) for e in exports if e["status"] != "ok"]
    # Tasks export apart; the driver alone merges: each report.json holds both formats, each matching its bytes.
    for e in exports:
        found = manifest.read_manifest(out / e["folder"])
        assert sorted(found.artifacts) == sorted(f"model.{f}" for f in FORMATS)
        assert found.artifacts[e["file"]].matches(out / e["folder"] / e["file"])
    benches = {(b["model"], b["format"], b["precision"], b["device"]): b for b in doc["benchmarks"]}
    for e in exports:
        for device in ("local", "sshdev"):
            b = benches[(e["model"], e["format"], e["precision"], device)]
            assert b["status"] == "ok", b
            assert b["figures"]["p50_ms"] > 0
            bench_doc = json.loads((out / b["figures"]["bench_file"]).read_text())
            result = bench_doc["results"][0]
            assert bench_doc["device"] == device and result["path"] == str((out / e["folder"] / e["file"]).resolve())
            assert result["model"] == e["model"] and result["verified"] is True
            if device == "sshdev":  # it really went through SSH: shipped to a remote folder, removed after
                assert bench_doc["device_address"].startswith("ssh://") and result["remote_path"].startswith("/tmp/")
    if "board0" in swept["devices"]:
        on_board = [b for b in doc["benchmarks"] if b["device"] == "board0"]
        assert {b["status"] for b in on_board if b["format"] == "tflite"} == {"ok"}, on_board
        assert {b["status"] for b in on_board if b["format"] != "tflite"} == {"refused"}
    fig = doc["figures"]
    assert fig["exports"] == {"ok": len(exports)} and fig["exports_per_minute_per_worker"] > 0
    assert doc["workers"] == 2 and 0 < fig["worker_utilisation"] <= 1.05


def _an_unreachable_device_is_reported_not_waited_on(swept):
    doc = swept["first"]
    state = doc["devices"]["silent"]
    assert state["state"] == "down" and "no answer" in state["reason"] and "5 s" in state["reason"]
    silent = [b for b in doc["benchmarks"] if b["device"] == "silent"]
    assert len(silent) == len(doc["exports"])  # every result present, each with the reason
    assert all(b["status"] == "failed" and "unreachable" in b["reason"] for b in silent)


def _a_rerun_finds_everything_cached(swept):
    again = swept["again"]
    assert {e["status"] for e in again["exports"]} == {"cached"}
    assert {b["status"] for b in again["benchmarks"] if b["device"] in ("local", "sshdev", "board0")} <= \
        {"cached", "refused"}
    assert again["figures"]["exports"] == {"cached": len(again["exports"])}
    first = {(b["model"], b["format"], b["precision"], b["device"]): b["figures"].get("p50_ms")
             for b in swept["first"]["benchmarks"]}
    for b in again["benchmarks"]:
        if b["status"] == "cached":  # the figures of the first run, not new ones
            assert b["figures"]["p50_ms"] == first[(b["model"], b["format"], b["precision"], b["device"])]
    assert swept["again_s"] < swept["first_s"] / 2


def _the_merged_folder_is_a_report(swept):
    from sdk.report.html_page import build_report, collect

    out = swept["out"]
    data = collect(out)
    devices = {(Path(r["path"]).name, r["model"], r["precision"], r["device"]) for r in data["latency"]}
    for e in swept["first"]["exports"]:
        for device in ("local", "sshdev"):
            assert (e["file"], e["model"], e["precision"], device) in devices
    paths = build_report(out, profile=False, analysis=False)
    page = paths["html"].read_text()
    assert "<h2>Sweep</h2>" in page and "no export ran to the end here" in page  # the rerun's sweep.json is the latest
    table = (out / "sweep.md").read_text()
    assert "p50 on sshdev" in table and "unreachable" in table


# -- a worker killed in the middle ----------------------------------------------------------------------------
def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return ""


def test_a_worker_killed_mid_sweep_still_completes_the_sweep(tmp_path):
    """The CLI starts its own local Ray (no address); this test kills that Ray's export worker mid-export."""
    pytest.importorskip("ray", reason="Ray is not installed: pip install 'pocketformer[cluster]'")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "sdk.cli", "sweep", "tinybert_4l_312d", "--tiny", "--formats", "onnx",
               "--precisions", "fp32", "--num-cpus", "2", "--out", str(out), "--runs", "3", "--warmup", "1",
               "--export-memory-gb", "0.5"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # no address: the CLI starts a local Ray
    sweep = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed, deadline = None, time.time() + 240
    try:
        while killed is None and time.time() < deadline and sweep.poll() is None:
            workers = [p for p in _descendants(sweep.pid) if _title(p).startswith(EXPORT_TASK)]
            if workers:
                time.sleep(2)  # into the export itself, not its first instant
                os.kill(workers[0], signal.SIGKILL)
                killed = workers[0]
            time.sleep(0.2)
        printed, _ = sweep.communicate(timeout=300)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert killed is not None, "no export worker was seen running"
    assert sweep.returncode == 0, printed[-3000:]
    doc = json.loads((out / "sweep.json").read_text())
    (unit,) = doc["exports"]
    assert unit["status"] == "ok" and len(unit["attempts"]) == 2, unit["attempts"]
    assert unit["attempts"][0]["error"] == "WorkerCrashedError" and unit["attempts"][1]["pid"] != killed
    assert manifest.read_manifest(out / unit["folder"]).artifacts["model.onnx"].matches(out / unit["folder"] /
                                                                                        "model.onnx")
    (bench,) = doc["benchmarks"]
    assert bench["status"] == "ok" and bench["figures"]["p50_ms"] > 0
    assert doc["cluster"]["started_here"] is True and "(2 attempts)" in printed


# -- without Ray -------------------------------------------------------------------------------------------------
def test_without_ray_sweep_says_how_to_install_it(tmp_path):
    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text("import sys\nsys.modules['ray'] = None\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(block), str(ROOT)])}
    done = subprocess.run([sys.executable, "-m", "sdk.cli", "sweep", "tinybert_4l_312d", "--tiny", "--out",
                           str(tmp_path / "out")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 3, done.stderr[-2000:]
    assert "pip install 'pocketformer[cluster]'" in done.stderr and "tune" in done.stderr
    # tune's whole path (candidates, export, per-process benchmark) imports nothing of Ray.
    check = ("import sys, sdk.cli.app, sdk.measure.tune, sdk.measure.bench, device_runtime.isolated; sdk.cli.app.build_parser(); "
             "assert 'ray' not in [m for m in sys.modules if sys.modules[m] is not None]")
    assert subprocess.run([sys.executable, "-c", check], env=env, cwd=ROOT).returncode == 0


# -- planning, keys, cache: no Ray needed ----------------------------------------------------------------------
def test_one_task_per_artifact_and_keys_that_follow_the_inputs():
    from sdk.export.records import tool_versions
    from sdk.sweep.jobs import plan_exports

    tools = tool_versions()
    jobs, refused = plan_exports(["tinybert_4l_312d"], ["onnx", "tflite", "coreml"], ["fp32", "int8-dynamic"],
                                 tiny=True, seq_len=None, weights=None, options={}, tools=tools)
    assert all(len(j.units) == 1 for j in jobs)  # the driver, not a task, writes the merged folders
    artifacts = sorted((j.folder, j.units[0].file) for j in jobs)
    assert len(set(artifacts)) == len(artifacts)
    assert {"tinybert_4l_312d-tiny/fp32", "tinybert_4l_312d-tiny/int8-dynamic"} == {j.folder for j in jobs}
    assert {("tinybert_4l_312d-tiny/int8-dynamic", f"model.{f}") for f in ("onnx", "tflite")} <= set(artifacts)
    assert any(u.format == "coreml" and "dynamic" in u.reason for u in refused)  # refused with the reason
    keys = {u.key for j in jobs for u in j.units}
    assert len(keys) == sum(len(j.units) for j in jobs)
    again, _ = plan_exports(["tinybert_4l_312d"], ["onnx"], ["fp32"], tiny=True, seq_len=None, weights=None,
                            options={}, tools=tools)
    assert again[0].units[0].key in keys  # the same inputs, the same key
    for changed in (dict(options={"opset": 17}), dict(seq_len=16), dict(tools={**tools, "onnx": "0"})):
        kw = dict(tiny=True, seq_len=None, weights=None, options={}, tools=tools) | changed
        other, _ = plan_exports(["tinybert_4l_312d"], ["onnx"], ["fp32"], **kw)
        assert other[0].units[0].key not in keys, changed


def test_device_names_are_their_ray_resources():
    from device_runtime.errors import UsageError
    from sdk.sweep.jobs import Device

    assert Device.parse("local") == Device("local")
    board = Device.parse("board0=ssh://pi@board0.local", remote_python="/opt/py/bin/python3")
    assert board.resource == "device:board0" and board.remote_python == "/opt/py/bin/python3"
    assert Device.parse("ssh://pi@10.0.0.7:2222").name == "10.0.0.7-2222"
    assert Device.parse("adb:R58M123ABC").resource == "device:adb-R58M123ABC"
    for bad in ("board0=usb:1", "bad name=local"):
        with pytest.raises(UsageError):
            Device.parse(bad)
