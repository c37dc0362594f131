"""A step's log read by line number (builds/logs.py): the JSON the log viewer pages,
searches and follows with, and who may read it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from builds import services
from builds.logs import iter_step_lines, search_step_lines, stored_lines, visible_text
from builds.models import Build, Job, LogChunk, Step
from tests.helpers import make_project, make_user

PIPELINE = """\
steps:
  - name: Build
    run: make
  - name: Test
    run: make test
"""

# Until builds/urls.py routes builds.logs.step_lines, a URLconf with the same route.
pytestmark = pytest.mark.django_db


@pytest.fixture
def owner() -> Any:
    return make_user("olivia")


@pytest.fixture
def outsider() -> Any:
    return make_user("oscar")


@pytest.fixture
def build(owner: Any) -> Build:
    project = make_project(owner, "shop")
    build, _ = services.build_create(project=project, pipeline=PIPELINE, author=owner)
    return build


@pytest.fixture
def step(build: Build) -> Step:
    return Step.objects.get(job__build=build, name="Test")


@pytest.fixture
def client(owner: Any) -> Client:
    client = Client()
    client.force_login(owner)
    return client


def store(step: Step, sizes: Sequence[int], attempt: int = 1, text: str = "line {n}") -> None:
    """Store consecutive chunks of these sizes, numbered from 1, a second apart."""
    start = timezone.now()
    first = 1
    chunks = []
    for size in sizes:
        lines = [text.format(n=n) for n in range(first, first + size)]
        chunks.append(
            LogChunk(
                step=step,
                attempt=attempt,
                first_line=first,
                line_count=size,
                text="\n".join(lines),
            )
        )
        first += size
    LogChunk.objects.bulk_create(chunks)
    for index, chunk in enumerate(LogChunk.objects.filter(step=step, attempt=attempt)):
        LogChunk.objects.filter(pk=chunk.pk).update(created_at=start + timedelta(seconds=index))


def url(build: Build, position: int, **query: object) -> str:
    path = reverse("builds:step-lines", args=[build.pk, position])
    if query:
        path += "?" + "&".join(f"{key}={value}" for key, value in query.items())
    return path


def numbers(body: dict[str, Any]) -> list[int]:
    return [n for n, _, _ in body["lines"]]


# ---------------------------------------------------------------------------
# Reading lines


def test_lines_after_a_number_run_across_chunk_boundaries(step: Step) -> None:
    store(step, [3, 4, 5])
    got = list(iter_step_lines(step, 1, after=2, limit=6))
    assert [(n, text) for n, text, _ in got] == [(n, f"line {n}") for n in range(3, 9)]
    assert [n for n, _, _ in iter_step_lines(step, 1, after=7)] == [8, 9, 10, 11, 12]
    assert list(iter_step_lines(step, 1, after=12)) == []
    assert list(iter_step_lines(step, 1, after=0, limit=0)) == []
    assert [n for n, _, _ in iter_step_lines(step.pk, 1, after=0, limit=2)] == [1, 2]


def test_each_line_carries_the_time_its_chunk_was_stored(step: Step) -> None:
    store(step, [2, 2])
    times = [at for _, _, at in iter_step_lines(step, 1)]
    assert times[0] == times[1] < times[2] == times[3]


def test_lines_of_a_chunk_that_ends_in_an_empty_line_are_kept(step: Step) -> None:
    LogChunk.objects.create(step=step, attempt=1, first_line=1, line_count=3, text="a\n\nb")
    LogChunk.objects.create(step=step, attempt=1, first_line=4, line_count=1, text="")
    assert [text for _, text, _ in iter_step_lines(step, 1)] == ["a", "", "b", ""]
    assert stored_lines(step, 1) == 4


def test_the_endpoint_pages_after_a_line(client: Client, build: Build, step: Step) -> None:
    store(step, [700, 700, 700])
    body = client.get(url(build, step.position, after=650, limit=100)).json()
    assert body["step"] == "Test"
    assert body["attempt"] == 1
    assert body["status"] == "queued"
    assert body["first"] == 651
    assert body["total"] == 2100
    assert numbers(body) == list(range(651, 751))
    _, text, at = body["lines"][0]
    assert text == "line 651"
    assert at.startswith(str(timezone.now().year))


def test_the_limit_is_1000_by_default_and_5000_at_most(client: Client, build: Build, step: Step):
    store(step, [2000] * 4)
    assert numbers(client.get(url(build, step.position)).json()) == list(range(1, 1001))
    body = client.get(url(build, step.position, after=10, limit=99999)).json()
    assert numbers(body) == list(range(11, 5011))


def test_the_endpoint_pages_before_a_line(client: Client, build: Build, step: Step) -> None:
    store(step, [5, 5, 5])
    body = client.get(url(build, step.position, before=12, limit=4)).json()
    assert (body["first"], numbers(body)) == (8, [8, 9, 10, 11])
    # Near the start: only the lines there are.
    body = client.get(url(build, step.position, before=3, limit=10)).json()
    assert (body["first"], numbers(body)) == (1, [1, 2])
    assert numbers(client.get(url(build, step.position, before=1)).json()) == []
    # The tail: before one past the last line.
    body = client.get(url(build, step.position, before=16, limit=3)).json()
    assert numbers(body) == [13, 14, 15]
    assert body["total"] == 15


def test_past_the_end_is_empty_not_an_error(client: Client, build: Build, step: Step) -> None:
    store(step, [5])
    body = client.get(url(build, step.position, after=5)).json()
    assert (body["first"], body["lines"], body["total"]) == (6, [], 5)
    other = Step.objects.get(job__build=build, name="Build")
    body = client.get(url(build, other.position)).json()
    assert (body["step"], body["lines"], body["total"]) == ("Build", [], 0)


def test_a_page_of_a_100000_line_log_takes_as_many_queries_as_a_short_log(
    client: Client, build: Build, step: Step, django_assert_num_queries: Any
) -> None:
    store(step, [2000] * 50)
    # Session, user, build, step, lines, total: wherever the page is in the log.
    for query in ({"after": 0}, {"after": 54321}, {"before": 100001}, {"after": 99990}):
        with django_assert_num_queries(6):
            response = client.get(url(build, step.position, **query))
        body = response.json()
        assert len(body["lines"]) == (10 if query == {"after": 99990} else 1000)
        assert body["total"] == 100000
    assert numbers(body)[-1] == 100000


def test_only_the_chunks_of_the_page_are_read(step: Step) -> None:
    store(step, [2000] * 50)
    with CaptureQueriesContext(connection) as queries:
        assert len(list(iter_step_lines(step, 1, after=54321, limit=1000))) == 1000
    (sql,) = [q["sql"] for q in queries.captured_queries]
    # The bound on first_line keeps the read to the chunks holding lines 54322..55321.
    assert '"first_line" <= 55321' in sql


# ---------------------------------------------------------------------------
# Finding text


def test_find_in_log_gives_the_numbers_of_matching_lines(
    client: Client, build: Build, step: Step
) -> None:
    LogChunk.objects.create(
        step=step,
        attempt=1,
        first_line=1,
        line_count=4,
        text="ok\nERROR: disk\nwarning\n\x1b[31merror\x1b[0m again",
    )
    LogChunk.objects.create(
        step=step, attempt=1, first_line=5, line_count=3, text="fine\nan Error\nnothing"
    )
    body = client.get(url(build, step.position, q="error")).json()
    assert body["matches"] == [2, 4, 6]
    assert body["more"] is False
    # Only what is shown is searched: not the escape codes, not text a \r overwrote.
    assert client.get(url(build, step.position, q="31m")).json()["matches"] == []
    LogChunk.objects.create(
        step=step, attempt=1, first_line=8, line_count=1, text="progress 10%\rprogress done"
    )
    assert client.get(url(build, step.position, q="10%")).json()["matches"] == []
    assert client.get(url(build, step.position, q="DONE")).json()["matches"] == [8]


def test_find_stops_at_1000_matches(step: Step) -> None:
    store(step, [2000, 2000], text="match {n}")
    matches, more = search_step_lines(step, 1, "MATCH")
    assert matches == list(range(1, 1001))
    assert more is True
    assert search_step_lines(step, 1, "match 3999") == ([3999], False)


def test_a_search_must_be_one_short_line(client: Client, build: Build, step: Step) -> None:
    assert client.get(url(build, step.position, q="")).status_code == 400
    assert client.get(url(build, step.position, q="x" * 201)).status_code == 400


def test_visible_text_drops_escapes_and_keeps_the_text_after_the_last_return() -> None:
    assert visible_text("\x1b[1;31mred\x1b[0m plain") == "red plain"
    assert visible_text("a\x1b]0;title\x07b\x1b]8;;http://x\x1b\\c\x1b(Bd") == "abcd"
    assert visible_text("tab\there\x00\x7f") == "tab\there"
    assert visible_text("10%\r20%\r\x1b[32mdone") == "done"
    assert visible_text("windows line\r") == "windows line"


# ---------------------------------------------------------------------------
# Attempts


def test_the_current_attempt_is_served_unless_another_is_asked_for(
    client: Client, build: Build, step: Step
) -> None:
    store(step, [3], attempt=1, text="first try {n}")
    Job.objects.filter(pk=step.job_id).update(attempt=2)
    store(step, [2], attempt=2, text="second try {n}")
    body = client.get(url(build, step.position)).json()
    assert body["attempt"] == 2
    assert [text for _, text, _ in body["lines"]] == ["second try 1", "second try 2"]
    assert body["total"] == 2
    body = client.get(url(build, step.position, attempt=1)).json()
    assert (body["attempt"], body["total"]) == (1, 3)
    assert body["lines"][0][1] == "first try 1"
    assert client.get(url(build, step.position, q="try", attempt=1)).json()["matches"] == [1, 2, 3]


# ---------------------------------------------------------------------------
# Who may read, and what is refused


def test_an_outsider_gets_404(outsider: Any, build: Build, step: Step) -> None:
    store(step, [3])
    client = Client()
    client.force_login(outsider)
    response = client.get(url(build, step.position))
    assert response.status_code == 404
    assert response.json() == {"detail": f"step {step.position} of build {build.pk} not found"}
    assert client.get(url(build, step.position, q="line")).status_code == 404


def test_a_missing_step_or_build_is_404(client: Client, build: Build) -> None:
    assert client.get(url(build, 99)).status_code == 404
    assert client.get(reverse("builds:step-lines", args=[build.pk + 1, 0])).status_code == 404


def test_a_signed_out_visitor_is_sent_to_sign_in(build: Build, step: Step) -> None:
    response = Client().get(url(build, step.position))
    assert response.status_code == 302
    assert response["Location"].startswith("/login/?next=")


def test_only_get_is_allowed(client: Client, build: Build, step: Step) -> None:
    assert client.post(url(build, step.position)).status_code == 405


@pytest.mark.parametrize(
    "query",
    [
        {"after": "x"},
        {"after": -1},
        {"limit": 0},
        {"before": 0},
        {"attempt": 0},
        {"after": 1, "before": 5},
    ],
)
def test_bad_numbers_are_400(client: Client, build: Build, step: Step, query: dict[str, Any]):
    response = client.get(url(build, step.position, **query))
    assert response.status_code == 400
    assert "detail" in response.json()
