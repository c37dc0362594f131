"""Workflows that change build state: the only place that writes builds, jobs, steps
and logs. Views, the API, the worker and the CLI call these.

The writes of the worker or runner that holds a job (steps, logs, planning, finish)
are fenced by the job's lease: they live with it in runners/queue.py.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from cryptography.fernet import InvalidToken
from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, connection, transaction
from django.db.models import Q, QuerySet
from django.dispatch import Signal
from django.utils import timezone

from builds import deployments, errors
from builds.clone_urls import clone_url_problem
from builds.models import (
    CELL_POSITIONS,
    FINISHED,
    TOKEN_SCOPES,
    ApiToken,
    Build,
    CommitStatus,
    Deployment,
    Job,
    Membership,
    Project,
    Role,
    Status,
    Step,
    WebhookDelivery,
    default_token_scopes,
)
from builds.pipeline import (
    Pipeline,
    cell_may_fail,
    cell_name,
    check_inputs,
    for_cell,
    load,
    plan,
)
from builds.secrets import decrypt, encrypt
from goci import audit

log = logging.getLogger(__name__)

QUEUE_CHANNEL = "goci_queue"
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# A request that cannot be accepted as it is; the message says what to fix.
InvalidRequest = errors.InvalidRequest


TOKEN_PREFIX = "goci_"  # noqa: S105  (a public prefix, not a secret)
MAX_TOKEN_DAYS = 3650  # ten years: beyond it "never" says it better


def token_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def token_scopes_problem(scopes: Sequence[str]) -> str | None:
    """What is wrong with a list of scopes, or None (the API and the CLI say the same)."""
    unknown = [scope for scope in scopes if scope not in TOKEN_SCOPES]
    if unknown:
        return f"unknown scope {unknown[0]!r}: choose from {', '.join(TOKEN_SCOPES)}"
    if not scopes:
        return f"give at least one scope of {', '.join(TOKEN_SCOPES)}"
    return None


def token_create(
    *,
    user: User,
    name: str,
    scopes: Sequence[str] | None = None,
    expires_in_days: int | None = None,
) -> tuple[ApiToken, str]:
    """A new API token and its secret, which is shown once and never stored. Scopes
    default to read and run (models.default_token_scopes); no expiry: it lasts until
    revoked."""
    chosen = list(dict.fromkeys(scopes)) if scopes is not None else default_token_scopes()
    if problem := token_scopes_problem(chosen):
        raise InvalidRequest(f"scopes: {problem}")
    if expires_in_days is not None and not 1 <= expires_in_days <= MAX_TOKEN_DAYS:
        raise InvalidRequest(f"expires_in_days: give 1 to {MAX_TOKEN_DAYS}, or none")
    expires_at = (
        timezone.now() + timedelta(days=expires_in_days) if expires_in_days is not None else None
    )
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with transaction.atomic():
        token = ApiToken.objects.create(
            user=user,
            name=name,
            prefix=secret[:10],
            digest=token_digest(secret),
            scopes=chosen,
            expires_at=expires_at,
        )
        audit.record("token.create", obj=token, details={"name": name, "user": user.get_username()})
    return token, secret


def tokens_usable() -> QuerySet[ApiToken]:
    """Tokens that still work: neither revoked nor expired."""
    return ApiToken.objects.filter(revoked_at__isnull=True).filter(
        Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now())
    )


def token_find(secret: str) -> ApiToken | None:
    """The usable token of an active user with this secret, or None. The digest is
    looked up by equality on a unique index: a SHA-256 of a 256-bit secret leaks
    nothing through timing."""
    token = (
        tokens_usable()
        .select_related("user")
        .filter(digest=token_digest(secret), user__is_active=True)
        .first()
    )
    if token is None:
        return None
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=timezone.now())
    return token


def token_user(secret: str) -> User | None:
    """The active user of a usable bearer token, or None."""
    token = token_find(secret)
    return token.user if token is not None else None


def token_revoke(*, token: ApiToken) -> None:
    """Stop a token working at once (and the JWTs issued from it, which name it).
    Revoking it again changes nothing."""
    with transaction.atomic():
        if ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        ):
            audit.record("token.revoke", obj=token, details={"name": token.name})
    token.refresh_from_db(fields=["revoked_at"])


# Sent once a transaction that queued, re-queued or canceled a job has committed:
# workers in this process (goci up's) wake at once; those in others get NOTIFY.
queue_changed = Signal()


def notify_queue() -> None:
    """Wake idle workers when the transaction commits, never before: in this process
    through `queue_changed`, in others through PostgreSQL's LISTEN/NOTIFY (SQLite
    serves one process, whose worker is woken by the signal)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, '')", [QUEUE_CHANNEL])
    transaction.on_commit(lambda: queue_changed.send(sender=None))


