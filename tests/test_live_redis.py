"""Across processes through Redis: a separate worker process runs a build and its
lines reach a WebSocket client of this process, live, each once, in order."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings

from tests.conftest import need
from tests.helpers import make_project, make_user
from tests.queue_helpers import start_worker, submit
from tests.test_consumers import ORIGIN, TIMEOUT, application, session_of

pytestmark = [pytest.mark.redis, pytest.mark.django_db(transaction=True)]

PIPELINE = """
steps:
  - {name: talk, run: 'for i in $(seq 30); do echo "line $i"; sleep 0.05; done'}
"""


async def following(build_id: int, cookie: str) -> Any:
    """A WebSocket client of the build's page, caught up on the step `talk`."""
    from channels.testing import WebsocketCommunicator

    ws: Any = WebsocketCommunicator(
        application(),
        f"/ws/builds/{build_id}/",
        headers=[
            (b"origin", ORIGIN),
            (b"host", b"localhost"),
            (b"cookie", f"sessionid={cookie}".encode()),
        ],
    )
    connected, _ = await ws.connect(timeout=TIMEOUT)
    assert connected
    await ws.send_json_to({"type": "resume", "attempt": 1, "steps": {"talk": 0}})
    return ws


async def test_lines_of_a_worker_process_reach_the_socket_through_redis(tmp_path: Path) -> None:
    if "RedisChannelLayer" not in settings.CHANNEL_LAYERS["default"]["BACKEND"]:
        need("Redis: set REDIS_URL=redis://127.0.0.1:6379/0")

    @sync_to_async
    def prepare() -> tuple[int, str]:
        ann = make_user("ann")
        build = submit(make_project(ann, "web"), PIPELINE)  # type: ignore[arg-type]
        return build.pk, session_of(ann)

    build_id, cookie = await prepare()
    ws = await following(build_id, cookie)
    worker = start_worker(tmp_path, "remote", REDIS_URL=os.environ["REDIS_URL"])
    try:
        lines: dict[int, str] = {}
        live = 0
        status = None
        while status != "success":
            message = await ws.receive_json_from(timeout=20)
            if message["type"] == "lines":
                for number, text in enumerate(message["lines"], start=message["first"]):
                    assert number not in lines, f"line {number} arrived twice"
                    lines[number] = text
                live += 1
            elif message["type"] == "build":
                status = message["status"]
        assert lines == {i: f"line {i}" for i in range(1, 31)}
        assert live > 1  # several batches while the step ran, not one at the end
    finally:
        await ws.disconnect()
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=20)


async def test_lines_of_a_remote_runner_reach_the_socket_live(
    tmp_path: Path, live_server: Any
) -> None:
    """A runner's reports are published by the web process that stores them."""
    if "RedisChannelLayer" not in settings.CHANNEL_LAYERS["default"]["BACKEND"]:
        need("Redis: set REDIS_URL=redis://127.0.0.1:6379/0")
    from tests.test_runner_client import finished, register, start_runner

    @sync_to_async
    def prepare() -> tuple[int, str, Path]:
        ann = make_user("ann")
        build = submit(make_project(ann, "far"), PIPELINE)  # type: ignore[arg-type]
        return build.pk, session_of(ann), register(tmp_path, live_server.url)

    build_id, cookie, config = await prepare()
    ws = await following(build_id, cookie)
    runner = start_runner(tmp_path, config, "--once")
    try:
        lines: dict[int, str] = {}
        live = 0
        seen: list[str] = []
        status = None
        while status != "success":
            message = await ws.receive_json_from(timeout=20)
            if message["type"] == "lines":
                for number, text in enumerate(message["lines"], start=message["first"]):
                    assert number not in lines, f"line {number} arrived twice"
                    lines[number] = text
                live += 1
            elif message["type"] == "step":
                seen.append(message["status"])
            elif message["type"] == "build":
                status = message["status"]
        assert lines == {i: f"line {i}" for i in range(1, 31)}
        assert live > 1  # several batches while the step ran, not one at the end
        assert "running" in seen  # the catch-up said queued; the runner's report, running
        assert seen[-1] == "success"
    finally:
        await ws.disconnect()
        await sync_to_async(finished)(runner)
