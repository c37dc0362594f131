"""The operator's admin: builds are searchable, steps and logs read-only, and the
cancel and rerun actions go through the services."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client

from builds.models import Build, LogChunk, Status, Step
from runners.worker import Worker
from tests.queue_helpers import make_project, submit

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def operator(client: Client) -> Client:
    root = User.objects.create_superuser("root", "root@example.com", None)
    client.force_login(root)
    return client


def test_builds_can_be_filtered_and_searched(operator: Client) -> None:
    project = make_project("web")
    submit(project, "steps: [{run: 'true'}]", ref="refs/heads/main")
    submit(project, "steps: [{run: 'true'}]", ref="refs/heads/feature-x")
    page = operator.get("/admin/builds/build/", {"q": "feature-x", "status__exact": "queued"})
    assert page.status_code == 200
    assert b"web#2" in page.content
    assert b"web#1" not in page.content


def test_steps_and_logs_are_read_only(operator: Client, tmp_path: object, settings: object) -> None:
    settings.GOCI_WORKSPACE_ROOT = str(tmp_path)  # type: ignore[attr-defined]
    build = submit(make_project(), """steps: [{name: hi, run: "echo '<b>hello</b>'"}]""")
    worker = Worker()
    try:
        worker.run_one_job()
    finally:
        worker.close()
    step = Step.objects.get(job__build=build)
    page = operator.get(f"/admin/builds/step/{step.pk}/change/")
    assert page.status_code == 200
    assert b"&lt;b&gt;hello&lt;/b&gt;" in page.content  # escaped, shown
    assert b'name="chunks-0-text"' not in page.content  # not editable
    assert operator.get("/admin/builds/build/add/").status_code == 403
    assert LogChunk.objects.count() == 1


def test_cancel_and_rerun_actions(operator: Client) -> None:
    build = submit(make_project(), "steps: [{run: 'true'}]")
    response = operator.post(
        "/admin/builds/build/", {"action": "cancel", "_selected_action": [build.pk]}
    )
    assert response.status_code == 302
    build.refresh_from_db()
    assert build.status == Status.CANCELED
    operator.post("/admin/builds/build/", {"action": "rerun", "_selected_action": [build.pk]})
    rerun = Build.objects.get(rerun_of=build)
    assert (rerun.status, rerun.trigger, rerun.number) == (Status.QUEUED, "rerun", 2)


def test_the_admin_says_goci_administration(operator: Client) -> None:
    page = operator.get("/admin/")
    assert page.status_code == 200
    assert b'<div id="site-name"><a href="/admin/">Goci administration</a></div>' in page.content
    assert b"Django administration" not in page.content


def test_staff_without_superuser_cannot_use_the_admin_or_its_actions(client: Client) -> None:
    """Model permissions would let a staff member edit memberships and so bypass the
    project roles: the admin is for superusers only, and its actions too."""
    from django.contrib.auth.models import Permission

    build = submit(make_project(), "steps: [{run: 'true'}]")
    staff = User.objects.create_user("stan", is_staff=True)
    staff.user_permissions.set(Permission.objects.all())
    client.force_login(staff)

    for url in ("/admin/", "/admin/builds/build/", "/admin/builds/membership/"):
        page = client.get(url)
        assert page.status_code == 302, url
        assert page["Location"].startswith("/admin/login/"), url
    response = client.post(
        "/admin/builds/build/", {"action": "cancel", "_selected_action": [build.pk]}
    )
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")
    build.refresh_from_db()
    assert (build.status, build.cancel_requested) == (Status.QUEUED, False)
