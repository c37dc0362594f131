"""What Django itself reports to the audit log: sign-ins, and every change made in the
admin. (Goci's own workflows record their events in builds/services.py.)"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

from django.contrib import admin
from django.contrib.admin.actions import delete_selected
from django.contrib.admin.models import ADDITION, CHANGE, DELETION, LogEntry
from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.db.models import QuerySet
from django.db.models.signals import post_save
from django.http import HttpRequest
from django.template.response import TemplateResponse

from goci import audit

ADMIN_ACTIONS = {ADDITION: "admin.add", CHANGE: "admin.change", DELETION: "admin.delete"}

# Set while the admin's "delete selected" action runs, which records its deletions
# itself: Django logs several with one bulk insert, which sends no post_save.
_bulk_deleting: ContextVar[bool] = ContextVar("goci_audit_bulk_deleting", default=False)


def connect() -> None:
    user_logged_in.connect(signed_in, dispatch_uid="goci.audit.signed_in")
    user_login_failed.connect(sign_in_failed, dispatch_uid="goci.audit.sign_in_failed")
    post_save.connect(admin_logged, sender=LogEntry, dispatch_uid="goci.audit.admin_logged")
    admin.site.add_action(delete_selected_audited, "delete_selected")


def signed_in(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    from goci.oauth import forge_of  # noqa: PLC0415  (allauth's adapters: the web side only)

    forge = forge_of(request) if request is not None else None
    audit.record("signin.success", actor=user, details={"provider": forge} if forge else None)


def sign_in_failed(
    sender: Any, credentials: dict[str, Any], request: HttpRequest | None = None, **kwargs: Any
) -> None:
    # Django has already replaced the password in `credentials`; only the name is kept.
    username = credentials.get("username")
    tried = audit.text(username, 150) if isinstance(username, str) else ""
    audit.record("signin.failure", details={"username": tried})


def admin_logged(sender: Any, instance: LogEntry, created: bool, **kwargs: Any) -> None:
    if not created or (instance.action_flag == DELETION and _bulk_deleting.get()):
        return
    _record_admin(
        ADMIN_ACTIONS.get(instance.action_flag, "admin.change"),
        model=instance.content_type.model if instance.content_type else "",
        object_id=str(instance.object_id or ""),
        object_repr=instance.object_repr,
        change=instance.get_change_message(),
    )


def _record_admin(
    action: str, *, model: str, object_id: str, object_repr: str, change: str = ""
) -> None:
    details = {"model": model, "object_id": object_id, "object": object_repr}
    if change:
        details["change"] = change
    audit.record(action, details=details)


@contextlib.contextmanager
def _bulk_delete() -> Iterator[None]:
    token = _bulk_deleting.set(True)
    try:
        yield
    finally:
        _bulk_deleting.reset(token)


@admin.action(permissions=["delete"], description=delete_selected.short_description)  # type: ignore[attr-defined]
def delete_selected_audited(
    modeladmin: admin.ModelAdmin[Any], request: HttpRequest, queryset: QuerySet[Any]
) -> TemplateResponse | None:
    """Django's own action; once it has deleted (it answers None), one event each."""
    deleting = [(obj.pk, str(obj)[:200], obj._meta.model_name) for obj in queryset]
    with _bulk_delete():
        response: TemplateResponse | None = delete_selected(modeladmin, request, queryset)
    if response is None:
        for pk, shown, model in deleting:
            _record_admin("admin.delete", model=model or "", object_id=str(pk), object_repr=shown)
    return response
