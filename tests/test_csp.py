"""Every page sends a Content-Security-Policy that runs no inline script, and the pages
need none; the favicon."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from tests.helpers import REPO
from tests.queue_helpers import make_project, submit

pytestmark = pytest.mark.django_db

# Pages rendered from templates/: they need neither inline styles nor inline scripts.
OURS = ["/login/", "/", "/projects/web/", "/builds/{build}/", "/no-such-page/"]
# Django's admin and ninja's Swagger UI: no inline script either (checked here).
THEIRS = ["/admin/login/", "/admin/", "/admin/auth/user/", "/api/docs"]
SIGNED_OUT = ["/login/", "/admin/login/"]  # signed in, they redirect


class Inline(HTMLParser):
    """What a policy without 'unsafe-inline' would block, found in one page."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[str] = []  # inline script elements
        self.handlers: list[str] = []  # on*= attributes, javascript: links
        self.styles: list[str] = []  # <style> elements and style= attributes

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        # A JSON data block is never run (ninja's Swagger settings).
        if (
            tag == "script"
            and not attributes.get("src")
            and attributes.get("type") != "application/json"
        ):
            self.scripts.append(self.get_starttag_text() or tag)
        if tag == "style":
            self.styles.append(tag)
        for name, value in attrs:
            if name.startswith("on") or (value or "").strip().lower().startswith("javascript:"):
                self.handlers.append(f"<{tag} {name}={value!r}>")
            if name == "style":
                self.styles.append(f"<{tag} style={value!r}>")


def inline_parts(html: str) -> Inline:
    parser = Inline()
    parser.feed(html)
    return parser


def get(client: Client, path: str) -> Any:
    if path not in SIGNED_OUT:
        client.force_login(User.objects.get(username="ann"))
    return client.get(path)


@pytest.fixture
def signed_in(client: Client) -> Client:
    User.objects.create_superuser("ann", password="ann-pass-1234")  # noqa: S106  (a test user)
    return client


@pytest.fixture
def build_id() -> int:
    return submit(make_project("web", user="ann"), "steps: [{name: a, run: 'true'}]").pk


@pytest.mark.parametrize("path", OURS + THEIRS)
def test_every_page_sends_a_policy_without_inline_script(
    signed_in: Client, build_id: int, path: str
) -> None:
    response = get(signed_in, path.format(build=build_id))
    assert response.status_code in (200, 404), response.status_code
    policy = response.headers["Content-Security-Policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self'"
    assert directives["object-src"] == "'none'"
    assert directives["frame-ancestors"] == "'none'"
    found = inline_parts(response.content.decode())
    assert found.scripts == []
    assert found.handlers == []


@pytest.mark.parametrize("path", OURS)
def test_our_pages_have_no_inline_styles(signed_in: Client, build_id: int, path: str) -> None:
    response = get(signed_in, path.format(build=build_id))
    assert inline_parts(response.content.decode()).styles == []


def test_the_signed_out_sign_in_page_sends_the_policy(client: Client) -> None:
    response = client.get("/login/")
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]


def test_no_template_has_inline_script_handlers_or_styles() -> None:
    templates = sorted((REPO / "templates").rglob("*.html"))
    assert templates
    problems = []
    for path in templates:
        text = path.read_text()
        for pattern in (
            r"<script(?![^>]*\ssrc=)[^>]*>",
            r"\son[a-z]+\s*=",
            r"javascript:",
            r"<style",
            r"\sstyle\s*=",
        ):
            problems += [f"{path.relative_to(REPO)}: {m}" for m in re.findall(pattern, text)]
    assert problems == []


def test_htmx_is_told_not_to_inject_its_indicator_style(client: Client) -> None:
    html = client.get("/login/").content.decode()
    assert '"includeIndicatorStyles": false' in html


def test_favicon_is_linked_and_favicon_ico_redirects_to_it(client: Client) -> None:
    html = client.get("/login/").content.decode()
    link = re.search(r'<link rel="icon" href="([^"]+)" type="image/svg\+xml">', html)
    assert link, html
    redirect = client.get("/favicon.ico")
    assert redirect.status_code == 302
    assert redirect.headers["Location"] == link[1]
    icon = client.get(link[1])
    assert icon.status_code == 200
    assert icon.headers["Content-Type"] == "image/svg+xml"
    assert b"<svg" in b"".join(icon.streaming_content)  # type: ignore[attr-defined]
