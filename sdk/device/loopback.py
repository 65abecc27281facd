"""A throwaway SSH server on 127.0.0.1, so an emulated arm64 board (a qemu-run Python in .cache/) is reached the
way a user's own board is: scp, the shipped `device_runtime.zip`, framed JSON, cleanup. Only the CPU is emulated.

Used by the tests' `sshd` fixture and by `benchmarks/bench_boards.py`; nothing in the product needs it. Keys,
config and log live in the given folder; the server runs as the current user and is stopped on exit.

    with loopback_sshd(folder) as ssh:
        verify_on_device(bundle, device=ssh.address, remote_python=board_python, ssh_key=ssh.key,
                         ssh_options=ssh.options)
"""
from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from device_runtime.errors import UsageError


@dataclass(frozen=True)
class LoopbackSsh:
    port: int
    user: str
    key: str  # the client's private key
    stranger: str  # a key the server does not accept (tests of refused logins)
    known_hosts: str  # pins the server's host key
    empty_known_hosts: str
    dir: Path

    @property
    def address(self) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}"

    @property
    def options(self) -> tuple[str, ...]:
        return (f"UserKnownHostsFile={self.known_hosts}", "StrictHostKeyChecking=yes")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sshd_missing() -> str | None:
    """Why no loopback server can start here (None when it can)."""
    sshd_bin = shutil.which("sshd") or "/usr/sbin/sshd"
    if not os.path.exists(sshd_bin) or not shutil.which("ssh-keygen") or not shutil.which("ssh"):
        return "OpenSSH server not installed (Debian: apt-get install openssh-server; .ci/run installs it)"
    return None


@contextlib.contextmanager
def loopback_sshd(folder: str | Path, start_timeout: float = 15.0) -> Iterator[LoopbackSsh]:
    missing = sshd_missing()
    if missing:
        raise UsageError(missing)
    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    for key in ("host_key", "client_key", "stranger_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)], check=True,
                       stdin=subprocess.DEVNULL)
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    port = free_port()
    config = d / "sshd_config"
    # StrictModes off: the keys live in a temporary folder whose permissions sshd would otherwise reject; modern
    # scp speaks SFTP, hence the subsystem line.
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
    sshd_bin = shutil.which("sshd") or "/usr/sbin/sshd"
    with open(d / "sshd.log", "w") as log:
        proc = subprocess.Popen([sshd_bin, "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + start_timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"sshd exited: {(d / 'sshd.log').read_text()}")
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.time() > deadline:
                        raise RuntimeError("sshd did not start listening") from None
                    time.sleep(0.2)
            yield LoopbackSsh(port=port, user=getpass.getuser(), key=str(d / "client_key"),
                              stranger=str(d / "stranger_key"), known_hosts=str(d / "known_hosts"),
                              empty_known_hosts=str(d / "empty_known_hosts"), dir=d)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
