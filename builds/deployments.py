"""Environments and deployments (docs/deployments.md): the only code that changes them.

A step with `environment:` makes its build a deployment to that environment. The
deployment is recorded when the build is queued (`record`, in build_create's
transaction), and its state follows the build:

    waiting ──approve──► queued ──claimed──► running ──build settles──► success, failure,
       │                    │                                          error, canceled,
       └──reject──► rejected └──build canceled──► canceled              skipped

- Protection: only maintainers may deploy to a protected environment. A build that no
  maintainer asked for (a push, a schedule of a developer) waits for a maintainer's
  approval; with `approval`, every deployment waits for another maintainer than the
  one who asked.
- Concurrency: at most one deployment of an environment runs at a time. The queue
  (runners/queue.py job_claim) takes no job of a build whose deployment waits for
  approval or for another one of its environment, and marks the deployment running in
  the transaction that claims the job, under a lock on the environment's row.
- Rollback: `redeploy` runs an earlier successful deployment's pipeline snapshot again
  at its commit, with trigger `rollback`.
"""

from __future__ import annotations

import contextlib
from typing import Any

from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.utils import timezone

from builds import access
from builds.errors import InvalidRequest
from builds.models import (
    FINISHED,
    Build,
    Deployment,
    Environment,
    Job,
    Project,
    Role,
    Status,
    Step,
)
from builds.pipeline import Pipeline
from goci import audit

State = Deployment.State
OPEN = (State.WAITING, State.QUEUED, State.RUNNING)


