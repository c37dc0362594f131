"""Hostile input on the dashboard's pages and forms: page numbers no list reaches,
NUL characters, bytes that are no UTF-8 (a lone surrogate among them) and numbers too
big for the database. Each gets a 400 page or an error beside the field, never a 500,
on SQLite and on PostgreSQL (CI runs this module on both)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from builds import services
from builds.models import (
    ApiToken,
    Build,
    Membership,
    NotificationTarget,
    Project,
    Role,
    Schedule,
    Secret,
)
from tests.helpers import make_project, make_user
from tests.queue_helpers import submit

pytestmark = pytest.mark.django_db

PIPELINE = "steps:\n  - {name: hello, run: echo hello}\n"
WITH_INPUT = "inputs: {version: {default: latest}}\nsteps:\n  - {name: hello, run: echo hi}\n"
HTMX = {"HTTP_HX_REQUEST": "true"}
# U+DC80 (a lone surrogate) as WTF-8 bytes, which no UTF-8 decoder accepts, and a
# lone continuation byte.
SURROGATE = "%ED%B2%80"
BROKEN = "%80"
NUL = "%00"


@pytest.fixture
def ann() -> User:
    return make_user("ann")  # type: ignore[return-value]


@pytest.fixture
def client(ann: User) -> Client:
    # Every answer is looked at, a 500 too, rather than raised by the test client.
    client = Client(raise_request_exception=False)
    client.force_login(ann)
    project = make_project(ann, "web")
    services.member_add(project=project, user=make_user("dora"), role=Role.DEVELOPER)  # type: ignore[arg-type]
    submit(project, PIPELINE)  # type: ignore[arg-type]
    # What Run runs (builds/deploy_pages.py), with an input to fill.
    Project.objects.filter(slug="web").update(pipeline=WITH_INPUT)
    return client


def html(response: Any) -> str:
    return response.content.decode()


def state() -> Any:
    return (
        list(Project.objects.order_by("pk").values_list("slug", "name", "repo_url",
                                                         "default_branch", "pipeline_path")),
        list(Membership.objects.order_by("pk").values_list("user__username", "role")),
        list(Build.objects.order_by("pk").values_list("pk", "ref", "commit", "cancel_requested")),
        list(Secret.objects.order_by("pk").values_list("name", "ciphertext", "branches")),
        list(ApiToken.objects.order_by("pk").values_list("name", "expires_at")),
        list(Schedule.objects.order_by("pk").values_list("cron", "timezone", "ref", "inputs")),
        list(NotificationTarget.objects.order_by("pk").values_list("name", "url", "credentials")),
    )  # fmt: skip


# ---------------------------------------------------------------------------
# ?page=


@pytest.mark.parametrize("path", ["/", "/projects/web/"])
@pytest.mark.parametrize("page", [str(10**30), "100001", "9" * 5000, "1" + "0" * 20])
def test_a_page_no_list_reaches_is_a_400_that_says_which_pages_exist(
    client: Client, path: str, page: str
) -> None:
    for headers in ({}, HTMX):
        response = client.get(path, {"page": page}, **headers)
        assert response.status_code == 400
        text = html(response)
        assert "There is no such page: pages go from 1 to 100000." in text
        assert f'href="{path}?">Go to the first page</a>' in text


@pytest.mark.parametrize("path", ["/", "/projects/web/"])
def test_the_last_page_a_list_may_reach_is_an_empty_page(client: Client, path: str) -> None:
    response = client.get(path, {"page": "100000"})
    assert response.status_code == 200
    assert "No builds on page 100000." in html(response)
    assert 'rel="prev"' in html(response)


@pytest.mark.parametrize("path", ["/", "/projects/web/"])
@pytest.mark.parametrize("page", ["²", "١٢", "-1", "0", "1e9", " 2", "0" * 5000 + "1", ""])
def test_a_page_that_is_no_plain_number_shows_the_first_page(
    client: Client, path: str, page: str
) -> None:
    response = client.get(path, {"page": page})
    assert response.status_code == 200
    assert "Page 1" not in html(response)  # one page only: no pagination, no error
    assert len(re.findall(r'class="build-link"', html(response))) == 1


# ---------------------------------------------------------------------------
# Query parameters


@pytest.mark.parametrize("value", [NUL, f"main{NUL}", SURROGATE, BROKEN, f"{NUL}{SURROGATE}"])
@pytest.mark.parametrize("name", ["project", "status", "branch", "page"])
@pytest.mark.parametrize("path", ["/", "/projects/web/"])
def test_nul_or_broken_bytes_in_a_query_parameter_never_500(
    client: Client, path: str, name: str, value: str
) -> None:
    response = client.get(f"{path}?{name}={value}")
    assert response.status_code == 200
    if path == "/" and name in ("project", "status", "branch"):
        assert "No builds match these filters." in html(response)


@pytest.mark.parametrize("value", [NUL, f"a{NUL}", SURROGATE, BROKEN, "9" * 5000, "x" * 10**7])
@pytest.mark.parametrize("name", ["project", "actor", "action", "since", "until", "page"])
@pytest.mark.parametrize("path", ["/audit/", "/audit/export.csv"])
def test_hostile_audit_filters_are_a_400_never_a_500(
    client: Client, path: str, name: str, value: str
) -> None:
    expected = 400
    # Broken bytes arrive as U+FFFD, which is text like any other: no project is named
    # so (404), and no actor or action (an empty list).
    if value in (SURROGATE, BROKEN) and name in ("project", "actor", "action"):
        expected = 404 if name == "project" else 200
    assert client.get(f"{path}?{name}={value}").status_code == expected


def test_a_nul_in_the_branch_filter_is_an_error_beside_it(client: Client) -> None:
    page = html(client.get(f"/?branch=main{NUL}"))
    assert "Null characters are not allowed." in page


@pytest.mark.parametrize("url", ["/projects/we%00b/", f"/projects/{SURROGATE}/", "/builds/1%00/"])
def test_nul_or_broken_bytes_in_a_path_are_404(client: Client, url: str) -> None:
    assert client.get(url).status_code == 404


@pytest.mark.parametrize(
    "url",
    [
        "/builds/99999999999999999999999/",
        "/builds/99999999999999999999999/log.txt",
        "/builds/1/steps/99999999999999999999999/raw",
        "/builds/1/steps/99999999999999999999999/lines",
    ],
)
def test_a_number_too_big_for_the_database_in_a_path_is_404(client: Client, url: str) -> None:
    assert client.get(url).status_code == 404


# ---------------------------------------------------------------------------
# Form fields


def post_raw(client: Client, url: str, body: str, **headers: Any) -> Any:
    """A form as a browser would send it, bytes and all (the test client would refuse
    to encode a lone surrogate itself)."""
    return client.post(url, body, content_type="application/x-www-form-urlencoded", **headers)


FORMS = [
    ("/projects/new", {"slug": "fresh", "name": "Fresh", "repo_url": "", "default_branch": "main"}),
    ("/projects/web/run", {"pipeline": "steps:%0A  - {name: a, run: 'true'}%0A", "ref": "main",
                           "commit": "abc"}),
    ("/projects/web/settings", {"name": "Web", "repo_url": "", "default_branch": "main",
                                "pipeline_path": ".goci.yml"}),
    ("/projects/web/members", {"username": "dora", "role": "viewer"}),
    ("/projects/web/members/dora", {"role": "viewer"}),
    ("/projects/web/transfer", {"username": "dora"}),
    ("/projects/web/delete", {"confirm": "web"}),
    ("/projects/web/secrets", {"name": "DEPLOY_TOKEN", "value": "long-enough-value",
                               "events": "push", "branches": "main"}),
    ("/account/tokens", {"name": "laptop", "scopes": "read", "expires_in_days": "30"}),
    ("/projects/web/run-ref", {"ref": "main", "input_version": "v1"}),
    ("/projects/web/schedules", {"cron": "0 3 * * *", "timezone": "UTC", "ref": "main",
                                 "inputs": "LEVEL=full", "description": "nightly"}),
    ("/projects/web/notifications", {"name": "hook", "kind": "webhook", "when": "always",
                                     "url": "https://hooks.example.com/goci",
                                     "secret": "long-enough-key"}),
]  # fmt: skip
FIELDS = [(url, field) for url, fields in FORMS for field in fields]


@pytest.mark.parametrize(("url", "field"), FIELDS, ids=[f"{u} {f}" for u, f in FIELDS])
def test_a_nul_in_any_form_field_is_an_error_beside_it_and_changes_nothing(
    client: Client, url: str, field: str
) -> None:
    fields = dict(FORMS)[url]
    body = "&".join(
        f"{name}={value[:1]}{NUL}{value[1:]}" if name == field else f"{name}={value}"
        for name, value in fields.items()
    )
    before = state()
    response = post_raw(client, url, body)
    assert response.status_code == 200, html(response)[:3000]
    page = html(response)
    if field in ("role", "events", "scopes", "kind", "when") or url.endswith("/transfer"):
        assert "Select a valid choice." in page or "Role of dora: choose a role." in page
    elif field == "expires_in_days":
        assert "Enter a whole number." in page
    else:
        assert "Null characters are not allowed." in page
    assert state() == before


@pytest.mark.parametrize(("url", "field"), FIELDS, ids=[f"{u} {f}" for u, f in FIELDS])
@pytest.mark.parametrize("bad", [SURROGATE, BROKEN])
def test_broken_bytes_in_any_form_field_never_500_nor_reach_the_database(
    client: Client, url: str, field: str, bad: str
) -> None:
    fields = dict(FORMS)[url]
    body = "&".join(
        f"{name}={bad}{value}" if name == field else f"{name}={value}"
        for name, value in fields.items()
    )
    for headers in ({}, HTMX):
        response = post_raw(client, url, body, **headers)
        assert response.status_code in (200, 201, 302), html(response)[:3000]  # 201: a token
    # Whatever was stored is text any database and any page can hold.
    for row in state():
        for values in row:
            for value in values:
                if isinstance(value, str):
                    value.encode("utf-8")
                    assert "\x00" not in value


def test_an_uploaded_pipeline_with_a_nul_is_refused_and_not_stored(client: Client) -> None:
    upload = SimpleUploadedFile(".goci.yml", b"steps:\n  - {name: a, run: 'a\x00b'}\n")
    response = client.post("/projects/web/run", {"pipeline_file": upload})
    assert response.status_code == 200
    assert 'aria-invalid="true"' in html(response)
    assert Build.objects.count() == 1


def test_an_uploaded_pipeline_with_a_lone_surrogate_is_not_utf8(client: Client) -> None:
    upload = SimpleUploadedFile(".goci.yml", b"steps:\n  - {name: a, run: '\xed\xb2\x80'}\n")
    response = client.post("/projects/web/run", {"pipeline_file": upload})
    assert "The file is not UTF-8 text (byte 27)." in html(response)
    assert Build.objects.count() == 1


def test_a_username_in_a_path_with_a_nul_is_404(client: Client) -> None:
    before = state()
    assert client.post("/projects/web/members/do%00ra", {"role": "viewer"}).status_code == 404
    assert client.post("/projects/web/members/do%00ra/remove").status_code == 404
    assert client.post(f"/projects/web/members/{SURROGATE}/remove").status_code == 404
    assert state() == before


@pytest.mark.parametrize(("url", "field"), FIELDS, ids=[f"{u} {f}" for u, f in FIELDS])
def test_ten_megabytes_in_any_form_field_is_a_400_that_changes_nothing(
    client: Client, url: str, field: str
) -> None:
    fields = dict(FORMS)[url]
    body = "&".join(
        f"{name}={'x' * 10_000_000}" if name == field else f"{name}={value}"
        for name, value in fields.items()
    )
    before = state()
    response = post_raw(client, url, body)
    # Django refuses a form body over DATA_UPLOAD_MAX_MEMORY_SIZE before any view reads it.
    assert response.status_code == 400
    assert "a form may hold at most 2.5 MB" in html(response)
    assert state() == before


@pytest.mark.parametrize("days", [str(10**30), "9" * 5000, "-1", "0"])
def test_a_token_expiry_no_calendar_holds_is_an_error_beside_it(client: Client, days: str) -> None:
    before = state()
    response = client.post(
        "/account/tokens", {"name": "ci", "scopes": "read", "expires_in_days": days}
    )
    assert response.status_code == 200
    assert 'class="errorlist' in html(response)
    assert state() == before
