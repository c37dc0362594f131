"""Worker processes against real PostgreSQL: races, crashes, shutdown and outages.

Side effects (lines appended to a file by the steps) are counted, not statuses: a
step that ran twice shows up twice.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from django.db import connection

from builds.models import FINISHED, Build, Job, Status, Step
from runners import queue
from tests.conftest import ON_CI, need
from tests.queue_helpers import (
    log_lines,
    make_project,
    require_postgres,
    start_worker,
    submit,
    wait_for,
)

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def _postgres() -> None:
    require_postgres()


def stop(worker: subprocess.Popen[bytes], timeout: float = 15) -> int:
    worker.send_signal(signal.SIGTERM)
    return worker.wait(timeout=timeout)


def build_status(build: Build) -> str:
    return Build.objects.values_list("status", flat=True).get(pk=build.pk)


def test_four_workers_run_200_builds_and_every_step_exactly_once(tmp_path: Path) -> None:
    effects = tmp_path / "effects"
    project = make_project()
    pipeline = f"""
        steps:
          - {{name: a, run: 'echo $GOCI_BUILD_ID-a >> {effects}'}}
          - {{name: b, run: 'echo $GOCI_BUILD_ID-b >> {effects}'}}
    """
    builds = [submit(project, pipeline) for _ in range(200)]
    workers = [start_worker(tmp_path, f"w{i}", concurrency=2) for i in range(4)]
    try:
        wait_for(lambda: not Build.objects.exclude(status__in=FINISHED).exists(), 180, "200 builds")
    finally:
        codes = [stop(w) for w in workers]
    assert codes == [0, 0, 0, 0]
    ran = effects.read_text().split()
    assert len(ran) == 400
    assert sorted(ran) == sorted(f"{b.pk}-{s}" for b in builds for s in "ab")
    assert set(Build.objects.values_list("status", flat=True)) == {Status.SUCCESS}
    assert set(Job.objects.values_list("attempt", flat=True)) == {1}
    assert len(set(Job.objects.values_list("worker", flat=True))) > 1  # the work was shared


def test_a_killed_worker_s_job_runs_again_as_attempt_2_elsewhere(tmp_path: Path) -> None:
    effects = tmp_path / "effects"
    build = submit(
        make_project(),
        f"""
        steps:
          - {{name: slow, run: 'echo started >> {effects}; sleep 2; echo finished'}}
        """,
    )
    first = start_worker(tmp_path, "doomed")
    try:
        wait_for(effects.exists, 20, "the step to start on the first worker")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        first.kill()
    job = Job.objects.get(build=build)
    assert (job.status, job.worker, job.attempt) == (Status.RUNNING, "doomed", 1)
    second = start_worker(tmp_path, "rescuer")
    try:
        # The lease is 3 s: the reaper gives the job to attempt 2, which succeeds.
        wait_for(lambda: build_status(build) == Status.SUCCESS, 30, "attempt 2 to succeed")
    finally:
        assert stop(second) == 0
    job.refresh_from_db()
    assert (job.attempt, job.worker, job.status) == (2, "rescuer", Status.SUCCESS)
    step = Step.objects.get(job=job)
    assert log_lines(step, attempt=2) == [(1, "finished")]
    # The first attempt's writes are refused from now on: its log stays as it was.
    with pytest.raises(queue.LeaseLost):
        queue.log_append(job_id=job.pk, attempt=1, step_id=step.pk, first_line=1, lines=["x"])
    with pytest.raises(queue.LeaseLost):
        queue.job_finish(job_id=job.pk, attempt=1, status=Status.FAILURE)
    assert build_status(build) == Status.SUCCESS


def test_sigterm_lets_a_short_step_finish_and_exits_0(tmp_path: Path) -> None:
    marker = tmp_path / "started"
    build = submit(make_project(), f"steps: [{{run: 'touch {marker}; sleep 1.5; echo done'}}]")
    worker = start_worker(tmp_path, "w", GOCI_SHUTDOWN_GRACE="10")
    wait_for(marker.exists, 20, "the step to start")
    began = time.monotonic()
    assert stop(worker) == 0
    assert time.monotonic() - began < 5
    assert build_status(build) == Status.SUCCESS
    assert log_lines(Step.objects.get(job__build=build)) == [(1, "done")]


def test_sigterm_during_a_long_step_cancels_and_requeues_it(tmp_path: Path) -> None:
    marker = tmp_path / "started"
    build = submit(make_project(), f"steps: [{{run: 'touch {marker}; sleep 60'}}]")
    worker = start_worker(tmp_path, "w", GOCI_SHUTDOWN_GRACE="2")
    wait_for(marker.exists, 20, "the step to start")
    began = time.monotonic()
    assert stop(worker) == 0
    assert time.monotonic() - began < 6
    job = Job.objects.get(build=build)
    assert (job.status, job.attempt, job.worker) == (Status.QUEUED, 2, "")
    assert Step.objects.get(job=job).status == Status.QUEUED


def port_open(port: int) -> bool:
    with socket.socket() as conn:
        return conn.connect_ex(("127.0.0.1", port)) == 0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.redis
def test_redis_stopped_during_a_build_loses_no_line(tmp_path: Path) -> None:
    binary = shutil.which("redis-server")
    if binary is None:
        need("redis-server (Debian package redis-server)")
    port = free_port()
    redis = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: port_open(port), 10, "redis")
        build = submit(
            make_project(),
            "steps: [{name: talk, run: 'for i in $(seq 150); do echo line $i; sleep 0.02; done'}]",
        )
        worker = start_worker(tmp_path, "w", REDIS_URL=f"redis://127.0.0.1:{port}/0")
        step = Step.objects.get(job__build=build)
        wait_for(lambda: len(log_lines(step)) > 20, 20, "some lines while Redis is up")
        redis.kill()
        redis.wait()
        wait_for(lambda: build_status(build) in FINISHED, 30, "the build to finish")
        assert stop(worker) == 0
    finally:
        redis.kill()
    assert build_status(build) == Status.SUCCESS
    assert log_lines(step) == [(i, f"line {i}") for i in range(1, 151)]


def restart_postgres() -> None:
    configs = Path("/etc/postgresql")
    versions = sorted(p.name for p in configs.iterdir()) if configs.is_dir() else []
    if not versions or shutil.which("pg_ctlcluster") is None or os.geteuid() != 0:
        need("root and pg_ctlcluster to restart PostgreSQL")
    subprocess.run(
        [
            "pg_ctlcluster",
            "--skip-systemctl-redirect",
            versions[-1],
            "main",
            "restart",
            "-m",
            "fast",
        ],
        check=True,
        capture_output=True,
    )


def test_postgres_restarted_during_a_build_records_everything_once(tmp_path: Path) -> None:
    if not ON_CI and os.environ.get("GOCI_TEST_RESTART_POSTGRES") != "true":
        need("GOCI_TEST_RESTART_POSTGRES=true (this test restarts the PostgreSQL server)")
    build = submit(
        make_project(),
        "steps: [{name: talk, run: 'for i in $(seq 200); do echo line $i; sleep 0.02; done'}]",
    )
    worker = start_worker(tmp_path, "w", GOCI_LEASE_SECONDS="30")
    step = Step.objects.get(job__build=build)
    wait_for(lambda: len(log_lines(step)) > 10, 20, "some lines before the restart")
    connection.close()
    restart_postgres()
    connection.close()  # ours broke too

    def finished() -> bool:
        try:
            return build_status(build) in FINISHED
        except Exception:  # noqa: BLE001  (still starting up)
            connection.close()
            return False

    wait_for(finished, 60, "the build to finish after the restart")
    assert stop(worker) == 0
    build.refresh_from_db()
    assert build.status == Status.SUCCESS
    assert Job.objects.get(build=build).attempt == 1
    assert log_lines(step) == [(i, f"line {i}") for i in range(1, 201)]
