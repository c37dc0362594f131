"""Plain helpers shared by the tests."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.measure import peak_rss_mb  # noqa: F401  (the tests' name for it)
from builds.pipeline import Pipeline, Step, load
from runners.engine import BuildResult, Engine, StepResult
from runners.executors.local import LocalExecutor

REPO = Path(__file__).resolve().parents[1]


def write_pipeline(directory: Path, text: str, name: str = ".goci.yml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


def pipeline(text: str) -> Pipeline:
    return load(textwrap.dedent(text), "test.yml")


@dataclass
class Recorder:
    """A reporter that keeps everything, with monotonic times, for assertions."""

    events: list[tuple[str, str, float]] = field(default_factory=list)
    lines: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    results: dict[str, StepResult] = field(default_factory=dict)
    build: BuildResult | None = None

    def step_started(self, step: Step, attempt: int) -> None:
        self.events.append(("started", step.name, time.monotonic()))

    def step_log(self, step: Step, first_line: int, lines: Sequence[str], at: float) -> None:
        got = self.lines.setdefault(step.name, [])
        got.extend(enumerate(lines, start=first_line))

    def step_finished(self, step: Step, result: StepResult) -> None:
        self.events.append(("finished", step.name, time.monotonic()))
        self.results[step.name] = result

    def build_finished(self, result: BuildResult) -> None:
        self.build = result

    def idle(self) -> None:
        pass

    def text(self, step: str) -> list[str]:
        return [line for _, line in self.lines.get(step, [])]

    def status(self, step: str) -> str:
        return str(self.results[step].status)


def run_pipeline(text: str, workspace: Path, **options: object) -> Recorder:
    recorder = Recorder()
    Engine(pipeline(text), LocalExecutor(workspace), recorder, **options).run()  # type: ignore[arg-type]
    return recorder


def goci(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the goci command as a user would, in a subprocess."""
    full_env = {**os.environ, "NO_COLOR": "", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "goci.cli", *args],
        cwd=cwd,
        env={**full_env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def processes_matching(marker: str) -> list[int]:
    """PIDs whose command line contains marker (to prove nothing was left behind)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = next(
                (
                    ln
                    for ln in (entry / "status").read_text().splitlines()
                    if ln.startswith("State:")
                ),
                "",
            )
        except OSError:
            continue
        if marker in cmdline and "zombie" not in state:
            found.append(int(entry.name))
    return found


# Users, tokens and projects for the server's tests (Django is imported on use, so the
# engine's tests need no database).


def make_user(name: str) -> object:
    from django.contrib.auth import get_user_model

    return get_user_model().objects.create_user(username=name, password=None)


def make_token(user: object) -> str:
    """A personal API token of the user with every scope (tests of roles need admin
    ones); the secret to send as `Bearer <secret>`."""
    from builds import services
    from builds.models import TOKEN_SCOPES

    _, secret = services.token_create(user=user, name="test", scopes=TOKEN_SCOPES)  # type: ignore[arg-type]
    return secret


def make_project(owner: object, slug: str) -> object:
    from builds import services

    return services.project_create(user=owner, slug=slug)  # type: ignore[arg-type]


def api_call(method: str, url: str, token: str, body: object = None, **extra: object) -> Any:
    """One call of the REST API as a client makes it: a JSON body (a str or bytes body
    is sent as it is) and the user's bearer token."""
    import json

    from django.test import Client

    data = body if isinstance(body, str | bytes) else b"" if body is None else json.dumps(body)
    return Client().generic(
        method.upper(),
        url,
        data,
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {token}",
        **extra,
    )
