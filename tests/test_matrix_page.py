"""A build of several jobs (a matrix cell each) on its page, in its live messages and
in its log readers: every step is known by its key ("SERVICE=bot / image"), so that
the steps the cells have in common stay apart. A build of one job is unchanged."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.test import Client

from builds.live import Publisher
from builds.logs import log_pieces
from builds.models import CELL_POSITIONS, Build, Job, LogChunk, Status, Step
from builds.pipeline import cell_name
from runners.engine import Status as EngineStatus
from runners.engine import StepResult
from runners.reporting import BuildReporter
from tests.helpers import make_project, make_token, make_user, pipeline
from tests.queue_helpers import submit
from tests.test_consumers import ORIGIN, application, session_of

MATRIX = """
matrix:
  SERVICE: [api, bot, web]
steps:
  - {name: image, run: echo image}
  - {name: push, needs: [image], run: echo push}
"""
SERVICES = ("api", "bot", "web")
# The cells' jobs, as a worker left them: api done, bot running its push, web waiting.
JOB_STATUS = {"api": Status.SUCCESS, "bot": Status.RUNNING, "web": Status.QUEUED}
STEP_STATUS = {
    ("api", "image"): Status.SUCCESS,
    ("api", "push"): Status.SUCCESS,
    ("bot", "image"): Status.SUCCESS,
    ("bot", "push"): Status.RUNNING,
    ("web", "image"): Status.QUEUED,
    ("web", "push"): Status.QUEUED,
}
TIMEOUT = 5


def key(service: str, step: str) -> str:
    return f"SERVICE={service} / {step}"


def lines_of(service: str, step: str) -> list[str]:
    return [f"{service} {step} line {n}" for n in range(1, 4)]


@dataclass
class Matrix:
    build: Build
    jobs: dict[str, Job]  # by service
    steps: dict[tuple[str, str], Step]  # by (service, step name)


def make_matrix_build(owner: Any) -> Matrix:
    """A build of three jobs made in the database as build_create makes them: a job per
    cell, named after it, the k-th one's steps at k * CELL_POSITIONS and on, with the
    lines of the steps that ran."""
    project = make_project(owner, "shop")
    build = Build.objects.create(project=project, number=1, pipeline=MATRIX, status=Status.RUNNING)
    jobs, steps = {}, {}
    for index, service in enumerate(SERVICES):
        values = {"SERVICE": service}
        job = Job.objects.create(
            build=build, name=cell_name(values), matrix=values, status=JOB_STATUS[service]
        )
        jobs[service] = job
        for offset, (name, needs) in enumerate((("image", []), ("push", ["image"]))):
            step = Step.objects.create(
                job=job,
                name=name,
                needs=needs,
                position=index * CELL_POSITIONS + offset,
                status=STEP_STATUS[service, name],
            )
            steps[service, name] = step
            if step.status != Status.QUEUED:
                LogChunk.objects.create(
                    step=step,
                    attempt=1,
                    first_line=1,
                    line_count=3,
                    text="\n".join(lines_of(service, name)),
                )
    return Matrix(build, jobs, steps)


@pytest.fixture
def ann(db: None) -> User:
    return make_user("ann")  # type: ignore[return-value]


@pytest.fixture
def matrix(ann: User) -> Matrix:
    return make_matrix_build(ann)


@pytest.fixture
def owner(client: Client, ann: User) -> Client:
    client.force_login(ann)
    return client


class Elements(HTMLParser):
    """Every start tag's attributes, and the text of each heading by its id."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.headings: dict[str, str] = {}
        self._heading: str | None = None
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {name: value or "" for name, value in attrs}
        self.tags.append((tag, found))
        if tag == "h2" and "id" in found:
            self._heading = found["id"]
            self.headings[self._heading] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "h2":
            self._heading = None

    def handle_data(self, data: str) -> None:
        if self._heading is not None:
            self.headings[self._heading] += data

    def having(self, attribute: str, tag: str | None = None) -> list[dict[str, str]]:
        return [
            attrs
            for name, attrs in self.tags
            if attribute in attrs and (tag is None or name == tag)
        ]


