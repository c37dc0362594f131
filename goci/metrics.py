"""What /metrics tells Prometheus (issue #13), read from the database at scrape time.

Goci runs as several processes (web, workers, remote runners on other machines), so
counters kept in one process's memory would show only that process's share. Every
figure here is a query over the rows all of them write, a handful of aggregates per
scrape; the histograms are counted in SQL (one conditional count per bucket), never by
loading rows. Counters come from rows too: deleting a project's builds lowers them,
which Prometheus reads as a counter reset.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db.models import (
    BooleanField,
    Case,
    Count,
    DurationField,
    ExpressionWrapper,
    F,
    Q,
    QuerySet,
    Sum,
    Value,
    When,
)
from django.utils import timezone
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from builds.models import FINISHED, Build, Job, LogChunk, Status, Step
from runners.models import Runner

# Upper bounds in seconds: from a trivial step to the longest one people wait for.
STEP_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
# Submit to claim: milliseconds when a worker is idle, up to an hour in a long queue.
CLAIM_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
RUNNER_STATES = ("online", "offline", "paused", "draining")


def _histogram(
    rows: QuerySet[Any], start: str, end: str, buckets: Sequence[float]
) -> tuple[list[tuple[str, float]], float]:
    """Cumulative bucket counts and the sum of (end - start) over `rows`, in one query."""
    duration = ExpressionWrapper(F(end) - F(start), output_field=DurationField())
    rows = rows.filter(**{f"{start}__isnull": False, f"{end}__isnull": False})
    counts = {
        f"le_{n}": Count("pk", filter=Q(duration__lte=timedelta(seconds=bound)))
        for n, bound in enumerate(buckets)
    }
    got = rows.annotate(duration=duration).aggregate(
        **counts, count=Count("pk"), total=Sum("duration")
    )
    pairs = [(str(float(bound)), float(got[f"le_{n}"])) for n, bound in enumerate(buckets)]
    pairs.append(("+Inf", float(got["count"])))
    total: timedelta | None = got["total"]
    return pairs, total.total_seconds() if total is not None else 0.0


def runners_by_state() -> Counter[tuple[str, str]]:
    """(kind, state) → how many runners, revoked ones left out. A runner out of contact
    is offline whatever an admin set; one in contact is paused, draining or online."""
    cutoff = timezone.now() - timedelta(seconds=settings.GOCI_RUNNER_OFFLINE_SECONDS)
    rows = (
        Runner.objects.filter(revoked_at__isnull=True)
        .annotate(
            online=Case(
                When(last_contact__gte=cutoff, then=Value(True)),
                default=Value(False),
                output_field=BooleanField(),
            )
        )
        .values("kind", "state", "online")
        .annotate(n=Count("pk"))
        .order_by()
    )
    found: Counter[tuple[str, str]] = Counter()
    for row in rows:
        if not row["online"]:
            state = "offline"
        elif row["state"] in ("paused", "draining"):
            state = row["state"]
        else:
            state = "online"
        found[row["kind"], state] += row["n"]
    return found


def queue_depth() -> Counter[str]:
    """Queued jobs by the labels they need: sorted, comma-joined ("" for none)."""
    depth: Counter[str] = Counter()
    rows = (
        Job.objects.filter(status=Status.QUEUED).values("labels").annotate(n=Count("pk")).order_by()
    )
    for row in rows:
        labels = row["labels"] if isinstance(row["labels"], list) else []
        depth[",".join(sorted(str(label) for label in labels))] += row["n"]
    return depth


class GociCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        queued = GaugeMetricFamily(
            "goci_queue_depth",
            "Jobs waiting for a runner, by the labels they need (sorted, comma-joined).",
            labels=["labels"],
        )
        depth = queue_depth()
        for labels in sorted(depth or {"": 0}):
            queued.add_metric([labels], depth[labels])
        yield queued

        running = Job.objects.filter(status=Status.RUNNING).count()
        yield GaugeMetricFamily("goci_jobs_running", "Jobs running now.", value=running)

        runners = GaugeMetricFamily(
            "goci_runners",
            "Runners (workers and remote runners, not revoked) by state: offline when "
            "out of contact, else paused, draining or online.",
            labels=["kind", "state"],
        )
        by_state = runners_by_state()
        for kind in Runner.Kind.values:
            for state in RUNNER_STATES:
                runners.add_metric([kind, state], by_state[kind, state])
        yield runners

        builds = CounterMetricFamily(
            "goci_builds_finished", "Builds finished, by status.", labels=["status"]
        )
        finished = dict(
            Build.objects.filter(status__in=FINISHED)
            .values_list("status")
            .annotate(n=Count("pk"))
            .order_by()
        )
        for status in FINISHED:
            builds.add_metric([str(status)], finished.get(status, 0))
        yield builds

        buckets, total = _histogram(
            Step.objects.filter(status__in=FINISHED), "started_at", "finished_at", STEP_BUCKETS
        )
        yield HistogramMetricFamily(
            "goci_step_duration_seconds",
            "How long finished steps ran.",
            buckets=buckets,
            sum_value=total,
        )

        lines = LogChunk.objects.aggregate(n=Sum("line_count"))["n"] or 0
        yield CounterMetricFamily("goci_log_lines_stored", "Log lines stored.", value=lines)

        buckets, total = _histogram(Job.objects.all(), "created_at", "started_at", CLAIM_BUCKETS)
        yield HistogramMetricFamily(
            "goci_claim_latency_seconds",
            "From a job's creation to its (latest) claim by a runner, for jobs that started.",
            buckets=buckets,
            sum_value=total,
        )


# auto_describe off: registering must not query the database (at import time).
REGISTRY = CollectorRegistry(auto_describe=False)
REGISTRY.register(GociCollector())
