"""The schedules page of a project (`/projects/<slug>/schedules`): every member reads
the schedules with their next and last runs; maintainers add, enable, disable and
delete them, through the same services as the API (builds/schedules.py)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from builds import access, schedules, services
from builds.forms import _Form
from builds.models import Project, Schedule
from builds.views import _denied_as_403, _project_or_404, _sentence


class ScheduleForm(_Form):
    cron = forms.CharField(
        label="Cron expression",
        max_length=schedules.MAX_CRON,
        help_text="minute hour day-of-month month day-of-week, e.g. 0 3 * * * (03:00 daily).",
    )
    timezone = forms.CharField(
        max_length=schedules.MAX_TIMEZONE, initial="UTC", help_text="e.g. UTC or Europe/Berlin."
    )
    ref = forms.CharField(
        label="Branch or ref",
        max_length=schedules.MAX_REF,
        required=False,
        help_text="Empty: the default branch.",
    )
    inputs = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}),
        required=False,
        max_length=schedules.MAX_INPUTS_BYTES,
        help_text="The pipeline's inputs, one NAME=value a line.",
    )
    description = forms.CharField(max_length=schedules.MAX_DESCRIPTION, required=False)
    enabled = forms.BooleanField(required=False, initial=True)

    def clean_inputs(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for number, line in enumerate(self.cleaned_data["inputs"].splitlines(), 1):
            if not line.strip():
                continue
            name, equals, value = line.partition("=")
            if not equals or not name.strip():
                raise forms.ValidationError(f"Line {number}: write NAME=value.")
            values[name.strip()] = value
        return values


def _page(request: HttpRequest, project: Project, form: ScheduleForm | None = None) -> HttpResponse:
    found = Schedule.objects.filter(project=project).select_related("last_build")
    rows = [
        {
            "schedule": schedule,
            "next_local": schedules.in_timezone(schedule, schedule.next_run_at),
            "last_local": schedules.in_timezone(schedule, schedule.last_run_at),
        }
        for schedule in found
    ]
    context: dict[str, Any] = {
        "project": project,
        "rows": rows,
        "form": form or ScheduleForm(),
        "can_manage": access.has_role(getattr(project, "role", None), access.MANAGE),
    }
    return render(request, "builds/schedules.html", context)


@login_required
@require_http_methods(["GET", "POST"])
@_denied_as_403
def project_schedules(request: HttpRequest, slug: str) -> HttpResponse:
    """Members read the schedules; maintainers add one (POST)."""
    project = _project_or_404(request, slug, access.READ)
    if request.method == "GET":
        return _page(request, project)
    access.require(project, access.MANAGE)
    form = ScheduleForm(request.POST)
    if form.is_valid():
        try:
            schedule = schedules.schedule_create(
                project=project,
                user=request.user if isinstance(request.user, User) else None,
                **form.cleaned_data,
            )
        except services.InvalidRequest as exc:
            form.add_error(None, _sentence(exc))
        else:
            messages.success(request, f"Schedule {schedule.cron} added.")
            return redirect("builds:project-schedules", slug=project.slug)
    return _page(request, project, form)


def _schedule_or_404(project: Project, schedule_id: int) -> Schedule:
    schedule = Schedule.objects.filter(project=project, pk=schedule_id).first()
    if schedule is None:
        raise Http404("no such schedule")
    return schedule


@login_required
@require_POST
@_denied_as_403
def schedule_toggle(request: HttpRequest, slug: str, schedule_id: int) -> HttpResponse:
    """Enable a disabled schedule (due next from now) or disable an enabled one."""
    project = _project_or_404(request, slug, access.MANAGE)
    schedule = _schedule_or_404(project, schedule_id)
    schedules.schedule_update(schedule=schedule, enabled=not schedule.enabled)
    state = "enabled" if schedule.enabled else "disabled"
    messages.success(request, f"Schedule {schedule.cron} {state}.")
    return redirect("builds:project-schedules", slug=project.slug)


@login_required
@require_POST
@_denied_as_403
def schedule_delete(request: HttpRequest, slug: str, schedule_id: int) -> HttpResponse:
    project = _project_or_404(request, slug, access.MANAGE)
    schedule = _schedule_or_404(project, schedule_id)
    schedules.schedule_delete(schedule=schedule)
    messages.success(request, f"Schedule {schedule.cron} deleted.")
    return redirect("builds:project-schedules", slug=project.slug)
