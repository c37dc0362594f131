"""The live log socket's limits: a client that never reads holds no more than a window
of the log in the server, one that reads too slowly is dropped and resumes from the
database, a member removed from the project stops receiving within seconds, absurd
line numbers are harmless, and a pipeline of a thousand steps still draws its page."""

from __future__ import annotations

import base64
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.test import Client

from builds import consumers, services
from builds.live import build_group
from builds.models import Build, Job, Membership, Project, Step
from runners import queue
from tests.helpers import make_project, make_user
from tests.test_consumers import (  # noqa: F401  (fresh_layer: autouse fixture)
    TIMEOUT,
    World,
    communicator,
    fresh_layer,
    make_world,
    receive_until_caught_up,
    session_of,
)
from tests.test_up import Up, free_port, manage

pytestmark = pytest.mark.django_db(transaction=True)


async def receive_all(ws: Any, quiet: float = 0.5) -> list[str]:
    """Every message the consumer has sent, as text, until it is quiet for `quiet` s."""
    texts = []
    while not await ws.receive_nothing(timeout=quiet):
        output = await ws.receive_output(timeout=TIMEOUT)
        assert output["type"] == "websocket.send", output
        texts.append(output["text"])
    return texts


@sync_to_async
def store(world: World, first: int, lines: list[str]) -> None:
    hello = Step.objects.get(job_id=world.job_id, name="hello").pk
    queue.log_append(job_id=world.job_id, attempt=1, step_id=hello, first_line=first, lines=lines)


async def store_and_publish(world: World, first: int, lines: list[str]) -> None:
    """What the worker does with a batch: store it, then publish it."""
    await store(world, first, lines)
    await get_channel_layer().group_send(
        build_group(world.build_id),
        {
            "type": "log.lines",
            "build": world.build_id,
            "step": "hello",
            "attempt": 1,
            "first": first,
            "lines": lines,
        },
    )


def lines_of(messages: list[dict[str, Any]]) -> list[str]:
    return [line for m in messages if m["type"] == "lines" for line in m["lines"]]


async def test_a_client_that_does_not_acknowledge_gets_only_a_window_of_the_catch_up() -> None:
    world = await make_world(hello_lines=200_000)
    ws = communicator(world, world.owner)
    assert (await ws.connect(timeout=TIMEOUT))[0]
    await ws.send_json_to({"type": "resume", "attempt": 1, "steps": {}})
    texts = await receive_all(ws)
    # About WINDOW of text and no more: one message may cross it.
    sent = sum(len(text) for text in texts)
    assert consumers.WINDOW <= sent <= consumers.WINDOW + max(len(text) for text in texts)
    messages = [json.loads(text) for text in texts]
    assert all(m["type"] == "lines" for m in messages)
    # Acknowledged, the rest comes: every line once, in order, then the statuses.
    received = len(messages)
    while messages[-1]["type"] != "caught_up":
        await ws.send_json_to({"type": "ack", "received": received})
        message = await ws.receive_json_from(timeout=TIMEOUT)
        messages.append(message)
        received += 1
    assert lines_of(messages) == [f"line {n}" for n in range(1, 200_001)]
    await ws.disconnect()


async def test_a_client_that_acknowledges_what_it_was_never_sent_is_closed() -> None:
    """It would otherwise read nothing and still be sent the whole log."""
    world = await make_world(hello_lines=200_000)
    ws = communicator(world, world.owner)
    assert (await ws.connect(timeout=TIMEOUT))[0]
    await ws.send_json_to({"type": "resume", "attempt": 1, "steps": {}})
    await ws.send_json_to({"type": "ack", "received": 10**20})
    texts = []
    while (output := await ws.receive_output(timeout=TIMEOUT))["type"] != "websocket.close":
        texts.append(output["text"])
    assert output["code"] == consumers.CLOSE_BAD_ACK
    assert sum(len(text) for text in texts) <= consumers.WINDOW + max(map(len, texts), default=0)


