"""A page that is not there, or of a project one is not a member of: the same 404
page, in Goci's layout, that tells the two apart for no one."""

from __future__ import annotations

import pytest
from django.test import Client

from tests.helpers import make_project, make_user
from tests.queue_helpers import submit

pytestmark = pytest.mark.django_db


def test_a_missing_page_and_another_tenant_s_build_get_the_same_404_page() -> None:
    build = submit(make_project(make_user("olivia"), "shop"), "steps: [{run: 'true'}]")  # type: ignore[arg-type]
    client = Client()
    client.force_login(make_user("mallory"))
    answers = [client.get(url) for url in (f"/builds/{build.pk}/", "/builds/999999/", "/nowhere")]
    assert [a.status_code for a in answers] == [404, 404, 404]
    for answer in answers:
        page = answer.content.decode()
        assert "<h1>Not found</h1>" in page
        assert "Signed in as" in page  # Goci's layout, not the server's bare page
        assert "shop" not in page
