"""Why is this queued? Each reason, from the runners' rows and the queue, in the API
(list and detail, with bounded queries) and on the build page."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from builds.models import Build, Job, Status
from runners.models import Runner
from runners.queue import job_claim
from runners.reasons import QueueSnapshot, queue_reason
from tests.helpers import api_call, make_token
from tests.queue_helpers import make_project, submit

pytestmark = pytest.mark.django_db

PLAIN = "steps: [{run: make}]"
GPU = "runs_on: [gpu]\nsteps: [{run: make}]"
LINUX = "runs_on: linux\nsteps: [{run: make}]"


def runner(name: str, *labels: str, capacity: int = 1, **fields: Any) -> Runner:
    fields.setdefault("last_contact", timezone.now())
    return Runner.objects.create(name=name, labels=list(labels), capacity=capacity, **fields)


def reason(build: Build) -> str | None:
    return queue_reason(Build.objects.get(pk=build.pk))


def test_a_job_whose_labels_no_runner_has_waits_for_one() -> None:
    runner("cpu", "linux")
    build = submit(make_project(), GPU)
    assert reason(build) == "waiting for a runner with labels [gpu]: none is online"


def test_with_no_runner_at_all_even_a_plain_job_says_none_is_online() -> None:
    build = submit(make_project(), PLAIN)
    assert reason(build) == "waiting for a runner: none is online"


def test_a_runner_past_the_offline_time_or_signed_off_or_revoked_does_not_count(
    settings: Any,
) -> None:
    settings.GOCI_RUNNER_OFFLINE_SECONDS = 90
    runner("old", "gpu", last_contact=timezone.now() - timedelta(seconds=91))
    runner("stopped", "gpu", last_contact=None)
    runner("revoked", "gpu", revoked_at=timezone.now())
    build = submit(make_project(), GPU)
    assert reason(build) == "waiting for a runner with labels [gpu]: none is online"
    runner("fresh", "gpu", last_contact=timezone.now() - timedelta(seconds=89))
    assert reason(build) == "position 1 of 1 in the queue"


def test_all_busy_runners_say_how_many_slots_are_taken() -> None:
    project = make_project()
    runners = [runner(f"r{n}", "linux", capacity=2) for n in range(3)]
    for index in range(6):
        submit(project, LINUX)
        assert job_claim(worker="x", labels=["linux"], runner=runners[index // 2]) is not None
    waiting = submit(project, LINUX)
    assert reason(waiting) == "all 3 runners with labels [linux] are busy (6 of 6 slots)"


def test_one_busy_runner_is_named() -> None:
    project = make_project()
    only = runner("r1", "linux")
    submit(project, PLAIN)
    assert job_claim(worker="r1", labels=["linux"], runner=only) is not None
    assert reason(submit(project, PLAIN)) == "runner r1 is busy (1 of 1 slot)"


def test_a_paused_or_draining_runner_is_named() -> None:
    project = make_project()
    paused = runner("r1", "gpu", state=Runner.State.PAUSED)
    build = submit(project, GPU)
    assert reason(build) == "runner r1 is paused"
    runner("r2", "gpu", "linux", state=Runner.State.DRAINING)
    assert reason(build) == "runners r1 and r2 are paused or draining"
    Runner.objects.filter(pk=paused.pk).update(state=Runner.State.DRAINING)
    assert reason(build) == "runners r1 and r2 are draining"
    runner("r3", "gpu")  # an active one: the job is next in line
    assert reason(build) == "position 1 of 1 in the queue"


def test_a_paused_or_draining_runner_claims_nothing_and_keeps_its_job() -> None:
    project = make_project()
    first = runner("r1")
    submit(project, PLAIN)
    taken = job_claim(worker="r1", runner=first)
    assert taken is not None
    assert taken.runner == first
    submit(project, PLAIN)
    for state in (Runner.State.PAUSED, Runner.State.DRAINING):
        Runner.objects.filter(pk=first.pk).update(state=state)
        assert job_claim(worker="r1", runner=first) is None
    assert Job.objects.get(pk=taken.pk).status == Status.RUNNING  # drained, not stopped
    Runner.objects.filter(pk=first.pk).update(state=Runner.State.ACTIVE)
    assert job_claim(worker="r1", runner=first) is not None


def test_positions_count_the_whole_queue_oldest_first() -> None:
    project = make_project()
    runner("r1", "gpu", capacity=4)
    builds = [submit(project, GPU if n % 2 else PLAIN) for n in range(9)]
    snapshot = QueueSnapshot()
    assert [snapshot.reason(b) for b in builds] == [
        f"position {n} of 9 in the queue" for n in range(1, 10)
    ]
    assert job_claim(worker="r1", labels=["gpu"]) is not None
    assert reason(builds[8]) == "position 8 of 8 in the queue"


def test_a_build_that_is_not_queued_has_no_reason(django_assert_num_queries: Any) -> None:
    build = submit(make_project(), PLAIN)
    assert job_claim(worker="w") is not None
    build = Build.objects.get(pk=build.pk)
    with django_assert_num_queries(0):
        assert queue_reason(build) is None


def test_the_api_gives_the_reason_on_the_list_and_the_detail(
    django_assert_max_num_queries: Any,
) -> None:
    project = make_project()
    token = make_token(_owner())
    runner("r1", "linux", state=Runner.State.PAUSED)
    gpu = [submit(project, GPU) for _ in range(30)]
    linux = submit(project, LINUX)
    done = submit(project, PLAIN)
    Build.objects.filter(pk=done.pk).update(status=Status.SUCCESS)
    with django_assert_max_num_queries(9) as list_queries:
        listed = api_call("get", "/api/builds", token).json()["items"]
    by_id = {item["id"]: item["queue_reason"] for item in listed}
    assert by_id[gpu[0].pk] == "waiting for a runner with labels [gpu]: none is online"
    assert by_id[linux.pk] == "runner r1 is paused"
    assert by_id[done.pk] is None
    # The same page with one queued build costs as many queries as with 31.
    Build.objects.filter(pk__in=[b.pk for b in gpu]).update(status=Status.CANCELED)
    with django_assert_max_num_queries(len(list_queries.captured_queries)):
        api_call("get", "/api/builds", token)
    detail = api_call("get", f"/api/builds/{linux.pk}", token).json()
    assert detail["queue_reason"] == "runner r1 is paused"
    assert api_call("get", f"/api/builds/{done.pk}", token).json()["queue_reason"] is None


def _owner() -> Any:
    from django.contrib.auth.models import User

    return User.objects.get(username="ann")


def test_the_build_page_and_its_polled_header_show_the_reason() -> None:
    project = make_project()
    build = submit(project, GPU)
    client = Client()
    client.force_login(_owner())
    page = client.get(f"/builds/{build.pk}/").content.decode()
    assert "Queued: waiting for a runner with labels [gpu]: none is online" in page
    runner("r1", "gpu", state=Runner.State.PAUSED)
    header = client.get(f"/builds/{build.pk}/", HTTP_HX_REQUEST="true").content.decode()
    assert "Queued: runner r1 is paused" in header
    assert job_claim(worker="w", labels=["gpu"]) is not None
    header = client.get(f"/builds/{build.pk}/", HTTP_HX_REQUEST="true").content.decode()
    assert "data-queue-reason" not in header