async def test_a_client_that_stops_reading_live_lines_is_closed_and_resumes_from_the_database() -> (
    None
):
    world = await make_world()
    ws = communicator(world, world.owner)
    assert (await ws.connect(timeout=TIMEOUT))[0]
    await ws.send_json_to({"type": "resume", "attempt": 1, "steps": {"hello": 3}})
    caught_up = await receive_until_caught_up(ws)
    await ws.send_json_to({"type": "ack", "received": len(caught_up)})
    # Then it reads nothing: 2000 lines of 100 characters a batch, as the worker sends.
    first, batches = 4, 0
    while first < 4 + 4000 * 30:
        await store_and_publish(world, first, ["x" * 96 + f"{n:04d}"[-4:] for n in range(2000)])
        first += 2000
        batches += 1
    outputs = []
    while (output := await ws.receive_output(timeout=TIMEOUT))["type"] != "websocket.close":
        outputs.append(output["text"])
    assert output["code"] == consumers.CLOSE_TOO_SLOW
    assert sum(len(text) for text in outputs) <= consumers.LIVE_LIMIT
    assert len(outputs) < batches  # dropped, not queued
    # Nothing after the close.
    await store_and_publish(world, first, ["after the close"])
    assert await ws.receive_nothing(timeout=0.3)
    await ws.disconnect()
    # Back, it resumes from the last line it holds and misses nothing.
    held = 3 + sum(len(json.loads(text)["lines"]) for text in outputs)
    ws = communicator(world, world.owner)
    assert (await ws.connect(timeout=TIMEOUT))[0]
    await ws.send_json_to({"type": "resume", "attempt": 1, "steps": {"hello": held}})
    messages: list[dict[str, Any]] = []
    while not messages or messages[-1]["type"] != "caught_up":
        messages.append(await ws.receive_json_from(timeout=TIMEOUT))
        await ws.send_json_to({"type": "ack", "received": len(messages)})
    lines = [m for m in messages if m["type"] == "lines"]
    assert lines[0]["first"] == held + 1
    assert lines_of(messages)[-1] == "after the close"
    assert held + len(lines_of(messages)) == first
    await ws.disconnect()


@sync_to_async
def add_member(world: World, name: str, role: str) -> str:
    project = Project.objects.get(builds__pk=world.build_id)
    user = make_user(name)
    services.member_add(project=project, user=user, role=role)  # type: ignore[arg-type]
    return session_of(user)


@sync_to_async
def remove_member(world: World, name: str) -> None:
    services.member_remove(
        membership=Membership.objects.get(project__builds__pk=world.build_id, user__username=name)
    )


async def test_a_viewer_may_follow_the_build() -> None:
    world = await make_world()
    viewer = await add_member(world, "vic", "viewer")
    ws = communicator(world, viewer)
    assert (await ws.connect(timeout=TIMEOUT))[0]
    await ws.send_json_to({"type": "resume", "attempt": 1, "steps": {}})
    assert lines_of(await receive_until_caught_up(ws)) == ["line 1", "line 2", "line 3"]
    await ws.disconnect()


async def test_a_member_removed_from_the_project_stops_receiving_within_seconds() -> None:
    world = await make_world()
    session = await add_member(world, "dev", "developer")
    ws = communicator(world, session)
    assert (await ws.connect(timeout=TIMEOUT))[0]
    await ws.send_json_to({"type": "resume", "attempt": 1, "steps": {"hello": 3}})
    await receive_until_caught_up(ws)
    await store_and_publish(world, 4, ["line 4"])
    assert (await ws.receive_json_from(timeout=TIMEOUT))["lines"] == ["line 4"]
    await remove_member(world, "dev")
    removed = time.monotonic()
    # The socket closes as for an outsider, and nothing comes after.
    assert await ws.receive_output(timeout=TIMEOUT) == {
        "type": "websocket.close",
        "code": consumers.CLOSE_NOT_FOUND,
    }
    assert time.monotonic() - removed < consumers.RECHECK_SECONDS + 1.5
    await store_and_publish(world, 5, ["line 5"])
    assert await ws.receive_nothing(timeout=0.5)
    await ws.disconnect()
    # And a new socket is refused before accept.
    ws = communicator(world, session)
    assert await ws.connect(timeout=TIMEOUT) == (False, consumers.CLOSE_NOT_FOUND)


