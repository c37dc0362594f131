"""Short-lived JWT access tokens (PyJWT): `POST /api/auth/token` issues them, the API's
bearer auth accepts them beside personal tokens (which start with `goci_`).

Claims: `sub` (the user's id), `scopes`, `tid` (the personal token it came from; absent
when issued for a password), `iat`, `exp`. Signed with HS256 under a key derived from
SECRET_KEY, so rotating SECRET_KEY ends every JWT. Checking one costs one query: the
user (and, with `tid`, the token) is read each time, so a revocation or a deactivated
user stops it at the very next request.

Job tokens are JWTs too, under the same key, with other claims: `job`, `att` (the
attempt) and `bid` (the build). The worker makes one when it starts a job and gives it
to the steps as GOCI_JOB_TOKEN. It reads its own build and that build's logs, and
nothing else; it works only while that attempt of the job runs (one query), so it ends
with the job, whatever its `exp` says.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import timedelta

import jwt
from django.conf import settings
from django.contrib.auth.models import User
from django.utils import timezone

from builds.models import TOKEN_SCOPES, ApiToken, Job, Status
from builds.services import tokens_usable

ALGORITHM = "HS256"


def _key() -> bytes:
    # Its own key, not SECRET_KEY itself: a JWT's signature then says nothing about
    # the other things Django signs with SECRET_KEY.
    return hmac.new(settings.SECRET_KEY.encode(), b"goci jwt", hashlib.sha256).digest()


@dataclass(frozen=True)
class Access:
    user: User
    scopes: list[str]


@dataclass(frozen=True)
class JobAccess:
    """What a job token may read: one build."""

    build_id: int


def issue(*, user: User, scopes: list[str], token: ApiToken | None = None) -> str:
    now = timezone.now()
    claims: dict[str, object] = {
        "sub": str(user.pk),  # RFC 7519: a string; PyJWT checks that
        "scopes": scopes,
        "iat": now,
        "exp": now + timedelta(seconds=settings.GOCI_JWT_TTL),
    }
    if token is not None:
        claims["tid"] = token.pk
    return jwt.encode(claims, _key(), algorithm=ALGORITHM)


def issue_for_job(job: Job, lifetime: int) -> str:
    """The token of this attempt of a running job. `lifetime` (seconds) only bounds a
    token that outlives its job's row (a database restored from a backup, say)."""
    now = timezone.now()
    claims = {
        "job": job.pk,
        "att": job.attempt,
        "bid": job.build_id,
        "iat": now,
        "exp": now + timedelta(seconds=lifetime),
    }
    return jwt.encode(claims, _key(), algorithm=ALGORITHM)


def check(text: str) -> Access | JobAccess | None:
    """Who a JWT acts as and with which scopes (or, for a job token, which build it may
    read), or None if it is not one of ours, is expired, or its user, token or job
    attempt no longer may."""
    try:
        claims = jwt.decode(text, _key(), algorithms=[ALGORITHM], options={"require": ["exp"]})
    except jwt.InvalidTokenError:
        return None
    if "job" in claims:
        return _check_job(claims)
    if not isinstance(claims.get("sub"), str) or "iat" not in claims:
        return None
    scopes = claims.get("scopes")
    if not isinstance(scopes, list) or not all(scope in TOKEN_SCOPES for scope in scopes):
        return None
    tid = claims.get("tid")
    if tid is not None:
        token = (
            tokens_usable()
            .select_related("user")
            .filter(pk=tid, user_id=claims["sub"], user__is_active=True)
            .first()
        )
        return Access(token.user, scopes) if token is not None else None
    user = User.objects.filter(pk=claims["sub"], is_active=True).first()
    return Access(user, scopes) if user is not None else None


def _check_job(claims: dict[str, object]) -> JobAccess | None:
    job, attempt, build = claims.get("job"), claims.get("att"), claims.get("bid")
    if not (type(job) is int and type(attempt) is int and type(build) is int):
        return None  # (bool is an int; type() is not fooled by it)
    running = Job.objects.filter(pk=job, attempt=attempt, build_id=build, status=Status.RUNNING)
    return JobAccess(build_id=build) if running.exists() else None