class Conflict(ValueError):
    """The request clashes with what exists (a taken slug, a member twice): 409."""


PROJECT_FIELDS = (
    "name",
    "repo_url",
    "default_branch",
    "pipeline_path",
    "auto_cancel",
    "public",
    "pipeline",
)


def slug_problem(value: str) -> str | None:
    """What is wrong with a project slug, or None (the API and the pages say the same)."""
    if (
        not value
        or len(value) > 100
        or not all(c.isascii() and (c.isalnum() or c in "-_") for c in value)
    ):
        return "a slug is 1 to 100 letters, digits, '-' or '_' (no spaces)"
    if value.isdigit():
        # Projects are named by slug or id in the API: "42" must mean one thing.
        return "a slug needs a letter, '-' or '_' so that it cannot be taken for an id"
    return None


def repo_url_problem(url: str) -> str | None:
    """What is wrong with a repository URL as a clone URL (syntax only: the worker
    resolves and checks its host before each clone), or None; "" is no repository."""
    return clone_url_problem(url, settings.GOCI_CLONE_ALLOWED_HOSTS) if url else None


def project_create(*, user: User, slug: str, name: str = "", **fields: Any) -> Project:
    """A new project; `user` becomes its owner. Conflict if the slug is taken."""
    if problem := slug_problem(slug):
        raise InvalidRequest(f"slug: {problem}")
    if problem := repo_url_problem(fields.get("repo_url", "")):
        raise InvalidRequest(f"repo_url: {problem}")
    try:
        with transaction.atomic():
            project = Project.objects.create(
                slug=slug,
                name=name or slug,
                webhook_secret=encrypt(secrets.token_urlsafe(32)),
                badge_token=secrets.token_urlsafe(24),
                **fields,
            )
            Membership.objects.create(project=project, user=user, role=Role.OWNER)
            audit.record(
                "project.create",
                project=project,
                obj=project,
                details={"owner": user.get_username()},
            )
    except IntegrityError:
        raise Conflict(f"a project with the slug {slug!r} already exists") from None
    return project


def project_update(*, project: Project, **fields: Any) -> Project:
    """Change the project's settings (those of PROJECT_FIELDS that are given)."""
    unknown = set(fields) - set(PROJECT_FIELDS)
    if unknown:
        raise InvalidRequest(f"these project settings cannot be changed: {sorted(unknown)}")
    if problem := repo_url_problem(fields.get("repo_url", "")):
        raise InvalidRequest(f"repo_url: {problem}")
    if fields.get("pipeline"):  # the stored pipeline: valid, or PipelineError
        load(fields["pipeline"], fields.get("pipeline_path") or project.pipeline_path)
    for name, value in fields.items():
        setattr(project, name, value)
    if "name" in fields and not project.name:
        project.name = project.slug
    if fields:
        with transaction.atomic():
            project.save(update_fields=list(fields))
            changed = {name: getattr(project, name) for name in fields}
            if changed.get("pipeline"):  # up to 1 MiB: the log names which one it is
                digest = hashlib.sha256(changed["pipeline"].encode()).hexdigest()
                changed["pipeline"] = (
                    f"sha256:{digest[:16]} ({len(changed['pipeline'])} characters)"
                )
            audit.record("project.update", project=project, obj=project, details=changed)
    return project