async def test_a_resume_from_line_10_to_the_20_holds_nothing_past_the_end() -> None:
    world = await make_world()
    ws = communicator(world, world.owner)
    assert (await ws.connect(timeout=TIMEOUT))[0]
    await ws.send_json_to(
        {"type": "resume", "attempt": 10**20, "steps": {"hello": 10**20, "count": -(10**20)}}
    )
    await ws.send_json_to({"type": "ack", "received": 10**20})
    messages = await receive_until_caught_up(ws)
    assert [m["type"] for m in messages] == ["lines", "step", "step", "build", "caught_up"]
    ws2 = communicator(world, world.owner)
    assert (await ws2.connect(timeout=TIMEOUT))[0]
    await ws2.send_json_to({"type": "resume", "attempt": 1, "steps": {"hello": 10**20}})
    messages = await receive_until_caught_up(ws2)
    assert [m["type"] for m in messages] == ["step", "step", "build", "caught_up"]
    await ws.disconnect()
    await ws2.disconnect()


def test_the_page_of_a_1000_step_chain_is_drawn() -> None:
    """plan() allows 500 steps; a damaged or future row may hold more: no recursion."""
    ann = make_user("ann")
    project = make_project(ann, "long")
    build = Build.objects.create(project=project, number=1, pipeline="steps: []", author=ann)
    job = Job.objects.create(build=build, name="pipeline")
    Step.objects.bulk_create(
        Step(job=job, name=f"s{n}", position=n, needs=[f"s{n - 1}"] if n else [])
        for n in range(1000)
    )
    client = Client()
    client.force_login(ann)  # type: ignore[arg-type]
    response = client.get(f"/builds/{build.pk}/")
    assert response.status_code == 200
    assert response.content.count(b'class="dag-node"') == 1000
    # The last step is in the 1000th column.
    assert b'transform="translate(' + str(8 + 999 * (176 + 56)).encode() in response.content


# ---------------------------------------------------------------------------
# Against a real `goci up`: daphne's own buffers, real sockets.


class RawSocket:
    """A WebSocket client on a plain socket (the stdlib has none): the handshake, masked
    text frames out, frames in. A stalled viewer is one that never calls read()."""

    def __init__(self, port: int, build_id: int, session: str) -> None:
        self.sock = socket.socket()
        # A small receive buffer: what the client does not read stays in the server.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.settimeout(30)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET /ws/builds/{build_id}/ HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                f"Origin: http://127.0.0.1:{port}\r\nCookie: sessionid={session}\r\n\r\n"
            ).encode()
        )
        answer = b""
        while not answer.endswith(b"\r\n\r\n"):  # a byte at a time: frames may follow
            answer += self.sock.recv(1)
        assert answer.startswith(b"HTTP/1.1 101"), answer

    def send(self, message: dict[str, Any]) -> None:
        payload = json.dumps(message).encode()
        mask = os.urandom(4)
        size = len(payload)
        if size < 126:
            header = bytes([0x81, 0x80 | size])
        elif size < 65536:
            header = bytes([0x81, 0x80 | 126]) + size.to_bytes(2, "big")
        else:
            header = bytes([0x81, 0x80 | 127]) + size.to_bytes(8, "big")
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def _exactly(self, size: int) -> bytes:
        data = bytearray()
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            assert chunk, "the server closed the connection"
            data += chunk
        return bytes(data)

    def read(self) -> dict[str, Any]:
        """The next message (a close frame is {"close": code})."""
        first, second = self._exactly(2)
        size = second & 0x7F
        if size == 126:
            size = int.from_bytes(self._exactly(2), "big")
        elif size == 127:
            size = int.from_bytes(self._exactly(8), "big")
        payload = self._exactly(size)
        if first & 0x0F == 0x8:
            return {"close": int.from_bytes(payload[:2], "big")}
        assert first == 0x81, first  # one unfragmented text frame per message
        message: dict[str, Any] = json.loads(payload)
        return message

    def close(self) -> None:
        self.sock.close()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def peak_rss_until_idle(pid: int, timeout: float = 120) -> float:
    """The process's highest VmRSS (MB) until it used less than 5% of a CPU for two
    seconds. Sampled as it goes: daphne drops a socket that answers no ping after about
    a minute, and its buffers with it."""
    deadline = time.monotonic() + timeout
    peak, quiet = 0.0, 0.0
    used, since = cpu_seconds(pid), time.monotonic()
    while quiet < 2:
        assert time.monotonic() < deadline, "the server never went idle"
        time.sleep(0.1)
        peak = max(peak, rss_mb(pid))
        if time.monotonic() - since >= 1:
            now_used = cpu_seconds(pid)
            quiet = quiet + 1 if now_used - used < 0.05 else 0
            used, since = now_used, time.monotonic()
    return peak


