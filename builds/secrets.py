"""Secrets: encrypted at rest, write-only, resolved for a build on the worker side.

Values are encrypted with Fernet (AES-128-CBC + HMAC-SHA256, from `cryptography`)
under GOCI_SECRET_KEYS: a MultiFernet encrypts with the first key and decrypts with
any, so an operator rotates by putting a new key first and running
`goci secret rotate-key`. Nothing here returns a value except `secrets_resolve`, which
only the worker calls, just before the steps run.
"""

from __future__ import annotations

import base64
import fnmatch
import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Q

from builds.models import Project, Secret, default_secret_events
from builds.pipeline import EVENTS
from goci import audit

NAME_RE = re.compile(r"[A-Z_][A-Z0-9_]*")
MAX_NAME = 200
# Shorter values cannot be masked usefully: "abc" is in too many log lines.
MIN_VALUE = 4
MAX_VALUE = 65536


class SecretError(ValueError):
    """A secret that cannot be set as asked; the message says why, for the user."""


class SecretRefused(Exception):
    """A build asks for a secret it may not have; the message names the secret, the
    step and the rule."""


# -- keys ---------------------------------------------------------------------------


def keys_derived() -> bool:
    """True when GOCI_SECRET_KEYS is unset and the key comes from SECRET_KEY."""
    return not settings.GOCI_SECRET_KEYS


def key_notice() -> str:
    """The start-up line that says where the secrets' key comes from."""
    if keys_derived():
        return (
            "Secrets: encrypted with a key derived from SECRET_KEY "
            "(set GOCI_SECRET_KEYS to keep them under a key of their own)."
        )
    count = len(settings.GOCI_SECRET_KEYS)
    return f"Secrets: encrypted with GOCI_SECRET_KEYS ({count} key{'s' * (count > 1)})."


def _derived_key(secret_key: str) -> bytes:
    # HKDF with its own label: the secrets' key is not the session-signing key itself.
    raw = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"goci secrets").derive(
        secret_key.encode()
    )
    return base64.urlsafe_b64encode(raw)


@functools.lru_cache(maxsize=4)
def _multifernet(keys: tuple[str, ...], secret_key: str) -> MultiFernet:
    if not keys:
        return MultiFernet([Fernet(_derived_key(secret_key))])
    try:
        return MultiFernet([Fernet(key.encode()) for key in keys])
    except ValueError:
        raise SecretError(
            "GOCI_SECRET_KEYS holds a key that is not a Fernet key (32 bytes in URL-safe "
            "base64; make one with `goci secret new-key`)"
        ) from None


def _fernet() -> MultiFernet:
    return _multifernet(tuple(settings.GOCI_SECRET_KEYS), settings.SECRET_KEY)


def new_key() -> str:
    return Fernet.generate_key().decode()


def encrypt(value: str) -> str:
    return _fernet().encrypt(value.encode()).decode()


def decrypt(ciphertext: str) -> str:
    return _fernet().decrypt(ciphertext.encode()).decode()


# -- services -----------------------------------------------------------------------


@dataclass(frozen=True)
class SecretInfo:
    """What may be shown of a secret: everything but its value."""

    name: str
    is_global: bool
    events: list[str]
    branches: list[str]
    created_by: str | None
    updated_by: str | None
    created_at: datetime
    updated_at: datetime


def check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name) or len(name) > MAX_NAME:
        raise SecretError(
            f"invalid secret name {name!r}: use A-Z, 0-9 and _, not starting with a digit"
        )
    return name


def _check_value(value: str) -> str:
    if len(value) < MIN_VALUE:
        raise SecretError(
            f"the value is too short: at least {MIN_VALUE} characters, because a shorter "
            "one cannot be masked in logs usefully"
        )
    if len(value) > MAX_VALUE:
        raise SecretError(f"the value is too long: at most {MAX_VALUE} characters")
    return value


def _check_events(events: Iterable[str]) -> list[str]:
    events = list(dict.fromkeys(events))
    unknown = [event for event in events if event not in EVENTS]
    if unknown:
        raise SecretError(f"unknown event {unknown[0]!r}; events are " + ", ".join(EVENTS))
    return events


def _check_branches(branches: Iterable[str]) -> list[str]:
    branches = [branch.strip() for branch in branches]
    if any(not branch for branch in branches):
        raise SecretError("a branch pattern cannot be empty")
    return list(dict.fromkeys(branches))


def secret_set(
    *,
    project: Project | None,
    name: str,
    value: str | None,
    user: User | None,
    events: Sequence[str] | None = None,
    branches: Sequence[str] | None = None,
) -> tuple[Secret, bool]:
    """Create the secret, or change it (value None keeps the value; events or branches
    None keep theirs). Returns the secret and whether it was created."""
    check_name(name)
    if value is not None:
        _check_value(value)
    checked_events = None if events is None else _check_events(events)
    checked_branches = None if branches is None else _check_branches(branches)
    with transaction.atomic():
        secret = Secret.objects.select_for_update().filter(project=project, name=name).first()
        created = secret is None
        if secret is None:
            if value is None:
                raise SecretError("a new secret needs a value")
            secret = Secret(
                project=project,
                name=name,
                events=default_secret_events() if checked_events is None else checked_events,
                created_by=user,
            )
        if value is not None:
            secret.ciphertext = encrypt(value)
        if checked_events is not None:
            secret.events = checked_events
        if checked_branches is not None:
            secret.branches = checked_branches
        secret.updated_by = user
        secret.save()
        # What changed, never the value.
        details = {"name": name, "created": created, "value_changed": value is not None}
        audit.record("secret.set", project=project, obj=secret, details=details)
    return secret, created


