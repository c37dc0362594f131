"""Live updates of a build over a WebSocket, through the whole stack a browser meets:
the origin check, the session, the access check, the catch-up and the channel layer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.auth import AuthMiddlewareStack
from channels.layers import get_channel_layer
from channels.routing import URLRouter
from channels.security.websocket import AllowedHostsOriginValidator
from channels.testing import WebsocketCommunicator
from django.test import Client

from builds.live import Publisher, build_group
from builds.models import Job, Status, Step
from builds.routing import websocket_urlpatterns
from runners import queue
from runners.engine import Status as EngineStatus
from runners.engine import StepResult
from runners.queue import job_claim
from runners.reporting import BuildReporter
from tests.helpers import make_project, make_user, pipeline
from tests.queue_helpers import submit

# Consumers read the database from other threads: their writes must be committed (P3).
pytestmark = pytest.mark.django_db(transaction=True)

TWO_STEPS = """
steps:
  - {name: hello, run: echo hello}
  - {name: count, run: seq 3}
"""
ORIGIN = b"http://localhost"
NOT_STARTED = {
    "exit_code": None,
    "error": None,
    "started_at": None,
    "finished_at": None,
    "duration": None,
    "image_id": "",  # a `build:` step's, once built
    "digests": {},
}
TIMEOUT = 5


def application() -> Any:
    """goci.asgi's application once it routes these URLs; until then the same stack."""
    from goci import asgi

    if getattr(asgi, "websocket_urlpatterns", None):
        return asgi.application
    return AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))


@dataclass
class World:
    build_id: int
    job_id: int
    owner: str  # session cookies
    outsider: str


def session_of(user: Any) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


@sync_to_async
def make_world(hello_lines: int = 3) -> World:
    """ann's build, its job claimed by a worker, `hello` running with lines stored."""
    ann = make_user("ann")
    project = make_project(ann, "web")
    build = submit(project, TWO_STEPS)  # type: ignore[arg-type]
    job = job_claim(worker="w")
    assert job is not None
    queue.step_start(job_id=job.pk, attempt=1, name="hello")
    hello = Step.objects.get(job=job, name="hello").pk
    first = 1
    while first <= hello_lines:
        # As the sink stores them: batches of at most 2000 lines.
        batch = [f"line {n}" for n in range(first, min(first + 2000, hello_lines + 1))]
        queue.log_append(job_id=job.pk, attempt=1, step_id=hello, first_line=first, lines=batch)
        first += len(batch)
    return World(build.pk, job.pk, session_of(ann), session_of(make_user("mallory")))


def communicator(world: World | None, cookie: str | None, origin: bytes = ORIGIN) -> Any:
    build_id = world.build_id if world is not None else 999999
    headers = [(b"origin", origin), (b"host", b"localhost")]
    if cookie is not None:
        headers.append((b"cookie", f"sessionid={cookie}".encode()))
    return WebsocketCommunicator(application(), f"/ws/builds/{build_id}/", headers=headers)


@pytest.fixture(autouse=True)
async def fresh_layer() -> AsyncIterator[None]:
    yield
    await get_channel_layer().flush()


async def receive_until_caught_up(ws: Any) -> list[dict[str, Any]]:
    messages = []
    while True:
        message = await ws.receive_json_from(timeout=TIMEOUT)
        messages.append(message)
        if message["type"] == "caught_up":
            return messages


async def test_outsiders_anonymous_users_and_missing_builds_are_refused_before_accept() -> None:
    world = await make_world()
    for who in (world.outsider, None, "not-a-session"):
        ws = communicator(world, who)
        connected, code = await ws.connect(timeout=TIMEOUT)
        assert (connected, code) == (False, 4404)
    ws = communicator(None, world.owner)  # the owner, but no such build
    assert await ws.connect(timeout=TIMEOUT) == (False, 4404)


