"""Who reads which events, and the filters: one place for the page, its CSV export and
GET /api/audit, so that they cannot drift apart.

Admins (superusers) read every event; anyone else the events of the projects they
maintain or own (builds.access.MANAGE). A project named in the request goes through
builds.access like every other lookup: another tenant's is None (404), one where the
user's role is too low raises access.Denied (403 naming the role).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from django.contrib.auth.models import AnonymousUser, User
from django.db.models import Q, QuerySet
from django.utils import timezone

from builds import access
from goci.audit.models import AuditEvent


def events_for(user: User | AnonymousUser, project: str | None) -> QuerySet[AuditEvent] | None:
    """The events the user may read, of `project` (a slug or id) if given; None when
    that project is not theirs to see (or does not exist)."""
    events = AuditEvent.objects.select_related("actor")
    if user.is_superuser and user.is_active:
        if project is None:
            return events
        # By the slug kept as text: a deleted project's events stay findable.
        return events.filter(project_slug=project)
    if project is not None:
        found = access.find_project_for_user(user, project, needed=access.MANAGE)
        return None if found is None else events.filter(project=found)
    managers = [role for role in access.RANK if access.has_role(role, access.MANAGE)]
    managed = access.projects_for_user(user).filter(role__in=managers)  # type: ignore[misc]  # an annotation
    return events.filter(project__in=managed.values("pk"))


@dataclass(frozen=True)
class Filters:
    actor: str | None = None
    action: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def apply(self, events: QuerySet[AuditEvent]) -> QuerySet[AuditEvent]:
        if self.actor:
            events = events.filter(actor_name=self.actor)
        if self.action:
            # "member" finds member.add, member.change and member.remove.
            events = events.filter(Q(action=self.action) | Q(action__startswith=f"{self.action}."))
        if self.since is not None:
            events = events.filter(created_at__gte=self.since)
        if self.until is not None:
            events = events.filter(created_at__lt=self.until)
        return events


def bound(text: str, *, end: bool) -> datetime:
    """A date (2026-12-01) or a date and time (2026-12-01T10:00:00Z; UTC without a zone)
    as a bound, `until` excluded: `until` a date takes in the whole of that day.
    ValueError if it is neither."""
    text = text.strip()
    try:
        if len(text) == len("2026-12-01"):
            moment = datetime.combine(date.fromisoformat(text), time.min)
            if end:
                moment += timedelta(days=1)
        else:
            moment = datetime.fromisoformat(text)
    except OverflowError:  # the day after 9999-12-31
        raise ValueError(f"expected {BOUND_HELP}, before the year 9999 ends") from None
    except ValueError:
        raise ValueError(f"expected {BOUND_HELP}") from None
    if timezone.is_naive(moment):
        moment = moment.replace(tzinfo=UTC)
    return moment


BOUND_HELP = "a date (2026-12-01) or a date and time (2026-12-01T10:30:00Z)"
