"""The operator's view: find, filter and search builds; steps and logs read-only;
cancel or rerun from an action."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from builds import services
from builds.models import ApiToken, Build, Job, LogChunk, Membership, Project, Step


class MembershipInline(admin.TabularInline[Membership, Project]):
    model = Membership
    extra = 0


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin[Project]):
    list_display = ["slug", "name", "default_branch", "created_at"]
    search_fields = ["slug", "name", "repo_url"]
    readonly_fields = ["next_build_number", "created_at"]
    inlines = [MembershipInline]


class ReadOnlyInline(admin.TabularInline[Any, Any]):
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


class JobInline(ReadOnlyInline):
    model = Job
    fields = ["name", "status", "attempt", "worker", "lease_expires_at", "error"]


@admin.register(Build)
class BuildAdmin(admin.ModelAdmin[Build]):
    list_display = ["__str__", "status", "trigger", "ref", "short_commit", "author", "created_at"]
    list_filter = ["status", "trigger", "project"]
    search_fields = ["project__slug", "ref", "commit", "message", "=number"]
    list_select_related = ["project", "author"]
    date_hierarchy = "created_at"
    readonly_fields = [f.name for f in Build._meta.fields]
    inlines = [JobInline]
    actions = ["cancel", "rerun"]

    @admin.display(description="commit")
    def short_commit(self, build: Build) -> str:
        return build.commit[:10]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # builds are created by triggers, through builds.services

    @admin.action(description="Cancel the selected builds")
    def cancel(self, request: HttpRequest, queryset: QuerySet[Build]) -> None:
        for build in queryset:
            services.build_cancel(build=build)
        self.message_user(request, f"Asked {queryset.count()} build(s) to cancel.")

    @admin.action(description="Rerun the selected builds")
    def rerun(self, request: HttpRequest, queryset: QuerySet[Build]) -> None:
        for build in queryset:
            new = services.build_rerun(build=build, author=request.user)  # type: ignore[arg-type]
            self.message_user(request, f"{build} rerun as {new}.", messages.SUCCESS)


class StepInline(ReadOnlyInline):
    model = Step
    fields = ["position", "name", "status", "exit_code", "started_at", "finished_at", "error"]


@admin.register(Job)
class JobAdmin(admin.ModelAdmin[Job]):
    list_display = ["__str__", "status", "attempt", "worker", "lease_expires_at"]
    list_filter = ["status"]
    search_fields = ["build__project__slug", "worker"]
    readonly_fields = [f.name for f in Job._meta.fields]
    inlines = [StepInline]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


class LogChunkInline(ReadOnlyInline):
    model = LogChunk
    fields = ["attempt", "first_line", "line_count", "text"]


@admin.register(Step)
class StepAdmin(admin.ModelAdmin[Step]):
    list_display = ["__str__", "status", "exit_code", "started_at", "finished_at"]
    list_filter = ["status"]
    readonly_fields = [f.name for f in Step._meta.fields]
    inlines = [LogChunkInline]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin[ApiToken]):
    list_display = ["name", "user", "prefix", "scopes", "expires_at", "revoked_at", "last_used_at"]
    search_fields = ["name", "user__username", "prefix"]
    readonly_fields = ["prefix", "digest", "created_at", "last_used_at", "revoked_at"]
    fields = ["user", "name", "scopes", "expires_at", "prefix", "created_at", "last_used_at"]

    def save_model(self, request: HttpRequest, obj: ApiToken, form: object, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        # An expiry is set by changing the token once made.
        token, secret = services.token_create(user=obj.user, name=obj.name, scopes=obj.scopes)
        obj.pk = token.pk
        # Shown once: only its digest is stored.
        self.message_user(
            request, f"New token for {obj.user}: {secret} (copy it now; it is not stored)"
        )
