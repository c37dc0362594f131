"""Secrets: encrypted at rest, write-only, set and listed by maintainers only, and
resolved for a build by its event, branch and fork flag."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.fernet import Fernet
from django.db import connection
from django.test import override_settings

from builds import secrets, services
from builds.models import Membership, Role, Secret
from builds.secrets import SecretError, SecretRefused, secret_set, secrets_resolve
from tests.helpers import api_call, make_project, make_token, make_user

pytestmark = pytest.mark.django_db

VALUE = "hunter2-very-secret"


@pytest.fixture
def shop() -> Any:
    owner = make_user("olivia")
    return make_project(owner, "shop")


def raw_rows() -> str:
    """Everything the database holds of secrets, as the database has it."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM builds_secret")
        return repr(cursor.fetchall())


def test_the_database_never_holds_the_value_in_clear(shop: Any) -> None:
    secret, created = secret_set(project=shop, name="DEPLOY_TOKEN", value=VALUE, user=None)

    assert created
    assert VALUE not in raw_rows()
    assert secrets.decrypt(secret.ciphertext) == VALUE


def test_a_value_shorter_than_four_characters_is_refused(shop: Any) -> None:
    with pytest.raises(SecretError, match="at least 4 characters"):
        secret_set(project=shop, name="PIN", value="123", user=None)
    assert not Secret.objects.exists()


def test_a_bad_name_or_event_is_refused(shop: Any) -> None:
    with pytest.raises(SecretError, match="invalid secret name"):
        secret_set(project=shop, name="deploy-token", value=VALUE, user=None)
    with pytest.raises(SecretError, match="unknown event 'merge'"):
        secret_set(project=shop, name="TOKEN", value=VALUE, user=None, events=["merge"])


def test_changing_a_secret_keeps_what_is_not_given(shop: Any) -> None:
    alice = make_user("alice")
    secret_set(project=shop, name="TOKEN", value=VALUE, user=None, branches=["main"])
    secret, created = secret_set(project=shop, name="TOKEN", value=None, user=alice, events=["tag"])

    assert not created
    assert secrets.decrypt(secret.ciphertext) == VALUE
    assert secret.events == ["tag"]
    assert secret.branches == ["main"]
    assert secret.updated_by == alice


def test_the_first_key_encrypts_all_decrypt_and_rotate_moves_to_the_first() -> None:
    owner = make_user("olivia")
    project: Any = make_project(owner, "shop")
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    with override_settings(GOCI_SECRET_KEYS=[old]):
        secret_set(project=project, name="TOKEN", value=VALUE, user=None)
    with override_settings(GOCI_SECRET_KEYS=[new, old]):
        assert secrets.decrypt(Secret.objects.get().ciphertext) == VALUE
        assert secrets.secrets_rotate() == 1
    with override_settings(GOCI_SECRET_KEYS=[new]):
        assert secrets.decrypt(Secret.objects.get().ciphertext) == VALUE
    with override_settings(GOCI_SECRET_KEYS=[old]), pytest.raises(SecretRefused):
        secrets_resolve(
            project=project, wanted=[("s", "TOKEN")], event="push", branch="main", fork=False
        )


def test_without_keys_one_is_derived_and_start_up_says_so() -> None:
    with override_settings(GOCI_SECRET_KEYS=[]):
        assert secrets.keys_derived()
        assert "derived from SECRET_KEY" in secrets.key_notice()
        assert secrets.decrypt(secrets.encrypt(VALUE)) == VALUE
    with override_settings(GOCI_SECRET_KEYS=[Fernet.generate_key().decode()]):
        assert secrets.key_notice() == "Secrets: encrypted with GOCI_SECRET_KEYS (1 key)."


def test_a_key_that_is_not_a_fernet_key_is_explained() -> None:
    with (
        override_settings(GOCI_SECRET_KEYS=["not-a-key"]),
        pytest.raises(SecretError, match="not a Fernet key"),
    ):
        secrets.encrypt(VALUE)


# -- resolving for a build


def resolve(project: Any, **kw: Any) -> dict[str, str]:
    options: dict[str, Any] = {"event": "push", "branch": "main", "fork": False}
    options.update(kw)
    wanted = options.pop("wanted", [("deploy", "DEPLOY_TOKEN")])
    return secrets_resolve(project=project, wanted=wanted, **options)


def test_a_build_gets_the_values_it_asks_for(shop: Any) -> None:
    secret_set(project=shop, name="DEPLOY_TOKEN", value=VALUE, user=None)
    secret_set(project=shop, name="OTHER", value="other-value", user=None)

    assert resolve(shop) == {"DEPLOY_TOKEN": VALUE}


def test_a_project_secret_hides_a_global_one_and_a_global_one_serves_all(shop: Any) -> None:
    secret_set(project=None, name="DEPLOY_TOKEN", value="global-value", user=None)
    secret_set(project=None, name="REGISTRY", value="registry-value", user=None)
    secret_set(project=shop, name="DEPLOY_TOKEN", value=VALUE, user=None)

    wanted = [("a", "DEPLOY_TOKEN"), ("b", "REGISTRY")]
    assert resolve(shop, wanted=wanted) == {"DEPLOY_TOKEN": VALUE, "REGISTRY": "registry-value"}
    names = [(s.name, s.is_global) for s in secrets.secret_list(project=shop)]
    assert names == [("DEPLOY_TOKEN", False), ("REGISTRY", True)]


