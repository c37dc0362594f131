""" "Sign in with GitHub" in Chromium: the real sign-in page of a `goci up` whose GitHub
is a local fake (tests/oauth_provider.py), through the forge and back, signed in.

The session's shared server has no forge configured, so this test starts its own."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import screenshot
from tests.oauth_provider import Account, Email, fake_forge
from tests.test_oauth import goci_with

pytestmark = pytest.mark.browser

# Every violation the browser reports (a form's redirect to the forge must not be one).
RECORD_VIOLATIONS = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__violations.push(`${e.violatedDirective} blocked ${e.blockedURI || "inline"}`);
});
"""


def test_sign_in_with_github_lands_on_the_dashboard_signed_in(browser: Any, tmp_path: Path) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    with fake_forge("github") as github, goci_with(tmp_path / "data", **github.env()) as server:
        github.account = Account(
            id=4242, login="mona", name="Mona Lisa", emails=[Email("mona@example.com")]
        )
        context = browser.new_context(base_url=server.url, viewport={"width": 1280, "height": 900})
        context.add_init_script(RECORD_VIOLATIONS)
        console: list[str] = []
        errors: list[str] = []
        page = context.new_page()
        page.on("console", lambda message: console.append(message.text))
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        try:
            page.goto("/login/")
            screenshot(page, "oauth-sign-in-page")
            page.get_by_role("button", name="Sign in with GitHub").click()
            with contextlib.suppress(PlaywrightTimeout):  # the asserts below say why
                page.wait_for_url(f"{server.url}/", timeout=15_000)
            violations = list(page.evaluate("window.__violations"))
            violations += [text for text in console if "Content Security Policy" in text]
            assert violations == [], "the browser refused the way to the forge"
            assert page.url == f"{server.url}/"
            assert page.locator(".user-menu summary").inner_text() == "Signed in as mona"
            screenshot(page, "oauth-signed-in-dashboard")
        finally:
            context.close()
        assert errors == []
        assert len(github.seen("token")) == 1