async def test_another_origin_is_refused() -> None:
    world = await make_world()
    ws = communicator(world, world.owner, origin=b"http://evil.example")
    connected, _ = await ws.connect(timeout=TIMEOUT)
    assert connected is False
    ws = communicator(world, world.owner, origin=b"")
    connected, _ = await ws.connect(timeout=TIMEOUT)
    assert connected is False


async def test_the_owner_is_caught_up_from_the_line_it_holds_then_follows_live() -> None:
    world = await make_world()
    ws = communicator(world, world.owner)
    connected, _ = await ws.connect(timeout=TIMEOUT)
    assert connected
    await ws.send_json_to({"type": "resume", "attempt": 1, "steps": {"hello": 1}})
    messages = await receive_until_caught_up(ws)
    started = messages[1].pop("started_at")
    assert started is not None
    assert messages == [
        {"type": "lines", "step": "hello", "attempt": 1, "first": 2, "lines": ["line 2", "line 3"]},
        {
            "type": "step",
            "step": "hello",
            "status": "running",
            "exit_code": None,
            "error": None,
            "finished_at": None,
            "duration": None,
            "image_id": "",
            "digests": {},
        },
        {"type": "step", **NOT_STARTED, "step": "count", "status": "queued"},
        {"type": "build", "status": "running"},
        {"type": "caught_up"},
    ]
    # Then what the worker publishes (runners/reporting.py, runners/worker.py).
    layer = get_channel_layer()
    group = build_group(world.build_id)
    await layer.group_send(
        group,
        {
            "type": "log.lines",
            "build": world.build_id,
            "step": "hello",
            "attempt": 1,
            "first": 4,
            "lines": ["line 4"],
        },
    )
    assert await ws.receive_json_from(timeout=TIMEOUT) == {
        "type": "lines",
        "step": "hello",
        "attempt": 1,
        "first": 4,
        "lines": ["line 4"],
    }
    await layer.group_send(
        group,
        {
            "type": "step.status",
            "build": world.build_id,
            "step": "hello",
            "status": "failure",
            "exit_code": 2,
        },
    )
    assert await ws.receive_json_from(timeout=TIMEOUT) == {
        "type": "step",
        "step": "hello",
        "status": "failure",
        "exit_code": 2,
    }
    await layer.group_send(
        group, {"type": "build.status", "build": world.build_id, "status": "failure"}
    )
    assert await ws.receive_json_from(timeout=TIMEOUT) == {"type": "build", "status": "failure"}
    await ws.disconnect()


async def test_a_big_log_comes_in_messages_of_at_most_2000_lines() -> None:
    world = await make_world(hello_lines=4500)
    ws = communicator(world, world.owner)
    assert (await ws.connect(timeout=TIMEOUT))[0]
    await ws.send_json_to({"type": "resume", "attempt": 1, "steps": {}})
    lines = [m for m in await receive_until_caught_up(ws) if m["type"] == "lines"]
    assert [(m["first"], len(m["lines"])) for m in lines] == [(1, 2000), (2001, 2000), (4001, 500)]
    assert lines[2]["lines"][-1] == "line 4500"
    await ws.disconnect()


async def test_a_page_of_an_older_attempt_gets_the_current_attempt_from_line_1() -> None:
    world = await make_world()

    @sync_to_async
    def take_over() -> None:
        # The reaper gave the job to attempt 2, which has stored one line so far.
        Job.objects.filter(pk=world.job_id).update(attempt=2)
        hello = Step.objects.get(job_id=world.job_id, name="hello").pk
        queue.log_append(
            job_id=world.job_id, attempt=2, step_id=hello, first_line=1, lines=["again"]
        )

    await take_over()
    ws = communicator(world, world.owner)
    assert (await ws.connect(timeout=TIMEOUT))[0]
    await ws.send_json_to({"type": "resume", "attempt": 1, "steps": {"hello": 3}})
    messages = await receive_until_caught_up(ws)
    assert messages[0] == {
        "type": "lines",
        "step": "hello",
        "attempt": 2,
        "first": 1,
        "lines": ["again"],
    }
    await ws.disconnect()


