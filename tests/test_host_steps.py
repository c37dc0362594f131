"""Steps without `image` on server workers: refused, run in the default image, or run
on the host with an environment of their own and no process left behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client

from builds import services
from builds.models import FINISHED, Build, Job, LogChunk, Status, Step
from runners.worker import Worker
from runners.workspace import HOST_PATH
from tests.conftest import TEST_IMAGE
from tests.helpers import goci, make_token, processes_matching, write_pipeline
from tests.queue_helpers import (
    log_lines,
    make_project,
    require_postgres,
    run_one,
    start_worker,
    submit,
    wait_for,
)

pytestmark = pytest.mark.django_db(transaction=True)

REFUSED = (
    "steps without image are disabled on this server: add image: to the step, "
    "or ask the operator to set GOCI_DEFAULT_IMAGE"
)


@pytest.fixture(autouse=True)
def workspaces(tmp_path: Path, settings: Any) -> None:
    settings.GOCI_WORKSPACE_ROOT = tmp_path / "ws"


def lines_of(build: Build, step: str) -> list[str]:
    return [text for _, text in log_lines(Step.objects.get(job__build=build, name=step))]


@pytest.fixture
def marker() -> Iterator[str]:
    """A sleep duration no other process uses; whatever still sleeps it is killed after."""
    value = f"{271_000 + os.getpid() % 1000}"
    yield value
    for pid in processes_matching(f"sleep {value}"):
        os.kill(pid, signal.SIGKILL)


def test_deny_without_a_default_image_ends_the_build_in_error_before_any_step_runs(
    tmp_path: Path, settings: Any
) -> None:
    settings.GOCI_HOST_STEPS, settings.GOCI_DEFAULT_IMAGE = "deny", ""
    ran = tmp_path / "ran"
    build = submit(
        make_project(),
        f"""
        steps:
          - {{name: boxed, image: {TEST_IMAGE}, run: 'true'}}
          - {{name: hostly, run: 'touch {ran}'}}
          - {{name: psql, run: 'psql "$DATABASE_URL"', needs: []}}
        """,
    )
    build = run_one(build)
    assert build.status == Status.ERROR
    assert build.finished_at is not None
    job = Job.objects.get(build=build)
    assert (job.status, job.attempt) == (Status.ERROR, 1)
    assert job.error == f"{REFUSED} (steps without image: hostly, psql)"
    steps = {s.name: (s.status, s.error, s.started_at) for s in Step.objects.filter(job=job)}
    assert steps == {
        "boxed": (Status.SKIPPED, "not run: steps without image: hostly, psql", None),
        "hostly": (Status.ERROR, REFUSED, None),
        "psql": (Status.ERROR, REFUSED, None),
    }
    assert not ran.exists()
    assert not LogChunk.objects.exists()
    # The user sees why, on the API and on the build's page.
    owner = User.objects.get(username="ann")  # make_project's owner
    api = Client().get(
        f"/api/builds/{build.pk}", headers={"authorization": f"Bearer {make_token(owner)}"}
    )
    assert api.status_code == 200
    assert api.json()["jobs"][0]["error"].startswith(REFUSED)
    assert {s["name"]: s["error"] for s in api.json()["jobs"][0]["steps"]}["psql"] == REFUSED
    page = Client()
    page.force_login(owner)
    assert REFUSED in page.get(f"/builds/{build.pk}/").content.decode()


@pytest.mark.docker
def test_deny_with_a_default_image_runs_steps_without_image_in_a_container(
    settings: Any, docker_client: Any
) -> None:
    settings.GOCI_HOST_STEPS, settings.GOCI_DEFAULT_IMAGE = "deny", TEST_IMAGE
    build = submit(
        make_project(),
        """
        env: {FROM_PIPELINE: 'yes'}
        steps:
          - name: where
            run: |
              cat /etc/hostname
              test -f /.dockerenv && echo in a container
              echo $GOCI_WORKSPACE $FROM_PIPELINE
        """,
    )
    build = run_one(build)
    assert build.status == Status.SUCCESS
    hostname, inside, workspace = lines_of(build, "where")
    assert hostname != socket.gethostname()
    assert inside == "in a container"
    assert workspace == "/workspace yes"
    # The build page and the API show the image it really ran in.
    assert Step.objects.get(job__build=build, name="where").image == TEST_IMAGE


def test_a_default_image_that_cannot_run_ends_every_step_in_error_with_the_reason(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.GOCI_HOST_STEPS, settings.GOCI_DEFAULT_IMAGE = "deny", TEST_IMAGE
    monkeypatch.setenv("GOCI_PULL_POLICY", "sometimes")  # the container executor refuses it
    build = run_one(
        submit(make_project(), "steps: [{name: a, run: 'true'}, {name: b, run: 'true'}]")
    )
    assert build.status == Status.ERROR
    job = Job.objects.get(build=build)
    assert job.error.startswith("GOCI_PULL_POLICY='sometimes': use one of")
    assert {(s.status, s.error) for s in Step.objects.filter(job=job)} == {
        (Status.ERROR, job.error)
    }


def test_allow_builds_the_environment_of_a_host_step_from_scratch(
    tmp_path: Path, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.GOCI_HOST_STEPS = "allow"
    for name in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "WORKER_PRIVATE"):
        monkeypatch.setenv(name, f"the worker's {name}")
    monkeypatch.setenv("TZ", "Europe/Paris")
    pipeline = """
        env: {FROM_PIPELINE: 'yes'}
        steps:
          - {name: env, run: 'ls -A "$HOME"; touch "$HOME/left"; env'}
        """
    project = make_project()
    first, second = run_one(submit(project, pipeline)), run_one(submit(project, pipeline))
    assert first.status == second.status == Status.SUCCESS
    envs = []
    for build in (first, second):
        lines = lines_of(build, "env")
        # `ls -A` printed nothing: HOME was empty although the build before left a file.
        env = dict(line.split("=", 1) for line in lines)
        assert not {"DATABASE_URL", "REDIS_URL", "SECRET_KEY", "WORKER_PRIVATE"} & env.keys()
        assert env["PATH"] == HOST_PATH
        assert env["TZ"] == "Europe/Paris"
        assert env["LANG"]
        assert env["FROM_PIPELINE"] == "yes"
        assert env["GOCI_BUILD_ID"] == str(build.pk)
        assert env["GOCI_PROJECT"] == "demo"
        assert env["CI"] == "true"
        home, workspace = Path(env["HOME"]), Path(env["GOCI_WORKSPACE"])
        assert not home.is_relative_to(workspace)
        assert home.parent == tmp_path / "ws"
        envs.append(env)
    assert envs[0]["HOME"] != envs[1]["HOME"]
    assert list((tmp_path / "ws").iterdir()) == []  # HOME went with the workspace


@pytest.mark.parametrize(
    "escape",
    ["setsid -f sleep {marker}", "sh -c '(sleep {marker} &) &'"],
    ids=["setsid", "double-fork"],
)
def test_no_process_of_a_host_step_outlives_it(settings: Any, marker: str, escape: str) -> None:
    settings.GOCI_HOST_STEPS = "allow"
    command = escape.format(marker=marker)
    build = submit(
        make_project(),
        f"""
        steps:
          - {{name: escape, run: "{command}; sleep 0.2; echo left behind"}}
          - {{name: after, run: 'true'}}
        """,
    )
    began = time.monotonic()
    build = run_one(build)
    assert build.status == Status.SUCCESS
    assert lines_of(build, "escape") == ["left behind"]
    assert processes_matching(f"sleep {marker}") == []
    assert time.monotonic() - began < 10


def test_a_canceled_host_step_stops_the_processes_it_moved_out_too(
    tmp_path: Path, settings: Any, marker: str
) -> None:
    settings.GOCI_HOST_STEPS = "allow"
    started = tmp_path / "started"
    build = submit(
        make_project(),
        f"""
        steps:
          - name: long
            run: |
              setsid -f sh -c 'trap "" TERM; sleep {marker}'
              touch {started}
              sleep {marker}
        """,
    )
    worker = Worker()

    def run() -> None:
        try:
            worker.run_one_job()
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    try:
        wait_for(started.exists, 10, "the step to start")
        time.sleep(0.3)  # the last sleep starts
        services.build_cancel(build=build)
        wait_for(lambda: Build.objects.get(pk=build.pk).status == Status.CANCELED, 10, "cancel")
    finally:
        thread.join(timeout=15)
        worker.close()
    assert processes_matching(f"sleep {marker}") == []


def test_goci_run_still_gives_host_steps_the_users_environment(tmp_path: Path) -> None:
    write_pipeline(tmp_path, "steps: [{name: env, run: 'echo \"$MY_OWN|$HOME|$PATH\"'}]")
    done = goci("run", cwd=tmp_path, env={"MY_OWN": "kept", "GOCI_HOST_STEPS": "deny"})
    assert done.returncode == 0, done.stderr
    assert f"env | kept|{os.environ['HOME']}|{os.environ['PATH']}" in done.stdout


@pytest.mark.postgres
def test_a_worker_process_refuses_host_steps_by_default_and_scrubs_them_when_allowed(
    tmp_path: Path, marker: str
) -> None:
    require_postgres()
    project = make_project()
    pipeline = f"steps: [{{name: env, run: 'setsid -f sleep {marker}; env'}}]"
    refused = submit(project, pipeline)
    worker = start_worker(tmp_path, "deny", GOCI_HOST_STEPS="deny", GOCI_DEFAULT_IMAGE="")
    try:
        wait_for(lambda: finished(refused), 30, "the refused build")
    finally:
        stop(worker)
    job = Job.objects.get(build=refused)
    assert (job.status, job.error) == (Status.ERROR, f"{REFUSED} (steps without image: env)")

    allowed = submit(project, pipeline)
    worker = start_worker(
        tmp_path,
        "allow",
        GOCI_HOST_STEPS="allow",
        SECRET_KEY="the-worker-s-own",  # noqa: S106  (a test value)
    )
    try:
        wait_for(lambda: finished(allowed), 30, "the allowed build")
    finally:
        stop(worker)
    assert Build.objects.get(pk=allowed.pk).status == Status.SUCCESS
    env = dict(line.split("=", 1) for line in lines_of(allowed, "env"))
    assert not {"DATABASE_URL", "SECRET_KEY", "GOCI_DATA_DIR", "PYTHONPATH"} & env.keys()
    assert env["GOCI_BUILD_ID"] == str(allowed.pk)
    assert processes_matching(f"sleep {marker}") == []


@pytest.mark.postgres
def test_a_killed_worker_s_host_step_stops_with_everything_it_started(
    tmp_path: Path, marker: str
) -> None:
    require_postgres()
    started = tmp_path / "started"
    submit(
        make_project(),
        f"""
        steps:
          - name: long
            run: |
              setsid -f sleep {marker}
              touch {started}
              sleep {marker}
        """,
    )
    worker = start_worker(tmp_path, "doomed", GOCI_HOST_STEPS="allow")
    try:
        wait_for(started.exists, 30, "the step to start")
    finally:
        worker.kill()
        worker.wait()
    wait_for(lambda: processes_matching(f"sleep {marker}") == [], 5, "the step's processes to end")


def finished(build: Build) -> bool:
    return Build.objects.get(pk=build.pk).status in FINISHED


def stop(worker: subprocess.Popen[bytes]) -> None:
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0


def test_goci_up_says_at_start_what_becomes_of_steps_without_image(settings: Any) -> None:
    from goci.server import host_steps_policy

    settings.GOCI_HOST_STEPS, settings.GOCI_DEFAULT_IMAGE = "deny", ""
    assert host_steps_policy().startswith("Steps without an image are refused")
    settings.GOCI_DEFAULT_IMAGE = "debian:12"
    assert host_steps_policy() == ("Steps without an image run in debian:12 (GOCI_DEFAULT_IMAGE).")
    settings.GOCI_HOST_STEPS = "allow"
    assert "with Goci's own rights" in host_steps_policy()


# The worker contains host steps in a PID namespace where the machine allows it (CI
# does, as root), else under the Python supervisor: both ways, directly.
CONTAINMENT = [pytest.param(True, id="pid-namespace"), pytest.param(False, id="supervisor")]


@pytest.mark.parametrize("namespace", CONTAINMENT)
def test_each_way_of_containing_a_step_leaves_nothing_behind_and_keeps_its_exit_code(
    tmp_path: Path, marker: str, namespace: bool
) -> None:
    from runners.executors.local import LocalExecutor, pid_namespace_ok
    from tests.helpers import Recorder, pipeline

    if namespace and not pid_namespace_ok():
        pytest.fail("this machine refuses PID namespaces: unshare and setpriv (util-linux)")
    executor = LocalExecutor(tmp_path, supervise=True, namespace=namespace)
    assert bool(executor.prefix) is namespace
    recorder = Recorder()
    from runners.engine import Engine

    Engine(
        pipeline(
            f"""
            steps:
              - name: escape
                run: |
                  setsid -f sleep {marker}
                  sh -c '(sleep {marker} &) &'
                  echo out; exit 7
            """
        ),
        executor,
        recorder,
    ).run()
    assert recorder.text("escape") == ["out"]
    assert recorder.results["escape"].exit_code == 7
    assert processes_matching(f"sleep {marker}") == []


@pytest.mark.parametrize("namespace", CONTAINMENT)
def test_each_way_of_containing_a_step_stops_it_on_cancel(
    tmp_path: Path, marker: str, namespace: bool
) -> None:
    from runners.engine import Engine
    from runners.executors.local import LocalExecutor
    from tests.helpers import Recorder, pipeline

    executor = LocalExecutor(tmp_path, supervise=True, namespace=namespace)
    recorder = Recorder()
    engine = Engine(
        pipeline(
            f"""
            steps:
              - name: long
                run: |
                  setsid -f sh -c 'trap "" TERM; sleep {marker}'
                  touch started; sleep {marker}
            """
        ),
        executor,
        recorder,
    )
    threading.Timer(0.5, engine.cancel).start()
    began = time.monotonic()
    engine.run()
    assert recorder.status("long") == "canceled"
    assert time.monotonic() - began < 5
    assert (tmp_path / "started").exists()
    assert processes_matching(f"sleep {marker}") == []


@pytest.mark.parametrize("bad", ["maybe", "yes", "Deny it"])
def test_a_bad_goci_host_steps_is_a_clear_error_at_start(tmp_path: Path, bad: str) -> None:
    from tests.test_security_settings import production_env, run_manage

    done = run_manage(production_env(tmp_path / "data", GOCI_HOST_STEPS=bad), "check")
    assert done.returncode != 0
    assert f"GOCI_HOST_STEPS must be 'deny' or 'allow', not {bad.lower()!r}" in done.stderr
