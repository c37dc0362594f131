"""The audit log in the admin: read-only, as everywhere (the model refuses changes too)."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from goci.audit.models import AuditEvent


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin[AuditEvent]):
    list_display = ["created_at", "actor_name", "action", "project_slug", "via", "address"]
    list_filter = ["via", "action"]
    search_fields = ["actor_name", "action", "project_slug", "object_id", "address"]
    date_hierarchy = "created_at"
    readonly_fields = [f.name for f in AuditEvent._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
