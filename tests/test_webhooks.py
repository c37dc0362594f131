"""POST /hooks/{slug} through the real view: every corpus delivery gives its outcome,
every bad signature, oversized body, unknown project and project without a secret is
refused with nothing built, hostile payloads are 4xx JSON, a redelivered event is a
no-op, and ten concurrent copies of one delivery make one build on PostgreSQL."""

from __future__ import annotations

import io
import json
import threading
from typing import Any

import pytest
from django.db import connection
from django.test import Client, RequestFactory

from builds import services, webhooks
from builds.forges import gitea, github
from builds.models import Build, Project, Status, Step, WebhookDelivery
from builds.secrets import encrypt
from goci.audit.models import AuditEvent
from tests.helpers import make_project, make_user
from tests.queue_helpers import require_postgres
from tests.test_forges import CORPUS, EXPECTED, INDEX, SIGNED

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(not CORPUS.exists(), reason=f"no corpus at {CORPUS}"),
]

SECRET = "webhook-secret-of-the-tests"  # noqa: S105  (a test's)
REPO_URL = "https://git.example.com/acme/shop.git"
SHA_A = "a" * 40
SHA_B = "b" * 40


def set_secret(project: Any, secret: str) -> None:
    Project.objects.filter(pk=project.pk).update(webhook_secret=encrypt(secret) if secret else "")


@pytest.fixture
def project() -> Project:
    owner = make_user("ann")
    made: Project = make_project(owner, "shop")  # type: ignore[assignment]
    services.project_update(project=made, repo_url=REPO_URL)
    set_secret(made, SECRET)
    made.refresh_from_db()
    return made


def signed(forge: str, body: bytes, event: str, delivery: str, secret: str) -> dict[str, str]:
    """The headers the forge would send with this body."""
    if forge == "github":
        return {
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": delivery,
            "X-Hub-Signature-256": github.sign(body, secret),
        }
    if forge == "gitlab":
        return {"X-Gitlab-Event": event, "Idempotency-Key": delivery, "X-Gitlab-Token": secret}
    return {
        "X-Gitea-Event": event,
        "X-Gitea-Delivery": delivery,
        "X-Gitea-Signature": gitea.sign(body, secret),
    }


def deliver(
    body: bytes,
    forge: str = "github",
    event: str = "push",
    *,
    delivery: str = "delivery-1",
    secret: str = SECRET,
    slug: str = "shop",
    headers: dict[str, str] | None = None,
    content_type: str = "application/json",
    **meta: str,
) -> Any:
    sent = signed(forge, body, event, delivery, secret) if headers is None else headers
    client = Client(raise_request_exception=False)
    return client.post(f"/hooks/{slug}", body, content_type=content_type, headers=sent, **meta)


def push_body(sha: str = SHA_A, ref: str = "refs/heads/main", message: str = "work") -> bytes:
    return json.dumps(
        {
            "ref": ref,
            "before": "c" * 40,
            "after": sha,
            "compare": f"https://github.com/acme/shop/compare/ccc...{sha[:6]}",
            "commits": [
                {"id": sha, "message": message, "author": {"name": "Ann"}, "added": ["a.txt"],
                 "modified": ["src/app.py"], "removed": []}
            ],
            "head_commit": {"id": sha, "message": message, "author": {"name": "Ann"}},
            "repository": {"clone_url": "https://github.com/acme/shop.git"},
            "sender": {"login": "octocat"},
        }
    ).encode()  # fmt: skip


def nothing_built() -> bool:
    return not Build.objects.exists()


# ---------------------------------------------------------------------------
# The corpus


