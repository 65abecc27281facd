"""Shared test fixtures. Tests run on the tiny variants of the real architectures; the matrices come from
the registries (`list_models()`, `list_converters()`), never from lists typed here."""
from __future__ import annotations

import functools
import getpass
import os
import shutil
import socket
import subprocess
import textwrap
import time

import pytest


@pytest.fixture(scope="session")
def export_tiny(tmp_path_factory):
    """`export_tiny(model, fmt, precision, **options)` -> ExportResult, exported once per test session."""
    from sdk.pipeline import export

    root = tmp_path_factory.mktemp("exports")

    @functools.lru_cache(maxsize=None)
    def run(model: str, fmt: str, precision: str | None = None, **options):
        return export(model, fmt, precision, out_dir=root / fmt, tiny=True, **options)[0]

    return run


# -- a real OpenSSH server on 127.0.0.1 (tests/test_remote.py, tests/test_arm64_board.py) --------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    sshd_bin = shutil.which("sshd") or "/usr/sbin/sshd"
    if not os.path.exists(sshd_bin) or not shutil.which("ssh-keygen") or not shutil.which("ssh"):
        pytest.skip("OpenSSH server not installed (Debian: apt-get install openssh-server; .ci/run installs it)")
    d = tmp_path_factory.mktemp("sshd")
    for key in ("host_key", "client_key", "stranger_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)], check=True)
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    port = free_port()
    config = d / "sshd_config"
    config.write_text(textwrap.dedent(f"""\
        Port {port}
        ListenAddress 127.0.0.1
        HostKey {d / 'host_key'}
        AuthorizedKeysFile {d / 'authorized_keys'}
        PubkeyAuthentication yes
        PasswordAuthentication no
        KbdInteractiveAuthentication no
        PermitRootLogin prohibit-password
        StrictModes no
        UsePAM no
        PidFile {d / 'sshd.pid'}
        Subsystem sftp internal-sftp
        """))
    host_key = (d / "host_key.pub").read_text().split()
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
    (d / "empty_known_hosts").write_text("")
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
    log = open(d / "sshd.log", "w")
    proc = subprocess.Popen([sshd_bin, "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 15
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"sshd exited: {(d / 'sshd.log').read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    else:
        proc.terminate()
        pytest.fail("sshd did not start listening")
    info = {"port": port, "user": getpass.getuser(), "key": str(d / "client_key"),
            "stranger": str(d / "stranger_key"), "known_hosts": str(d / "known_hosts"),
            "empty_known_hosts": str(d / "empty_known_hosts"), "dir": d}
    try:
        yield info
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
