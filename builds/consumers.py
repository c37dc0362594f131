"""Live updates of one build over a WebSocket (ws/builds/<id>/), for static/logview.js.

The database is the record and the channel layer a preview (builds/live.py): a client
says which lines it holds, gets the rest from the database, then follows the build's
group. The protocol, as JSON messages:

A step is known by its Step.key: its name, or in a matrix build "CELL / name".

client -> server:
    {"type": "resume", "attempt": a, "steps": {"<step>": <last line held>, ...}}  (once)
    {"type": "ack", "received": n}     (n: how many messages it has taken off this socket)
server -> client, the catch-up, then live:
    {"type": "lines", "step": s, "attempt": a, "first": n, "lines": [...]}
    {"type": "step", "step": s, "status": st, "exit_code": c, "error": why or null,
     "started_at": iso or null, "finished_at": iso or null, "duration": seconds or null}
    {"type": "build", "status": st}
    {"type": "caught_up"}                 (once, after the catch-up)
    {"type": "paused"}                    (the channel layer is down: poll instead)

Flow control: what the server sends waits in daphne's memory until the client reads it,
so a client that never reads would hold the whole log there. The catch-up therefore
sends at most WINDOW characters the client has not acknowledged and goes on as acks
come; live messages are never held back (they would pile up here instead), but a client
that lets more than LIVE_LIMIT go unacknowledged is closed with CLOSE_TOO_SLOW and
resumes from the database when it reconnects. A slow client costs at most
LIVE_LIMIT + one message, whatever the size of the log.

A line may come twice (in the catch-up and live); the client drops what it holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from dataclasses import dataclass
from typing import Any, TypeGuard

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.contrib.auth.models import AnonymousUser, User
from django.db import DatabaseError
from django.db.models import QuerySet

from builds import access
from builds.live import STEP_VALUES, build_group, step_message
from builds.logs import iter_step_lines
from builds.models import Build, Project, Step

log = logging.getLogger(__name__)

# Close codes the client tells apart: no such build (for this user, also once they are
# removed from its project), a role too low, live updates unavailable (the channel
# layer is down; the page polls the database instead), and a client too slow to read
# what it is sent (it reconnects and resumes from the last line it holds); and a client
# that acknowledges messages it was never sent.
CLOSE_NOT_FOUND = 4404
CLOSE_FORBIDDEN = 4403
CLOSE_UNAVAILABLE = 4503
CLOSE_TOO_SLOW = 4429
CLOSE_BAD_ACK = 4400
# A catch-up message holds at most this many lines and about this much text, so that a
# big log arrives in pieces the browser can draw as they come.
MAX_LINES = 2000
MAX_CHARS = 512 * 1024
# Characters of JSON sent and not yet acknowledged: the catch-up waits for acks above
# WINDOW; past LIVE_LIMIT the client is closed. A browser acks each message as it takes
# it, so it stays far below both unless it stops reading.
WINDOW = 1024 * 1024
LIVE_LIMIT = 4 * 1024 * 1024
# How often an open socket checks that its user is still a member of the project.
RECHECK_SECONDS = 2.0
# Line numbers are stored as 32-bit integers: a client claiming more holds everything.
MAX_LINE = 2**31 - 1


@dataclass
class _Pending:
    """A step whose catch-up is not done: its lines after `after` are still to send."""

    step_id: int
    key: str  # Step.key
    attempt: int
    after: int


class BuildConsumer(AsyncJsonWebsocketConsumer):  # type: ignore[misc]  # channels is untyped
    build_id: int
    group: str | None = None
    project: Project | None = None
    user: User | AnonymousUser

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.closed = False
        self.started = False  # a resume came
        self.resumed = False  # the catch-up is done: every live message is forwarded
        self.pending: deque[_Pending] = deque()
        self.live_steps: set[str] = set()  # keys of the steps caught up: live lines go on
        self.sent = 0
        self.acked = 0
        self.unacked: deque[tuple[int, int]] = deque()  # (message number, characters)
        self.unacked_chars = 0
        self.watcher: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        self.build_id = int(self.scope["url_route"]["kwargs"]["build_id"])
        self.user = self.scope.get("user") or AnonymousUser()  # no auth middleware: nobody
        try:
            build = await database_sync_to_async(access.find_build_for_user)(
                self.user, self.build_id, needed=access.READ
            )
        except access.Denied:
            await self.close(code=CLOSE_FORBIDDEN)
            return
        if build is None:
            # Before accept: anonymous, an outsider and a missing build look the same.
            await self.close(code=CLOSE_NOT_FOUND)
            return
        self.project = build.project
        group = build_group(self.build_id)
        try:
            # Join before accepting: whatever is published from now on reaches us, so
            # nothing falls between the catch-up's reads and the live messages.
            await self.channel_layer.group_add(group, self.channel_name)
        except Exception:  # Redis down: the page still works, by polling
            log.warning("live updates of build %s unavailable", self.build_id, exc_info=True)
            await self.accept()
            await self.send_json({"type": "paused"})
            await self._close(CLOSE_UNAVAILABLE)
            return
        self.group = group
        await self.accept()
        self.watcher = asyncio.get_running_loop().create_task(self._watch_membership())

    async def disconnect(self, code: int) -> None:
        self.closed = True
        if self.watcher is not None:
            self.watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.watcher
        if self.group is not None:
            try:
                await self.channel_layer.group_discard(self.group, self.channel_name)
            except Exception:  # noqa: BLE001  (Redis down: its group expires by itself)
                log.info("could not leave %s", self.group)

    async def _close(self, code: int) -> None:
        if not self.closed:
            self.closed = True
            await self.close(code=code)

    async def _watch_membership(self) -> None:
        """Close the socket within RECHECK_SECONDS of its user leaving the project: one
        indexed query per socket every RECHECK_SECONDS, and it works with Redis down."""
        assert self.project is not None
        while not self.closed:
            await asyncio.sleep(RECHECK_SECONDS)
            try:
                role = await database_sync_to_async(access.role_on)(self.user, self.project)
            except DatabaseError:  # the database is down: check again next time
                log.warning("membership of socket on build %s not checked", self.build_id)
                continue
            if role is None:
                await self._close(CLOSE_NOT_FOUND)
                return

    # -- from the client -------------------------------------------------------------

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if not isinstance(content, dict) or self.closed:
            return
        if content.get("type") == "resume" and not self.started:
            self.started = True
            attempt = content.get("attempt")
            held = content.get("steps")
            await self.start_catch_up(
                attempt if _is_int(attempt) else None,
                {
                    name: min(line, MAX_LINE)
                    for name, line in (held.items() if isinstance(held, dict) else ())
                    if isinstance(name, str) and _is_int(line) and line > 0
                },
            )
        elif content.get("type") == "ack":
            received = content.get("received")
            if _is_int(received) and received > self.sent:
                # Acks for messages never sent would let a client that reads nothing
                # have everything sent to it, held in daphne's memory: refused.
                await self._close(CLOSE_BAD_ACK)
            elif _is_int(received):
                self._acknowledge(received)
                await self.catch_up()

    def _acknowledge(self, received: int) -> None:
        while self.unacked and self.unacked[0][0] <= received:
            self.unacked_chars -= self.unacked.popleft()[1]

    async def start_catch_up(self, attempt: int | None, held: dict[str, int]) -> None:
        steps = await database_sync_to_async(_current_steps)(self.build_id)
        for step_id, key, step_attempt in steps:
            # Line numbers count per attempt: a page showing an older attempt starts over.
            after = held.get(key, 0) if attempt == step_attempt else 0
            self.pending.append(_Pending(step_id, key, step_attempt, after))
        await self.catch_up()

    async def catch_up(self) -> None:
        """Send what the database has past what the client holds, while less than
        WINDOW is unacknowledged; then the statuses and `caught_up`.

        Every handler of this consumer runs one after another, so a live message is
        handled either before one of these reads (it was stored before it was published,
        so the read holds it and it is dropped) or after (the step is caught up and it is
        forwarded): none is lost, and none waits here in memory.
        """
        while self.pending and not self.closed and self.unacked_chars < WINDOW:
            step = self.pending[0]
            first, lines = await database_sync_to_async(_lines_after)(
                step.step_id, step.attempt, step.after
            )
            if not lines:
                self.pending.popleft()
                self.live_steps.add(step.key)
                continue
            await self._send(
                {
                    "type": "lines",
                    "step": step.key,
                    "attempt": step.attempt,
                    "first": first,
                    "lines": lines,
                }
            )
            step.after = first + len(lines) - 1
        if self.pending or self.resumed or not self.started or self.closed:
            return
        # The statuses are read after the lines: a step that ended meanwhile has its
        # last lines on their way in the channel, never a status older than its lines.
        steps, build_status = await database_sync_to_async(_statuses)(self.build_id)
        self.resumed = True
        for message in steps:
            await self._send(message)
        if build_status is not None:
            await self._send({"type": "build", "status": build_status})
        await self._send({"type": "caught_up"})

    async def _send(self, message: dict[str, Any], *, live: bool = False) -> None:
        if self.closed:
            return
        text = json.dumps(message)
        if live and self.unacked_chars + len(text) > LIVE_LIMIT:
            # Never queued here: the client resumes from the database when it is back.
            log.info("closing a socket on build %s: too slow", self.build_id)
            await self._close(CLOSE_TOO_SLOW)
            return
        await self.send(text_data=text)
        self.sent += 1
        self.unacked.append((self.sent, len(text)))
        self.unacked_chars += len(text)

    # -- from the channel layer (published by the worker: runners/reporting.py) --------

    async def log_lines(self, event: dict[str, Any]) -> None:
        if event["step"] in self.live_steps:
            await self._send(
                {
                    "type": "lines",
                    "step": event["step"],
                    "attempt": event["attempt"],
                    "first": event["first"],
                    "lines": event["lines"],
                },
                live=True,
            )

    async def step_status(self, event: dict[str, Any]) -> None:
        if self.resumed:
            message = {key: value for key, value in event.items() if key != "build"}
            await self._send({**message, "type": "step"}, live=True)

    async def build_status(self, event: dict[str, Any]) -> None:
        if self.resumed:
            await self._send({"type": "build", "status": event["status"]}, live=True)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


# -- database reads (run in a thread by database_sync_to_async) ----------------------


def _steps(build_id: int, *fields: str) -> QuerySet[Step]:
    """The build's steps with `fields` and what Step.key needs, in page order."""
    return (
        Step.objects.filter(job__build_id=build_id)
        .select_related("job")
        .only(*fields, "name", "job__name", "job__matrix")
        .order_by("job_id", "position")
    )


