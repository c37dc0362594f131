"""Reading a step's log by line number, and the JSON endpoint of the browser's log viewer.

A log is stored as LogChunk rows of consecutive lines per (step, attempt), numbered
from 1 (builds/models.py). Every read here is bounded: it finds the chunk that holds
its first line through the (step, attempt, first_line) unique index and reads on from
there through a cursor, so a page of a log of a million lines costs what a page of a
short one does.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from django.contrib.auth.decorators import login_required
from django.db.models import Subquery, Value
from django.db.models.functions import Coalesce
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from builds.access import find_build_for_user
from builds.models import LogChunk, Step

DEFAULT_LIMIT = 1000
MAX_LIMIT = 5000
MAX_MATCHES = 1000
MAX_QUERY = 200  # characters of a search
# Chunks read per round trip: about 2000 lines each at most (runners/reporting.py).
CURSOR_CHUNKS = 50

# What the browser drops from a line before showing it (static/logview.js): escape
# sequences (CSI, OSC/DCS/SOS/PM/APC strings up to BEL or ST, two-byte escapes, their
# 8-bit forms) and C0/C1 controls other than tab. Search matches what is shown.
_ESCAPES = re.compile(
    r"(?:\x1b\[|\x9b)[\x30-\x3f]*[\x20-\x2f]*[\x40-\x7e]?"
    r"|(?:\x1b[\]PX^_]|[\x9d\x90\x98\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[\x20-\x2f]*[\x30-\x7e]?"
    r"|[\x00-\x08\x0a-\x1a\x1c-\x1f\x7f-\x9f]"
)


def visible_text(line: str) -> str:
    """The text a line shows in the log viewer: after its last carriage return (the
    terminal's progress-bar rewrites; a CRLF's \\r is not one), without escapes."""
    if line.endswith("\r"):
        line = line.rstrip("\r")
    line = line[line.rfind("\r") + 1 :]
    return _ESCAPES.sub("", line)


def iter_step_lines(
    step: Step | int, attempt: int, after: int = 0, limit: int | None = None
) -> Iterator[tuple[int, str, datetime]]:
    """(number, text, stored at) of the lines of one step's attempt numbered above
    `after`, at most `limit` of them, in order, in one query read through a cursor."""
    if limit is not None and limit <= 0:
        return
    step_id = step if isinstance(step, int) else step.pk
    chunks = LogChunk.objects.filter(step_id=step_id, attempt=attempt)
    # Chunks are consecutive, so the one holding line after + 1 is the last to begin
    # at or before it; the index on (step, attempt, first_line) finds it.
    holding = (
        chunks.filter(first_line__lte=after + 1).order_by("-first_line").values("first_line")[:1]
    )
    rows = chunks.filter(first_line__gte=Coalesce(Subquery(holding), Value(after + 1)))
    if limit is not None:
        rows = rows.filter(first_line__lte=after + limit)
    rows = rows.order_by("first_line").only("first_line", "line_count", "text", "created_at")
    left = limit
    cursor = rows.iterator(chunk_size=CURSOR_CHUNKS)
    try:
        for chunk in cursor:
            lines = chunk.lines()
            skip = max(0, after + 1 - chunk.first_line)
            for offset in range(skip, len(lines)):
                yield chunk.first_line + offset, lines[offset], chunk.created_at
                if left is not None:
                    left -= 1
                    if left == 0:
                        return
    finally:
        _close(cursor)


def _close(cursor: Iterator[LogChunk]) -> None:
    # Ends the database cursor of a read stopped early (limit reached).
    close = getattr(cursor, "close", None)
    if close is not None:
        close()


def stored_lines(step: Step | int, attempt: int) -> int:
    """How many lines of one step's attempt are stored (the number of the last one)."""
    step_id = step if isinstance(step, int) else step.pk
    last = (
        LogChunk.objects.filter(step_id=step_id, attempt=attempt)
        .order_by("-first_line")
        .values_list("first_line", "line_count")
        .first()
    )
    return 0 if last is None else last[0] + last[1] - 1


def search_step_lines(
    step: Step | int, attempt: int, query: str, limit: int = MAX_MATCHES
) -> tuple[list[int], bool]:
    """The numbers of the lines whose shown text contains `query` (case-insensitive),
    at most `limit`, and whether there are more.

    The database picks the chunks whose raw text contains the query; only those are
    read and matched line by line. A match split by a colour code in the raw text is
    therefore not found, and SQLite's LIKE folds ASCII letters only.
    """
    step_id = step if isinstance(step, int) else step.pk
    needle = query.casefold()
    matches: list[int] = []
    chunks = (
        LogChunk.objects.filter(step_id=step_id, attempt=attempt, text__icontains=query)
        .order_by("first_line")
        .only("first_line", "text")
        .iterator(chunk_size=CURSOR_CHUNKS)
    )
    try:
        for chunk in chunks:
            for offset, line in enumerate(chunk.lines()):
                if needle in visible_text(line).casefold():
                    if len(matches) == limit:
                        return matches, True
                    matches.append(chunk.first_line + offset)
    finally:
        _close(chunks)
    return matches, False


class BadRequest(ValueError):
    pass


def _number(request: HttpRequest, name: str, low: int) -> int | None:
    raw = request.GET.get(name)
    if raw is None or raw == "":
        return None
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 12:
        raise BadRequest(f"{name} must be a whole number")
    value = int(raw)
    if value < low:
        raise BadRequest(f"{name} must be at least {low}")
    return value


def _error(status: int, detail: str) -> JsonResponse:
    return JsonResponse({"detail": detail}, status=status)


@login_required
@require_GET
def step_lines(request: HttpRequest, build_id: int, position: int) -> JsonResponse:
    """One step's log lines for the log viewer (static/logview.js), as JSON.

    `?after=N&limit=M`: the lines after N; `?before=N&limit=M`: the M lines before N;
    `?q=text`: the numbers of the lines containing text. `?attempt=A` reads another
    attempt of the job than its current one.
    """
    build = find_build_for_user(request.user, build_id)
    step = (
        None
        if build is None
        else Step.objects.filter(job__build=build, position=position)
        .select_related("job")
        .order_by("job_id")
        .first()
    )
    if step is None:
        return _error(404, f"step {position} of build {build_id} not found")
    try:
        attempt = _number(request, "attempt", 1) or step.job.attempt
        limit = min(_number(request, "limit", 1) or DEFAULT_LIMIT, MAX_LIMIT)
        after = _number(request, "after", 0)
        before = _number(request, "before", 1)
    except BadRequest as exc:
        return _error(400, str(exc))
    body: dict[str, Any] = {
        "step": step.name,
        "attempt": attempt,
        "status": step.status,
        "build_status": build.status if build is not None else None,
    }
    query = request.GET.get("q")
    if query is not None:
        if not query or len(query) > MAX_QUERY or "\n" in query:
            return _error(400, f"q must be 1 to {MAX_QUERY} characters on one line")
        matches, more = search_step_lines(step, attempt, query)
        return JsonResponse({**body, "matches": matches, "more": more})
    if after is not None and before is not None:
        return _error(400, "give after or before, not both")
    if before is not None:
        after = max(0, before - 1 - limit)
        limit = before - 1 - after
    elif after is None:
        after = 0
    lines = [
        [number, text, at.isoformat()]
        for number, text, at in iter_step_lines(step, attempt, after=after, limit=limit)
    ]
    body.update(first=after + 1, lines=lines, total=stored_lines(step, attempt))
    response = JsonResponse(body)
    response["Cache-Control"] = "no-store"
    return response
