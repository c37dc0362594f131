"""Fetch a build's exact commit into its workspace with git (docs/checkout.md).

No Django here: the worker passes the checked URL (builds/clone_urls.py), the
credentials and where the output goes; bench/bench_clone.py uses it the same way.

How: `git init`, `git fetch --depth N origin <commit>` (no --depth for N = 0, the whole
history); a server that will not send a commit asked for by its id gets the build's
ref instead (a branch, refs/pull/N/head or refs/merge-requests/N/head), deepened
until the commit is in it; then `git checkout --detach <commit>` and HEAD is checked.

Hardening, all of it per command, nothing left in .git/config:
- no system or global git config (GIT_CONFIG_NOSYSTEM, GIT_CONFIG_GLOBAL, HOME in a
  fresh temporary directory outside the workspace), no prompt, no hooks;
- `protocol.allow=never` with only the URL's own scheme allowed again;
- `http.followRedirects=false`: a redirect could lead to an internal host;
- `http.curloptResolve=host:port:addresses` (or ssh's HostName): git connects to the
  addresses the URL check resolved and allowed, so DNS cannot answer otherwise later;
- a token travels as an Authorization header for that URL only, through
  GIT_CONFIG_COUNT/KEY/VALUE in git's environment: never in argv (ps shows that), in
  .git/config or in the remote URL;
- an SSH key is written 0600 in that temporary directory and used with
  IdentitiesOnly and BatchMode; host keys are trusted on first use (accept-new) in
  the worker's known_hosts file, and a changed key is refused;
- one deadline for the whole checkout, cancel at any time (the process group is
  killed), a fetch slower than 1 KB/s for a minute is abandoned;
- files are written with umask 022, so a step's container reads them whatever its
  user.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import os
import re
import selectors
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from builds.clone_urls import DEFAULT_PORTS, CloneTarget

GIT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TIMEOUT = 1200.0  # seconds for the whole checkout
LOW_SPEED_LIMIT, LOW_SPEED_TIME = 1000, 60  # bytes/s for this many seconds: stalled
SSH_CONNECT_TIMEOUT = 30
TAIL = 8  # lines of git's output quoted in an error
MAX_CAPTURE = 16 << 20  # bytes of a command's output that Goci itself reads
# How far to deepen, round by round, to find a commit or a merge base; then all.
DEEPEN = (64, 256, 1024, 4096)
MAX_CHANGED_FILES = 10_000  # more: "unknown", which every path filter matches
TOKEN_USER = "x-access-token"  # noqa: S105  (a user name)
FETCHED_REF = "refs/goci/fetched"
BASE_REF = "refs/goci/base"
SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
# The pipeline file read from the repository: the project's pipeline_path, and if that
# is the default and missing, the other spelling.
DEFAULT_PIPELINE = ".goci.yml"
ALTERNATE_PIPELINE = ".goci.yaml"
KNOWN_HOSTS = "ssh_known_hosts"  # SSH host keys trusted on first use, in the data dir
# What servers say when they will not send a commit that no ref names (v0 protocol),
# or that they do not have.
_REFUSED_WANT = re.compile(
    r"unadvertised object|not our ref|no such remote ref|couldn't find remote ref"
)
_HINTS = (
    (
        re.compile(r"returned error: 30[1-8]"),
        "the server answered with a redirect, which Goci does not follow (it could lead "
        "to an internal host): set the clone URL to the address it redirects to",
    ),
    (
        re.compile(r"terminal prompts disabled|returned error: 401|Authentication failed"),
        "the server wants credentials: set the project secret GOCI_CLONE_TOKEN (a token "
        "that may read the repository), or clone over ssh with GOCI_CLONE_SSH_KEY",
    ),
    (
        re.compile(r"Permission denied \(publickey"),
        "the SSH server refused the key: add the public half of GOCI_CLONE_SSH_KEY to "
        "the repository as a deploy key",
    ),
    (
        re.compile(r"Host key verification failed|REMOTE HOST IDENTIFICATION HAS CHANGED"),
        "the SSH host key differs from the one this worker saw first: if the server's "
        "key really changed, remove its line from the worker's known_hosts file",
    ),
)


class CheckoutError(Exception):
    """The checkout failed; the message says why, for the build's page."""


class CheckoutCanceled(Exception):
    """Canceled (the build was, or the worker is stopping)."""


