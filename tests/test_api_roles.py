"""Every API route for every role: what each may do, what each is told, and that a
refused call changes nothing.

viewer reads builds and logs; developer also runs, cancels and reruns; maintainer also
changes the project's settings and members; owner also deletes the project and makes,
changes or removes owners. A member without the role gets 403 naming the role needed;
a non-member gets the 404 of a project or build that does not exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from django.test import Client

from builds import services
from builds.models import (
    ApiToken,
    Build,
    Deployment,
    Environment,
    Membership,
    NotificationTarget,
    Project,
    Role,
    Schedule,
    Secret,
)
from builds.notifications import notification_target_create
from builds.schedules import schedule_create
from builds.secrets import secret_set
from tests.helpers import api_call, make_project, make_token, make_user

PIPELINE = "steps:\n  - name: Build\n    run: make\n"
DEPLOY = "steps:\n  - name: ship\n    environment: production\n    run: ./ship\n"

# The user acting in each role; tim (developer) and otto (a second owner) are the
# members that member calls act on; newbie is a user of the server in no project.
ACTORS = {
    "viewer": "vera",
    "developer": "dev",
    "maintainer": "mae",
    "owner": "olivia",
    "outsider": "oscar",
}
MEMBERS = {
    "vera": Role.VIEWER,
    "dev": Role.DEVELOPER,
    "mae": Role.MAINTAINER,
    "tim": Role.DEVELOPER,
    "otto": Role.OWNER,
}


# A route for the server's admins (superusers), whatever the caller's project roles.
SERVER_ADMIN = "server admin"


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # as in the OpenAPI schema
    url: str  # {build} is the id of a build of project shop
    body: object
    # The answer of viewer, developer, maintainer, owner, outsider.
    answers: tuple[int, int, int, int, int]
    needs: str | None = None  # the role a 403 names


ROUTES = [
    # Manual runs, environments and deployments (builds/deploy_api.py).
    Route(
        "post",
        "/api/projects/{slug}/run",
        "/api/projects/shop/run",
        {"inputs": {}},
        (403, 201, 201, 201, 404),
        "developer",
    ),
    Route(
        "get",
        "/api/projects/{slug}/environments",
        "/api/projects/shop/environments",
        None,
        (200, 200, 200, 200, 404),
    ),
    Route(
        "patch",
        "/api/projects/{slug}/environments/{name}",
        "/api/projects/shop/environments/production",
        {"protected": True},
        (403, 403, 200, 200, 404),
        "maintainer",
    ),
    Route(
        "get",
        "/api/projects/{slug}/environments/{name}/deployments",
        "/api/projects/shop/environments/production/deployments",
        None,
        (200, 200, 200, 200, 404),
    ),
    Route(
        "post",
        "/api/projects/{slug}/deployments/{deployment_id}/approve",
        "/api/projects/shop/deployments/{waiting}/approve",
        None,
        (403, 403, 200, 200, 404),
        "maintainer",
    ),
    Route(
        "post",
        "/api/projects/{slug}/deployments/{deployment_id}/reject",
        "/api/projects/shop/deployments/{waiting}/reject",
        None,
        (403, 403, 200, 200, 404),
        "maintainer",
    ),
    Route(
        "post",
        "/api/projects/{slug}/deployments/{deployment_id}/redeploy",
        "/api/projects/shop/deployments/{deployment}/redeploy",
        None,
        (403, 201, 201, 201, 404),
        "developer",
    ),
    Route("get", "/api/projects", "/api/projects", None, (200, 200, 200, 200, 200)),
    Route("post", "/api/projects", "/api/projects", {"slug": "new"}, (201, 201, 201, 201, 201)),
    Route("get", "/api/projects/{slug}", "/api/projects/shop", None, (200, 200, 200, 200, 404)),
    Route(
        "patch",
        "/api/projects/{slug}",
        "/api/projects/shop",
        {"name": "Shop"},
        (403, 403, 200, 200, 404),
        "maintainer",
    ),
    Route(
        "delete",
        "/api/projects/{slug}",
        "/api/projects/shop",
        None,
        (403, 403, 403, 204, 404),
        "owner",
    ),
    Route(
        "get",
        "/api/projects/{slug}/members",
        "/api/projects/shop/members",
        None,
        (200, 200, 200, 200, 404),
    ),
    Route(
        "post",
        "/api/projects/{slug}/members",
        "/api/projects/shop/members",
        {"username": "newbie", "role": "maintainer"},
        (403, 403, 201, 201, 404),
        "maintainer",
    ),
    Route(
        "post",
        "/api/projects/{slug}/members",
        "/api/projects/shop/members",
        {"username": "newbie", "role": "owner"},
        (403, 403, 403, 201, 404),
        "owner",
    ),
    Route(
        "patch",
        "/api/projects/{slug}/members/{username}",
        "/api/projects/shop/members/tim",
        {"role": "viewer"},
        (403, 403, 200, 200, 404),
        "maintainer",
    ),
    Route(
        "patch",
        "/api/projects/{slug}/members/{username}",
        "/api/projects/shop/members/tim",
        {"role": "owner"},
        (403, 403, 403, 200, 404),
        "owner",
    ),
    Route(
        "patch",
        "/api/projects/{slug}/members/{username}",
        "/api/projects/shop/members/otto",
        {"role": "developer"},
        (403, 403, 403, 200, 404),
        "owner",
    ),
    Route(
        "delete",
        "/api/projects/{slug}/members/{username}",
        "/api/projects/shop/members/tim",
        None,
        (403, 403, 204, 204, 404),
        "maintainer",
    ),
    Route(
        "delete",
        "/api/projects/{slug}/members/{username}",
        "/api/projects/shop/members/otto",
        None,
        (403, 403, 403, 204, 404),
        "owner",
    ),
    Route(
        "get",
        "/api/projects/{slug}/secrets",
        "/api/projects/shop/secrets",
        None,
        (403, 403, 200, 200, 404),
        "maintainer",
    ),
    Route(
        "put",
        "/api/projects/{slug}/secrets/{name}",
        "/api/projects/shop/secrets/NEW_TOKEN",
        {"value": "s3cret-value"},
        (403, 403, 201, 201, 404),
        "maintainer",
    ),
    Route(
        "delete",
        "/api/projects/{slug}/secrets/{name}",
        "/api/projects/shop/secrets/DEPLOY_TOKEN",
        None,
        (403, 403, 204, 204, 404),
        "maintainer",
    ),
    # Schedules (builds/schedule_api.py): members read them, maintainers change them.
    Route(
        "get",
        "/api/projects/{slug}/schedules",
        "/api/projects/shop/schedules",
        None,
        (200, 200, 200, 200, 404),
    ),
    Route(
        "post",
        "/api/projects/{slug}/schedules",
        "/api/projects/shop/schedules",
        {"cron": "*/5 * * * *"},
        (403, 403, 201, 201, 404),
        "maintainer",
    ),
    Route(
        "patch",
        "/api/projects/{slug}/schedules/{schedule_id}",
        "/api/projects/shop/schedules/{schedule}",
        {"enabled": False},
        (403, 403, 200, 200, 404),
        "maintainer",
    ),
    Route(
        "delete",
        "/api/projects/{slug}/schedules/{schedule_id}",
        "/api/projects/shop/schedules/{schedule}",
        None,
        (403, 403, 204, 204, 404),
        "maintainer",
    ),
    # Notification targets (builds/notification_api.py): they hold credentials, so even
    # reading them is the maintainers'.
    Route(
        "get",
        "/api/projects/{slug}/notifications",
        "/api/projects/shop/notifications",
        None,
        (403, 403, 200, 200, 404),
        "maintainer",
    ),
    Route(
        "post",
        "/api/projects/{slug}/notifications",
        "/api/projects/shop/notifications",
        {"name": "new", "kind": "email", "addresses": ["new@example.com"]},
        (403, 403, 201, 201, 404),
        "maintainer",
    ),
    Route(
        "patch",
        "/api/projects/{slug}/notifications/{target_id}",
        "/api/projects/shop/notifications/{target}",
        {"enabled": False},
        (403, 403, 200, 200, 404),
        "maintainer",
    ),
    Route(
        "delete",
        "/api/projects/{slug}/notifications/{target_id}",
        "/api/projects/shop/notifications/{target}",
        None,
        (403, 403, 204, 204, 404),
        "maintainer",
    ),
    Route(
        "get",
        "/api/projects/{slug}/notifications/deliveries",
        "/api/projects/shop/notifications/deliveries",
        None,
        (403, 403, 200, 200, 404),
        "maintainer",
    ),
    Route(
        "post",
        "/api/builds",
        "/api/builds",
        {"project": "shop", "pipeline": PIPELINE},
        (403, 201, 201, 201, 404),
        "developer",
    ),
    Route("get", "/api/builds", "/api/builds", None, (200, 200, 200, 200, 200)),
    Route("get", "/api/builds", "/api/builds?project=shop", None, (200, 200, 200, 200, 404)),
    Route("get", "/api/builds/{build_id}", "/api/builds/{build}", None, (200, 200, 200, 200, 404)),
    Route(
        "get",
        "/api/builds/{build_id}/logs",
        "/api/builds/{build}/logs",
        None,
        (200, 200, 200, 200, 404),
    ),
    Route(
        "post",
        "/api/builds/{build_id}/cancel",
        "/api/builds/{build}/cancel",
        None,
        (403, 200, 200, 200, 404),
        "developer",
    ),
    Route(
        "post",
        "/api/builds/{build_id}/rerun",
        "/api/builds/{build}/rerun",
        None,
        (403, 201, 201, 201, 404),
        "developer",
    ),
    # The audit log: without a project, each reads what they may (admins all, the others
    # their maintained projects' events); a project's log is for its maintainers.
    Route("get", "/api/audit", "/api/audit", None, (200, 200, 200, 200, 200)),
    Route(
        "get",
        "/api/audit",
        "/api/audit?project=shop",
        None,
        (403, 403, 200, 200, 404),
        "maintainer",
    ),
    # Tokens are each user's own, whatever their roles; {token} is the caller's.
    Route("get", "/api/tokens", "/api/tokens", None, (200, 200, 200, 200, 200)),
    Route("post", "/api/tokens", "/api/tokens", {"name": "ci"}, (201, 201, 201, 201, 201)),
    Route("delete", "/api/tokens/{token_id}", "/api/tokens/{token}", None, (204,) * 5),
    # Registration tokens for remote runners: the server's admins' (superusers') alone.
    Route(
        "get",
        "/api/runners/registration-tokens",
        "/api/runners/registration-tokens",
        None,
        (403,) * 5,
        SERVER_ADMIN,
    ),
    Route(
        "post",
        "/api/runners/registration-tokens",
        "/api/runners/registration-tokens",
        {"reusable": True},
        (403,) * 5,
        SERVER_ADMIN,
    ),
    Route(
        "delete",
        "/api/runners/registration-tokens/{token_id}",
        "/api/runners/registration-tokens/1",
        None,
        (403,) * 5,
        SERVER_ADMIN,
    ),
    # No token needed; a user with no password gets no JWT.
    Route(
        "post",
        "/api/auth/token",
        "/api/auth/token",
        {"username": "tim", "password": "guess"},
        (401, 401, 401, 401, 401),
    ),
]

CASES = [
    pytest.param(route, role, answer, id=f"{route.method} {route.url} {route.body or ''} {role}")
    for route in ROUTES
    for role, answer in zip(ACTORS, route.answers, strict=True)
]


@pytest.fixture
def shop(db: None) -> tuple[Project, Build]:
    owner = make_user(ACTORS["owner"])
    project: Any = make_project(owner, "shop")
    for name, role in MEMBERS.items():
        services.member_add(project=project, user=make_user(name), role=role)  # type: ignore[arg-type]
    make_user("newbie")
    make_user(ACTORS["outsider"])
    build, _ = services.build_create(project=project, pipeline=PIPELINE, author=owner)
    # A stored pipeline (for run), a successful deployment and one waiting for approval.
    Project.objects.filter(pk=project.pk).update(pipeline=PIPELINE)
    for state_now in (Deployment.State.SUCCESS, Deployment.State.WAITING):
        deployed, _ = services.build_create(project=project, pipeline=DEPLOY, author=owner)
        Deployment.objects.filter(build=deployed).update(state=state_now)
    secret_set(project=project, name="DEPLOY_TOKEN", value="deploy-value", user=owner)  # type: ignore[arg-type]
    schedule_create(project=project, user=owner, cron="0 3 * * *")
    notification_target_create(
        project=project, name="leads", kind="email", addresses=["leads@example.com"]
    )
    return project, build


def shop_schedule() -> int | None:
    return Schedule.objects.values_list("pk", flat=True).first()


def shop_deployment(state: str) -> int | None:
    return Deployment.objects.filter(state=state).values_list("pk", flat=True).first()


def shop_target() -> int | None:
    return NotificationTarget.objects.values_list("pk", flat=True).first()


def user_named(name: str) -> Any:
    from django.contrib.auth.models import User

    return User.objects.get(username=name)


def state() -> dict[str, Any]:
    """Everything a call could change."""
    return {
        "projects": list(Project.objects.values_list("slug", "name")),
        "members": sorted(Membership.objects.values_list("user__username", "role")),
        "builds": list(Build.objects.values_list("id", "status", "cancel_requested")),
        "secrets": list(Secret.objects.values_list("name", "ciphertext", "events")),
        "schedules": list(Schedule.objects.values_list("id", "cron", "enabled")),
        "notifications": list(NotificationTarget.objects.values_list("id", "name", "enabled")),
        "environments": list(Environment.objects.values_list("id", "protected", "approval")),
        "deployments": sorted(Deployment.objects.values_list("id", "state")),
    }


@pytest.mark.parametrize(("route", "role", "answer"), CASES)
def test_each_role_gets_what_it_may_do_and_a_refusal_changes_nothing(
    shop: tuple[Project, Build], route: Route, role: str, answer: int
) -> None:
    _, build = shop
    token = make_token(user_named(ACTORS[role]))
    before = state()

    token_id = ApiToken.objects.get(digest=services.token_digest(token)).pk
    url = route.url.format(
        build=build.pk,
        token=token_id,
        schedule=shop_schedule(),
        target=shop_target(),
        deployment=shop_deployment(Deployment.State.SUCCESS),
        waiting=shop_deployment(Deployment.State.WAITING),
    )
    response = api_call(route.method, url, token, route.body)

    assert response.status_code == answer, response.content
    if answer >= 400:
        assert state() == before
        assert response["Content-Type"] == "application/json"
    if answer == 403 and route.needs == SERVER_ADMIN:
        assert "for the server's admins" in response.json()["detail"]
    elif answer == 403:
        needed = route.needs
        if "/members" in route.path and role in ("viewer", "developer"):
            # Members are managed from maintainer up: that is named first, owner after.
            needed = "maintainer"
        assert response.json() == {
            "detail": f"this needs the {needed} role (or higher) on project 'shop'; "
            f"you are a{'n' if role[0] in 'aeiou' else ''} {role}"
        }
    if answer == 404:
        assert response.json()["detail"] in (
            "project 'shop' not found",
            f"build {build.pk} not found",
        )


def test_the_table_covers_every_route_of_the_api(db: None) -> None:
    schema = Client().get("/api/openapi.json").json()
    routes = {(method, path) for path, item in schema["paths"].items() for method in item}

    assert {(route.method, route.path) for route in ROUTES} == routes


def test_a_member_whose_role_was_lowered_is_refused_at_once(shop: tuple[Project, Build]) -> None:
    project, build = shop
    token = make_token(user_named("dev"))
    assert api_call("post", f"/api/builds/{build.pk}/rerun", token).status_code == 201

    services.member_change(
        membership=Membership.objects.get(project=project, user__username="dev"),
        role=Role.VIEWER,
    )

    assert api_call("post", f"/api/builds/{build.pk}/rerun", token).status_code == 403
    assert api_call("get", f"/api/builds/{build.pk}", token).status_code == 200


# A job token (GOCI_JOB_TOKEN) is the sixth caller: the token of a running job of the
# build in {build} reads that build and its logs; every other call is refused.
JOB_READS = {("get", "/api/builds/{build_id}"), ("get", "/api/builds/{build_id}/logs")}


@pytest.mark.parametrize("route", ROUTES, ids=lambda route: f"{route.method} {route.url}")
def test_a_job_token_reads_its_own_build_and_is_refused_everything_else(
    shop: tuple[Project, Build], route: Route
) -> None:
    from builds import access_tokens
    from builds.models import Job, Status

    _, build = shop
    job = Job.objects.get(build=build)
    Job.objects.filter(pk=job.pk).update(status=Status.RUNNING)
    token = access_tokens.issue_for_job(job, 60)
    before = state()

    url = route.url.format(
        build=build.pk,
        token=1,
        schedule=shop_schedule(),
        target=shop_target(),
        deployment=shop_deployment(Deployment.State.SUCCESS),
        waiting=shop_deployment(Deployment.State.WAITING),
    )
    response = api_call(route.method, url, token, route.body)

    if (route.method, route.path) in JOB_READS:
        assert response.status_code == 200, response.content
    elif route.path == "/api/auth/token":
        assert response.status_code == 401  # needs no token: its body is what counts
    else:
        assert response.status_code == 403, response.content
        assert response.json()["detail"].startswith("a job token reads only its own build")
    assert state() == before
