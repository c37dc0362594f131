"""The job queue and its lease protocol, for local workers (runners/worker.py) and
remote runners (runners/api.py) alike: claim, heartbeat, reap, release, and every write
of the one that holds a job (steps, log batches, planning, finish). The lease is the
single source of truth for who owns a job; `Job.attempt` fences out a worker or runner
that lost it: each write names the job and its attempt, and is refused with LeaseLost
once the reaper (or a release) has moved the job on.

On PostgreSQL a claim locks one queued row with FOR UPDATE SKIP LOCKED, so any
number of workers claim different jobs without waiting for each other. SQLite has
no row locks (its select_for_update is a no-op): there every claim is also a
compare-and-swap on the status, and SQLite runs one writer at a time.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import BooleanField, Exists, F, Q, QuerySet, Value
from django.db.models.expressions import RawSQL
from django.db.models.functions import Coalesce
from django.utils import timezone

from builds import deployments
from builds.models import FINISHED, Build, Job, LogChunk, Status, Step
from builds.pipeline import Pipeline, for_cell, load
from builds.services import (
    CHECKOUT_STEP,
    InvalidRequest,
    build_settle,
    check_checkout_name,
    check_matrix_size,
    create_cell_jobs,
    create_steps,
    notify_queue,
)
from runners.models import Runner

RUNNER_LOST = "runner lost"


class LeaseLost(Exception):
    """This worker no longer owns the job: another attempt (or nobody) does."""


def lease_deadline() -> Any:
    return timezone.now() + timedelta(seconds=settings.GOCI_LEASE_SECONDS)


def jobs_fitting(jobs: QuerySet[Job], labels: Sequence[str]) -> QuerySet[Job]:
    """The jobs whose labels are all among `labels` (a runner with no label takes only
    jobs that need none), in SQL: jsonb containment on PostgreSQL, JSON1 on SQLite."""
    if connection.vendor == "postgresql":
        return jobs.filter(labels__contained_by=list(labels))
    # No label of the job outside the runner's: the runner's come as one JSON array.
    outside = (
        "NOT EXISTS (SELECT 1 FROM json_each(builds_job.labels) "
        "WHERE value NOT IN (SELECT value FROM json_each(%s)))"
    )
    # The SQL is constant; the labels are one bound parameter.
    return jobs.filter(RawSQL(outside, (json.dumps(list(labels)),), BooleanField()))  # noqa: S611


def job_claim(
    *, worker: str, labels: Sequence[str] = (), runner: Runner | None = None
) -> Job | None:
    """Take the oldest queued job whose labels are all in `labels`, and its lease, or
    None. One transaction claims the job, marks its build running and reads all the
    worker needs to run it: the job comes with its build and project (job.build) and
    its steps (job.steps.all()). With a `runner`, the job records it, and nothing is
    claimed unless its row is active (not paused, draining or revoked): checked in
    the same query, so an admin's pause holds from the next claim on. A job whose
    build deploys waits while that deployment waits for approval or for another one
    of its environment (builds/deployments.py); claiming it starts the deployment."""
    try:
        return _claim(worker, labels, runner)
    except deployments.Busy:
        return None  # another build's deployment to that environment started first


def _claim(worker: str, labels: Sequence[str], runner: Runner | None) -> Job | None:
    with transaction.atomic():
        queued = Job.objects.filter(status=Status.QUEUED).exclude(deployments.held_jobs())
        if runner is not None:
            queued = queued.filter(
                Exists(
                    Runner.objects.filter(
                        pk=runner.pk, state=Runner.State.ACTIVE, revoked_at__isnull=True
                    )
                )
            )
        job = (
            # of=self: the joined build and project rows stay unlocked, so a submit
            # holding its project's lock does not make this claim skip the job.
            jobs_fitting(queued, labels)
            .select_for_update(skip_locked=True, of=("self",))
            .select_related("build__project")
            .prefetch_related("steps")
            .order_by("id")
            .first()
        )
        if job is None:
            return None
        now, expires = timezone.now(), lease_deadline()
        claimed = Job.objects.filter(pk=job.pk, status=Status.QUEUED).update(
            status=Status.RUNNING,
            worker=worker,
            runner=runner,
            lease_expires_at=expires,
            started_at=now,
        )
        if not claimed:
            return None  # SQLite: another worker took it first
        deployments.start(job, now)  # Busy undoes the claim
        Build.objects.filter(pk=job.build_id).update(
            status=Status.RUNNING, started_at=Coalesce("started_at", Value(now))
        )
    job.status, job.worker, job.started_at = Status.RUNNING, worker, now
    job.runner = runner
    job.lease_expires_at = expires
    job.build.status = Status.RUNNING
    job.build.started_at = job.build.started_at or now
    return job


def job_heartbeat(*, job_id: int, attempt: int) -> bool:
    """Renew the lease; True if the build was asked to cancel. LeaseLost if the job is
    no longer this attempt's."""
    renewed = Job.objects.filter(pk=job_id, attempt=attempt, status=Status.RUNNING).update(
        lease_expires_at=lease_deadline()
    )
    if not renewed:
        raise LeaseLost(f"job {job_id} attempt {attempt} is no longer ours")
    return bool(
        Build.objects.filter(jobs__id=job_id).values_list("cancel_requested", flat=True).first()
    )


