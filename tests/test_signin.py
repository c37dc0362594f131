"""Sign-in throttling (django-axes, counted in the database) and password hashing."""

from __future__ import annotations

import re
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from axes.models import AccessAttempt
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.test import Client
from django.utils import timezone

from tests.test_up import goci_up, manage

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple"  # noqa: S105  (the test users')
RETRY = re.compile(
    r"Too many failed sign-ins for this account or address\. "
    r"Try again in (\d+) minutes? \(after (\d\d:\d\d) UTC\)\."
)


def make_person(name: str) -> Any:
    return get_user_model().objects.create_user(username=name, password=PASSWORD)


def sign_in(
    client: Client, username: str, password: str, address: str = "192.0.2.1", **headers: str
) -> Any:
    return client.post(
        "/login/", {"username": username, "password": password}, REMOTE_ADDR=address, **headers
    )


def signed_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


def test_thirty_wrong_passwords_then_the_right_one_is_refused_with_when_to_retry(
    client: Client,
) -> None:
    make_person("ann")
    for _ in range(30):
        sign_in(client, "ann", "wrong")
    response = sign_in(client, "ann", PASSWORD)
    assert response.status_code == 429
    assert not signed_in(client)
    text = response.content.decode()
    match = RETRY.search(text)
    assert match, text
    minutes, after = int(match.group(1)), match.group(2)
    assert 15 <= minutes <= 16
    soonest = timezone.now() + timedelta(minutes=15)
    assert after in {f"{soonest:%H:%M}", f"{soonest + timedelta(minutes=1):%H:%M}"}
    assert 'name="username"' in text  # the sign-in page itself, with the form


def test_a_username_is_locked_out_whatever_address_the_guesses_come_from(client: Client) -> None:
    make_person("ann")
    for n in range(10):
        sign_in(client, "ann", "wrong", address=f"198.51.100.{n}")
    response = sign_in(client, "ann", PASSWORD, address="203.0.113.50")
    assert response.status_code == 429
    assert not signed_in(client)


def test_one_address_is_locked_out_across_usernames(client: Client) -> None:
    make_person("ann")
    for n in range(10):
        sign_in(client, f"guess{n}", "wrong", address="198.51.100.7")
    assert sign_in(client, "ann", PASSWORD, address="198.51.100.7").status_code == 429
    assert not signed_in(client)
    # The lock is the address's, not ann's: from elsewhere she signs in.
    assert sign_in(client, "ann", PASSWORD, address="203.0.113.50").status_code == 302
    assert signed_in(client)


def test_a_successful_sign_in_resets_the_username_s_count(client: Client) -> None:
    make_person("ann")
    for _ in range(9):
        sign_in(client, "ann", "wrong", address="198.51.100.1")
    assert sign_in(client, "ann", PASSWORD, address="198.51.100.1").status_code == 302
    client.logout()
    for _ in range(9):
        sign_in(client, "ann", "wrong", address="198.51.100.2")
    assert sign_in(client, "ann", PASSWORD, address="198.51.100.2").status_code == 302


def test_signing_in_to_one_s_own_account_does_not_clear_the_address_s_guesses(
    client: Client,
) -> None:
    make_person("ann")
    make_person("mallory")
    for n in range(9):
        sign_in(client, f"guess{n}", "wrong", address="198.51.100.7")
    assert sign_in(client, "mallory", PASSWORD, address="198.51.100.7").status_code == 302
    client.logout()
    sign_in(client, "guess9", "wrong", address="198.51.100.7")
    assert sign_in(client, "ann", PASSWORD, address="198.51.100.7").status_code == 429


def test_the_lockout_ends_after_the_cooloff(client: Client, settings: Any) -> None:
    make_person("ann")
    for _ in range(10):
        sign_in(client, "ann", "wrong")
    assert sign_in(client, "ann", PASSWORD).status_code == 429
    # A one-second cooloff from here on (ten slow Argon2 checks may take longer than that
    # on a busy machine, so the failures are made under the normal one).
    settings.AXES_COOLOFF_TIME = timedelta(seconds=1)
    time.sleep(1.2)
    assert sign_in(client, "ann", PASSWORD).status_code == 302
    assert signed_in(client)


