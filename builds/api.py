"""The REST API under /api/: projects, builds, their logs; OpenAPI at /api/openapi.json
and browsable docs at /api/docs (served from ninja's own static files, no CDN).

Every call but POST /api/auth/token needs a personal API token or a JWT obtained for one
(`Authorization: Bearer <token>`), with the scope the call needs (`scope_needed`: read,
run or admin, mapped once from the method and path). Handlers are thin: parse (ninja),
look the object up through builds.access with the role the call needs (None is a 404
with the same body whether the object is missing or foreign; access.Denied is a 403
naming the role), make one service call, answer. Every error is JSON with a `detail`;
a 422 also lists `errors` (docs/api.md).

Every route is in `api.get_openapi_schema()["paths"]` (and `api.urls`), each
operation's description naming the role it needs.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from datetime import datetime
from functools import wraps
from typing import Annotated, Any, Literal

from asgiref.sync import iscoroutinefunction
from django.conf import settings
from django.contrib.auth import authenticate
from django.contrib.auth.models import User
from django.core.exceptions import RequestDataTooBig
from django.db import InterfaceError, OperationalError
from django.db.models import QuerySet, prefetch_related_objects
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    JsonResponse,
    StreamingHttpResponse,
)
from django.shortcuts import render
from django.urls import URLPattern, URLResolver
from django.utils.log import log_response
from ninja import Field, HeaderEx, NinjaAPI, P, PathEx, Query, QueryEx, Schema
from ninja import Status as Reply
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.openapi.docs import Swagger, _csrf_needed
from ninja.parser import Parser
from ninja.security import HttpBearer
from pydantic import BeforeValidator, ConfigDict, field_validator
from pydantic_core import PydanticCustomError

from builds import access, access_tokens, deployments, secrets, services
from builds.logs import log_pieces, step_key_filter, stream_text
from builds.models import (
    TOKEN_SCOPES,
    ApiToken,
    Build,
    Membership,
    Project,
    Role,
    Status,
    Step,
)
from builds.pipeline import MAX_BYTES, InputsError, PipelineError
from builds.refs import RefError
from goci.audit import reading as audit_reading
from goci.audit.models import AuditEvent
from runners import services as runner_services
from runners.models import RegistrationToken

PAGE_SIZE = 50
# Numbers that become an OFFSET or a bound in SQL: beyond SQLite's (and PostgreSQL's
# bigint) range the query itself fails. (Django answers out-of-range ids as "none".)
MAX_PAGE = 1_000_000
MAX_LINE = 2**31 - 1  # line numbers are PositiveIntegerField
# A pipeline may be 1 MiB; the JSON around it and its escapes (\n, \", \\) add a few
# percent to ordinary YAML. A bigger body is refused before it is parsed.
MAX_BODY = MAX_BYTES + MAX_BYTES // 4


class NotAnObject(ValueError):
    """A request body that is JSON, but not an object."""


class JsonObjectParser(Parser):
    """Bodies are JSON objects; anything else is refused with what it was."""

    def parse_body(self, request: HttpRequest) -> dict[str, Any]:
        try:
            data = json.loads(request.body)
        except RecursionError:
            # json nests by recursion; no body Goci takes is more than a few levels deep.
            raise ValueError("arrays or objects are nested too deeply") from None
        if not isinstance(data, dict):
            kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
            raise NotAnObject(
                f"the request body must be a JSON object, not {kind.get(type(data), 'a number')}"
            )
        return data


def scope_needed(method: str, path: str) -> str:
    """The token scope a call needs, for every route in one place: reading is `read`;
    running builds (create, cancel, rerun, run a ref with inputs, redeploy) is `run`;
    any other change (projects, members, secrets, tokens, approvals) is `admin`."""
    if method in ("GET", "HEAD", "OPTIONS"):
        return "read"
    if path == "/api/builds" or path.startswith("/api/builds/"):
        return "run"
    if path.startswith("/api/projects/") and path.endswith(("/run", "/redeploy")):
        return "run"
    return "admin"


class BearerToken(HttpBearer):
    """A personal API token (`goci token create`, POST /api/tokens, the admin), or a
    JWT from POST /api/auth/token. Either carries scopes; a call outside them is a 403
    naming the scope it needs."""

    def authenticate(
        self, request: HttpRequest, token: str
    ) -> User | access_tokens.JobAccess | None:
        if not token:
            return None
        if token.startswith(services.TOKEN_PREFIX):
            found = services.token_find(token)
            if found is None:
                return None
            user, scopes = found.user, list(found.scopes)
        else:
            access_token = access_tokens.check(token)
            if access_token is None:
                return None
            if isinstance(access_token, access_tokens.JobAccess):
                return _job_may(request, access_token)
            user, scopes = access_token.user, access_token.scopes
        needed = scope_needed(request.method or "GET", request.path_info)
        if needed not in scopes:
            # After authentication: who it is is known, what it may do is not enough.
            raise HttpError(
                403, f"this token lacks the {needed!r} scope; it has: {', '.join(scopes)}"
            )
        return user


JOB_ROUTE = re.compile(r"/api/builds/(\d+)(?:/logs)?")


def _job_may(request: HttpRequest, job: access_tokens.JobAccess) -> access_tokens.JobAccess:
    """A job token reads its own build and that build's logs: any other build is not
    found, as for a user who may not see it, and any other call is refused."""
    match = JOB_ROUTE.fullmatch(request.path_info)
    if request.method != "GET" or match is None:
        raise HttpError(
            403,
            "a job token reads only its own build: "
            f"GET /api/builds/{job.build_id} and /api/builds/{job.build_id}/logs",
        )
    if int(match[1]) != job.build_id:
        raise _not_found(f"build {match[1]}")
    return job


class LocalSwagger(Swagger):
    """ninja's Swagger UI from its own files, never a CDN's. ninja serves them only
    when it is an installed app, and an installed app is imported by every process:
    workers would load ninja and pydantic (~11 MB) for nothing. So settings finds its
    template and static files (TEMPLATES' DIRS, STATICFILES_DIRS) and this renders it."""

    def render_page(self, request: HttpRequest, api: NinjaAPI, **kwargs: Any) -> HttpResponse:
        self.settings["url"] = self.get_openapi_url(api, kwargs)
        context = {
            "swagger_settings": json.dumps(self.settings, indent=1),
            "api": api,
            "add_csrf": _csrf_needed(api),
        }
        return render(request, self.template, context)


api = NinjaAPI(
    title="Goci API",
    version="1",
    description=(
        "Projects, builds and their logs. Every call needs a personal API token, or a "
        "JWT from `POST /api/auth/token`: `Authorization: Bearer <token>`, with the scope "
        "the call needs (GET: read; builds: run; other changes: admin). Errors are JSON "
        "with a `detail`; "
        "a 422 also lists `errors`."
    ),
    auth=BearerToken(),
    parser=JsonObjectParser(),
    urls_namespace="api",
    docs=LocalSwagger(),
)


def _user(request: HttpRequest) -> User:
    user = request.auth  # type: ignore[attr-defined]  # set by BearerToken
    if not isinstance(user, User):  # a job token, which _job_may lets reach no such call
        raise HttpError(403, "a job token reads only its own build")
    return user


def _not_found(what: str) -> HttpError:
    # The same words for a missing and a foreign object: nothing tells them apart.
    return HttpError(404, f"{what} not found")


# ---------------------------------------------------------------------------
# Schemas


def _storable(value: object) -> object:
    """Text that every database can store: JSON may carry a lone surrogate ("\\udc80"),
    which is no UTF-8, and a NUL, which PostgreSQL's text refuses. (Before the type
    check, whose own words for a surrogate would not say what to do.)"""
    if not isinstance(value, str):
        return value  # the type check that follows says what it should be
    if "\x00" in value:
        raise PydanticCustomError(
            "nul", "contains a NUL character (\\u0000), which cannot be stored; remove it"
        )
    try:
        value.encode()
    except UnicodeEncodeError:
        raise PydanticCustomError(
            "surrogate", "contains a lone surrogate (invalid Unicode); send UTF-8 text"
        ) from None
    return value


# Every text the API takes (body, query, path, header) is checked by Storable. In an
# optional field the length limit goes inside: `Annotated[str, Field(max_length=...),
# Storable] | None` (outside, pydantic counts "items").
Storable = BeforeValidator(_storable)
Text = Annotated[str, Storable]


class ErrorOut(Schema):
    detail: str


class InvalidOut(Schema):
    detail: str
    errors: list[dict[str, Any]] = Field(
        description="What to fix: `message`, and `path` with `line` and `column` for a "
        "pipeline problem, or `location` and `path` for a bad field of the request."
    )


class ProjectIn(Schema):
    slug: Text = Field(description="Letters, digits, `-` and `_`; at most 100.")
    name: Text = Field("", max_length=200, description="Defaults to the slug.")
    repo_url: Text = Field("", max_length=500)
    default_branch: Text = Field("main", min_length=1, max_length=200)

    @field_validator("slug")
    @classmethod
    def _check_slug(cls, value: str) -> str:
        if problem := services.slug_problem(value):
            raise PydanticCustomError("slug", problem)
        return value


class ProjectOut(Schema):
    id: int
    slug: str
    name: str
    repo_url: str
    default_branch: str
    pipeline_path: str
    auto_cancel: bool = Field(
        description="A push or PR update cancels the unfinished builds of older commits."
    )
    public: bool = Field(description="Its status badge needs no token.")
    created_at: datetime
    role: Role = Field(description="Your role on the project.")
    pipeline: str = Field(
        description="The pipeline that Run and schedules run when there is no repository."
    )


class ProjectPatch(Schema):
    """The settings to change; those left out stay as they are."""

    # A misspelt or read-only field (slug) must not be dropped in silence.
    model_config = ConfigDict(extra="forbid")

    # The defaults are never used: only the fields sent (exclude_unset) are changed.
    name: Text = Field("", max_length=200, description="Empty: the slug.")
    repo_url: Text = Field("", max_length=500)
    default_branch: Text = Field("", min_length=1, max_length=200)
    pipeline_path: Text = Field("", min_length=1, max_length=200)
    auto_cancel: bool = True
    public: bool = False
    pipeline: Text = Field(
        "",
        max_length=MAX_BYTES,
        description="The stored pipeline (YAML) that Run and schedules run when the project "
        "has no repository; checked like any pipeline.",
    )


class MemberIn(Schema):
    username: Text = Field(max_length=150)
    role: Role = Role.DEVELOPER


class MemberRoleIn(Schema):
    role: Role = Field(description="`owner` makes the member an owner: a transfer.")


class MemberOut(Schema):
    username: str
    role: Role

    @staticmethod
    def resolve_username(membership: Membership) -> str:
        return membership.user.get_username()


class BuildIn(Schema):
    project: int | Annotated[str, Field(max_length=100)] = Field(
        description="The project's slug or id."
    )
    pipeline: Text = Field(
        "",
        description="The pipeline file's YAML text (at most 1 MiB). Empty: read from the "
        "project's repository at `commit`.",
    )
    ref: Text = Field("", max_length=255, description="e.g. refs/heads/main")
    commit: Text = Field("", max_length=64)
    message: Text = ""
    env: dict[Text, Text] = Field(
        default_factory=dict, description="Variables for every step (over the pipeline's)."
    )

    @field_validator("project", mode="before")
    @classmethod
    def _check_project(cls, value: object) -> object:
        # All checked here, so that the union never fails: its errors would name each of
        # its branches. JSON true is a Python int, and 1e400 a float: neither names one.
        if isinstance(value, str):
            if len(value) > 100:
                raise PydanticCustomError("project", "a slug is at most 100 characters")
            return _storable(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise PydanticCustomError(
                "project", "give the project's slug (a string) or id (a whole number)"
            )
        return value


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
    image_id: str = Field(description="A `build:` step's image ID ('sha256:...'), once built.")
    digests: dict[str, str] = Field(
        description="A `build:` step's pushed tags, each with its digest ('sha256:...')."
    )


class JobOut(Schema):
    id: int
    name: str = Field(description="'default', or its matrix cell's name: 'SERVICE=bot'.")
    matrix: dict[str, str] = Field(description="Its matrix cell's values ({} if none).")
    labels: list[str] = Field(description="The labels a runner needs to take it (runs_on).")
    allow_failure: bool = Field(description="Its failure does not fail the build.")
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
    inputs: dict[str, str] = Field(
        description="The values of the pipeline's `inputs:` it ran with (GOCI_INPUT_<NAME>)."
    )
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration: float | None = Field(description="Seconds, once the build has finished.")
    cancel_requested: bool
    rerun_of: int | None = Field(description="The id of the build this one reruns.")
    superseded_by: int | None = Field(
        description="The id of the newer build of its branch or PR that canceled it."
    )
    fork: bool = Field(description="A pull request from a fork: it gets no secrets.")
    forge: str = Field(description="github, gitlab or gitea for a webhook's build; else empty.")
    commit_author: str
    compare_url: str
    pr_number: int | None
    pr_title: str
    source_branch: str
    target_branch: str
    changed_files: list[str] | None = Field(
        description="What the push or pull request changed; null: not known."
    )
    queue_reason: str | None = Field(
        None,
        description="Why a queued build waits, e.g. 'position 4 of 9 in the queue' or "
        "'waiting for a runner with labels [gpu]: none is online'; null unless queued.",
    )

    @staticmethod
    def resolve_queue_reason(build: Build, context: dict[str, Any]) -> str | None:
        # One snapshot of runners and queue per request: a page of builds costs two
        # queries, and none unless one of them is queued.
        from runners.reasons import QueueSnapshot  # noqa: PLC0415  (keeps this edit within BuildOut)

        if build.status != Status.QUEUED:
            return None
        request = context["request"]
        snapshot = getattr(request, "goci_queue_snapshot", None)
        if snapshot is None:
            snapshot = request.goci_queue_snapshot = QueueSnapshot()
        return snapshot.reason(build)

    @staticmethod
    def resolve_project(build: Build) -> str:
        return build.project.slug

    @staticmethod
    def resolve_author(build: Build) -> str | None:
        return build.author.get_username() if build.author is not None else None

    @staticmethod
    def resolve_rerun_of(build: Build) -> int | None:
        return build.rerun_of_id

    @staticmethod
    def resolve_superseded_by(build: Build) -> int | None:
        return build.superseded_by_id


class BuildDetailOut(BuildOut):
    jobs: list[JobOut]


class BuildPageOut(Schema):
    items: list[BuildOut] = Field(description="Newest first, at most 50.")
    page: int
    pages: int
    count: int


class BuildFilter(Schema):
    project: Annotated[str, Field(max_length=100), Storable] | None = Field(
        None, description="A project's slug or id."
    )
    status: Status | None = None
    ref: Text | None = None
    page: int = Field(1, ge=1, le=MAX_PAGE)


# ---------------------------------------------------------------------------
# Endpoints. Each names the role it needs (builds/access.py): a member with less gets a
# 403 that says which; anyone else a 404, as for a project or build that does not exist.

NOT_FOUND = {404: ErrorOut}
DENIED = {403: ErrorOut, 404: ErrorOut}
INVALID = {422: InvalidOut}
IDEMPOTENCY_KEY = P(
    alias="Idempotency-Key",
    description="Retries with the same key (per project) return the first build (200).",
)
SLUG = P(max_length=100, description="The project's slug or id.")
USERNAME = P(max_length=150)


@api.post("/projects", response={201: ProjectOut, 409: ErrorOut, **INVALID}, tags=["projects"])
def create_project(request: HttpRequest, payload: ProjectIn) -> Reply[Project]:
    """Create a project; you become its owner. Any user may."""
    project = services.project_create(user=_user(request), **payload.model_dump())
    return Reply(201, _find_project(request, project.slug, access.READ))


@api.get("/projects", response=list[ProjectOut], tags=["projects"])
def list_projects(request: HttpRequest) -> QuerySet[Project]:
    """The projects you are a member of, with your role on each."""
    return access.projects_for_user(_user(request))


@api.get("/projects/{slug}", response={200: ProjectOut, **NOT_FOUND}, tags=["projects"])
def get_project(request: HttpRequest, slug: PathEx[Text, SLUG]) -> Project:
    """A project, with your role on it. Role: viewer."""
    return _find_project(request, slug, access.READ)


@api.patch("/projects/{slug}", response={200: ProjectOut, **DENIED, **INVALID}, tags=["projects"])
def update_project(
    request: HttpRequest, slug: PathEx[Text, SLUG], payload: ProjectPatch
) -> Project:
    """Change the project's settings; those left out stay as they are. Role: maintainer."""
    project = _find_project(request, slug, access.MANAGE)
    return services.project_update(project=project, **payload.model_dump(exclude_unset=True))


@api.delete("/projects/{slug}", response={204: None, **DENIED}, tags=["projects"])
def delete_project(request: HttpRequest, slug: PathEx[Text, SLUG]) -> Reply[None]:
    """Delete the project with its builds and logs. Role: owner."""
    services.project_delete(project=_find_project(request, slug, access.OWN))
    return Reply(204, None)


@api.get("/projects/{slug}/members", response={200: list[MemberOut], **NOT_FOUND}, tags=["members"])
def list_members(request: HttpRequest, slug: PathEx[Text, SLUG]) -> QuerySet[Membership]:
    """The project's members and their roles, by username. Role: viewer."""
    project = _find_project(request, slug, access.READ)
    return (
        Membership.objects.filter(project=project).select_related("user").order_by("user__username")
    )


@api.post(
    "/projects/{slug}/members",
    response={201: MemberOut, 409: ErrorOut, **DENIED, **INVALID},
    tags=["members"],
)
def add_member(
    request: HttpRequest, slug: PathEx[Text, SLUG], payload: MemberIn
) -> Reply[Membership]:
    """Add a user with a role (developer unless given). Role: maintainer; owner to add
    an owner. An unknown username is a 422 (it is a field of the body)."""
    project = _find_project(request, slug, access.MANAGE)
    access.require_member_change(project, None, payload.role)
    user = User.objects.filter(username=payload.username).first()
    if user is None:
        raise ValidationError(
            [
                {
                    "loc": ("body", "payload", "username"),
                    "msg": f"there is no user {payload.username!r}: check the spelling, "
                    "or create the user first (goci user add)",
                    "type": "unknown_user",
                }
            ]
        )
    return Reply(201, services.member_add(project=project, user=user, role=payload.role))


@api.patch(
    "/projects/{slug}/members/{username}",
    response={200: MemberOut, **DENIED, **INVALID},
    tags=["members"],
)
def change_member(
    request: HttpRequest,
    slug: PathEx[Text, SLUG],
    username: PathEx[Text, USERNAME],
    payload: MemberRoleIn,
) -> Membership:
    """Give a member another role. Role: maintainer; owner to make or change an owner.
    Making a member an owner transfers the project (other owners stay owners; an owner
    steps down by changing their own role). A project keeps at least one owner (422)."""
    project = _find_project(request, slug, access.MANAGE)
    membership = _find_member(project, username)
    access.require_member_change(project, membership.role, payload.role)
    return services.member_change(membership=membership, role=payload.role)


@api.delete(
    "/projects/{slug}/members/{username}",
    response={204: None, **DENIED, **INVALID},
    tags=["members"],
)
def remove_member(
    request: HttpRequest, slug: PathEx[Text, SLUG], username: PathEx[Text, USERNAME]
) -> Reply[None]:
    """Remove a member. Role: maintainer; owner to remove an owner. The last owner
    cannot be removed (422)."""
    project = _find_project(request, slug, access.MANAGE)
    membership = _find_member(project, username)
    access.require_member_change(project, membership.role)
    services.member_remove(membership=membership)
    return Reply(204, None)


class SecretIn(Schema):
    # A misspelt field ("event") must not be dropped in silence.
    model_config = ConfigDict(extra="forbid")

    value: Annotated[str, Field(max_length=secrets.MAX_VALUE), Storable] | None = Field(
        None,
        description=f"At least {secrets.MIN_VALUE} characters; never shown again. "
        "Required for a new secret; left out, a change keeps the value.",
    )
    events: list[Text] | None = Field(
        None,
        description="Events whose builds get it: push, pull_request, tag, manual, cron, "
        "api. Default for a new secret: all but pull_request.",
    )
    branches: list[Annotated[str, Field(max_length=200), Storable]] | None = Field(
        None, description="Branch globs (e.g. main, release/*); empty: any branch."
    )


class SecretOut(Schema):
    """A secret's metadata: its value is never shown."""

    name: str
    is_global: bool = Field(description="Made by an admin for every project.")
    events: list[str]
    branches: list[str]
    created_by: str | None
    updated_by: str | None
    created_at: datetime
    updated_at: datetime


SECRET_NAME = P(max_length=secrets.MAX_NAME, description="A-Z, 0-9 and _.")


@api.get("/projects/{slug}/secrets", response={200: list[SecretOut], **DENIED}, tags=["secrets"])
def list_secrets(request: HttpRequest, slug: PathEx[Text, SLUG]) -> list[secrets.SecretInfo]:
    """The secrets the project's builds can use, its own and global ones: names and
    metadata, never values. Role: maintainer."""
    project = _find_project(request, slug, access.MANAGE)
    return secrets.secret_list(project=project)


@api.put(
    "/projects/{slug}/secrets/{name}",
    response={200: SecretOut, 201: SecretOut, **DENIED, **INVALID},
    tags=["secrets"],
)
def set_secret(
    request: HttpRequest,
    slug: PathEx[Text, SLUG],
    name: PathEx[Text, SECRET_NAME],
    payload: SecretIn,
) -> Reply[secrets.SecretInfo]:
    """Create a secret (201) or change it (200). The answer has its metadata, never the
    value. Role: maintainer."""
    project = _find_project(request, slug, access.MANAGE)
    _, created = secrets.secret_set(
        project=project, name=name, user=_user(request), **payload.model_dump()
    )
    info = next(s for s in secrets.secret_list(project=project) if s.name == name)
    return Reply(201 if created else 200, info)


@api.delete("/projects/{slug}/secrets/{name}", response={204: None, **DENIED}, tags=["secrets"])
def delete_secret(
    request: HttpRequest, slug: PathEx[Text, SLUG], name: PathEx[Text, SECRET_NAME]
) -> Reply[None]:
    """Delete one of the project's secrets (global ones are the admin's). Role:
    maintainer."""
    project = _find_project(request, slug, access.MANAGE)
    if not secrets.secret_delete(project=project, name=name):
        raise _not_found(f"secret {name!r} of project '{project.slug}'")
    return Reply(204, None)


@api.post(
    "/builds",
    response={201: BuildDetailOut, 200: BuildDetailOut, **DENIED, 413: ErrorOut, **INVALID},
    tags=["builds"],
)
def create_build(
    request: HttpRequest,
    payload: BuildIn,
    idempotency_key: HeaderEx[
        Annotated[str, Field(max_length=200), Storable] | None, IDEMPOTENCY_KEY
    ] = None,
) -> Reply[Build]:
    """Queue a build of a pipeline (201). An invalid pipeline is a 422 listing every
    problem with its line and column; nothing is queued. Role: developer."""
    project = _find_project(request, payload.project, access.RUN)
    build, created = services.build_create(
        project=project,
        pipeline=payload.pipeline,
        author=_user(request),
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
    """Your builds, newest first, 50 a page; filter by project, status and ref.
    Role: viewer (of each project listed)."""
    builds = access.builds_for_user(_user(request))
    if filters.project is not None:
        builds = builds.filter(project=_find_project(request, filters.project, access.READ))
    if filters.status is not None:
        builds = builds.filter(status=filters.status)
    if filters.ref is not None:
        builds = builds.filter(ref=filters.ref)
    return _page(builds.select_related("project", "author").order_by("-id"), filters.page)


@api.get("/builds/{int:build_id}", response={200: BuildDetailOut, **NOT_FOUND}, tags=["builds"])
def get_build(request: HttpRequest, build_id: int) -> Build:
    """A build with its jobs and their steps. Role: viewer."""
    return _with_jobs(_find_build(request, build_id, access.READ))


@api.post(
    "/builds/{int:build_id}/cancel", response={200: BuildDetailOut, **DENIED}, tags=["builds"]
)
def cancel_build(request: HttpRequest, build_id: int) -> Build:
    """Cancel a build: queued jobs end now, running ones are stopped. Idempotent.
    Role: developer."""
    build = services.build_cancel(build=_find_build(request, build_id, access.RUN))
    return _with_jobs(build)


@api.post(
    "/builds/{int:build_id}/rerun",
    response={201: BuildDetailOut, **DENIED, **INVALID},
    tags=["builds"],
)
def rerun_build(request: HttpRequest, build_id: int) -> Reply[Build]:
    """Queue a new build of the same pipeline snapshot, ref, commit and env.
    Role: developer."""
    build = _find_build(request, build_id, access.RUN)
    return Reply(201, _with_jobs(services.build_rerun(build=build, author=_user(request))))


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
    step: QueryEx[
        Text | None,
        P(
            description="Only this step's lines, without a header. A matrix cell's step: "
            "`CELL / name`, as in the log's headers."
        ),
    ] = None,
    after: QueryEx[
        int, P(ge=0, le=MAX_LINE, description="With `step`: only the lines after this one.")
    ] = 0,
    follow: QueryEx[bool, P(description="Keep sending new lines until the build ends.")] = False,
) -> StreamingHttpResponse:
    """The log of the current attempt of each job, as plain text. Role: viewer."""
    build = _find_build(request, build_id, access.READ)
    if after and step is None:
        raise services.InvalidRequest("after: line numbers count per step; give step= too")
    if (
        step is not None
        and not Step.objects.filter(step_key_filter(step), job__build=build).exists()
    ):
        raise _not_found(f"step {step!r} of build {build.pk}")
    pieces = log_pieces(build.pk, step=step, after=after, follow=follow)
    return stream_text(request, pieces)


def _find_project(request: HttpRequest, slug_or_id: str | int, needed: Role) -> Project:
    project = access.find_project_for_user(_user(request), slug_or_id, needed=needed)
    if project is None:
        raise _not_found(f"project {slug_or_id!r}")
    return project


def _find_build(request: HttpRequest, build_id: int, needed: Role) -> Build:
    auth = request.auth  # type: ignore[attr-defined]  # set by BearerToken
    if isinstance(auth, access_tokens.JobAccess):
        # Its own build, to read: _job_may refused anything else before the view ran.
        own = Build.objects.select_related("project", "author").filter(pk=auth.build_id)
        found = own.first() if needed == access.READ and build_id == auth.build_id else None
        if found is None:
            raise _not_found(f"build {build_id}")
        return found
    build = access.find_build_for_user(_user(request), build_id, needed=needed)
    if build is None:
        raise _not_found(f"build {build_id}")
    return build


def _find_member(project: Project, username: str) -> Membership:
    """A member of a project the caller may already see (their role was checked)."""
    membership = access.find_member(project, username)
    if membership is None:
        raise _not_found(f"member {username!r} of project '{project.slug}'")
    return membership


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
    # A bad env name is part of the path: escape what cannot be shown (a lone surrogate).
    location, *path = (
        str(part).encode(errors="backslashreplace").decode() for part in error["loc"]
    )
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


@api.exception_handler(InputsError)
def _invalid_inputs(request: HttpRequest, exc: InputsError) -> HttpResponse:
    problems = [{"input": name, "path": f"inputs.{name}", "message": m} for name, m in exc.problems]
    return _error(422, f"the inputs are invalid: {exc}", problems)


@api.exception_handler(RefError)
def _unreadable_ref(request: HttpRequest, exc: RefError) -> HttpResponse:
    return _error(422, str(exc), [{"message": str(exc)}])


@api.exception_handler(deployments.Refused)
def _deployment_refused(request: HttpRequest, exc: deployments.Refused) -> HttpResponse:
    return _error(exc.status, str(exc))


@api.exception_handler(services.InvalidRequest)
def _invalid_value(request: HttpRequest, exc: services.InvalidRequest) -> HttpResponse:
    return _error(422, str(exc), [{"message": str(exc)}])


@api.exception_handler(secrets.SecretError)
def _invalid_secret(request: HttpRequest, exc: secrets.SecretError) -> HttpResponse:
    return _error(422, str(exc), [{"message": str(exc)}])


@api.exception_handler(access.Denied)
def _denied(request: HttpRequest, exc: access.Denied) -> HttpResponse:
    return _error(403, str(exc))


@api.exception_handler(services.Conflict)
def _conflict(request: HttpRequest, exc: services.Conflict) -> HttpResponse:
    return _error(409, str(exc))


RETRY_AFTER_SECONDS = 5


@api.exception_handler(OperationalError)
@api.exception_handler(InterfaceError)
def _database_unavailable(request: HttpRequest, exc: Exception) -> HttpResponse:
    """The database cannot be reached (or, on SQLite, stayed locked): 503, retry later.
    The driver's words may name hosts and users: they go to the log, not the client."""
    response = _error(503, "the database is unavailable; try again in a few seconds")
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    log_response(
        "Service Unavailable: %s: %s", request.path, exc, response=response, request=request
    )
    return response


@api.exception_handler(Exception)
def _internal_error(request: HttpRequest, exc: Exception) -> HttpResponse:
    """A bug: JSON like every answer, without the traceback, which goes to the log
    exactly as Django logs an uncaught exception (and only once)."""
    response = _error(500, "internal error: the server failed; it was logged for the operator")
    log_response(
        "Internal Server Error: %s", request.path, response=response, request=request, exception=exc
    )
    return response


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


def _json_405(view: Callable[..., Any]) -> Callable[..., Any]:
    """The view, with ninja's plain-text 405 answered in JSON (a coroutine view too:
    the runner API's long poll)."""

    def json_405(request: HttpRequest, response: Any) -> Any:
        if isinstance(response, HttpResponseNotAllowed):
            allowed = response["Allow"]
            response = _error(405, f"{request.method} is not allowed here; use {allowed}")
            response["Allow"] = allowed
        return response

    if iscoroutinefunction(view):

        @wraps(view)  # keeps ninja's csrf_exempt: tokens, not cookies, authenticate here
        async def answer_later(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            return json_405(request, await view(request, *args, **kwargs))

        return answer_later

    @wraps(view)
    def answer(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        return json_405(request, view(request, *args, **kwargs))

    return answer


def urls(of: NinjaAPI | None = None) -> tuple[list[URLPattern | URLResolver], str, str]:
    """An API's URLs for goci/urls.py (this one's by default), ninja's plain-text 405
    answered in JSON."""
    patterns, app_name, namespace = (of or api).urls
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


# ---------------------------------------------------------------------------
# The audit log (goci/audit/reading.py: who reads which events, and the filters).


class AuditFilter(Schema):
    project: Annotated[str, Field(max_length=100), Storable] | None = Field(
        None, description="A project's slug or id."
    )
    actor: Annotated[str, Field(max_length=150), Storable] | None = Field(
        None, description="The actor's username."
    )
    action: Annotated[str, Field(max_length=50), Storable] | None = Field(
        None, description="An action (member.add), or its kind (member)."
    )
    since: datetime | None = Field(None, description=f"From: {audit_reading.BOUND_HELP}.")
    until: datetime | None = Field(
        None, description="Until, excluded; a date takes in that whole day."
    )
    page: int = Field(1, ge=1, le=MAX_PAGE)

    @field_validator("since", "until", mode="before")
    @classmethod
    def _check_bound(cls, value: object, info: Any) -> object:
        if not isinstance(value, str):
            return value
        if len(value) > 40:
            raise PydanticCustomError("bound", f"expected {audit_reading.BOUND_HELP}")
        _storable(value)  # a NUL or a lone surrogate is named as in any text
        try:
            return audit_reading.bound(value, end=info.field_name == "until")
        except ValueError as exc:
            raise PydanticCustomError("bound", str(exc)) from None


class AuditEventOut(Schema):
    id: int
    time: datetime
    actor: str = Field(description="The username (kept after the user is deleted), or ''.")
    action: str
    project: str = Field(description="The project's slug (kept after it is deleted), or ''.")
    object_type: str
    object_id: str
    via: str = Field(description="ui, api, cli, admin or webhook.")
    address: str
    user_agent: str
    details: dict[str, Any]

    @staticmethod
    def resolve_time(event: AuditEvent) -> datetime:
        return event.created_at

    @staticmethod
    def resolve_actor(event: AuditEvent) -> str:
        return event.actor_name

    @staticmethod
    def resolve_project(event: AuditEvent) -> str:
        return event.project_slug


class AuditPageOut(Schema):
    items: list[AuditEventOut] = Field(description="Newest first, at most 50.")
    page: int
    pages: int
    count: int


@api.get("/audit", response={200: AuditPageOut, **DENIED, **INVALID}, tags=["audit"])
def list_audit(request: HttpRequest, filters: Query[AuditFilter]) -> dict[str, Any]:
    """Who did what, newest first, 50 a page. Admins read every event; anyone else the
    events of the projects they maintain or own. Role: maintainer (with `project`)."""
    events = audit_reading.events_for(_user(request), filters.project)  # Denied: 403
    if events is None:
        raise _not_found(f"project {filters.project!r}")
    chosen = audit_reading.Filters(
        actor=filters.actor, action=filters.action, since=filters.since, until=filters.until
    ).apply(events)
    count = chosen.count()
    start = (filters.page - 1) * PAGE_SIZE
    return {
        "items": list(chosen[start : start + PAGE_SIZE]),
        "page": filters.page,
        "pages": max(1, math.ceil(count / PAGE_SIZE)),
        "count": count,
    }


# ---------------------------------------------------------------------------
# Personal API tokens: each user's own. Another user's token is a 404, like a missing one.

ScopeName = Literal["read", "run", "admin"]


class TokenIn(Schema):
    model_config = ConfigDict(extra="forbid")

    name: Text = Field(min_length=1, max_length=200)
    scopes: list[ScopeName] | None = Field(
        None,
        min_length=1,
        description="Any of read, run, admin. Default: read and run.",
    )
    expires_in_days: int | None = Field(
        None, ge=1, le=services.MAX_TOKEN_DAYS, description="Left out: it never expires."
    )


class TokenOut(Schema):
    id: int
    name: str
    prefix: str = Field(description="Its first characters, to recognise it.")
    scopes: list[str]
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None


class TokenCreatedOut(TokenOut):
    token: str = Field(description="The secret: shown this once, never again.")


@api.get("/tokens", response=list[TokenOut], tags=["tokens"])
def list_tokens(request: HttpRequest) -> QuerySet[ApiToken]:
    """Your personal tokens that still work, newest first; never their secrets."""
    return services.tokens_usable().filter(user=_user(request)).order_by("-id")


@api.post("/tokens", response={201: TokenCreatedOut, **INVALID}, tags=["tokens"])
def create_token(request: HttpRequest, payload: TokenIn) -> Reply[dict[str, Any]]:
    """Create a personal token; its secret is in this answer only. Scope: admin."""
    token, secret = services.token_create(
        user=_user(request),
        name=payload.name,
        scopes=payload.scopes,
        expires_in_days=payload.expires_in_days,
    )
    return Reply(201, {**TokenOut.model_validate(token).model_dump(), "token": secret})


@api.delete("/tokens/{int:token_id}", response={204: None, **NOT_FOUND}, tags=["tokens"])
def revoke_token(request: HttpRequest, token_id: int) -> Reply[None]:
    """Revoke one of your tokens: it, and every JWT issued from it, stop working at
    once. Scope: admin."""
    token = services.tokens_usable().filter(user=_user(request), pk=token_id).first()
    if token is None:
        raise _not_found(f"token {token_id}")
    services.token_revoke(token=token)
    return Reply(204, None)


class AccessTokenIn(Schema):
    model_config = ConfigDict(extra="forbid")

    token: Annotated[str, Field(max_length=200), Storable] | None = Field(
        None, description="A personal token; or give username and password."
    )
    username: Annotated[str, Field(max_length=150), Storable] | None = None
    password: Annotated[str, Field(max_length=4096), Storable] | None = None


class AccessTokenOut(Schema):
    access: str = Field(description="A JWT: send it as `Authorization: Bearer <jwt>`.")
    expires_in: int = Field(description="Seconds it works for.")
    scopes: list[str]


@api.post(
    "/auth/token",
    auth=None,
    response={200: AccessTokenOut, 401: ErrorOut, 403: ErrorOut, **INVALID},
    tags=["tokens"],
)
def issue_access_token(request: HttpRequest, payload: AccessTokenIn) -> dict[str, Any]:
    """Exchange a personal token (its scopes) or a username and password (every scope;
    throttled like signing in; 403 when the server has password sign-in off) for a
    short-lived JWT. No Authorization header."""
    if payload.token is not None:
        token = services.token_find(payload.token)
        if token is None:
            raise HttpError(401, "this token is unknown, expired or revoked")
        user, scopes = token.user, list(token.scopes)
    elif payload.username is not None and payload.password is not None:
        if not settings.GOCI_PASSWORD_SIGNIN:  # refused before any password is checked
            raise HttpError(
                403,
                "password sign-in is off on this server: exchange a personal API token "
                "instead (create one on the API tokens page after signing in with your forge)",
            )
        # Through the authentication backends, so that django-axes counts a failure and
        # refuses a locked-out username or address (it answers None, as for a bad password).
        found = authenticate(request=request, username=payload.username, password=payload.password)
        if not isinstance(found, User) or not found.is_active:
            raise HttpError(
                401, "wrong username or password, or too many failures: try again later"
            )
        user, token, scopes = found, None, list(TOKEN_SCOPES)
    else:
        raise services.InvalidRequest("give either token, or username and password")
    return {
        "access": access_tokens.issue(user=user, scopes=scopes, token=token),
        "expires_in": settings.GOCI_JWT_TTL,
        "scopes": scopes,
    }


# ---------------------------------------------------------------------------
# Registration tokens for remote runners (runners/services.py): the server's admins'
# (superusers) alone; anyone else gets 403. The runner API itself is runners/api.py.


class RegistrationTokenIn(Schema):
    model_config = ConfigDict(extra="forbid")

    reusable: bool = Field(
        False, description="False: it registers one runner. True: any number, until revoked."
    )
    expires_in_hours: int | None = Field(
        None,
        ge=1,
        le=runner_services.MAX_EXPIRY_HOURS,
        description="Left out: 24 hours for a single-use token, never for a reusable one.",
    )


class RegistrationTokenOut(Schema):
    id: int
    prefix: str = Field(description="Its first characters, to recognise it.")
    single_use: bool
    created_at: datetime
    expires_at: datetime | None
    used_at: datetime | None = Field(description="When a runner last registered with it.")
    revoked_at: datetime | None


class RegistrationTokenCreatedOut(RegistrationTokenOut):
    token: str = Field(description="The secret: shown this once, never again.")


def _server_admin(request: HttpRequest) -> User:
    user = _user(request)
    if not runner_services.is_admin(user):
        raise HttpError(403, "registration tokens are for the server's admins (superusers)")
    return user


@api.get(
    "/runners/registration-tokens",
    response={200: list[RegistrationTokenOut], 403: ErrorOut},
    tags=["runners"],
)
def list_registration_tokens(request: HttpRequest) -> QuerySet[RegistrationToken]:
    """Every registration token, newest first; never their secrets. Admins only."""
    _server_admin(request)
    return RegistrationToken.objects.order_by("-id")


@api.post(
    "/runners/registration-tokens",
    response={201: RegistrationTokenCreatedOut, 403: ErrorOut, **INVALID},
    tags=["runners"],
)
def create_registration_token(
    request: HttpRequest, payload: RegistrationTokenIn
) -> Reply[dict[str, Any]]:
    """Create a registration token for `goci runner register`; its secret is in this
    answer only. Admins only; scope: admin."""
    token, secret = runner_services.registration_token_create(
        user=_server_admin(request),
        single_use=not payload.reusable,
        expires_in_hours=payload.expires_in_hours,
    )
    return Reply(201, {**RegistrationTokenOut.model_validate(token).model_dump(), "token": secret})


@api.delete(
    "/runners/registration-tokens/{int:token_id}",
    response={204: None, 403: ErrorOut, **NOT_FOUND},
    tags=["runners"],
)
def revoke_registration_token(request: HttpRequest, token_id: int) -> Reply[None]:
    """Revoke a registration token: no runner registers with it any more (those it
    registered keep working). Admins only; scope: admin."""
    _server_admin(request)
    token = RegistrationToken.objects.filter(pk=token_id).first()
    if token is None:
        raise _not_found(f"registration token {token_id}")
    runner_services.registration_token_revoke(token=token)
    return Reply(204, None)


# Routes kept in modules of their own, registered on this same `api` (last: they use it).
from builds import (  # noqa: E402, F401
    deploy_api,
    notification_api,
    schedule_api,
)