def webhook_secret(project: Project) -> str:
    """The secret that signs the project's deliveries ("": it accepts none, as when
    GOCI_SECRET_KEYS no longer holds the key it was stored with: a maintainer rotates
    it, and the start-up notice and the logs say why)."""
    if not project.webhook_secret:
        return ""
    try:
        return decrypt(project.webhook_secret)
    except InvalidToken:
        log.warning(
            "project %s: its webhook secret cannot be decrypted with GOCI_SECRET_KEYS; "
            "rotate it in the project's settings",
            project.slug,
        )
        return ""


def webhook_secret_rotate(*, project: Project) -> str:
    """A new webhook secret (deliveries signed with the old one are refused from now);
    returns it, for the maintainer to paste into the forge."""
    value = secrets.token_urlsafe(32)
    with transaction.atomic():
        Project.objects.filter(pk=project.pk).update(webhook_secret=encrypt(value))
        project.webhook_secret = encrypt(value)
        audit.record("project.webhook_secret_rotate", project=project, obj=project)
    return value


def badge_token_rotate(*, project: Project) -> str:
    value = secrets.token_urlsafe(24)
    with transaction.atomic():
        Project.objects.filter(pk=project.pk).update(badge_token=value)
        project.badge_token = value
        audit.record("project.badge_token_rotate", project=project, obj=project)
    return value


MAX_DELIVERIES = 100  # kept per project


def delivery_record(*, project: Project, **fields: Any) -> WebhookDelivery:
    """Keep what a POST to /hooks/{slug} brought and what came of it; only the newest
    MAX_DELIVERIES of a project stay."""
    with transaction.atomic():
        delivery = WebhookDelivery.objects.create(project=project, **fields)
        stale = WebhookDelivery.objects.filter(project=project).order_by("-id")[MAX_DELIVERIES:]
        WebhookDelivery.objects.filter(pk__in=list(stale.values_list("pk", flat=True))).delete()
    return delivery


def project_delete(*, project: Project) -> None:
    """Delete the project with its builds and logs. Running jobs lose their lease
    writes (their rows are gone) and stop at their next heartbeat."""
    with transaction.atomic():
        # Recorded first: its project becomes NULL with the delete, its slug stays.
        audit.record("project.delete", project=project, obj=project)
        Project.objects.filter(pk=project.pk).delete()


def project_transfer(*, project: Project, to: User) -> Membership:
    """Make `to` (already a member) an owner; other owners stay owners."""
    with transaction.atomic():
        membership = Membership.objects.select_for_update().filter(project=project, user=to).first()
        if membership is None:
            raise InvalidRequest(
                f"{to.get_username()} is not a member of {project.slug}: add them first"
            )
        before = membership.role
        membership.role = Role.OWNER
        membership.save(update_fields=["role"])
        audit.record(
            "project.transfer",
            project=project,
            obj=project,
            details={"to": to.get_username(), "role_before": before},
        )
    return membership


def _owners_left(project: Project, without: Membership) -> bool:
    return (
        Membership.objects.filter(project=project, role=Role.OWNER).exclude(pk=without.pk).exists()
    )


def user_delete(*, user: User, with_projects: bool = False) -> list[str]:
    """Delete a user; their memberships and API tokens go with them, their builds stay
    without an author. The projects they alone own are refused (InvalidRequest naming
    them) unless `with_projects`, which deletes those too; returns their slugs."""
    with transaction.atomic():
        # Locked: an owner added meanwhile must not see their project deleted.
        owned = Project.objects.select_for_update().filter(
            membership__user=user, membership__role=Role.OWNER
        )
        other_owners = Membership.objects.filter(role=Role.OWNER).exclude(user=user)
        orphans = list(owned.exclude(pk__in=other_owners.values("project")))
        slugs = [project.slug for project in orphans]
        if orphans and not with_projects:
            raise InvalidRequest(
                f"{user.get_username()} is the only owner of {', '.join(slugs)}: make "
                "someone else an owner first (the project's members page), or pass --force "
                "to delete these projects, with their builds, as well"
            )
        for project in orphans:
            project_delete(project=project)
        audit.record(
            "user.delete", obj=user, details={"username": user.get_username(), "projects": slugs}
        )
        user.delete()
    return slugs


