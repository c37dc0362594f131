"""Remote runners and their registration tokens: every change to them goes through here,
and each is audited (goci.audit.record). The pages, the user API, the runner API and
the CLI call these.

A registration token is made by an admin (a superuser): single-use with an expiry, or
reusable until revoked (or until an expiry, if given). A runner trades it for its own
token (`POST /api/runner/v1/register`). Both secrets are shown once; only their SHA-256
is kept, as for personal API tokens (builds.services.token_digest).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser, User
from django.db import IntegrityError, transaction
from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from builds.models import Job, Status
from builds.services import Conflict, InvalidRequest, token_digest
from goci import audit
from runners.models import RegistrationToken, Runner

REGISTRATION_PREFIX = "goci_reg_"
RUNNER_TOKEN_PREFIX = "goci_runner_"  # noqa: S105
DEFAULT_SINGLE_USE_HOURS = 24
MAX_EXPIRY_HOURS = 24 * 366
MAX_LABELS = 50
MAX_CAPACITY = 64
CONTACT_EVERY = 1.0  # seconds: a runner's last contact is written at most this often
LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,49}")
RUNNER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,99}")


class RegistrationRefused(Exception):
    """The registration token is unknown, used, expired or revoked (401)."""


def is_admin(user: AbstractBaseUser | AnonymousUser | None) -> bool:
    """Runners are the operators': active superusers, as for the admin site."""
    return bool(
        user is not None
        and user.is_authenticated
        and getattr(user, "is_active", False)
        and getattr(user, "is_superuser", False)
    )


def online_within() -> timedelta:
    """A runner is online while its last contact is this recent (the same rule as the
    queue reasons and /metrics: GOCI_RUNNER_OFFLINE_SECONDS)."""
    return timedelta(seconds=settings.GOCI_RUNNER_OFFLINE_SECONDS)


def runner_condition(runner: Runner) -> str:
    """What the runners page shows: revoked, paused, draining, online or offline."""
    if runner.revoked_at is not None:
        return "revoked"
    if runner.state != Runner.State.ACTIVE:
        return str(runner.state)
    recent = runner.last_contact and timezone.now() - runner.last_contact <= online_within()
    return "online" if recent else "offline"


def runners_listed() -> QuerySet[Runner]:
    """Every runner, with `running`: how many jobs it runs now."""
    return Runner.objects.annotate(
        running=Count("jobs", filter=Q(jobs__status=Status.RUNNING))
    ).order_by("kind", "name")


# ---------------------------------------------------------------------------
# Registration tokens


def registration_token_create(
    *, user: User | None, single_use: bool = True, expires_in_hours: int | None = None
) -> tuple[RegistrationToken, str]:
    """A new registration token and its secret (shown once). A single-use token expires
    after `expires_in_hours` (default 24); a reusable one only if that is given."""
    if expires_in_hours is None and single_use:
        expires_in_hours = DEFAULT_SINGLE_USE_HOURS
    if expires_in_hours is not None and not 1 <= expires_in_hours <= MAX_EXPIRY_HOURS:
        raise InvalidRequest(f"expires_in_hours: give 1 to {MAX_EXPIRY_HOURS}")
    expires_at = (
        timezone.now() + timedelta(hours=expires_in_hours) if expires_in_hours is not None else None
    )
    secret = REGISTRATION_PREFIX + secrets.token_urlsafe(32)
    with transaction.atomic():
        token = RegistrationToken.objects.create(
            digest=token_digest(secret),
            prefix=secret[: len(REGISTRATION_PREFIX) + 4],
            created_by=user,
            single_use=single_use,
            expires_at=expires_at,
        )
        audit.record(
            "runner_token.create",
            obj=token,
            details={"single_use": single_use, "expires_in_hours": expires_in_hours},
        )
    return token, secret


def registration_tokens_usable() -> QuerySet[RegistrationToken]:
    """Tokens a runner may still register with."""
    return RegistrationToken.objects.filter(revoked_at__isnull=True).filter(
        (Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now()))
        & (Q(single_use=False) | Q(used_at__isnull=True))
    )


def registration_token_revoke(*, token: RegistrationToken) -> None:
    """Stop a registration token working; runners it registered keep theirs."""
    with transaction.atomic():
        if RegistrationToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        ):
            audit.record("runner_token.revoke", obj=token, details={"prefix": token.prefix})
    token.refresh_from_db(fields=["revoked_at"])


# ---------------------------------------------------------------------------
# Runners


def labels_problem(labels: Sequence[str]) -> str | None:
    if len(labels) > MAX_LABELS:
        return f"at most {MAX_LABELS} labels"
    for label in labels:
        if not LABEL.fullmatch(label):
            return (
                f"{label!r} is not a label: 1 to 50 letters, digits, '_', '.', ':' or '-', "
                "starting with a letter or digit"
            )
    return None


