"""`pocketformer bundle` and `pocketformer verify`: prove an export on the device (see sdk.device.bundles, sdk.device.verify)."""
from __future__ import annotations

from pathlib import Path

from device_runtime.errors import EXIT_OK, EXIT_PARITY


def cmd_bundle(args) -> int:
    from sdk.device.bundles import write_bundle

    out = args.output
    if not out:  # default: beside the first export folder, named after it (out/m/fp32 -> out/m/fp32.bundle)
        first = Path(args.paths[0])
        folder = first.parent if first.is_file() else first
        out = folder.parent / f"{folder.name}.bundle{'.zip' if args.zip else ''}"
    path = write_bundle(args.paths, out, zip_=args.zip, trust=args.trust,
                        note=(lambda m: None) if args.quiet else print)
    print(f"bundle: {path}")
    return EXIT_OK


def cmd_verify(args) -> int:
    from sdk.device.verify import format_result, verify_on_device

    document = verify_on_device(args.bundle, device=args.device, artifacts=args.artifact or None,
                                backend=args.backend, threads=args.threads, remote_python=args.remote_python,
                                ssh_key=args.ssh_key, ssh_options=args.ssh_option, report_dir=args.report_dir,
                                note=(lambda m: None) if args.quiet else print, bpte_runner=args.bpte_runner)
    print(format_result(document))
    return EXIT_OK if document["passed"] else EXIT_PARITY


def add_verify_device_args(p) -> None:
    p.add_argument("--remote-python", default="python3",
                   help="the device's Python interpreter (default python3); it needs numpy and the runtime")
    p.add_argument("--ssh-key", help="private key for SSH (default: ssh's own: agent, ~/.ssh/id_*)")
    p.add_argument("--ssh-option", action="append", default=[], metavar="KEY=VALUE",
                   help="an ssh -o option, e.g. StrictHostKeyChecking=accept-new (repeatable)")


def add_parser(sub) -> None:
    b = sub.add_parser("bundle", help="write a self-contained verification bundle (artifacts, real inputs, "
                                      "expected outputs, checksums) from export folders",
                       description="Bundle one model's artifacts with the real verification inputs, the host's "
                                   "outputs on them, PyTorch's, the raw samples, labels, vocabulary and "
                                   "SHA256SUMS (a .bpte too for .pte), for `pocketformer verify` on a device.")
    b.add_argument("paths", nargs="+", metavar="OUT_DIR/...", help="export folders (out/MODEL/PRECISION) or artifacts")
    b.add_argument("-o", "--output", help="the bundle's path (default: beside the first folder, "
                                          "<folder>.bundle[.zip])")
    b.add_argument("--zip", action="store_true", help="write one .zip instead of a folder")
    b.add_argument("--trust", action="store_true", help="bundle artifacts whose bytes no longer match report.json")
    b.add_argument("--quiet", action="store_true", help="no progress lines")
    b.set_defaults(func=cmd_bundle)

    v = sub.add_parser("verify", help="run a bundle on a device and compare with the host's outputs "
                                      "(exit 1 when the model's tolerance is missed)",
                       description="Check a bundle's checksums, run its real inputs on the device and judge the "
                                   "outputs against the host's: max/mean abs error, SQNR, cosine, top-1 agreement. "
                                   "The figures go to --report-dir as JSON, for `pocketformer report`.")
    v.add_argument("bundle", help="a bundle folder or .zip (pocketformer bundle)")
    v.add_argument("--device", default="local", metavar="local | ssh://[user@]host[:port] | adb:SERIAL",
                   help="where to run it (default: local, in this process)")
    v.add_argument("--artifact", action="append", default=[], help="only this bundled artifact (repeatable)")
    v.add_argument("--backend", help="runtime backend on the device (default: the first installed)")
    v.add_argument("--threads", type=int, help="CPU threads for the runtime")
    v.add_argument("--report-dir", metavar="DIR", help="write the figures as JSON into DIR (the report folder)")
    v.add_argument("--bpte-runner", metavar="PATH_ON_DEVICE",
                   help="also run ExecuTorch's executor_runner (built with bundle IO) at this path on the device on "
                        "each .pte's .bpte, and judge its Test_result: PASS/FAIL lines")
    v.add_argument("--quiet", action="store_true", help="no progress lines")
    add_verify_device_args(v)
    v.set_defaults(func=cmd_verify)
