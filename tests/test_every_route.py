"""Every URL pattern, API route and WebSocket route of the server, for every role.

The pages' table (tests/test_pages_roles.py) and the API's (tests/test_api_roles.py)
give each route's answer per role and are checked there. This module walks the whole
URL resolver, so that a route added anywhere (a page, an API call, an admin view, a
WebSocket) fails here until its rule is written down: either in one of those tables,
or below (the admin, the WebSocket, and the few routes that need no sign-in).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from channels.auth import AuthMiddlewareStack
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

from builds import services
from builds.api import api
from builds.models import Role
from builds.routing import websocket_urlpatterns
from tests.helpers import make_project, make_user
from tests.test_api_roles import ROUTES as API_ROUTES
from tests.test_pages_roles import CASES as PAGE_CASES

ROLES = ("viewer", "developer", "maintainer", "owner", "outsider")

# Routes anyone may open, signed in or not, with what they answer to a stranger.
PUBLIC = {
    "login/": 200,
    "logout/": 405,  # POST only: a link or a prefetch cannot sign anyone out
    "favicon.ico": 302,
    "api/openapi.json": 200,
    "api/docs": 200,
    "api/": 404,  # the API's root and its catch-all answer JSON 404s
    "^api/": 404,
    # The status badge: public, or with the project's badge token; else one 404 for all.
    "badge/<str:slug>.svg": 404,
    # A forge's webhook deliveries: signed, not signed in (tests/test_webhooks.py). GET: 405.
    "hooks/<str:slug>": 405,
    # Where a forge's sign-in ends when cancelled or failed (goci/oauth.py). The forges'
    # own login and callback routes exist only when configured: tests/test_oauth.py.
    "accounts/social/login/cancelled/": 200,
    "accounts/social/login/error/": 401,
    # Probes (tests/test_health.py) and Prometheus's metrics, which a stranger without
    # the token or an allowed address cannot tell from an unknown URL (test_metrics.py).
    "healthz": 200,
    "readyz": 200,
    "metrics": 404,
}


def _walk(patterns: list[Any], prefix: str = "") -> Iterator[tuple[str, URLPattern]]:
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            yield from _walk(pattern.url_patterns, prefix + str(pattern.pattern))
        else:
            yield prefix + str(pattern.pattern), pattern


def _admin_url(route: str) -> str:
    """A concrete URL for an admin pattern (its parameters filled with dummies)."""
    route = route.removeprefix("^")
    route = re.sub(r"<path:\w+>|<\w+>|\(\?P<\w+>[^)]*\)", "1", route)
    route = route.replace("^", "").replace("$", "").replace("\\", "")
    return "/" + route


def _api_routes() -> set[tuple[str, str]]:
    paths = api.get_openapi_schema()["paths"]
    return {(method, path) for path, methods in paths.items() for method in methods}


def test_every_route_has_a_written_rule() -> None:
    """A page is in the pages' table, an API route in the API's, and anything else is
    the admin's or public."""
    page_names = {case.name for case in PAGE_CASES}
    uncovered = []
    for route, pattern in _walk(get_resolver().url_patterns):
        if route.startswith("admin/") or route in PUBLIC:
            continue
        if re.fullmatch(r"accounts/(github|gitlab|gitea)/login/(callback/)?", route):
            continue  # a configured forge's sign-in: tested per server in tests/test_oauth.py
        if route.startswith("api/"):
            continue  # checked against the OpenAPI schema below
        if pattern.name not in page_names:
            uncovered.append(route)
    assert uncovered == [], f"routes with no rule in tests/test_pages_roles.py: {uncovered}"
    api_rules = {(route.method, route.path) for route in API_ROUTES}
    assert _api_routes() - api_rules == set(), "API routes missing from test_api_roles.py"
    assert [str(p.pattern) for p in websocket_urlpatterns] == ["ws/builds/<int:build_id>/"]


@pytest.fixture
def people(db: None) -> dict[str, Any]:
    owner = make_user("owner")
    project = make_project(owner, "web")
    users: dict[str, Any] = {"owner": owner, "outsider": make_user("outsider")}
    for role in ("viewer", "developer", "maintainer"):
        users[role] = make_user(role)
        services.member_add(project=project, user=users[role], role=role)  # type: ignore[arg-type]
    build, _ = services.build_create(project=project, pipeline="steps: [{run: 'true'}]")  # type: ignore[arg-type]
    users["staff"] = User.objects.create_user("staff", is_staff=True)
    users["root"] = User.objects.create_superuser("root")
    return {"users": users, "build": build}


