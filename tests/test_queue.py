"""The queue and the worker in this process: claims, leases, fencing, logs, cancel."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from builds import services
from builds.models import Build, Job, LogChunk, Status, Step
from runners import queue
from runners.owner import owner_label
from runners.queue import RUNNER_LOST, job_claim, job_heartbeat, jobs_reap
from runners.reporting import LogSink, Masker
from runners.worker import Worker
from tests.queue_helpers import log_lines, make_project, submit, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

TWO_STEPS = """
steps:
  - {name: hello, run: 'echo hello from $GOCI_PROJECT build $GOCI_BUILD_NUMBER'}
  - {name: count, run: seq 5}
"""


@pytest.fixture(autouse=True)
def workspaces(tmp_path: Path, settings: object) -> None:
    settings.GOCI_WORKSPACE_ROOT = tmp_path / "ws"  # type: ignore[attr-defined]


def test_claim_takes_the_oldest_queued_job_with_a_lease() -> None:
    project = make_project()
    first, second = submit(project, TWO_STEPS), submit(project, TWO_STEPS)
    job = job_claim(worker="w1")
    assert job is not None
    assert job.build_id == first.pk
    assert (job.status, job.worker, job.attempt) == (Status.RUNNING, "w1", 1)
    assert job.lease_expires_at is not None
    assert job.lease_expires_at > timezone.now() + timedelta(seconds=20)
    assert Build.objects.get(pk=first.pk).status == Status.RUNNING
    other = job_claim(worker="w2")
    assert other is not None
    assert other.build_id == second.pk
    assert job_claim(worker="w3") is None


def test_build_numbers_count_per_project() -> None:
    one, two = make_project("one"), make_project("two", user="bob")
    assert [submit(one, TWO_STEPS).number for _ in range(3)] == [1, 2, 3]
    assert submit(two, TWO_STEPS).number == 1


def test_heartbeat_renews_the_lease_and_reports_a_cancel() -> None:
    build = submit(make_project(), TWO_STEPS)
    job = job_claim(worker="w1")
    assert job is not None
    Job.objects.filter(pk=job.pk).update(lease_expires_at=timezone.now())
    assert job_heartbeat(job_id=job.pk, attempt=1) is False
    assert Job.objects.get(pk=job.pk).lease_expires_at > timezone.now() + timedelta(seconds=20)
    services.build_cancel(build=build)
    assert job_heartbeat(job_id=job.pk, attempt=1) is True


def test_the_reaper_requeues_an_expired_job_as_the_next_attempt() -> None:
    build = submit(make_project(), TWO_STEPS)
    job = job_claim(worker="w1")
    assert job is not None
    queue.step_start(job_id=job.pk, attempt=1, name="hello")
    Job.objects.filter(pk=job.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert jobs_reap() == 1
    job.refresh_from_db()
    assert (job.status, job.attempt, job.worker) == (Status.QUEUED, 2, "")
    assert set(Step.objects.filter(job=job).values_list("status", flat=True)) == {Status.QUEUED}
    again = job_claim(worker="w2")
    assert again is not None
    assert (again.pk, again.attempt, again.build_id) == (job.pk, 2, build.pk)


def test_late_writes_of_a_lost_attempt_are_refused() -> None:
    submit(make_project(), TWO_STEPS)
    job = job_claim(worker="w1")
    assert job is not None
    step = Step.objects.get(job=job, name="hello")
    Job.objects.filter(pk=job.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    jobs_reap()
    with pytest.raises(queue.LeaseLost):
        queue.log_append(job_id=job.pk, attempt=1, step_id=step.pk, first_line=1, lines=["x"])
    with pytest.raises(queue.LeaseLost):
        queue.step_start(job_id=job.pk, attempt=1, name="hello")
    with pytest.raises(queue.LeaseLost):
        queue.job_finish(job_id=job.pk, attempt=1, status=Status.SUCCESS)
    with pytest.raises(queue.LeaseLost):
        job_heartbeat(job_id=job.pk, attempt=1)
    assert not LogChunk.objects.exists()


@override_settings(GOCI_JOB_MAX_ATTEMPTS=2)
def test_after_the_last_attempt_the_job_ends_in_error_runner_lost() -> None:
    build = submit(make_project(), TWO_STEPS)
    for _ in range(2):
        job = job_claim(worker="w")
        assert job is not None
        queue.step_start(job_id=job.pk, attempt=job.attempt, name="hello")
        Job.objects.filter(pk=job.pk).update(lease_expires_at=timezone.now() - timedelta(1))
        jobs_reap()
    job.refresh_from_db()
    build.refresh_from_db()
    assert (job.status, job.error) == (Status.ERROR, RUNNER_LOST)
    assert build.status == Status.ERROR
    assert build.finished_at is not None
    steps = dict(Step.objects.filter(job=job).values_list("name", "status"))
    assert steps == {"hello": Status.ERROR, "count": Status.SKIPPED}


def test_the_worker_runs_a_build_and_stores_every_line() -> None:
    project = make_project("web")
    build = submit(project, TWO_STEPS)
    worker = Worker(name="w1")
    try:
        assert worker.run_one_job() is True
        assert worker.run_one_job() is False
    finally:
        worker.close()
    build.refresh_from_db()
    assert build.status == Status.SUCCESS
    assert build.started_at is not None
    assert build.finished_at is not None
    hello, count = Step.objects.filter(job__build=build).order_by("position")
    assert (hello.status, hello.exit_code) == (Status.SUCCESS, 0)
    assert log_lines(hello) == [(1, "hello from web build 1")]
    assert log_lines(count) == [(n, str(n)) for n in range(1, 6)]
    assert hello.started_at is not None
    assert hello.finished_at is not None


def test_a_failing_step_fails_the_build_and_skips_the_rest() -> None:
    build = submit(
        make_project(),
        """
        steps:
          - {name: broken, run: 'echo no; exit 3'}
          - {name: after, run: 'true'}
        """,
    )
    worker = Worker()
    try:
        worker.run_one_job()
    finally:
        worker.close()
    build.refresh_from_db()
    assert build.status == Status.FAILURE
    steps = {s.name: (s.status, s.exit_code, s.error) for s in Step.objects.all()}
    assert steps == {
        "broken": (Status.FAILURE, 3, ""),
        "after": (Status.SKIPPED, None, "'broken' failed"),
    }


def test_cancel_of_a_queued_build_ends_it_at_once_and_is_idempotent() -> None:
    build = submit(make_project(), TWO_STEPS)
    services.build_cancel(build=build)
    services.build_cancel(build=build)
    build.refresh_from_db()
    assert build.status == Status.CANCELED
    assert build.finished_at is not None
    assert job_claim(worker="w") is None
    assert set(Step.objects.values_list("status", flat=True)) == {Status.CANCELED}


def test_cancel_reaches_a_running_step_within_2_seconds(tmp_path: Path) -> None:
    marker = tmp_path / "started"
    build = submit(
        make_project(),
        f"""
        steps:
          - {{name: long, run: 'touch {marker}; sleep 60'}}
          - {{name: after, run: 'true'}}
        """,
    )
    worker = Worker()

    def run() -> None:
        try:
            worker.run_one_job()
        finally:
            connection.close()  # this thread's connection

    thread = threading.Thread(target=run)
    thread.start()
    try:
        wait_for(marker.exists, 10, "the step to start")
        began = time.monotonic()
        services.build_cancel(build=build)
        wait_for(lambda: Build.objects.get(pk=build.pk).status == Status.CANCELED, 5, "cancel")
        assert time.monotonic() - began < 2
    finally:
        thread.join(timeout=10)
        worker.close()
    steps = dict(Step.objects.values_list("name", "status"))
    assert steps == {"long": Status.CANCELED, "after": Status.SKIPPED}


def test_rerun_queues_a_new_build_of_the_same_snapshot() -> None:
    build = submit(make_project(), TWO_STEPS, ref="refs/heads/main", commit="abc123")
    again = services.build_rerun(build=build, author=None)
    assert (again.number, again.pipeline, again.ref, again.commit) == (
        2,
        build.pipeline,
        "refs/heads/main",
        "abc123",
    )
    assert (again.trigger, again.rerun_of_id, again.status) == ("rerun", build.pk, "queued")


def test_when_uses_the_branch_of_the_ref_and_the_trigger_as_event() -> None:
    build = submit(
        make_project(),
        """
        steps:
          - {name: deploy, run: 'true', when: {branch: main, event: push}}
          - {name: always, run: 'echo $GOCI_REF $GOCI_EVENT', needs: []}
        """,
        ref="refs/heads/main",
        trigger="push",
    )
    worker = Worker()
    try:
        worker.run_one_job()
    finally:
        worker.close()
    steps = dict(Step.objects.filter(job__build=build).values_list("name", "status"))
    assert steps == {"deploy": Status.SUCCESS, "always": Status.SUCCESS}
    assert log_lines(Step.objects.get(name="always")) == [(1, "refs/heads/main push")]


def test_the_sink_masks_secrets_and_stores_consecutive_batches() -> None:
    submit(make_project(), TWO_STEPS)
    job = job_claim(worker="w")
    assert job is not None
    steps = dict(Step.objects.filter(job=job).values_list("name", "id"))
    sink = LogSink(job, steps, publisher=None, secrets=["hunter2", "s3cr3t-token"])
    sink.add("hello", 1, ["password=hunter2", "plain"])
    sink.add("hello", 3, [f"line {n}" for n in range(3, 2503)])  # over FLUSH_LINES: stored
    sink.add("hello", 2503, ["token s3cr3t-token end"])
    assert LogChunk.objects.count() == 1
    sink.flush()
    lines = log_lines(Step.objects.get(name="hello"))
    assert [n for n, _ in lines] == list(range(1, 2504))
    assert lines[0] == (1, "password=********")
    assert lines[-1] == (2503, "token ******** end")


def test_the_masker_masks_the_longest_secret_first() -> None:
    assert Masker(["abc", "abcdef"])(["xabcdefx abc", "none"]) == ["x********x ********", "none"]


def test_each_job_gets_a_fresh_workspace_removed_afterwards(tmp_path: Path) -> None:
    build = submit(make_project(), "steps: [{run: 'pwd; touch made-here'}]")
    worker = Worker()
    try:
        worker.run_one_job()
    finally:
        worker.close()
    job = Job.objects.get(build=build)
    assert log_lines(Step.objects.get(job=job)) == [(1, str(tmp_path / "ws" / f"job{job.pk}-a1"))]
    assert list((tmp_path / "ws").iterdir()) == []


def test_a_dead_worker_s_workspace_is_removed_by_the_next_worker(tmp_path: Path) -> None:
    dead = tmp_path / "ws" / "job999-a1"
    dead.mkdir(parents=True)
    (dead / ".goci-owner").write_text("some-old-boot:12345:1")
    alive = tmp_path / "ws" / "job998-a1"
    alive.mkdir()
    (alive / ".goci-owner").write_text(owner_label())
    worker = Worker()
    try:
        assert worker.run_one_job() is False
    finally:
        worker.close()
    assert not dead.exists()
    assert alive.exists()  # its owner (this process) still runs it
