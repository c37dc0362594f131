"""Every page and form of the dashboard, for every role: what each answers, and that a
refused request changed nothing.

Viewer: read builds and logs. Developer: also run, cancel and rerun. Maintainer: also
change the project's settings and members. Owner: also delete or transfer the project.
A member whose role is too low gets 403 naming the role needed; a non-member gets 404,
as for a project that does not exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from builds import services
from builds.badges import urlpatterns as badge_urlpatterns
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
    WebhookDelivery,
)
from builds.notifications import notification_target_create
from builds.schedules import schedule_create
from builds.secrets import secret_set
from builds.urls import urlpatterns
from goci.audit.urls import urlpatterns as audit_urlpatterns
from runners.urls import urlpatterns as runner_urlpatterns
from tests.helpers import make_project, make_user
from tests.queue_helpers import submit

pytestmark = pytest.mark.django_db

PIPELINE = "steps:\n  - {name: hello, run: echo hello}\n"
DEPLOY = "steps:\n  - {name: ship, environment: production, run: echo ship}\n"
ROLES = ("viewer", "developer", "maintainer", "owner", "outsider")
HTMX = {"HTTP_HX_REQUEST": "true"}


@dataclass(frozen=True)
class Case:
    name: str  # the URL pattern's name
    method: str
    url: str  # {build}: the build's id; {delivery}: a verified delivery's
    data: dict[str, str]
    # Per role, in the order of ROLES: the status, or for a 403 the role it names.
    answers: tuple[int | str, ...]

    @property
    def id(self) -> str:
        return f"{self.method} {self.url}"


# Who reads (any member), who runs (developer+), who manages (maintainer+), who owns.
# A role name: 403, and the page says that role is needed.
READ = (200, 200, 200, 200, 404)
RUN = ("developer", 302, 302, 302, 404)
MANAGE_GET = ("maintainer", "maintainer", 200, 200, 404)
MANAGE = ("maintainer", "maintainer", 302, 302, 404)
OWN = ("owner", "owner", "owner", 302, 404)
# An owner's membership: maintainers manage members, but only owners touch owners.
OWNERS_MEMBERSHIP = ("maintainer", "maintainer", "owner", 302, 404)
ANYONE = (200, 200, 200, 200, 200)

CASES = [
    Case("dashboard", "get", "/", {}, ANYONE),
    Case("projects", "get", "/projects/", {}, ANYONE),
    Case("project-new", "get", "/projects/new", {}, ANYONE),
    Case("project-new", "post", "/projects/new", {"slug": "fresh", "default_branch": "main"},
         (302,) * 5),
    Case("project", "get", "/projects/web/", {}, READ),
    Case("project-run", "post", "/projects/web/run", {"pipeline": PIPELINE}, RUN),
    Case("project-settings", "get", "/projects/web/settings", {}, MANAGE_GET),
    Case("project-settings", "post", "/projects/web/settings",
         {"name": "Renamed", "default_branch": "dev", "pipeline_path": "ci.yml"}, MANAGE),
    # Webhooks: the secret and the deliveries are the maintainers'.
    Case("project-webhook-rotate", "post", "/projects/web/webhook/rotate", {}, MANAGE),
    Case("project-deliveries", "get", "/projects/web/deliveries", {}, MANAGE_GET),
    Case("project-delivery-redeliver", "post", "/projects/web/deliveries/{delivery}/redeliver",
         {}, MANAGE),
    Case("project-secrets", "post", "/projects/web/secrets",
         {"name": "NEW_TOKEN", "value": "new-value", "events": "push"}, MANAGE),
    Case("project-secret-delete", "post", "/projects/web/secrets/DEPLOY_TOKEN/delete", {},
         MANAGE),
    Case("project-delete", "post", "/projects/web/delete", {"confirm": "web"}, OWN),
    Case("project-transfer", "post", "/projects/web/transfer", {"username": "developer"}, OWN),
    Case("project-members", "get", "/projects/web/members", {}, READ),
    Case("project-members", "post", "/projects/web/members",
         {"username": "newcomer", "role": "viewer"}, MANAGE),
    Case("project-member", "post", "/projects/web/members/developer", {"role": "viewer"}, MANAGE),
    Case("project-member-remove", "post", "/projects/web/members/developer/remove", {}, MANAGE),
    # An owner's membership: only owners touch it (the second owner, so that one remains).
    Case("project-member", "post", "/projects/web/members/olga", {"role": "viewer"},
         OWNERS_MEMBERSHIP),
    Case("project-member-remove", "post", "/projects/web/members/olga/remove", {},
         OWNERS_MEMBERSHIP),
    # Schedules (builds/schedule_pages.py): members read them, maintainers change them.
    Case("project-schedules", "get", "/projects/web/schedules", {}, READ),
    Case("project-schedules", "post", "/projects/web/schedules",
         {"cron": "0 4 * * *", "timezone": "UTC"}, MANAGE),
    Case("project-schedule-toggle", "post", "/projects/web/schedules/{schedule}/toggle", {},
         MANAGE),
    Case("project-schedule-delete", "post", "/projects/web/schedules/{schedule}/delete", {},
         MANAGE),
    # Notification targets (builds/notification_pages.py) hold credentials: maintainers'.
    Case("project-notifications", "get", "/projects/web/notifications", {}, MANAGE_GET),
    Case("project-notifications", "post", "/projects/web/notifications",
         {"name": "ops", "kind": "email", "when": "failures", "addresses": "ops@example.com"},
         MANAGE),
    Case("project-notification-delete", "post", "/projects/web/notifications/{target}/delete",
         {}, MANAGE),
    # Run a ref with inputs, environments and deployments (builds/deploy_pages.py).
    Case("project-run-ref", "get", "/projects/web/run-ref", {},
         ("developer", 200, 200, 200, 404)),
    Case("project-run-ref", "post", "/projects/web/run-ref", {"ref": "main"}, RUN),
    Case("project-environments", "get", "/projects/web/environments", {}, READ),
    Case("environment-protect", "post", "/projects/web/environments/production/protect",
         {"protected": "on"}, MANAGE),
    Case("deployment-redeploy", "post", "/projects/web/deployments/{deployment}/redeploy", {},
         RUN),
    Case("deployment-approve", "post", "/projects/web/deployments/{waiting}/approve", {},
         MANAGE),
    Case("deployment-reject", "post", "/projects/web/deployments/{waiting}/reject", {},
         MANAGE),
    Case("build", "get", "/builds/{build}/", {}, READ),
    Case("build-cancel", "post", "/builds/{build}/cancel", {}, RUN),
    Case("build-rerun", "post", "/builds/{build}/rerun", {}, RUN),
    Case("build-raw", "get", "/builds/{build}/log.txt", {}, READ),
    Case("step-raw", "get", "/builds/{build}/steps/0/raw", {}, READ),
    Case("step-lines", "get", "/builds/{build}/steps/0/lines", {}, READ),
    # The audit log: anyone reads what they may (their maintained projects' events); a
    # project's log is for its maintainers.
    Case("audit", "get", "/audit/", {}, ANYONE),
    Case("audit", "get", "/audit/?project=web", {}, MANAGE_GET),
    Case("audit-export", "get", "/audit/export.csv", {}, ANYONE),
    Case("audit-export", "get", "/audit/export.csv?project=web", {}, MANAGE_GET),
    # Tokens are each user's own (tests/test_tokens.py revokes one's own and not another's).
    Case("tokens", "get", "/account/tokens", {}, ANYONE),
    Case("tokens", "post", "/account/tokens", {"name": "ci", "scopes": "read"}, (201,) * 5),
    Case("token-revoke", "post", "/account/tokens/999999/revoke", {}, (404,) * 5),
    # The status badge's token (builds/badges.py) is the maintainers' to rotate.
    Case("badge-token-rotate", "post", "/projects/web/badge/rotate", {}, MANAGE),
    # The runners page (runners/views.py) is the server admins' (superusers'): no project
    # role reaches it, and it looks like no page at all (admins: tests/test_runners_page.py).
    Case("runners", "get", "/runners/", {}, (404,) * 5),
    Case("runners", "post", "/runners/", {"reusable": "on"}, (404,) * 5),
    Case("runner-action", "post", "/runners/1/pause", {}, (404,) * 5),
    Case("registration-token-revoke", "post", "/runners/tokens/1/revoke", {}, (404,) * 5),
]  # fmt: skip


@pytest.fixture
def world() -> dict[str, Any]:
    """Project web with one member of each role (and a second owner, olga), a queued
    build, a user who is no member (outsider) and one to add (newcomer)."""
    owner = make_user("owner")
    project = make_project(owner, "web")
    users = {"owner": owner, "outsider": make_user("outsider")}
    for role in ("viewer", "developer", "maintainer"):
        users[role] = make_user(role)
        services.member_add(project=project, user=users[role], role=role)  # type: ignore[arg-type]
    services.member_add(project=project, user=make_user("olga"), role=Role.OWNER)  # type: ignore[arg-type]
    make_user("newcomer")
    make_project(users["outsider"], "elsewhere")
    build = submit(project, PIPELINE)  # type: ignore[arg-type]
    secret_set(project=project, name="DEPLOY_TOKEN", value="deploy-value", user=owner)  # type: ignore[arg-type]
    ping = services.delivery_record(
        project=project,  # type: ignore[arg-type]
        delivery_id="d-1",
        forge="github",
        event="ping",
        outcome=WebhookDelivery.Outcome.IGNORED,
        reason="ping",
        headers={"x-github-event": "ping"},
        body=b'{"zen": "Keep it logically awesome."}',
    )
    schedule = schedule_create(project=project, user=owner, cron="0 3 * * *")  # type: ignore[arg-type]
    target = notification_target_create(
        project=project,  # type: ignore[arg-type]
        name="leads",
        kind="email",
        addresses=["leads@example.com"],
    )
    # A stored pipeline (for Run), a successful deployment (to redeploy) and one that
    # waits for approval.
    Project.objects.filter(pk=project.pk).update(pipeline=PIPELINE)  # type: ignore[attr-defined]
    deployed = submit(project, DEPLOY)  # type: ignore[arg-type]
    deployment = Deployment.objects.get(build=deployed)
    Deployment.objects.filter(pk=deployment.pk).update(state=Deployment.State.SUCCESS)
    waiting = Deployment.objects.get(build=submit(project, DEPLOY))  # type: ignore[arg-type]
    Deployment.objects.filter(pk=waiting.pk).update(state=Deployment.State.WAITING)
    return {
        "users": users,
        "build": build,
        "deployment": deployment,
        "waiting": waiting,
        "delivery": ping,
        "schedule": schedule,
        "target": target,
    }


def url_of(case: Case, world: dict[str, Any]) -> str:
    return case.url.format(
        build=world["build"].pk,
        delivery=world["delivery"].pk,
        schedule=world["schedule"].pk,
        target=world["target"].pk,
        deployment=world["deployment"].pk,
        waiting=world["waiting"].pk,
    )


def state() -> Any:
    """Everything a page or form could change."""
    members = Membership.objects.order_by("pk")
    return (
        list(
            Project.objects.order_by("pk").values_list(
                "slug", "name", "default_branch", "webhook_secret", "badge_token"
            )
        ),
        list(members.values_list("project__slug", "user__username", "role")),
        list(Build.objects.order_by("pk").values_list("pk", "status", "cancel_requested")),
        list(Secret.objects.order_by("pk").values_list("name", "ciphertext", "events")),
        list(ApiToken.objects.order_by("pk").values_list("pk", "revoked_at")),
        list(WebhookDelivery.objects.order_by("pk").values_list("pk", "outcome")),
        list(Schedule.objects.order_by("pk").values_list("pk", "cron", "enabled")),
        list(NotificationTarget.objects.order_by("pk").values_list("pk", "name", "enabled")),
        list(Environment.objects.order_by("pk").values_list("pk", "protected", "approval")),
        list(Deployment.objects.order_by("pk").values_list("pk", "state")),
    )


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_each_page_answers_each_role_as_its_rules_say(
    world: dict[str, Any], case: Case, role: str
) -> None:
    client = Client()
    client.force_login(world["users"][role])
    url = url_of(case, world)
    before = state()
    response = getattr(client, case.method)(url, case.data)
    answer = case.answers[ROLES.index(role)]
    expected = 403 if isinstance(answer, str) else answer
    assert response.status_code == expected, response.content.decode()[:2000]
    if expected in (403, 404):
        assert state() == before  # refused: nothing changed
    elif case.method == "post":
        assert state() != before  # done: something changed
    if isinstance(answer, str):
        page = response.content.decode()
        assert "<title>Not allowed · Goci</title>" in page
        assert f"This needs the {answer} role (or higher) on project &#x27;web&#x27;" in page
        assert f"you are a {role}." in page


def test_the_table_covers_every_page_of_the_dashboard() -> None:
    patterns = [*urlpatterns, *audit_urlpatterns, *badge_urlpatterns, *runner_urlpatterns]
    # The badge itself is public: tests/test_every_route.py's PUBLIC.
    names = {pattern.name for pattern in patterns} - {"login", "logout", "badge"}  # type: ignore[union-attr]
    assert names == {case.name for case in CASES}


def test_a_denied_htmx_request_reloads_the_page_which_says_why(world: dict[str, Any]) -> None:
    client = Client()
    client.force_login(world["users"]["viewer"])
    build = world["build"]
    response = client.post(f"/builds/{build.pk}/cancel", **HTMX)
    # htmx swaps no 4xx: it reloads on HX-Refresh, and the page shows the message.
    assert response.status_code == 403
    assert response["HX-Refresh"] == "true"
    assert "needs the developer role" in response.content.decode()
    page = client.get(f"/builds/{build.pk}/").content.decode()
    assert "Not allowed: this needs the developer role (or higher) on project" in page
    build.refresh_from_db()
    assert not build.cancel_requested


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_anonymous_is_sent_to_sign_in_everywhere(world: dict[str, Any], case: Case) -> None:
    before = state()
    response = getattr(Client(), case.method)(url_of(case, world), case.data)
    assert response.status_code == 302
    assert response["Location"].startswith("/login/?next=")
    assert state() == before


def test_an_inactive_member_is_signed_out_everywhere(world: dict[str, Any]) -> None:
    owner: User = world["users"]["owner"]
    client = Client()
    client.force_login(owner)
    User.objects.filter(pk=owner.pk).update(is_active=False)
    assert client.get("/projects/web/")["Location"].startswith("/login/")