def member_add(*, project: Project, user: User, role: str) -> Membership:
    """Add a member. Conflict if they already are one."""
    if role not in Role.values:
        raise InvalidRequest(f"role: {role!r} is not one of {', '.join(Role.values)}")
    try:
        with transaction.atomic():
            membership = Membership.objects.create(project=project, user=user, role=role)
            audit.record(
                "member.add",
                project=project,
                obj=membership,
                details={"member": user.get_username(), "role": role},
            )
            return membership
    except IntegrityError:
        raise Conflict(
            f"{user.get_username()} is already a member of {project.slug}; change their role"
        ) from None


def member_change(*, membership: Membership, role: str) -> Membership:
    """Give a member another role; the last owner stays an owner."""
    if role not in Role.values:
        raise InvalidRequest(f"role: {role!r} is not one of {', '.join(Role.values)}")
    with transaction.atomic():
        # The project row lock serialises membership changes: two owners demoting each
        # other at once cannot leave the project without one.
        Project.objects.select_for_update().get(pk=membership.project_id)
        if (
            membership.role == Role.OWNER
            and role != Role.OWNER
            and not _owners_left(membership.project, membership)
        ):
            raise InvalidRequest("a project needs an owner: make someone else an owner first")
        before = membership.role
        membership.role = role
        membership.save(update_fields=["role"])
        audit.record(
            "member.change",
            project=membership.project,
            obj=membership,
            details={"member": membership.user.get_username(), "from": before, "to": role},
        )
    return membership


def member_remove(*, membership: Membership) -> None:
    """Remove a member; the last owner cannot be removed. Their open live-log sockets
    stop receiving lines within seconds (the consumer checks membership)."""
    with transaction.atomic():
        Project.objects.select_for_update().get(pk=membership.project_id)
        if membership.role == Role.OWNER and not _owners_left(membership.project, membership):
            raise InvalidRequest(
                "a project needs an owner: make someone else an owner first, or delete it"
            )
        audit.record(
            "member.remove",
            project=membership.project,
            obj=membership,
            details={"member": membership.user.get_username(), "role": membership.role},
        )
        membership.delete()


def _check_env(env: Mapping[str, Any]) -> dict[str, str]:
    for name, value in env.items():
        if not ENV_NAME.fullmatch(name):
            raise InvalidRequest(f"env: {name!r} is not a variable name (letters, digits, _)")
        if name in ("CI", "GOCI") or name.startswith("GOCI_"):
            raise InvalidRequest(f"env: {name} is set by Goci; choose another name")
        if not isinstance(value, str):
            raise InvalidRequest(f"env: the value of {name} must be a string")
    return dict(env)


# What a forge's delivery tells of a build besides ref, commit and message
# (builds/forges/); a rerun copies them.
ORIGIN_FIELDS = (
    "forge",
    "commit_author",
    "compare_url",
    "pr_number",
    "pr_title",
    "source_branch",
    "target_branch",
    "base_commit",
    "changed_files",
)
CHECKOUT_STEP = "clone"  # the step that fetches the repository before the pipeline's


