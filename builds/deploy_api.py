"""The API of manual runs with inputs, environments and deployments (docs/api.md,
docs/deployments.md), on builds.api's `api`. The changes go through
builds/services.py and builds/deployments.py."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from django.db.models import QuerySet
from django.http import HttpRequest
from ninja import Field, P, PathEx, Schema
from ninja import Status as Reply
from pydantic import ConfigDict

from builds import access, deployments, services
from builds.api import (
    DENIED,
    INVALID,
    NOT_FOUND,
    SLUG,
    BuildDetailOut,
    ErrorOut,
    Storable,
    Text,
    _find_project,
    _not_found,
    _user,
    _with_jobs,
    api,
)
from builds.models import Build, Deployment, Environment, Project
from builds.pipeline import MAX_ENVIRONMENT, MAX_INPUT_VALUE, MAX_INPUTS

# A value of an input: a string, or true/false for a boolean; checked against the
# pipeline's declaration by builds.pipeline.check_inputs.
InputValue = Annotated[str, Field(max_length=MAX_INPUT_VALUE), Storable] | bool
ENVIRONMENT = P(max_length=MAX_ENVIRONMENT, description="The environment's name.")


class RunIn(Schema):
    model_config = ConfigDict(extra="forbid")

    ref: Text = Field(
        "",
        max_length=255,
        description="A branch or tag of the repository (or refs/...); empty: the default "
        "branch. Without a repository, the project's stored pipeline runs.",
    )
    inputs: dict[Annotated[str, Field(max_length=100), Storable], InputValue] = Field(
        default_factory=dict,
        max_length=MAX_INPUTS,
        description="A value for each of the pipeline's `inputs:` (steps get "
        "GOCI_INPUT_<NAME>); each is checked against its declaration.",
    )


@api.post(
    "/projects/{slug}/run",
    response={201: BuildDetailOut, **DENIED, **INVALID},
    tags=["builds"],
)
def run_project(request: HttpRequest, slug: PathEx[Text, SLUG], payload: RunIn) -> Reply[Build]:
    """Run the project's pipeline at a ref with inputs (a manual run: trigger
    `manual`). The pipeline is read from the repository at that ref; a wrong input is a
    422 naming each. Role: developer (maintainer for a protected environment)."""
    project = _find_project(request, slug, access.RUN)
    build = services.run_pipeline(
        project=project,
        ref=payload.ref,
        inputs=payload.inputs,
        trigger=Build.Trigger.MANUAL,
        author=_user(request),
    )
    return Reply(201, _with_jobs(build))


class DeploymentOut(Schema):
    id: int
    environment: str
    state: Deployment.State = Field(
        description="waiting (for approval), queued, running, success, failure, error, "
        "canceled, rejected or skipped."
    )
    build: int = Field(description="The build's number in its project.")
    build_id: int
    trigger: str
    commit: str
    ref: str
    url: str
    author: str | None
    approved_by: str | None
    rollback_of: int | None = Field(description="The deployment this one redeployed.")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @staticmethod
    def resolve_environment(deployment: Deployment) -> str:
        return deployment.environment.name

    @staticmethod
    def resolve_build(deployment: Deployment) -> int:
        return deployment.build.number

    @staticmethod
    def resolve_trigger(deployment: Deployment) -> str:
        return deployment.build.trigger

    @staticmethod
    def resolve_author(deployment: Deployment) -> str | None:
        return deployment.author.get_username() if deployment.author else None

    @staticmethod
    def resolve_approved_by(deployment: Deployment) -> str | None:
        return deployment.approved_by.get_username() if deployment.approved_by else None

    @staticmethod
    def resolve_rollback_of(deployment: Deployment) -> int | None:
        return deployment.rollback_of_id


class EnvironmentOut(Schema):
    name: str
    url: str
    protected: bool = Field(description="Only maintainers may deploy to it.")
    approval: bool = Field(description="Another maintainer approves each deployment.")
    current: DeploymentOut | None = Field(description="What is deployed there now.")
    last: DeploymentOut | None = Field(description="Its newest deployment, in any state.")

    @staticmethod
    def resolve_current(environment: Environment) -> Deployment | None:
        return deployments.current(environment)

    @staticmethod
    def resolve_last(environment: Environment) -> Deployment | None:
        return deployments.history(environment).first()


class EnvironmentPatch(Schema):
    model_config = ConfigDict(extra="forbid")

    protected: bool = False
    approval: bool = False


@api.get(
    "/projects/{slug}/environments",
    response={200: list[EnvironmentOut], **NOT_FOUND},
    tags=["deployments"],
)
def list_environments(request: HttpRequest, slug: PathEx[Text, SLUG]) -> QuerySet[Environment]:
    """The project's environments, each with what is deployed there now. Role: viewer."""
    project = _find_project(request, slug, access.READ)
    return project.environments.all()


