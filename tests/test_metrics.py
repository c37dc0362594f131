"""/metrics (goci/metrics.py, goci/health.py): what Prometheus reads, parsed by
prometheus-client's own parser, and who may read it."""

from __future__ import annotations

import hmac
import re
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client, override_settings
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from builds.models import Build, Job, LogChunk, Project, Status, Step
from goci import health
from runners.models import Runner

HOST = {"HTTP_HOST": "localhost"}
TOKEN = "metrics-secret-4f9c"  # noqa: S105  (the test server's own token)


def scrape(**headers: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """The metrics as {sample name: {sorted labels: value}}."""
    with override_settings(GOCI_METRICS_TOKEN=TOKEN):
        response = Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}", **HOST)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[labels] = sample.value
    return samples


def _build(project: Project, number: int, status: str) -> Build:
    return Build.objects.create(project=project, number=number, status=status, pipeline="x")


def _job(build: Build, status: str, labels: list[str], claim_after: float | None) -> Job:
    job = Job.objects.create(build=build, status=status, labels=labels)
    if claim_after is not None:
        Job.objects.filter(pk=job.pk).update(
            started_at=job.created_at + timedelta(seconds=claim_after)
        )
    return job


def _step(job: Job, position: int, status: str, seconds: float | None) -> Step:
    started = timezone.now() - timedelta(hours=2)
    return Step.objects.create(
        job=job,
        name=f"s{position}",
        position=position,
        status=status,
        started_at=started if seconds is not None else None,
        finished_at=started + timedelta(seconds=seconds) if seconds is not None else None,
    )


@pytest.fixture
def rows(db: None) -> None:
    project = Project.objects.create(slug="web", name="web")
    queued = _build(project, 1, Status.QUEUED)
    _job(queued, Status.QUEUED, [], None)
    _job(queued, Status.QUEUED, ["linux", "gpu"], None)
    _job(queued, Status.QUEUED, ["gpu", "linux"], None)  # the same set, another order
    _job(queued, Status.QUEUED, ["arm"], None)
    running = _build(project, 2, Status.RUNNING)
    running_job = _job(running, Status.RUNNING, [], 0.03)
    _step(running_job, 0, Status.RUNNING, None)  # not finished: not in the histogram
    done = _build(project, 3, Status.SUCCESS)
    job = _job(done, Status.SUCCESS, [], 7)
    _step(job, 0, Status.SUCCESS, 0.05)
    slow = _step(job, 1, Status.FAILURE, 90)
    _step(job, 2, Status.SKIPPED, None)  # skipped before it started: no duration
    LogChunk.objects.create(step=slow, attempt=1, first_line=1, line_count=100, text="")
    LogChunk.objects.create(step=slow, attempt=1, first_line=101, line_count=23, text="")
    _build(project, 4, Status.FAILURE)
    _build(project, 5, Status.FAILURE)
    _build(project, 6, Status.CANCELED)
    now = timezone.now()
    Runner.objects.create(name="w1", kind="worker", last_contact=now)
    Runner.objects.create(name="w2", kind="worker", last_contact=now - timedelta(hours=1))
    Runner.objects.create(name="r1", kind="runner", last_contact=now, state="paused")
    Runner.objects.create(name="r2", kind="runner", last_contact=now, state="draining")
    Runner.objects.create(name="r3", kind="runner", last_contact=now)
    Runner.objects.create(name="r4", kind="runner", last_contact=None)  # never seen
    Runner.objects.create(name="r5", kind="runner", last_contact=now, revoked_at=now)


def test_metrics_report_the_queue_runners_builds_steps_logs_and_claims(rows: None) -> None:
    got = scrape()
    assert got["goci_queue_depth"] == {
        (("labels", ""),): 1,
        (("labels", "gpu,linux"),): 2,
        (("labels", "arm"),): 1,
    }
    assert got["goci_jobs_running"] == {(): 1}
    runners = {dict(k)["kind"] + " " + dict(k)["state"]: v for k, v in got["goci_runners"].items()}
    assert runners == {
        "worker online": 1,
        "worker offline": 1,
        "worker paused": 0,
        "worker draining": 0,
        "runner online": 1,
        "runner offline": 1,
        "runner paused": 1,
        "runner draining": 1,
    }
    finished = {dict(k)["status"]: v for k, v in got["goci_builds_finished_total"].items()}
    assert finished == {"success": 1, "failure": 2, "error": 0, "canceled": 1, "skipped": 0}

    steps = {dict(k)["le"]: v for k, v in got["goci_step_duration_seconds_bucket"].items()}
    assert steps["0.1"] == 1
    assert steps["60.0"] == 1
    assert steps["120.0"] == 2
    assert steps["+Inf"] == 2
    assert got["goci_step_duration_seconds_count"] == {(): 2}
    assert got["goci_step_duration_seconds_sum"][()] == pytest.approx(90.05)

    assert got["goci_log_lines_stored_total"] == {(): 123}

    claims = {dict(k)["le"]: v for k, v in got["goci_claim_latency_seconds_bucket"].items()}
    assert claims["0.01"] == 0
    assert claims["0.05"] == 1
    assert claims["5.0"] == 1
    assert claims["10.0"] == 2
    assert claims["+Inf"] == 2
    assert got["goci_claim_latency_seconds_sum"][()] == pytest.approx(7.03)