def _current_steps(build_id: int) -> list[tuple[int, str, int]]:
    """(id, key, attempt of its job) of the build's steps."""
    return [(step.pk, step.key, step.job.attempt) for step in _steps(build_id, "job__attempt")]


def _lines_after(step_id: int, attempt: int, after: int) -> tuple[int, list[str]]:
    """(first line number, lines) of the next consecutive lines past `after`, at most
    MAX_LINES of them (and about MAX_CHARS); no lines at the end or at a gap."""
    lines: list[str] = []
    chars = 0
    stored = iter_step_lines(step_id, attempt, after=after, limit=MAX_LINES)
    try:
        for number, text, _ in stored:
            if number != after + 1 + len(lines):
                break  # a gap (never written): the client asks the lines URL for the rest
            if lines and chars + len(text) > MAX_CHARS:
                break
            lines.append(text)
            chars += len(text)
    finally:
        # Stopped early: end its database cursor now, in this thread.
        close = getattr(stored, "close", None)
        if close is not None:
            close()
    return after + 1, lines


def _statuses(build_id: int) -> tuple[list[dict[str, Any]], str | None]:
    """The "step" message of each step, and the build's status."""
    steps = [
        step_message({**{field: getattr(step, field) for field in STEP_VALUES}, "name": step.key})
        for step in _steps(build_id, *STEP_VALUES)
    ]
    return steps, Build.objects.filter(pk=build_id).values_list("status", flat=True).first()