@dataclass(frozen=True)
class Credentials:
    """GOCI_CLONE_TOKEN (a token, or `user:token` for servers that want a given user
    name) and GOCI_CLONE_SSH_KEY (a private key), either or both empty."""

    token: str = ""
    ssh_key: str = ""

    def basic(self) -> str:
        """`user:password` for HTTP basic authentication."""
        user, colon, password = self.token.partition(":")
        return self.token if colon and user and password else f"{TOKEN_USER}:{self.token}"

    def secrets(self) -> list[str]:
        """Every form of the credentials to mask in the log."""
        values = [self.ssh_key] if self.ssh_key else []
        if self.token:
            basic = self.basic()
            values += [self.token, basic, base64.b64encode(basic.encode()).decode()]
        return values


def pr_head_ref(forge: str, number: int) -> str:
    """Where a forge keeps the head commit of pull (merge) request `number`."""
    if forge == "gitlab":
        return f"refs/merge-requests/{number}/head"
    return f"refs/pull/{number}/head"  # GitHub, Gitea and Forgejo


def full_ref(ref: str) -> str:
    """`main` -> `refs/heads/main`; refs/... as they are."""
    if not ref or ref.startswith("refs/"):
        return ref
    return f"refs/heads/{ref}"


class _Tail:
    """The last lines of a stream, for error messages (bounded)."""

    def __init__(self) -> None:
        self.lines: deque[str] = deque(maxlen=TAIL)
        self.partial = b""

    def feed(self, data: bytes) -> None:
        *complete, self.partial = (self.partial + data).split(b"\n")
        self.partial = self.partial[-4096:]
        for line in complete:
            # ssh ends its lines with CRLF; a progress line keeps only its last state.
            text = line.rstrip(b"\r").decode("utf-8", "replace").rsplit("\r", 1)[-1].strip()
            if text:
                self.lines.append(text[:500])

    def text(self) -> str:
        self.feed(b"\n")
        return "\n".join(self.lines)