def build_create(
    *,
    project: Project,
    pipeline: str,
    author: User | None = None,
    ref: str = "",
    commit: str = "",
    message: str = "",
    env: Mapping[str, Any] | None = None,
    trigger: str = Build.Trigger.API,
    idempotency_key: str | None = None,
    rerun_of: Build | None = None,
    fork: bool = False,
    origin: Mapping[str, Any] | None = None,
    inputs: Mapping[str, object] | None = None,
    rollback_of: Deployment | None = None,
) -> tuple[Build, bool]:
    """Queue a build of a pipeline; (build, created). The pipeline is validated first
    (PipelineError: nothing is stored). With an idempotency key, a retry - even a
    concurrent one - returns the first build and created=False. `fork`: the code
    comes from a fork's pull request, which never receives secrets. `origin`: the
    forge's account of it (ORIGIN_FIELDS). `inputs`: values of the pipeline's
    `inputs:`, checked against them (InputsError names each problem).

    With a commit of a project that has a repository, the worker checks that commit
    out first (the step "clone"); then `pipeline` may be "": it is read from the
    repository at that commit (build_plan). A push or pull request cancels the
    project's unfinished builds of older commits on its branch or PR (auto_cancel)."""
    origin = dict(origin or {})
    if unknown := set(origin) - set(ORIGIN_FIELDS):
        raise InvalidRequest(f"unknown build fields: {sorted(unknown)}")
    checkout = bool(project.repo_url and commit)
    parsed = load(pipeline, project.pipeline_path) if pipeline else None
    if parsed is None and not checkout:
        raise InvalidRequest(
            "no pipeline: give one, or a commit of a project with a repository to read it from"
        )
    if parsed is not None:
        check_matrix_size(parsed)
    if parsed is not None and not parsed.clone:
        checkout = False
    if checkout and parsed is not None:
        check_checkout_name(parsed)
    env = _check_env(env or {})
    if parsed is not None:
        checked_inputs = check_inputs(parsed, inputs or {})
    elif inputs:
        raise InvalidRequest(
            "inputs need the pipeline that declares them: give the pipeline, or run a ref "
            "(POST /api/projects/{slug}/run)"
        )
    else:
        checked_inputs = {}
    try:
        with transaction.atomic():
            # The project row lock serialises submits of one project: numbers stay
            # monotonic, and a concurrent retry sees the first build once it may.
            locked = Project.objects.select_for_update().get(pk=project.pk)
            if idempotency_key:
                existing = Build.objects.filter(
                    project=locked, idempotency_key=idempotency_key
                ).first()
                if existing is not None:
                    return existing, False
            number = locked.next_build_number
            locked.next_build_number = number + 1
            locked.save(update_fields=["next_build_number"])
            build = Build.objects.create(
                project=locked,
                number=number,
                trigger=trigger,
                ref=ref,
                commit=commit,
                message=message,
                author=author,
                pipeline=pipeline,
                env=env,
                inputs=checked_inputs,
                idempotency_key=idempotency_key or None,
                rerun_of=rerun_of,
                fork=fork,
                checkout=checkout,
                **origin,
            )
            if parsed is not None and parsed.matrix:
                create_cell_jobs(build, parsed, checkout=checkout)
            else:
                job = Job.objects.create(build=build, labels=list(parsed.runs_on) if parsed else [])
                if checkout:
                    Step.objects.create(job=job, name=CHECKOUT_STEP, position=0)
                if parsed is not None:
                    create_steps(job, parsed, after_clone=checkout)
            if parsed is not None:
                deployments.record(build, parsed, rollback_of=rollback_of)
            # Not the env: its values may be credentials.
            audit.record(
                "build.rerun" if rerun_of is not None else "build.run",
                project=locked,
                obj=build,
                details={
                    "number": number,
                    "trigger": trigger,
                    "ref": ref,
                    "commit": commit,
                    **({"rerun_of": rerun_of.pk} if rerun_of is not None else {}),
                },
            )
            if build.forge:
                commit_status_queue(build, "pending", f"#{number} is queued")
            if locked.auto_cancel and trigger in (Build.Trigger.PUSH, Build.Trigger.PULL_REQUEST):
                _supersede(build)
            notify_queue()
    except IntegrityError:
        # Only a concurrent first submit of the same key gets here (SQLite has no row
        # locks): the other one won, return its build.
        if not idempotency_key:
            raise
        return Build.objects.get(project=project, idempotency_key=idempotency_key), False
    return build, True