def test_the_admin_s_sign_in_says_when_to_retry_too(client: Client) -> None:
    get_user_model().objects.create_superuser("root", password=PASSWORD)
    for _ in range(10):
        client.post("/admin/login/", {"username": "root", "password": "wrong"})
    response = client.post("/admin/login/", {"username": "root", "password": PASSWORD})
    assert response.status_code == 429
    text = response.content.decode()
    assert RETRY.search(text), text
    assert "Goci administration" in text
    assert not signed_in(client)


def test_behind_the_proxy_the_address_it_appended_counts_not_the_client_s_claim(
    client: Client, settings: Any
) -> None:
    settings.GOCI_BEHIND_PROXY = True
    make_person("ann")
    for n in range(10):
        # A client may send any X-Forwarded-For; the proxy appends the real address.
        forwarded = f"10.9.9.{n}, 203.0.113.9"
        sign_in(client, f"guess{n}", "wrong", address="127.0.0.1", HTTP_X_FORWARDED_FOR=forwarded)
    assert AccessAttempt.objects.filter(ip_address="203.0.113.9").count() == 10
    refused = sign_in(
        client, "ann", PASSWORD, address="127.0.0.1", HTTP_X_FORWARDED_FOR="203.0.113.9"
    )
    assert refused.status_code == 429
    allowed = sign_in(
        client, "ann", PASSWORD, address="127.0.0.1", HTTP_X_FORWARDED_FOR="203.0.113.10"
    )
    assert allowed.status_code == 302


def test_without_the_proxy_setting_x_forwarded_for_is_ignored(client: Client) -> None:
    sign_in(client, "ann", "wrong", address="192.0.2.77", HTTP_X_FORWARDED_FOR="203.0.113.9")
    assert list(AccessAttempt.objects.values_list("ip_address", flat=True)) == ["192.0.2.77"]


def test_new_passwords_are_hashed_with_argon2(client: Client) -> None:
    ann = make_person("ann")
    assert ann.password.startswith("argon2$")
    assert sign_in(client, "ann", PASSWORD).status_code == 302


def test_an_older_pbkdf2_hash_is_upgraded_to_argon2_at_the_next_sign_in(client: Client) -> None:
    ann = make_person("ann")
    ann.password = make_password(PASSWORD, hasher="pbkdf2_sha256")
    ann.save(update_fields=["password"])
    assert sign_in(client, "ann", PASSWORD).status_code == 302
    ann.refresh_from_db()
    assert ann.password.startswith("argon2$")


def test_failures_recorded_by_one_process_lock_the_sign_in_of_another(tmp_path: Path) -> None:
    """Two processes sharing one database: failures counted by a `manage.py shell`
    refuse the right password at a running `goci up` (daphne, the ASGI middleware)."""
    data_dir = tmp_path / "data"
    with goci_up(data_dir) as server:
        server.wait_ready()
        manage(
            data_dir,
            "from django.contrib.auth.models import User\n"
            f"User.objects.create_user('ann', password={PASSWORD!r})\n"
            "from django.test import Client\n"
            "client = Client(HTTP_HOST='localhost', REMOTE_ADDR='198.51.100.3')\n"
            "for _ in range(10):\n"
            "    client.post('/login/', {'username': 'ann', 'password': 'wrong'})\n",
        )
        session = requests.Session()
        form = session.get(server.url + "/login/", timeout=10)
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text)
        assert token, form.text
        answer = session.post(
            server.url + "/login/",
            data={"username": "ann", "password": PASSWORD, "csrfmiddlewaretoken": token.group(1)},
            headers={"Referer": server.url + "/login/"},
            allow_redirects=False,
            timeout=10,
        )
        assert answer.status_code == 429, answer.text
        assert RETRY.search(answer.text), answer.text
        assert "sessionid" not in session.cookies


def test_a_failed_sign_in_keeps_its_password_nowhere(caplog: pytest.LogCaptureFixture) -> None:
    from axes.models import AccessFailureLog, AccessLog

    make_person("zed")
    Client().post("/login/", {"username": "zed", "password": "Sup3rSecretGuess!"})
    rows = [
        *AccessAttempt.objects.values(),
        *AccessLog.objects.values(),
        *AccessFailureLog.objects.values(),
    ]
    assert rows  # the failure was recorded
    assert "Sup3rSecretGuess" not in repr(rows)
    assert "Sup3rSecretGuess" not in caplog.text