def test_an_empty_server_still_reports_every_metric(db: None) -> None:
    got = scrape()
    assert got["goci_queue_depth"] == {(("labels", ""),): 0}
    assert got["goci_jobs_running"] == {(): 0}
    assert len(got["goci_runners"]) == 8
    assert got["goci_step_duration_seconds_count"] == {(): 0}
    assert got["goci_claim_latency_seconds_count"] == {(): 0}
    assert got["goci_log_lines_stored_total"] == {(): 0}


def test_a_scrape_is_a_few_queries_whatever_the_rows(
    rows: None, django_assert_max_num_queries: Any
) -> None:
    with django_assert_max_num_queries(7):
        scrape()


def _status(client: Client | None = None, **extra: Any) -> int:
    return (client or Client()).get("/metrics", **{**HOST, **extra}).status_code


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (f"Bearer {TOKEN}", 200),
        (f"bearer {TOKEN}", 200),
        (f"Bearer {TOKEN}x", 404),
        (f"Bearer {TOKEN[:-1]}", 404),
        (f"Basic {TOKEN}", 404),
        (TOKEN, 404),
        ("Bearer ", 404),
        ("Bearer \u00e9\u00e9", 404),
    ],
)
def test_the_token_opens_metrics_and_nothing_else_does(
    db: None, header: str, expected: int
) -> None:
    with override_settings(GOCI_METRICS_TOKEN=TOKEN, GOCI_METRICS_ALLOW=[]):
        assert _status(HTTP_AUTHORIZATION=header) == expected


def test_the_token_is_compared_in_constant_time(db: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """A spy on the standard library's function (our code is not faked)."""
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(health.hmac, "compare_digest", spy)
    with override_settings(GOCI_METRICS_TOKEN=TOKEN):
        assert _status(HTTP_AUTHORIZATION="Bearer guess") == 404
    assert compared == [(b"guess", TOKEN.encode())]


def test_metrics_are_closed_when_neither_token_nor_addresses_are_set(db: None) -> None:
    with override_settings(GOCI_METRICS_TOKEN="", GOCI_METRICS_ALLOW=[]):
        assert _status() == 404
        assert _status(HTTP_AUTHORIZATION="Bearer ") == 404
        assert _status(REMOTE_ADDR="127.0.0.1") == 404


@pytest.mark.parametrize(
    ("allow", "address", "expected"),
    [
        (["127.0.0.1"], "127.0.0.1", 200),
        (["10.1.2.3"], "10.1.2.4", 404),
        (["10.0.0.0/8", "192.168.0.0/16"], "192.168.7.9", 200),
        (["10.0.0.0/8"], "11.0.0.1", 404),
        (["10.0.0.0/8"], "::ffff:10.2.3.4", 200),  # IPv4 seen by a dual-stack listener
        (["fd00::/8"], "fd12::1", 200),
        (["fd00::/8"], "fe80::1", 404),
    ],
)
def test_addresses_in_the_allow_list_may_read_metrics(
    db: None, allow: list[str], address: str, expected: int
) -> None:
    with override_settings(GOCI_METRICS_TOKEN="", GOCI_METRICS_ALLOW=allow):
        assert _status(REMOTE_ADDR=address) == expected


def test_behind_the_proxy_the_forwarded_address_counts_not_the_proxys(db: None) -> None:
    with override_settings(
        GOCI_METRICS_ALLOW=["10.0.0.0/8"], GOCI_BEHIND_PROXY=True, GOCI_METRICS_TOKEN=""
    ):
        # The proxy (127.0.0.1) appended the client's address last: only that one counts.
        assert _status(REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="10.9.9.9") == 200
        assert _status(REMOTE_ADDR="10.0.0.5", HTTP_X_FORWARDED_FOR="8.8.8.8") == 404
        assert _status(REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="10.1.1.1, 8.8.8.8") == 404


def _unmasked(page: bytes) -> bytes:
    return re.sub(rb'"X-CSRFToken": "\w+"', b"", page)


def test_a_refused_caller_gets_the_unknown_urls_404_for_every_method(db: None) -> None:
    client = Client(enforce_csrf_checks=True)
    with override_settings(GOCI_METRICS_TOKEN=TOKEN):
        unknown = client.get("/no-such-page", **HOST)
        refused = client.get("/metrics", **HOST)
        assert refused.status_code == unknown.status_code == 404
        # The same page, but for the CSRF token masked afresh for every response.
        assert _unmasked(refused.content) == _unmasked(unknown.content)
        for method in ("post", "put", "delete"):
            assert getattr(client, method)("/metrics", **HOST).status_code == 404, method
        # An allowed caller learns the method is wrong.
        bearer = {"HTTP_AUTHORIZATION": f"Bearer {TOKEN}", **HOST}
        assert client.post("/metrics", **bearer).status_code == 405


@pytest.mark.parametrize("value", ["10.0.0.0/33", "not-an-address", "10.0.0.1/8/8"])
def test_a_bad_allow_list_stops_the_server_from_starting(tmp_path: Any, value: str) -> None:
    import subprocess
    import sys

    from tests.helpers import REPO

    result = subprocess.run(
        [sys.executable, "-c", "import goci.settings"],
        cwd=REPO,
        env={"GOCI_DATA_DIR": str(tmp_path), "GOCI_METRICS_ALLOW": f"127.0.0.1,{value}"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "GOCI_METRICS_ALLOW must list IP addresses" in result.stderr