def runner_register(
    *,
    registration_token: str,
    name: str,
    labels: Sequence[str] = (),
    capacity: int = 1,
    version: str = "",
    platform: str = "",
) -> tuple[Runner, str]:
    """A new remote runner and its token (shown once). A single-use registration token
    is consumed in the same transaction: of two registrations with it, one wins (its
    row's UPDATE ... WHERE used_at IS NULL; the other waits for the lock, then finds
    it used). RegistrationRefused for a token that does not work; Conflict for a taken
    name (the token is then not consumed)."""
    if not RUNNER_NAME.fullmatch(name):
        raise InvalidRequest(
            "name: 1 to 100 letters, digits, '_', '.', '@' or '-', starting with a letter or digit"
        )
    chosen = list(dict.fromkeys(labels))
    if problem := labels_problem(chosen):
        raise InvalidRequest(f"labels: {problem}")
    if not 1 <= capacity <= MAX_CAPACITY:
        raise InvalidRequest(f"capacity: give 1 to {MAX_CAPACITY}")
    secret = RUNNER_TOKEN_PREFIX + secrets.token_urlsafe(32)
    now = timezone.now()
    try:
        with transaction.atomic():
            usable = registration_tokens_usable().filter(digest=token_digest(registration_token))
            token = usable.first()
            if token is None or not usable.filter(pk=token.pk).update(used_at=now):
                raise RegistrationRefused(
                    "this registration token is unknown, used, expired or revoked"
                )
            runner = Runner.objects.create(
                name=name,
                kind=Runner.Kind.RUNNER,
                labels=chosen,
                capacity=capacity,
                version=version,
                platform=platform,
                last_contact=now,
                token_digest=token_digest(secret),
            )
            audit.record(
                "runner.register",
                obj=runner,
                details={"name": name, "labels": chosen, "token": token.prefix},
            )
    except IntegrityError:
        raise Conflict(f"a runner named {name!r} exists already: choose another name") from None
    return runner, secret


def runner_for_token(secret: str) -> Runner | None:
    """The remote runner with this token, unless revoked; its last contact is now."""
    if not secret.startswith(RUNNER_TOKEN_PREFIX):
        return None
    runner = Runner.objects.filter(
        token_digest=token_digest(secret), kind=Runner.Kind.RUNNER, revoked_at__isnull=True
    ).first()
    now = timezone.now()
    if runner is not None and (
        runner.last_contact is None or (now - runner.last_contact).total_seconds() >= CONTACT_EVERY
    ):
        # Once a second at most: a runner sending logs calls several times a second.
        runner.last_contact = now
        Runner.objects.filter(pk=runner.pk).update(last_contact=now)
    return runner


def _release_jobs(runner: Runner) -> None:
    # Imported here: runners.queue imports builds.services, as this module does.
    from runners.queue import job_release  # noqa: PLC0415

    for job_id, attempt in Job.objects.filter(runner=runner, status=Status.RUNNING).values_list(
        "pk", "attempt"
    ):
        job_release(job_id=job_id, attempt=attempt)


def runner_unregister(*, runner: Runner) -> None:
    """The runner leaves: its running jobs go back to the queue, its row is deleted
    (its name is free again; jobs keep the name in Job.worker)."""
    with transaction.atomic():
        _release_jobs(runner)
        audit.record("runner.unregister", obj=runner, details={"name": runner.name})
        Runner.objects.filter(pk=runner.pk).delete()


STATE_ACTIONS: dict[str, str] = {
    Runner.State.ACTIVE: "runner.resume",
    Runner.State.PAUSED: "runner.pause",
    Runner.State.DRAINING: "runner.drain",
}


def runner_set_state(*, runner: Runner, state: str) -> Runner:
    """Pause (no new jobs), drain (finish what runs, then take nothing) or resume."""
    if state not in Runner.State.values:
        raise InvalidRequest(f"state: {state!r} is not one of {', '.join(Runner.State.values)}")
    with transaction.atomic():
        before = runner.state
        Runner.objects.filter(pk=runner.pk).update(state=state)
        runner.state = state
        audit.record(
            STATE_ACTIONS[state],
            obj=runner,
            details={"name": runner.name, "state_before": before},
        )
    return runner


def runner_revoke(*, runner: Runner) -> Runner:
    """Its token stops working at its next call (401). Its running jobs are left to the
    reaper after their lease, as for a worker that vanished."""
    with transaction.atomic():
        if Runner.objects.filter(pk=runner.pk, revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        ):
            audit.record("runner.revoke", obj=runner, details={"name": runner.name})
    runner.refresh_from_db(fields=["revoked_at"])
    return runner
