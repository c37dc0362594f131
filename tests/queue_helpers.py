"""Helpers for queue and worker tests: users, projects, builds, worker processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import connection

from builds import services
from builds.models import Build, LogChunk, Project, Step
from tests.conftest import need
from tests.helpers import REPO


def make_project(slug: str = "demo", user: str = "ann") -> Project:
    owner, _ = User.objects.get_or_create(username=user)
    return services.project_create(user=owner, slug=slug)


def submit(project: Project, pipeline: str, **fields: Any) -> Build:
    build, _ = services.build_create(project=project, pipeline=textwrap.dedent(pipeline), **fields)
    return build


def run_one(build: Build) -> Build:
    """The build's job run to its end by an in-process worker; the build reloaded."""
    from runners.worker import Worker

    worker = Worker(name="w1")
    try:
        assert worker.run_one_job() is True
    finally:
        worker.close()
    build.refresh_from_db()
    return build


def run_all(build: Build, publisher: Any = None) -> Build:
    """Every queued job of the build (each cell of a matrix), by one in-process worker,
    one after another (`publisher`: what it publishes to, none by default); the build
    reloaded."""
    from runners.worker import Worker

    worker = Worker(name="w1")
    if publisher is not None:
        worker.publisher = publisher
    try:
        while worker.run_one_job():
            pass
    finally:
        worker.close()
    build.refresh_from_db()
    return build


def log_lines(step: Step, attempt: int | None = None) -> list[tuple[int, str]]:
    """(line number, text) of a step's log, in order, from the database."""
    chunks = LogChunk.objects.filter(step=step).order_by("attempt", "first_line")
    if attempt is not None:
        chunks = chunks.filter(attempt=attempt)
    return [
        (chunk.first_line + i, line)
        for chunk in chunks
        for i, line in enumerate(chunk.text.split("\n"))
    ]


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def require_postgres() -> None:
    if connection.vendor != "postgresql":
        need("PostgreSQL: set DATABASE_URL=postgres://postgres@127.0.0.1:5432/goci")


def worker_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """Environment of a worker process on the test database."""
    db = settings.DATABASES["default"]
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL",)}
    if connection.vendor == "postgresql":
        user = db.get("USER") or "postgres"
        password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
        host = db.get("HOST") or "127.0.0.1"
        port = db.get("PORT") or 5432
        env["DATABASE_URL"] = f"postgres://{user}{password}@{host}:{port}/{db['NAME']}"
    env.update(
        {
            "GOCI_DATA_DIR": str(tmp_path / "data"),
            "GOCI_WORKSPACE_ROOT": str(tmp_path / "workspaces"),
            "GOCI_LEASE_SECONDS": "3",
            "GOCI_SHUTDOWN_GRACE": "5",
            "PYTHONPATH": str(REPO),
            **extra,
        }
    )
    return env


def start_worker(
    tmp_path: Path, name: str, concurrency: int = 1, **extra: str
) -> subprocess.Popen[bytes]:
    with (tmp_path / f"{name}.log").open("wb") as log:  # the child keeps its own copy
        return subprocess.Popen(
            [
                sys.executable,
                str(REPO / "manage.py"),
                "worker",
                "--name",
                name,
                "--concurrency",
                str(concurrency),
            ],
            env=worker_env(tmp_path, **extra),
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
