"""A new user's first project in Chromium: the empty dashboard leads to "New project",
then members are added and changed in place (htmx), and the last owner is kept."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.conftest import Server, screenshot, sign_in

pytestmark = pytest.mark.browser

PASSWORD = "petra-pass-1234"  # noqa: S105  (a test user's)


def test_a_new_user_creates_a_project_and_manages_its_members(page: Any, server: Server) -> None:
    server.shell(
        "from django.contrib.auth.models import User; "
        f"User.objects.create_user('petra', password={PASSWORD!r}); "
        "User.objects.create_user('quinn')"
    )
    refused: list[str] = []
    page.on("console", lambda msg: refused.append(msg.text) if "Policy" in msg.text else None)
    sign_in(page, "petra", PASSWORD)
    screenshot(page, "dashboard-fresh")
    page.get_by_role("link", name="Create your first project").click()
    page.fill("input[name=slug]", "shop")
    page.fill("input[name=name]", "The shop")
    page.fill("input[name=repo_url]", "https://git.example.com/shop.git")
    page.get_by_role("button", name="Create project").click()
    page.wait_for_url("**/projects/shop/")
    assert "Project shop created: you are its owner." in page.inner_text(".messages")

    page.get_by_role("link", name="Members").click()
    page.wait_for_url("**/projects/shop/members")
    page.fill("input[name=username]", "quinn")
    page.select_option("#id_role", "developer")
    page.get_by_role("button", name="Add member").click()
    page.get_by_text("quinn is now a developer.").wait_for()
    assert page.url.endswith("/projects/shop/members")  # swapped in place, no reload
    page.select_option("#members tr:has-text('quinn') select", "maintainer")
    page.locator("#members tr:has-text('quinn')").get_by_role("button", name="Change").click()
    page.get_by_text("quinn is now a maintainer.").wait_for()
    # The last owner cannot leave; the list says why.
    page.get_by_role("button", name="Remove petra").click()
    page.get_by_text("Cannot remove petra. A project needs an owner").wait_for()
    assert page.locator("#members tbody tr").count() == 2
    screenshot(page, "project-members")

    page.goto("/projects/shop/settings")
    page.fill("input[name=confirm]", "nope")
    page.get_by_role("button", name="Delete project shop").click()
    page.get_by_text("Type shop exactly to delete this project; nothing was deleted.").wait_for()
    screenshot(page, "project-settings")

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Projects").click()
    page.wait_for_url("**/projects/")
    assert "no builds yet" in page.inner_text("table.projects")
    screenshot(page, "projects")
    assert refused == []