class Refused(InvalidRequest):
    """A deployment cannot be done, approved or rejected so; the message says why
    (an InvalidRequest, which every form and API route that queues a build shows).
    `status`: 403 when the person may not, 409 when the deployment's state does not
    allow it."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


def may_deploy(user: User | None, project: Project) -> bool:
    return user is not None and access.has_role(access.role_on(user, project), Role.MAINTAINER)


def record(build: Build, parsed: Pipeline, *, rollback_of: Deployment | None = None) -> None:
    """Record the build's deployments (in build_create's transaction, the project row
    locked): one per environment its steps name, made if new. Refused if its author
    may not deploy to a protected one and is a person who asked for it (a push or a
    schedule's build waits for a maintainer's approval instead)."""
    for name, url in parsed.environments().items():
        environment, _ = Environment.objects.get_or_create(project=build.project, name=name)
        if url and environment.url != url:
            Environment.objects.filter(pk=environment.pk).update(url=url)
        asked_by_person = build.trigger in (
            Build.Trigger.API,
            Build.Trigger.MANUAL,
            Build.Trigger.RERUN,
            Build.Trigger.ROLLBACK,
        )
        maintainer = may_deploy(build.author, build.project)
        if environment.protected and asked_by_person and not maintainer:
            message = f"{name} is a protected environment: only maintainers may deploy to it"
            raise Refused(message, 403)
        waits = environment.protected and (environment.approval or not maintainer)
        Deployment.objects.create(
            environment=environment,
            build=build,
            state=State.WAITING if waits else State.QUEUED,
            url=url or environment.url,
            commit=build.commit,
            ref=build.ref,
            author=build.author,
            rollback_of=rollback_of,
        )
        audit.record(
            "deployment.create",
            project=build.project,
            obj=build,
            details={"environment": name, "number": build.number, "waits": waits},
        )


def record_at_plan(job: Job, parsed: Pipeline) -> None:
    """Record the deployments of a build whose pipeline was read only at checkout (a
    push's), in build_plan's transaction, and start them if they may go now. If one
    must wait (an approval, another deployment), its job is handed back by the worker
    or runner (queue.plan_held) and claimed again when it may go."""
    build = job.build
    Deployment.objects.filter(build=build).delete()  # a retried attempt plans again
    record(build, parsed)
    if build.deployments.filter(state=State.WAITING).exists():
        return
    with contextlib.suppress(Busy):
        start(job, timezone.now())


def held_jobs() -> Q:
    """The queued jobs that must not be claimed now: their build's deployment waits for
    approval, or for a running deployment of another build to its environment."""
    waiting = Deployment.objects.filter(build=OuterRef("build"), state=State.WAITING)
    busy = Deployment.objects.filter(
        build=OuterRef("build"),
        state=State.QUEUED,
        environment__deployments__state=State.RUNNING,
    )
    return Q(Exists(waiting)) | Q(Exists(busy))


class Busy(Exception):
    """Another build's deployment to the environment started first (the claim is undone)."""


def start(job: Job, now: Any) -> None:
    """Mark the claimed job's queued deployments running (in job_claim's transaction).
    The environments' rows are locked first, so two claims for one environment take
    turns; Busy if another build's deployment runs there by then."""
    queued = Deployment.objects.filter(build_id=job.build_id, state=State.QUEUED)
    ids = list(queued.values_list("environment_id", flat=True))
    if not ids:
        return
    list(Environment.objects.select_for_update().filter(pk__in=ids).order_by("pk"))
    running = Deployment.objects.filter(environment_id__in=ids, state=State.RUNNING).exclude(
        build_id=job.build_id
    )
    if running.exists():
        raise Busy
    queued.update(state=State.RUNNING, started_at=now)


def settle(build: Build, now: Any) -> list[Deployment]:
    """Finish the build's open deployments once the build has finished (in
    build_settle's transaction): success if every step of it with that environment
    succeeded, skipped if none ran, else the worst of them. Returns those finished."""
    finished = []
    for deployment in build.deployments.filter(state__in=OPEN).select_related("environment"):
        state: str
        if deployment.state == State.WAITING and build.status == Status.CANCELED:
            state = State.CANCELED
        else:
            state = _state_of(build, deployment.environment.name)
        deployment.state = state
        deployment.finished_at = now
        deployment.save(update_fields=["state", "finished_at"])
        finished.append(deployment)
    return finished


def _state_of(build: Build, environment: str) -> str:
    names = [
        step.name
        for step in _pipeline_steps(build)
        if step.environment is not None and step.environment.name == environment
    ]
    statuses = set(
        Step.objects.filter(job__build=build, name__in=names).values_list("status", flat=True)
    )
    if not statuses or statuses <= {Status.SKIPPED}:
        return State.CANCELED if build.status == Status.CANCELED else State.SKIPPED
    for worst in (Status.ERROR, Status.FAILURE, Status.CANCELED):
        if worst in statuses:
            return str(worst)
    if statuses <= {Status.SUCCESS, Status.SKIPPED}:
        return State.SUCCESS
    return State.CANCELED  # queued or running steps of a finished build: it was stopped


def _pipeline_steps(build: Build) -> tuple[Any, ...]:
    from builds.pipeline import PipelineError, load  # noqa: PLC0415

    if not build.pipeline:
        return ()
    try:
        return load(build.pipeline, build.project.pipeline_path).steps
    except PipelineError:
        return ()


def approve(*, deployment: Deployment, user: User) -> Deployment:
    """A maintainer lets a waiting deployment go on: into the queue."""
    return _decide(deployment, user, approve=True)


def reject(*, deployment: Deployment, user: User) -> Deployment:
    """A maintainer turns a waiting deployment down: its build is canceled."""
    return _decide(deployment, user, approve=False)


def _decide(deployment: Deployment, user: User, *, approve: bool) -> Deployment:
    from builds import services  # noqa: PLC0415  (services imports this module)

    with transaction.atomic():
        deployment = (
            Deployment.objects.select_for_update()
            .select_related("environment__project", "build")
            .get(pk=deployment.pk)
        )
        project = deployment.environment.project
        if not may_deploy(user, project):
            raise access.Denied(project, Role.MAINTAINER, access.role_on(user, project))
        if deployment.state != State.WAITING:
            raise Refused(f"this deployment is {deployment.state}, not waiting for approval")
        if (
            deployment.environment.approval
            and deployment.author_id is not None
            and deployment.author_id == user.pk
        ):
            raise Refused(
                f"{deployment.environment.name} needs a second person: another maintainer "
                "than the one who asked for the deployment must approve it",
                403,
            )
        deployment.approved_by = user
        deployment.state = State.QUEUED if approve else State.REJECTED
        if not approve:
            deployment.finished_at = timezone.now()
        deployment.save(update_fields=["approved_by", "state", "finished_at"])
        audit.record(
            "deployment.approve" if approve else "deployment.reject",
            project=project,
            obj=deployment.build,
            details={
                "environment": deployment.environment.name,
                "number": deployment.build.number,
            },
        )
        if approve:
            services.notify_queue()
        else:
            from builds import notifications  # noqa: PLC0415

            notifications.queue_deployment(deployment)
    if not approve:
        services.build_cancel(build=deployment.build)
    return deployment


def redeploy(*, deployment: Deployment, user: User) -> Build:
    """Run an earlier successful deployment's pipeline snapshot again at its commit
    (trigger `rollback`); recorded as a new deployment of that environment."""
    from builds import services  # noqa: PLC0415

    if deployment.state != State.SUCCESS:
        raise Refused(
            f"only a successful deployment can be deployed again; this one is {deployment.state}"
        )
    old = deployment.build
    build, _ = services.build_create(
        project=old.project,
        pipeline=old.pipeline,
        author=user,
        ref=old.ref,
        commit=old.commit,
        message=f"Redeploy of #{old.number} to {deployment.environment.name}",
        env=old.env,
        inputs=old.inputs,
        trigger=Build.Trigger.ROLLBACK,
        rollback_of=deployment,
    )
    return build


def environment_update(*, environment: Environment, **fields: Any) -> Environment:
    """A maintainer protects an environment (or not), or asks for approvals."""
    for name, value in fields.items():
        setattr(environment, name, value)
    if environment.approval:
        environment.protected = True  # an approval is a protection
    with transaction.atomic():
        environment.save()
        audit.record(
            "environment.update",
            project=environment.project,
            obj=environment,
            details={
                "environment": environment.name,
                "protected": environment.protected,
                "approval": environment.approval,
            },
        )
    return environment


def environment_get_or_create(*, project: Project, name: str) -> Environment:
    environment, _ = Environment.objects.get_or_create(project=project, name=name)
    return environment


def current(environment: Environment) -> Deployment | None:
    """What is deployed there now: its last successful deployment."""
    return (
        environment.deployments.filter(state=State.SUCCESS)
        .select_related("build", "author")
        .order_by("-finished_at", "-id")
        .first()
    )


def history(environment: Environment) -> QuerySet[Deployment]:
    return environment.deployments.select_related("build", "author", "approved_by").order_by("-id")


def waiting_reason(build: Build) -> str | None:
    """Why a queued build's deployment holds it, or None."""
    if build.status in FINISHED:
        return None
    for deployment in build.deployments.filter(state__in=(State.WAITING, State.QUEUED)):
        name = deployment.environment.name
        if deployment.state == State.WAITING:
            return f"waiting for approval to deploy to {name}"
        other = (
            Deployment.objects.filter(environment_id=deployment.environment_id, state=State.RUNNING)
            .exclude(build=build)
            .select_related("build")
            .first()
        )
        if other is not None:
            return f"waiting for the deployment of #{other.build.number} to {name} to finish"
    return None
