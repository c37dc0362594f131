"""The audit log: `record()` writes one event, by the actor of the current origin
(goci.audit.context), in the caller's transaction."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from goci.audit import context

if TYPE_CHECKING:
    from django.contrib.auth.models import User
    from django.db.models import Model

    from builds.models import Project
    from goci.audit.models import AuditEvent


def record(
    action: str,
    *,
    project: Project | None = None,
    obj: Model | None = None,
    details: dict[str, Any] | None = None,
    actor: User | None = None,
) -> AuditEvent:
    """Store that `action` (e.g. "project.create") was done to `obj` in `project`.
    `details` must never hold a secret's value. `actor` only where the origin does not
    know them yet (a sign-in names its user)."""
    # This package is imported while Django loads its apps, before models may be.
    from goci.audit.models import AuditEvent  # noqa: PLC0415
    from goci.public import client_address  # noqa: PLC0415

    # No origin: a management command or the shell, which is the command line too.
    origin = context.current() or context.Origin(via=context.CLI)
    request = origin.request
    actor = actor or _actor(origin)
    return AuditEvent.objects.create(
        actor=actor,
        actor_name=actor.get_username() if actor is not None else origin.name,
        action=action,
        project=project,
        project_slug=project.slug if project is not None else "",
        object_type=(obj._meta.model_name or "") if obj is not None else "",
        object_id=str(obj.pk) if obj is not None else "",
        address=(client_address(request) or "")[:64] if request is not None else "",
        user_agent=text(request.META.get("HTTP_USER_AGENT", ""), 300) if request else "",
        via=origin.via,
        details=details or {},
    )


def _actor(origin: context.Origin) -> User | None:
    if origin.user is not None:
        given: User = origin.user
        return given
    request = origin.request
    if request is None:
        return None
    # The API's token user (ninja's request.auth), else the signed-in user of a page.
    for user in (getattr(request, "auth", None), getattr(request, "user", None)):
        if user is not None and getattr(user, "is_authenticated", False):
            found: User = user
            return found
    return None


def text(value: str, limit: int) -> str:
    """Text as any database stores it: a client may send a NUL (PostgreSQL refuses it)
    or bytes that decode to lone surrogates."""
    value = value[:limit].replace("\x00", "\\x00")
    return value.encode(errors="backslashreplace").decode()[:limit]
