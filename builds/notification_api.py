"""The API of a project's notification targets and their deliveries
(builds/notifications.py), registered on builds.api's `api`: maintainers only, since
a target holds credentials; those are write-only (an answer names the fields set,
never a value). docs/notifications.md, docs/api.md."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from django.db.models import QuerySet
from django.http import HttpRequest
from ninja import Field, PathEx, Schema
from ninja import Status as Reply
from pydantic import ConfigDict

from builds import access, notifications
from builds.api import (
    DENIED,
    INVALID,
    SLUG,
    ErrorOut,
    Storable,
    Text,
    _find_project,
    _not_found,
    api,
)
from builds.models import Notification, NotificationTarget, Project

KindName = Literal["webhook", "slack", "telegram", "email"]
WhenName = Literal["always", "failures", "changes", "never"]
Credential = Annotated[str, Field(max_length=notifications.MAX_CREDENTIAL), Storable]
Address = Annotated[str, Field(max_length=254), Storable]
Addresses = Annotated[list[Address], Field(max_length=notifications.MAX_ADDRESSES)]


class CredentialsIn(Schema):
    """Each kind's own: webhook `secret` (the HMAC key); slack `url` (the incoming
    webhook's); telegram `token` and `chat_id`; email none."""

    model_config = ConfigDict(extra="forbid")

    secret: Credential | None = None
    url: Credential | None = None
    token: Credential | None = None
    chat_id: Credential | None = None


class TargetIn(Schema):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(max_length=notifications.MAX_NAME), Storable]
    kind: KindName
    url: Annotated[str, Field(max_length=2000), Storable] = Field(
        "", description="A webhook's URL (shown, not a credential); empty for other kinds."
    )
    addresses: Addresses = Field(default_factory=list, description="An email target's.")
    credentials: CredentialsIn = Field(default_factory=CredentialsIn)
    when: WhenName = Field(
        "changes",
        description="Which builds: always; failures; changes (failures and the first "
        "success after one); never.",
    )
    deployments: bool = Field(True, description="Also each finished deployment.")
    enabled: bool = True


class TargetPatch(Schema):
    """What to change; what is left out stays. Credentials given replace those of the
    same name; the others are kept."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(max_length=notifications.MAX_NAME), Storable] = ""
    url: Annotated[str, Field(max_length=2000), Storable] = ""
    addresses: Addresses = Field(default_factory=list)
    credentials: CredentialsIn = Field(default_factory=CredentialsIn)
    when: WhenName = "changes"
    deployments: bool = True
    enabled: bool = True


class TargetOut(Schema):
    id: int
    name: str
    kind: str
    url: str
    addresses: list[str]
    when: str
    deployments: bool
    enabled: bool
    created_at: datetime
    credentials_set: list[str] = Field(
        description="The credential fields that hold a value; never the values."
    )

    @staticmethod
    def resolve_credentials_set(target: NotificationTarget) -> list[str]:
        return notifications.credentials_set(target)


class DeliveryOut(Schema):
    id: int
    target: str = Field(description="The target's name.")
    target_id: int
    kind: str
    build: int = Field(description="The build's id.")
    number: int = Field(description="The build's number.")
    event: str = Field(description="build, fixed or deployment.")
    state: str = Field(description="queued, retrying, sent or given up.")
    attempts: int
    next_attempt_at: datetime | None = Field(description="When it is tried again; else null.")
    sent_at: datetime | None
    last_error: str
    created_at: datetime

    @staticmethod
    def resolve_target(row: Notification) -> str:
        return row.target.name

    @staticmethod
    def resolve_kind(row: Notification) -> str:
        return row.target.kind

    @staticmethod
    def resolve_build(row: Notification) -> int:
        return row.build_id

    @staticmethod
    def resolve_number(row: Notification) -> int:
        return row.build.number

    @staticmethod
    def resolve_state(row: Notification) -> str:
        return notifications.delivery_state(row)

    @staticmethod
    def resolve_next_attempt_at(row: Notification) -> datetime | None:
        return row.next_attempt_at if notifications.delivery_state(row) == "retrying" else None


def _target(project: Project, target_id: int) -> NotificationTarget:
    target = NotificationTarget.objects.filter(project=project, pk=target_id).first()
    if target is None:
        raise _not_found(f"notification target {target_id} of project '{project.slug}'")
    target.project = project
    return target


@api.get(
    "/projects/{slug}/notifications",
    response={200: list[TargetOut], **DENIED},
    tags=["notifications"],
)
def list_targets(request: HttpRequest, slug: PathEx[Text, SLUG]) -> QuerySet[NotificationTarget]:
    """Where the project sends build and deploy news. Role: maintainer."""
    project = _find_project(request, slug, access.MANAGE)
    return NotificationTarget.objects.filter(project=project)


@api.post(
    "/projects/{slug}/notifications",
    response={201: TargetOut, 409: ErrorOut, **DENIED, **INVALID},
    tags=["notifications"],
)
def create_target(
    request: HttpRequest, slug: PathEx[Text, SLUG], payload: TargetIn
) -> Reply[NotificationTarget]:
    """Add a target (201). A name taken in the project is a 409. Role: maintainer."""
    project = _find_project(request, slug, access.MANAGE)
    data = payload.model_dump()
    data["credentials"] = payload.credentials.model_dump(exclude_none=True)
    return Reply(201, notifications.notification_target_create(project=project, **data))


@api.patch(
    "/projects/{slug}/notifications/{int:target_id}",
    response={200: TargetOut, 409: ErrorOut, **DENIED, **INVALID},
    tags=["notifications"],
)
def update_target(
    request: HttpRequest, slug: PathEx[Text, SLUG], target_id: int, payload: TargetPatch
) -> NotificationTarget:
    """Change a target; what is left out stays. Role: maintainer."""
    project = _find_project(request, slug, access.MANAGE)
    target = _target(project, target_id)
    data = payload.model_dump(exclude_unset=True)
    if "credentials" in data:
        data["credentials"] = payload.credentials.model_dump(exclude_none=True)
    return notifications.notification_target_update(target=target, **data)


@api.delete(
    "/projects/{slug}/notifications/{int:target_id}",
    response={204: None, **DENIED},
    tags=["notifications"],
)
def delete_target(request: HttpRequest, slug: PathEx[Text, SLUG], target_id: int) -> Reply[None]:
    """Delete a target and its deliveries. Role: maintainer."""
    project = _find_project(request, slug, access.MANAGE)
    notifications.notification_target_delete(target=_target(project, target_id))
    return Reply(204, None)


@api.get(
    "/projects/{slug}/notifications/deliveries",
    response={200: list[DeliveryOut], **DENIED},
    tags=["notifications"],
)
def list_deliveries(request: HttpRequest, slug: PathEx[Text, SLUG]) -> list[Notification]:
    """The project's last 50 notifications, newest first, each with its state and last
    error. Role: maintainer."""
    project = _find_project(request, slug, access.MANAGE)
    return notifications.recent_deliveries(project)
