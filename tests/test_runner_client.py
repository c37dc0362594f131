"""`goci runner` (goci/runner.py) against a real server over HTTP: it registers into a
private config file, takes builds with `run`, reports steps and log lines (each line
stored once), obeys a cancel, runs `capacity` builds at once, stops and cleans up a job
taken from it (409), finishes its job on SIGTERM, and unregisters (checkouts and
secrets: tests/test_runner_checkout.py). The client runs as
a process of its own with no database settings, SECRET_KEY or Django."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db.models import Sum
from django.utils import timezone

from builds import services
from builds.models import Build, Job, LogChunk, Status, Step
from runners import services as runner_services
from runners.lines import MASK
from runners.models import Runner
from runners.queue import jobs_reap
from tests.helpers import REPO
from tests.queue_helpers import log_lines, make_project, submit, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

# Nothing of the server's: the runner must work with its config file alone.
SERVER_ONLY = ("DATABASE_URL", "SECRET_KEY", "REDIS_URL", "DJANGO_SETTINGS_MODULE")


def runner_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in SERVER_ONLY and not k.startswith(("GOCI_", "TEST_"))
    }
    env.update(
        {
            "HOME": str(tmp_path / "home"),
            "PYTHONPATH": str(REPO),
            "GOCI_HOST_STEPS": "allow",
            "GOCI_WORKSPACE_ROOT": str(tmp_path / "workspaces"),
            **extra,
        }
    )
    return env


def goci_runner(tmp_path: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "goci.cli", "runner", *args],
        env=runner_env(tmp_path, **extra),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def start_runner(tmp_path: Path, config: Path, *args: str, **extra: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "goci.cli", "runner", "run", "--config", str(config), *args]
    return subprocess.Popen(
        cmd,
        env=runner_env(tmp_path, **extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def register(tmp_path: Path, url: str, *options: str) -> Path:
    _, secret = runner_services.registration_token_create(user=None)
    config = tmp_path / "conf" / "runner.toml"
    done = goci_runner(
        tmp_path, "register", "--server", url, "--token", secret, "--config", str(config), *options
    )
    assert done.returncode == 0, done.stderr
    return config


def step(build: Build, name: str) -> Step:
    return Step.objects.get(job__build=build, name=name)


def finished(process: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str]:
    _, err = process.communicate(timeout=timeout)
    return process.returncode, err


def test_register_writes_a_private_config_and_unregister_forgets_it(
    tmp_path: Path, live_server: Any
) -> None:
    config = register(tmp_path, live_server.url, "--name", "far", "--labels", "linux,gpu")

    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    data = tomllib.loads(config.read_text())
    assert data["server"] == live_server.url
    assert data["token"].startswith("goci_runner_")
    runner = Runner.objects.get(name="far")
    assert (runner.kind, runner.labels) == (Runner.Kind.RUNNER, ["linux", "gpu"])
    assert runner.token_digest == services.token_digest(data["token"])

    done = goci_runner(tmp_path, "unregister", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert not config.exists()
    assert not Runner.objects.filter(name="far").exists()


def test_a_refused_registration_writes_nothing(tmp_path: Path, live_server: Any) -> None:
    config = tmp_path / "conf" / "runner.toml"
    done = goci_runner(
        tmp_path, "register", "--server", live_server.url, "--token", "goci_reg_nope",
        "--config", str(config),
    )  # fmt: skip
    assert done.returncode == 2
    assert "refused" in done.stderr
    assert not config.exists()


def test_a_runner_without_database_settings_runs_a_build_and_stores_each_line_once(
    tmp_path: Path, live_server: Any
) -> None:
    config = register(tmp_path, live_server.url)
    build = submit(
        make_project(),
        """
        steps:
          - {name: many, run: seq 1 200000}
          - {name: secret, run: 'echo "token $GOCI_JOB_TOKEN"; test -z "$SECRET_KEY$DATABASE_URL"'}
        """,
    )
    runner = start_runner(tmp_path, config, "--once", PYTHONPROFILEIMPORTTIME="1")
    code, err = finished(runner)

    assert code == 0, err
    imported = {line.rsplit("|", 1)[1].strip() for line in err.splitlines() if "|" in line}
    assert "goci.runner" in imported
    assert not [m for m in imported if m.split(".")[0] in ("django", "ninja", "channels")]
    build.refresh_from_db()
    assert build.status == Status.SUCCESS
    many = step(build, "many")
    assert (many.status, many.exit_code) == (Status.SUCCESS, 0)
    assert many.started_at is not None
    assert many.finished_at is not None
    stored = LogChunk.objects.filter(step=many).aggregate(n=Sum("line_count"))["n"]
    assert stored == 200_000  # no line twice, none missing
    assert log_lines(many) == [(n, str(n)) for n in range(1, 200_001)]
    assert log_lines(step(build, "secret")) == [(1, f"token {MASK}")]
    assert Job.objects.get(build=build).runner == Runner.objects.get()
    assert list((tmp_path / "workspaces").iterdir()) == []


def test_a_failing_step_fails_the_build(tmp_path: Path, live_server: Any) -> None:
    config = register(tmp_path, live_server.url)
    build = submit(
        make_project(), "steps: [{name: bad, run: 'echo oops; exit 3'}, {name: after, run: 'true'}]"
    )

    code, err = finished(start_runner(tmp_path, config, "--once"))

    assert code == 0, err
    build.refresh_from_db()
    assert build.status == Status.FAILURE
    bad, after = step(build, "bad"), step(build, "after")
    assert (bad.status, bad.exit_code) == (Status.FAILURE, 3)
    assert log_lines(bad) == [(1, "oops")]
    assert after.status == Status.SKIPPED


def test_host_steps_are_refused_unless_the_runner_allows_them(
    tmp_path: Path, live_server: Any
) -> None:
    config = register(tmp_path, live_server.url)
    build = submit(make_project(), "steps: [{name: host, run: 'true'}]")

    code, err = finished(start_runner(tmp_path, config, "--once", GOCI_HOST_STEPS="deny"))

    assert code == 0, err
    build.refresh_from_db()
    assert build.status == Status.ERROR
    assert "steps without image are disabled" in step(build, "host").error


def test_a_cancel_stops_the_running_job(tmp_path: Path, live_server: Any) -> None:
    config = register(tmp_path, live_server.url)
    build = submit(make_project(), "steps: [{name: long, run: 'echo started; sleep 60'}]")
    runner = start_runner(tmp_path, config, "--once")
    wait_for(lambda: log_lines(step(build, "long")) != [], 30, "the step to start")

    services.build_cancel(build=build)
    code, err = finished(runner, timeout=15)

    assert code == 0, err
    build.refresh_from_db()
    assert build.status == Status.CANCELED
    assert step(build, "long").status == Status.CANCELED
    assert list((tmp_path / "workspaces").iterdir()) == []


def test_a_runner_of_capacity_two_runs_two_builds_at_once(tmp_path: Path, live_server: Any) -> None:
    config = register(tmp_path, live_server.url, "--capacity", "2")
    project = make_project()
    builds = [submit(project, "steps: [{name: nap, run: 'sleep 2'}]") for _ in range(2)]
    runner = start_runner(tmp_path, config)
    try:
        wait_for(
            lambda: Build.objects.filter(status=Status.SUCCESS).count() == 2, 30, "both builds"
        )
    finally:
        runner.send_signal(signal.SIGTERM)
    code, err = finished(runner, timeout=15)

    assert code == 0, err
    first, second = (step(build, "nap") for build in builds)
    assert first.started_at is not None
    assert first.finished_at is not None
    assert second.started_at is not None
    assert second.finished_at is not None
    assert first.started_at < second.finished_at
    assert second.started_at < first.finished_at


def test_a_job_taken_from_the_runner_is_stopped_and_its_workspace_removed(
    tmp_path: Path, live_server: Any
) -> None:
    config = register(tmp_path, live_server.url)
    build = submit(make_project(), "steps: [{name: long, run: 'echo started; sleep 60'}]")
    runner = start_runner(tmp_path, config, "--once")
    wait_for(lambda: log_lines(step(build, "long")) != [], 30, "the step to start")
    assert len(list((tmp_path / "workspaces").iterdir())) == 2  # the workspace and its HOME

    # As if the runner had been cut off past its lease: the reaper moves the job on.
    Job.objects.filter(build=build).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert jobs_reap() == 1
    code, err = finished(runner, timeout=15)

    assert code == 0, err
    assert "was taken" in err
    job = Job.objects.get(build=build)
    assert (job.status, job.attempt) == (Status.QUEUED, 2)
    assert list((tmp_path / "workspaces").iterdir()) == []


def test_sigterm_lets_the_running_job_finish_then_exits(tmp_path: Path, live_server: Any) -> None:
    config = register(tmp_path, live_server.url)
    build = submit(make_project(), "steps: [{name: short, run: 'echo started; sleep 2; echo end'}]")
    runner = start_runner(tmp_path, config)
    wait_for(lambda: log_lines(step(build, "short")) != [], 30, "the step to start")

    runner.send_signal(signal.SIGTERM)
    code, err = finished(runner, timeout=20)

    assert code == 0, err
    build.refresh_from_db()
    assert build.status == Status.SUCCESS
    assert log_lines(step(build, "short")) == [(1, "started"), (2, "end")]


def test_a_long_poll_asked_as_the_runner_stops_is_not_made() -> None:
    """stop() may come while the poll connects, before abort() has a socket to shut:
    the poll then sees the flag instead of waiting for the server's answer (up to 30 s;
    a runner SIGTERM'd right after it started once took that long to exit)."""
    import socket
    import threading
    import time

    from goci.runner import Client

    with socket.socket() as server:  # accepts, never answers
        server.bind(("127.0.0.1", 0))
        server.listen()
        client = Client(f"http://127.0.0.1:{server.getsockname()[1]}", "goci_runner_x")
        stopping = threading.Event()
        stopping.set()
        started = time.monotonic()
        with pytest.raises(OSError, match="the runner is stopping"):
            client.once("/next?wait=30", unless=stopping)
        assert time.monotonic() - started < 1
        client.close()
