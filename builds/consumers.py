"""Live updates of one build over a WebSocket (ws/builds/<id>/), for static/logview.js.

The database is the record and the channel layer a preview (builds/live.py): a client
says which lines it holds, gets the rest from the database, then follows the build's
group. The protocol, as JSON messages:

client -> server, once after open:
    {"type": "resume", "attempt": a, "steps": {"<step>": <last line held>, ...}}
server -> client, the catch-up, then live:
    {"type": "lines", "step": s, "attempt": a, "first": n, "lines": [...]}
    {"type": "step", "step": s, "status": st, "exit_code": c}
    {"type": "build", "status": st}
    {"type": "caught_up"}                 (once, after the catch-up)
    {"type": "paused"}                    (the channel layer is down: poll instead)

A line may come twice (in the catch-up and live); the client drops what it holds.
"""

from __future__ import annotations

import logging
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.contrib.auth.models import AnonymousUser

from builds.access import find_build_for_user
from builds.live import build_group
from builds.logs import iter_step_lines
from builds.models import Build, Step

log = logging.getLogger(__name__)

# Close codes the client tells apart: no such build (for this user), and live updates
# unavailable (the channel layer is down; the page polls the database instead).
CLOSE_NOT_FOUND = 4404
CLOSE_UNAVAILABLE = 4503
# A catch-up message holds at most this many lines and about this much text, so that a
# big log arrives in pieces the browser can draw as they come.
MAX_LINES = 2000
MAX_CHARS = 512 * 1024


class BuildConsumer(AsyncJsonWebsocketConsumer):  # type: ignore[misc]  # channels is untyped
    build_id: int
    group: str | None = None
    resumed = False

    async def connect(self) -> None:
        self.build_id = int(self.scope["url_route"]["kwargs"]["build_id"])
        user = self.scope.get("user") or AnonymousUser()  # no auth middleware: nobody
        build = await database_sync_to_async(find_build_for_user)(user, self.build_id)
        if build is None:
            # Before accept: anonymous, an outsider and a missing build look the same.
            await self.close(code=CLOSE_NOT_FOUND)
            return
        group = build_group(self.build_id)
        try:
            # Join before accepting: whatever is published from now on reaches us, so
            # nothing falls between the catch-up's reads and the live messages.
            await self.channel_layer.group_add(group, self.channel_name)
        except Exception:  # Redis down: the page still works, by polling
            log.warning("live updates of build %s unavailable", self.build_id, exc_info=True)
            await self.accept()
            await self.send_json({"type": "paused"})
            await self.close(code=CLOSE_UNAVAILABLE)
            return
        self.group = group
        await self.accept()

    async def disconnect(self, code: int) -> None:
        if self.group is not None:
            try:
                await self.channel_layer.group_discard(self.group, self.channel_name)
            except Exception:  # noqa: BLE001  (Redis down: its group expires by itself)
                log.info("could not leave %s", self.group)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if isinstance(content, dict) and content.get("type") == "resume":
            attempt = content.get("attempt")
            held = content.get("steps")
            await self.catch_up(
                attempt if isinstance(attempt, int) else None,
                {
                    name: line
                    for name, line in (held.items() if isinstance(held, dict) else ())
                    if isinstance(name, str) and isinstance(line, int) and line > 0
                },
            )

    async def catch_up(self, attempt: int | None, held: dict[str, int]) -> None:
        """Send what the database has past what the client holds, then the statuses.

        Messages published while this runs wait in our channel and follow it; those
        that arrived before the client's resume were stored before they were published
        (the worker persists first), so this catch-up holds them and they were dropped.
        """
        steps = await database_sync_to_async(_current_steps)(self.build_id)
        for step_id, name, step_attempt, _, _ in steps:
            # Line numbers count per attempt: a page showing an older attempt starts over.
            after = held.get(name, 0) if attempt == step_attempt else 0
            while True:
                first, lines = await database_sync_to_async(_lines_after)(
                    step_id, step_attempt, after
                )
                if not lines:
                    break
                await self.send_json(
                    {
                        "type": "lines",
                        "step": name,
                        "attempt": step_attempt,
                        "first": first,
                        "lines": lines,
                    }
                )
                after = first + len(lines) - 1
        # The statuses are read after the lines: a step that ended meanwhile has its
        # last lines on their way in the channel, never a status older than its lines.
        statuses = await database_sync_to_async(_statuses)(self.build_id)
        for name, status, exit_code in statuses["steps"]:
            await self.send_json(
                {"type": "step", "step": name, "status": status, "exit_code": exit_code}
            )
        if statuses["build"] is not None:
            await self.send_json({"type": "build", "status": statuses["build"]})
        await self.send_json({"type": "caught_up"})
        self.resumed = True

    # -- from the channel layer (published by the worker: runners/reporting.py) --------

    async def log_lines(self, event: dict[str, Any]) -> None:
        if self.resumed:
            await self.send_json(
                {
                    "type": "lines",
                    "step": event["step"],
                    "attempt": event["attempt"],
                    "first": event["first"],
                    "lines": event["lines"],
                }
            )

    async def step_status(self, event: dict[str, Any]) -> None:
        if self.resumed:
            await self.send_json(
                {
                    "type": "step",
                    "step": event["step"],
                    "status": event["status"],
                    "exit_code": event.get("exit_code"),
                }
            )

    async def build_status(self, event: dict[str, Any]) -> None:
        if self.resumed:
            await self.send_json({"type": "build", "status": event["status"]})


# -- database reads (run in a thread by database_sync_to_async) ----------------------


def _current_steps(build_id: int) -> list[tuple[int, str, int, str, int | None]]:
    """(id, name, attempt of its job, status, exit code) of the build's steps."""
    return list(
        Step.objects.filter(job__build_id=build_id)
        .order_by("job_id", "position")
        .values_list("id", "name", "job__attempt", "status", "exit_code")
    )


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


def _statuses(build_id: int) -> dict[str, Any]:
    return {
        "steps": [
            (name, status, exit_code) for _, name, _, status, exit_code in _current_steps(build_id)
        ],
        "build": Build.objects.filter(pk=build_id).values_list("status", flat=True).first(),
    }