@pytest.mark.parametrize("entry", INDEX, ids=[entry["file"] for entry in INDEX])
def test_every_corpus_delivery_gives_its_outcome(project: Project, entry: dict[str, Any]) -> None:
    forge, _ = entry["file"].split("/", 1)
    body = (CORPUS / entry["file"]).read_bytes()
    event = next(iter(entry["headers"].values()))
    response = deliver(body, forge, event, headers={
        **entry["headers"], **signed(forge, body, event, "corpus-1", SECRET)
    })  # fmt: skip
    kind, what = EXPECTED[entry["file"]]
    answer = response.json()
    delivery = WebhookDelivery.objects.get()
    assert bytes(delivery.body or b"") == body  # verified: kept
    assert delivery.forge == forge
    if kind == "ignore":
        assert response.status_code == (200 if what == "ping" else 202), answer
        assert what.lower() in answer["detail"].lower()
        assert delivery.outcome == WebhookDelivery.Outcome.IGNORED
        assert what in delivery.reason
        assert nothing_built()
        return
    assert response.status_code == 201, answer
    build = Build.objects.get()
    assert answer["build"] == {"id": build.pk, "number": 1, "url": f"/builds/{build.pk}/"}
    assert (delivery.outcome, delivery.build_id) == (WebhookDelivery.Outcome.BUILD, build.pk)
    assert build.trigger == what
    assert build.forge == forge
    assert build.idempotency_key == f"{forge}:corpus-1"
    assert (build.checkout, build.pipeline) == (True, "")  # read from the repository
    assert list(Step.objects.filter(job__build=build).values_list("name", flat=True)) == ["clone"]
    assert build.status == Status.QUEUED
    extract = entry["extract"]
    if what == "pull_request":
        assert build.pr_number == extract.get("number", extract.get("iid"))
        assert build.commit == extract.get("head_sha", extract.get("last_commit"))
        assert build.pr_title
        assert build.changed_files is None
    else:
        assert build.ref == extract["ref"]
        assert build.commit == (extract.get("checkout_sha") or extract["after"])
    # The pending status for the forge is queued with the build (builds/commit_status.py).
    assert build.commit_statuses.get().state == "pending"


def signed_deliveries() -> list[tuple[str, bytes, str, dict[str, str]]]:
    cases = []
    for entry in SIGNED:
        if "body" not in entry:
            continue
        body = (CORPUS / entry["body"]).read_bytes()
        if entry.get("headers"):
            raw = json.loads((CORPUS / entry["headers"]).read_text())
            headers = {k: v for k, v in raw.items() if k not in ("content-length", "content-type")}
        else:  # Gitea's: only the signature is known
            headers = {
                "X-Gitea-Event": "push",
                "X-Gitea-Delivery": "gitea-1",
                "X-Gitea-Signature": entry["check"]["x-gitea-signature"],
            }
        cases.append((entry["body"], body, entry["secret"], headers))
    return cases


SIGNED_OUTCOMES = {
    "github/signed/pull_request-opened.body.json": (201, "pull_request"),
    "github/signed/pull_request-synchronize.body.json": (201, "pull_request"),
    "github/signed/pull_request-closed-merged.body.json": (202, "pull request 'merged'"),
    "gitlab/signed/merge_request-opened.body.json": (201, "pull_request"),
    "gitea/signed/push-branch.body.json": (201, "push"),
}


SIGNED_DELIVERIES = signed_deliveries()


@pytest.mark.parametrize(
    ("name", "body", "secret", "headers"),
    SIGNED_DELIVERIES,
    ids=[name for name, *_ in SIGNED_DELIVERIES],
)
def test_every_real_signed_delivery_is_accepted_with_its_own_headers(
    project: Project, name: str, body: bytes, secret: str, headers: dict[str, str]
) -> None:
    set_secret(project, secret)
    response = deliver(body, headers=headers)
    status, what = SIGNED_OUTCOMES[name]
    assert response.status_code == status, response.json()
    if status == 201:
        assert Build.objects.get().trigger == what
    else:
        assert what in response.json()["detail"].lower()
    # The same bytes signed with another secret are refused.
    set_secret(project, secret + "-other")
    assert deliver(body, headers=headers).status_code == 401


