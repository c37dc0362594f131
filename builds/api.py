"""The REST API under /api/: projects, builds, their logs; OpenAPI at /api/openapi.json
and browsable docs at /api/docs (served from ninja's own static files, no CDN).

Every call needs a personal API token (`Authorization: Bearer <token>`). Handlers are
thin: parse (ninja), look the object up through builds.access (None is a 404 with the
same body whether the object is missing or foreign), make one service call, answer.
Every error is JSON with a `detail`; a 422 also lists `errors`.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable, Generator, Iterator
from datetime import datetime
from functools import wraps
from typing import Annotated, Any

from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.core.exceptions import RequestDataTooBig
from django.core.handlers.asgi import ASGIRequest
from django.db import IntegrityError, connection
from django.db.models import F, Q, QuerySet, prefetch_related_objects
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    JsonResponse,
    StreamingHttpResponse,
)
from django.http.response import HttpResponseBase
from django.urls import URLPattern, URLResolver
from ninja import Field, HeaderEx, NinjaAPI, P, Query, QueryEx, Schema
from ninja import Status as Reply
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.parser import Parser
from ninja.security import HttpBearer
from pydantic import field_validator
from pydantic_core import PydanticCustomError

from builds import access, services
from builds.models import FINISHED, Build, LogChunk, Project, Status, Step
from builds.pipeline import MAX_BYTES, PipelineError

PAGE_SIZE = 50
# A pipeline may be 1 MiB; the JSON around it and its escapes (\n, \", \\) add a few
# percent to ordinary YAML. A bigger body is refused before it is parsed.
MAX_BODY = MAX_BYTES + MAX_BYTES // 4
# How often a followed log asks the database for new lines.
POLL_SECONDS = 0.2
# Log text is sent in blocks of about this many characters, whatever the chunk sizes.
BLOCK_CHARS = 64 * 1024

# Log text, and None where a follower waits before it polls again.
Pieces = Generator[str | None, None, None]


class NotAnObject(ValueError):
    """A request body that is JSON, but not an object."""


class JsonObjectParser(Parser):
    """Bodies are JSON objects; anything else is refused with what it was."""

    def parse_body(self, request: HttpRequest) -> dict[str, Any]:
        data = json.loads(request.body)
        if not isinstance(data, dict):
            kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
            raise NotAnObject(
                f"the request body must be a JSON object, not {kind.get(type(data), 'a number')}"
            )
        return data


class BearerToken(HttpBearer):
    """A personal API token (created with `goci token create` or in the admin)."""

    def authenticate(self, request: HttpRequest, token: str) -> User | None:
        return services.token_user(token) if token else None


api = NinjaAPI(
    title="Goci API",
    version="1",
    description=(
        "Projects, builds and their logs. Every call needs a personal API token: "
        "`Authorization: Bearer <token>`. Errors are JSON with a `detail`; "
        "a 422 also lists `errors`."
    ),
    auth=BearerToken(),
    parser=JsonObjectParser(),
    urls_namespace="api",
)


def _user(request: HttpRequest) -> User:
    user: User = request.auth  # type: ignore[attr-defined]  # set by BearerToken
    return user


def _not_found(what: str) -> HttpError:
    # The same words for a missing and a foreign object: nothing tells them apart.
    return HttpError(404, f"{what} not found")


# ---------------------------------------------------------------------------
# Schemas


class ErrorOut(Schema):
    detail: str


class InvalidOut(Schema):
    detail: str
    errors: list[dict[str, Any]] = Field(
        description="What to fix: `message`, and `path` with `line` and `column` for a "
        "pipeline problem, or `location` and `path` for a bad field of the request."
    )


class ProjectIn(Schema):
    slug: str = Field(description="Letters, digits, `-` and `_`; at most 100.")
    name: str = Field("", max_length=200, description="Defaults to the slug.")
    repo_url: str = Field("", max_length=500)
    default_branch: str = Field("main", min_length=1, max_length=200)

    @field_validator("slug")
    @classmethod
    def _check_slug(cls, value: str) -> str:
        if (
            not value
            or len(value) > 100
            or not all(c.isascii() and (c.isalnum() or c in "-_") for c in value)
        ):
            raise PydanticCustomError(
                "slug", "a slug is 1 to 100 letters, digits, '-' or '_' (no spaces)"
            )
        if value.isdigit():
            # Projects are named by slug or id in the API: "42" must mean one thing.
            raise PydanticCustomError(
                "slug", "a slug needs a letter, '-' or '_' so that it cannot be taken for an id"
            )
        return value


class ProjectOut(Schema):
    id: int
    slug: str
    name: str
    repo_url: str
    default_branch: str
    pipeline_path: str
    created_at: datetime


class BuildIn(Schema):
    project: int | Annotated[str, Field(max_length=100)] = Field(
        description="The project's slug or id."
    )
    pipeline: str = Field(description="The pipeline file's YAML text (at most 1 MiB).")
    ref: str = Field("", max_length=255, description="e.g. refs/heads/main")
    commit: str = Field("", max_length=64)
    message: str = ""
    env: dict[str, str] = Field(
        default_factory=dict, description="Variables for every step (over the pipeline's)."
    )


class StepOut(Schema):
    name: str
    position: int
    needs: list[str]
    image: str
    status: str
    exit_code: int | None
    error: str
    started_at: datetime | None
    finished_at: datetime | None
    duration: float | None = Field(description="Seconds, once the step has finished.")


class JobOut(Schema):
    id: int
    name: str
    status: str
    attempt: int
    worker: str
    error: str
    started_at: datetime | None
    finished_at: datetime | None
    steps: list[StepOut]


class BuildOut(Schema):
    id: int
    project: str = Field(description="The project's slug.")
    number: int
    status: str
    trigger: str
    ref: str
    commit: str
    message: str
    author: str | None = Field(description="The username, or null.")
    env: dict[str, str]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration: float | None = Field(description="Seconds, once the build has finished.")
    cancel_requested: bool
    rerun_of: int | None = Field(description="The id of the build this one reruns.")

    @staticmethod
    def resolve_project(build: Build) -> str:
        return build.project.slug

    @staticmethod
    def resolve_author(build: Build) -> str | None:
        return build.author.get_username() if build.author is not None else None

    @staticmethod
    def resolve_rerun_of(build: Build) -> int | None:
        return build.rerun_of_id


class BuildDetailOut(BuildOut):
    jobs: list[JobOut]


class BuildPageOut(Schema):
    items: list[BuildOut] = Field(description="Newest first, at most 50.")
    page: int
    pages: int
    count: int


class BuildFilter(Schema):
    project: str | None = Field(None, max_length=100, description="A project's slug or id.")
    status: Status | None = None
    ref: str | None = None
    page: int = Field(1, ge=1)


# ---------------------------------------------------------------------------
# Endpoints

NOT_FOUND = {404: ErrorOut}
INVALID = {422: InvalidOut}
IDEMPOTENCY_KEY = P(
    alias="Idempotency-Key",
    max_length=200,
    description="Retries with the same key (per project) return the first build (200).",
)


@api.post("/projects", response={201: ProjectOut, 409: ErrorOut, **INVALID}, tags=["projects"])
def create_project(request: HttpRequest, payload: ProjectIn) -> Reply[Project]:
    """Create a project; you become its owner."""
    try:
        project = services.project_create(user=_user(request), **payload.model_dump())
    except IntegrityError:
        raise HttpError(409, f"a project with the slug {payload.slug!r} already exists") from None
    return Reply(201, project)


@api.get("/projects", response=list[ProjectOut], tags=["projects"])
def list_projects(request: HttpRequest) -> QuerySet[Project]:
    """The projects you are a member of."""
    return access.projects_for_user(_user(request))


@api.post(
    "/builds",
    response={201: BuildDetailOut, 200: BuildDetailOut, **NOT_FOUND, 413: ErrorOut, **INVALID},
    tags=["builds"],
)
def create_build(
    request: HttpRequest,
    payload: BuildIn,
    idempotency_key: HeaderEx[str | None, IDEMPOTENCY_KEY] = None,
) -> Reply[Build]:
    """Queue a build of a pipeline (201). An invalid pipeline is a 422 listing every
    problem with its line and column; nothing is queued."""
    user = _user(request)
    project = access.find_project_for_user(user, payload.project)
    if project is None:
        raise _not_found(f"project {payload.project!r}")
    build, created = services.build_create(
        project=project,
        pipeline=payload.pipeline,
        author=user,
        ref=payload.ref,
        commit=payload.commit,
        message=payload.message,
        env=payload.env,
        trigger=Build.Trigger.API,
        idempotency_key=idempotency_key,
    )
    return Reply(201 if created else 200, _with_jobs(build))


@api.get("/builds", response={200: BuildPageOut, **NOT_FOUND, **INVALID}, tags=["builds"])
def list_builds(request: HttpRequest, filters: Query[BuildFilter]) -> dict[str, Any]:
    """Your builds, newest first, 50 a page; filter by project, status and ref."""
    user = _user(request)
    builds = access.builds_for_user(user)
    if filters.project is not None:
        project = access.find_project_for_user(user, filters.project)
        if project is None:
            raise _not_found(f"project {filters.project!r}")
        builds = builds.filter(project=project)
    if filters.status is not None:
        builds = builds.filter(status=filters.status)
    if filters.ref is not None:
        builds = builds.filter(ref=filters.ref)
    return _page(builds.select_related("project", "author").order_by("-id"), filters.page)


@api.get("/builds/{int:build_id}", response={200: BuildDetailOut, **NOT_FOUND}, tags=["builds"])
def get_build(request: HttpRequest, build_id: int) -> Build:
    """A build with its jobs and their steps."""
    return _with_jobs(_find_build(request, build_id))


@api.post(
    "/builds/{int:build_id}/cancel", response={200: BuildDetailOut, **NOT_FOUND}, tags=["builds"]
)
def cancel_build(request: HttpRequest, build_id: int) -> Build:
    """Cancel a build: queued jobs end now, running ones are stopped. Idempotent."""
    build = services.build_cancel(build=_find_build(request, build_id))
    return _with_jobs(build)


@api.post(
    "/builds/{int:build_id}/rerun",
    response={201: BuildDetailOut, **NOT_FOUND, **INVALID},
    tags=["builds"],
)
def rerun_build(request: HttpRequest, build_id: int) -> Reply[Build]:
    """Queue a new build of the same pipeline snapshot, ref, commit and env."""
    build = services.build_rerun(build=_find_build(request, build_id), author=_user(request))
    return Reply(201, _with_jobs(build))


@api.get(
    "/builds/{int:build_id}/logs",
    response={200: None, **NOT_FOUND, **INVALID},
    tags=["builds"],
    openapi_extra={
        "responses": {
            200: {
                "description": "The log as text: every step under `==> <step> (<status>)`, "
                "or with `step`, that step's lines alone.",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        }
    },
)
def build_logs(
    request: HttpRequest,
    build_id: int,
    step: QueryEx[str | None, P(description="Only this step's lines, without a header.")] = None,
    after: QueryEx[int, P(ge=0, description="With `step`: only the lines after this one.")] = 0,
    follow: QueryEx[bool, P(description="Keep sending new lines until the build ends.")] = False,
) -> StreamingHttpResponse:
    """The log of the current attempt of each job, as plain text."""
    build = _find_build(request, build_id)
    if after and step is None:
        raise services.InvalidRequest("after: line numbers count per step; give step= too")
    if step is not None and not Step.objects.filter(job__build=build, name=step).exists():
        raise _not_found(f"step {step!r} of build {build.pk}")
    pieces = _log_pieces(build.pk, step=step, after=after, follow=follow)
    return _stream_text(request, pieces)


def _find_build(request: HttpRequest, build_id: int) -> Build:
    build = access.find_build_for_user(_user(request), build_id)
    if build is None:
        raise _not_found(f"build {build_id}")
    return build


def _with_jobs(build: Build) -> Build:
    # Two queries (jobs, steps) whatever the number of jobs and steps.
    prefetch_related_objects([build], "jobs__steps")
    return build


def _page(builds: QuerySet[Build], page: int) -> dict[str, Any]:
    """One page of builds; a page past the last is empty, not an error."""
    count = builds.count()
    start = (page - 1) * PAGE_SIZE
    return {
        "items": list(builds[start : start + PAGE_SIZE]),
        "page": page,
        "pages": max(1, math.ceil(count / PAGE_SIZE)),
        "count": count,
    }


# ---------------------------------------------------------------------------
# Logs: read from the database in bounded pieces; followed by polling.


def _log_pieces(build_id: int, *, step: str | None, after: int, follow: bool) -> Pieces:
    """The log text in pieces, and None where a follower should wait and poll again.

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
        steps = Step.objects.filter(job__build_id=build_id).order_by("job_id", "position", "id")
        if step is not None:
            steps = steps.filter(name=step)
        current = list(steps.values_list("id", "name", "status", "job__attempt"))
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
            for step_id, name, status, attempt in steps:
                key = (step_id, attempt)
                # The first pass shows every step's header; later passes only where new
                # lines do not continue the step shown last.
                if self.headers and (first or chunks.step_id == step_id) and self.shown != key:
                    yield f"==> {name} ({status})\n"
                    self.shown = key
                while chunks.step_id == step_id:
                    yield self._text(key, chunks.pop())
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


