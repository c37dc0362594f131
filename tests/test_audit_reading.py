"""Reading the audit log: the page, its CSV export and GET /api/audit take the same
filters (actor, action, since, until) and the same rules: admins read every event,
maintainers and owners their projects', anyone else nothing of a project."""

from __future__ import annotations

import csv
import io
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from builds import services
from builds.models import Role
from goci.audit.context import from_cli
from goci.audit.models import AuditEvent
from tests.helpers import api_call, make_project, make_token, make_user

pytestmark = pytest.mark.django_db

PIPELINE = "steps:\n  - {name: hello, run: echo hello}\n"


@pytest.fixture
def world() -> dict[str, Any]:
    """web (owner ann, maintainer mae, viewer vic) and shop (owner oscar), with events by
    ann and by mae."""
    users = {name: make_user(name) for name in ("ann", "mae", "vic", "oscar")}
    with from_cli(user=users["ann"]):
        web: Any = make_project(users["ann"], "web")
        services.member_add(project=web, user=users["mae"], role=Role.MAINTAINER)  # type: ignore[arg-type]
    with from_cli(user=users["mae"]):
        services.member_add(project=web, user=users["vic"], role=Role.VIEWER)  # type: ignore[arg-type]
        services.build_create(project=web, pipeline=PIPELINE)
    with from_cli(user=users["oscar"]):
        make_project(users["oscar"], "shop")
    return users