def test_an_unknown_secret_is_refused_naming_it_and_the_step(shop: Any) -> None:
    with pytest.raises(SecretRefused, match="step 'deploy' asks for secret DEPLOY_TOKEN, which"):
        resolve(shop)


def test_a_pull_request_gets_no_secret_by_default(shop: Any) -> None:
    secret_set(project=shop, name="DEPLOY_TOKEN", value=VALUE, user=None)

    with pytest.raises(SecretRefused, match=r"not given to pull_request builds \(its events: "):
        resolve(shop, event="pull_request")


def test_branch_globs_limit_a_secret(shop: Any) -> None:
    secret_set(project=shop, name="DEPLOY_TOKEN", value=VALUE, user=None, branches=["release/*"])

    assert resolve(shop, branch="release/1.0") == {"DEPLOY_TOKEN": VALUE}
    with pytest.raises(SecretRefused, match=r"only to branches release/\* .*branch 'main'"):
        resolve(shop)
    with pytest.raises(SecretRefused, match="no branch"):
        resolve(shop, branch=None, event="tag")


def test_a_fork_gets_no_secret_even_one_that_exists(shop: Any) -> None:
    secret_set(project=shop, name="DEPLOY_TOKEN", value=VALUE, user=None, events=["pull_request"])

    with pytest.raises(SecretRefused, match="comes from a fork"):
        resolve(shop, event="pull_request", fork=True)


# -- the API


@pytest.fixture
def people(shop: Any) -> dict[str, str]:
    tokens = {}
    for name, role in (("mae", Role.MAINTAINER), ("vera", Role.VIEWER)):
        user = make_user(name)
        Membership.objects.create(project=shop, user=user, role=role)
        tokens[name] = make_token(user)
    tokens["oscar"] = make_token(make_user("oscar"))
    return tokens


def test_a_maintainer_sets_lists_and_deletes_and_never_sees_a_value(
    people: dict[str, str],
) -> None:
    url = "/api/projects/shop/secrets"
    body = {"value": VALUE, "events": ["push", "tag"], "branches": ["main"]}
    created = api_call("put", f"{url}/DEPLOY_TOKEN", people["mae"], body)
    changed = api_call("put", f"{url}/DEPLOY_TOKEN", people["mae"], {"value": VALUE + "2"})
    listed = api_call("get", url, people["mae"])

    assert created.status_code == 201, created.content
    assert changed.status_code == 200
    assert listed.json() == [
        {
            "name": "DEPLOY_TOKEN",
            "is_global": False,
            "events": ["push", "tag"],
            "branches": ["main"],
            "created_by": "mae",
            "updated_by": "mae",
            "created_at": listed.json()[0]["created_at"],
            "updated_at": listed.json()[0]["updated_at"],
        }
    ]
    for response in (created, changed, listed):
        assert VALUE.encode() not in response.content
    assert api_call("delete", f"{url}/DEPLOY_TOKEN", people["mae"]).status_code == 204
    assert api_call("delete", f"{url}/DEPLOY_TOKEN", people["mae"]).status_code == 404


def test_a_viewer_cannot_list_secret_names_and_an_outsider_sees_no_project(
    shop: Any, people: dict[str, str]
) -> None:
    secret_set(project=shop, name="DEPLOY_TOKEN", value=VALUE, user=None)

    viewer = api_call("get", "/api/projects/shop/secrets", people["vera"])
    outsider = api_call("get", "/api/projects/shop/secrets", people["oscar"])

    assert viewer.status_code == 403
    assert "maintainer role" in viewer.json()["detail"]
    assert b"DEPLOY_TOKEN" not in viewer.content
    assert outsider.status_code == 404


def test_a_short_value_or_bad_name_is_a_422_that_says_why(people: dict[str, str]) -> None:
    short = api_call("put", "/api/projects/shop/secrets/PIN", people["mae"], {"value": "123"})
    bad = api_call("put", "/api/projects/shop/secrets/pin", people["mae"], {"value": VALUE})
    none = api_call("put", "/api/projects/shop/secrets/NEW", people["mae"], {"events": ["tag"]})

    assert short.status_code == 422
    assert "at least 4 characters" in short.json()["detail"]
    assert bad.status_code == 422
    assert "invalid secret name 'pin'" in bad.json()["detail"]
    assert none.status_code == 422
    assert none.json()["detail"] == "a new secret needs a value"


def test_a_rerun_of_a_fork_s_build_is_a_fork_s_build_too(shop: Any) -> None:
    build, _ = services.build_create(
        project=shop, pipeline="steps: [{run: 'true'}]", trigger="pull_request", fork=True
    )
    rerun = services.build_rerun(build=build, author=None)
    assert (build.fork, rerun.fork) == (True, True)
