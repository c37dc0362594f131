"""The admin site: Goci's operators only.

Django's admin lets a staff user with model permissions edit memberships, which would
bypass the project roles (a staff developer could make themselves owner). So the admin
is for superusers alone: every other user, staff or not, is sent to its login page,
and no admin action runs for them. Project members work through the pages and the API,
where builds.access checks their role.
"""

from __future__ import annotations

from django.contrib import admin
from django.contrib.admin.apps import AdminConfig
from django.http import HttpRequest


class GociAdminSite(admin.AdminSite):
    site_header = "Goci administration"
    site_title = "Goci administration"
    index_title = "Operators' tools"

    def has_permission(self, request: HttpRequest) -> bool:
        user = request.user
        return bool(user.is_active and user.is_superuser)


class GociAdminConfig(AdminConfig):
    default_site = "goci.admin.GociAdminSite"
