"""The audit log: an append-only record of who did what (docs/audit.md)."""

from __future__ import annotations

from typing import Any, NoReturn

from django.conf import settings
from django.db import models
from django.utils import timezone

from builds.models import Project
from goci.audit import context


class AppendOnly(Exception):
    """An audit event cannot be changed or deleted once written."""


class AuditEventQuerySet(models.QuerySet["AuditEvent"]):
    # Bulk changes through the default manager are refused too. (Deleting a user or a
    # project still sets the foreign key to NULL: Django does that through the base
    # manager; the names kept as text say who and which.)
    def update(self, **kwargs: Any) -> NoReturn:
        raise AppendOnly("audit events are append-only: they cannot be updated")

    def delete(self) -> NoReturn:
        raise AppendOnly("audit events are append-only: they cannot be deleted")


class AuditEvent(models.Model):
    class Via(models.TextChoices):
        UI = context.UI
        API = context.API
        CLI = context.CLI
        ADMIN = context.ADMIN
        WEBHOOK = context.WEBHOOK

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    actor_name = models.CharField(max_length=150, blank=True)
    action = models.CharField(max_length=50, db_index=True)
    project = models.ForeignKey(
        Project, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    project_slug = models.CharField(max_length=100, blank=True, db_index=True)
    object_type = models.CharField(max_length=50, blank=True)
    object_id = models.CharField(max_length=64, blank=True)
    address = models.CharField(max_length=64, blank=True)
    user_agent = models.CharField(max_length=300, blank=True)
    via = models.CharField(max_length=10, choices=Via.choices)
    details = models.JSONField(default=dict, blank=True)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["project", "-id"])]

    def __str__(self) -> str:
        return f"{self.action} by {self.actor_name or 'nobody'}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise AppendOnly("audit events are append-only: they cannot be updated")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise AppendOnly("audit events are append-only: they cannot be deleted")
