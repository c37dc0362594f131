"""The runner API under /api/runner/v1/: what a remote runner calls over HTTP(S), with no
database, Redis or SECRET_KEY of its own (docs/runners.md).

A runner registers with a registration token and gets its own token (`Authorization:
Bearer goci_runner_…`); a revoked or unregistered runner's token is a 401 at its very
next call. `next` long-polls for a job (at most 30 s); every call after it names the
job and the attempt, and runners/queue.py fences it: an attempt that is no longer
current gets 409 (the runner stops that job and cleans up), another runner's job 404.
Nothing is masked here (runners mask before sending), but everything is checked:
sizes (413), types, numbers and text (422), never a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from datetime import datetime
from functools import wraps
from typing import Annotated, Any, Literal

from asgiref.sync import iscoroutinefunction, sync_to_async
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import InterfaceError, OperationalError, connection
from django.http import HttpRequest, HttpResponse
from django.urls import URLPattern, URLResolver
from ninja import Field, NinjaAPI, P, PathEx, QueryEx, Schema
from ninja import Status as Reply
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.security import HttpBearer
from pydantic import AfterValidator, ConfigDict
from pydantic_core import PydanticCustomError

from builds import access_tokens, services
from builds import api as user_api
from builds.live import STEP_VALUES, Publisher, step_message
from builds.models import Job, Step
from builds.pipeline import MAX_BYTES, MAX_TAGS, Pipeline, PipelineError
from builds.secrets import CLONE_SSH_KEY, CLONE_TOKEN, SecretError, SecretRefused, secret_for_goci
from goci.audit import context
from runners import queue
from runners import services as runner_services
from runners.checkout import MAX_CHANGED_FILES as CHANGED_FILES_LIMIT
from runners.lines import MAX_LINE_BYTES
from runners.models import Runner
from runners.reporting import storable
from runners.worker import (
    JOB_TOKEN_LIFETIME,
    JOB_TOKEN_SLACK,
    REAP_EVERY,
    QueueListener,
    branch_of,
    fetch_ref,
    job_pipeline,
    job_secrets,
    push_refused,
    server_env,
)

MAX_WAIT = 30  # seconds a `next` may wait for a job
POLL_SECONDS = 3.0  # how often a waiting `next` looks again (SQLite; a lost NOTIFY)
MAX_BODY = 2 * 1024 * 1024  # below DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB)
MAX_BATCH_LINES = 10_000
MAX_ID = 2**63 - 1
MAX_LINE = user_api.MAX_LINE
MAX_ERROR = 10_000
MAX_PIPELINE = MAX_BYTES  # characters of a pipeline read at checkout
MAX_CHANGED_FILES = CHANGED_FILES_LIMIT


class RunnerToken(HttpBearer):
    """A remote runner's own token; nothing else (user tokens and JWTs are 401 here)."""

    def authenticate(self, request: HttpRequest, token: str) -> Runner | None:
        return runner_services.runner_for_token(token)


def _too_big(request: HttpRequest) -> HttpResponse | None:
    """A 413 for a body over MAX_BODY (its declared size first: refused unread)."""
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    try:
        size = declared if declared > MAX_BODY else len(request.body)
    except RequestDataTooBig:
        size = MAX_BODY + 1
    if size <= MAX_BODY:
        return None
    return user_api._error(413, f"the request body is over {MAX_BODY} bytes: send smaller batches")