def _requeue(job: Job) -> None:
    """Attempt + 1, back in the queue, its steps as if never run (the job row is locked)."""
    job.attempt += 1
    job.status = Status.QUEUED
    job.worker = ""
    job.runner = None
    job.lease_expires_at = None
    job.started_at = None
    job.save(
        update_fields=["attempt", "status", "worker", "runner", "lease_expires_at", "started_at"]
    )
    Step.objects.filter(job=job).update(
        status=Status.QUEUED, exit_code=None, error="", started_at=None, finished_at=None
    )
    notify_queue()


def jobs_reap() -> int:
    """Re-queue jobs whose lease expired (attempt + 1), or end them in error "runner
    lost" after GOCI_JOB_MAX_ATTEMPTS. Safe to run in every worker at once."""
    reaped = 0
    with transaction.atomic():
        expired = Job.objects.select_for_update(skip_locked=True).filter(
            status=Status.RUNNING, lease_expires_at__lt=timezone.now()
        )
        for job in expired:
            reaped += 1
            if job.attempt < settings.GOCI_JOB_MAX_ATTEMPTS:
                _requeue(job)
                continue
            now = timezone.now()
            job.status = Status.ERROR
            job.error = RUNNER_LOST
            job.finished_at = now
            job.lease_expires_at = None
            job.save(update_fields=["status", "error", "finished_at", "lease_expires_at"])
            Step.objects.filter(job=job, status=Status.RUNNING).update(
                status=Status.ERROR, error=RUNNER_LOST, finished_at=now
            )
            Step.objects.filter(job=job, status=Status.QUEUED).update(status=Status.SKIPPED)
            build_settle(Build.objects.select_for_update().get(pk=job.build_id), now)
    return reaped


def job_release(*, job_id: int, attempt: int, runner: Runner | None = None) -> bool:
    """A worker or runner shutting down (or lacking the labels of a pipeline read only
    at checkout) hands its job back: re-queued as the next attempt. False if that
    attempt was not running (with `runner`: not held by it)."""
    with transaction.atomic():
        held = Job.objects.select_for_update().filter(
            Q(pk=job_id) & Q(attempt=attempt) & Q(status=Status.RUNNING)
        )
        if runner is not None:
            held = held.filter(runner=runner)
        job = held.first()
        if job is not None:
            _requeue(job)
    return job is not None


# ---------------------------------------------------------------------------
# Fenced writes of the worker or runner that holds attempt `attempt` of job `job_id`.


