"""`goci up` as a user runs it: one process on the embedded default (SQLite, in-memory
channel layer, daphne and an in-process worker), driven over HTTP from outside."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.helpers import REPO

READY_TIMEOUT = 120  # migrations and collectstatic first: several seconds on a slow CI
BUILD_TIMEOUT = 30
GRACE = 5  # GOCI_SHUTDOWN_GRACE for these servers
PASSWORD = re.compile(r"with the password: (\S+)")
# Never printed by the pipeline's text itself: only a shell that ran the step says it.
PIPELINE = """\
steps:
  - name: hello
    run: echo "the answer is $((40 + 2))"
"""


def embedded_env(data_dir: Path) -> dict[str, str]:
    """The user's environment without the real services: the embedded default."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "REDIS_URL", "GOCI_WORKSPACE_ROOT")
    }
    return {
        **env,
        "GOCI_DATA_DIR": str(data_dir),
        "GOCI_SHUTDOWN_GRACE": str(GRACE),
        "PYTHONPATH": str(REPO),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Up:
    """A `goci up` process; its stdout and stderr go to files (a full pipe would block)."""

    def __init__(self, data_dir: Path, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.out = data_dir.parent / f"up-{port}.out"
        self.err = data_dir.parent / f"up-{port}.err"
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "goci.cli", "up", "--port", str(port), "--workers", "1"],
                cwd=data_dir.parent,
                env=embedded_env(data_dir),
                stdin=subprocess.DEVNULL,  # not a terminal: the admin's password is generated
                stdout=out,
                stderr=err,
            )

    def output(self) -> str:
        return self.out.read_text() + self.err.read_text()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while "Goci is running" not in self.out.read_text():
            assert self.proc.poll() is None, f"goci up exited early:\n{self.output()}"
            assert time.monotonic() < deadline, f"goci up did not start:\n{self.output()}"
            time.sleep(0.2)

    def stop(self) -> tuple[int, float]:
        """SIGTERM; the exit code and how long it took."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=GRACE + 30)
        return code, time.monotonic() - started

    def get(self, path: str, token: str | None = None) -> tuple[int, str, bytes]:
        """Status, content type and body."""
        return self.call("GET", path, token)

    def post(self, path: str, token: str, body: dict[str, Any]) -> dict[str, Any]:
        status, _, answer = self.call("POST", path, token, body)
        assert status == 201, answer
        created: dict[str, Any] = json.loads(answer)
        return created

    def call(
        self, method: str, path: str, token: str | None, body: dict[str, Any] | None = None
    ) -> tuple[int, str, bytes]:
        request = urllib.request.Request(  # noqa: S310  (http to our own server)
            self.url + path, data=None if body is None else json.dumps(body).encode(), method=method
        )
        request.add_header("Content-Type", "application/json")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, response.headers["Content-Type"], response.read()


@contextmanager
def goci_up(data_dir: Path, port: int | None = None) -> Iterator[Up]:
    server = Up(data_dir, port or free_port())
    try:
        yield server
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
        server.proc.wait()


def manage(data_dir: Path, code: str) -> str:
    """Run Python in `manage.py shell` against the server's data directory; its output."""
    done = subprocess.run(
        [sys.executable, str(REPO / "manage.py"), "shell", "--verbosity", "0", "-c", code],
        env=embedded_env(data_dir),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


def create_token(data_dir: Path, username: str) -> str:
    return manage(
        data_dir,
        "from django.contrib.auth import get_user_model\n"
        "from builds.services import token_create\n"
        f"user = get_user_model().objects.create_user({username!r})\n"
        "print(token_create(user=user, name='test', scopes=['read', 'run', 'admin'])[1])",
    ).splitlines()[-1]


def test_a_build_submitted_over_the_api_runs_and_sigterm_stops_the_server(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    with goci_up(data_dir) as server:
        server.wait_ready()
        token = create_token(data_dir, "alice")
        server.post("/api/projects", token, {"slug": "demo"})
        build = server.post(
            "/api/builds",
            token,
            {
                "project": "demo",
                "pipeline": PIPELINE,
                "ref": "refs/heads/main",
                "commit": "0" * 40,
                "env": {},
            },
        )

        deadline = time.monotonic() + BUILD_TIMEOUT
        while True:
            status = json.loads(server.get(f"/api/builds/{build['id']}", token)[2])["status"]
            if status not in ("queued", "running"):
                break
            assert time.monotonic() < deadline, f"still {status}:\n{server.output()}"
            time.sleep(0.2)
        assert status == "success", server.output()
        _, _, logs = server.get(f"/api/builds/{build['id']}/logs", token)
        assert "the answer is 42" in logs.decode()

        code, took = server.stop()
        assert code == 0, server.output()
        assert took < GRACE, server.output()
        assert "Goci stopped." in server.output()


def test_static_files_are_served_and_the_generated_password_is_printed_once(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    with goci_up(data_dir) as first:
        first.wait_ready()
        status, content_type, body = first.get("/static/admin/css/base.css")
        assert (status, content_type.split(";")[0]) == (200, "text/css")
        assert b"DJANGO" in body
        assert first.stop()[0] == 0
        output = first.output()
    assert f"Goci is running at {first.url}/" in output
    # The tests' servers allow host steps; goci up says what that means.
    assert "Steps without an image run on this machine with Goci's own rights" in output
    passwords = PASSWORD.findall(output)
    assert len(passwords) == 1, output

    with goci_up(data_dir) as second:
        second.wait_ready()
        assert second.stop()[0] == 0
        assert "password" not in second.output().lower()
    checked = manage(
        data_dir,
        "from django.contrib.auth import authenticate\n"
        f"print(authenticate(username='admin', password={passwords[0]!r}) is not None)",
    )
    assert checked.splitlines()[-1] == "True"


def test_a_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with goci_up(tmp_path / "data", port=taken.getsockname()[1]) as server:
            code = server.proc.wait(timeout=READY_TIMEOUT)
    assert code == 1
    assert "Address already in use" in server.err.read_text()
    assert "Goci is running" not in server.out.read_text()


def test_the_compose_file_describes_the_stack() -> None:
    """The image cannot be built here (no registry): check the file's shape instead."""
    import yaml

    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    assert set(services) == {"migrate", "web", "worker", "postgres", "redis"}
    assert "daphne -b 0.0.0.0 -p 8000 goci.asgi:application" in " ".join(services["web"]["command"])
    for name in ("migrate", "web", "worker"):
        env = services[name]["environment"]
        assert env["DATABASE_URL"].startswith("postgres://"), name
        assert env["REDIS_URL"].startswith("redis://"), name
    worker = services["worker"]
    assert worker["command"][:3] == ["python", "manage.py", "worker"]
    # --scale worker=N: nothing that only one container may have.
    assert "container_name" not in worker
    assert "ports" not in worker
    assert "/var/run/docker.sock:/var/run/docker.sock" in worker["volumes"]
    workspace = worker["environment"]["GOCI_WORKSPACE_ROOT"]
    assert f"{workspace}:{workspace}" in worker["volumes"]  # the identical path
    assert services["postgres"]["image"] == "postgres:15"
    assert "healthcheck" in services["postgres"]
    assert services["redis"]["image"] == "redis:7"
