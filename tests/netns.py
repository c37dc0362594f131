"""Linux network namespaces for the remote runners' tests (issue #13): each runner in a
namespace of its own, joined to the host by one veth pair, so that it reaches the server
over HTTP on that link and nothing else; a test takes the link down (a partition) and
brings it back.

- The namespace is `gocin<id>@<owner>`: the owner (runners.owner: boot id, pid, start
  time) is the test process, so a later run removes what a crashed one left.
- The host's end of the link is `gocin<id>` with 10.250.N.1/30; the namespace's end is
  `veth0` with 10.250.N.2/30, and the namespace's loopback is up. The pair is made with
  its second end already inside the namespace (one command), so a crash leaves no
  half-made pair in the host: a namespace named for a dead owner is all there is to find.
- Inside, `goci-server` names the host's end of the link (/etc/netns/NAME/hosts, which
  `ip netns exec` mounts over /etc/hosts): every runner is given the same server URL,
  as real ones are, whatever its link's addresses.

Root and iproute2 only. `ip netns exec` execs its command in place (no fork), so the
pid of a process started with `Namespace.popen` is the command's own.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from runners.owner import owner_alive, owner_label
from tests.conftest import need

IP = shutil.which("ip") or "/usr/sbin/ip"
PREFIX = "gocin"
SERVER_NAME = "goci-server"
NETNS_ETC = Path("/etc/netns")
SUBNET = "10.250"  # 10.250.N.0/30 for the N-th link
LOCK = Path("/run/gocin.lock")  # test runs on one machine allocate subnets one at a time


class NetnsError(Exception):
    """An `ip` command failed."""


def ip(*args: str) -> str:
    done = subprocess.run([IP, *args], capture_output=True, text=True, check=False, timeout=30)
    if done.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


def unavailable() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if not Path(IP).is_file():
        return f"network namespaces need iproute2 ({IP} is missing)"
    return None


@dataclass
class Namespace:
    name: str
    link: str  # the host's end of the veth pair
    host_ip: str
    ns_ip: str

    def command(self, argv: Sequence[str]) -> list[str]:
        return [IP, "netns", "exec", self.name, *argv]

    def popen(self, argv: Sequence[str], **options: Any) -> subprocess.Popen[bytes]:
        """Start argv inside the namespace; the Popen's pid is argv's process."""
        return subprocess.Popen(self.command(argv), **options)

    def run(self, argv: Sequence[str], **options: Any) -> subprocess.CompletedProcess[str]:
        options = {"capture_output": True, "text": True, "timeout": 60, "check": False, **options}
        return subprocess.run(self.command(argv), **options)  # noqa: PLW1510  (check is in options)

    def down(self) -> None:
        """Cut the link on the host's side: the namespace's packets are dropped, as by a
        switch that died (no error on the runner's side, only silence)."""
        ip("link", "set", self.link, "down")

    def up(self) -> None:
        ip("link", "set", self.link, "up")


def _used_subnets() -> set[int]:
    pattern = re.compile(rf"inet {re.escape(SUBNET)}\.(\d+)\.")
    return {int(n) for n in pattern.findall(ip("-4", "-o", "addr", "show"))}


def _namespaces() -> list[str]:
    return [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]


def _owner(name: str) -> str:
    return name.partition("@")[2]


def _remove(name: str, link: str | None = None) -> None:
    """Delete a namespace: what still runs in it first (a test's runner, or one a crashed
    run left), then its link, its name and its /etc/netns entry. The link goes at once;
    the namespace itself may outlive its name for a minute (seen on Linux 6.18, while
    the runners' connections sat in TIME_WAIT), with nothing in it but its loopback."""
    with contextlib.suppress(NetnsError):
        for pid in ip("netns", "pids", name).split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
    with contextlib.suppress(NetnsError):  # gone with a namespace that died before
        ip("link", "del", link or name.partition("@")[0])
    with contextlib.suppress(NetnsError):
        ip("netns", "del", name)
    shutil.rmtree(NETNS_ETC / name, ignore_errors=True)
    with contextlib.suppress(OSError):
        NETNS_ETC.rmdir()  # only when empty: made by us, or left for others


def remove_stale() -> list[str]:
    """Remove the namespaces of test runs that are gone (a crash, a kill -9); their names."""
    stale = [
        name
        for name in _namespaces()
        if name.startswith(PREFIX) and "@" in name and not owner_alive(_owner(name))
    ]
    for name in stale:
        _remove(name)
    if NETNS_ETC.is_dir():
        present = set(_namespaces())
        for entry in NETNS_ETC.glob(f"{PREFIX}*@*"):
            if entry.name not in present and not owner_alive(_owner(entry.name)):
                shutil.rmtree(entry, ignore_errors=True)
    return stale


@contextlib.contextmanager
def _allocating() -> Iterator[None]:
    with LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def create() -> Namespace:
    """A new namespace joined to the host by its own veth pair (see the module's doc)."""
    sid = secrets.token_hex(3)
    name, link = f"{PREFIX}{sid}@{owner_label()}", f"{PREFIX}{sid}"
    with _allocating():
        free = sorted(set(range(256)) - _used_subnets())
        if not free:
            raise NetnsError(f"every {SUBNET}.N.0/30 is in use")
        n = free[0]
        host_ip, ns_ip = f"{SUBNET}.{n}.1", f"{SUBNET}.{n}.2"
        ip("netns", "add", name)
        try:
            ip("link", "add", link, "type", "veth", "peer", "name", "veth0", "netns", name)
            ip("addr", "add", f"{host_ip}/30", "dev", link)
            ip("link", "set", link, "up")
        except NetnsError:
            _remove(name, link)
            raise
    try:
        ip("-n", name, "addr", "add", f"{ns_ip}/30", "dev", "veth0")
        ip("-n", name, "link", "set", "veth0", "up")
        ip("-n", name, "link", "set", "lo", "up")
        (NETNS_ETC / name).mkdir(parents=True)
        (NETNS_ETC / name / "hosts").write_text(
            f"127.0.0.1 localhost\n::1 localhost\n{host_ip} {SERVER_NAME}\n"
        )
    except (NetnsError, OSError):
        _remove(name, link)
        raise
    return Namespace(name=name, link=link, host_ip=host_ip, ns_ip=ns_ip)


@dataclass
class Namespaces:
    """The `netns` fixture: new() makes a namespace, removed when the test ends."""

    made: list[Namespace] = field(default_factory=list)

    def new(self) -> Namespace:
        try:
            namespace = create()
        except NetnsError as exc:  # root in a container without CAP_SYS_ADMIN, say
            need(f"cannot make a network namespace: {exc}")
            raise  # need() skips or fails: not reached
        self.made.append(namespace)
        return namespace

    def remove_all(self) -> None:
        for namespace in self.made:
            _remove(namespace.name, namespace.link)
        self.made.clear()


_stale_checked: list[bool] = []


@pytest.fixture(name="netns")
def netns_fixture() -> Iterator[Namespaces]:
    """Namespaces for this test (netns.new()), removed when it ends."""
    problem = unavailable()
    if problem is not None:
        need(problem)
    if not _stale_checked:
        remove_stale()
        _stale_checked.append(True)
    namespaces = Namespaces()
    try:
        yield namespaces
    finally:
        namespaces.remove_all()
