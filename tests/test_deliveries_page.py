"""The project's webhook pages: the deliveries (the last 100, each with what came of
it, and redelivery), the webhook panel of the settings (URL, secret, what to paste into
each forge, rotation, auto-cancel) and a build's forge fields on its page. Who may open
what is in tests/test_pages_roles.py."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from django.test import Client, override_settings

from builds import services
from builds.models import Build, Membership, Project, Role, Status, WebhookDelivery
from tests.helpers import make_project, make_user
from tests.test_forges import CORPUS
from tests.test_webhooks import REPO_URL, SECRET, SHA_A, SHA_B, deliver, push_body, set_secret

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(not CORPUS.exists(), reason=f"no corpus at {CORPUS}"),
]


@pytest.fixture
def ann() -> Any:
    return make_user("ann")


@pytest.fixture
def project(ann: Any) -> Project:
    made: Project = make_project(ann, "shop")  # type: ignore[assignment]
    services.project_update(project=made, repo_url=REPO_URL)
    set_secret(made, SECRET)
    made.refresh_from_db()
    return made


def login(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def html(response: Any) -> str:
    return str(response.content.decode())


def rows(page: str) -> list[str]:
    body = page[page.index("<tbody>") : page.index("</tbody>")]
    return re.findall(r"<tr>(.*?)</tr>", body, re.S)


# ---------------------------------------------------------------------------
# The deliveries page


def test_the_deliveries_page_shows_each_outcome_newest_first(ann: Any, project: Project) -> None:
    deliver(push_body(), delivery="d-build")
    deliver(push_body(), delivery="d-build")  # the forge's redelivery: a duplicate
    ping = (CORPUS / "github/ping.json").read_bytes()
    deliver(ping, event="ping", delivery="d-ping")
    deliver(push_body(), headers={"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=0"})
    build = Build.objects.get()
    page = html(login(ann).get("/projects/shop/deliveries"))
    shown = rows(page)
    assert len(shown) == 4
    rejected, ignored, duplicate, built = shown
    assert (
        "rejected: the X-Hub-Signature-256 header is not sha256=&lt;64 hex digits&gt;" in rejected
    )
    assert "Redeliver" not in rejected  # unverified: nothing was kept to redeliver
    assert "ignored: ping: the webhook works" in ignored
    assert "<code>ping</code>" in ignored
    assert "d-ping" in ignored
    assert f'duplicate of <a href="/builds/{build.pk}/">build #1</a>' in duplicate
    assert f'<a href="/builds/{build.pk}/">build #1</a>' in built
    assert "github" in built
    assert "<code>push</code>" in built
    for row in (ignored, duplicate, built):
        assert "Redeliver" in row
    assert "it builds again, even if it built before" in page


def test_the_page_keeps_the_last_hundred(ann: Any, project: Project) -> None:
    for n in range(105):
        services.delivery_record(
            project=project, delivery_id=f"d{n}", forge="github", event="push",
            outcome="ignored", reason=f"reason {n}",
        )  # fmt: skip
    assert WebhookDelivery.objects.filter(project=project).count() == 100
    page = html(login(ann).get("/projects/shop/deliveries"))
    shown = rows(page)
    assert len(shown) == 100
    assert "reason 104" in shown[0]
    assert "reason 5" in shown[-1]
    assert "reason 4<" not in page


def test_the_deliveries_page_takes_a_fixed_number_of_queries(
    ann: Any, project: Project, django_assert_num_queries: Any
) -> None:
    for n in range(30):
        deliver(push_body(f"{n:040x}"), delivery=f"d{n}")
    client = login(ann)
    # The session, the user, the project with the role, the deliveries with their builds.
    with django_assert_num_queries(4):
        response = client.get("/projects/shop/deliveries")
    assert len(rows(html(response))) == 30


def test_a_redelivery_builds_again_as_a_new_delivery(ann: Any, project: Project) -> None:
    assert deliver(push_body(), delivery="d-1").status_code == 201
    first = WebhookDelivery.objects.get()
    client = login(ann)
    response = client.post(f"/projects/shop/deliveries/{first.pk}/redeliver")
    assert response["Location"] == "/projects/shop/deliveries"
    assert Build.objects.count() == 2  # a fresh idempotency key: it really builds again
    again = WebhookDelivery.objects.exclude(pk=first.pk).get()
    assert (again.redelivery_of_id, again.outcome, again.delivery_id) == (first.pk, "build", "d-1")
    assert bytes(again.body or b"") == bytes(first.body or b"")
    rerun = Build.objects.order_by("id").last()
    assert rerun is not None
    assert (rerun.commit, rerun.trigger, rerun.forge) == (SHA_A, "push", "github")
    assert rerun.author == ann  # who asked for it
    page = html(client.get("/projects/shop/deliveries"))
    assert "Redelivered: Build #2 queued." in page
    assert "(redelivered)" in page


def test_a_delivery_refused_for_want_of_a_repository_builds_once_redelivered(
    ann: Any, project: Project
) -> None:
    services.project_update(project=project, repo_url="")
    assert deliver(push_body()).status_code == 422
    refused = WebhookDelivery.objects.get()
    client = login(ann)
    client.post(f"/projects/shop/deliveries/{refused.pk}/redeliver")
    assert not Build.objects.exists()
    assert "Redelivered: The project has no repository URL" in html(
        client.get("/projects/shop/deliveries")
    )
    services.project_update(project=project, repo_url=REPO_URL)
    client.post(f"/projects/shop/deliveries/{refused.pk}/redeliver")
    assert Build.objects.get().commit == SHA_A


def test_only_a_verified_delivery_of_this_project_can_be_redelivered(
    ann: Any, project: Project
) -> None:
    deliver(push_body(), headers={"X-GitHub-Event": "push"})  # unsigned: rejected, no body
    unverified = WebhookDelivery.objects.get()
    other = make_project(ann, "site")
    services.project_update(project=other, repo_url=REPO_URL)  # type: ignore[arg-type]
    set_secret(other, SECRET)
    deliver(push_body(), slug="site")
    elsewhere = WebhookDelivery.objects.get(project=other)  # type: ignore[misc]
    client = login(ann)
    for url in (
        f"/projects/shop/deliveries/{unverified.pk}/redeliver",
        f"/projects/shop/deliveries/{elsewhere.pk}/redeliver",
        "/projects/shop/deliveries/99999999999999999999/redeliver",
        "/projects/shop/deliveries/1%00/redeliver",
        "/projects/sh%00op/deliveries/1/redeliver",
        "/projects/shop/deliveries/%ED%B2%80/redeliver",
    ):
        assert client.post(url).status_code == 404
    assert client.get(f"/projects/shop/deliveries/{unverified.pk}/redeliver").status_code == 405
    assert Build.objects.count() == 1  # site's own
    assert WebhookDelivery.objects.count() == 2


# ---------------------------------------------------------------------------
# The webhook panel of the settings


def test_maintainers_see_the_url_the_secret_and_what_to_paste(ann: Any, project: Project) -> None:
    mona = make_user("mona")
    services.member_add(project=project, user=mona, role=Role.MAINTAINER)  # type: ignore[arg-type]
    page = html(login(mona).get("/projects/shop/settings"))
    assert "http://testserver/hooks/shop" in page
    assert SECRET in page
    assert "Shown to maintainers only" in page
    for words in (
        "Payload URL",
        "<code>application/json</code>",
        "<strong>Pushes</strong> and <strong>Pull requests</strong>",
        "Secret token",
        "<strong>Tag push events</strong>",
        "<strong>Merge request events</strong>",
        "Target URL",
        "<code>POST</code>",
        "Gitea and Forgejo",
    ):
        assert words in page, words
    assert 'action="/projects/shop/webhook/rotate"' in page
    assert 'href="/projects/shop/deliveries"' in page
    assert 'name="auto_cancel"' in page


@override_settings(GOCI_PUBLIC_URL="https://ci.example.com")
def test_the_url_is_the_public_one_when_set(ann: Any, project: Project) -> None:
    page = html(login(ann).get("/projects/shop/settings"))
    assert '<code class="copyable">https://ci.example.com/hooks/shop</code>' in page


def test_without_a_repository_the_panel_says_to_set_it(ann: Any, project: Project) -> None:
    services.project_update(project=project, repo_url="")
    assert "Set the repository URL first" in html(login(ann).get("/projects/shop/settings"))


def test_rotating_the_secret_refuses_the_old_one(ann: Any, project: Project) -> None:
    old = services.webhook_secret(project)
    client = login(ann)
    response = client.post("/projects/shop/webhook/rotate")
    assert response["Location"] == "/projects/shop/settings#webhook"
    project.refresh_from_db()
    new = services.webhook_secret(project)
    assert new not in ("", old)
    page = html(client.get("/projects/shop/settings"))
    assert new in page
    assert "A new webhook secret was made" in page
    assert deliver(push_body(), secret=old).status_code == 401
    assert deliver(push_body(), secret=new).status_code == 201


def test_a_project_without_a_secret_offers_to_make_one(ann: Any, project: Project) -> None:
    set_secret(project, "")
    page = html(login(ann).get("/projects/shop/settings"))
    assert "the project accepts no delivery until you make one" in page
    assert "Make a secret" in page
    login(ann).post("/projects/shop/webhook/rotate")
    project.refresh_from_db()
    assert services.webhook_secret(project)


def test_auto_cancel_is_a_setting(ann: Any, project: Project) -> None:
    client = login(ann)
    page = html(client.get("/projects/shop/settings"))
    assert re.search(r'name="auto_cancel"[^>]*checked', page)
    fields = {"name": "shop", "repo_url": REPO_URL, "default_branch": "main"}
    client.post("/projects/shop/settings", {**fields, "pipeline_path": ".goci.yml"})
    project.refresh_from_db()
    assert not project.auto_cancel  # an unticked box
    deliver(push_body(SHA_A), delivery="1")
    deliver(push_body(SHA_B), delivery="2")
    assert not Build.objects.filter(status=Status.CANCELED).exists()


def test_the_project_page_links_the_deliveries_for_maintainers_only(
    ann: Any, project: Project
) -> None:
    assert 'href="/projects/shop/deliveries"' in html(login(ann).get("/projects/shop/"))
    dora = make_user("dora")
    services.member_add(project=project, user=dora, role=Role.DEVELOPER)  # type: ignore[arg-type]
    assert 'href="/projects/shop/deliveries"' not in html(login(dora).get("/projects/shop/"))


# ---------------------------------------------------------------------------
# A build's forge fields


def test_a_pull_request_build_shows_what_the_forge_told(ann: Any, project: Project) -> None:
    body = json.loads((CORPUS / "github/pull_request-opened.json").read_bytes())
    body["pull_request"]["head"]["repo"]["id"] = 7  # from a fork
    deliver(json.dumps(body).encode(), event="pull_request")
    build = Build.objects.get()
    page = html(login(ann).get(f"/builds/{build.pk}/"))
    assert "<dt>Trigger</dt><dd>pull_request</dd>" in page
    assert """<dt>From</dt><dd>GitHub <span class="muted">(a webhook's pull_request)""" in page
    assert "#2 Update the README with new information." in page
    assert "<code>changes</code> → <code>master</code>" in page
    assert "(from a fork: no secrets)" in page
    assert "<dt>Commit by</dt><dd>Codertocat</dd>" in page
    assert 'href="https://github.com/Codertocat/Hello-World/pull/2"' in page


def test_a_push_build_shows_its_branch_author_and_compare_link(ann: Any, project: Project) -> None:
    deliver(push_body())
    build = Build.objects.get()
    page = html(login(ann).get(f"/builds/{build.pk}/"))
    assert "<dt>Branch</dt><dd><code>main</code></dd>" in page
    assert "<dt>Commit by</dt><dd>Ann</dd>" in page
    assert 'href="https://github.com/acme/shop/compare/ccc...aaaaaa"' in page


def test_a_superseded_build_says_by_which(ann: Any, project: Project) -> None:
    deliver(push_body(SHA_A), delivery="1")
    deliver(push_body(SHA_B), delivery="2")
    old, new = Build.objects.order_by("id")
    page = html(login(ann).get(f"/builds/{old.pk}/"))
    assert f'superseded by <a href="/builds/{new.pk}/">#2</a>' in page
    assert "superseded by" not in html(login(ann).get(f"/builds/{new.pk}/"))


def test_a_compare_link_that_is_no_web_address_is_not_a_link(ann: Any, project: Project) -> None:
    deliver(push_body())
    Build.objects.update(compare_url="javascript:alert(1)")
    page = html(login(ann).get(f"/builds/{Build.objects.get().pk}/"))
    assert "javascript:" not in page


def test_a_non_member_cannot_see_deliveries(ann: Any, project: Project) -> None:
    eve = make_user("eve")
    assert login(eve).get("/projects/shop/deliveries").status_code == 404
    Membership.objects.create(project=project, user=eve, role=Role.DEVELOPER)
    assert login(eve).get("/projects/shop/deliveries").status_code == 403
