"""The Content-Security-Policy in Chromium: the pages work under it and break none of it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import Server, sign_in
from tests.e2e.test_browser import ADMIN, make_project, submit

pytestmark = pytest.mark.browser

# Every violation the browser reports, kept on the page before any of its scripts run.
RECORD_VIOLATIONS = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__violations.push(`${e.violatedDirective} blocked ${e.blockedURI || "inline"}`);
});
"""


CONSOLE: dict[int, list[str]] = {}  # page id -> its console messages


@pytest.fixture
def watched(page: Any, server: Server) -> Iterator[Any]:
    page.context.add_init_script(RECORD_VIOLATIONS)
    console = CONSOLE.setdefault(id(page), [])
    page.on("console", lambda message: console.append(message.text))
    sign_in(page, ADMIN, server.admin_password)
    yield page
    CONSOLE.pop(id(page))


def violations(page: Any) -> list[str]:
    recorded = list(page.evaluate("window.__violations"))
    logged = [text for text in CONSOLE[id(page)] if "Content Security Policy" in text]
    return recorded + logged


def test_the_dashboard_build_page_and_api_docs_break_no_policy(
    watched: Any, server: Server
) -> None:
    page = watched
    make_project(server, "csp")
    build = submit(server, "csp", "steps: [{name: hello, run: 'echo hello'}]")
    for path, ready in (
        ("/", "main"),
        (f"/builds/{build}/", "#build"),
        ("/api/docs", ".swagger-ui .info"),  # Swagger UI rendered the API's description
    ):
        response = page.goto(path)
        assert "script-src 'self'" in response.headers["content-security-policy"]
        page.wait_for_selector(ready, timeout=15000)
        page.wait_for_load_state("networkidle")
        assert violations(page) == [], path


def test_the_policy_lets_the_page_open_its_own_websocket(watched: Any, server: Server) -> None:
    page = watched
    make_project(server, "csp-ws")
    build = submit(server, "csp-ws", "steps: [{name: hello, run: 'echo hello'}]")
    page.goto(f"/builds/{build}/")
    opened = page.evaluate(
        """(id) => new Promise((resolve) => {
          const ws = new WebSocket(`ws://${location.host}/ws/builds/${id}/`);
          ws.onopen = () => { ws.close(); resolve("open"); };
          ws.onerror = () => resolve("error");
        })""",
        build,
    )
    assert opened == "open"
    assert violations(page) == []


def test_an_injected_inline_script_does_not_run(watched: Any) -> None:
    page = watched
    page.goto("/")
    page.evaluate(
        """() => {
          const s = document.createElement("script");
          s.textContent = "window.__ran = true";
          document.body.append(s);
        }"""
    )
    assert page.evaluate("window.__ran === undefined")
    assert any("script-src" in v for v in violations(page))
