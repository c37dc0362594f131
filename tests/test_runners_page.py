"""The runners page (admins only): every worker and remote runner with its state,
labels, jobs and slots and last contact; pause, drain, resume and revoke (audited);
registration tokens created (shown once) and revoked."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from builds.models import Job, Status
from goci.audit.models import AuditEvent
from runners import services
from runners.models import RegistrationToken, Runner
from tests.queue_helpers import make_project, submit

pytestmark = pytest.mark.django_db


@pytest.fixture
def root() -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("root"))
    return client


def test_the_page_lists_every_runner_with_its_state_jobs_and_slots(root: Client) -> None:
    now = timezone.now()
    Runner.objects.create(name="local-1", kind="worker", capacity=2, last_contact=now)
    far = Runner.objects.create(
        name="far",
        kind="runner",
        labels=["gpu", "linux"],
        capacity=3,
        version="0.13",
        platform="linux/arm64",
        last_contact=now - timedelta(hours=2),
    )
    Runner.objects.create(name="resting", kind="runner", state="paused", last_contact=now)
    build = submit(make_project(), "steps: [{run: 'true'}]")
    Job.objects.filter(build=build).update(status=Status.RUNNING, runner=far)

    page = root.get("/runners/").content.decode()

    assert "local-1" in page
    assert "online" in page
    assert "offline" in page  # far: two hours without a word
    assert "paused" in page
    assert "<code>gpu</code>" in page
    assert "1 / 3" in page
    assert "linux/arm64" in page
    assert "2\xa0hours ago" in page


@pytest.mark.parametrize(
    ("action", "state"), [("pause", "paused"), ("drain", "draining"), ("resume", "active")]
)
def test_pause_drain_and_resume_are_audited(root: Client, action: str, state: str) -> None:
    runner = Runner.objects.create(
        name="far", kind="runner", state="paused" if state == "active" else "active"
    )
    response = root.post(f"/runners/{runner.pk}/{action}")
    assert response.status_code == 302
    runner.refresh_from_db()
    assert runner.state == state
    event = AuditEvent.objects.get(action=f"runner.{action}")
    assert (event.actor_name, event.via, event.details["name"]) == ("root", "ui", "far")


def test_revoke_ends_the_runners_token(root: Client) -> None:
    _, secret = services.registration_token_create(user=None)
    runner, token = services.runner_register(registration_token=secret, name="far")
    assert services.runner_for_token(token) is not None
    assert root.post(f"/runners/{runner.pk}/revoke").status_code == 302
    assert services.runner_for_token(token) is None
    assert AuditEvent.objects.filter(action="runner.revoke").exists()
    assert "revoked" in root.get("/runners/").content.decode()


def test_an_unknown_action_or_runner_is_404(root: Client) -> None:
    runner = Runner.objects.create(name="far", kind="runner")
    assert root.post(f"/runners/{runner.pk}/explode").status_code == 404
    assert root.post("/runners/999999/pause").status_code == 404
    assert root.get(f"/runners/{runner.pk}/pause").status_code == 405


def test_a_registration_token_is_shown_once_then_revoked(root: Client) -> None:
    response = root.post("/runners/", {"reusable": "on", "expires_in_hours": ""})
    assert response.status_code == 201
    token = RegistrationToken.objects.get()
    assert not token.single_use
    page = response.content.decode()
    assert "Your new registration token" in page
    assert token.prefix in page
    again = root.get("/runners/").content.decode()
    assert "Your new registration token" not in again
    assert root.post(f"/runners/tokens/{token.pk}/revoke").status_code == 302
    token.refresh_from_db()
    assert token.revoked_at is not None


def test_only_admins_see_the_link_in_the_menu(root: Client) -> None:
    assert 'href="/runners/"' in root.get("/").content.decode()
    staff = Client()
    staff.force_login(User.objects.create_user("staff", is_staff=True))
    assert 'href="/runners/"' not in staff.get("/").content.decode()
    assert staff.get("/runners/").status_code == 404
    assert staff.post("/runners/", {"reusable": "on"}).status_code == 404
    assert not RegistrationToken.objects.exists()
