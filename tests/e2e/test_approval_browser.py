"""A protected environment's deployment in a real browser: it waits, says why in the
build's header, and goes on when another maintainer presses Approve."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.conftest import Server, screenshot, sign_in
from tests.e2e.test_browser import wait_until

pytestmark = pytest.mark.browser

PIPELINE = "steps:\n  - name: ship\n    environment: production\n    run: echo shipped\n"


def test_a_deployment_waits_for_another_maintainers_approval(page: Any, server: Server) -> None:
    build_id = int(
        server.shell(
            "from django.contrib.auth.models import User\n"
            "from builds import services\n"
            "from builds.models import Environment\n"
            "admin = User.objects.get(username='admin')\n"
            "p = services.project_create(user=admin, slug='approvals')\n"
            "services.member_add(project=p, user=User.objects.get(username='mallory'), "
            "role='maintainer')\n"
            "Environment.objects.create(project=p, name='production', protected=True, "
            "approval=True)\n"
            f"b, _ = services.build_create(project=p, pipeline={PIPELINE!r}, author=admin, "
            "trigger='manual')\n"
            "print(b.pk)"
        )
    )
    sign_in(page, "mallory", "mallory-pass-123")
    page.goto(f"/builds/{build_id}/")
    reason = page.text_content("[data-queue-reason]")
    assert reason == "Queued: waiting for approval to deploy to production"
    assert page.get_attribute("#build", "data-status") == "queued"
    screenshot(page, "waiting-for-approval")
    page.click("[data-deployment] button:has-text('Approve')")
    page.wait_for_url(f"**/builds/{build_id}/")
    wait_until(page, "document.querySelector('#build').dataset.status === 'success'", 30000)
    assert page.text_content("[data-deployment] .badge") == "success"
    page.goto("/projects/approvals/environments")
    assert "approved by mallory" in page.text_content("[data-environment=production]")