def page(client: Client, build: Build) -> Elements:
    response = client.get(f"/builds/{build.pk}/")
    assert response.status_code == 200
    return Elements(response.content.decode())


# ---------------------------------------------------------------------------
# The page


def test_the_page_has_a_column_per_cell_with_its_name_status_steps_and_picture(
    owner: Client, matrix: Matrix
) -> None:
    html = page(owner, matrix.build)
    cells = [a["id"] for a in html.having("id", "section") if "cell" in a["class"].split()]
    assert cells == [f"cell-{matrix.jobs[service].pk}" for service in SERVICES]
    for service in SERVICES:
        job = matrix.jobs[service]
        assert html.headings[f"cell-{job.pk}-title"] == f"SERVICE={service}"
        badges = [a for a in html.having("data-job-status") if a["data-job-status"] == str(job.pk)]
        # Above its column and above its logs.
        assert len(badges) == 2
        assert all(f"status-{JOB_STATUS[service]}" in badge["class"] for badge in badges)
    # Each cell lists its own steps, linked to their logs, and draws its own picture.
    links = [(a["data-step-link"], a["href"]) for a in html.having("data-step-link")]
    assert links == [
        (key(service, name), f"#s{index * CELL_POSITIONS + offset}")
        for index, service in enumerate(SERVICES)
        for offset, name in enumerate(("image", "push"))
    ]
    markers = [a["id"] for a in html.having("id", "marker")]
    assert markers == [f"dag-arrow-{matrix.jobs[service].pk}" for service in SERVICES]
    boxes = [a["title"] for a in html.having("title", "a") if "dag-name" in a["class"]]
    assert boxes == [key(service, name) for service in SERVICES for name in ("image", "push")]


def test_each_steps_log_is_under_its_cell_with_its_key_status_and_urls(
    owner: Client, matrix: Matrix
) -> None:
    build = matrix.build
    html = page(owner, build)
    sections = html.having("data-step", "section")
    assert [(s["data-step"], s["data-status"]) for s in sections] == [
        (key(service, name), STEP_STATUS[service, name])
        for service in SERVICES
        for name in ("image", "push")
    ]
    logs = [a["data-lines-url"] for a in html.having("data-lines-url")]
    positions = [index * CELL_POSITIONS + offset for index in range(3) for offset in range(2)]
    assert logs == [f"/builds/{build.pk}/steps/{p}/lines" for p in positions]
    raw = [a["href"] for _, a in html.tags if a.get("class") == "raw"]
    assert raw == [f"/builds/{build.pk}/steps/{p}/raw" for p in positions]
    # The statuses, durations, exit codes and reasons logview.js updates, by key.
    for attribute in (
        "data-step-status",
        "data-step-duration",
        "data-step-exit",
        "data-step-error",
    ):
        named = {a[attribute] for a in html.having(attribute)}
        assert named == {key(s, n) for s in SERVICES for n in ("image", "push")}, attribute
    headings = [html.headings[f"cell-{matrix.jobs[s].pk}-logs"].split()[0] for s in SERVICES]
    assert headings == [f"SERVICE={s}" for s in SERVICES]


def test_the_headers_poll_brings_the_cells_statuses_along(owner: Client, matrix: Matrix) -> None:
    url = f"/builds/{matrix.build.pk}/"
    Job.objects.filter(pk=matrix.jobs["web"].pk).update(status=Status.RUNNING)
    fragment = owner.get(url, HTTP_HX_REQUEST="true").content.decode()
    assert fragment.lstrip().startswith('<header id="build-header"')
    swapped = {
        a["data-job-status"]: (a["hx-swap-oob"], a["class"])
        for a in Elements(fragment).having("hx-swap-oob")
    }
    web = matrix.jobs["web"].pk
    assert swapped[str(web)] == (
        f"outerHTML:.job-status-{web}",
        f"badge status-running job-status-{web}",
    )
    assert len(swapped) == 3