@contextlib.contextmanager
def fenced(job_id: int, attempt: int, runner: Runner | None = None) -> Iterator[None]:
    """One transaction of the worker that owns this attempt of the job (and with a
    `runner`, only if that runner holds it), or LeaseLost. Its first statement locks
    the job row and renews the lease; the reaper takes the same lock to move a job on,
    so each write either lands before it or is refused. Several writes share the one
    commit (a step's start, a log batch and its end)."""
    with transaction.atomic():
        held = Job.objects.filter(pk=job_id, attempt=attempt, status=Status.RUNNING)
        if runner is not None:
            held = held.filter(runner=runner)
        if not held.update(lease_expires_at=lease_deadline()):
            raise LeaseLost(f"job {job_id} attempt {attempt} is no longer ours")
        yield


# A step's row as the worker reports it: the whole state, so a write is idempotent.
STEP_STATE = (
    "status",
    "exit_code",
    "error",
    "started_at",
    "finished_at",
    "image",
    "image_id",
    "digests",
)


def job_report(
    *,
    job_id: int,
    attempt: int,
    steps: Mapping[int, Mapping[str, Any]] | None = None,
    chunks: Sequence[tuple[int, int, Sequence[str]]] = (),
) -> None:
    """What the worker learned since its last write, in one fenced transaction: log
    batches (step id, first line number, lines) and the state of the steps that
    changed (step id -> every field of STEP_STATE). A retry whose first try did
    commit fails on a batch's unique key, having written nothing twice."""
    with fenced(job_id, attempt):
        _write(attempt, steps or {}, chunks)


def _write(
    attempt: int,
    steps: Mapping[int, Mapping[str, Any]],
    chunks: Sequence[tuple[int, int, Sequence[str]]],
) -> None:
    if chunks:
        LogChunk.objects.bulk_create(
            LogChunk(
                step_id=step_id,
                attempt=attempt,
                first_line=first,
                line_count=len(lines),
                text="\n".join(lines),
            )
            for step_id, first, lines in chunks
        )
    # An UPDATE each: bulk_update's CASE expressions cost ~5 ms of Python a step.
    for step_id, state in steps.items():
        Step.objects.filter(pk=step_id).update(**state)


def step_start(*, job_id: int, attempt: int, name: str, image: str = "") -> None:
    """Mark one step running now (a one-off write; workers report with job_report)."""
    with fenced(job_id, attempt):
        Step.objects.filter(job_id=job_id, name=name).update(
            status=Status.RUNNING, started_at=timezone.now(), exit_code=None, error="", image=image
        )


def step_finish(
    *,
    job_id: int,
    attempt: int,
    name: str,
    status: str,
    exit_code: int | None,
    error: str | None,
    started: bool,
) -> None:
    """End one step now (a one-off write; workers report with job_report)."""
    with fenced(job_id, attempt):
        Step.objects.filter(job_id=job_id, name=name).update(
            status=status,
            exit_code=exit_code,
            error=error or "",
            finished_at=timezone.now() if started else None,
        )


def log_append(
    *, job_id: int, attempt: int, step_id: int, first_line: int, lines: Sequence[str]
) -> None:
    """Store a batch of consecutive lines (the database is the record of a log)."""
    job_report(job_id=job_id, attempt=attempt, chunks=[(step_id, first_line, lines)])


def job_finish(*, job_id: int, attempt: int, status: str, error: str = "") -> str:
    """End the job and settle its build; returns the build's status."""
    now = timezone.now()
    with fenced(job_id, attempt):
        Job.objects.filter(pk=job_id).update(
            status=status, error=error, finished_at=now, lease_expires_at=None
        )
        build = Build.objects.select_for_update(of=("self",)).get(jobs__id=job_id)
        build_settle(build, now)
    return build.status


