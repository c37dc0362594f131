"""Personal API tokens with scopes and an expiry (the API and `goci token`), and the
short-lived JWTs that POST /api/auth/token exchanges for one, or for a password."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, get_args

import jwt
import pytest
from axes.models import AccessAttempt
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone

from builds import access_tokens, services
from builds.api import ScopeName
from builds.models import TOKEN_SCOPES, ApiToken
from goci.audit.models import AuditEvent
from tests.helpers import api_call, make_project, make_user
from tests.test_cli_users import goci_cli

pytestmark = pytest.mark.django_db

PIPELINE = "steps:\n  - name: Build\n    run: make\n"
PASSWORD = "correct horse battery staple"  # noqa: S105  (the test user's)


@pytest.fixture
def ann() -> Any:
    user = make_user("ann")
    user.set_password(PASSWORD)  # type: ignore[attr-defined]
    user.save()  # type: ignore[attr-defined]
    make_project(user, "shop")
    return user


def token_of(user: Any, scopes: list[str] | None = None, **fields: Any) -> tuple[ApiToken, str]:
    return services.token_create(user=user, name="t", scopes=scopes, **fields)


def exchange(body: dict[str, str]) -> Any:
    return Client().post("/api/auth/token", body, content_type="application/json")


# ---------------------------------------------------------------------------
# Personal tokens


def test_the_api_takes_exactly_the_scopes_the_model_knows() -> None:
    assert get_args(ScopeName) == TOKEN_SCOPES


def test_a_new_token_reads_and_runs_but_cannot_manage(ann: Any) -> None:
    _, secret = token_of(ann)

    assert api_call("get", "/api/projects/shop", secret).status_code == 200
    build = {"project": "shop", "pipeline": PIPELINE}
    assert api_call("post", "/api/builds", secret, build).status_code == 201
    response = api_call("patch", "/api/projects/shop", secret, {"name": "Shop"})

    assert response.status_code == 403
    assert response.json() == {"detail": "this token lacks the 'admin' scope; it has: read, run"}


@pytest.mark.parametrize(
    ("scopes", "method", "url", "needed"),
    [
        (["run"], "get", "/api/projects", "read"),
        (["read"], "post", "/api/builds", "run"),
        (["read", "run"], "post", "/api/projects", "admin"),
        (["read", "run"], "put", "/api/projects/shop/secrets/API_KEY", "admin"),
        (["read", "run"], "post", "/api/tokens", "admin"),
    ],
)
def test_a_token_without_the_scope_gets_403_naming_it(
    ann: Any, scopes: list[str], method: str, url: str, needed: str
) -> None:
    _, secret = token_of(ann, scopes)

    response = api_call(method, url, secret, {"name": "x"})

    assert response.status_code == 403
    assert f"lacks the {needed!r} scope" in response.json()["detail"]


def test_tokens_are_created_shown_once_listed_without_secret_and_revoked(ann: Any) -> None:
    _, admin = token_of(ann, ["read", "run", "admin"])

    created = api_call(
        "post", "/api/tokens", admin, {"name": "ci", "scopes": ["read"], "expires_in_days": 7}
    )

    assert created.status_code == 201, created.content
    body = created.json()
    assert body["token"].startswith("goci_")
    assert body["scopes"] == ["read"]
    assert body["expires_at"] is not None
    listed = api_call("get", "/api/tokens", admin).json()
    assert [t["name"] for t in listed] == ["ci", "t"]
    assert all("token" not in t and "digest" not in t for t in listed)
    assert body["token"] not in str(listed)
    assert api_call("get", "/api/projects", body["token"]).status_code == 200

    assert api_call("delete", f"/api/tokens/{body['id']}", admin).status_code == 204

    assert api_call("get", "/api/projects", body["token"]).status_code == 401
    assert [t["name"] for t in api_call("get", "/api/tokens", admin).json()] == ["t"]
    revoke = AuditEvent.objects.get(action="token.revoke")
    assert (revoke.actor, revoke.details, revoke.via) == (ann, {"name": "ci"}, "api")


def test_another_users_token_is_404_to_revoke(ann: Any) -> None:
    bob = make_user("bob")
    bobs, bob_secret = token_of(bob)
    _, admin = token_of(ann, ["read", "run", "admin"])

    response = api_call("delete", f"/api/tokens/{bobs.pk}", admin)

    assert response.status_code == 404
    assert response.json() == {"detail": f"token {bobs.pk} not found"}
    assert services.token_user(bob_secret) == bob


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"name": "x", "scopes": ["root"]}, "scopes.0"),
        ({"name": "x", "scopes": []}, "scopes"),
        ({"name": "x", "expires_in_days": 0}, "expires_in_days"),
        ({"name": ""}, "name"),
    ],
)
def test_a_bad_token_request_is_422_naming_the_field(
    ann: Any, body: dict[str, Any], path: str
) -> None:
    _, admin = token_of(ann, ["read", "run", "admin"])

    response = api_call("post", "/api/tokens", admin, body)

    assert response.status_code == 422
    assert [e["path"] for e in response.json()["errors"]] == [path]


def test_an_expired_or_revoked_token_is_refused(ann: Any) -> None:
    expired, expired_secret = token_of(ann, expires_in_days=1)
    ApiToken.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(1))
    revoked, revoked_secret = token_of(ann)
    services.token_revoke(token=revoked)

    assert services.token_user(expired_secret) is None
    assert services.token_user(revoked_secret) is None
    assert api_call("get", "/api/projects", expired_secret).status_code == 401


def test_the_command_line_creates_lists_and_revokes_tokens(
    ann: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, err = goci_cli(
        capsys, monkeypatch, "token", "create", "--user", "ann", "--name", "deploy",
        "--scopes", "read", "--expires-in-days", "30",
    )  # fmt: skip
    assert code == 0, err
    secret = out.strip()
    token = ApiToken.objects.get(name="deploy")
    assert (token.scopes, token.expires_at is not None) == (["read"], True)
    assert "scopes read" in err

    code, out, err = goci_cli(capsys, monkeypatch, "token", "list", "--user", "ann")
    assert code == 0, err
    assert "deploy" in out
    assert "read" in out
    assert secret not in out

    code, out, err = goci_cli(
        capsys, monkeypatch, "token", "revoke", "--user", "ann", str(token.pk)
    )
    assert code == 0, err
    assert services.token_user(secret) is None
    assert AuditEvent.objects.filter(action="token.revoke", via="cli").count() == 1

    code, _, err = goci_cli(capsys, monkeypatch, "token", "create", "--user", "ann",
                            "--scopes", "read,sudo")  # fmt: skip
    assert code == 2
    assert "unknown scope 'sudo'" in err


def test_the_command_line_default_is_read_and_run(
    ann: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = goci_cli(capsys, monkeypatch, "token", "create", "--user", "ann")

    assert code == 0, err
    assert ApiToken.objects.get(name="cli").scopes == ["read", "run"]


def test_revoking_another_users_token_on_the_command_line_is_refused(
    ann: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bobs, bob_secret = token_of(make_user("bob"))

    code, _, err = goci_cli(capsys, monkeypatch, "token", "revoke", "--user", "ann", str(bobs.pk))

    assert code == 2
    assert f"ann has no token {bobs.pk}" in err
    assert services.token_user(bob_secret) is not None


# ---------------------------------------------------------------------------
# JWT access tokens


def test_a_jwt_from_a_token_works_until_the_token_is_revoked(ann: Any) -> None:
    token, secret = token_of(ann)
    _, admin = token_of(ann, ["read", "run", "admin"])

    response = exchange({"token": secret})

    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["expires_in"], body["scopes"]) == (900, ["read", "run"])
    access = body["access"]
    claims = jwt.decode(access, options={"verify_signature": False})
    assert (claims["sub"], claims["tid"], claims["scopes"]) == (
        str(ann.pk),
        token.pk,
        ["read", "run"],
    )
    assert claims["exp"] - claims["iat"] == 900
    assert api_call("get", "/api/projects/shop", access).status_code == 200

    assert api_call("delete", f"/api/tokens/{token.pk}", admin).status_code == 204

    assert api_call("get", "/api/projects/shop", access).status_code == 401


def test_a_jwt_carries_its_tokens_scopes(ann: Any) -> None:
    _, secret = token_of(ann, ["read"])
    access = exchange({"token": secret}).json()["access"]

    assert api_call("get", "/api/builds", access).status_code == 200
    response = api_call("post", "/api/builds", access, {"project": "shop", "pipeline": PIPELINE})

    assert response.status_code == 403
    assert "lacks the 'run' scope" in response.json()["detail"]


def test_a_jwt_from_a_password_has_every_scope_and_no_token_id(ann: Any) -> None:
    response = exchange({"username": "ann", "password": PASSWORD})

    assert response.status_code == 200, response.content
    access = response.json()["access"]
    claims = jwt.decode(access, options={"verify_signature": False})
    assert "tid" not in claims
    assert claims["scopes"] == ["read", "run", "admin"]
    assert api_call("patch", "/api/projects/shop", access, {"name": "Shop"}).status_code == 200


def test_an_expired_jwt_is_401(ann: Any, settings: Any) -> None:
    _, secret = token_of(ann)
    settings.GOCI_JWT_TTL = -1
    access = exchange({"token": secret}).json()["access"]

    response = api_call("get", "/api/projects", access)

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="goci"'


def test_a_tampered_jwt_is_401(ann: Any) -> None:
    _, secret = token_of(ann, ["read"])
    access = exchange({"token": secret}).json()["access"]
    claims = jwt.decode(access, options={"verify_signature": False})
    forged = jwt.encode(
        {**claims, "scopes": ["read", "run", "admin"]},
        "a guessed key, long enough for HS256",
        algorithm="HS256",
    )
    header, _, signature = access.rpartition(".")
    flipped = header + "." + ("A" if signature[0] != "A" else "B") + signature[1:]
    unsigned = jwt.encode({**claims}, None, algorithm="none")

    for bad in (forged, flipped, unsigned, access[:-3]):
        assert api_call("get", "/api/projects", bad).status_code == 401


def test_a_jwt_of_a_deactivated_user_is_401(ann: Any) -> None:
    _, secret = token_of(ann)
    from_token = exchange({"token": secret}).json()["access"]
    from_password = exchange({"username": "ann", "password": PASSWORD}).json()["access"]
    get_user_model().objects.filter(pk=ann.pk).update(is_active=False)

    assert api_call("get", "/api/projects", from_token).status_code == 401
    assert api_call("get", "/api/projects", from_password).status_code == 401
    assert exchange({"token": secret}).status_code == 401


def test_a_jwt_is_checked_in_one_query(ann: Any, django_assert_num_queries: Any) -> None:
    _, secret = token_of(ann)
    access = exchange({"token": secret}).json()["access"]

    with django_assert_num_queries(1):
        assert access_tokens.check(access) is not None


def test_a_wrong_password_is_401_and_counted_by_the_sign_in_throttle(
    ann: Any, settings: Any
) -> None:
    settings.AXES_FAILURE_LIMIT = 2

    assert exchange({"username": "ann", "password": "wrong"}).status_code == 401
    assert AccessAttempt.objects.filter(username="ann").exists()
    # The failure that reaches the limit locks the account out, as on the sign-in page
    # (whose lockout answer, a 429, goci.middleware.signin_locked_out gives).
    assert exchange({"username": "ann", "password": "wrong"}).status_code == 429
    assert exchange({"username": "ann", "password": PASSWORD}).status_code == 429


@pytest.mark.parametrize(
    "body",
    [{}, {"username": "ann"}, {"password": PASSWORD}],
    ids=["empty", "no password", "no user"],
)
def test_an_exchange_without_credentials_is_422(ann: Any, body: dict[str, str]) -> None:
    response = exchange(body)

    assert response.status_code == 422
    assert "give either token, or username and password" in response.json()["detail"]


def test_an_unknown_token_gets_no_jwt(ann: Any) -> None:
    response = exchange({"token": "goci_nothing"})

    assert response.status_code == 401
    assert response.json() == {"detail": "this token is unknown, expired or revoked"}
