"""What the `pocketformer` subcommands share: the CLI error type, artifact checks, common flags, tables.

Subcommands that live in their own modules (see `sdk.cli.app.COMMAND_MODULES`) import these from here, so no
command module imports `sdk.cli.app` back."""
from __future__ import annotations

import argparse
from pathlib import Path

from device_runtime.errors import EXIT_BAD_INPUT, ArtifactNotFoundError, PocketformerError


class CliError(PocketformerError):
    """A command-line usage error; exits with `code`."""

    def __init__(self, message: str, code: int = EXIT_BAD_INPUT) -> None:
        super().__init__(message)
        self.exit_code = code


def existing_artifact(path: str, trust: bool = False) -> Path:
    """The artifact's path, once it exists and (unless `trust`) matches the hash its manifest recorded."""
    from device_runtime.manifest import load_entry

    if not Path(path).exists():
        raise ArtifactNotFoundError(f"no such artifact: {path}")
    load_entry(path, trust=trust)
    return Path(path)


def print_table(rows: list[tuple]) -> None:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))


TRUST_HELP = ("use the artifact even if its bytes no longer match the sha256 recorded in the report.json beside "
              "it (default: refuse, since its figures describe another file)")


def add_runtime_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifact", help="an exported artifact (.pte, .tflite, .onnx, ...); the format is read from its bytes")
    p.add_argument("--backend", help="runtime backend for the format (default: the first installed; see `pocketformer formats`)")
    p.add_argument("--threads", type=int, help="CPU threads for the runtime (default: the runtime's own)")
    p.add_argument("--trust", action="store_true", help=TRUST_HELP)
    # Not mutually exclusive: a vision-language pipeline takes --image and --text together (`run` refuses both
    # for a single artifact).
    p.add_argument("--image", help="an image file, preprocessed as the report beside the artifact says")
    p.add_argument("--text", help="a sentence, tokenised as the report beside the artifact says (with --image: the "
                                  "question for a vision-language pipeline)")
    p.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy",
                   help="a raw input tensor (repeat for each input)")


def add_feed_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust", action="store_true", help=TRUST_HELP)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--image", help="an image file, preprocessed as the report beside the artifact says "
                                     "(default: the model's first real sample)")
    src.add_argument("--text", help="a sentence, tokenised as the report beside the artifact says")
    src.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy",
                     help="a raw input tensor (repeat for each input)")


def add_device_args(p: argparse.ArgumentParser) -> None:
    dev = p.add_argument_group("on a device")
    dev.add_argument("--device", metavar="ssh://user@host[:port] | adb:SERIAL",
                     help="run on your own device: a Linux box over SSH (key-based) or an Android phone over adb")
    dev.add_argument("--runner", metavar="PATH",
                     help="a native benchmark binary to push and run instead of the device's Python: LiteRT's "
                          "benchmark_model for .tflite, ExecuTorch's executor_runner for .pte")
    dev.add_argument("--remote-python", default="python3",
                     help="the device's Python interpreter (default python3); it needs numpy and the runtime")
    dev.add_argument("--ssh-key", help="private key for SSH (default: ssh's own: agent, ~/.ssh/id_*)")
    dev.add_argument("--ssh-option", action="append", default=[], metavar="KEY=VALUE",
                     help="an ssh -o option, e.g. StrictHostKeyChecking=accept-new (repeatable)")