def build_plan(
    *, job_id: int, attempt: int, pipeline: str, filename: str, runner: Runner | None = None
) -> Pipeline:
    """The pipeline read from the repository at the build's commit: validated
    (PipelineError: nothing changes), kept as the build's snapshot, its steps created
    after "clone", its `runs_on` as the job's labels. Fenced: only the worker that owns
    this attempt plans it. With a matrix, this job becomes its first cell and each other
    cell a queued job of its own (with its own checkout); the pipeline returned is this
    job's cell's."""
    parsed = load(pipeline, filename)
    check_matrix_size(parsed)
    check_checkout_name(parsed)
    with fenced(job_id, attempt, runner):
        job = Job.objects.select_related("build__project", "build__author").get(pk=job_id)
        Build.objects.filter(pk=job.build_id).update(pipeline=pipeline)
        job.build.pipeline = pipeline
        deployments.record_at_plan(job, parsed)  # Refused: an InvalidRequest
        job.steps.exclude(name=CHECKOUT_STEP).delete()  # a retried attempt plans again
        if parsed.matrix:
            create_cell_jobs(job.build, parsed, checkout=True, first=job)
            notify_queue()
            return for_cell(parsed, dict(parsed.matrix[0]))
        # Known only now: a worker without these labels hands the job back (worker.py).
        Job.objects.filter(pk=job_id).update(labels=list(parsed.runs_on))
        create_steps(job, parsed, after_clone=True)
    return parsed


def plan_held(build_id: int) -> str | None:
    """Why the build's deployment must wait, now that its pipeline read at checkout is
    planned (an approval, another deployment of its environment), or None: its job is
    then handed back (job_release) and claimed again once it may go."""
    build = Build.objects.get(pk=build_id)
    return deployments.waiting_reason(build)


def build_set_changed_files(
    *, job_id: int, attempt: int, changed_files: list[str] | None, runner: Runner | None = None
) -> None:
    """The files a pull request changes, as the worker's checkout found them (`git
    diff base...head`), for `when: {path: ...}`; None: unknown. Fenced."""
    with fenced(job_id, attempt, runner):
        Build.objects.filter(jobs__id=job_id).update(changed_files=changed_files)


# ---------------------------------------------------------------------------
# Remote runners (runners/api.py): the same lease, claimed and renewed over HTTP. Every
# call after a claim names the job and its attempt, as the worker's writes do.


class NotHeld(Exception):
    """The runner does not hold this job (a 404, as for a job that does not exist)."""


def runner_claim(*, runner: Runner) -> Job | None:
    """A job for this runner, or None: when it is paused, draining or revoked, when it
    runs `capacity` jobs already, or when no queued job's labels are all its own."""
    if runner.revoked_at is not None or runner.state != Runner.State.ACTIVE:
        return None
    if Job.objects.filter(runner=runner, status=Status.RUNNING).count() >= runner.capacity:
        return None
    return job_claim(worker=runner.name, labels=runner.labels, runner=runner)


def runner_check(*, runner: Runner, job_id: int, attempt: int) -> None:
    """NotHeld if the job does not exist, or its current attempt is another runner's;
    LeaseLost if the attempt named is no longer the current running one (the reaper or
    a release moved the job on: the runner stops it and cleans up)."""
    job = Job.objects.filter(pk=job_id).values("attempt", "status", "runner_id").first()
    if job is None or (job["attempt"] == attempt and job["runner_id"] != runner.pk):
        raise NotHeld(f"job {job_id} not found")
    if job["attempt"] != attempt or job["status"] != Status.RUNNING:
        raise LeaseLost(f"job {job_id} attempt {attempt} is no longer yours: it was taken")


@contextlib.contextmanager
def _held(runner: Runner, job_id: int, attempt: int) -> Iterator[None]:
    """A fenced write of the runner's refused: NotHeld (404) or LeaseLost (409)."""
    try:
        yield
    except LeaseLost:
        runner_check(runner=runner, job_id=job_id, attempt=attempt)
        raise


def runner_lease(*, runner: Runner, job_id: int, attempt: int) -> bool:
    """Renew the lease; True if the build was asked to cancel."""
    runner_check(runner=runner, job_id=job_id, attempt=attempt)
    return job_heartbeat(job_id=job_id, attempt=attempt)


def _unstored(
    step_id: int, attempt: int, first: int, lines: Sequence[str]
) -> list[tuple[int, int, Sequence[str]]]:
    """The parts of a batch not stored yet: a batch resent whole, or one overlapping what
    was stored (a runner that retried with more lines), keeps only its new lines."""
    last = first + len(lines) - 1
    stored = (
        LogChunk.objects.filter(step_id=step_id, attempt=attempt, first_line__lte=last)
        .annotate(end=F("first_line") + F("line_count") - 1)
        .filter(end__gte=first)
        .order_by("first_line")
        .values_list("first_line", "end")
    )
    pieces, at = [], first
    for start, end in stored:
        if start > at:
            pieces.append((step_id, at, lines[at - first : start - first]))
        at = max(at, end + 1)
    if at <= last:
        pieces.append((step_id, at, lines[at - first :]))
    return pieces


