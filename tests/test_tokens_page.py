"""The tokens page (/account/tokens): the signed-in user lists, creates (the secret
shown once) and revokes their own personal API tokens."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from builds import services
from builds.models import ApiToken
from goci.audit.models import AuditEvent
from tests.helpers import make_user
from tests.test_tokens import token_of

pytestmark = pytest.mark.django_db


@pytest.fixture
def ann() -> Any:
    return make_user("ann")


@pytest.fixture
def signed_in(ann: Any) -> Client:
    client = Client()
    client.force_login(ann)
    return client


def test_the_page_creates_a_token_shown_once_with_its_scopes_and_expiry(
    ann: Any, signed_in: Client
) -> None:
    response = signed_in.post(
        "/account/tokens", {"name": "ci", "scopes": ["read"], "expires_in_days": "30"}
    )

    assert response.status_code == 201
    token = ApiToken.objects.get(name="ci")
    assert (token.user, token.scopes, token.expires_at is not None) == (ann, ["read"], True)
    secret = response.context["created"]
    assert secret in response.content.decode()
    assert services.token_user(secret) == ann
    again = signed_in.get("/account/tokens").content.decode()
    assert secret not in again
    assert token.prefix in again
    assert AuditEvent.objects.get(action="token.create").via == "ui"


def test_the_page_offers_read_and_run_by_default_and_refuses_no_scope(
    signed_in: Client,
) -> None:
    page = signed_in.get("/account/tokens")
    assert page.context["form"]["scopes"].initial == ["read", "run"]

    response = signed_in.post("/account/tokens", {"name": "ci"})

    assert response.status_code == 200
    assert "scopes" in response.context["form"].errors
    assert not ApiToken.objects.exists()


def test_the_page_revokes_only_the_users_own_tokens(ann: Any, signed_in: Client) -> None:
    mine, my_secret = token_of(ann)
    bobs, bob_secret = token_of(make_user("bob"))

    assert signed_in.post(f"/account/tokens/{bobs.pk}/revoke").status_code == 404
    response = signed_in.post(f"/account/tokens/{mine.pk}/revoke")

    assert response.status_code == 302
    assert services.token_user(my_secret) is None
    assert services.token_user(bob_secret) is not None
    assert "t" not in [t.name for t in signed_in.get("/account/tokens").context["tokens"]]


def test_the_page_needs_a_sign_in(ann: Any) -> None:
    response = Client().get("/account/tokens")

    assert response.status_code == 302
    assert "/login/" in response["Location"]
