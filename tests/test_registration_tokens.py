"""Registration tokens: made by admins (the page, the API, `goci runner token`),
single-use with an expiry or reusable until revoked, shown once and kept as a digest;
a single-use token registers exactly one runner even when two race for it."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.utils import timezone

from builds import services
from builds.services import Conflict
from goci.audit.models import AuditEvent
from goci.cli import main
from runners import services as runner_services
from runners.models import RegistrationToken, Runner
from runners.services import RegistrationRefused
from tests.helpers import api_call, make_token, make_user
from tests.queue_helpers import require_postgres

URL = "/api/runners/registration-tokens"


def register(secret: str, name: str) -> Runner:
    runner, _ = runner_services.runner_register(registration_token=secret, name=name)
    return runner


@pytest.mark.django_db
def test_a_single_use_token_registers_one_runner_and_only_its_digest_is_kept() -> None:
    token, secret = runner_services.registration_token_create(user=None)
    assert secret.startswith("goci_reg_")
    assert token.digest == services.token_digest(secret)
    assert secret not in str(RegistrationToken.objects.values_list().get())
    assert token.expires_at is not None  # 24 hours by default

    register(secret, "one")
    with pytest.raises(RegistrationRefused):
        register(secret, "two")
    assert list(Runner.objects.values_list("name", flat=True)) == ["one"]


@pytest.mark.django_db
def test_a_reusable_token_registers_runners_until_revoked() -> None:
    token, secret = runner_services.registration_token_create(user=None, single_use=False)
    assert token.expires_at is None
    register(secret, "one")
    register(secret, "two")
    runner_services.registration_token_revoke(token=token)
    with pytest.raises(RegistrationRefused):
        register(secret, "three")
    assert Runner.objects.count() == 2  # the runners it registered keep working


@pytest.mark.django_db
def test_an_expired_token_registers_nothing() -> None:
    token, secret = runner_services.registration_token_create(user=None, expires_in_hours=1)
    RegistrationToken.objects.filter(pk=token.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    with pytest.raises(RegistrationRefused):
        register(secret, "late")


@pytest.mark.django_db
def test_a_taken_name_is_a_conflict_and_does_not_use_the_token() -> None:
    _, first = runner_services.registration_token_create(user=None)
    register(first, "same")
    _, second = runner_services.registration_token_create(user=None)
    with pytest.raises(Conflict):
        register(second, "same")
    register(second, "other")  # still usable


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_registrations_racing_for_a_single_use_token_one_wins() -> None:
    require_postgres()
    _, secret = runner_services.registration_token_create(user=None)
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def race(n: int) -> None:
        try:
            barrier.wait()
            register(secret, f"racer-{n}")
            outcomes.append("won")
        except RegistrationRefused:
            outcomes.append("refused")
        finally:
            connection.close()

    threads = [threading.Thread(target=race, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["refused"] * 7 + ["won"]
    assert Runner.objects.count() == 1


@pytest.fixture
def admin(db: None) -> User:
    return User.objects.create_superuser("root")


def test_an_admin_creates_lists_and_revokes_tokens_through_the_api(admin: User) -> None:
    token = make_token(admin)
    created = api_call("post", URL, token, {"reusable": True, "expires_in_hours": 48})
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["token"].startswith("goci_reg_")
    assert body["single_use"] is False
    assert body["expires_at"] is not None

    listed = api_call("get", URL, token).json()
    assert [item["id"] for item in listed] == [body["id"]]
    assert "token" not in listed[0]

    assert api_call("delete", f"{URL}/{body['id']}", token).status_code == 204
    with pytest.raises(RegistrationRefused):
        register(body["token"], "late")
    assert api_call("delete", f"{URL}/999999", token).status_code == 404
    actions = set(AuditEvent.objects.values_list("action", "via"))
    assert {("runner_token.create", "api"), ("runner_token.revoke", "api")} <= actions


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [("get", URL, None), ("post", URL, {}), ("delete", f"{URL}/1", None)],
)
def test_anyone_but_an_admin_is_refused_registration_tokens(
    admin: User, method: str, url: str, body: Any
) -> None:
    runner_services.registration_token_create(user=admin)
    staff = User.objects.create_user("staff", is_staff=True)
    for user in (make_user("plain"), staff):
        response = api_call(method, url, make_token(user), body)
        assert response.status_code == 403, response.content
        assert "admins" in response.json()["detail"]
    assert RegistrationToken.objects.filter(revoked_at__isnull=True).count() == 1


@pytest.mark.parametrize(
    "body",
    [{"expires_in_hours": 0}, {"expires_in_hours": 10**30}, {"reusable": "maybe"}, {"x": 1}],
)
def test_bad_registration_token_requests_are_422(admin: User, body: Any) -> None:
    response = api_call("post", URL, make_token(admin), body)
    assert response.status_code == 422, response.content
    assert not RegistrationToken.objects.exists()


def test_goci_runner_token_create_list_and_revoke(
    db: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["runner", "token", "create", "--reusable", "--expires-in-hours", "5"]) == 0
    out, err = capsys.readouterr()
    secret = out.strip()
    assert secret.startswith("goci_reg_")
    assert "reusable" in err
    token = RegistrationToken.objects.get()
    assert token.digest == services.token_digest(secret)
    assert not token.single_use

    assert main(["runner", "token", "list"]) == 0
    listing = capsys.readouterr().out
    assert token.prefix in listing
    assert secret not in listing

    assert main(["runner", "token", "revoke", str(token.pk)]) == 0
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert main(["runner", "token", "revoke", "999999"]) == 2
    assert main(["runner", "token", "create", "--expires-in-hours", "0"]) == 2
    assert AuditEvent.objects.filter(action="runner_token.create", via="cli").exists()
