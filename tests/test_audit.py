"""The audit log records who did what: each action, done through the pages, the API,
the admin or the command line, with its actor, its door (`via`) and its project; and no
code path can change or delete an event."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from builds import services
from builds.models import ApiToken, Build, Membership, Project, Role
from goci.audit.context import from_cli
from goci.audit.models import AppendOnly, AuditEvent
from tests.helpers import api_call, make_project, make_token, make_user

pytestmark = pytest.mark.django_db

PIPELINE = "steps:\n  - {name: hello, run: echo hello}\n"
AGENT = "Mozilla/5.0 (audit test)"


def events(action: str | None = None) -> list[AuditEvent]:
    found = AuditEvent.objects.order_by("id")
    return list(found.filter(action=action) if action else found)


def only(action: str) -> AuditEvent:
    [event] = events(action)
    return event


def said(event: AuditEvent) -> tuple[str, str, str]:
    return event.actor_name, event.via, event.project_slug


@pytest.fixture
def ann() -> User:
    return make_user("ann")  # type: ignore[return-value]


@pytest.fixture
def browser(ann: User) -> Client:
    client = Client(HTTP_USER_AGENT=AGENT)
    client.force_login(ann)
    return client


# ---------------------------------------------------------------------------
# Each action, with its actor and door


def test_every_project_member_and_build_action_in_the_pages_is_recorded(
    browser: Client, ann: User
) -> None:
    make_user("bob")
    assert (
        browser.post("/projects/new", {"slug": "web", "default_branch": "main"}).status_code == 302
    )
    settings = {
        "name": "Web",
        "default_branch": "dev",
        "pipeline_path": "ci.yml",
        "auto_cancel": "on",
    }
    assert browser.post("/projects/web/settings", settings).status_code == 302
    assert (
        browser.post("/projects/web/members", {"username": "bob", "role": "viewer"}).status_code
        == 302
    )
    assert browser.post("/projects/web/members/bob", {"role": "developer"}).status_code == 302
    assert browser.post("/projects/web/transfer", {"username": "bob"}).status_code == 302
    assert browser.post("/projects/web/members/bob", {"role": "maintainer"}).status_code == 302
    assert browser.post("/projects/web/run", {"pipeline": PIPELINE}).status_code == 302
    build = Build.objects.get()
    assert browser.post(f"/builds/{build.pk}/cancel").status_code == 302
    assert browser.post(f"/builds/{build.pk}/rerun").status_code == 302
    assert browser.post("/projects/web/members/bob/remove").status_code == 302
    assert browser.post("/projects/web/delete", {"confirm": "web"}).status_code == 302

    recorded = [e.action for e in events() if e.action != "signin.success"]
    assert recorded == [
        "project.create",
        "project.update",
        "member.add",
        "member.change",
        "project.transfer",
        "member.change",
        "build.run",
        "build.cancel",
        "build.rerun",
        "member.remove",
        "project.delete",
    ]
    for event in events():
        if event.action == "signin.success":
            continue
        assert said(event) == ("ann", "ui", "web"), event.action
        assert event.actor == ann
        assert event.address == "127.0.0.1"
        assert event.user_agent == AGENT
    # The project is gone; its events keep its slug, without the foreign key.
    assert all(event.project is None for event in events())
    assert only("project.update").details == {
        "name": "Web",
        "repo_url": "",
        "default_branch": "dev",
        "pipeline_path": "ci.yml",
        "auto_cancel": True,
        "public": False,
        "pipeline": "",
    }
    assert only("member.add").details == {"member": "bob", "role": "viewer"}
    assert events("member.change")[0].details == {
        "member": "bob",
        "from": "viewer",
        "to": "developer",
    }
    assert only("project.transfer").details == {"to": "bob", "role_before": "developer"}
    assert only("build.run").object_type == "build"
    assert only("build.run").object_id == str(build.pk)
    assert only("build.rerun").details["rerun_of"] == build.pk


def test_every_action_through_the_api_is_recorded_with_the_token_s_user(ann: User) -> None:
    token = make_token(ann)  # by nobody's request: a command, so via cli
    make_user("bob")
    assert api_call("post", "/api/projects", token, {"slug": "shop"}).status_code == 201
    assert api_call("patch", "/api/projects/shop", token, {"name": "Shop"}).status_code == 200
    body = {"username": "bob", "role": "viewer"}
    assert api_call("post", "/api/projects/shop/members", token, body).status_code == 201
    body = {"role": "developer"}
    assert api_call("patch", "/api/projects/shop/members/bob", token, body).status_code == 200
    body = {"project": "shop", "pipeline": PIPELINE, "env": {"TOKEN": "hunter2-value"}}
    created = api_call("post", "/api/builds", token, body)
    build_id = created.json()["id"]
    assert api_call("post", f"/api/builds/{build_id}/cancel", token).status_code == 200
    assert api_call("post", f"/api/builds/{build_id}/rerun", token).status_code == 201
    assert api_call("delete", "/api/projects/shop/members/bob", token).status_code == 204
    assert api_call("delete", "/api/projects/shop", token).status_code == 204

    assert [(e.action, *said(e)) for e in events()] == [
        ("token.create", "", "cli", ""),
        ("project.create", "ann", "api", "shop"),
        ("project.update", "ann", "api", "shop"),
        ("member.add", "ann", "api", "shop"),
        ("member.change", "ann", "api", "shop"),
        ("build.run", "ann", "api", "shop"),
        ("build.cancel", "ann", "api", "shop"),
        ("build.rerun", "ann", "api", "shop"),
        ("member.remove", "ann", "api", "shop"),
        ("project.delete", "ann", "api", "shop"),
    ]
    # A build's env may carry credentials: it is never part of an event.
    assert "hunter2-value" not in str(list(AuditEvent.objects.values()))


def test_the_command_line_records_the_shell_account_or_the_user_it_names(ann: User) -> None:
    with from_cli():
        services.token_create(user=ann, name="laptop")
    with from_cli(user=ann):
        services.project_create(user=ann, slug="cli-made")

    token = only("token.create")
    assert token.via == "cli"
    assert token.actor is None
    assert token.actor_name.endswith("(shell)") or token.actor_name == "shell"
    assert token.details == {"name": "laptop", "user": "ann"}
    assert token.object_type == "apitoken"
    assert said(only("project.create")) == ("ann", "cli", "cli-made")


def test_a_user_deleted_from_the_command_line_is_recorded(ann: User) -> None:
    make_project(ann, "solo")
    with from_cli():
        services.user_delete(user=ann, with_projects=True)
    assert only("user.delete").details == {"username": "ann", "projects": ["solo"]}
    assert only("project.delete").project_slug == "solo"


def test_sign_in_success_and_failure_are_recorded_without_the_password(db: None) -> None:
    User.objects.create_user("ann", password="correct horse battery")  # noqa: S106  (a test's)
    client = Client(HTTP_USER_AGENT=AGENT)

    client.post("/login/", {"username": "ann", "password": "wrong guess 123"})
    client.post("/login/", {"username": "nobody", "password": "another guess"})
    client.post("/login/", {"username": "ann", "password": "correct horse battery"})

    failed = events("signin.failure")
    assert [(e.details, e.actor, e.via, e.address) for e in failed] == [
        ({"username": "ann"}, None, "ui", "127.0.0.1"),
        ({"username": "nobody"}, None, "ui", "127.0.0.1"),
    ]
    success = only("signin.success")
    assert (success.actor_name, success.via, success.user_agent) == ("ann", "ui", AGENT)
    stored = str(list(AuditEvent.objects.values()))
    assert "guess" not in stored
    assert "correct horse" not in stored


# ---------------------------------------------------------------------------
# The admin: every change recorded, the log itself read-only


@pytest.fixture
def root() -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("root", "root@example.com", None))
    return client


def test_every_admin_change_is_recorded_by_the_admin(root: Client, ann: User) -> None:
    scopes = '["read", "run"]'
    response = root.post(
        "/admin/builds/apitoken/add/", {"user": ann.pk, "name": "ci", "scopes": scopes}
    )
    assert response.status_code == 302
    token = ApiToken.objects.get()
    response = root.post(
        f"/admin/builds/apitoken/{token.pk}/change/",
        {"user": ann.pk, "name": "ci-2", "scopes": json.dumps(token.scopes)},
    )
    assert response.status_code == 302
    response = root.post(f"/admin/builds/apitoken/{token.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302

    assert [(e.action, *said(e)) for e in events() if e.action != "signin.success"] == [
        ("token.create", "root", "admin", ""),
        ("admin.add", "root", "admin", ""),
        ("admin.change", "root", "admin", ""),
        ("admin.delete", "root", "admin", ""),
    ]
    change = only("admin.change")
    token.name = "ci-2"
    assert change.details == {
        "model": "apitoken",
        "object_id": str(token.pk),
        "object": str(token),
        "change": change.details["change"],
    }
    assert change.details["change"].startswith("Changed Name")  # as the admin's history says


def test_a_bulk_delete_in_the_admin_records_each_object_once(root: Client, ann: User) -> None:
    tokens = [services.token_create(user=ann, name=f"t{i}")[0] for i in range(3)]
    one = services.token_create(user=ann, name="single")[0]

    for chosen in ([t.pk for t in tokens], [one.pk]):
        response = root.post(
            "/admin/builds/apitoken/",
            {"action": "delete_selected", "_selected_action": chosen, "post": "yes"},
        )
        assert response.status_code == 302

    deleted = events("admin.delete")
    assert sorted(e.details["object_id"] for e in deleted) == sorted(
        str(pk) for pk in [*(t.pk for t in tokens), one.pk]
    )
    assert {(e.actor_name, e.via) for e in deleted} == {("root", "admin")}
    assert ApiToken.objects.count() == 0


def test_an_admin_action_on_builds_records_the_service_s_event(root: Client, ann: User) -> None:
    project: Any = make_project(ann, "web")
    build, _ = services.build_create(project=project, pipeline=PIPELINE)
    response = root.post(
        "/admin/builds/build/", {"action": "cancel", "_selected_action": [build.pk]}
    )
    assert response.status_code == 302
    assert said(only("build.cancel")) == ("root", "admin", "web")


def test_the_admin_shows_events_read_only(root: Client, ann: User) -> None:
    make_project(ann, "web")
    event = only("project.create")
    assert root.get("/admin/audit/auditevent/").status_code == 200
    page = root.get(f"/admin/audit/auditevent/{event.pk}/change/")
    assert page.status_code == 200
    assert b'name="_save"' not in page.content  # a view, not a form
    assert root.get("/admin/audit/auditevent/add/").status_code == 403
    assert root.post(f"/admin/audit/auditevent/{event.pk}/change/", {}).status_code == 403
    assert (
        root.post(f"/admin/audit/auditevent/{event.pk}/delete/", {"post": "yes"}).status_code == 403
    )
    response = root.post(
        "/admin/audit/auditevent/",
        {"action": "delete_selected", "_selected_action": [event.pk], "post": "yes"},
    )
    assert AuditEvent.objects.filter(pk=event.pk).exists()
    assert response.status_code in (200, 302)


# ---------------------------------------------------------------------------
# Append-only


def test_an_event_cannot_be_updated_or_deleted(ann: User) -> None:
    make_project(ann, "web")
    event = only("project.create")
    event.action = "project.nothing"
    with pytest.raises(AppendOnly):
        event.save()
    with pytest.raises(AppendOnly):
        event.delete()
    with pytest.raises(AppendOnly):
        AuditEvent.objects.filter(pk=event.pk).update(action="x")
    with pytest.raises(AppendOnly):
        AuditEvent.objects.all().delete()
    assert AuditEvent.objects.get(pk=event.pk).action == "project.create"


def test_deleting_the_actor_keeps_their_name(ann: User) -> None:
    project: Any = make_project(ann, "web")
    services.member_add(project=project, user=make_user("bob"), role=Role.VIEWER)  # type: ignore[arg-type]
    with from_cli(user=ann):
        services.member_remove(membership=Membership.objects.get(user__username="bob"))
    User.objects.filter(username="ann").delete()  # by the ORM: no service checks owners
    event = only("member.remove")
    assert event.actor is None
    assert event.actor_name == "ann"
    assert Project.objects.filter(slug="web").exists()


@pytest.mark.django_db(transaction=True)
async def test_under_asgi_the_origin_reaches_the_service_too() -> None:
    from asgiref.sync import sync_to_async
    from django.db import connections
    from django.test import AsyncClient

    try:
        ann = await sync_to_async(make_user)("ann")
        token = await sync_to_async(make_token)(ann)
        client = AsyncClient()
        await client.aforce_login(ann)  # type: ignore[arg-type]
        page = await client.post("/projects/new", {"slug": "web", "default_branch": "main"})
        assert page.status_code == 302
        call = await AsyncClient().post(
            "/api/projects",
            {"slug": "shop"},
            content_type="application/json",
            headers={"authorization": f"Bearer {token}"},
        )
        assert call.status_code == 201
        made = await sync_to_async(events)("project.create")
        assert [(*said(e), e.address) for e in made] == [
            ("ann", "ui", "web", "127.0.0.1"),
            ("ann", "api", "shop", "127.0.0.1"),
        ]
    finally:
        await sync_to_async(connections.close_all)()