def test_a_build_of_one_job_has_no_cells_and_its_steps_keep_their_names(
    owner: Client, ann: User
) -> None:
    project = make_project(ann, "plain")
    build = submit(project, "steps:\n  - {name: image, run: echo}\n  - {name: push, run: echo}\n")  # type: ignore[arg-type]
    html = page(owner, build)
    assert html.having("data-job-status") == []
    assert not any("cell" in a.get("class", "").split() for _, a in html.tags)
    assert [a["data-step"] for a in html.having("data-step")] == ["image", "push"]
    assert [a["id"] for a in html.having("id", "marker")] == ["dag-arrow"]
    fragment = owner.get(f"/builds/{build.pk}/", HTTP_HX_REQUEST="true").content.decode()
    assert "hx-swap-oob" not in fragment


# ---------------------------------------------------------------------------
# Log readers


def test_the_lines_endpoint_names_the_step_by_its_key(owner: Client, matrix: Matrix) -> None:
    step = matrix.steps["bot", "image"]
    body = owner.get(f"/builds/{matrix.build.pk}/steps/{step.position}/lines").json()
    assert body["step"] == key("bot", "image")
    assert [text for _, text, _ in body["lines"]] == lines_of("bot", "image")


def test_the_raw_log_heads_each_step_with_its_key(owner: Client, matrix: Matrix) -> None:
    response = owner.get(f"/builds/{matrix.build.pk}/log.txt")
    text = b"".join(response.streaming_content).decode()
    expected = []
    for service in SERVICES:
        for name in ("image", "push"):
            expected.append(f"==> {key(service, name)} ({STEP_STATUS[service, name]})")
            if STEP_STATUS[service, name] != Status.QUEUED:
                expected += lines_of(service, name)
    assert text.splitlines() == expected


def test_a_steps_raw_log_is_that_cells_step(owner: Client, matrix: Matrix) -> None:
    step = matrix.steps["bot", "push"]
    response = owner.get(f"/builds/{matrix.build.pk}/steps/{step.position}/raw")
    assert b"".join(response.streaming_content).decode().splitlines() == lines_of("bot", "push")
    assert response["Content-Disposition"] == 'attachment; filename="shop-1-SERVICE_bot___push.log"'


def test_the_api_reads_one_cells_step_by_its_key(ann: User, matrix: Matrix) -> None:
    client = Client()
    token = make_token(ann)
    url = f"/api/builds/{matrix.build.pk}/logs"

    def text(**query: str) -> tuple[int, str]:
        response = client.get(url, query, HTTP_AUTHORIZATION=f"Bearer {token}")
        if response.status_code != 200:
            return response.status_code, response.content.decode()
        return 200, b"".join(response.streaming_content).decode()

    assert text(step=key("bot", "image")) == (200, "\n".join(lines_of("bot", "image")) + "\n")
    assert text(step=key("api", "push"), after="2") == (200, "api push line 3\n")
    whole = text()[1]
    assert f"==> {key('web', 'image')} (queued)" in whole
    # A cell's step by its name alone is no step of this build.
    assert text(step="image")[0] == 404
    assert text(step="SERVICE=nope / image")[0] == 404


# ---------------------------------------------------------------------------
# Live: the WebSocket's catch-up and the worker's messages


def communicator(build: Build, cookie: str) -> Any:
    headers = [
        (b"origin", ORIGIN),
        (b"host", b"localhost"),
        (b"cookie", f"sessionid={cookie}".encode()),
    ]
    return WebsocketCommunicator(application(), f"/ws/builds/{build.pk}/", headers=headers)


@pytest.fixture
async def live(transactional_db: None) -> AsyncIterator[tuple[Matrix, Any]]:
    """The matrix build and a socket on it, of its owner, connected."""

    @sync_to_async
    def world() -> tuple[Matrix, str]:
        ann = make_user("ann")
        return make_matrix_build(ann), session_of(ann)

    matrix, cookie = await world()
    ws = communicator(matrix.build, cookie)
    connected, _ = await ws.connect(timeout=TIMEOUT)
    assert connected
    yield matrix, ws
    await ws.disconnect()


async def receive_until_caught_up(ws: Any) -> list[dict[str, Any]]:
    messages = []
    while (message := await ws.receive_json_from(timeout=TIMEOUT))["type"] != "caught_up":
        messages.append(message)
    return messages