def run_pipeline(
    *,
    project: Project,
    ref: str,
    inputs: Mapping[str, object],
    trigger: str,
    author: User | None,
    idempotency_key: str | None = None,
) -> Build:
    """Run the project's pipeline at `ref` (a branch or tag; "": the default branch)
    with `inputs`: the Run form, POST /api/projects/{slug}/run and schedules. The
    pipeline is read from the repository at that ref (its commit is the build's), or
    is the project's stored pipeline when it has no repository. InvalidRequest or
    RefError says what is wrong; InputsError names each wrong input."""
    # Here: it imports the worker's git code, which most callers need not load.
    from builds import refs  # noqa: PLC0415
    from runners.checkout import full_ref  # noqa: PLC0415

    ref = ref or project.default_branch
    if project.repo_url:
        at = refs.pipeline_at(project, ref)
        full, commit, pipeline = at.ref, at.commit, at.pipeline
    elif project.pipeline:
        full, commit, pipeline = full_ref(ref), "", project.pipeline
    else:
        raise InvalidRequest(
            f"project {project.slug} has neither a repository nor a stored pipeline: set "
            "one of them in its settings"
        )
    build, _ = build_create(
        project=project,
        pipeline=pipeline,
        author=author,
        ref=full,
        commit=commit,
        trigger=trigger,
        inputs=inputs,
        idempotency_key=idempotency_key,
    )
    return build


MAX_MATRIX_STEPS = 5000  # steps of all the cells of one build


def check_matrix_size(parsed: Pipeline) -> None:
    """A matrix makes a job of every cell, each with every step: at most
    MAX_MATRIX_STEPS rows for one build (256 cells of 500 steps would be 128,000)."""
    total = len(parsed.matrix) * len(parsed.steps)
    if total > MAX_MATRIX_STEPS:
        raise InvalidRequest(
            f"the matrix makes {len(parsed.matrix)} jobs of {len(parsed.steps)} steps, "
            f"{total} steps in all: a build may have at most {MAX_MATRIX_STEPS}; use fewer "
            "combinations (exclude) or fewer steps"
        )


def create_cell_jobs(
    build: Build, parsed: Pipeline, *, checkout: bool, first: Job | None = None
) -> None:
    """A job for each matrix cell, with its steps at its own positions (CELL_POSITIONS)
    and its clone step first when the build checks out. `first`: an existing job (the
    one that read the pipeline at checkout, its clone step made) becomes cell 0."""
    for index, cell in enumerate(parsed.matrix):
        values = dict(cell)
        fields = {
            "name": cell_name(values),
            "matrix": values,
            "labels": list(parsed.runs_on),
            "allow_failure": cell_may_fail(parsed, values),
        }
        if index == 0 and first is not None:
            Job.objects.filter(pk=first.pk).update(**fields)
            job = first
        else:
            job = Job.objects.create(build=build, **fields)
            if checkout:
                Step.objects.create(job=job, name=CHECKOUT_STEP, position=index * CELL_POSITIONS)
        create_steps(
            job, for_cell(parsed, values), after_clone=checkout, offset=index * CELL_POSITIONS
        )


def check_checkout_name(parsed: Pipeline) -> None:
    if any(step.name == CHECKOUT_STEP for step in parsed.steps):
        raise InvalidRequest(
            f"a step is named {CHECKOUT_STEP!r}, the name of the step that checks out the "
            "repository: rename it (or set `clone: false` to check nothing out)"
        )


def create_steps(job: Job, parsed: Pipeline, after_clone: bool, offset: int = 0) -> None:
    deps = plan(parsed)
    Step.objects.bulk_create(
        Step(
            job=job,
            name=step.name,
            position=offset + step.index + after_clone,
            needs=list(deps[step.name]),
            image=step.image or "",
        )
        for step in parsed.steps
    )


def _supersede(build: Build) -> None:
    """Cancel the project's unfinished builds of older commits on the same branch (a
    push) or pull request, saying which build superseded them."""
    older = Build.objects.filter(
        project_id=build.project_id, trigger=build.trigger, pk__lt=build.pk
    ).exclude(status__in=FINISHED)
    if build.trigger == Build.Trigger.PULL_REQUEST:
        older = older.filter(pr_number=build.pr_number)
    else:
        older = older.filter(ref=build.ref)
    for old in older.exclude(commit=build.commit):
        Build.objects.filter(pk=old.pk).update(superseded_by=build)
        build_cancel(build=old)


commit_status_due = Signal()  # sent once a transaction that queued a commit status commits