def browse(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def actions(page: Any) -> list[str]:
    text = page.content.decode()
    return [part.split("</code>")[0] for part in text.split("<td><code>")[1:]]


def test_a_maintainer_reads_their_project_s_events_newest_first(world: dict[str, Any]) -> None:
    page = browse(world["mae"]).get("/audit/", {"project": "web"})
    assert page.status_code == 200
    assert actions(page) == ["build.run", "member.add", "member.add", "project.create"]


def test_without_a_project_each_reads_the_projects_they_manage(world: dict[str, Any]) -> None:
    assert "project.create" in actions(browse(world["mae"]).get("/audit/"))
    assert "shop" not in browse(world["mae"]).get("/audit/").content.decode()
    assert actions(browse(world["vic"]).get("/audit/")) == []  # a viewer manages nothing
    assert actions(browse(world["oscar"]).get("/audit/")) == ["project.create"]


def test_an_admin_reads_everything_and_a_deleted_project_s_events(world: dict[str, Any]) -> None:
    root = User.objects.create_superuser("root", "root@example.com", None)
    services.project_delete(project=services.Project.objects.get(slug="shop"))  # type: ignore[attr-defined]
    client = browse(root)
    everything = actions(client.get("/audit/"))
    assert everything.count("project.create") == 2
    assert actions(client.get("/audit/", {"project": "shop"})) == [
        "project.delete",
        "project.create",
    ]


def test_a_viewer_gets_403_naming_the_role_and_an_outsider_404(world: dict[str, Any]) -> None:
    denied = browse(world["vic"]).get("/audit/", {"project": "web"})
    assert denied.status_code == 403
    assert "This needs the maintainer role (or higher) on project &#x27;web&#x27;" in (
        denied.content.decode()
    )
    assert browse(world["oscar"]).get("/audit/", {"project": "web"}).status_code == 404
    assert browse(world["oscar"]).get("/audit/export.csv", {"project": "web"}).status_code == 404


def filters_and_answers() -> list[tuple[dict[str, str], list[str]]]:
    """Filters and what they select: the times are the events' own (written just now)."""
    vic_added = AuditEvent.objects.get(action="member.add", details__member="vic").created_at
    today = timezone.now().date()
    return [
        ({"actor": "mae"}, ["build.run", "member.add"]),
        ({"action": "member"}, ["member.add", "member.add"]),
        ({"action": "member.add", "actor": "ann"}, ["member.add"]),
        ({"action": "mem"}, []),  # a kind is a whole word before the dot
        ({"since": vic_added.isoformat()}, ["build.run", "member.add"]),
        ({"until": vic_added.isoformat()}, ["member.add", "project.create"]),  # excluded
        # A naive time is UTC.
        ({"until": vic_added.replace(tzinfo=None).isoformat()}, ["member.add", "project.create"]),
        ({"since": today.isoformat(), "actor": "ann"}, ["member.add", "project.create"]),
        ({"until": today.isoformat(), "actor": "mae"}, ["build.run", "member.add"]),  # all day
        ({"until": (today - timedelta(days=1)).isoformat()}, []),
        ({"since": (today + timedelta(days=1)).isoformat()}, []),
    ]


def test_the_page_and_the_api_filter_alike(world: dict[str, Any]) -> None:
    client = browse(world["ann"])
    token = make_token(world["ann"])
    for filters, expected in filters_and_answers():
        page = client.get("/audit/", {"project": "web", **filters})
        assert page.status_code == 200
        assert actions(page) == expected, filters
        answer = api_call("get", f"/api/audit?{urlencode({'project': 'web', **filters})}", token)
        assert answer.status_code == 200, answer.content
        assert [item["action"] for item in answer.json()["items"]] == expected, filters
        assert answer.json()["count"] == len(expected)


def test_the_api_gives_each_event_in_full(world: dict[str, Any]) -> None:
    answer = api_call("get", "/api/audit?project=web&action=build", make_token(world["mae"]))
    [item] = answer.json()["items"]
    assert item["actor"] == "mae"
    assert item["via"] == "cli"
    assert item["project"] == "web"
    assert item["object_type"] == "build"
    assert item["details"]["number"] == 1
    assert answer.json()["pages"] == 1


def test_the_api_and_the_page_go_50_a_page(world: dict[str, Any]) -> None:
    web = services.Project.objects.get(slug="web")  # type: ignore[attr-defined]
    with from_cli(user=world["ann"]):
        for _ in range(55):
            services.build_cancel(build=services.build_create(project=web, pipeline=PIPELINE)[0])
    token = make_token(world["ann"])
    first = api_call("get", "/api/audit?project=web", token).json()
    second = api_call("get", "/api/audit?project=web&page=3", token).json()
    assert (first["count"], first["pages"], len(first["items"])) == (114, 3, 50)
    assert [i["action"] for i in second["items"]][-1] == "project.create"
    client = browse(world["ann"])
    page = client.get("/audit/", {"project": "web"})
    assert len(actions(page)) == 50
    assert 'rel="next"' in page.content.decode()
    last = client.get("/audit/", {"project": "web", "page": "3"})
    assert actions(last)[-1] == "project.create"
    assert 'rel="next"' not in last.content.decode()


def test_the_csv_export_takes_the_same_filters(world: dict[str, Any]) -> None:
    response = browse(world["ann"]).get("/audit/export.csv", {"project": "web", "actor": "mae"})
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == 'attachment; filename="audit-web.csv"'
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert rows[0] == [
        "time", "actor", "action", "project", "object_type", "object_id", "via", "address",
        "user_agent", "details",
    ]  # fmt: skip
    assert [(r[1], r[2], r[3], r[6]) for r in rows[1:]] == [
        ("mae", "build.run", "web", "cli"),
        ("mae", "member.add", "web", "cli"),
    ]
    assert rows[2][9] == '{"member": "vic", "role": "viewer"}'


def test_a_csv_cell_never_starts_a_spreadsheet_formula(world: dict[str, Any]) -> None:
    client = Client(HTTP_USER_AGENT="=HYPERLINK(1)")
    client.force_login(world["ann"])
    settings = {"name": "Web", "default_branch": "main", "pipeline_path": ".goci.yml"}
    assert client.post("/projects/web/settings", settings).status_code == 302
    response = client.get("/audit/export.csv", {"project": "web", "action": "project.update"})
    [row] = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))[1:]
    assert row[8] == "'=HYPERLINK(1)"  # shown as text, never run


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("since=yesterday", "Expected a date (2026-12-01)"),
        ("until=9999-12-31", "before the year 9999 ends"),
        ("since=2026-13-01", "Expected a date"),
        ("page=100001", "less than or equal to 100000"),
        ("page=" + "9" * 5000, "Enter a whole number."),
        ("actor=a%00b", "Null characters are not allowed."),
        ("action=" + "x" * 10_000_000, "Ensure this value has at most 50 characters"),
    ],
)
def test_bad_filters_are_a_400_page_that_says_which(
    world: dict[str, Any], query: str, words: str
) -> None:
    client = browse(world["ann"])
    for path in ("/audit/", "/audit/export.csv"):
        response = client.get(f"{path}?project=web&{query}")
        assert response.status_code == 400
        assert words in response.content.decode()


def test_the_project_s_settings_page_links_its_audit_log(world: dict[str, Any]) -> None:
    page = browse(world["mae"]).get("/projects/web/settings").content.decode()
    assert 'href="/audit/?project=web">Audit log</a>' in page