@dataclass
class Reported:
    """What a report stored, for the live page: the steps whose state changed (as they
    are now) and each batch of lines not stored before, with its step."""

    steps: list[Step]
    lines: list[tuple[Step, int, Sequence[str]]]


def runner_report(
    *,
    runner: Runner,
    job_id: int,
    attempt: int,
    steps: Mapping[int, Mapping[str, Any]],
    chunks: Sequence[tuple[int, int, Sequence[str]]],
) -> Reported:
    """Store step states and log batches in one fenced transaction, each line once
    however often a batch is sent: the job row's lock orders concurrent resends, and
    each stores only the lines not stored yet. Step ids must be the job's
    (InvalidRequest)."""
    with _held(runner, job_id, attempt), fenced(job_id, attempt, runner):
        own = {step.pk: step for step in Step.objects.filter(job_id=job_id).select_related("job")}
        if strangers := sorted({*steps, *(step for step, _, _ in chunks)} - set(own)):
            raise InvalidRequest(f"step {strangers[0]} is not a step of job {job_id}")
        batches = [
            piece
            for step, first, lines in chunks
            if lines
            for piece in _unstored(step, attempt, first, lines)
        ]
        _write(attempt, steps, batches)
    for step_id, fields in steps.items():
        for name, value in fields.items():
            setattr(own[step_id], name, value)
    return Reported(
        steps=[own[step_id] for step_id in steps],
        lines=[(own[step_id], first, lines) for step_id, first, lines in batches],
    )


def runner_plan(
    *, runner: Runner, job_id: int, attempt: int, pipeline: str, filename: str
) -> Pipeline:
    """build_plan for the runner that holds the attempt (PipelineError: nothing changes),
    of a build whose pipeline is read at checkout only (InvalidRequest)."""
    runner_check(runner=runner, job_id=job_id, attempt=attempt)  # 404 or 409 first
    planned = Build.objects.filter(jobs__id=job_id).values_list("checkout", "pipeline").get()
    if not planned[0] or planned[1]:
        raise InvalidRequest(
            f"job {job_id}'s build has its pipeline already (it came with `next`): "
            "plan only a build whose pipeline is read at checkout"
        )
    with _held(runner, job_id, attempt):
        return build_plan(
            job_id=job_id, attempt=attempt, pipeline=pipeline, filename=filename, runner=runner
        )


def runner_changed_files(
    *, runner: Runner, job_id: int, attempt: int, changed_files: list[str] | None
) -> None:
    with _held(runner, job_id, attempt):
        build_set_changed_files(
            job_id=job_id, attempt=attempt, changed_files=changed_files, runner=runner
        )


def runner_release(*, runner: Runner, job_id: int, attempt: int) -> None:
    """Hand the job back to the queue (attempt + 1). Sent again, it answers 409: the
    attempt is no longer current."""
    if not job_release(job_id=job_id, attempt=attempt, runner=runner):
        runner_check(runner=runner, job_id=job_id, attempt=attempt)
        raise LeaseLost(f"job {job_id} attempt {attempt} is no longer running")


def runner_finish(*, runner: Runner, job_id: int, attempt: int, status: str, error: str) -> str:
    """End the job; the build's status. A resent finish of a job this runner already
    ended answers as the first did."""
    try:
        runner_check(runner=runner, job_id=job_id, attempt=attempt)
    except LeaseLost:
        ended = (
            Job.objects.filter(pk=job_id, attempt=attempt, runner=runner, status__in=FINISHED)
            .values_list("build__status", flat=True)
            .first()
        )
        if ended is None:
            raise
        return ended
    return job_finish(job_id=job_id, attempt=attempt, status=status, error=error)
