"""Schedules: builds started on a cron expression (docs/schedules.md).

A schedule keeps `next_run_at`, the next due time in UTC, computed from its cron
expression in its own timezone. `run_due` starts what is due. Several server processes
run it at once (each `goci up` has a Scheduler), so a due time is claimed with a
compare-and-swap: UPDATE ... WHERE id = ? AND next_run_at = <the due time read> SET
next_run_at = <the next due time after now>. Only the process whose UPDATE changed the
row starts the build; the others see a row that moved on and do nothing. The build's
idempotency key ("schedule:<id>:<due time>", unique per project) is a second guard.

A server that was down over several due times starts ONE build when it is back, for the
latest due time that passed, never one per missed time: next_run_at jumps past now.

A run that cannot start (an invalid pipeline, a repository that cannot be read) is
recorded in `last_error` and the schedule moves on to its next time: one bad schedule
never stops the others. A claimed run whose process dies before its build is queued is
lost (at most once, never twice): the row already points at the next time.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import zoneinfo
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from croniter import CroniterBadDateError, CroniterError, croniter
from django.contrib.auth.models import User
from django.utils import timezone

from builds import services
from builds.models import Build, Project, Schedule
from goci import audit
from goci.audit import context
from goci.background import Background, seconds_until

log = logging.getLogger(__name__)

POLL = 5.0  # seconds between looks for schedules made or changed by another process
STOP_WAIT = 30.0
MAX_CRON = 200  # Schedule.cron's max_length
MAX_TIMEZONE = 64
MAX_DESCRIPTION = 200
MAX_REF = 255
MAX_INPUTS = 100
MAX_INPUT_NAME = 100
MAX_INPUTS_BYTES = 64 * 1024  # of the inputs as JSON
# A cron expression of fixed minutes and hours may skip a day (29 Feb) but never years:
# this bounds the search of a time that is never due (30 Feb), and of DST skips below.
MAX_LOOKS = 50

FIELDS = (
    ("minute", "0-59"),
    ("hour", "0-23"),
    ("day of month", "1-31"),
    ("month", "1-12 or jan-dec"),
    ("day of week", "0-7 or sun-sat, 0 and 7 are Sunday"),
)


# ---------------------------------------------------------------------------
# Validation: each says what is wrong in words for the user (services.InvalidRequest).


def _text(value: object, what: str, limit: int) -> str:
    if not isinstance(value, str):
        raise services.InvalidRequest(f"{what} must be a string")
    if len(value) > limit:
        raise services.InvalidRequest(f"{what} is at most {limit} characters")
    if "\x00" in value:
        raise services.InvalidRequest(f"{what} contains a NUL character, which cannot be stored")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise services.InvalidRequest(
            f"{what} contains invalid Unicode (a lone surrogate)"
        ) from None
    return value


def cron_problem(cron: str) -> str | None:
    """What is wrong with a cron expression (five fields: minute, hour, day of month,
    month, day of week), naming the field; None if it is good."""
    if len(cron) > MAX_CRON:
        return f"a cron expression is at most {MAX_CRON} characters"
    if "\x00" in cron or not cron.isprintable():
        return "a cron expression is five fields of printable characters"
    fields = cron.split()
    if len(fields) != len(FIELDS):
        return (
            f"a cron expression has 5 fields (minute hour day-of-month month day-of-week, "
            f"e.g. '0 3 * * *'), not {len(fields)}"
        )
    for index, (name, allowed) in enumerate(FIELDS):
        alone = ["*"] * len(FIELDS)
        alone[index] = fields[index]
        if not _parses(" ".join(alone)):
            return f"the {name} field {fields[index]!r} is not valid (allowed: {allowed})"
    if not _parses(" ".join(fields)):
        return f"{cron!r} is not a valid cron expression"
    try:
        croniter(" ".join(fields), datetime(2000, 1, 1, tzinfo=UTC)).get_next(datetime)
    except CroniterBadDateError:
        return f"{cron!r} never matches a date (such as 30 February)"
    return None


def _parses(expression: str) -> bool:
    try:
        croniter(expression)
    except (CroniterError, ValueError, KeyError, IndexError):
        return False
    return True


@functools.cache
def _zones() -> frozenset[str]:
    # The IANA names only: the system's zoneinfo directory also holds "localtime" (this
    # machine's zone, which another server may not share) and "posixrules".
    return (frozenset(zoneinfo.available_timezones()) | {"UTC"}) - {"localtime", "posixrules"}


def timezone_problem(name: str) -> str | None:
    """What is wrong with a timezone name (IANA, e.g. Europe/Berlin); None if good."""
    if name in _zones():
        return None
    shown = name[:MAX_TIMEZONE].encode(errors="backslashreplace").decode()
    return f"{shown!r} is not a timezone: use an IANA name such as UTC or Europe/Berlin"


def _check_inputs(inputs: object) -> dict[str, Any]:
    if not isinstance(inputs, Mapping):
        raise services.InvalidRequest("inputs must be an object of names and values")
    if len(inputs) > MAX_INPUTS:
        raise services.InvalidRequest(f"at most {MAX_INPUTS} inputs")
    for name, value in inputs.items():
        _text(name, "an input's name", MAX_INPUT_NAME)
        if not name:
            raise services.InvalidRequest("an input's name must not be empty")
        if isinstance(value, str):
            _text(value, f"the input {name}", MAX_INPUTS_BYTES)
        elif not isinstance(value, bool | int | float) or (
            isinstance(value, float) and not math.isfinite(value)
        ):
            raise services.InvalidRequest(
                f"the input {name} must be a string, a number or true/false"
            )
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**53:
            raise services.InvalidRequest(f"the input {name} is too big a number")
    if len(json.dumps(dict(inputs))) > MAX_INPUTS_BYTES:
        raise services.InvalidRequest(f"the inputs are at most {MAX_INPUTS_BYTES} bytes as JSON")
    return dict(inputs)


def _clean(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The given fields, checked; InvalidRequest naming the first problem."""
    known = {"description", "cron", "timezone", "ref", "inputs", "enabled"}
    if unknown := set(fields) - known:
        raise services.InvalidRequest(f"unknown schedule fields: {sorted(unknown)}")
    clean = dict(fields)
    if "cron" in clean:
        cron = _text(clean["cron"], "cron", MAX_CRON)
        if problem := cron_problem(cron):
            raise services.InvalidRequest(f"cron: {problem}")
        clean["cron"] = " ".join(cron.split())
    if "timezone" in clean:
        name = _text(clean["timezone"], "timezone", MAX_TIMEZONE)
        if problem := timezone_problem(name):
            raise services.InvalidRequest(f"timezone: {problem}")
    if "description" in clean:
        clean["description"] = _text(clean["description"], "description", MAX_DESCRIPTION)
    if "ref" in clean:
        ref = _text(clean["ref"], "ref", MAX_REF).strip()
        if any(c.isspace() or not c.isprintable() for c in ref):
            raise services.InvalidRequest("ref: a branch, tag or ref has no spaces")
        clean["ref"] = ref
    if "inputs" in clean:
        clean["inputs"] = _check_inputs(clean["inputs"])
    if "enabled" in clean and not isinstance(clean["enabled"], bool):
        raise services.InvalidRequest("enabled must be true or false")
    return clean