def _stream_text(request: HttpRequest, pieces: Pieces) -> StreamingHttpResponse:
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


# ---------------------------------------------------------------------------
# Errors: every one is JSON with a `detail`; a 422 also lists `errors`.


def _error(status: int, detail: str, errors: list[dict[str, Any]] | None = None) -> JsonResponse:
    body: dict[str, Any] = {"detail": detail}
    if errors is not None:
        body["errors"] = errors
    return JsonResponse(body, status=status)


@api.exception_handler(AuthenticationError)
def _unauthorized(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    response = _error(
        401, "a valid API token is needed: send the header 'Authorization: Bearer <token>'"
    )
    response["WWW-Authenticate"] = 'Bearer realm="goci"'
    return response


@api.exception_handler(HttpError)
def _http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    cause = exc.__cause__
    # ninja answers a body it cannot parse with HttpError(400) raised from the parser's
    # error; that is a request to fix like any other invalid one.
    if exc.status_code == 400 and isinstance(cause, ValueError):
        problem: dict[str, Any] = {"location": "body", "path": "", "message": str(cause)}
        if isinstance(cause, json.JSONDecodeError):
            problem.update(line=cause.lineno, column=cause.colno)
        if isinstance(cause, NotAnObject):
            return _error(422, str(cause), [problem])
        return _error(422, f"the request body is not valid JSON: {cause}", [problem])
    return _error(exc.status_code, exc.message)


@api.exception_handler(ValidationError)
def _invalid_request(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    errors = [_request_problem(error) for error in exc.errors]
    summary = "; ".join(
        f"{e['location']} {e['path']}: {e['message']}"
        if e["path"]
        else f"{e['location']}: {e['message']}"
        for e in errors
    )
    return _error(422, f"invalid request: {summary}", errors)


def _request_problem(error: dict[str, Any]) -> dict[str, Any]:
    location, *path = (str(part) for part in error["loc"])
    # ninja puts the name of the handler's parameter in the path of a body field.
    if location == "body" and path and path[0] == "payload":
        path = path[1:]
    if location == "query" and path and path[0] == "filters":
        path = path[1:]
    message = error["msg"]
    if location == "body" and not path and error["type"] == "missing":
        message = "the request body is empty; send a JSON object"
    return {"location": location, "path": ".".join(path), "message": message, "type": error["type"]}


@api.exception_handler(PipelineError)
def _invalid_pipeline(request: HttpRequest, exc: PipelineError) -> HttpResponse:
    count = len(exc.problems)
    problems = [
        {"path": p.path, "line": p.line, "column": p.column, "message": p.message}
        for p in exc.problems
    ]
    detail = f"the pipeline is invalid ({count} problem{'s' if count != 1 else ''}):\n{exc}"
    return _error(422, detail, problems)


@api.exception_handler(services.InvalidRequest)
def _invalid_value(request: HttpRequest, exc: services.InvalidRequest) -> HttpResponse:
    return _error(422, str(exc), [{"message": str(exc)}])


def _body_size(request: HttpRequest) -> int:
    """The size of the request body (its declared size first, so that a huge body is
    refused unread); DATA_UPLOAD_MAX_MEMORY_SIZE's own refusal counts as too big."""
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > MAX_BODY:
        return declared
    try:
        return len(request.body)
    except RequestDataTooBig:
        return MAX_BODY + 1


def _limit_body(run: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    @wraps(run)
    def limited(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        size = _body_size(request)
        if size > MAX_BODY:
            return _error(
                413,
                f"the request body is {size} bytes; the API takes at most {MAX_BODY} "
                f"(a pipeline may be at most {MAX_BYTES} bytes)",
            )
        return run(request, *args, **kwargs)

    return limited


# "view" mode wraps each operation before its authentication and parsing.
api.add_decorator(_limit_body, mode="view")


def not_found(request: HttpRequest) -> JsonResponse:
    """Any other URL under /api/: JSON, like every answer of the API."""
    return _error(404, f"no such API endpoint: {request.method} {request.path}")


def _json_405(view: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
    @wraps(view)  # keeps ninja's csrf_exempt: tokens, not cookies, authenticate here
    def answer(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        response = view(request, *args, **kwargs)
        if isinstance(response, HttpResponseNotAllowed):
            allowed = response["Allow"]
            response = _error(405, f"{request.method} is not allowed here; use {allowed}")
            response["Allow"] = allowed
        return response

    return answer


def urls() -> tuple[list[URLPattern | URLResolver], str, str]:
    """The API's URLs for goci/urls.py; ninja's plain-text 405 answered in JSON."""
    patterns, app_name, namespace = api.urls
    return (
        [
            URLPattern(p.pattern, _json_405(p.callback), p.default_args, p.name)
            if isinstance(p, URLPattern)
            else p
            for p in patterns
        ],
        app_name,
        namespace,
    )