class Checkout:
    """One checkout of `commit` from `target` into `workspace` (a context manager: its
    temporary directory goes with it). `output` gets git's output and the commands,
    `idle` is called at least every 0.1 s while git runs, `cancel` stops it."""

    def __init__(
        self,
        workspace: Path,
        target: CloneTarget,
        *,
        commit: str,
        ref: str = "",
        credentials: Credentials | None = None,
        known_hosts: Path | None = None,
        output: Callable[[bytes], None] | None = None,
        idle: Callable[[], None] | None = None,
        cancel: threading.Event | None = None,
        timeout: float = TIMEOUT,
        exclude: Sequence[str] = (),
    ) -> None:
        self.workspace = workspace
        self.target = target
        self.commit = commit.lower()
        self.ref = full_ref(ref)
        self.credentials = credentials or Credentials()
        self.known_hosts = known_hosts
        self._output = output or (lambda data: None)
        self._idle = idle or (lambda: None)
        self._cancel = cancel or threading.Event()
        self.timeout = timeout
        self.exclude = exclude
        self.depth = 1
        self.wants = [self.commit]  # what the fetches ask for: the commit, or the ref
        self._deadline = 0.0
        self._home: Path | None = None
        self._env: dict[str, str] = {}
        self._options: list[str] = []
        self._last = ""  # the tail of the last command's output

    # -- set up -------------------------------------------------------------------

    def __enter__(self) -> Checkout:
        self._deadline = time.monotonic() + self.timeout
        self._home = Path(tempfile.mkdtemp(prefix="goci-git-"))  # 0700, outside the workspace
        self._env = self._environment(self._home)
        self._options = self._config()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self._home is not None:
            shutil.rmtree(self._home, ignore_errors=True)
            self._home = None

    def _environment(self, home: Path) -> dict[str, str]:
        env = {
            "PATH": GIT_PATH,
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "LANG": "C",
            "LC_ALL": "C",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_LITERAL_PATHSPECS": "1",
            "GIT_PROTOCOL_FROM_USER": "0",
        }
        target = self.target
        if target.scheme in ("http", "https") and self.credentials.token:
            # For this server only; the value stays out of argv, files and URLs.
            port = "" if target.port == DEFAULT_PORTS[target.scheme] else f":{target.port}"
            header = base64.b64encode(self.credentials.basic().encode()).decode()
            env.update(
                {
                    "GIT_CONFIG_COUNT": "1",
                    "GIT_CONFIG_KEY_0": f"http.{target.scheme}://{_url_host(target.host)}{port}/"
                    ".extraHeader",
                    "GIT_CONFIG_VALUE_0": f"Authorization: Basic {header}",
                }
            )
        if target.scheme == "ssh":
            env["GIT_SSH_VARIANT"] = "ssh"
            env["GIT_SSH_COMMAND"] = shlex.join(self._ssh(home))
        return env

    def _ssh(self, home: Path) -> list[str]:
        target = self.target
        command = ["ssh", "-F", os.devnull]
        if self.credentials.ssh_key:
            key = home / "id"
            key.touch(mode=0o600)
            # OpenSSH refuses a key whose last line has no newline.
            text = self.credentials.ssh_key.replace("\r\n", "\n").strip() + "\n"
            key.write_text(text)
            command += ["-i", str(key)]
        known = self.known_hosts or home / "known_hosts"
        known.parent.mkdir(parents=True, exist_ok=True)
        alias = target.host if target.port == 22 else f"[{target.host}]:{target.port}"
        options = {
            "IdentitiesOnly": "yes",
            "IdentityAgent": "none",
            "BatchMode": "yes",
            "StrictHostKeyChecking": "accept-new",
            "UserKnownHostsFile": str(known),
            "GlobalKnownHostsFile": os.devnull,
            # Connect to the address that was checked; know the host by its name.
            "HostName": target.addresses[0],
            "HostKeyAlias": alias,
            "CheckHostIP": "no",
            "UpdateHostKeys": "no",
            "ConnectTimeout": str(SSH_CONNECT_TIMEOUT),
            "ServerAliveInterval": "15",
            "ServerAliveCountMax": "4",
            "ForwardAgent": "no",
            "ForwardX11": "no",
            "ClearAllForwardings": "yes",
            "PermitLocalCommand": "no",
            "ProxyCommand": "none",
            "ProxyJump": "none",
            "LogLevel": "ERROR",
        }
        for name, value in options.items():
            command += ["-o", f"{name}={value}"]
        return command

    def _config(self) -> list[str]:
        target = self.target
        config = {
            "protocol.allow": "never",
            f"protocol.{target.scheme}.allow": "always",
            "http.followRedirects": "false",
            "http.lowSpeedLimit": str(LOW_SPEED_LIMIT),
            "http.lowSpeedTime": str(LOW_SPEED_TIME),
            "core.hooksPath": os.devnull,
            "core.fsmonitor": "false",
            "credential.helper": "",
            "gc.auto": "0",
            "maintenance.auto": "false",
            "fetch.recurseSubmodules": "false",
            "submodule.recurse": "false",
            "advice.detachedHead": "false",
            "init.defaultBranch": "main",
        }
        if target.scheme in ("http", "https") and not _is_address(target.host):
            pinned = ",".join(_url_host(address) for address in target.addresses)
            config["http.curloptResolve"] = f"{target.host}:{target.port}:{pinned}"
        return [item for key, value in config.items() for item in ("-c", f"{key}={value}")]

    # -- what the worker calls --------------------------------------------------------

    def fetch(self, depth: int = 1) -> None:
        """Fetch the commit with `depth` commits of history (0: all) and check it out."""
        if not SHA.fullmatch(self.commit):
            raise CheckoutError(
                f"the commit {self.commit[:80]!r} is not a full commit id (40 or 64 hex "
                "digits): Goci checks out exact commits"
            )
        self.workspace.chmod(0o755)  # the step's container user may be anyone
        self._git("init", "--quiet", "--template=", ".")
        if self.exclude:
            exclude = self.workspace / ".git" / "info" / "exclude"
            exclude.parent.mkdir(parents=True, exist_ok=True)
            exclude.write_text("".join(f"/{name}\n" for name in self.exclude))
        self._git("remote", "add", "origin", self.target.url)
        self.depth = depth
        if self._fetch(depth, self.commit, check=False) != 0:
            self._fall_back(depth)
        self._git("checkout", "--quiet", "--detach", self.commit, "--")
        head = self._capture("rev-parse", "--verify", "HEAD").decode().strip()
        if head != self.commit:
            raise CheckoutError(f"HEAD is {head}, not the build's commit {self.commit}")

    def remote_refs(self) -> dict[str, str]:
        """The repository's branches and tags: full ref -> commit (a tag's commit, not
        the tag object's id). For the server, before there is a build: `workspace` is
        an empty temporary directory, and nothing is checked out."""
        self._init()
        listing = self._capture("ls-remote", "--heads", "--tags", "origin").decode(errors="replace")
        refs: dict[str, str] = {}
        for line in listing.splitlines():
            sha, _, name = line.partition("\t")
            if name.endswith("^{}"):  # an annotated tag, peeled: its commit
                refs[name[:-3]] = sha
            else:
                refs.setdefault(name, sha)
        return refs

    def fetch_ref(self, ref: str) -> str:
        """Fetch the tip of the full ref `ref` (one commit, its files in git's objects
        only) and return its commit id; `read` then reads files of it."""
        self._init()
        self.wants = [f"+{ref}:{FETCHED_REF}"]
        self._fetch(1, self.wants[0])
        self.commit = (
            self._capture("rev-parse", "--verify", f"{FETCHED_REF}^{{commit}}").decode().strip()
        )
        return self.commit

    def _init(self) -> None:
        if (self.workspace / ".git").exists():
            return
        self._git("init", "--quiet", "--template=", ".", log=False)
        self._git("remote", "add", "origin", self.target.url, log=False)

    def deepen(self, depth: int) -> None:
        """Make the history `depth` commits deep (0: all) if it is less."""
        if depth == self.depth or not self._shallow():
            return
        if depth == 0:
            self._git("fetch", "--no-tags", "--unshallow", "origin", *self.wants)
        elif depth > self.depth:
            self._git("fetch", "--no-tags", f"--depth={depth}", "origin", *self.wants)
        self.depth = depth

    def read(self, path: str, limit: int) -> bytes | None:
        """The file at `path` in the commit, at most `limit` + 1 bytes of it, or None if
        there is none. A symbolic link or a directory there is a CheckoutError: the
        file is read from git's objects, never through the workspace."""
        listing = self._capture("ls-tree", "-z", "--full-tree", self.commit, "--", path)
        for entry in listing.split(b"\0"):
            info, _, name = entry.partition(b"\t")
            if not info or name.decode(errors="replace") != path.strip("/"):
                continue
            mode, kind, oid = info.decode().split()
            if mode == "120000":
                raise CheckoutError(f"{path} is a symbolic link; Goci reads only a file there")
            if kind != "blob":
                raise CheckoutError(f"{path} is a {kind}, not a file")
            return self._capture("cat-file", "blob", oid, limit=limit + 1)
        return None

    def changed_files(self, base_commit: str, base_ref: str = "") -> list[str] | None:
        """The files that differ between the merge base of `base_commit` (or, if the
        server will not send it, of `base_ref`'s tip) and the commit: `git diff
        base...commit`. None if that cannot be known."""
        base = base_commit.lower() if SHA.fullmatch(base_commit.lower()) else ""
        wants = list(self.wants)
        if base and not self._has(base):
            if self._fetch(1, base, check=False) == 0:
                wants.append(base)
            else:
                base = ""
        if not base and base_ref:
            base_spec = f"+{full_ref(base_ref)}:{BASE_REF}"
            if self._fetch(1, base_spec, check=False) == 0:
                base = BASE_REF
                wants.append(base_spec)
        if not base:
            self._say("the pull request's base commit cannot be fetched: changed files unknown")
            return None
        if not self._deepen_until(lambda: self._merge_base(base), wants):
            self._say("no common history with the base: changed files unknown")
            return None
        names = self._capture(
            "diff", "--name-only", "--no-renames", "-z", f"{base}...{self.commit}", "--"
        )
        files = [name.decode("utf-8", "replace") for name in names.split(b"\0") if name]
        if len(files) > MAX_CHANGED_FILES:
            self._say(f"more than {MAX_CHANGED_FILES} files changed: taken as unknown")
            return None
        return files

    # -- how ----------------------------------------------------------------------

    def _fetch(self, depth: int, want: str, *, check: bool = True) -> int:
        deep = [f"--depth={depth}"] if depth else []
        return self._git("fetch", "--no-tags", *deep, "origin", want, check=check)

    def _fall_back(self, depth: int) -> None:
        """The fetch of the commit by its id failed: fetch the ref if that is why."""
        if not _REFUSED_WANT.search(self._last):
            raise self._failed("fetch")
        if not self.ref:
            raise CheckoutError(
                f"the commit {self.commit} is not in the repository (was it force-pushed "
                "away?), or the server will not send a commit asked for by its id"
            )
        self._say(
            f"the server will not send a commit asked for by its id: fetching {self.ref} instead"
        )
        self.wants = [f"+{self.ref}:{FETCHED_REF}"]
        self._fetch(depth, self.wants[0])
        if not self._deepen_until(lambda: self._has(self.commit), self.wants):
            raise CheckoutError(
                f"the commit {self.commit} is not on {self.ref} (was it force-pushed away?)"
            )

    def _deepen_until(self, found: Callable[[], bool], wants: Sequence[str]) -> bool:
        """Deepen the fetched history round by round until `found()`, at worst to all
        of it; whether it was found."""
        for step in DEEPEN:
            if found():
                return True
            if not self._shallow():
                return False
            self._git("fetch", "--no-tags", f"--deepen={step}", "origin", *wants)
        if not found() and self._shallow():
            self._git("fetch", "--no-tags", "--unshallow", "origin", *wants)
        return found()

    def _has(self, commit: str) -> bool:
        return self._git("cat-file", "-e", f"{commit}^{{commit}}", log=False, check=False) == 0

    def _merge_base(self, base: str) -> bool:
        return self._git("merge-base", base, self.commit, log=False, check=False) == 0

    def _shallow(self) -> bool:
        return self._capture("rev-parse", "--is-shallow-repository").strip() == b"true"

    def _say(self, text: str) -> None:
        self._output(f"[goci] {text}\n".encode())

    def _failed(self, command: str) -> CheckoutError:
        detail = self._last or "(no output)"
        hints = [hint for pattern, hint in _HINTS if pattern.search(detail)]
        return CheckoutError("\n".join([f"git {command} failed:", detail, *hints[:1]]))

    def _capture(self, *args: str, limit: int = MAX_CAPTURE) -> bytes:
        """Run git for its standard output (not logged)."""
        out = bytearray()
        if self._run(args, log=False, into=out, limit=limit) != 0:
            raise self._failed(args[0])
        return bytes(out)

    def _git(self, *args: str, log: bool = True, check: bool = True) -> int:
        """Run git, logged with its command line (log=False: silent); its exit code."""
        if log:
            self._output(f"$ git {shlex.join(args)}\n".encode())
        code = self._run(args, log=log, into=None, limit=0)
        if check and code != 0:
            raise self._failed(args[0])
        return code

    def _run(self, args: Sequence[str], *, log: bool, into: bytearray | None, limit: int) -> int:
        """Run git; its output goes to the log (log=True) or `into` (stdout, at most
        `limit` bytes: git is stopped there), its last lines to self._last."""
        if self._cancel.is_set():
            raise CheckoutCanceled
        tail = _Tail()
        process = subprocess.Popen(
            ["git", *self._options, *args],
            cwd=self.workspace,
            env=self._env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its ssh too is killed with the group
            umask=0o022,
        )
        assert process.stdout is not None
        assert process.stderr is not None
        selector = selectors.DefaultSelector()
        selector.register(process.stdout, selectors.EVENT_READ, "out")
        selector.register(process.stderr, selectors.EVENT_READ, "err")
        try:
            while selector.get_map():
                if self._cancel.is_set():
                    raise CheckoutCanceled
                if time.monotonic() > self._deadline:
                    raise CheckoutError(
                        f"the checkout took longer than {self.timeout:.0f} s and was stopped"
                    )
                for key, _ in selector.select(timeout=0.1):
                    data = os.read(key.fd, 65536)
                    if not data:
                        selector.unregister(key.fileobj)
                    elif into is not None and key.data == "out":
                        into += data
                        if len(into) >= limit:
                            del into[limit:]
                            selector.unregister(key.fileobj)  # enough: git is stopped
                            _kill(process)
                    else:
                        tail.feed(data)
                        if log:
                            self._output(data)
                self._idle()
            code = process.wait()
            if into is not None and len(into) >= limit:
                code = 0  # stopped by us, having read what was asked for
        finally:
            selector.close()
            if process.poll() is None:
                _kill(process)
            process.stdout.close()
            process.stderr.close()
        self._last = tail.text()
        return code


