"""The project settings page: a maintainer sets, changes and deletes secrets, and no
page ever shows a value back, not even after a refused form."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from builds.models import Membership, Role, Secret
from builds.secrets import decrypt
from tests.helpers import make_project, make_user

pytestmark = pytest.mark.django_db

VALUE = "-----BEGIN KEY-----\nAAAABBBBCCCCDDDD\n-----END KEY-----"


@pytest.fixture
def maintainer() -> Client:
    project: Any = make_project(make_user("olivia"), "shop")
    mae = make_user("mae")
    Membership.objects.create(project=project, user=mae, role=Role.MAINTAINER)
    client = Client()
    client.force_login(mae)  # type: ignore[arg-type]
    return client


def test_a_maintainer_sets_a_secret_in_the_ui_and_sees_only_its_name(maintainer: Client) -> None:
    data = {"name": "DEPLOY_KEY", "value": VALUE, "events": ["push", "tag"], "branches": "main"}

    response = maintainer.post("/projects/shop/secrets", data, follow=True)

    assert response.redirect_chain == [("/projects/shop/settings#secrets", 302)]
    page = response.content.decode()
    assert "Secret DEPLOY_KEY created." in page
    assert "<code>DEPLOY_KEY</code>" in page
    assert "AAAABBBBCCCCDDDD" not in page
    secret = Secret.objects.get()
    assert decrypt(secret.ciphertext) == VALUE
    assert (secret.events, secret.branches, secret.created_by.username) == (  # type: ignore[union-attr]
        ["push", "tag"],
        ["main"],
        "mae",
    )


def test_a_refused_form_says_why_and_does_not_show_the_value_back(maintainer: Client) -> None:
    short = maintainer.post("/projects/shop/secrets", {"name": "PIN", "value": "123"})
    bad = maintainer.post("/projects/shop/secrets", {"name": "bad name", "value": "typed-value"})

    assert short.status_code == bad.status_code == 200
    assert "at least 4 characters" in short.content.decode()
    assert "invalid secret name" in bad.content.decode().lower()
    assert b"typed-value" not in bad.content
    assert not Secret.objects.exists()


def test_a_change_without_a_value_keeps_it_and_delete_removes_it(maintainer: Client) -> None:
    maintainer.post("/projects/shop/secrets", {"name": "TOKEN", "value": "first-value"})
    maintainer.post("/projects/shop/secrets", {"name": "TOKEN", "value": "", "events": ["tag"]})

    secret = Secret.objects.get()
    assert (decrypt(secret.ciphertext), secret.events) == ("first-value", ["tag"])
    response = maintainer.post("/projects/shop/secrets/TOKEN/delete")
    assert response.status_code == 302
    assert not Secret.objects.exists()
    assert maintainer.post("/projects/shop/secrets/TOKEN/delete").status_code == 404