async def test_the_catch_up_names_each_cells_steps_by_their_keys(
    live: tuple[Matrix, Any],
) -> None:
    _, ws = live
    await ws.send_json_to(
        {"type": "resume", "attempt": 1, "steps": {key("bot", "image"): 2, "image": 3}}
    )
    messages = await receive_until_caught_up(ws)
    lines = [(m["step"], m["first"], m["lines"]) for m in messages if m["type"] == "lines"]
    assert lines == [
        (key("api", "image"), 1, lines_of("api", "image")),
        (key("api", "push"), 1, lines_of("api", "push")),
        # Held up to line 2 by the page: only the rest.
        (key("bot", "image"), 3, lines_of("bot", "image")[2:]),
        (key("bot", "push"), 1, lines_of("bot", "push")),
    ]
    statuses = [(m["step"], m["status"]) for m in messages if m["type"] == "step"]
    assert statuses == [
        (key(service, name), STEP_STATUS[service, name])
        for service in SERVICES
        for name in ("image", "push")
    ]


async def test_the_workers_messages_name_the_step_by_its_key(
    live: tuple[Matrix, Any],
) -> None:
    """The reporter of the bot cell's job publishes what it stores with the keys the
    page has, so that its lines land in that cell's log, not in another's."""
    matrix, ws = live
    await ws.send_json_to({"type": "resume", "attempt": 1, "steps": {}})
    await receive_until_caught_up(ws)
    loop = asyncio.get_running_loop()

    @sync_to_async
    def report() -> None:
        job = Job.objects.get(pk=matrix.jobs["bot"].pk)
        step_ids = dict(Step.objects.filter(job=job).values_list("name", "id"))
        push = next(step for step in pipeline(MATRIX).steps if step.name == "push")
        publisher = Publisher(loop)
        reporter = BuildReporter(job, step_ids, publisher, on_lost=lambda: None)
        reporter.step_log(push, 4, ["bot push line 4"], 0.0)
        reporter.step_finished(push, StepResult("push", EngineStatus.SUCCESS, 0))
        reporter.flush()
        publisher.close()

    await report()
    # Another test's build may share this group's name on a shared Redis: only ours.
    got: list[dict[str, Any]] = []
    while len(got) < 2:
        message = await ws.receive_json_from(timeout=TIMEOUT)
        if message.get("step", "").startswith("SERVICE="):
            got.append(message)
    assert got[0] == {
        "type": "lines",
        "step": key("bot", "push"),
        "attempt": 1,
        "first": 4,
        "lines": ["bot push line 4"],
    }
    assert (got[1]["type"], got[1]["step"], got[1]["status"]) == (
        "step",
        key("bot", "push"),
        "success",
    )


def test_a_step_whose_name_holds_the_separator_is_read_by_its_key(matrix: Matrix) -> None:
    """A step's name may hold " / " too: its key splits after the cell's name."""
    bot = matrix.jobs["bot"]
    odd = Step.objects.create(job=bot, name="a / b", position=CELL_POSITIONS + 2)
    LogChunk.objects.create(step=odd, attempt=1, first_line=1, line_count=1, text="odd")
    text = "".join(
        piece
        for piece in log_pieces(matrix.build.pk, step=key("bot", "a / b"), after=0, follow=False)
        if piece is not None
    )
    assert text == "odd\n"
    # "SERVICE=bot / a" is no step (and no cell is named "SERVICE=bot / a").
    assert list(log_pieces(matrix.build.pk, step=key("bot", "a"), after=0, follow=False)) == []


def test_a_cell_allowed_to_fail_says_so(owner: Client, matrix: Matrix) -> None:
    may_fail = matrix.jobs[SERVICES[-1]]
    Job.objects.filter(pk=may_fail.pk).update(allow_failure=True)

    html = page(owner, matrix.build)

    marks = [a for a in html.having("class", "span") if "cell-may-fail" in a["class"].split()]
    assert len(marks) == 1
    text = owner.get(f"/builds/{matrix.build.pk}/").content.decode()
    head = text[text.index(f'id="cell-{may_fail.pk}"') :]
    assert head.index("allowed to fail") < head.index("</section>")