# ---------------------------------------------------------------------------
# Due times


def _due_times(cron: str, zone_name: str, moment: datetime, *, forward: bool) -> Iterator[datetime]:
    """The due times after `moment` (or at or before it, going back), in UTC.

    In the hour that a change from summer time repeats, a time of fixed hours
    ("30 1 * * *") is due once, on its first pass, as cron does; an expression of
    every hour ("*/30 * * * *") keeps its rhythm through both passes. A time that a
    change to summer time skips is due at the first moment after the gap (croniter's)."""
    zone = zoneinfo.ZoneInfo(zone_name)
    every_hour = cron.split()[1].startswith("*")
    start = moment.astimezone(zone)
    if not forward:
        start += timedelta(microseconds=1)  # get_prev is strictly before: include moment
    times = croniter(cron, start)
    for _ in range(MAX_LOOKS):
        local = times.get_next(datetime) if forward else times.get_prev(datetime)
        utc = local.astimezone(UTC)
        back = utc.astimezone(zone)  # fold=1 on the repeated hour's second pass
        if back.fold and not every_hour and back.replace(fold=0).utcoffset() != back.utcoffset():
            continue
        yield utc


def next_time(cron: str, zone_name: str, moment: datetime) -> datetime | None:
    """The first due time strictly after `moment`, in UTC; None if there is none."""
    try:
        return next(_due_times(cron, zone_name, moment, forward=True), None)
    except CroniterBadDateError:
        return None


def next_after(schedule: Schedule, moment: datetime) -> datetime | None:
    """The schedule's first due time strictly after `moment`, in UTC."""
    return next_time(schedule.cron, schedule.timezone, moment)


def latest_due(schedule: Schedule, moment: datetime) -> datetime | None:
    """The schedule's last due time at or before `moment`, in UTC."""
    try:
        return next(_due_times(schedule.cron, schedule.timezone, moment, forward=False), None)
    except CroniterBadDateError:
        return None


def in_timezone(schedule: Schedule, moment: datetime | None) -> datetime | None:
    """A time as the schedule's timezone shows it (for pages)."""
    if moment is None:
        return None
    return moment.astimezone(zoneinfo.ZoneInfo(schedule.timezone))


# ---------------------------------------------------------------------------
# Services


def schedule_create(*, project: Project, user: User | None, **fields: Any) -> Schedule:
    """A schedule of the project (cron required; timezone UTC, ref "" - the default
    branch - and enabled unless given), due next at its first time after now."""
    if "cron" not in fields:
        raise services.InvalidRequest("cron: a cron expression is required, e.g. '0 3 * * *'")
    clean = _clean(fields)
    schedule = Schedule(project=project, created_by=user, **clean)
    schedule.next_run_at = next_after(schedule, timezone.now()) if schedule.enabled else None
    schedule.save()
    audit.record("schedule.create", project=project, obj=schedule, details=_audit_details(schedule))
    return schedule