def test_a_signed_body_that_is_no_json_is_a_400_kept_for_redelivery(project: Project) -> None:
    vector = next(entry for entry in SIGNED if "body_literal" in entry)
    set_secret(project, vector["secret"])
    body = vector["body_literal"].encode()
    headers = {
        "X-GitHub-Event": "push",
        "X-Hub-Signature-256": vector["check"]["x-hub-signature-256"],
    }
    response = deliver(body, headers=headers)
    assert response.status_code == 400
    assert response.json()["detail"] == "The body is not JSON."
    delivery = WebhookDelivery.objects.get()
    assert delivery.outcome == WebhookDelivery.Outcome.REJECTED
    assert bytes(delivery.body) == body  # the signature held
    assert nothing_built()


# ---------------------------------------------------------------------------
# Refused before the body is trusted: nothing built, nothing kept but the reason


BAD_HEADERS = {
    "wrong": {"X-GitHub-Event": "push", "X-Hub-Signature-256": github.sign(b"{}", SECRET)},
    "truncated": {"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=abc"},
    "missing": {"X-GitHub-Event": "push"},
    "empty": {"X-GitHub-Event": "push", "X-Hub-Signature-256": ""},
    "another forge's": {"X-GitHub-Event": "push", "X-Gitlab-Token": SECRET},
    "gitlab wrong token": {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": SECRET[:-1]},
    "gitlab no token": {"X-Gitlab-Event": "Push Hook"},
    "gitea wrong": {"X-Gitea-Event": "push", "X-Gitea-Signature": "0" * 64},
    "gitea with github's": {"X-Gitea-Event": "push", "X-Hub-Signature-256": "sha256=" + "0" * 64},
}


@pytest.mark.parametrize("case", sorted(BAD_HEADERS))
def test_a_bad_signature_is_401_and_builds_nothing(project: Project, case: str) -> None:
    response = deliver(push_body(), headers=BAD_HEADERS[case])
    assert response.status_code == 401
    assert response.json()["detail"].startswith("Rejected: ")
    assert nothing_built()
    delivery = WebhookDelivery.objects.get()
    assert delivery.outcome == WebhookDelivery.Outcome.REJECTED
    assert delivery.body is None  # an unverified body is never kept
    assert "x-gitlab-token" not in delivery.headers  # GitLab's token is the secret itself


def test_the_github_signature_of_gitea_is_not_enough_for_gitea(project: Project) -> None:
    """Gitea also sends X-Hub-Signature-256: its own header is the one checked."""
    body = push_body()
    headers = {"X-Gitea-Event": "push", "X-Hub-Signature-256": github.sign(body, SECRET)}
    assert deliver(body, headers=headers).status_code == 401
    assert nothing_built()


def test_a_delivery_of_no_known_forge_is_a_400(project: Project) -> None:
    response = deliver(push_body(), headers={"X-Gogs-Event": "push"})
    assert response.status_code == 400
    assert "not a delivery of GitHub, GitLab, Gitea or Forgejo" in response.json()["detail"]
    assert nothing_built()


def test_a_project_without_a_secret_accepts_nothing(project: Project) -> None:
    set_secret(project, "")
    for forge, headers in (
        ("github", {"X-GitHub-Event": "push", "X-Hub-Signature-256": github.sign(push_body(), "")}),
        ("gitlab", {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": ""}),
    ):
        response = deliver(push_body(), forge, headers=headers)
        assert response.status_code == 401
        assert "the project has no webhook secret" in response.json()["detail"]
    assert nothing_built()


@pytest.mark.parametrize("slug", ["nope", "sh%00op", "x" * 300, "%ED%B2%80", "1"])
def test_an_unknown_project_is_a_json_404(project: Project, slug: str) -> None:
    response = deliver(push_body(), slug=slug)
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert "No project has this webhook URL" in response.json()["detail"]
    assert not WebhookDelivery.objects.exists()


def test_get_is_a_json_405(project: Project) -> None:
    response = Client().get("/hooks/shop")
    assert response.status_code == 405
    assert response["Allow"] == "POST"
    assert response.json() == {"detail": "A forge delivers webhooks with POST."}


def test_no_csrf_token_is_needed(project: Project) -> None:
    client = Client(enforce_csrf_checks=True)
    body = push_body()
    headers = signed("github", body, "push", "csrf-1", SECRET)
    response = client.post("/hooks/shop", body, content_type="application/json", headers=headers)
    assert response.status_code == 201


# ---------------------------------------------------------------------------
# Size: 413 before anything is verified or parsed


def test_a_declared_length_over_25_mib_is_413_before_reading(project: Project) -> None:
    response = deliver(push_body(), CONTENT_LENGTH=str(webhooks.MAX_BODY + 1))
    assert response.status_code == 413
    assert response.json() == {"detail": "A delivery may hold at most 25 MiB."}
    assert not WebhookDelivery.objects.exists()
    assert nothing_built()


def test_a_body_over_25_mib_is_413_even_signed_and_nothing_is_parsed(project: Project) -> None:
    body = b"not json at all " + b"x" * webhooks.MAX_BODY  # parsed, it would be a 400
    response = deliver(body)
    assert response.status_code == 413
    assert not WebhookDelivery.objects.exists()
    assert nothing_built()
    exactly = b"[" + b" " * (webhooks.MAX_BODY - 2) + b"]"  # the limit itself is fine
    assert deliver(exactly).status_code == 422  # verified, parsed: not a JSON object


def test_a_body_without_a_declared_length_is_read_no_further_than_the_limit(
    project: Project,
) -> None:
    class Endless(io.RawIOBase):
        """A chunked upload that never ends, counting what is read of it."""

        taken = 0

        def readable(self) -> bool:
            return True

        def read(self, size: int = -1) -> bytes:
            size = 65536 if size < 0 else size
            self.taken += size
            return b"x" * size

    request = RequestFactory().post(
        "/hooks/shop", b"", content_type="application/json", headers={"X-GitHub-Event": "push"}
    )
    request.META.pop("CONTENT_LENGTH", None)  # chunked: no length declared
    stream = Endless()
    request._stream = stream  # type: ignore[attr-defined]
    response = webhooks.receive(request, "shop")
    assert response.status_code == 413
    assert stream.taken == webhooks.MAX_BODY + 1
    assert not WebhookDelivery.objects.exists()


@pytest.mark.parametrize("length", ["abc", "-1", "1e3", "\uff11\uff12"])
def test_a_content_length_that_is_no_number_is_a_400(project: Project, length: str) -> None:
    assert deliver(push_body(), CONTENT_LENGTH=length).status_code == 400
    assert nothing_built()


# ---------------------------------------------------------------------------
# Builds, duplicates, skips


def test_a_push_builds_its_commit_with_what_the_forge_told(project: Project) -> None:
    response = deliver(push_body(), delivery="72d3162e-cc78-11e3-81ab-4c9367dc0958")
    assert response.status_code == 201
    assert response.json()["detail"] == "Build #1 queued."
    build = Build.objects.get()
    assert (build.trigger, build.ref, build.commit, build.message) == (
        "push",
        "refs/heads/main",
        SHA_A,
        "work",
    )
    assert (build.forge, build.commit_author, build.fork) == ("github", "Ann", False)
    assert build.compare_url == "https://github.com/acme/shop/compare/ccc...aaaaaa"
    assert build.changed_files == ["a.txt", "src/app.py"]
    assert build.author is None
    # The audit log says it came through a webhook, caused by the forge's account.
    event = AuditEvent.objects.get(action="build.run")
    assert (event.via, event.actor_id, event.actor_name) == ("webhook", None, "octocat (github)")
    assert event.details["commit"] == SHA_A


def test_a_redelivery_of_the_same_event_builds_nothing_new(project: Project) -> None:
    first = deliver(push_body(), delivery="same")
    again = deliver(push_body(), delivery="same")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["detail"] == "Delivered before: build #1 (a redelivery builds nothing new)."
    assert again.json()["build"]["id"] == first.json()["build"]["id"]
    assert Build.objects.count() == 1
    outcomes = list(WebhookDelivery.objects.order_by("id").values_list("outcome", "build_id"))
    build = Build.objects.get().pk
    assert outcomes == [("build", build), ("duplicate", build)]
    # Another delivery id is another event.
    assert deliver(push_body(SHA_B), delivery="other").status_code == 201


def test_one_delivery_id_on_two_forges_or_projects_is_two_events(project: Project) -> None:
    other = make_project(make_user("bob"), "site")
    services.project_update(project=other, repo_url=REPO_URL)  # type: ignore[arg-type]
    set_secret(other, SECRET)
    assert deliver(push_body(), delivery="x").status_code == 201
    assert deliver(push_body(), delivery="x", slug="site").status_code == 201
    body = push_body()
    assert deliver(body, "gitea", "push", delivery="x").status_code == 201
    assert Build.objects.count() == 3


@pytest.mark.parametrize("marker", ["[skip ci]", "[ci skip]", "[SKIP CI]"])
def test_skip_ci_in_the_head_commit_message_builds_nothing_and_says_so(
    project: Project, marker: str
) -> None:
    response = deliver(push_body(message=f"docs: typo {marker}"))
    assert response.status_code == 202
    assert "in the head commit's message: no build" in response.json()["detail"]
    assert nothing_built()
    delivery = WebhookDelivery.objects.get()
    assert delivery.outcome == WebhookDelivery.Outcome.IGNORED
    assert "no build" in delivery.reason


def test_a_project_without_a_repository_refuses_with_a_422_saying_what_to_do(
    project: Project,
) -> None:
    services.project_update(project=project, repo_url="")
    response = deliver(push_body())
    assert response.status_code == 422
    assert "sets it in the project's settings, then redelivers" in response.json()["detail"]
    assert nothing_built()
    delivery = WebhookDelivery.objects.get()
    assert delivery.outcome == WebhookDelivery.Outcome.REJECTED
    assert delivery.body is not None  # verified: it can be redelivered once the URL is set
    project.refresh_from_db()
    assert project.repo_url == ""  # the payload's clone URL never fills it


def test_a_pull_request_from_a_fork_is_a_fork_build(project: Project) -> None:
    body = json.loads((CORPUS / "github/pull_request-opened.json").read_bytes())
    body["pull_request"]["head"]["repo"]["id"] = 424242
    response = deliver(json.dumps(body).encode(), event="pull_request")
    assert response.status_code == 201
    build = Build.objects.get()
    assert build.fork
    assert (build.pr_number, build.source_branch, build.target_branch) == (2, "changes", "master")
    assert build.ref == "refs/pull/2/head"
    assert build.base_commit == "f95f852bd8fca8fcc58a9a2d6c842781e32a215e"


def test_a_new_push_supersedes_the_older_builds_of_its_branch(project: Project) -> None:
    assert deliver(push_body(SHA_A), delivery="1").status_code == 201
    assert deliver(push_body(SHA_B), delivery="2").status_code == 201
    old, new = Build.objects.order_by("id")
    assert (old.status, old.superseded_by_id) == (Status.CANCELED, new.pk)
    assert new.status == Status.QUEUED
    # Unless the project turns it off.
    services.project_update(project=project, auto_cancel=False)
    assert deliver(push_body("c" * 40), delivery="3").status_code == 201
    new.refresh_from_db()
    assert new.status == Status.QUEUED


def test_github_may_send_the_payload_form_encoded(project: Project) -> None:
    from urllib.parse import urlencode

    body = urlencode({"payload": push_body().decode()}).encode()
    response = deliver(body, content_type="application/x-www-form-urlencoded")
    assert response.status_code == 201
    assert Build.objects.get().commit == SHA_A


# ---------------------------------------------------------------------------
# Hostile payloads: 4xx JSON, never a 500, nothing built (CI runs this on PostgreSQL too)


def pr(**changes: Any) -> bytes:
    body = json.loads((CORPUS / "github/pull_request-opened.json").read_bytes())
    for path, value in changes.items():
        *parents, last = path.split("__")
        node = body
        for name in parents:
            node = node[name]
        node[last] = value
    return json.dumps(body).encode()


HOSTILE = {
    "nul in the title": pr(pull_request__title="a\x00b"),
    "surrogate in the head ref": pr(pull_request__head__ref="\ud800"),
    "huge number": pr(pull_request__number=10**30),
    "number too big for the database": pr(pull_request__number=2**31),
    "10 MB title": pr(pull_request__title="x" * 10_000_000),
    "10 MB head ref": pr(pull_request__head__ref="x" * 10_000_000),
    "sha that is no sha": pr(pull_request__head__sha="main; rm -rf /"),
    "list for an object": pr(pull_request__head=["x"]),
    "nul in the action": pr(action="opened\x00"),
    "no json": b"\xff\xfe garbage",
    "broken utf-8": b'{"action": "\xed\xb2\x80"}',
    "deep nesting": b"[" * 100_000 + b"]" * 100_000,
    "digits past python's limit": b'{"number": ' + b"9" * 5000 + b"}",
    "no object": b"[1, 2]",
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_payload_is_a_4xx_in_json_and_builds_nothing(project: Project, case: str) -> None:
    response = deliver(HOSTILE[case], event="pull_request")
    assert 400 <= response.status_code < 500, response.content[:300]
    assert "detail" in response.json()
    assert nothing_built()
    delivery = WebhookDelivery.objects.get()
    for value in (delivery.reason, delivery.event, delivery.delivery_id):
        assert "\x00" not in value
        value.encode()


@pytest.mark.parametrize(
    "value",
    ["push\x00", "\udc80", "x" * 10_000_000, "9" * 5000],
    ids=["nul", "surrogate", "10mb", "digits"],
)
def test_hostile_event_and_delivery_headers_never_500(project: Project, value: str) -> None:
    body = push_body()
    headers = {**signed("github", body, "push", "d", SECRET), "X-GitHub-Delivery": value}
    response = deliver(body, headers=headers)
    assert response.status_code == 201
    assert Build.objects.get().idempotency_key.startswith("github:")
    assert len(Build.objects.get().idempotency_key) <= 200
    headers["X-GitHub-Event"] = value
    response = deliver(body, headers=headers)
    assert response.status_code == 202
    assert Build.objects.count() == 1
    for delivery in WebhookDelivery.objects.all():
        for text in (delivery.event, delivery.delivery_id, *delivery.headers.values()):
            assert "\x00" not in text
            text.encode()


# ---------------------------------------------------------------------------
# Ten copies at once (PostgreSQL: real row locks)


@pytest.mark.django_db(transaction=True)
def test_ten_concurrent_copies_of_one_delivery_make_exactly_one_build() -> None:
    require_postgres()
    owner = make_user("ann")
    made = make_project(owner, "shop")
    services.project_update(project=made, repo_url=REPO_URL)  # type: ignore[arg-type]
    set_secret(made, SECRET)
    body = push_body()
    barrier = threading.Barrier(10)
    statuses: list[int] = []
    errors: list[BaseException] = []

    def send() -> None:
        try:
            barrier.wait(timeout=10)
            statuses.append(deliver(body, delivery="race-1").status_code)
        except BaseException as exc:  # noqa: BLE001  (reported by the main thread)
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=send) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert sorted(statuses) == [200] * 9 + [201]
    build = Build.objects.get()
    outcomes = sorted(WebhookDelivery.objects.values_list("outcome", "build_id"))
    assert outcomes == [("build", build.pk)] + [("duplicate", build.pk)] * 9
    assert AuditEvent.objects.filter(action="build.run").count() == 1