ADMIN_ROUTES = sorted(
    {
        _admin_url(route)
        for route, _ in _walk(get_resolver().url_patterns)
        if route.startswith("admin/") and "r/" not in route  # not the view-on-site jump
    }
    # The admin's own sign-in and sign-out are open by design.
    - {"/admin/login/", "/admin/logout/"}
)


@pytest.mark.parametrize("url", ADMIN_ROUTES)
def test_every_admin_route_is_for_superusers_only(people: dict[str, Any], url: str) -> None:
    """Project roles give nothing in the admin, and staff without superuser neither:
    every admin URL sends them to the admin's sign-in."""
    for name in (*ROLES, "staff"):
        client = Client()
        client.force_login(people["users"][name])
        for method in ("get", "post"):
            response = getattr(client, method)(url)
            assert response.status_code == 302, (name, method, url)
            assert response["Location"].startswith("/admin/login/"), (name, method, url)
    root = Client()
    root.force_login(people["users"]["root"])
    answer = root.get(url)  # a dummy id may be a 404 or a redirect, never the sign-in
    assert not answer.get("Location", "").startswith("/admin/login/"), url


@pytest.mark.parametrize("route", sorted(PUBLIC))
def test_public_routes_answer_a_stranger(db: None, route: str) -> None:
    url = "/" + route.removeprefix("^")
    assert Client().get(url).status_code == PUBLIC[route]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("role", [*ROLES, "anonymous"])
async def test_the_live_log_socket_opens_for_members_only(role: str) -> None:
    from asgiref.sync import sync_to_async

    people_now = await sync_to_async(_people_for_socket)()
    build_id = people_now["build"]
    headers = [(b"origin", b"http://localhost"), (b"host", b"localhost")]
    application: Any = AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
    if role != "anonymous":
        session = await sync_to_async(_session_for)(people_now["users"][role])
        headers.append((b"cookie", f"sessionid={session}".encode()))
    socket = WebsocketCommunicator(application, f"/ws/builds/{build_id}/", headers=headers)
    connected, code = await socket.connect(timeout=5)
    if role in ("outsider", "anonymous"):
        assert not connected
        assert code == 4404
    else:
        assert connected, code
        await socket.disconnect()


def _people_for_socket() -> dict[str, Any]:
    owner = make_user("owner")
    project = make_project(owner, "web")
    users: dict[str, Any] = {"owner": owner, "outsider": make_user("outsider")}
    for role in (Role.VIEWER, Role.DEVELOPER, Role.MAINTAINER):
        users[str(role)] = make_user(str(role))
        services.member_add(project=project, user=users[str(role)], role=role)  # type: ignore[arg-type]
    build, _ = services.build_create(project=project, pipeline="steps: [{run: 'true'}]")  # type: ignore[arg-type]
    return {"users": users, "build": build.pk}


def _session_for(user: Any) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


# The runner API (/api/runner/v1/, runners/api.py) is for remote runners: every route
# but `register` needs a runner token, and refuses a user's token (personal or JWT) and
# no token alike with 401. `register` takes no header: its body's registration token is
# the credential (tests/test_runner_api.py, tests/test_registration_tokens.py).
RUNNER_PUBLIC = {("post", "/api/runner/v1/register")}


def _runner_routes() -> list[tuple[str, str]]:
    from runners.api import runner_api

    paths = runner_api.get_openapi_schema()["paths"]
    return sorted((method, path) for path, methods in paths.items() for method in methods)


@pytest.mark.parametrize(("method", "path"), _runner_routes())
def test_every_runner_route_refuses_users_and_strangers(
    people: dict[str, Any], method: str, path: str
) -> None:
    from builds import access_tokens
    from runners.models import Runner
    from tests.helpers import make_token

    url = path.replace("{job_id}", "1").replace("{attempt}", "1")
    root = people["users"]["root"]
    callers = {
        "none": {},
        "personal token": {"HTTP_AUTHORIZATION": f"Bearer {make_token(root)}"},
        "jwt": {
            "HTTP_AUTHORIZATION": "Bearer "
            + access_tokens.issue(user=root, scopes=["read", "run", "admin"])
        },
        "runner-looking": {"HTTP_AUTHORIZATION": "Bearer goci_runner_not-a-real-one"},
    }
    for caller, headers in callers.items():
        response = Client().generic(
            method.upper(), url, b"{}", content_type="application/json", **headers
        )
        if (method, path) in RUNNER_PUBLIC:
            assert response.status_code == 422, (caller, response.content)  # no token in it
        else:
            assert response.status_code == 401, (caller, path, response.content)
        assert response["Content-Type"] == "application/json"
    assert not Runner.objects.exists()