def schedule_update(*, schedule: Schedule, **fields: Any) -> Schedule:
    """Change the given fields. A change of when (cron, timezone, enabling) computes the
    next due time from now: nothing missed while it was disabled is run."""
    clean = _clean(fields)
    for name, value in clean.items():
        setattr(schedule, name, value)
    changed = list(clean)
    if {"cron", "timezone", "enabled"} & set(clean):
        schedule.next_run_at = next_after(schedule, timezone.now()) if schedule.enabled else None
        changed.append("next_run_at")
    # Only these: a scheduler may be moving next_run_at and the last run meanwhile.
    schedule.save(update_fields=changed)
    audit.record(
        "schedule.update",
        project=schedule.project,
        obj=schedule,
        details={"changed": sorted(clean), **_audit_details(schedule)},
    )
    return schedule


def schedule_delete(*, schedule: Schedule) -> None:
    audit.record(
        "schedule.delete",
        project=schedule.project,
        obj=schedule,
        details=_audit_details(schedule),
    )
    schedule.delete()


def _audit_details(schedule: Schedule) -> dict[str, Any]:
    # Not the inputs: a maintainer may pass anything there.
    return {
        "cron": schedule.cron,
        "timezone": schedule.timezone,
        "ref": schedule.ref,
        "enabled": schedule.enabled,
    }


def run_due(now: datetime | None = None) -> int:
    """Start every enabled schedule's due run (next_run_at <= now) that this process
    claims; how many builds it started."""
    now = now or timezone.now()
    due = (
        Schedule.objects.filter(enabled=True, next_run_at__lte=now)
        .select_related("project", "created_by")
        .order_by("next_run_at", "pk")
    )
    started = 0
    for schedule in due:
        try:
            started += _run(schedule, now)
        except Exception:  # a bug or a database outage: the next schedule, the next round
            log.exception("schedule %s: could not run", schedule.pk)
    return started


def _run(schedule: Schedule, now: datetime) -> bool:
    """Start the schedule's due run, at most once whatever the processes do: the build
    is queued with the idempotency key of (schedule, due time) first, so every process
    that gets here for that due time finds the same build, then next_run_at moves on
    by compare-and-swap. A process that dies between the two leaves the schedule due,
    and the next one finds the build made and moves it on: no run is lost or doubled."""
    seen = schedule.next_run_at
    assert seen is not None  # filtered on next_run_at <= now
    mine = Schedule.objects.filter(pk=schedule.pk, enabled=True, next_run_at=seen)
    if not mine.exists():  # another process moved it on meanwhile, or it was changed
        return False
    # One run for every time missed: the latest one (e.g. after downtime).
    due_at = max(seen, latest_due(schedule, now) or seen)
    key = f"schedule:{schedule.pk}:{due_at.isoformat()}"
    project = schedule.project
    origin = context.Origin(
        via=context.CLI, user=schedule.created_by, name=f"schedule {schedule.pk}"
    )
    build, error = None, ""
    try:
        with context.acting(origin):
            build = services.run_pipeline(
                project=project,
                ref=schedule.ref or project.default_branch,
                inputs=schedule.inputs,
                trigger=Build.Trigger.CRON,
                author=schedule.created_by,
                idempotency_key=key,
            )
    except Exception as exc:  # noqa: BLE001  (any reason is the schedule's last error)
        error = _error_text(exc)
        log.warning(
            "schedule %s of %s: run of %s not started: %s", schedule.pk, project.slug, due_at, error
        )
    # A run that could not start waits for the next due time, as one that did.
    fields: dict[str, object] = {"last_run_at": due_at, "last_error": error}
    if build is not None:
        fields["last_build"] = build
    claimed = mine.update(next_run_at=next_after(schedule, now), **fields)
    if claimed and build is not None:
        log.info(
            "schedule %s of %s: build #%s for %s", schedule.pk, project.slug, build.number, due_at
        )
    return bool(claimed and build is not None)


def _error_text(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return audit.text(text, 2000)


def next_due_in(now: datetime | None = None) -> float | None:
    """Seconds until the next enabled schedule is due (0 if one is), or None."""
    now = now or timezone.now()
    first = (
        Schedule.objects.filter(enabled=True, next_run_at__isnull=False)
        .order_by("next_run_at")
        .values_list("next_run_at", flat=True)
        .first()
    )
    return seconds_until(first, now)


class Scheduler(Background):
    """A daemon thread of each server process and worker that starts due runs until
    stop(): it wakes at the next due time, and looks every `poll` seconds for schedules
    made or changed elsewhere. Several processes racing for a run are settled by
    run_due."""

    name = "goci-scheduler"
    what = "schedules"

    def __init__(self, poll: float = POLL) -> None:
        super().__init__(poll, STOP_WAIT)

    def work(self) -> None:
        run_due()

    def next_due(self) -> float | None:
        return next_due_in()
