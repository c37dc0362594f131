"""The API of schedules (builds/schedules.py): `GET/POST /api/projects/{slug}/schedules`,
`PATCH/DELETE /api/projects/{slug}/schedules/{id}`. Members read them; maintainers
change them (scope: admin, as every change to a project's settings).

Imported at the bottom of builds/api.py, so that its routes join the same `api`, with
its authentication, its limits and its JSON errors.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from django.db.models import QuerySet
from django.http import HttpRequest
from ninja import Field, PathEx, Schema
from ninja import Status as Reply
from pydantic import ConfigDict

from builds import access, schedules
from builds.api import (
    DENIED,
    INVALID,
    NOT_FOUND,
    SLUG,
    Storable,
    Text,
    _find_project,
    _not_found,
    _user,
    api,
)
from builds.models import Project, Schedule

CRON_HELP = (
    "Five fields: minute hour day-of-month month day-of-week, e.g. `0 3 * * *` (03:00 "
    "every day) or `*/15 * * * 1-5` (every 15 minutes on weekdays)."
)


class ScheduleIn(Schema):
    # A misspelt field ("time_zone") must not be dropped in silence.
    model_config = ConfigDict(extra="forbid")

    cron: Annotated[str, Field(max_length=schedules.MAX_CRON), Storable] = Field(
        description=CRON_HELP
    )
    timezone: Annotated[str, Field(max_length=schedules.MAX_TIMEZONE), Storable] = Field(
        "UTC", description="The IANA timezone the cron expression is read in."
    )
    description: Annotated[str, Field(max_length=schedules.MAX_DESCRIPTION), Storable] = ""
    ref: Annotated[str, Field(max_length=schedules.MAX_REF), Storable] = Field(
        "", description="The branch, tag or ref to build; empty: the default branch."
    )
    inputs: dict[Text, Any] = Field(
        default_factory=dict, description="Values of the pipeline's `inputs:`."
    )
    enabled: bool = True


class SchedulePatch(Schema):
    """The fields to change; those left out stay as they are."""

    model_config = ConfigDict(extra="forbid")

    # The defaults are never used: only the fields sent (exclude_unset) are changed.
    cron: Annotated[str, Field(max_length=schedules.MAX_CRON), Storable] = Field(
        "", description=CRON_HELP
    )
    timezone: Annotated[str, Field(max_length=schedules.MAX_TIMEZONE), Storable] = "UTC"
    description: Annotated[str, Field(max_length=schedules.MAX_DESCRIPTION), Storable] = ""
    ref: Annotated[str, Field(max_length=schedules.MAX_REF), Storable] = ""
    inputs: dict[Text, Any] = Field(default_factory=dict)
    enabled: bool = True


class ScheduleOut(Schema):
    id: int
    description: str
    cron: str
    timezone: str
    ref: str = Field(description="Empty: the project's default branch.")
    inputs: dict[str, Any]
    enabled: bool
    next_run_at: datetime | None = Field(description="The next due time (UTC).")
    last_run_at: datetime | None = Field(description="The due time of the last run.")
    last_build: int | None = Field(description="The number of the last run's build.")
    last_error: str = Field(description="Why the last run could not start, if it could not.")

    @staticmethod
    def resolve_last_build(schedule: Schedule) -> int | None:
        return schedule.last_build.number if schedule.last_build is not None else None


def _schedules(project: Project) -> QuerySet[Schedule]:
    return Schedule.objects.filter(project=project).select_related("last_build")


def _find_schedule(project: Project, schedule_id: int) -> Schedule:
    schedule = _schedules(project).filter(pk=schedule_id).first()
    if schedule is None:
        raise _not_found(f"schedule {schedule_id} of project '{project.slug}'")
    return schedule


@api.get(
    "/projects/{slug}/schedules",
    response={200: list[ScheduleOut], **NOT_FOUND},
    tags=["schedules"],
)
def list_schedules(request: HttpRequest, slug: PathEx[Text, SLUG]) -> QuerySet[Schedule]:
    """The project's schedules, with their next and last runs. Role: viewer."""
    return _schedules(_find_project(request, slug, access.READ))


@api.post(
    "/projects/{slug}/schedules",
    response={201: ScheduleOut, **DENIED, **INVALID},
    tags=["schedules"],
)
def create_schedule(
    request: HttpRequest, slug: PathEx[Text, SLUG], payload: ScheduleIn
) -> Reply[Schedule]:
    """Build on a cron expression; its builds' author is you. A bad expression or
    timezone is a 422 saying what is wrong. Role: maintainer."""
    project = _find_project(request, slug, access.MANAGE)
    schedule = schedules.schedule_create(
        project=project, user=_user(request), **payload.model_dump()
    )
    return Reply(201, schedule)


@api.patch(
    "/projects/{slug}/schedules/{int:schedule_id}",
    response={200: ScheduleOut, **DENIED, **INVALID},
    tags=["schedules"],
)
def update_schedule(
    request: HttpRequest, slug: PathEx[Text, SLUG], schedule_id: int, payload: SchedulePatch
) -> Schedule:
    """Change a schedule; fields left out stay. A new cron expression, timezone or
    enabling counts the next run from now. Role: maintainer."""
    project = _find_project(request, slug, access.MANAGE)
    schedule = _find_schedule(project, schedule_id)
    changed = schedules.schedule_update(schedule=schedule, **payload.model_dump(exclude_unset=True))
    return _find_schedule(project, changed.pk)


@api.delete(
    "/projects/{slug}/schedules/{int:schedule_id}",
    response={204: None, **DENIED},
    tags=["schedules"],
)
def delete_schedule(
    request: HttpRequest, slug: PathEx[Text, SLUG], schedule_id: int
) -> Reply[None]:
    """Delete a schedule; its builds stay. Role: maintainer."""
    project = _find_project(request, slug, access.MANAGE)
    schedules.schedule_delete(schedule=_find_schedule(project, schedule_id))
    return Reply(204, None)
