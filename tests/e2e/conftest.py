"""Browser tests: Playwright driving Debian's Chromium against a real `goci up` (daphne,
the in-process worker, SQLite and the in-memory channel layer), as a user runs it.

A real server process instead of ChannelsLiveServerTestCase: no fork/spawn pitfalls
(STACK-NOTES P1, P2), and the tests see exactly what `make up` serves. Data the tests
need is created through `manage.py shell` on the server's data directory.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import need
from tests.test_up import PASSWORD, Up, create_token, free_port, manage

CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium's connections are refused by this
# machine's closed network, many at a time; as root it needs --no-sandbox.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(
    os.environ.get("GOCI_SCREENSHOTS", Path(__file__).resolve().parents[2] / "var" / "screenshots")
)


class Server:
    def __init__(self, up: Up, data_dir: Path, admin_password: str) -> None:
        self.up = up
        self.url = up.url
        self.data_dir = data_dir
        self.admin_password = admin_password

    def shell(self, code: str) -> str:
        return manage(self.data_dir, code)

    def token(self, username: str) -> str:
        return create_token(self.data_dir, username)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp("e2e") / "data"
    up = Up(data_dir, free_port())
    try:
        up.wait_ready()
        match = PASSWORD.search(up.output())
        assert match, up.output()
        server = Server(up, data_dir, match.group(1))
        server.shell(
            "from django.contrib.auth.models import User; "
            "User.objects.create_user('mallory', password='mallory-pass-123')"
        )
        yield server
    finally:
        if up.proc.poll() is None:
            up.stop()
        up.proc.wait()


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        need("playwright (pip install playwright==1.65.2; no browser download needed)")
    if not Path(CHROMIUM).exists() or shutil.which("chromium") is None:
        need(f"Chromium at {CHROMIUM} (Debian package chromium)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any, server: Server) -> Iterator[Any]:
    context = browser.new_context(base_url=server.url, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


def sign_in(page: Any, username: str, password: str) -> None:
    page.goto("/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit], input[type=submit]")
    page.wait_for_url(lambda url: "/login/" not in url)


def screenshot(page: Any, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")  # noqa: T201  (CI prints where the pictures are)
    return path