def _limit_body(run: Callable[..., Any]) -> Callable[..., Any]:
    """Before ninja reads the body (`next`, the long poll, is a coroutine)."""
    if iscoroutinefunction(run):

        @wraps(run)
        async def limited_async(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            return _too_big(request) or await run(request, *args, **kwargs)

        return limited_async

    @wraps(run)
    def limited(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        return _too_big(request) or run(request, *args, **kwargs)

    return limited


runner_api = NinjaAPI(
    title="Goci runner API",
    version="1",
    description=(
        "What a remote runner calls (`goci runner`). Register with a registration token "
        "(made by an admin) to get the runner's token; every other call needs it: "
        "`Authorization: Bearer goci_runner_…`. Every call after `next` names the job and "
        "its attempt: 409 means the attempt is no longer current (stop the job, clean "
        "up); 404 a job this runner does not hold. Errors are JSON with a `detail`."
    ),
    auth=RunnerToken(),
    parser=user_api.JsonObjectParser(),
    urls_namespace="runner_api",
    docs=user_api.LocalSwagger(),
)


# "view" mode wraps each operation before its authentication and parsing.
runner_api.add_decorator(_limit_body, mode="view")


def _runner(request: HttpRequest) -> Runner:
    runner: Runner = request.auth  # type: ignore[attr-defined]  # set by RunnerToken
    return runner


# ---------------------------------------------------------------------------
# Schemas


def _lines(value: list[str]) -> list[str]:
    """A batch's lines as the worker stores them: NUL and lone surrogates as U+FFFD,
    each at most MAX_LINE_BYTES characters. Checked on the whole batch at once (one
    join, one search), after pydantic's own check that each is a string: a batch
    holds up to 10,000 lines, and a validator per line cost more than the rest of the
    call."""
    joined = "\n".join(value)
    if storable(joined) != joined:
        value = [storable(line) for line in value]
    if len(joined) > MAX_LINE_BYTES and max(map(len, value)) > MAX_LINE_BYTES:
        raise PydanticCustomError(
            "line_too_long", f"a log line is at most {MAX_LINE_BYTES} characters"
        )
    return value


Text = user_api.Text
Lines = Annotated[list[str], AfterValidator(_lines)]
Label = Annotated[str, Field(max_length=50), user_api.Storable]
StepId = Annotated[int, Field(ge=1, le=MAX_ID)]
# A `build:` step's results: the image's ID ("" before it is built) and each tag's digest.
IMAGE_ID = r"^(sha256:[0-9a-f]{64})?$"
DIGEST = r"^sha256:[0-9a-f]{64}$"
ImageTag = Annotated[str, Field(min_length=1, max_length=255), user_api.Storable]
LineNumber = Annotated[int, Field(ge=1, le=MAX_LINE)]
Ended = Literal["success", "failure", "error", "canceled"]
StepStatus = Literal["queued", "running", "success", "failure", "error", "canceled", "skipped"]


class ErrorOut(Schema):
    detail: str


class RegisterIn(Schema):
    model_config = ConfigDict(extra="forbid")

    registration_token: Annotated[str, Field(max_length=200), user_api.Storable]
    name: Text = Field(max_length=100, description="Unique among runners.")
    labels: list[Label] = Field(default_factory=list, max_length=runner_services.MAX_LABELS)
    capacity: int = Field(1, ge=1, le=runner_services.MAX_CAPACITY, description="Jobs at once.")
    version: Text = Field("", max_length=50)
    platform: Text = Field("", max_length=100, description="e.g. linux/amd64")


class RegisteredOut(Schema):
    runner_id: int
    name: str
    token: str = Field(description="The runner's token: shown this once, never again.")


class StepOut(Schema):
    id: int
    name: str
    position: int
    needs: list[str]
    image: str


class CloneOut(Schema):
    """What the step "clone" needs: the project's clone URL and credentials (its
    GOCI_CLONE_TOKEN / GOCI_CLONE_SSH_KEY secrets: mask them), and what to fetch."""

    fetch_ref: str = Field(description="The ref to fetch if the commit cannot be fetched by id.")
    pull_request: bool
    base_commit: str = Field(description="A pull request's base, for its changed files.")
    target_branch: str
    token: str
    ssh_key: str
    error: str = Field(description="Not '': the credentials could not be read; the clone fails so.")


class JobOut(Schema):
    job_id: int
    attempt: int = Field(description="Name it, with job_id, in every call about this job.")
    build_id: int
    build_number: int
    project: str = Field(description="The project's slug.")
    pipeline: str = Field(description="The pipeline's YAML snapshot ('' : read at checkout).")
    pipeline_path: str
    checkout: bool = Field(description="Clone the repository first (the step 'clone').")
    repo_url: str
    ref: str
    commit: str
    branch: str | None = Field(description="The branch `when:` sees: a PR's target branch.")
    event: str
    fork: bool = Field(description="A fork's code: it gets no secrets.")
    push_refused: str | None = Field(
        None,
        description="Why its `build:` steps must not push ('pull_request', 'fork'); "
        "null when they may.",
    )
    changed_files: list[str] | None
    labels: list[str]
    matrix: dict[str, str] = Field(
        description="The job's matrix cell ({} if none): it runs that cell's pipeline."
    )
    env: dict[str, str] = Field(description="The build's variables and Goci's (GOCI_*).")
    steps: list[StepOut]
    job_token: str = Field(description="GOCI_JOB_TOKEN: reads this build while it runs.")
    lease_seconds: int = Field(description="Renew the lease well within this (a third).")
    secrets: dict[str, str] = Field(
        description="The values of the secrets its steps may use, by name (none for a "
        "fork's code, nor before `plan` when the pipeline is read at checkout). Mask them."
    )
    secrets_error: str = Field(description="Not '': why the secrets are refused; no step runs.")
    clone: CloneOut | None = Field(description="With `checkout`: how to fetch the commit.")


class PlanIn(Schema):
    model_config = ConfigDict(extra="forbid")

    pipeline: Annotated[str, Field(max_length=MAX_PIPELINE), user_api.Storable]
    filename: Annotated[str, Field(max_length=500), user_api.Storable]


class PlanOut(Schema):
    steps: list[StepOut] = Field(description="Every step of the job, 'clone' too, with ids.")
    matrix: dict[str, str] = Field(
        description="With `matrix:`, this job is its first cell: run that cell's pipeline."
    )
    missing_labels: list[str] = Field(
        description="Labels of `runs_on` this runner lacks: hand the job back (`release`)."
    )
    held: str = Field(
        "",
        description="Why the build's deployment must wait (an approval, another deployment "
        "of its environment): hand the job back (`release`); it is claimed again when it "
        "may go. Empty: go on.",
    )
    secrets: dict[str, str]
    secrets_error: str


class ChangedFilesIn(Schema):
    model_config = ConfigDict(extra="forbid")

    changed_files: list[Annotated[str, Field(max_length=4096), user_api.Storable]] | None = Field(
        max_length=MAX_CHANGED_FILES, description="A pull request's changed files; null: unknown."
    )


class LeaseOut(Schema):
    cancel_requested: bool = Field(description="True: stop the job and finish it canceled.")
    lease_seconds: int


class StepStateIn(Schema):
    """The fields of a step that changed; those left out stay as they are."""

    model_config = ConfigDict(extra="forbid")

    status: StepStatus | None = None
    exit_code: int | None = Field(None, ge=-(2**31), le=2**31 - 1)
    error: Annotated[str, Field(max_length=MAX_ERROR), user_api.Storable] | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    image: Annotated[str, Field(max_length=500), user_api.Storable] | None = None
    image_id: Annotated[str, Field(pattern=IMAGE_ID)] | None = None
    digests: (
        Annotated[dict[ImageTag, Annotated[str, Field(pattern=DIGEST)]], Field(max_length=MAX_TAGS)]
        | None
    ) = None


class ReportIn(Schema):
    model_config = ConfigDict(extra="forbid")

    steps: dict[StepId, StepStateIn] = Field(
        default_factory=dict, description="Step id -> the fields of its state that changed."
    )
    chunks: list[tuple[StepId, LineNumber, Lines]] = Field(
        default_factory=list,
        description="Log batches: [step id, first line number, [lines]]. Idempotent by "
        "(step, line number): lines stored already are skipped, so resend freely.",
    )


class FinishIn(Schema):
    model_config = ConfigDict(extra="forbid")

    status: Ended
    error: Annotated[str, Field(max_length=MAX_ERROR), user_api.Storable] = ""


class FinishedOut(Schema):
    build_status: str


# ---------------------------------------------------------------------------
# Registration


@runner_api.post(
    "/register",
    auth=None,
    response={201: RegisteredOut, 401: ErrorOut, 409: ErrorOut, 422: ErrorOut},
    tags=["runner"],
)
def register(request: HttpRequest, payload: RegisterIn) -> Reply[dict[str, Any]]:
    """Trade a registration token for this runner's token. A single-use registration
    token works once. No Authorization header."""
    with context.acting(context.Origin(via=context.API, request=request, name=payload.name)):
        runner, secret = runner_services.runner_register(
            registration_token=payload.registration_token,
            name=payload.name,
            labels=payload.labels,
            capacity=payload.capacity,
            version=payload.version,
            platform=payload.platform,
        )
    return Reply(201, {"runner_id": runner.pk, "name": runner.name, "token": secret})


@runner_api.post("/unregister", response={204: None, 401: ErrorOut}, tags=["runner"])
def unregister(request: HttpRequest) -> Reply[None]:
    """Remove this runner; its running jobs go back to the queue. Its token stops
    working."""
    runner = _runner(request)
    with context.acting(context.Origin(via=context.API, request=request, name=runner.name)):
        runner_services.runner_unregister(runner=runner)
    return Reply(204, None)


# ---------------------------------------------------------------------------
# The long poll. It holds no thread and no database connection while it waits: each
# look runs on the request's thread and closes its connection (outside a test's
# transaction), then the coroutine sleeps until a submit in this process wakes it
# (services.queue_changed) or POLL_SECONDS pass (a submit in another process).

_waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
_waiters_lock = threading.Lock()


def _wake(**_: object) -> None:
    with _waiters_lock:
        waiting = list(_waiters)
    for loop, event in waiting:
        loop.call_soon_threadsafe(event.set)


services.queue_changed.connect(_wake, weak=False, dispatch_uid="runner-api-wake")

# Submits in other processes (on PostgreSQL): one LISTEN connection per web process,
# opened by its first long poll. Expired leases are reaped by the long polls too, so a
# server with remote runners and no worker still hands lost jobs on.
_listener: QueueListener | None = None
_listen = True
_reaped_at = 0.0


def listening(on: bool) -> None:
    """Allow this process's LISTEN connection (the default), or close it, and the live
    publisher, and open no LISTEN until allowed again: tests close them before their
    database and channel layer go, and a long poll still in flight then must not open
    another."""
    global _listener, _listen, _publisher  # noqa: PLW0603
    listener = publisher = None
    with _waiters_lock:
        _listen = on
        if not on:
            listener, _listener = _listener, None
            publisher, _publisher = _publisher, None
    if listener is not None:
        listener.stop()
    if publisher is not None:
        publisher.close()


def _listen_and_reap() -> None:
    global _listener, _reaped_at  # noqa: PLW0603  (one of each per process)
    with _waiters_lock:
        if _listen and _listener is None and connection.vendor == "postgresql":
            _listener = QueueListener(_wake)
        reap = time.monotonic() - _reaped_at >= REAP_EVERY
        if reap:
            _reaped_at = time.monotonic()
    if reap:
        queue.jobs_reap()


def _look(runner_id: int) -> tuple[str, dict[str, Any] | None]:
    """("job", its payload), ("idle", None) to wait more, or ("stop", None)."""
    try:
        _listen_and_reap()
        runner = Runner.objects.filter(pk=runner_id, revoked_at__isnull=True).first()
        if runner is None or runner.state != Runner.State.ACTIVE:
            return "stop", None
        job = queue.runner_claim(runner=runner)
        if job is None:
            return "idle", None
        payload = _job_payload(job)
        running = {"type": "build.status", "build": job.build_id, "status": "running"}
        _live().publish(job.build_id, running)  # the page shows it without waiting to poll
        return "job", payload
    finally:
        if not connection.in_atomic_block:
            connection.close()


def _job_payload(job: Job) -> dict[str, Any]:
    build = job.build
    pipeline = None
    if build.pipeline:
        with contextlib.suppress(PipelineError, ValueError):  # the runner says so too
            pipeline = job_pipeline(job)
    timeout = pipeline.timeout if pipeline is not None else None
    lifetime = (timeout or JOB_TOKEN_LIFETIME) + JOB_TOKEN_SLACK
    return {
        "job_id": job.pk,
        "attempt": job.attempt,
        "build_id": build.pk,
        "build_number": build.number,
        "project": build.project.slug,
        "pipeline": build.pipeline,
        "pipeline_path": build.project.pipeline_path,
        "checkout": build.checkout,
        "repo_url": build.project.repo_url,
        "ref": build.ref,
        "commit": build.commit,
        "branch": branch_of(build),
        "event": server_env(build)["GOCI_EVENT"],
        "fork": build.fork,
        "push_refused": push_refused(build),
        "changed_files": build.changed_files,
        "labels": list(job.labels),
        "matrix": dict(job.matrix),
        "env": {**build.env, **server_env(build)},
        "steps": _steps(job),
        "job_token": access_tokens.issue_for_job(job, lifetime=lifetime),
        "lease_seconds": _lease_seconds(),
        **_secrets(job, pipeline),
        "clone": _clone(job) if build.checkout else None,
    }


def _steps(job: Job) -> list[dict[str, Any]]:
    return [
        {
            "id": step.pk,
            "name": step.name,
            "position": step.position,
            "needs": step.needs,
            "image": step.image,
        }
        for step in sorted(job.steps.all(), key=lambda step: step.position)
    ]


def _secrets(job: Job, pipeline: Pipeline | None) -> dict[str, Any]:
    """The job's secret values (worker.job_secrets), or why it may not have them."""
    if pipeline is None:
        return {"secrets": {}, "secrets_error": ""}
    try:
        return {"secrets": job_secrets(job.build, pipeline), "secrets_error": ""}
    except (SecretRefused, SecretError) as exc:
        return {"secrets": {}, "secrets_error": str(exc)}


def _clone(job: Job) -> dict[str, Any]:
    build = job.build
    out = {
        "fetch_ref": fetch_ref(build),
        "pull_request": build.pr_number is not None,
        "base_commit": build.base_commit,
        "target_branch": build.target_branch,
        "token": "",
        "ssh_key": "",
        "error": "",
    }
    try:
        out["token"] = secret_for_goci(build.project, CLONE_TOKEN) or ""
        out["ssh_key"] = secret_for_goci(build.project, CLONE_SSH_KEY) or ""
    except SecretError as exc:
        out["token"] = out["ssh_key"] = ""
        out["error"] = str(exc)
    return out


def _lease_seconds() -> int:
    return int(settings.GOCI_LEASE_SECONDS)


@runner_api.post(
    "/next",
    response={200: JobOut, 204: None, 401: ErrorOut, 422: ErrorOut},
    tags=["jobs"],
)
async def next_job(
    request: HttpRequest,
    wait: QueryEx[int, P(ge=0, le=MAX_WAIT, description="Seconds to wait for a job.")] = MAX_WAIT,
) -> Reply[dict[str, Any] | None]:
    """Claim a job whose labels are all among this runner's, waiting up to `wait`
    seconds for one (204: none came). A paused or draining runner, or one running
    `capacity` jobs, gets none."""
    runner_id = _runner(request).pk
    deadline = time.monotonic() + wait
    event = asyncio.Event()
    waiter = (asyncio.get_running_loop(), event)
    with _waiters_lock:
        _waiters.add(waiter)
    try:
        while True:
            event.clear()
            outcome, payload = await sync_to_async(_look)(runner_id)
            if outcome == "job":
                return Reply(200, payload)
            remaining = deadline - time.monotonic()
            if outcome == "stop" or remaining <= 0:
                return Reply(204, None)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout=min(POLL_SECONDS, remaining))
    finally:
        with _waiters_lock:
            _waiters.discard(waiter)


# ---------------------------------------------------------------------------
# Calls about one attempt of a job the runner holds.

JOB_ID = P(ge=1, le=MAX_ID, description="The job's id, from `next`.")
ATTEMPT = P(ge=1, le=MAX_LINE, description="The attempt, from `next`.")
JobPath = PathEx[int, JOB_ID]
AttemptPath = PathEx[int, ATTEMPT]
FENCED: dict[int, Any] = {401: ErrorOut, 404: ErrorOut, 409: ErrorOut, 413: ErrorOut, 422: ErrorOut}


@runner_api.post(
    "/jobs/{job_id}/{attempt}/lease", response={200: LeaseOut, **FENCED}, tags=["jobs"]
)
def lease(request: HttpRequest, job_id: JobPath, attempt: AttemptPath) -> dict[str, Any]:
    """Renew the job's lease (do it every third of `lease_seconds`). Says whether the
    build was asked to cancel."""
    canceled = queue.runner_lease(runner=_runner(request), job_id=job_id, attempt=attempt)
    return {"cancel_requested": canceled, "lease_seconds": _lease_seconds()}


@runner_api.post("/jobs/{job_id}/{attempt}/report", response={200: None, **FENCED}, tags=["jobs"])
def report(
    request: HttpRequest, job_id: JobPath, attempt: AttemptPath, payload: ReportIn
) -> Reply[None]:
    """Steps started or ended, and log batches, in one write (which renews the lease).
    At most 10,000 lines and 2 MiB a call."""
    lines = sum(len(chunk[2]) for chunk in payload.chunks)
    if lines > MAX_BATCH_LINES:
        raise HttpError(413, f"{lines} lines in one report; send at most {MAX_BATCH_LINES}")
    for _, first, chunk in payload.chunks:
        if first + len(chunk) - 1 > MAX_LINE:
            raise services.InvalidRequest(f"line numbers go up to {MAX_LINE}")
    reported = queue.runner_report(
        runner=_runner(request),
        job_id=job_id,
        attempt=attempt,
        steps={step: state.model_dump(exclude_unset=True) for step, state in payload.steps.items()},
        chunks=payload.chunks,
    )
    _publish_report(attempt, reported)
    return Reply(200, None)


@runner_api.post("/jobs/{job_id}/{attempt}/plan", response={200: PlanOut, **FENCED}, tags=["jobs"])
def plan(
    request: HttpRequest, job_id: JobPath, attempt: AttemptPath, payload: PlanIn
) -> dict[str, Any]:
    """For a build whose pipeline is read at checkout: send the pipeline file of the
    commit. It is validated (422 with every problem: end the job in error) and becomes
    the build's, with its steps; the answer gives their ids, the job's secrets, and the
    labels its `runs_on` needs that this runner lacks (then `release` the job)."""
    runner = _runner(request)
    parsed = queue.runner_plan(
        runner=runner,
        job_id=job_id,
        attempt=attempt,
        pipeline=payload.pipeline,
        filename=payload.filename,
    )
    job = Job.objects.select_related("build__project").get(pk=job_id)
    missing = sorted(set(parsed.runs_on) - set(runner.labels))
    held = "" if missing else queue.plan_held(job.build_id) or ""
    back = missing or held
    return {
        "steps": _steps(job),
        "matrix": dict(job.matrix),
        "missing_labels": missing,
        "held": held,
        **(_secrets(job, parsed) if not back else {"secrets": {}, "secrets_error": ""}),
    }


@runner_api.post(
    "/jobs/{job_id}/{attempt}/changed-files", response={204: None, **FENCED}, tags=["jobs"]
)
def changed_files(
    request: HttpRequest, job_id: JobPath, attempt: AttemptPath, payload: ChangedFilesIn
) -> Reply[None]:
    """A pull request's changed files, as the checkout found them (`git diff
    base...head`), for `when: {path: ...}`. Send them before `plan`."""
    queue.runner_changed_files(
        runner=_runner(request),
        job_id=job_id,
        attempt=attempt,
        changed_files=payload.changed_files,
    )
    return Reply(204, None)


@runner_api.post("/jobs/{job_id}/{attempt}/release", response={204: None, **FENCED}, tags=["jobs"])
def release(request: HttpRequest, job_id: JobPath, attempt: AttemptPath) -> Reply[None]:
    """Hand the job back to the queue, as the next attempt: a runner stopping before
    its job ends, or one that lacks the labels of the pipeline read at checkout."""
    queue.runner_release(runner=_runner(request), job_id=job_id, attempt=attempt)
    return Reply(204, None)


@runner_api.post(
    "/jobs/{job_id}/{attempt}/finish", response={200: FinishedOut, **FENCED}, tags=["jobs"]
)
def finish(
    request: HttpRequest, job_id: JobPath, attempt: AttemptPath, payload: FinishIn
) -> dict[str, Any]:
    """End the job (after its last report) with its status; the build's status is
    settled and returned. Sending it again answers the same."""
    status = queue.runner_finish(
        runner=_runner(request),
        job_id=job_id,
        attempt=attempt,
        status=payload.status,
        error=payload.error,
    )
    build_id = Job.objects.filter(pk=job_id).values_list("build_id", flat=True).get()
    _live().publish(build_id, {"type": "build.status", "build": build_id, "status": status})
    return {"build_status": status}


# ---------------------------------------------------------------------------
# Live pages: what a runner's report stored is published to the build's group, as a
# worker's reporter does (runners/reporting.py), after the commit; the database stays
# the record, a page that loads from it and then listens misses nothing.

_publisher: Publisher | None = None
LIVE_LINES = 2000  # lines a live message carries at most, as a worker's batches


def _live() -> Publisher:
    global _publisher  # noqa: PLW0603  (one per web process)
    with _waiters_lock:
        if _publisher is None:
            _publisher = Publisher()
        return _publisher


def _publish_report(attempt: int, reported: queue.Reported) -> None:
    """A step's lines come after it started and before it ended, as on the page."""
    if not reported.steps and not reported.lines:
        return
    build_id = (reported.steps or [line[0] for line in reported.lines])[0].job.build_id

    def state(step: Step) -> dict[str, Any]:
        values = {name: getattr(step, name) for name in STEP_VALUES}
        message = step_message({**values, "name": step.key})
        return {**message, "type": "step.status", "build": build_id}

    running = [step for step in reported.steps if step.status == "running"]
    messages = [state(step) for step in running]
    messages += [
        {
            "type": "log.lines",
            "build": build_id,
            "step": step.key,
            "attempt": attempt,
            "first": first + start,
            "lines": list(lines[start : start + LIVE_LINES]),
        }
        for step, first, lines in reported.lines
        for start in range(0, len(lines), LIVE_LINES)
    ]
    messages += [state(step) for step in reported.steps if step.status != "running"]
    publisher = _live()
    for message in messages:
        publisher.publish(build_id, message)


# ---------------------------------------------------------------------------
# Errors: every one is JSON with a `detail`.

_error = user_api._error


@runner_api.exception_handler(AuthenticationError)
def _unauthorized(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    response = _error(
        401,
        "a valid runner token is needed ('Authorization: Bearer goci_runner_…'); this "
        "runner may have been revoked or unregistered: register it again",
    )
    response["WWW-Authenticate"] = 'Bearer realm="goci-runner"'
    return response


@runner_api.exception_handler(HttpError)
def _http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    return user_api._http_error(request, exc)


@runner_api.exception_handler(ValidationError)
def _invalid(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    return user_api._invalid_request(request, exc)


@runner_api.exception_handler(services.InvalidRequest)
def _invalid_value(request: HttpRequest, exc: services.InvalidRequest) -> HttpResponse:
    return _error(422, str(exc), [{"message": str(exc)}])


@runner_api.exception_handler(runner_services.RegistrationRefused)
def _refused(request: HttpRequest, exc: runner_services.RegistrationRefused) -> HttpResponse:
    return _error(401, str(exc))


@runner_api.exception_handler(services.Conflict)
def _conflict(request: HttpRequest, exc: services.Conflict) -> HttpResponse:
    return _error(409, str(exc))


@runner_api.exception_handler(queue.LeaseLost)
def _taken(request: HttpRequest, exc: queue.LeaseLost) -> HttpResponse:
    return _error(
        409,
        f"the job was taken: {exc} (its lease expired or it was handed back); stop it and clean up",
    )


@runner_api.exception_handler(PipelineError)
def _invalid_pipeline(request: HttpRequest, exc: PipelineError) -> HttpResponse:
    return _error(422, str(exc), [{"message": str(exc)}])


@runner_api.exception_handler(queue.NotHeld)
def _not_held(request: HttpRequest, exc: queue.NotHeld) -> HttpResponse:
    return _error(404, str(exc))


@runner_api.exception_handler(OperationalError)
@runner_api.exception_handler(InterfaceError)
def _database_unavailable(request: HttpRequest, exc: Exception) -> HttpResponse:
    return user_api._database_unavailable(request, exc)


@runner_api.exception_handler(Exception)
def _internal_error(request: HttpRequest, exc: Exception) -> HttpResponse:
    return user_api._internal_error(request, exc)


def urls() -> tuple[list[URLPattern | URLResolver], str, str]:
    """The runner API's URLs, its 405s in JSON like the user API's."""
    return user_api.urls(runner_api)