def held_back_line(reason: str) -> bytes:
    """The clone step's last line when the pipeline read at checkout deploys where it
    must wait (an approval, another deployment): the job goes back to the queue, and is
    claimed again when it may go."""
    return f"[goci] {reason}: back to the queue until then\n".encode()


def handed_back_line(missing: Sequence[str], holder: str) -> bytes:
    """The clone step's last line when the pipeline read at checkout needs labels
    (`runs_on`) its worker or runner lacks: the job goes back to the queue with them."""
    return (
        f"[goci] runs_on needs [{', '.join(missing)}], which {holder} does not have: "
        "back to the queue for a runner that has\n"
    ).encode()


def read_pipeline(checkout: Checkout, path: str, commit: str, limit: int) -> tuple[str, bytes]:
    """The pipeline file of the fetched commit: (its name, its bytes, at most `limit`
    + 1 of them), or CheckoutError saying what to add or set."""
    data = checkout.read(path, limit)
    if data is None and path == DEFAULT_PIPELINE:
        data = checkout.read(ALTERNATE_PIPELINE, limit)
        if data is not None:
            return ALTERNATE_PIPELINE, data
    if data is None:
        also = f" (nor {ALTERNATE_PIPELINE})" if path == DEFAULT_PIPELINE else ""
        raise CheckoutError(
            f"{path}: no such file in commit {commit[:12]}{also}: add the "
            "pipeline file to the repository, or set the project's pipeline path"
        )
    return path, data


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _kill(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
