"""`{% next_schedule project as next %}`: the project's next scheduled run, for the
project page (templates/builds/_next_schedule.html); builds/schedules.py runs them."""

from __future__ import annotations

from typing import Any

from django import template

from builds import schedules
from builds.models import Project, Schedule

register = template.Library()


@register.simple_tag
def next_schedule(project: Project) -> dict[str, Any] | None:
    """The enabled schedule due first: its time in UTC (`at`) and in its timezone
    (`local`); None without one. One indexed query."""
    schedule = (
        Schedule.objects.filter(project=project, enabled=True, next_run_at__isnull=False)
        .order_by("next_run_at")
        .first()
    )
    if schedule is None:
        return None
    return {
        "schedule": schedule,
        "at": schedule.next_run_at,
        "local": schedules.in_timezone(schedule, schedule.next_run_at),
    }
