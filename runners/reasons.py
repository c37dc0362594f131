"""Why is this queued? A queued build's reason, in words, from the runners' rows and
the queue (docs/architecture.md, "Labels and queue reasons").

The first of these that holds:
1. no runner with every label the job needs is online (its last contact is within
   GOCI_RUNNER_OFFLINE_SECONDS): "waiting for a runner with labels [gpu]: none is online";
2. every such runner online is paused or draining: "runner r1 is paused";
3. jobs queued before it: "position 4 of 9 in the queue";
4. it is next, and every slot of those runners is taken: "all 3 runners with labels
   [linux] are busy (6 of 6 slots)";
5. it is next and a slot is free (a runner takes it within its poll):
   "position 1 of 9 in the queue".

A QueueSnapshot answers for any number of builds with two queries (the runners with
their running jobs, the queue), so a page of builds costs the same as one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import BooleanField, Count, ExpressionWrapper, Q
from django.utils import timezone

from builds import deployments
from builds.models import Build, Job, Status
from runners.models import Runner

# Queued jobs read at once; past that (a queue this long is an outage), a build further
# back costs two count queries of its own.
MAX_QUEUE = 10_000
MAX_NAMES = 3  # runners named in one reason


def online_cutoff(now: datetime | None = None) -> datetime:
    """A runner whose last contact is at or after this is online."""
    return (now or timezone.now()) - timedelta(seconds=settings.GOCI_RUNNER_OFFLINE_SECONDS)


def is_online(runner: Runner, now: datetime | None = None) -> bool:
    return runner.last_contact is not None and runner.last_contact >= online_cutoff(now)


@dataclass(frozen=True)
class _Runner:
    name: str
    labels: frozenset[str]
    capacity: int
    state: str
    busy: int  # its running jobs


class QueueSnapshot:
    """The runners and the queue, read once; reason() for as many builds as needed."""

    def __init__(self) -> None:
        cutoff = online_cutoff()
        rows = (
            Runner.objects.filter(revoked_at__isnull=True, last_contact__gte=cutoff)
            .annotate(running=Count("jobs", filter=Q(jobs__status=Status.RUNNING)))
            .values_list("name", "labels", "capacity", "state", "running")
        )
        self.online = [
            _Runner(name, frozenset(labels or ()), capacity, state, running)
            for name, labels, capacity, state, running in rows
        ]
        queue = list(
            Job.objects.filter(status=Status.QUEUED)
            # Held by its deployment (an approval, another deployment): said so instead.
            .annotate(held=ExpressionWrapper(deployments.held_jobs(), BooleanField()))
            .order_by("id")
            .values_list("build_id", "labels", "held")[:MAX_QUEUE]
        )
        self.length = len(queue)
        self.complete = self.length < MAX_QUEUE
        # Each build's first queued job: its place in the queue and its labels.
        self.place: dict[int, tuple[int, list[str]]] = {}
        self.held: set[int] = set()
        for position, (build_id, labels, held) in enumerate(queue, start=1):
            self.place.setdefault(build_id, (position, labels or []))
            if held:
                self.held.add(build_id)

    def reason(self, build: Build) -> str | None:
        """Why the build waits; None unless it is queued."""
        if build.status != Status.QUEUED:
            return None
        unknown = not self.complete and build.pk not in self.place
        if (build.pk in self.held or unknown) and (held := deployments.waiting_reason(build)):
            return held  # an approval, or another deployment of its environment
        total = self.length
        found = self.place.get(build.pk)
        if found is None and not self.complete:
            found, total = _place_in_long_queue(build)
        if found is None:
            return None  # taken (or canceled) since the build was read
        position, labels = found
        return explain(self.online, labels, position, total)


def _place_in_long_queue(build: Build) -> tuple[tuple[int, list[str]] | None, int]:
    queued = Job.objects.filter(status=Status.QUEUED)
    job = queued.filter(build=build).order_by("id").values_list("id", "labels").first()
    if job is None:
        return None, 0
    return (queued.filter(id__lte=job[0]).count(), job[1] or []), queued.count()


def explain(online: Sequence[_Runner], labels: Sequence[str], position: int, total: int) -> str:
    needed = frozenset(labels)
    with_labels = f" with labels [{', '.join(labels)}]" if labels else ""
    fitting = [runner for runner in online if needed <= runner.labels]
    if not fitting:
        return f"waiting for a runner{with_labels}: none is online"
    active = [runner for runner in fitting if runner.state == Runner.State.ACTIVE]
    if not active:
        return _stopped(fitting)
    if position > 1:
        return f"position {position} of {total} in the queue"
    slots = sum(runner.capacity for runner in active)
    busy = sum(min(runner.busy, runner.capacity) for runner in active)
    if busy >= slots:
        taken = f"({busy} of {slots} slot{'s' if slots != 1 else ''})"
        if len(active) == 1:
            return f"runner {active[0].name}{with_labels} is busy {taken}"
        return f"all {len(active)} runners{with_labels} are busy {taken}"
    return f"position {position} of {total} in the queue"


def _stopped(runners: Sequence[_Runner]) -> str:
    """ "runner r1 is paused", "runners r1 and r2 are draining", "runners r1, r2 and 3
    more are paused or draining"."""
    names = [runner.name for runner in runners[:MAX_NAMES]]
    more = len(runners) - len(names)
    states = sorted({runner.state for runner in runners})
    state = states[0] if len(states) == 1 else "paused or draining"
    if len(runners) == 1:
        return f"runner {names[0]} is {state}"
    if more:
        listed = f"{', '.join(names)} and {more} more"
    else:
        listed = f"{', '.join(names[:-1])} and {names[-1]}"
    return f"runners {listed} are {state}"


def queue_reason(build: Build, snapshot: QueueSnapshot | None = None) -> str | None:
    """Why a queued build waits (None if it is not queued). Without a snapshot, one
    is read for it: no query at all for a build that is not queued."""
    if build.status != Status.QUEUED:
        return None
    return (snapshot or QueueSnapshot()).reason(build)
