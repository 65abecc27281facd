"""Full-size int8 on the emulated arm64 boards, device against host: `.pte`, `.tflite` and `.onnx` of each model,
bundled once and verified on each CPU class (Debian 13 boards, scripts/arm64_board.sh --debian trixie --cpu CLASS)
over a loopback SSH server, the path a user's own board takes (sdk/device/loopback.py).

For each artifact and board it prints the backend that ran it, the device's outputs against this host's (max abs
error, SQNR, top-1 agreement), against fp32 PyTorch, the verdict with the model's int8 tolerance, the CPU features
the board reported (the HWCAP bits XNNPACK picks its kernels from: dot product, fp16 arithmetic, i8mm) and the
per-sample latency on the board (emulation: a sanity figure, labelled so, never a device timing) beside the host's.

    python benchmarks/bench_boards.py --out /tmp/boards                      # exports, then verifies
    python benchmarks/bench_boards.py --out /tmp/boards --models mobilevit_xxs --cpus cortex-a76
    python benchmarks/bench_boards.py --out /tmp/boards --tiny               # a smoke run, not the figures

Exports are reused when `--out` already holds them (the manifest checks their bytes).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODELS = ("mobilevit_xxs", "tinybert_4l_312d")
FORMATS = ("pte", "tflite", "onnx")
CPUS = ("cortex-a72", "cortex-a76")
# What XNNPACK's int8 and fp16 kernel choice depends on, as /proc/cpuinfo names the HWCAP bits on arm64.
ARM_FEATURES = ("asimddp", "asimdhp", "fphp", "i8mm", "sve")


def board_python(cpu: str) -> Path:
    return REPO / ".cache" / f"arm64-board-trixie-{cpu}" / "bin" / "python"


def export_all(models, precision: str, tiny: bool, out: Path) -> dict[str, list[Path]]:
    from sdk.console.progress import Progress
    from sdk.export.api import export

    paths = {}
    for model in models:
        results = export(model, list(FORMATS), precision, out_dir=out, tiny=tiny, progress=Progress())
        for r in results:
            print(r.summary(), flush=True)
        paths[model] = [r.path for r in results if r.passed]
    return paths


def features(machine: dict) -> str:
    info = machine.get("cpu_info") or {}
    flags, model = set(info.get("flags") or []), info.get("model") or machine.get("cpu")
    seen = [f for f in ARM_FEATURES if f in flags]
    return f"{model or '?'}: {' '.join(seen) or 'none of ' + '/'.join(ARM_FEATURES)}"


def row(model: str, device: str, artifact: dict, machine_note: str) -> str:
    host, ref, lat = artifact.get("vs_host") or {}, artifact.get("vs_reference") or {}, artifact.get("latency") or {}

    def f(value, spec):
        return format(value, spec) if isinstance(value, (int, float)) and value == value else "-"

    verdict = "PASS" if artifact["passed"] else "FAIL: " + "; ".join(artifact.get("failures", []))[:80]
    return (f"| {model} | {artifact['file']} | {device} | {artifact.get('backend')} | {f(host.get('max_abs_err'), '.3g')}"
            f" | {f(host.get('sqnr_db'), '.1f')} | {f(host.get('top1_agreement'), '.2f')} | "
            f"{f(ref.get('max_abs_err'), '.3g')} | {f(lat.get('p50'), '.1f')} ({lat.get('kind', '?')}) | "
            f"{verdict} | {machine_note} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="exports and the verify JSON go here")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--cpus", default=",".join(CPUS), help="board CPU classes (scripts/arm64_board.sh --cpu)")
    parser.add_argument("--precision", default="int8")
    parser.add_argument("--tiny", action="store_true", help="tiny variants: a smoke run, not the figures")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    from sdk.device.bundles import write_bundle
    from sdk.device.loopback import loopback_sshd
    from sdk.device.verify import verify_on_device

    cpus = [c for c in args.cpus.split(",") if c]
    missing = [c for c in cpus if not board_python(c).exists()]
    if missing or not shutil.which("qemu-aarch64-static"):
        print(f"missing boards {missing} or qemu-aarch64-static: scripts/arm64_board.sh --debian trixie --cpu CLASS")
        return 2
    models = [m for m in args.models.split(",") if m]
    exported = export_all(models, args.precision, args.tiny, args.out)
    lines = ["| model | artifact | device | backend | max abs vs host | SQNR vs host dB | top-1 agreement | "
             "max abs vs PyTorch | p50 ms per sample | verdict | CPU features seen |", "|---" * 11 + "|"]
    documents = []
    with tempfile.TemporaryDirectory(prefix="pf-boards-") as tmp, loopback_sshd(Path(tmp) / "sshd") as ssh:
        for model in models:
            bundle = write_bundle(exported[model], Path(tmp) / f"{model}.bundle.zip", zip_=True)
            runs = [("local", {})] + [(ssh.address, {"remote_python": str(board_python(c)), "ssh_key": ssh.key,
                                                     "ssh_options": ssh.options}) for c in cpus]
            for (device, options), label in zip(runs, ["host"] + cpus):
                document = verify_on_device(bundle, device=device, threads=args.threads,
                                            report_dir=args.out / "verify" / label, timeout=3600, **options)
                documents.append({"board": label, **document})
                note = "x86-64 host" if label == "host" else features(document.get("machine") or {})
                for artifact in document["artifacts"]:
                    lines.append(row(model, label + (" (emulation)" if document.get("emulated") else ""),
                                     artifact, note))
                print(lines[-1], flush=True)
    (args.out / "boards.json").write_text(json.dumps(documents, indent=1, default=str))
    print("\n".join(lines))
    print(f"\nwritten {args.out / 'boards.json'}; board latencies are emulation (qemu), one run per sample")
    return 0 if all(d["passed"] for d in documents) else 1


if __name__ == "__main__":
    raise SystemExit(main())
