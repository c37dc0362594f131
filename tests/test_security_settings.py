"""Production behind a TLS proxy: GOCI_PUBLIC_URL, GOCI_BEHIND_PROXY, GOCI_HSTS_SECONDS,
`check --deploy`, and signing in through the proxy that docs/deploy.md recommends."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.helpers import REPO
from tests.test_up import READY_TIMEOUT, embedded_env, free_port, manage

PUBLIC = "https://ci.example.com"


def production_env(data_dir: Path, **extra: str) -> dict[str, str]:
    return {
        **embedded_env(data_dir),
        "DEBUG": "false",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "GOCI_PUBLIC_URL": PUBLIC,
        **extra,
    }


def run_manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "manage.py"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def settings_in(env: dict[str, str], *names: str) -> dict[str, Any]:
    code = (
        "import json; from django.conf import settings; "
        f"print(json.dumps({{n: getattr(settings, n, None) for n in {list(names)!r}}}))"
    )
    done = run_manage(env, "shell", "--verbosity", "0", "-c", code)
    assert done.returncode == 0, done.stderr
    values: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return values


@pytest.mark.parametrize("behind_proxy", ["true", "false"])
def test_check_deploy_passes_with_a_secret_key_and_an_https_public_url(
    tmp_path: Path, behind_proxy: str
) -> None:
    env = production_env(tmp_path / "data", GOCI_BEHIND_PROXY=behind_proxy)
    done = run_manage(env, "check", "--deploy", "--fail-level", "WARNING")
    assert done.returncode == 0, done.stdout + done.stderr


def test_check_deploy_still_fails_without_a_public_https_url(tmp_path: Path) -> None:
    env = production_env(tmp_path / "data", GOCI_PUBLIC_URL="")
    done = run_manage(env, "check", "--deploy", "--fail-level", "WARNING")
    assert done.returncode != 0
    assert "SESSION_COOKIE_SECURE" in done.stderr


def test_an_https_public_url_sets_hosts_origins_secure_cookies_and_hsts(tmp_path: Path) -> None:
    env = production_env(tmp_path / "data", GOCI_PUBLIC_URL="https://CI.example.com/")
    got = settings_in(
        env,
        "GOCI_PUBLIC_URL",
        "ALLOWED_HOSTS",
        "CSRF_TRUSTED_ORIGINS",
        "SESSION_COOKIE_SECURE",
        "CSRF_COOKIE_SECURE",
        "SECURE_HSTS_SECONDS",
        "SECURE_SSL_REDIRECT",
        "SECURE_PROXY_SSL_HEADER",
    )
    assert got["GOCI_PUBLIC_URL"] == "https://ci.example.com"
    assert "ci.example.com" in got["ALLOWED_HOSTS"]
    assert "localhost" in got["ALLOWED_HOSTS"]  # added to, not replaced
    assert got["CSRF_TRUSTED_ORIGINS"] == ["https://ci.example.com"]
    assert got["SESSION_COOKIE_SECURE"] is True
    assert got["CSRF_COOKIE_SECURE"] is True
    assert got["SECURE_HSTS_SECONDS"] == 31536000
    assert got["SECURE_SSL_REDIRECT"] is False  # no proxy header: a redirect would loop
    assert got["SECURE_PROXY_SSL_HEADER"] is None


def test_behind_the_proxy_x_forwarded_proto_is_trusted_and_http_redirected(
    tmp_path: Path,
) -> None:
    env = production_env(tmp_path / "data", GOCI_BEHIND_PROXY="true", GOCI_HSTS_SECONDS="600")
    got = settings_in(env, "SECURE_PROXY_SSL_HEADER", "SECURE_SSL_REDIRECT", "SECURE_HSTS_SECONDS")
    assert got == {
        "SECURE_PROXY_SSL_HEADER": ["HTTP_X_FORWARDED_PROTO", "https"],
        "SECURE_SSL_REDIRECT": True,
        "SECURE_HSTS_SECONDS": 600,
    }


def test_an_http_public_url_does_not_turn_on_secure_cookies(tmp_path: Path) -> None:
    env = production_env(tmp_path / "data", GOCI_PUBLIC_URL="http://ci.internal:8080")
    got = settings_in(env, "ALLOWED_HOSTS", "CSRF_TRUSTED_ORIGINS", "SESSION_COOKIE_SECURE")
    assert "ci.internal" in got["ALLOWED_HOSTS"]
    assert got["CSRF_TRUSTED_ORIGINS"] == ["http://ci.internal:8080"]
    assert got["SESSION_COOKIE_SECURE"] is False


@pytest.mark.parametrize(
    "bad",
    ["ci.example.com", "ftp://ci.example.com", "https://", "https://ci.example.com/goci",
     "https://ci.example.com?x=1", "https://ci.example.com:port"],
)  # fmt: skip
def test_a_bad_public_url_is_a_clear_error(tmp_path: Path, bad: str) -> None:
    done = run_manage(production_env(tmp_path / "data", GOCI_PUBLIC_URL=bad), "check")
    assert done.returncode != 0
    assert "GOCI_PUBLIC_URL must be the address people open, like https://ci.example.com" in (
        done.stderr
    )
    assert repr(bad) in done.stderr


def test_absolute_links_use_the_public_url(settings: Any, rf: Any) -> None:
    from goci.public import absolute_url

    request = rf.get("/", HTTP_HOST="127.0.0.1:8000")
    assert absolute_url("/builds/7/", request) == "http://127.0.0.1:8000/builds/7/"
    settings.GOCI_PUBLIC_URL = PUBLIC
    assert absolute_url("/builds/7/", request) == "https://ci.example.com/builds/7/"
    assert absolute_url("/builds/7/") == "https://ci.example.com/builds/7/"


class Daphne:
    """daphne serving goci.asgi with the production environment, as the compose web does."""

    def __init__(self, data_dir: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = data_dir.parent / "daphne.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port),
                 "goci.asgi:application"],
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                requests.get(self.url + "/login/", allow_redirects=False, timeout=2)
                return
            except requests.ConnectionError:
                assert time.monotonic() < deadline, self.log.read_text()
                time.sleep(0.2)


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[Daphne]:
    data_dir = tmp_path / "data"
    env = production_env(data_dir, GOCI_BEHIND_PROXY="true")
    migrated = run_manage(env, "migrate", "--verbosity", "0")
    assert migrated.returncode == 0, migrated.stderr
    manage(
        data_dir,
        "from django.contrib.auth.models import User; "
        "User.objects.create_user('ann', password='ann-pass-1234')",
    )
    server = Daphne(data_dir, env)
    try:
        server.wait_ready()
        yield server
    finally:
        server.proc.terminate()
        server.proc.wait(timeout=30)


@pytest.mark.parametrize("host", ["ci.example.com", "127.0.0.1"])
def test_sign_in_through_the_tls_proxy_works(proxied: Daphne, host: str) -> None:
    """What Caddy sends (the public Host), and what nginx sends by default (its upstream's
    Host): X-Forwarded-Proto and -For from the proxy, Origin and Referer from the browser."""
    proxy_headers = {
        "Host": host if host != "127.0.0.1" else f"127.0.0.1:{proxied.port}",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-For": "203.0.113.5",
    }
    form = requests.get(proxied.url + "/login/", headers=proxy_headers, timeout=10)
    assert form.status_code == 200, form.text
    assert "Strict-Transport-Security" in form.headers
    assert "Content-Security-Policy" in form.headers
    # Secure cookies: a client only sends them over https, which the proxy spoke.
    assert "Secure" in form.headers["Set-Cookie"]
    csrf_cookie = form.cookies["csrftoken"]
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text)
    assert token, form.text
    answer = requests.post(
        proxied.url + "/login/",
        data={"username": "ann", "password": "ann-pass-1234", "csrfmiddlewaretoken": token[1]},
        headers={
            **proxy_headers,
            "Origin": PUBLIC,
            "Referer": PUBLIC + "/login/",
            "Cookie": f"csrftoken={csrf_cookie}",
        },
        allow_redirects=False,
        timeout=10,
    )
    assert answer.status_code == 302, answer.text
    assert answer.headers["Location"] == "/"
    assert "sessionid" in answer.cookies


def test_plain_http_through_the_proxy_is_redirected_to_https(proxied: Daphne) -> None:
    answer = requests.get(
        proxied.url + "/login/",
        headers={"Host": "ci.example.com", "X-Forwarded-Proto": "http"},
        allow_redirects=False,
        timeout=10,
    )
    assert answer.status_code == 301
    assert answer.headers["Location"] == "https://ci.example.com/login/"


@pytest.mark.parametrize("name", ["GOCI_LOGIN_FAILURE_LIMIT", "GOCI_LOGIN_COOLOFF_MINUTES"])
def test_a_zero_sign_in_limit_or_cooloff_is_a_clear_error(tmp_path: Path, name: str) -> None:
    done = run_manage({**embedded_env(tmp_path / "data"), name: "0"}, "check")
    assert done.returncode != 0
    assert "GOCI_LOGIN_FAILURE_LIMIT and GOCI_LOGIN_COOLOFF_MINUTES must be 1 or more" in (
        done.stderr
    )


def test_processes_starting_at_once_on_a_new_data_directory_share_one_whole_key(
    tmp_path: Path,
) -> None:
    """`goci up` and workers may start together on a fresh data directory: each gets
    the same key, none fails because another created the file first (found by four
    workers starting at once in tests/test_worker_processes.py)."""
    # Each process imports first, then waits for the same instant to make the key.
    code = (
        "import sys, time; from goci.settings import embedded_secret_key; "
        "from pathlib import Path; time.sleep(max(0, float(sys.argv[2]) - time.time())); "
        "print(embedded_secret_key(Path(sys.argv[1])))"
    )
    data = tmp_path / "data"
    at = str(time.time() + 8)
    starts = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(data), at],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={
                **os.environ,
                "SECRET_KEY": "for-the-import-only",
                "GOCI_DATA_DIR": str(tmp_path / "of-the-import"),
            },
        )
        for _ in range(8)
    ]
    answers = [start.communicate(timeout=60) for start in starts]

    assert [start.returncode for start in starts] == [0] * 8, answers
    keys = {out.strip() for out, _ in answers}
    assert len(keys) == 1
    assert len(keys.pop()) >= 50
    assert [p.name for p in data.iterdir()] == ["secret_key"]  # no temporary file left
    assert (data / "secret_key").stat().st_mode & 0o777 == 0o600