async def test_nothing_live_is_sent_before_the_catch_up() -> None:
    """A message that arrives before the client's resume was stored before it was
    published, so the catch-up holds it: the client gets it once, in order."""
    world = await make_world()
    ws = communicator(world, world.owner)
    assert (await ws.connect(timeout=TIMEOUT))[0]
    await get_channel_layer().group_send(
        build_group(world.build_id), {"type": "build.status", "status": Status.RUNNING}
    )
    assert await ws.receive_nothing(timeout=0.3)
    await ws.send_json_to({"type": "resume", "attempt": 1, "steps": {"hello": 3}})
    messages = await receive_until_caught_up(ws)
    assert [m["type"] for m in messages] == ["step", "step", "build", "caught_up"]
    await ws.disconnect()


async def test_garbage_from_the_client_is_ignored() -> None:
    world = await make_world()
    ws = communicator(world, world.owner)
    assert (await ws.connect(timeout=TIMEOUT))[0]
    for garbage in ([1, 2], {"type": "nope"}, {"type": "resume", "attempt": "x", "steps": 3}):
        await ws.send_json_to(garbage)
    messages = await receive_until_caught_up(ws)  # the last one resumes from nothing held
    assert messages[0]["first"] == 1
    assert len(messages[0]["lines"]) == 3
    await ws.disconnect()


async def test_without_a_channel_layer_the_client_is_told_to_poll(monkeypatch: Any) -> None:
    world = await make_world()

    async def down(*args: Any) -> None:
        raise ConnectionError("Redis is down")

    # Whichever layer is configured (in memory here, Redis on CI) fails as Redis does.
    monkeypatch.setattr(type(get_channel_layer()), "group_add", down)
    ws = communicator(world, world.owner)
    connected, _ = await ws.connect(timeout=TIMEOUT)
    assert connected
    assert await ws.receive_json_from(timeout=TIMEOUT) == {"type": "paused"}
    assert await ws.receive_output(timeout=TIMEOUT) == {"type": "websocket.close", "code": 4503}


async def test_the_worker_publishes_a_step_with_its_times_exit_code_and_skip_reason() -> None:
    """The reporter's live "step" message is the row as stored, as the catch-up sends it:
    the page shows durations, exit codes and skip reasons without a reload."""
    world = await make_world()
    ws = communicator(world, world.owner)
    assert (await ws.connect(timeout=TIMEOUT))[0]
    await ws.send_json_to({"type": "resume", "attempt": 1, "steps": {"hello": 3}})
    await receive_until_caught_up(ws)
    loop = asyncio.get_running_loop()

    @sync_to_async
    def report() -> None:
        job = Job.objects.get(pk=world.job_id)
        step_ids = dict(Step.objects.filter(job=job).values_list("name", "id"))
        steps = {step.name: step for step in pipeline(TWO_STEPS).steps}
        publisher = Publisher(loop)
        reporter = BuildReporter(job, step_ids, publisher, on_lost=lambda: None)
        reporter.step_started(steps["hello"], 1)  # a new try, as after a retry
        reporter.step_finished(steps["hello"], StepResult("hello", EngineStatus.FAILURE, 2))
        reporter.step_finished(
            steps["count"], StepResult("count", EngineStatus.SKIPPED, error="'hello' failed")
        )
        reporter.flush()
        publisher.close()

    await report()
    hello = await ws.receive_json_from(timeout=TIMEOUT)
    assert hello["status"] == "failure"
    assert hello["exit_code"] == 2
    assert hello["error"] is None
    assert hello["started_at"] is not None
    assert hello["finished_at"] is not None
    assert hello["duration"] >= 0
    assert await ws.receive_json_from(timeout=TIMEOUT) == {
        "type": "step",
        **NOT_STARTED,
        "step": "count",
        "status": "skipped",
        "error": "'hello' failed",
    }
    await ws.disconnect()