def secret_delete(*, project: Project | None, name: str) -> bool:
    """Returns whether there was such a secret."""
    with transaction.atomic():
        secret = Secret.objects.filter(project=project, name=name).first()
        if secret is None:
            return False
        audit.record("secret.delete", project=project, obj=secret, details={"name": name})
        secret.delete()
    return True


def secret_list(*, project: Project | None) -> list[SecretInfo]:
    """The project's secrets and the global ones it can use (a project's own secret
    hides a global one of the same name); metadata only."""
    scope = Q(project__isnull=True) if project is None else Q(project=project) | Q(project=None)
    found: dict[str, SecretInfo] = {}
    rows = Secret.objects.filter(scope).select_related("created_by", "updated_by")
    # Globals first, so a project's own secret replaces them.
    for secret in sorted(rows, key=lambda s: (s.project_id is not None, s.name)):
        found[secret.name] = SecretInfo(
            name=secret.name,
            is_global=secret.project_id is None,
            events=list(secret.events),
            branches=list(secret.branches),
            created_by=secret.created_by.username if secret.created_by else None,
            updated_by=secret.updated_by.username if secret.updated_by else None,
            created_at=secret.created_at,
            updated_at=secret.updated_at,
        )
    return [found[name] for name in sorted(found)]


def secrets_resolve(
    *,
    project: Project,
    wanted: Sequence[tuple[str, str]],
    event: str,
    branch: str | None,
    fork: bool,
) -> dict[str, str]:
    """The values of the secrets that steps ask for, by secret name. `wanted`: (step,
    secret) pairs. Raises SecretRefused naming the first secret and step refused."""
    if not wanted:
        return {}
    if fork:
        step, name = wanted[0]
        raise SecretRefused(
            f"step {step!r} asks for secret {name}, but this build comes from a fork "
            "and a fork's builds never receive secrets"
        )
    names = {name for _, name in wanted}
    rows = Secret.objects.filter(Q(project=project) | Q(project=None), name__in=names)
    # The project's own over a global one of the same name.
    found = {row.name: row for row in sorted(rows, key=lambda s: s.project_id is not None)}
    values: dict[str, str] = {}
    for step, name in wanted:
        secret = found.get(name)
        if secret is None:
            raise SecretRefused(f"step {step!r} asks for secret {name}, which does not exist")
        if event not in secret.events:
            allowed = ", ".join(secret.events) or "none"
            raise SecretRefused(
                f"step {step!r} asks for secret {name}, which is not given to {event} "
                f"builds (its events: {allowed})"
            )
        if secret.branches and not (
            branch is not None and any(fnmatch.fnmatchcase(branch, b) for b in secret.branches)
        ):
            on = f"branch {branch!r}" if branch else "no branch"
            raise SecretRefused(
                f"step {step!r} asks for secret {name}, which is given only to branches "
                f"{', '.join(secret.branches)} (this build is on {on})"
            )
        if name not in values:
            try:
                values[name] = decrypt(secret.ciphertext)
            except InvalidToken:
                raise SecretRefused(
                    f"secret {name} cannot be decrypted with GOCI_SECRET_KEYS "
                    "(was the key it was set with removed?)"
                ) from None
    return values


# The secrets Goci itself uses for a project, never given to a step unless one asks:
# cloning a private repository over HTTPS or SSH, and the forge's API for commit statuses.
CLONE_TOKEN = "GOCI_CLONE_TOKEN"  # noqa: S105  (names, not values)
CLONE_SSH_KEY = "GOCI_CLONE_SSH_KEY"
FORGE_TOKEN = "GOCI_FORGE_TOKEN"  # noqa: S105


def secret_for_goci(project: Project, name: str) -> str | None:
    """The value of the project's secret `name` (else a global one of that name) for
    Goci's own use, whatever its events and branches say: it is not handed to code of
    the build. None if there is none; SecretError if it cannot be decrypted."""
    rows = Secret.objects.filter(Q(project=project) | Q(project=None), name=name)
    found = sorted(rows, key=lambda s: s.project_id is None)  # the project's own first
    if not found:
        return None
    try:
        return decrypt(found[0].ciphertext)
    except InvalidToken:
        raise SecretError(
            f"secret {name} cannot be decrypted with GOCI_SECRET_KEYS "
            "(was the key it was set with removed?)"
        ) from None


def secrets_rotate() -> int:
    """Re-encrypt every secret with the first key of GOCI_SECRET_KEYS. Returns how many."""
    fernet = _fernet()
    count = 0
    with transaction.atomic():
        for secret in Secret.objects.select_for_update().order_by("pk"):
            try:
                ciphertext = fernet.rotate(secret.ciphertext.encode()).decode()
            except InvalidToken:
                raise SecretError(
                    f"secret {secret} cannot be decrypted with any key of GOCI_SECRET_KEYS"
                ) from None
            Secret.objects.filter(pk=secret.pk).update(ciphertext=ciphertext)
            count += 1
    return count
