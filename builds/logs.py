"""Reading a step's log by line number, and the JSON endpoint of the browser's log viewer.

A log is stored as LogChunk rows of consecutive lines per (step, attempt), numbered
from 1 (builds/models.py). Every read here is bounded: it finds the chunk that holds
its first line through the (step, attempt, first_line) unique index and reads on from
there through a cursor, so a page of a log of a million lines costs what a page of a
short one does.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Generator, Iterator
from datetime import datetime
from typing import Any

from asgiref.sync import sync_to_async
from django.contrib.auth.decorators import login_required
from django.core.handlers.asgi import ASGIRequest
from django.db import connection
from django.db.models import F, Q, Subquery, Value
from django.db.models.functions import Coalesce
from django.http import HttpRequest, JsonResponse, StreamingHttpResponse
from django.views.decorators.http import require_GET

from builds.access import find_build_for_user
from builds.models import FINISHED, Build, LogChunk, Step, matrix_key

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
        "step": step.key,
        "attempt": attempt,
        "status": step.status,
        "build_status": build.status if build is not None else None,
    }
    query = request.GET.get("q")
    if query is not None:
        if not query or len(query) > MAX_QUERY or "\n" in query:
            return _error(400, f"q must be 1 to {MAX_QUERY} characters on one line")
        if "\x00" in query:  # PostgreSQL's text cannot hold it; no stored line has one
            return _error(400, "q must not contain a NUL character")
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


# How often a followed log asks the database for new lines.
POLL_SECONDS = 0.2
# Log text is sent in blocks of about this many characters, whatever the chunk sizes.
BLOCK_CHARS = 64 * 1024
# Log text, and None where a follower waits before it polls again.
Pieces = Generator[str | None, None, None]


# ---------------------------------------------------------------------------
# Whole logs as streamed text (API and downloads): bounded pieces, followed by polling.


def step_key_filter(key: str) -> Q:
    """The steps whose Step.key is `key`: a step of a job outside a matrix by its name,
    a matrix cell's step by "CELL / name" (its key, split at each " / " it holds, since
    a cell's name may hold one too). In one build, one step at most."""
    found = Q(job__matrix={}, name=key)
    separator = matrix_key("", "")  # " / "
    cut = key.find(separator)
    while cut != -1:
        found |= Q(job__name=key[:cut], name=key[cut + len(separator) :]) & ~Q(job__matrix={})
        cut = key.find(separator, cut + 1)
    return found


def log_pieces(build_id: int, *, step: str | None, after: int, follow: bool) -> Pieces:
    """The log text in pieces, and None where a follower should wait and poll again.
    `step`: only the lines of the step whose Step.key it is.

    Each pass reads the build's status, then its steps with their job's current
    attempt, then the chunks past what was sent. A build that had finished before a
    pass read its chunks can gain no line (log writes are fenced by the job's
    attempt), so that pass is the last one.
    """
    reader = _LogReader(headers=step is None)
    first = True
    while True:
        status = Build.objects.filter(pk=build_id).values_list("status", flat=True).first()
        finished = status is None or status in FINISHED  # None: deleted meanwhile
        steps = (
            Step.objects.filter(job__build_id=build_id)
            .select_related("job")
            .only("name", "status", "job__attempt", "job__name", "job__matrix")
            .order_by("job_id", "position", "id")
        )
        if step is not None:
            steps = steps.filter(step_key_filter(step))
        current = [(row.pk, row.key, row.status, row.job.attempt) for row in steps]
        if first:
            reader.sent = {(step_id, attempt): after for step_id, _, _, attempt in current}
        yield from reader.read(current, first=first)
        first = False
        if not follow or finished:
            return
        yield None


