"""Short-lived JWT access tokens (PyJWT): `POST /api/auth/token` issues them, the API's
bearer auth accepts them beside personal tokens (which start with `goci_`).

Claims: `sub` (the user's id), `scopes`, `tid` (the personal token it came from; absent
when issued for a password), `iat`, `exp`. Signed with HS256 under a key derived from
SECRET_KEY, so rotating SECRET_KEY ends every JWT. Checking one costs one query: the
user (and, with `tid`, the token) is read each time, so a revocation or a deactivated
user stops it at the very next request.
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

from builds.models import TOKEN_SCOPES, ApiToken
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


def check(text: str) -> Access | None:
    """Who a JWT acts as and with which scopes, or None if it is not one of ours, is
    expired, or its user or token no longer may."""
    try:
        claims = jwt.decode(
            text, _key(), algorithms=[ALGORITHM], options={"require": ["sub", "exp", "iat"]}
        )
    except jwt.InvalidTokenError:
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