def commit_status_queue(build: Build, state: str, description: str) -> None:
    """Queue a commit status for the build's forge (builds/commit_status.py sends it).
    An older one of the build not yet sent never will be: it would overwrite this."""
    # Of any build of this commit: a rerun's status is the commit's newest too.
    CommitStatus.objects.filter(
        build__project_id=build.project_id, build__commit=build.commit, sent_at__isnull=True
    ).update(superseded=True)
    CommitStatus.objects.create(
        build=build, state=state, description=description[:140], next_attempt_at=timezone.now()
    )
    transaction.on_commit(lambda: commit_status_due.send(sender=None))


def build_cancel(*, build: Build) -> Build:
    """Cancel a build: queued jobs end now, running ones are stopped by their worker
    (it checks `cancel_requested` with every heartbeat). Idempotent."""
    with transaction.atomic():
        build = Build.objects.select_for_update().get(pk=build.pk)
        if build.status in FINISHED:
            return build
        build.cancel_requested = True
        build.save(update_fields=["cancel_requested"])
        audit.record(
            "build.cancel", project=build.project, obj=build, details={"number": build.number}
        )
        now = timezone.now()
        queued = Job.objects.filter(build=build, status=Status.QUEUED)
        Step.objects.filter(job__in=queued, status=Status.QUEUED).update(status=Status.CANCELED)
        queued.update(status=Status.CANCELED, finished_at=now)
        build_settle(build, now)
        notify_queue()
    return build


def build_rerun(*, build: Build, author: User | None) -> Build:
    """A new build of the same snapshot, ref and commit (and, for a build of a
    forge's delivery, what it told: the status goes back to the same commit)."""
    rerun, _ = build_create(
        project=build.project,
        pipeline=build.pipeline,
        author=author,
        ref=build.ref,
        commit=build.commit,
        message=build.message,
        env=build.env,
        inputs=build.inputs,
        trigger=Build.Trigger.RERUN,
        rerun_of=build,
        fork=build.fork,  # still a fork's code: no secrets for it either
        origin={name: getattr(build, name) for name in ORIGIN_FIELDS},
    )
    return rerun


def build_settle(build: Build, now: Any) -> None:
    """Derive the build's status from its jobs (the build row is locked). A failed job
    allowed to fail (a matrix cell) counts as a success."""
    # Here, not at the top: builds.notifications imports this module.
    from builds import notifications  # noqa: PLC0415

    statuses = [
        Status.SUCCESS if status == Status.FAILURE and may_fail else status
        for status, may_fail in build.jobs.values_list("status", "allow_failure")
    ]
    if any(s in (Status.QUEUED, Status.RUNNING) for s in statuses):
        status = Status.RUNNING if Status.RUNNING in statuses else build.status
    elif Status.ERROR in statuses:
        status = Status.ERROR
    elif Status.FAILURE in statuses:
        status = Status.FAILURE
    elif Status.CANCELED in statuses:
        status = Status.CANCELED
    else:
        status = Status.SUCCESS
    fields = ["status"]
    build.status = status
    if status in FINISHED and build.finished_at is None:
        build.finished_at = now
        fields.append("finished_at")
        if build.forge:
            commit_status_queue(build, status, _status_words(build, status))
        notifications.queue_build(build)
    build.save(update_fields=fields)
    if status in FINISHED and (finished := deployments.settle(build, now)):
        for deployment in finished:
            notifications.queue_deployment(deployment)
        notify_queue()  # the next deployment to those environments may go


def _status_words(build: Build, status: str) -> str:
    if build.superseded_by_id is not None:
        superseded = Build.objects.filter(pk=build.superseded_by_id).values_list("number")
        return f"#{build.number} was superseded by #{superseded.get()[0]}"
    if status == Status.ERROR:
        error = build.jobs.exclude(error="").values_list("error", flat=True).first()
        if error and error.strip():
            return f"#{build.number} could not run: {error.strip().splitlines()[0]}"
    words: dict[str, str] = {
        Status.SUCCESS: "succeeded",
        Status.FAILURE: "failed",
        Status.ERROR: "could not run",
        Status.CANCELED: "was canceled",
    }
    return f"#{build.number} {words.get(status, status)}"
