"""Schedules (builds/schedules.py): cron expressions and timezones checked with words
that say what is wrong, due times in the schedule's timezone across DST changes, each
due run started exactly once (also by racing processes), one run after downtime, and
the API and page that manage them."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connection
from django.test import Client

from builds import schedules, services
from builds.models import Build, Project, Role, Schedule, Status, Step
from goci.audit.models import AuditEvent
from tests.helpers import api_call, make_project, make_token, make_user
from tests.queue_helpers import require_postgres, run_one

PIPELINE = """\
steps:
  - name: always
    run: echo always
  - name: nightly
    run: echo nightly
    when: {event: cron}
  - name: on-push
    run: echo push
    when: {event: push}
"""


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.fixture
def owner(db: None) -> Any:
    return make_user("olivia")


@pytest.fixture
def project(owner: Any) -> Project:
    project: Project = make_project(owner, "shop")  # type: ignore[assignment]
    Project.objects.filter(pk=project.pk).update(pipeline=PIPELINE)
    project.refresh_from_db()
    return project


def make_schedule(project: Project, owner: Any, cron: str = "* * * * *", **fields: Any) -> Schedule:
    return schedules.schedule_create(project=project, user=owner, cron=cron, **fields)


def due_at(schedule: Schedule, when: datetime) -> Schedule:
    """The schedule as if it had been due next at `when` (made before it)."""
    Schedule.objects.filter(pk=schedule.pk).update(next_run_at=when)
    schedule.refresh_from_db()
    return schedule


def cron_builds(project: Project) -> list[Build]:
    return list(Build.objects.filter(project=project, trigger=Build.Trigger.CRON).order_by("pk"))


# ---------------------------------------------------------------------------
# Validation


@pytest.mark.parametrize(
    ("cron", "words"),
    [
        ("61 * * * *", "the minute field '61' is not valid (allowed: 0-59)"),
        ("0 24 * * *", "the hour field '24' is not valid (allowed: 0-23)"),
        ("0 0 0 * *", "the day of month field '0' is not valid"),
        ("0 0 * 13 *", "the month field '13' is not valid"),
        ("0 0 * * funday", "the day of week field 'funday' is not valid"),
        ("*/0 * * * *", "the minute field '*/0' is not valid"),
        ("* * *", "a cron expression has 5 fields"),
        ("0 0 * * * *", "a cron expression has 5 fields"),
        ("@daily", "a cron expression has 5 fields"),
        ("", "a cron expression has 5 fields"),
        ("0 0 30 2 *", "never matches a date"),
        ("0 0\x00 * * *", "printable"),
        ("0 0 * * *" + " " * 300, "at most 200 characters"),
    ],
)
def test_a_bad_cron_expression_is_refused_naming_what_is_wrong(cron: str, words: str) -> None:
    problem = schedules.cron_problem(cron)
    assert problem is not None
    assert words in problem


@pytest.mark.parametrize("cron", ["* * * * *", "0 3 * * *", "*/15 8-18 * * mon-fri", "0 0 29 2 *"])
def test_good_cron_expressions_pass(cron: str) -> None:
    assert schedules.cron_problem(cron) is None


@pytest.mark.parametrize(
    "name",
    [
        "Mars/Olympus",
        "localtime",
        "../etc/passwd",
        "",
        "x" * 10_000_000,
        "Europe/\udc80",
        "U\x00TC",
    ],
)
def test_a_timezone_that_is_not_an_iana_name_is_refused(name: str) -> None:
    problem = schedules.timezone_problem(name)
    assert problem is not None
    assert "is not a timezone: use an IANA name such as UTC or Europe/Berlin" in problem


def test_iana_timezones_pass() -> None:
    assert schedules.timezone_problem("UTC") is None
    assert schedules.timezone_problem("Europe/Berlin") is None


# ---------------------------------------------------------------------------
# Due times in the schedule's timezone


def next_times(cron: str, zone: str, start: datetime, count: int) -> list[datetime]:
    found, moment = [], start
    for _ in range(count):
        moment = schedules.next_time(cron, zone, moment)  # type: ignore[assignment]
        found.append(moment)
    return found


def test_the_next_run_is_computed_in_the_schedules_timezone_across_summer_time() -> None:
    # 09:00 in Berlin is 08:00 UTC in winter and 07:00 UTC in summer (from 29 March 2026).
    times = next_times("0 9 * * *", "Europe/Berlin", at("2026-03-27T12:00:00"), 3)
    assert times == [
        at("2026-03-28T08:00:00"),
        at("2026-03-29T07:00:00"),
        at("2026-03-30T07:00:00"),
    ]


def test_a_time_the_change_to_summer_time_skips_runs_once_just_after_the_gap() -> None:
    # 02:30 does not exist in Berlin on 29 March 2026 (02:00 -> 03:00 CEST).
    times = next_times("30 2 * * *", "Europe/Berlin", at("2026-03-27T12:00:00"), 3)
    assert times == [
        at("2026-03-28T01:30:00"),
        at("2026-03-29T01:00:00"),
        at("2026-03-30T00:30:00"),
    ]


def test_a_fixed_time_in_the_hour_repeated_by_winter_time_runs_once() -> None:
    # 01:30 happens twice in New York on 1 November 2026 (EDT, then EST): one run.
    times = next_times("30 1 * * *", "America/New_York", at("2026-10-31T12:00:00"), 2)
    assert times == [at("2026-11-01T05:30:00"), at("2026-11-02T06:30:00")]


def test_every_half_hour_keeps_its_rhythm_through_the_repeated_hour() -> None:
    times = next_times("*/30 * * * *", "America/New_York", at("2026-11-01T04:45:00"), 5)
    assert times == [
        at("2026-11-01T05:00:00"),  # 01:00 EDT
        at("2026-11-01T05:30:00"),  # 01:30 EDT
        at("2026-11-01T06:00:00"),  # 01:00 EST
        at("2026-11-01T06:30:00"),  # 01:30 EST
        at("2026-11-01T07:00:00"),  # 02:00 EST
    ]


def test_a_new_schedule_is_due_at_its_first_time_after_now(project: Project, owner: Any) -> None:
    before = datetime.now(UTC)
    schedule = make_schedule(project, owner, "0 3 * * *", timezone="Asia/Tokyo")
    assert schedule.next_run_at is not None
    assert schedule.next_run_at > before
    assert schedule.next_run_at <= before + timedelta(days=1)
    local = schedules.in_timezone(schedule, schedule.next_run_at)
    assert (local.hour, local.minute) == (3, 0)  # type: ignore[union-attr]
    assert schedule.created_by == owner
    event = AuditEvent.objects.get(action="schedule.create")
    assert event.details["cron"] == "0 3 * * *"
    assert event.project_slug == "shop"


# ---------------------------------------------------------------------------
# run_due


def test_each_due_time_starts_one_cron_build_of_the_default_branch(
    project: Project, owner: Any
) -> None:
    schedule = due_at(make_schedule(project, owner), at("2026-05-01T10:00:00"))

    assert schedules.run_due(at("2026-05-01T09:59:59")) == 0
    assert schedules.run_due(at("2026-05-01T10:00:00.400")) == 1
    assert schedules.run_due(at("2026-05-01T10:00:30")) == 0  # the same minute: done
    assert schedules.run_due(at("2026-05-01T10:01:02")) == 1

    builds = cron_builds(project)
    assert [b.idempotency_key for b in builds] == [
        f"schedule:{schedule.pk}:2026-05-01T10:00:00+00:00",
        f"schedule:{schedule.pk}:2026-05-01T10:01:00+00:00",
    ]
    assert all(b.author == owner and b.ref == "refs/heads/main" for b in builds)
    schedule.refresh_from_db()
    assert schedule.next_run_at == at("2026-05-01T10:02:00")
    assert schedule.last_run_at == at("2026-05-01T10:01:00")
    assert schedule.last_build == builds[-1]
    assert schedule.last_error == ""


def test_a_process_that_died_after_queueing_the_build_loses_no_run_and_doubles_none(
    project: Project, owner: Any
) -> None:
    schedule = due_at(make_schedule(project, owner), at("2026-05-01T10:00:00"))
    # Another process queued the due run's build, then died before moving the schedule on.
    services.run_pipeline(
        project=project,
        ref="",
        inputs={},
        trigger=Build.Trigger.CRON,
        author=owner,
        idempotency_key=f"schedule:{schedule.pk}:2026-05-01T10:00:00+00:00",
    )
    schedules.run_due(at("2026-05-01T10:00:20"))
    [build] = cron_builds(project)
    schedule.refresh_from_db()
    assert schedule.next_run_at == at("2026-05-01T10:01:00")
    assert schedule.last_build == build


def test_a_schedule_runs_its_ref_with_its_inputs(project: Project, owner: Any) -> None:
    due_at(make_schedule(project, owner, ref="release"), at("2026-05-01T10:00:00"))
    assert schedules.run_due(at("2026-05-01T10:00:00")) == 1
    assert cron_builds(project)[0].ref == "refs/heads/release"


def test_after_downtime_a_missed_window_starts_one_build_for_the_latest_due_time(
    project: Project, owner: Any
) -> None:
    schedule = due_at(make_schedule(project, owner), at("2026-05-01T10:00:00"))

    # Down from 09:59 to 12:30:15: 151 due times passed.
    assert schedules.run_due(at("2026-05-01T12:30:15")) == 1
    assert schedules.run_due(at("2026-05-01T12:30:16")) == 0

    [build] = cron_builds(project)
    assert build.idempotency_key == f"schedule:{schedule.pk}:2026-05-01T12:30:00+00:00"
    schedule.refresh_from_db()
    assert schedule.next_run_at == at("2026-05-01T12:31:00")


def test_a_disabled_schedule_does_nothing(project: Project, owner: Any) -> None:
    schedule = make_schedule(project, owner, enabled=False)
    assert schedule.next_run_at is None
    Schedule.objects.filter(pk=schedule.pk).update(next_run_at=at("2026-05-01T10:00:00"))
    assert schedules.run_due(at("2026-05-01T11:00:00")) == 0
    assert cron_builds(project) == []


def test_enabling_counts_from_now_and_runs_nothing_missed(project: Project, owner: Any) -> None:
    schedule = make_schedule(project, owner, "0 3 * * *", enabled=False)
    before = datetime.now(UTC)
    schedules.schedule_update(schedule=schedule, enabled=True)
    assert schedule.next_run_at is not None
    assert before < schedule.next_run_at <= before + timedelta(days=1)
    assert schedules.run_due() == 0


def test_a_run_that_cannot_start_is_recorded_and_the_others_still_run(
    project: Project, owner: Any
) -> None:
    broken = make_project(owner, "broken")  # no repository, no stored pipeline
    bad = due_at(make_schedule(broken, owner), at("2026-05-01T10:00:00"))  # type: ignore[arg-type]
    good = due_at(make_schedule(project, owner), at("2026-05-01T10:00:00"))

    assert schedules.run_due(at("2026-05-01T10:00:05")) == 1

    bad.refresh_from_db()
    assert "has neither a repository nor a stored pipeline" in bad.last_error
    assert bad.next_run_at == at("2026-05-01T10:01:00")  # moved on: no retry storm
    assert bad.last_build is None
    good.refresh_from_db()
    assert good.last_build is not None
    assert good.last_error == ""


def test_an_invalid_pipeline_is_the_last_error_until_a_run_starts(
    project: Project, owner: Any
) -> None:
    schedule = due_at(make_schedule(project, owner), at("2026-05-01T10:00:00"))
    Project.objects.filter(pk=project.pk).update(pipeline="steps: 3\n")
    assert schedules.run_due(at("2026-05-01T10:00:00")) == 0
    schedule.refresh_from_db()
    assert "steps" in schedule.last_error

    Project.objects.filter(pk=project.pk).update(pipeline=PIPELINE)
    assert schedules.run_due(at("2026-05-01T10:01:00")) == 1
    schedule.refresh_from_db()
    assert schedule.last_error == ""


def test_a_cron_build_runs_the_steps_for_cron_and_skips_the_others(
    project: Project, owner: Any
) -> None:
    due_at(make_schedule(project, owner), at("2026-05-01T10:00:00"))
    schedules.run_due(at("2026-05-01T10:00:00"))
    [build] = cron_builds(project)
    assert build.trigger == "cron"

    build = run_one(build)

    steps = dict(Step.objects.filter(job__build=build).values_list("name", "status"))
    assert build.status == Status.SUCCESS
    assert steps == {"always": "success", "nightly": "success", "on-push": "skipped"}

    # The same pipeline from the API: the cron step is skipped.
    other, _ = services.build_create(project=project, pipeline=PIPELINE, author=owner)
    other = run_one(other)
    steps = dict(Step.objects.filter(job__build=other).values_list("name", "status"))
    assert steps == {"always": "success", "nightly": "skipped", "on-push": "skipped"}


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_racing_processes_start_each_due_run_exactly_once() -> None:
    require_postgres()
    owner = make_user("olivia")
    project: Project = make_project(owner, "shop")  # type: ignore[assignment]
    Project.objects.filter(pk=project.pk).update(pipeline=PIPELINE)
    schedule = due_at(make_schedule(project, owner), at("2026-05-01T10:00:00"))
    racers = 8
    barrier = threading.Barrier(racers)
    started: list[int] = []
    errors: list[BaseException] = []

    def race(now: datetime) -> None:
        try:
            barrier.wait(timeout=30)
            started.append(schedules.run_due(now))
        except BaseException as exc:  # noqa: BLE001  (reported by the test)
            errors.append(exc)
        finally:
            connection.close()  # each thread has its own connection to PostgreSQL

    for minute in range(3):
        now = at("2026-05-01T10:00:00") + timedelta(minutes=minute, seconds=1)
        threads = [threading.Thread(target=race, args=(now,)) for _ in range(racers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        barrier.reset()

    assert errors == []
    assert sum(started) == 3
    keys = [b.idempotency_key for b in cron_builds(project)]
    assert keys == [f"schedule:{schedule.pk}:2026-05-01T10:0{m}:00+00:00" for m in range(3)]


# ---------------------------------------------------------------------------
# The API


@pytest.fixture
def maintainer_token(project: Project) -> str:
    mae = make_user("mae")
    services.member_add(project=project, user=mae, role=Role.MAINTAINER)  # type: ignore[arg-type]
    return make_token(mae)


def test_maintainers_create_change_and_delete_schedules_over_the_api(
    project: Project, maintainer_token: str
) -> None:
    created = api_call(
        "post",
        "/api/projects/shop/schedules",
        maintainer_token,
        {"cron": "0  3 * * *", "timezone": "Europe/Berlin", "inputs": {"level": "full"}},
    )
    assert created.status_code == 201, created.content
    body = created.json()
    assert set(body) == {
        "id", "description", "cron", "timezone", "ref", "inputs", "enabled",
        "next_run_at", "last_run_at", "last_build", "last_error",
    }  # fmt: skip
    assert body["cron"] == "0 3 * * *"
    assert body["inputs"] == {"level": "full"}
    assert body["last_build"] is None
    url = f"/api/projects/shop/schedules/{body['id']}"

    # The pipeline takes no inputs: a run with them would not start.
    changed = api_call("patch", url, maintainer_token, {"enabled": False, "inputs": {}})
    assert changed.status_code == 200, changed.content
    assert changed.json()["enabled"] is False
    assert changed.json()["inputs"] == {}
    assert changed.json()["next_run_at"] is None
    assert changed.json()["timezone"] == "Europe/Berlin"

    schedule = Schedule.objects.get(pk=body["id"])
    due_at(schedule, at("2026-05-01T01:00:00"))
    Schedule.objects.filter(pk=schedule.pk).update(enabled=True)
    schedules.run_due(at("2026-05-01T01:00:00"))
    listed = api_call("get", "/api/projects/shop/schedules", maintainer_token).json()
    build = Build.objects.get(trigger="cron")
    assert listed[0]["last_build"] == build.number
    assert listed[0]["last_run_at"] == "2026-05-01T01:00:00Z"

    assert api_call("delete", url, maintainer_token).status_code == 204
    assert api_call("delete", url, maintainer_token).status_code == 404
    assert Build.objects.filter(pk=build.pk).exists()  # its builds stay
    actions = list(
        AuditEvent.objects.filter(action__startswith="schedule.").values_list("action", flat=True)
    )
    assert sorted(actions) == ["schedule.create", "schedule.delete", "schedule.update"]


def test_another_projects_schedule_is_404(
    project: Project, owner: Any, maintainer_token: str
) -> None:
    elsewhere: Project = make_project(make_user("eve"), "elsewhere")  # type: ignore[assignment]
    foreign = make_schedule(elsewhere, None)
    for method in ("patch", "delete"):
        answer = api_call(
            method, f"/api/projects/shop/schedules/{foreign.pk}", maintainer_token, {}
        )
        assert answer.status_code == 404
        assert answer.json()["detail"] == f"schedule {foreign.pk} of project 'shop' not found"
    assert api_call("get", "/api/projects/elsewhere/schedules", maintainer_token).status_code == 404
    assert Schedule.objects.filter(pk=foreign.pk, enabled=True).exists()


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"cron": "61 * * * *"}, "cron: the minute field '61' is not valid"),
        ({"cron": "* * *"}, "cron: a cron expression has 5 fields"),
        ({"cron": "* * * * *", "timezone": "Mars/Olympus"}, "is not a timezone"),
        ({"cron": "* * * * *\u0000"}, "NUL"),
        ({"cron": "* * * * *", "timezone": "Europe/\udc80"}, "lone surrogate"),
        ({"cron": "* * * * *", "ref": "main\u0000"}, "NUL"),
        ({"cron": "* * * * *", "ref": "has space"}, "no spaces"),
        ({"cron": "* * * * *", "description": "\udc80"}, "lone surrogate"),
        ({"cron": "* * * * *", "inputs": {"n": 10**30}}, "too big a number"),
        ({"cron": "* * * * *", "inputs": {"n": "a\u0000"}}, "NUL"),
        ({"cron": "* * * * *", "inputs": {"\udc80": "x"}}, "lone surrogate"),
        ({"cron": "* * * * *", "inputs": {"n": [1]}}, "a string, a number or true/false"),
        ({"cron": "* * * * *", "inputs": "x"}, "valid dictionary"),
        ({"cron": "* * * * *", "time_zone": "UTC"}, "Extra inputs are not permitted"),
        ({"cron": 5}, "valid string"),
        ({}, "Field required"),
        ({"cron": "x" * 1_000_000}, "at most 200 characters"),
    ],
)
def test_hostile_schedules_are_422_in_json_and_store_nothing(
    project: Project, maintainer_token: str, body: dict[str, Any], words: str
) -> None:
    answer = api_call("post", "/api/projects/shop/schedules", maintainer_token, body)
    assert answer.status_code == 422, answer.content
    assert answer["Content-Type"] == "application/json"
    assert words in answer.content.decode("unicode_escape")
    assert not Schedule.objects.exists()


def test_a_huge_number_in_a_schedule_body_or_path_is_4xx(
    project: Project, owner: Any, maintainer_token: str
) -> None:
    raw = b'{"cron": "* * * * *", "inputs": {"n": 1e400}}'
    answer = api_call("post", "/api/projects/shop/schedules", maintainer_token, raw)
    assert answer.status_code == 422
    url = "/api/projects/shop/schedules/" + "9" * 40
    assert api_call("patch", url, maintainer_token, {"enabled": True}).status_code == 404
    assert api_call("delete", url, maintainer_token).status_code == 404
    assert not Schedule.objects.exists()


def test_ten_megabytes_of_schedule_is_413(project: Project, maintainer_token: str) -> None:
    body = {"cron": "* * * * *", "description": "x" * 10_000_000}
    answer = api_call("post", "/api/projects/shop/schedules", maintainer_token, body)
    assert answer.status_code == 413
    assert answer["Content-Type"] == "application/json"
    assert not Schedule.objects.exists()


# ---------------------------------------------------------------------------
# Pages


def signed_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_the_page_lists_next_run_in_its_timezone_and_utc_and_the_last_build(
    project: Project, owner: Any
) -> None:
    schedule = make_schedule(project, owner, "0 9 * * *", timezone="Europe/Berlin")
    due_at(schedule, at("2026-05-01T07:00:00"))
    schedules.run_due(at("2026-05-01T07:00:00"))
    build = Build.objects.get(trigger="cron")
    Schedule.objects.filter(pk=schedule.pk).update(
        next_run_at=at("2026-05-02T07:00:00"), last_error="the repository could not be read"
    )
    viewer = make_user("vera")
    services.member_add(project=project, user=viewer, role=Role.VIEWER)  # type: ignore[arg-type]

    page = signed_in(viewer).get("/projects/shop/schedules").content.decode()

    assert "<code>0 9 * * *</code>" in page
    assert "2026-05-02 09:00 CEST" in page
    assert "2026-05-02 07:00 UTC" in page
    assert f'href="/builds/{build.pk}/">#{build.number}</a>' in page
    assert "Not started: the repository could not be read" in page
    assert "Add a schedule" not in page  # viewers read
    assert "Disable" not in page

    project_page = signed_in(viewer).get("/projects/shop/").content.decode()
    assert "Next scheduled build:" in project_page
    assert "2026-05-02 09:00 CEST" in project_page


def test_maintainers_add_disable_and_delete_schedules_on_the_page(
    project: Project, owner: Any
) -> None:
    client = signed_in(owner)
    form = {
        "cron": "30 2 * * 1",
        "timezone": "UTC",
        "ref": "",
        "inputs": "LEVEL=full\n",
        "enabled": "on",
    }
    assert client.post("/projects/shop/schedules", form).status_code == 302
    schedule = Schedule.objects.get()
    assert schedule.inputs == {"LEVEL": "full"}
    assert schedule.enabled

    assert client.post(f"/projects/shop/schedules/{schedule.pk}/toggle").status_code == 302
    schedule.refresh_from_db()
    assert not schedule.enabled
    assert "disabled" in client.get("/projects/shop/schedules").content.decode()

    assert client.post(f"/projects/shop/schedules/{schedule.pk}/delete").status_code == 302
    assert not Schedule.objects.exists()


@pytest.mark.parametrize(
    ("form", "words"),
    [
        ({"cron": "61 * * * *", "timezone": "UTC"}, "Cron: the minute field &#x27;61"),
        ({"cron": "* * * * *", "timezone": "Nowhere/City"}, "is not a timezone"),
        ({"cron": "* * * * *\x00", "timezone": "UTC"}, "Null characters are not allowed"),
        (
            {"cron": "* * * * *", "timezone": "UTC", "inputs": "no equals"},
            "Line 1: write NAME=value",
        ),
        ({"cron": "* " * 500, "timezone": "UTC"}, "has at most 200 characters"),
    ],
)
def test_a_bad_schedule_on_the_page_is_a_form_error(
    project: Project, owner: Any, form: dict[str, str], words: str
) -> None:
    answer = signed_in(owner).post("/projects/shop/schedules", form)
    assert answer.status_code == 200
    assert words in answer.content.decode()
    assert not Schedule.objects.exists()
