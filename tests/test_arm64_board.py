"""`pocketformer verify` on the emulated arm64 board: the same artifacts, ARM kernels, compared with the host's.

The board (scripts/arm64_board.sh; .ci/run builds it into .cache/arm64-board, never at test time) is Debian's
arm64 Python 3.11 with PyPI's aarch64 numpy, ai-edge-litert and onnxruntime, run by qemu-aarch64-static as a
Cortex-A72. It is reached as a device through the real SSH transport (the sshd of tests/conftest.py on
127.0.0.1), with the board's Python as --remote-python: the path a user's own arm64 board takes, end to end,
with only the CPU emulated. Goals: fp32 within 1e-5 of the host, int8 within its tolerance.

The second device environment, a venv with numpy<2 and tflite-runtime 2.14 only (scripts/tflite_runtime_env.sh),
is reached the same way and runs `verify` and `bench` through the `tflite_runtime` backend.

The Debian 13 boards (`scripts/arm64_board.sh --debian trixie --cpu CLASS`, .cache/arm64-board-trixie-CLASS) are
Python 3.13 with executorch-numpy-runtime too, so `.pte` runs there without torch, on two CPU classes: a Cortex-A72
(no dot product, no fp16 arithmetic) and a Cortex-A76 (both, as phones of the last years have): every runnable
format verifies on each. The fp16 `.pte` runs on the A76 only: XNNPACK has no fp16 kernels without fp16
arithmetic, and device_runtime refuses the program there before loading it.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from device_runtime.bundle import open_bundle
from sdk.cli.app import EXIT_OK, main

BOARD = Path(__file__).resolve().parents[1] / ".cache" / "arm64-board"
PYTHON = BOARD / "bin" / "python"
TFLITE_RUNTIME_ENV = Path(__file__).resolve().parents[1] / ".cache" / "tflite-runtime-env"


@pytest.fixture(scope="module")
def board():
    if shutil.which("qemu-aarch64-static") is None:
        pytest.skip("qemu-aarch64-static is not installed (Debian: apt-get install qemu-user-static; .ci/run does)")
    if not (BOARD / "READY").is_file():
        pytest.skip(f"no emulated arm64 board at {BOARD}: build it with scripts/arm64_board.sh (.ci/run does); "
                    "tests never download it")
    return PYTHON


@pytest.fixture(scope="module")
def board_bundle(export_tiny, tmp_path_factory):
    from sdk.device.bundles import write_bundle

    paths = [export_tiny("mobilevit_xxs", "tflite", "fp32").path, export_tiny("mobilevit_xxs", "tflite", "int8").path,
             export_tiny("mobilevit_xxs", "onnx", "fp32").path]
    return write_bundle(paths, tmp_path_factory.mktemp("board") / "board.bundle.zip", zip_=True)


def _onnxruntime_on_board(board) -> str | None:
    """Why onnxruntime cannot run on the board (None when it imports)."""
    result = subprocess.run([str(board), "-c", "import onnxruntime"], capture_output=True, text=True, timeout=120)
    if result.returncode:
        return (f"onnxruntime's aarch64 wheel does not import under qemu-aarch64-static -cpu cortex-a72 (exit "
                f"{result.returncode}; tried with the ARM /proc/cpuinfo and /sys cpu files in place): "
                f"{(result.stderr or '').strip()[-300:]}")
    return None


def test_verify_on_the_arm64_board_over_ssh(board, board_bundle, sshd, tmp_path, capsys):
    onnx_problem = _onnxruntime_on_board(board)
    artifacts = ["fp32-model.tflite", "int8-model.tflite"] + ([] if onnx_problem else ["model.onnx"])
    report = tmp_path / "report"
    args = ["verify", str(board_bundle), *_ssh(sshd), "--remote-python", str(board), "--report-dir", str(report),
            "--quiet", *[a for f in artifacts for a in ("--artifact", f)]]
    code = main(args)
    printed = capsys.readouterr().out
    assert code == EXIT_OK, printed
    (written,) = report.glob("device_verify-*.json")
    doc = json.loads(written.read_text())
    # It ran on the board: an aarch64 Python that says it is emulated; its timings are labelled so.
    assert doc["machine"]["machine"] == "aarch64" and "emulated" in doc["machine"]["cpu"]
    assert doc["emulated"] and "qemu" in doc["emulated"] and "emulated" in printed
    by_file = {r["file"]: r for r in doc["artifacts"]}
    assert sorted(by_file) == sorted(artifacts)
    for file, r in by_file.items():
        assert r["passed"], (file, r["failures"])
        assert r["latency"]["kind"] == "emulation" and r["latency"]["runs"] == doc["samples"] >= 4
        print(f"arm64 board vs host, {file}: max abs {r['vs_host']['max_abs_err']:.3g}, "
              f"SQNR {r['vs_host']['sqnr_db']:.1f} dB, top-1 {r['vs_host']['top1_agreement']:.2f}")
    assert by_file["fp32-model.tflite"]["backend"] == "ai_edge_litert"
    assert by_file["fp32-model.tflite"]["vs_host"]["max_abs_err"] <= 1e-5
    int8 = by_file["int8-model.tflite"]
    assert int8["vs_host"]["max_abs_err"] <= int8["tolerance"]["atol"]
    assert int8["vs_host"]["top1_agreement"] == 1.0 and int8["vs_reference"]["sqnr_db"] >= int8["tolerance"]["min_sqnr_db"]
    from sdk.report import numerics as report_numerics

    header, rows = report_numerics.rows(report, [])
    assert rows and all(r[header.index("device")].endswith("(emulation)") for r in rows)
    if onnx_problem:
        pytest.skip(onnx_problem)
    assert by_file["model.onnx"]["backend"] == "onnxruntime"
    assert by_file["model.onnx"]["vs_host"]["max_abs_err"] <= 1e-5


def _ssh(sshd) -> list[str]:
    return ["--device", f"ssh://{sshd['user']}@127.0.0.1:{sshd['port']}", "--ssh-key", sshd["key"],
            "--ssh-option", f"UserKnownHostsFile={sshd['known_hosts']}", "--ssh-option", "StrictHostKeyChecking=yes"]


def test_verify_and_bench_with_tflite_runtime_over_ssh(board_bundle, sshd, tmp_path, capsys):
    python = TFLITE_RUNTIME_ENV / "bin" / "python"
    if not (TFLITE_RUNTIME_ENV / "READY").is_file():
        pytest.skip(f"no tflite-runtime environment at {TFLITE_RUNTIME_ENV}: build it with "
                    "scripts/tflite_runtime_env.sh (.ci/run does)")
    report = tmp_path / "report"
    code = main(["verify", str(board_bundle), *_ssh(sshd), "--remote-python", str(python), "--report-dir", str(report),
                 "--artifact", "fp32-model.tflite", "--artifact", "int8-model.tflite", "--quiet"])
    assert code == EXIT_OK, capsys.readouterr().out
    (doc,) = [json.loads(p.read_text()) for p in report.glob("device_verify-*.json")]
    assert doc["machine"]["numpy"].startswith("1.") and doc["emulated"] is None
    for r in doc["artifacts"]:
        assert r["backend"] == "tflite_runtime" and r["passed"], r
        print(f"tflite-runtime 2.14 vs ai-edge-litert, {r['file']}: max abs {r['vs_host']['max_abs_err']:.3g}")
    fp32 = next(r for r in doc["artifacts"] if r["file"] == "fp32-model.tflite")
    assert fp32["vs_host"]["max_abs_err"] <= 1e-5
    with open_bundle(board_bundle) as b:
        artifact = b.root / "artifacts" / "fp32-model.tflite"
        out = tmp_path / "bench.json"
        assert main(["bench", str(artifact), *_ssh(sshd), "--remote-python", str(python), "--runs", "3", "--warmup",
                     "1", "--quiet", "--json", str(out)]) == EXIT_OK
    result = json.loads(out.read_text())["results"][0]
    assert result["backend"] == "tflite_runtime" and result["latency"]["p50"] > 0


# -- the Debian 13 (Python 3.13) boards, two CPU classes ------------------------------------------------------
TRIXIE_CLASSES = {"cortex-a72": ("Cortex-A72", "0xd08"), "cortex-a76": ("Cortex-A76", "0xd0b")}
# Linux's names for the AT_HWCAP bits (arch/arm64/kernel/cpuinfo.c order), enough for the classes emulated here.
HWCAP = ("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc dcpop "
         "sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg").split()
HWCAP2 = ("dcpodp sve2 sveaes svepmull svebitperm svesha3 svesm4 flagm2 frint svei8mm svef32mm svef64mm svebf16 "
          "i8mm bf16 dgh rng bti mte ecv afp rpres mte3 sme").split()


def trixie_board(cpu: str) -> Path:
    board = BOARD.parent / f"arm64-board-trixie-{cpu}"
    if shutil.which("qemu-aarch64-static") is None:
        pytest.skip("qemu-aarch64-static is not installed (Debian: apt-get install qemu-user-static; .ci/run does)")
    if not (board / "READY").is_file():
        pytest.skip(f"no Debian 13 arm64 board at {board}: build it with scripts/arm64_board.sh --debian trixie "
                    f"--cpu {cpu} (.ci/run does); tests never download it")
    return board


@pytest.mark.parametrize("cpu", TRIXIE_CLASSES)
def test_the_boards_cpu_class_is_consistent_in_qemu_cpuinfo_and_name(cpu):
    board = trixie_board(cpu)
    name, part = TRIXIE_CLASSES[cpu]
    cpuinfo = (board / "proc" / "cpuinfo").read_text()
    blocks = [b for b in cpuinfo.split("\n\n") if b.strip()]
    assert len(blocks) == 2 and all(f"CPU part\t: {part}" in b for b in blocks)
    assert f"model name\t: {name} (emulated: qemu-aarch64-static -cpu {cpu})" in blocks[0]
    assert f"-cpu {cpu} " in (board / "bin" / "python").read_text()
    features = set(blocks[0].split("Features\t: ")[1].splitlines()[0].split())
    # What qemu's model of this class reports in AT_HWCAP, read by the board's own Python: the same set.
    probe = ("import ctypes; g = ctypes.CDLL(None).getauxval; g.restype = ctypes.c_ulong; "
             "g.argtypes = [ctypes.c_ulong]; print(g(16), g(26))")
    result = subprocess.run([str(board / "bin" / "python"), "-S", "-c", probe], capture_output=True, text=True,
                            timeout=120)
    hwcap, hwcap2 = (int(v) for v in result.stdout.split())
    reported = {n for i, n in enumerate(HWCAP) if hwcap >> i & 1} | {n for i, n in enumerate(HWCAP2) if hwcap2 >> i & 1}
    assert reported == features
    newer = {"asimddp", "fphp", "asimdhp"}  # dot product and fp16 arithmetic: XNNPACK's other kernels
    assert newer <= features if cpu == "cortex-a76" else not newer & features


# The fp16 .pte verifies on the board with fp16 arithmetic only (see test_an_fp16_program_is_refused_without_fp16).
FP16_FILES = {"cortex-a72": [], "cortex-a76": ["fp16-model.pte"]}

REFUSE_FP16 = r"""
import json, sys
import device_runtime
try:
    device_runtime.load(sys.argv[1])
    print(json.dumps(None))
