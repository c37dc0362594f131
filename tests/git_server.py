"""A real git server for the tests, on 127.0.0.1: git's smart HTTP through
`git http-backend` (CGI) behind a small threaded http.server, serving the bare
repositories of a temporary directory. Every request is recorded, so a test can see
what a client sent (or that nothing came).

Options: `token` (HTTP basic auth whose password must be that token, else 401),
`redirect_to` (answer every request with a 302 to that base URL instead), and
`sha_wants` (False: the repositories refuse to send a commit asked for by its id, as
older servers do; the server then also drops the client's `Git-Protocol` header,
since protocol v2 lets a client ask for any commit whatever the configuration says),
and `stall` (seconds to wait before answering, or until the server stops).

`Repo` makes a bare repository with commits (each pushed from a scratch clone, so
that hooks run), and `Repo.on_push` installs a post-receive hook that runs a command.
"""

from __future__ import annotations

import base64
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

HTTP_BACKEND = "/usr/lib/git-core/git-http-backend"
AUTHOR = {
    "GIT_AUTHOR_NAME": "Ann Author",
    "GIT_AUTHOR_EMAIL": "ann@example.com",
    "GIT_COMMITTER_NAME": "Ann Author",
    "GIT_COMMITTER_EMAIL": "ann@example.com",
}


def git_env(**extra: str) -> dict[str, str]:
    """An environment for the tests' own git commands: no user or system config."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": tempfile.gettempdir(),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
        "LANG": "C",
        **AUTHOR,
    }
    env.update(extra)
    return env


def git(*args: str | Path, cwd: Path | None = None, **extra: str) -> str:
    done = subprocess.run(
        ["git", *map(str, args)],
        cwd=cwd,
        env=git_env(**extra),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"git {' '.join(map(str, args))} failed:\n{done.stderr}")
    return done.stdout.strip()


@dataclass
class Recorded:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes = b""  # kept for the forge API's calls (/api/...) only


@dataclass
class Repo:
    """A bare repository `name.git` under the server's root, and a scratch clone."""

    bare: Path
    work: Path
    commits: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, root: Path, name: str, branch: str = "main") -> Repo:
        bare = root / f"{name}.git"
        git("init", "--quiet", "--bare", f"--initial-branch={branch}", bare)
        work = root / f"{name}.work"
        git("init", "--quiet", f"--initial-branch={branch}", work)
        git("remote", "add", "origin", bare, cwd=work)
        return cls(bare, work)

    def commit(
        self,
        files: Mapping[str, str | bytes | None],
        message: str = "a commit",
        *,
        branch: str = "main",
        ref: str | None = None,
        start: str | None = None,
    ) -> str:
        """Write (or, with None, delete) files on `branch` (a new branch starts at
        `start`, else at the current commit), commit, and push it to the bare
        repository (to `ref` if given, else the branch); returns the commit id."""
        if git("branch", "--show-current", cwd=self.work) != branch:
            if git("branch", "--list", branch, cwd=self.work):
                git("checkout", "--quiet", branch, cwd=self.work)
            else:
                git("checkout", "--quiet", "-b", branch, *([start] if start else []), cwd=self.work)
        for name, content in files.items():
            path = self.work / name
            if content is None:
                path.unlink()
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content)
        git("add", "--all", cwd=self.work)
        git("commit", "--quiet", "--allow-empty", "-m", message, cwd=self.work)
        sha = git("rev-parse", "HEAD", cwd=self.work)
        git(
            "push",
            "--quiet",
            "--force",
            "origin",
            f"HEAD:{ref or 'refs/heads/' + branch}",
            cwd=self.work,
        )
        self.commits.append(sha)
        return sha

    def symlink(self, name: str, target: str, message: str = "a link") -> str:
        path = self.work / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(target)
        return self.commit({}, message)

    def on_push(self, command: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        """Run `command` after every push to this repository (a post-receive hook; it
        gets git's `old new ref` lines on its standard input)."""
        hook = self.bare / "hooks" / "post-receive"
        exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in (env or {}).items())
        hook.write_text(f"#!/bin/sh\n{exports}exec {shlex.join(command)}\n")
        hook.chmod(0o755)

    def configure(self, **values: str) -> None:
        for key, value in values.items():
            git("config", key.replace("_", "."), value, cwd=self.bare)


