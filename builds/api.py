"""The REST API under /api/: projects, builds, their logs; OpenAPI at /api/openapi.json
and browsable docs at /api/docs (served from ninja's own static files, no CDN).

Every call needs a personal API token (`Authorization: Bearer <token>`). Handlers are
thin: parse (ninja), look the object up through builds.access (None is a 404 with the
same body whether the object is missing or foreign), make one service call, answer.
Every error is JSON with a `detail`; a 422 also lists `errors`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import datetime
from functools import wraps
from typing import Annotated, Any

from django.contrib.auth.models import User
from django.core.exceptions import RequestDataTooBig
from django.db.models import QuerySet, prefetch_related_objects
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
from builds.logs import log_pieces, stream_text
from builds.models import Build, Project, Status, Step
from builds.pipeline import MAX_BYTES, PipelineError

PAGE_SIZE = 50
# A pipeline may be 1 MiB; the JSON around it and its escapes (\n, \", \\) add a few
# percent to ordinary YAML. A bigger body is refused before it is parsed.
MAX_BODY = MAX_BYTES + MAX_BYTES // 4


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
    except services.Conflict as exc:
        raise HttpError(409, str(exc)) from None
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
    pieces = log_pieces(build.pk, step=step, after=after, follow=follow)
    return stream_text(request, pieces)


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