class _LogReader:
    """Sends each line of a log once, from line cursors per step and attempt (a job
    taken over by a new attempt starts its steps' lines again from 1)."""

    def __init__(self, *, headers: bool) -> None:
        self.headers = headers
        self.sent: dict[tuple[int, int], int] = {}  # (step id, attempt) -> last line sent
        self.shown: tuple[int, int] | None = None  # whose header the text is under

    def read(self, steps: list[tuple[int, str, str, int]], *, first: bool) -> Iterator[str]:
        chunks = _Peekable(self._chunks(steps))
        try:
            for step_id, key, status, attempt in steps:
                cursor = (step_id, attempt)
                # The first pass shows every step's header; later passes only where new
                # lines do not continue the step shown last.
                if self.headers and (first or chunks.step_id == step_id) and self.shown != cursor:
                    yield f"==> {key} ({status})\n"
                    self.shown = cursor
                while chunks.step_id == step_id:
                    yield self._text(cursor, chunks.pop())
        finally:
            chunks.close()

    def _text(self, key: tuple[int, int], chunk: LogChunk) -> str:
        last = self.sent.get(key, 0)
        self.sent[key] = chunk.first_line + chunk.line_count - 1
        if chunk.first_line > last:
            return chunk.text + "\n"
        # The chunk straddles `after`: only its lines past it.
        return "\n".join(chunk.lines()[last + 1 - chunk.first_line :]) + "\n"

    def _chunks(self, steps: list[tuple[int, str, str, int]]) -> Iterator[LogChunk]:
        """The chunks of these steps' attempts with lines not sent yet, in step order
        and line order, read through a cursor rather than into memory."""
        if not steps:
            return iter(())
        newer = Q()
        for step_id, _, _, attempt in steps:
            last = self.sent.get((step_id, attempt), 0)
            newer |= Q(step_id=step_id, attempt=attempt, end__gt=last + 1)
        return (
            LogChunk.objects.alias(end=F("first_line") + F("line_count"))
            .filter(newer)
            .order_by("step__job_id", "step__position", "step_id", "first_line")
            .only("step_id", "first_line", "line_count", "text")
            .iterator(chunk_size=100)
        )


class _Peekable:
    """Chunks with the step of the next one in view (None at the end)."""

    def __init__(self, chunks: Iterator[LogChunk]) -> None:
        self._chunks = chunks
        self._next = next(chunks, None)

    @property
    def step_id(self) -> int | None:
        return None if self._next is None else self._next.step_id

    def pop(self) -> LogChunk:
        assert self._next is not None
        chunk, self._next = self._next, next(self._chunks, None)
        return chunk

    def close(self) -> None:
        # Ends the database cursor of a log that the client stopped reading.
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()


def _blocks(pieces: Pieces) -> Pieces:
    """Join small pieces into blocks of about BLOCK_CHARS; pass the waits through."""
    buffer: list[str] = []
    size = 0
    try:
        for piece in pieces:
            if piece is not None:
                buffer.append(piece)
                size += len(piece)
                if size < BLOCK_CHARS:
                    continue
            if buffer:
                yield "".join(buffer)
                buffer, size = [], 0
            if piece is None:
                yield None
        if buffer:
            yield "".join(buffer)
    finally:
        pieces.close()


def stream_text(request: HttpRequest, pieces: Pieces) -> StreamingHttpResponse:
    blocks = _blocks(pieces)
    # Under ASGI (daphne) Django would read a sync iterator to its end before sending a
    # byte: a followed log would never arrive. So ASGI gets an async iterator.
    content = _AsyncBlocks(blocks) if isinstance(request, ASGIRequest) else _sync_blocks(blocks)
    response = StreamingHttpResponse(content, content_type="text/plain; charset=utf-8")
    response["Cache-Control"] = "no-store"
    response["X-Accel-Buffering"] = "no"  # a proxy must pass a followed log on at once
    return response


def _sync_blocks(blocks: Pieces) -> Iterator[str]:
    try:
        for block in blocks:
            if block is None:
                time.sleep(POLL_SECONDS)
            else:
                yield block
    finally:
        blocks.close()


class _AsyncBlocks:
    """The blocks for an ASGI server: each is read from the database on the request's
    own thread (thread_sensitive), the waits between polls block no thread, and
    `close()` (called by Django when the response ends) ends the reading there too."""

    def __init__(self, blocks: Pieces) -> None:
        self._blocks = blocks
        self._read = sync_to_async(self._read_one, thread_sensitive=True)

    def _read_one(self) -> str | bool | None:
        return next(self._blocks, False)

    def __aiter__(self) -> _AsyncBlocks:
        return self

    async def __anext__(self) -> str:
        while True:
            block = await self._read()
            if block is False:
                raise StopAsyncIteration
            if isinstance(block, str):
                return block
            await asyncio.sleep(POLL_SECONDS)

    def close(self) -> None:
        try:
            self._blocks.close()
        finally:
            # Django runs this on the request's own thread, which ends with the
            # response: a connection kept for reuse there would only be left open.
            connection.close()
