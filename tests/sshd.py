"""Debian's OpenSSH server for the tests, on 127.0.0.1 with a port, a host key and a
configuration of its own, letting in one throwaway key (as this user, root in CI)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import need


@dataclass
class Sshd:
    port: int
    key: str  # the private key it lets in (OpenSSH format, ed25519)
    host_key: str  # its host key's public line: "ssh-ed25519 AAAA... comment"
    log: Path

    @property
    def known_hosts(self) -> str:
        """The known_hosts line pinning its key, as `ssh-keyscan -p PORT 127.0.0.1` makes."""
        key_type, key = self.host_key.split()[:2]
        return f"[127.0.0.1]:{self.port} {key_type} {key}\n"


def keygen(path: Path, comment: str = "goci") -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
    )


@contextmanager
def sshd(root: Path) -> Iterator[Sshd]:
    binary = Path("/usr/sbin/sshd")
    if not binary.exists():
        need("/usr/sbin/sshd (Debian's openssh-server) for the ssh tests")
    if shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        need("ssh and ssh-keygen (Debian's openssh-client) for the ssh tests")
    if os.geteuid() != 0:
        need("root, to start sshd (it must own its privilege separation)")
    here = root / "sshd"
    here.mkdir(mode=0o700, parents=True)
    keygen(here / "host", "host")
    keygen(here / "user")
    shutil.copy(here / "user.pub", here / "authorized_keys")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (here / "config").write_text(
        textwrap.dedent(
            f"""\
            ListenAddress 127.0.0.1:{port}
            HostKey {here / "host"}
            AuthorizedKeysFile {here / "authorized_keys"}
            PidFile {here / "pid"}
            PasswordAuthentication no
            KbdInteractiveAuthentication no
            PermitRootLogin prohibit-password
            StrictModes no
            UsePAM no
            """
        )
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # its privilege separation directory
    with (here / "log").open("wb") as log:  # the child keeps its own copy
        process = subprocess.Popen(
            [str(binary), "-D", "-e", "-f", str(here / "config")], stderr=log
        )
    try:
        for _ in range(100):
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield Sshd(
            port=port,
            key=(here / "user").read_text(),
            host_key=(here / "host.pub").read_text().strip(),
            log=here / "log",
        )
    finally:
        process.terminate()
        process.wait(timeout=10)