LINES = 1_000_000
TEXT = "a line of a long log, as a test suite prints it"  # a typical length


@pytest.mark.django_db(transaction=False)
def test_five_stalled_viewers_of_a_million_line_log_hold_no_more_than_50_mb(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    up = Up(data_dir, free_port())
    sockets: list[RawSocket] = []
    try:
        up.wait_ready()
        # The log is written by another process, as a worker elsewhere would have: the
        # server's memory has held none of it before the viewers come.
        build_id = int(
            manage(
                data_dir,
                "from django.contrib.auth.models import User; from django.utils import timezone\n"
                "from builds import services\n"
                "from builds.models import Build, Job, LogChunk, Step\n"
                "admin, now = User.objects.get(username='admin'), timezone.now()\n"
                f"TEXT = {TEXT!r}\n"
                "project = services.project_create(user=admin, slug='big')\n"
                "done = {'status': 'success', 'started_at': now, 'finished_at': now}\n"
                "build = Build.objects.create(project=project, number=1, pipeline='steps: []',"
                " author=admin, **done)\n"
                "step = Step.objects.create(job=Job.objects.create(build=build, **done),"
                " name='big', position=0, **done)\n"
                "LogChunk.objects.bulk_create((LogChunk(step=step, attempt=1, first_line=f,"
                " line_count=2000, text='\\n'.join(f'{n} {TEXT}' for n in range(f, f + 2000)))"
                f" for f in range(1, {LINES}, 2000)), batch_size=50)\n"
                "print(build.pk)",
            ).splitlines()[-1]
        )
        session = manage(
            data_dir,
            "from django.contrib.auth.models import User; from django.test import Client\n"
            "client = Client(); client.force_login(User.objects.get(username='admin'))\n"
            "print(client.cookies['sessionid'].value)",
        ).splitlines()[-1]
        # A viewer of the last lines warms the server up (imports, caches, connections).
        reader = RawSocket(up.port, build_id, session)
        reader.send({"type": "resume", "attempt": 1, "steps": {"big": LINES - 5000}})
        while reader.read().get("type") != "caught_up":
            pass
        reader.close()
        time.sleep(1)
        before = rss_mb(up.proc.pid)
        for _ in range(5):
            stalled = RawSocket(up.port, build_id, session)
            stalled.send({"type": "resume", "attempt": 1, "steps": {}})
            sockets.append(stalled)
        grown = peak_rss_until_idle(up.proc.pid) - before  # it has sent what it will
        print(f"five stalled viewers of {LINES:,} lines: the server grew by {grown:.1f} MB")  # noqa: T201
        assert grown <= 50, f"the server grew by {grown:.0f} MB"
        # Meanwhile a viewer that reads and acknowledges gets every line once.
        reader = RawSocket(up.port, build_id, session)
        reader.send({"type": "resume", "attempt": 1, "steps": {}})
        received, next_line = 0, 1
        while (message := reader.read()).get("type") != "caught_up":
            assert "close" not in message, message
            received += 1
            reader.send({"type": "ack", "received": received})
            if message["type"] == "lines":
                assert message["first"] == next_line
                next_line += len(message["lines"])
                assert message["lines"][-1] == f"{next_line - 1} {TEXT}"
        reader.close()
        assert next_line == LINES + 1
    finally:
        for stalled in sockets:
            stalled.close()
        if up.proc.poll() is None:
            up.stop()
        up.proc.wait()
