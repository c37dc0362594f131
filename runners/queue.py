"""The job queue: claim, lease, heartbeat, reap, release. The lease is the single
source of truth for who owns a job; `Job.attempt` fences out a worker that lost it.

On PostgreSQL a claim locks one queued row with FOR UPDATE SKIP LOCKED, so any
number of workers claim different jobs without waiting for each other. SQLite has
no row locks (its select_for_update is a no-op): there every claim is also a
compare-and-swap on the status, and SQLite runs one writer at a time.
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from builds.models import Build, Job, Status, Step
from builds.services import LeaseLost, build_settle, notify_queue

RUNNER_LOST = "runner lost"


def _lease() -> timedelta:
    return timedelta(seconds=settings.GOCI_LEASE_SECONDS)


def job_claim(*, worker: str) -> Job | None:
    """Take the oldest queued job and its lease, or None. One transaction claims the
    job, marks its build running and reads all the worker needs to run it: the job
    comes with its build and project (job.build) and its steps (job.steps.all())."""
    with transaction.atomic():
        job = (
            # of=self: the joined build and project rows stay unlocked, so a submit
            # holding its project's lock does not make this claim skip the job.
            Job.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("build__project")
            .prefetch_related("steps")
            .filter(status=Status.QUEUED)
            .order_by("id")
            .first()
        )
        if job is None:
            return None
        now = timezone.now()
        claimed = Job.objects.filter(pk=job.pk, status=Status.QUEUED).update(
            status=Status.RUNNING,
            worker=worker,
            lease_expires_at=now + _lease(),
            started_at=now,
        )
        if not claimed:
            return None  # SQLite: another worker took it first
        Build.objects.filter(pk=job.build_id).update(
            status=Status.RUNNING, started_at=Coalesce("started_at", Value(now))
        )
    job.status, job.worker, job.started_at = Status.RUNNING, worker, now
    job.lease_expires_at = now + _lease()
    job.build.status = Status.RUNNING
    job.build.started_at = job.build.started_at or now
    return job


def job_heartbeat(*, job_id: int, attempt: int) -> bool:
    """Renew the lease; True if the build was asked to cancel. LeaseLost if the job is
    no longer this attempt's."""
    renewed = Job.objects.filter(pk=job_id, attempt=attempt, status=Status.RUNNING).update(
        lease_expires_at=timezone.now() + _lease()
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
    job.lease_expires_at = None
    job.started_at = None
    job.save(update_fields=["attempt", "status", "worker", "lease_expires_at", "started_at"])
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


def job_release(*, job_id: int, attempt: int) -> None:
    """A worker shutting down hands its job back: re-queued as the next attempt."""
    with transaction.atomic():
        job = (
            Job.objects.select_for_update()
            .filter(Q(pk=job_id) & Q(attempt=attempt) & Q(status=Status.RUNNING))
            .first()
        )
        if job is not None:
            _requeue(job)