@api.patch(
    "/projects/{slug}/environments/{name}",
    response={200: EnvironmentOut, **DENIED, **INVALID},
    tags=["deployments"],
)
def update_environment(
    request: HttpRequest,
    slug: PathEx[Text, SLUG],
    name: PathEx[Text, ENVIRONMENT],
    payload: EnvironmentPatch,
) -> Environment:
    """Protect an environment (only maintainers deploy), and ask for another
    maintainer's approval of each deployment. Made if it does not exist yet.
    Role: maintainer."""
    project = _find_project(request, slug, access.MANAGE)
    environment = deployments.environment_get_or_create(project=project, name=_name(name))
    return deployments.environment_update(
        environment=environment, **payload.model_dump(exclude_unset=True)
    )


@api.get(
    "/projects/{slug}/environments/{name}/deployments",
    response={200: list[DeploymentOut], **NOT_FOUND},
    tags=["deployments"],
)
def list_deployments(
    request: HttpRequest, slug: PathEx[Text, SLUG], name: PathEx[Text, ENVIRONMENT]
) -> QuerySet[Deployment]:
    """The environment's deployments, newest first (at most 100). Role: viewer."""
    project = _find_project(request, slug, access.READ)
    return deployments.history(_environment(project, name))[:100]


def _name(name: str) -> str:
    from builds.pipeline import _parse_environment  # noqa: PLC0415

    try:
        return _parse_environment(name)
    except ValueError as error:
        raise services.InvalidRequest(str(error)) from error


def _environment(project: Project, name: str) -> Environment:
    environment = project.environments.filter(name=name).first()
    if environment is None:
        raise _not_found(f"environment {name[:100]!r}")
    return environment


def _deployment(project: Project, deployment_id: int) -> Deployment:
    found = (
        Deployment.objects.select_related("environment", "build__project", "author")
        .filter(environment__project=project, pk=deployment_id)
        .first()
    )
    if found is None:
        raise _not_found(f"deployment {deployment_id}")
    return found


@api.post(
    "/projects/{slug}/deployments/{int:deployment_id}/approve",
    response={200: DeploymentOut, **DENIED, 409: ErrorOut},
    tags=["deployments"],
)
def approve_deployment(
    request: HttpRequest, slug: PathEx[Text, SLUG], deployment_id: int
) -> Deployment:
    """Let a deployment that waits for approval go on. Role: maintainer, and not the
    one who asked for it when the environment needs a second person."""
    project = _find_project(request, slug, access.MANAGE)
    return deployments.approve(deployment=_deployment(project, deployment_id), user=_user(request))


@api.post(
    "/projects/{slug}/deployments/{int:deployment_id}/reject",
    response={200: DeploymentOut, **DENIED, 409: ErrorOut},
    tags=["deployments"],
)
def reject_deployment(
    request: HttpRequest, slug: PathEx[Text, SLUG], deployment_id: int
) -> Deployment:
    """Turn down a deployment that waits for approval: its build is canceled.
    Role: maintainer."""
    project = _find_project(request, slug, access.MANAGE)
    return deployments.reject(deployment=_deployment(project, deployment_id), user=_user(request))


@api.post(
    "/projects/{slug}/deployments/{int:deployment_id}/redeploy",
    response={201: BuildDetailOut, **DENIED, 409: ErrorOut, **INVALID},
    tags=["deployments"],
)
def redeploy(request: HttpRequest, slug: PathEx[Text, SLUG], deployment_id: int) -> Reply[Any]:
    """Roll back: run an earlier successful deployment's pipeline again at its commit
    (trigger `rollback`). Role: developer (maintainer for a protected environment)."""
    project = _find_project(request, slug, access.RUN)
    build = deployments.redeploy(
        deployment=_deployment(project, deployment_id), user=_user(request)
    )
    return Reply(201, _with_jobs(build))