except device_runtime.errors.PocketformerError as exc:
    print(json.dumps([type(exc).__name__, str(exc), exc.exit_code]))
"""


def test_an_fp16_program_is_refused_without_fp16_arithmetic(cached_export):
    """On the Cortex-A72, XNNPACK creates no fp16 operator (`xnn_is_f16_compatible_config` is false without
    ARMv8.2-A FP16), so ExecuTorch would fail the first run with xnn_status_unsupported_hardware (measured): the
    program is refused before the runtime loads it, saying why and what runs there."""
    board = trixie_board("cortex-a72")
    path = cached_export("mobilevit_xxs", "pte", "fp16")[0].path
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run([str(board / "bin" / "python"), "-c", REFUSE_FP16, str(path)], capture_output=True,
                            text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    kind, message, code = json.loads(result.stdout.splitlines()[-1])
    assert kind == "IncompatibleProgramError" and code == 3
    assert "fp16 program" in message and "Cortex-A72" in message and "asimdhp" in message
    assert "fp32 or int8 export" in message
    assert "XNNCompiler" not in result.stderr  # refused before XNNPACK saw it


@pytest.fixture(scope="module")
def every_format_bundle(export_tiny, cached_export, tmp_path_factory):
    """.pte fp32, int8 and fp16 (tests/test_executorch_numpy.py's and tests/test_executorch.py's cached exports),
    .tflite and .onnx (board_bundle's) of the tiny MobileViT: no export of its own."""
    from sdk.device.bundles import write_bundle

    paths = [cached_export("mobilevit_xxs", "pte", precision)[0].path for precision in ("fp32", "int8", "fp16")]
    paths += [export_tiny("mobilevit_xxs", fmt, "fp32").path for fmt in ("tflite", "onnx")]
    return write_bundle(paths, tmp_path_factory.mktemp("trixie") / "every.bundle.zip", zip_=True)


@pytest.mark.parametrize("cpu", TRIXIE_CLASSES)
def test_verify_every_runnable_format_on_the_python313_board(cpu, every_format_bundle, sshd, tmp_path, capsys):
    board = trixie_board(cpu)
    report = tmp_path / "report"
    files = ["fp32-model.pte", "int8-model.pte", "model.onnx", "model.tflite"] + FP16_FILES[cpu]
    code = main(["verify", str(every_format_bundle), *_ssh(sshd), "--remote-python", str(board / "bin" / "python"),
                 "--report-dir", str(report), "--quiet", *[a for f in files for a in ("--artifact", f)]])
    printed = capsys.readouterr().out
    assert code == EXIT_OK, printed
    (doc,) = [json.loads(p.read_text()) for p in report.glob("device_verify-*.json")]
    machine = doc["machine"]
    assert machine["machine"] == "aarch64" and machine["python"].startswith("3.13")
    assert TRIXIE_CLASSES[cpu][0] in machine["cpu"] and doc["emulated"] and cpu in doc["emulated"]
    by_file = {r["file"]: r for r in doc["artifacts"]}
    assert sorted(by_file) == sorted(files)
    backends = {file: r["backend"] for file, r in by_file.items()}
    assert backends == {"fp32-model.pte": "executorch_numpy", "int8-model.pte": "executorch_numpy",
                        "model.onnx": "onnxruntime", "model.tflite": "ai_edge_litert",
                        **{f: "executorch_numpy" for f in FP16_FILES[cpu]}}
    for file, r in by_file.items():
        assert r["passed"], (file, r["failures"])
        assert r["latency"]["kind"] == "emulation"
        scale = r["vs_host"]["reference_scale"]
        print(f"{cpu} board (Python 3.13) vs host, {file}: max abs {r['vs_host']['max_abs_err']:.3g} "
              f"({r['vs_host']['max_abs_err'] / scale:.2g} of the scale), SQNR {r['vs_host']['sqnr_db']:.1f} dB; "
              f"vs fp32 PyTorch {r['vs_reference']['max_abs_err'] / r['vs_reference']['reference_scale']:.2g} of "
              f"the scale, {r['vs_reference']['sqnr_db']:.1f} dB")
        if file not in ("int8-model.pte", "fp16-model.pte"):
            assert r["vs_host"]["max_abs_err"] <= 1e-5  # fp32: ARM kernels, the same numbers to rounding
    if FP16_FILES[cpu]:
        # fp16 arithmetic here (the host widens fp16 to fp32 in each kernel): not the host's numbers, within the
        # fp16 tolerance of them and of fp32 PyTorch.
        fp16 = by_file["fp16-model.pte"]
        assert 0 < fp16["vs_host"]["max_abs_err"] and fp16["vs_host"]["top1_agreement"] == 1.0
        assert fp16["vs_reference"]["sqnr_db"] >= fp16["tolerance"]["min_sqnr_db"]
    int8 = by_file["int8-model.pte"]
    assert int8["vs_host"]["max_abs_err"] <= int8["tolerance"]["atol"] and int8["vs_host"]["top1_agreement"] == 1.0
