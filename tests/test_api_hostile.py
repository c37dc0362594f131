"""What an attacker or a broken client sends the API: each a clear 4xx in JSON that
names the field to fix, never a 500, on SQLite and PostgreSQL alike; and the answers
of a bug (500) and of a database that cannot be reached (503), in JSON too."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from builds import api as api_module
from builds import services
from builds.models import (
    ApiToken,
    Build,
    Membership,
    NotificationTarget,
    Project,
    Schedule,
    Secret,
)
from tests.helpers import REPO, api_call, make_project, make_token, make_user

PIPELINE = "steps:\n  - name: Build\n    run: make\n"
SURROGATE = "lone surrogate (invalid Unicode); send UTF-8 text"
NUL = "NUL character"


@pytest.fixture
def token(db: None) -> str:
    owner = make_user("olivia")
    make_project(owner, "shop")
    make_user("dev")
    return make_token(owner)


def state() -> dict[str, Any]:
    return {
        "secrets": list(Secret.objects.values()),
        "tokens": list(ApiToken.objects.values("name", "scopes", "expires_at", "revoked_at")),
        "projects": list(Project.objects.values()),
        "members": sorted(Membership.objects.values_list("user__username", "role")),
        "builds": Build.objects.count(),
        "notifications": list(NotificationTarget.objects.values()),
        "schedules": list(Schedule.objects.values()),
    }


def assert_invalid(response: Any, location: str, path: str, words: str) -> None:
    assert response.status_code == 422, response.content
    body = response.json()
    assert [(e["location"], e["path"]) for e in body["errors"]] == [(location, path)]
    assert words in body["errors"][0]["message"]
    assert f"{location} {path}: " in body["detail"]


# ---------------------------------------------------------------------------
# Text that no database can store, or PostgreSQL cannot


BODIES = {
    "build": ("post", "/api/builds", {"project": "shop", "pipeline": PIPELINE}),
    "project": ("post", "/api/projects", {"slug": "new"}),
    "settings": ("patch", "/api/projects/shop", {}),
    "member": ("post", "/api/projects/shop/members", {"username": "dev"}),
    "token": ("post", "/api/tokens", {"name": "ci"}),
    "exchange": ("post", "/api/auth/token", {"username": "dev", "password": "guess"}),
    "secret": ("put", "/api/projects/shop/secrets/DEPLOY_TOKEN", {"value": "long enough"}),
    "notification": (
        "post",
        "/api/projects/shop/notifications",
        {"name": "ops", "kind": "email", "addresses": ["ops@example.com"]},
    ),
    "schedule": ("post", "/api/projects/shop/schedules", {"cron": "0 3 * * *"}),
}
TEXT_FIELDS = [
    ("build", "project"),
    ("build", "pipeline"),
    ("build", "ref"),
    ("build", "commit"),
    ("build", "message"),
    ("project", "slug"),
    ("project", "name"),
    ("project", "repo_url"),
    ("project", "default_branch"),
    ("settings", "name"),
    ("settings", "repo_url"),
    ("settings", "default_branch"),
    ("settings", "pipeline_path"),
    ("member", "username"),
    ("token", "name"),
    ("exchange", "token"),
    ("exchange", "username"),
    ("exchange", "password"),
    ("secret", "value"),
    ("notification", "name"),
    ("notification", "url"),
    ("schedule", "cron"),
    ("schedule", "timezone"),
    ("schedule", "ref"),
    ("schedule", "description"),
]


@pytest.mark.parametrize(("bad", "words"), [("\udc80", SURROGATE), ("\x00", NUL)])
@pytest.mark.parametrize(("route", "field"), TEXT_FIELDS)
def test_a_text_field_that_cannot_be_stored_is_422_naming_it(
    token: str, route: str, field: str, bad: str, words: str
) -> None:
    method, url, body = BODIES[route]
    before = state()

    # json.dumps writes the lone surrogate as the escape "\udc80", as a client would.
    response = api_call(method, url, token, {**body, field: f"a{bad}b"})

    assert_invalid(response, "body", field, words)
    assert state() == before


@pytest.mark.parametrize(("bad", "words"), [("\udc80", SURROGATE), ("\x00", NUL)])
@pytest.mark.parametrize("where", ["env.DEPLOY", "key"])
def test_env_names_and_values_that_cannot_be_stored_are_422(
    token: str, bad: str, words: str, where: str
) -> None:
    env = {"DEPLOY": f"a{bad}"} if where == "env.DEPLOY" else {f"A{bad}": "x"}

    response = api_call("post", "/api/builds", token, {**BODIES["build"][2], "env": env})

    assert response.status_code == 422
    [error] = response.json()["errors"]
    assert error["path"].startswith("env.")
    assert words in error["message"]
    assert Build.objects.count() == 0


@pytest.mark.parametrize(
    ("url", "location", "path"),
    [
        ("/api/builds?ref=a%00b", "query", "ref"),
        ("/api/builds?project=sh%00op", "query", "project"),
        ("/api/builds/{build}/logs?step=Bu%00ild", "query", "step"),
        ("/api/projects/sh%00op", "path", "slug"),
        ("/api/projects/shop/members", "path", None),
        ("/api/projects/shop/members/d%00ev", "path", "username"),
        ("/api/audit?project=sh%00op", "query", "project"),
        ("/api/audit?actor=a%00b", "query", "actor"),
        ("/api/audit?action=a%00b", "query", "action"),
        ("/api/audit?since=2026-12-01%00", "query", "since"),
    ],
)
def test_a_nul_in_a_query_or_path_parameter_is_422_naming_it(
    token: str, url: str, location: str, path: str | None
) -> None:
    build, _ = services.build_create(project=Project.objects.get(), pipeline=PIPELINE)
    if path is None:  # the slug in a longer path
        url, path = "/api/projects/sh%00op/members", "slug"

    response = api_call(
        "get" if "members/" not in url else "delete", url.format(build=build.pk), token
    )

    assert_invalid(response, location, path, NUL)


def test_a_nul_in_the_idempotency_key_is_422(token: str) -> None:
    response = api_call(
        "post", "/api/builds", token, BODIES["build"][2], HTTP_IDEMPOTENCY_KEY="a\x00b"
    )

    assert_invalid(response, "header", "Idempotency-Key", NUL)
    assert Build.objects.count() == 0


def test_a_query_that_is_no_utf_8_is_read_as_replacement_characters(token: str) -> None:
    # Django decodes the query string with errors="replace": the surrogate's bytes
    # arrive as U+FFFD, which is stored and found like any text.
    response = api_call("get", "/api/builds?ref=%ED%B2%80", token)

    assert response.status_code == 200
    assert response.json()["count"] == 0


# ---------------------------------------------------------------------------
# Numbers


@pytest.mark.parametrize(
    ("page", "words"),
    [
        (str(api_module.MAX_PAGE + 1), f"less than or equal to {api_module.MAX_PAGE}"),
        (str(10**30), f"less than or equal to {api_module.MAX_PAGE}"),
        ("9" * 5000, "Unable to parse input string as an integer, exceeded maximum size"),
    ],
)
def test_a_page_too_big_for_any_database_is_422_naming_it(
    token: str, page: str, words: str
) -> None:
    response = api_call("get", f"/api/builds?page={page}", token)

    assert_invalid(response, "query", "page", words)


@pytest.mark.parametrize(
    ("query", "path", "words"),
    [
        (f"page={api_module.MAX_PAGE + 1}", "page", "less than or equal to"),
        ("page=" + "9" * 5000, "page", "exceeded maximum size"),
        ("since=yesterday", "since", "expected a date (2026-12-01)"),
        ("until=9999-12-31", "until", "before the year 9999 ends"),
        ("until=" + "9" * 5000, "until", "expected a date"),
        ("since=%ED%B2%80", "since", "expected a date"),
        ("actor=" + "x" * 10_000_000, "actor", "at most 150 characters"),
    ],
)
def test_audit_filters_no_database_takes_are_422_naming_them(
    token: str, query: str, path: str, words: str
) -> None:
    assert_invalid(api_call("get", f"/api/audit?{query}", token), "query", path, words)


def test_the_last_page_allowed_is_just_empty(token: str) -> None:
    response = api_call("get", f"/api/builds?page={api_module.MAX_PAGE}", token)

    assert response.status_code == 200
    assert response.json() == {"items": [], "page": api_module.MAX_PAGE, "pages": 1, "count": 0}


def test_a_line_number_too_big_is_422_naming_it(token: str) -> None:
    build, _ = services.build_create(project=Project.objects.get(), pipeline=PIPELINE)

    response = api_call("get", f"/api/builds/{build.pk}/logs?step=Build&after={10**30}", token)

    assert_invalid(response, "query", "after", "less than or equal to")


@pytest.mark.parametrize(
    "project", ["true", "false", "1e400", "-1e400", "1.5", "null", "[1]", '{"id": 1}']
)
def test_a_project_that_is_neither_a_slug_nor_an_id_is_422(token: str, project: str) -> None:
    response = api_call(
        "post", "/api/builds", token, f'{{"project": {project}, "pipeline": "steps: []"}}'
    )

    assert_invalid(response, "body", "project", "slug (a string) or id (a whole number)")
    assert Build.objects.count() == 0


@pytest.mark.parametrize("project", [str(10**400), str(2**63), f'"{10**30}"', "-1", "0"])
def test_an_id_beyond_any_project_is_404(token: str, project: str) -> None:
    response = api_call(
        "post", "/api/builds", token, f'{{"project": {project}, "pipeline": "{PIPELINE!r}"}}'
    )

    assert response.status_code == 404
    assert response.json()["detail"].startswith("project ")
    assert Build.objects.count() == 0


def test_a_number_too_long_to_read_is_422(token: str) -> None:
    response = api_call("post", "/api/builds", token, '{"project": ' + "9" * 5000 + "}")

    assert response.status_code == 422
    assert "not valid JSON" in response.json()["detail"]


@pytest.mark.parametrize(
    "url",
    [
        "/api/builds/{id}",
        "/api/builds/{id}/logs",
        "/api/builds/{id}/cancel",
        "/api/builds/{id}/rerun",
    ],
)
def test_a_build_id_beyond_any_build_is_404(token: str, url: str) -> None:
    build_id = "9" * 30
    method = "post" if url.endswith(("cancel", "rerun")) else "get"

    response = api_call(method, url.format(id=build_id), token)

    assert response.status_code == 404
    assert response.json() == {"detail": f"build {build_id} not found"}


# ---------------------------------------------------------------------------
# Shapes and sizes


@pytest.mark.parametrize(
    "body",
    [
        "[" * 100_000,
        '{"a": ' * 100_000,
        '{"project": "shop", "env": ' + "[" * 100_000 + "]" * 100_000 + "}",
    ],
)
def test_deeply_nested_json_is_422_saying_so(token: str, body: str) -> None:
    response = api_call("post", "/api/builds", token, body)

    assert response.status_code == 422
    assert "nested too deeply" in response.json()["detail"]
    assert response.json()["errors"][0]["location"] == "body"


def test_json_nested_within_the_limit_is_an_ordinary_422(token: str) -> None:
    env = "[" * 500 + "]" * 500
    body = f'{{"project": "shop", "pipeline": "steps: []", "env": {{"A": {env}}}}}'

    response = api_call("post", "/api/builds", token, body)

    assert_invalid(response, "body", "env.A", "valid string")


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("post", "/api/projects"),
        ("post", "/api/builds"),
        ("patch", "/api/projects/shop"),
        ("post", "/api/projects/shop/members"),
        ("patch", "/api/projects/shop/members/olivia"),
        ("post", "/api/tokens"),
        ("post", "/api/auth/token"),
        ("post", "/api/projects/shop/notifications"),
        ("post", "/api/projects/shop/schedules"),
        ("patch", "/api/projects/shop/schedules/1"),
    ],
)
def test_ten_megabytes_to_any_route_with_a_body_is_413(token: str, method: str, url: str) -> None:
    before = state()

    response = api_call(method, url, token, {"name": "x" * 10_000_000})

    assert response.status_code == 413
    assert "at most" in response.json()["detail"]
    assert state() == before


# ---------------------------------------------------------------------------
# A bug, and a database that is down


def test_a_bug_is_a_500_in_json_without_the_traceback_which_is_logged(
    token: str, caplog: pytest.LogCaptureFixture
) -> None:
    build, _ = services.build_create(project=Project.objects.get(), pipeline=PIPELINE)
    # A row no version of Goci writes: the answer cannot be built from it.
    Build.objects.filter(pk=build.pk).update(env=["not", "a", "mapping"])

    with caplog.at_level(logging.ERROR, logger="django.request"):
        response = api_call("get", f"/api/builds/{build.pk}", token)

    assert response.status_code == 500
    assert response["Content-Type"] == "application/json"
    assert response.json() == {
        "detail": "internal error: the server failed; it was logged for the operator"
    }
    [record] = [r for r in caplog.records if r.name == "django.request"]
    assert record.exc_info is not None
    assert f"/api/builds/{build.pk}" in record.getMessage()


UNREACHABLE = """
import json, django
django.setup()
from django.test.utils import setup_test_environment
setup_test_environment()
from django.test import Client
answers = [
    Client().get("/api/projects", HTTP_AUTHORIZATION="Bearer goci_anything"),
    Client().post("/api/builds", '{"project": "shop", "pipeline": ""}',
                  content_type="application/json", HTTP_AUTHORIZATION="Bearer goci_x"),
]
print(json.dumps([
    [r.status_code, r["Content-Type"], r.get("Retry-After"), r.content.decode()] for r in answers
]))
"""


@pytest.mark.parametrize("database", ["postgresql", "sqlite"])
def test_a_database_that_cannot_be_reached_is_503_in_json_with_retry_after(
    tmp_path: Path, database: str
) -> None:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "goci.settings",
        "GOCI_DATA_DIR": str(tmp_path),
        "PYTHONPATH": str(REPO),
    }
    env.pop("DATABASE_URL", None)
    if database == "postgresql":
        # Nothing listens on port 1: the connection is refused.
        env["DATABASE_URL"] = "postgres://goci:secret@127.0.0.1:1/goci"
    else:
        (tmp_path / "goci.sqlite3").mkdir()  # a file SQLite cannot open

    run = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(UNREACHABLE)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert run.returncode == 0, run.stderr
    for status, content_type, retry_after, body in json.loads(run.stdout.splitlines()[-1]):
        assert (status, content_type, retry_after) == (503, "application/json", "5")
        assert json.loads(body) == {
            "detail": "the database is unavailable; try again in a few seconds"
        }
        assert "secret" not in body


# ---------------------------------------------------------------------------
# Secrets and tokens: names in the path, a value of 10 MB, numbers no one means


DEPLOY_URL = "/api/projects/shop/secrets/DEPLOY"


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        ("put", "/api/projects/shop/secrets/DE%00PLOY", {"value": "long enough"}),
        ("delete", "/api/projects/shop/secrets/DE%00PLOY", None),
        ("put", "/api/projects/shop/secrets/DE%ED%B2%80PLOY", {"value": "long enough"}),
        ("put", "/api/projects/shop/secrets/" + "A" * 10_000, {"value": "long enough"}),
        ("put", "/api/projects/shop/secrets/DEPLOY", {"value": "x" * 10_000_000}),
        ("put", "/api/projects/shop/secrets/DEPLOY", {"value": "abc"}),
        ("put", "/api/projects/shop/secrets/DEPLOY", {"value": "long enough", "events": ["a\x00"]}),
        (
            "put",
            "/api/projects/shop/secrets/DEPLOY",
            {"value": "long enough", "branches": ["\udc80"]},
        ),
        ("post", "/api/tokens", {"name": "ci", "expires_in_days": 10**30}),
        ("post", "/api/tokens", {"name": "ci", "expires_in_days": -1}),
        ("post", "/api/tokens", {"name": "ci", "scopes": ["read", "a\x00"]}),
        ("delete", "/api/tokens/" + "9" * 5000, None),
    ],
)
def test_hostile_secrets_and_tokens_are_4xx_in_json_and_change_nothing(
    token: str, method: str, url: str, body: dict[str, Any] | None
) -> None:
    before = state()

    response = api_call(method, url, token, body)

    assert 400 <= response.status_code < 500, response.content
    assert response["Content-Type"].startswith("application/json")
    assert response.json()["detail"]
    assert state() == before
    assert "long enough" not in response.content.decode()  # never a value echoed