class GitServer:
    """Serve every `*.git` repository under `root` over smart HTTP on 127.0.0.1, and
    play a forge's API under /api/: every call is recorded with its body and answered
    201, as a forge answers a new commit status."""

    def __init__(
        self,
        root: Path,
        *,
        token: str | None = None,
        redirect_to: str | None = None,
        sha_wants: bool = True,
        host: str = "127.0.0.1",
    ) -> None:
        self.root = root
        self.token = token
        self.redirect_to = redirect_to
        self.sha_wants = sha_wants
        self.stall = 0.0
        self.stopped = threading.Event()
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url(self, repo: Repo | str) -> str:
        name = repo.bare.name if isinstance(repo, Repo) else f"{repo}.git"
        return f"{self.base}/{name}"

    def repo(self, name: str, branch: str = "main") -> Repo:
        return Repo.create(self.root, name, branch)

    def start(self) -> GitServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()
        self._server.shutdown()
        self._server.server_close()

    def seen(self) -> list[Recorded]:
        with self._lock:
            return list(self.requests)

    def record(self, recorded: Recorded) -> None:
        with self._lock:
            self.requests.append(recorded)

    def authorized(self, header: str) -> bool:
        if self.token is None:
            return True
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            _, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except ValueError:
            return False
        return password == self.token

    def cgi_env(
        self, method: str, path: str, query: str, headers: Mapping[str, str]
    ) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "REQUEST_METHOD": method,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "REMOTE_ADDR": "127.0.0.1",
            "CONTENT_TYPE": headers.get("content-type", ""),
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": "HTTP/1.1",
        }
        if encoding := headers.get("content-encoding"):
            env["HTTP_CONTENT_ENCODING"] = encoding
        if self.sha_wants and (protocol := headers.get("git-protocol")):
            env["GIT_PROTOCOL"] = protocol
        if not self.sha_wants:
            # What an older server says when asked for a commit that no ref names.
            env.update(
                {
                    "GIT_CONFIG_COUNT": "2",
                    "GIT_CONFIG_KEY_0": "uploadpack.allowAnySHA1InWant",
                    "GIT_CONFIG_VALUE_0": "false",
                    "GIT_CONFIG_KEY_1": "uploadpack.allowReachableSHA1InWant",
                    "GIT_CONFIG_VALUE_1": "false",
                }
            )
        return env


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        parts = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip(), 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            parts.append(handler.rfile.read(size))
            handler.rfile.readline()
    return handler.rfile.read(int(handler.headers.get("Content-Length") or 0))


def _handler(server: GitServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # one response per connection: no length needed

        def log_message(self, format: str, *args: object) -> None:
            pass  # the tests read `requests`, not stderr

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def _serve(self, method: str) -> None:
            parts = urlsplit(self.path)
            headers = {k.lower(): v for k, v in self.headers.items()}
            body = _read_body(self) if method == "POST" else b""
            if parts.path.startswith("/api/"):
                # The forge's API beside its git (commit statuses): recorded, and 201.
                server.record(Recorded(method, parts.path, parts.query, headers, body))
                self.send_response(201)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")
                return
            server.record(Recorded(method, parts.path, parts.query, headers))
            if server.stall:
                server.stopped.wait(server.stall)
            if server.redirect_to is not None:
                self.send_response(302)
                self.send_header("Location", server.redirect_to + self.path)
                self.end_headers()
                return
            if not server.authorized(headers.get("authorization", "")):
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="git"')
                self.end_headers()
                return
            env = server.cgi_env(method, parts.path, parts.query, headers)
            env["CONTENT_LENGTH"] = str(len(body))
            done = subprocess.run(
                [HTTP_BACKEND], input=body, env=env, capture_output=True, check=False
            )
            head, _, payload = done.stdout.partition(b"\r\n\r\n")
            status, fields = 200, []
            for line in head.decode("latin-1").split("\r\n"):
                name, _, value = line.partition(":")
                if name.lower() == "status":
                    status = int(value.split()[0])
                elif name:
                    fields.append((name, value.strip()))
            self.send_response(status)
            for name, value in fields:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
            if done.returncode and done.stderr:
                sys.stderr.write(done.stderr.decode(errors="replace"))

    return Handler


@contextmanager
def git_server(root: Path, **options: object) -> Iterator[GitServer]:
    server = GitServer(root, **options)  # type: ignore[arg-type]
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Listener:
    """A socket listening on (host, port) that records every connection it accepts:
    the proof that a refused URL made no connection."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.host = host
        self.port = int(self.sock.getsockname()[1])
        self.accepted: list[object] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted.append(peer)
            conn.close()

    def close(self) -> list[object]:
        """Stop listening; returns the peers that connected."""
        self._stop.set()
        self._thread.join()
        self.sock.close()
        return self.accepted
