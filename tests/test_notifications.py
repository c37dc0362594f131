"""Build and deployment news (builds/notifications.py), against a recording HTTP server
on 127.0.0.1 that plays a generic webhook receiver, Slack's incoming webhooks and
Telegram's Bot API, and Django's locmem email backend: what reaches each, the `when`
rules, retries and refusals, and that credentials never show."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.core import mail
from django.db import transaction
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from builds import notifications, services
from builds.models import (
    Build,
    Deployment,
    Environment,
    Notification,
    NotificationTarget,
    Project,
    Role,
    Status,
)
from builds.notifications import (
    MAX_ATTEMPTS,
    NotificationSender,
    notification_target_create,
    queue_deployment,
)
from goci.audit.models import AuditEvent
from runners import queue
from runners.queue import job_claim
from tests.helpers import api_call, make_token, make_user
from tests.http_recorder import Recorder, http_recorder
from tests.queue_helpers import make_project, submit, wait_for

PUBLIC = "https://ci.example.com"
PIPELINE = "steps: [{name: hello, run: 'echo hello'}]"
SHA = "0123456789abcdef0123456789abcdef01234567"
# Test values, each unique enough to be searched for wherever it must not show.
HMAC_KEY = "hmac-key-4c1d9e"
SLACK_PATH = "/services/T000/B000/slacksecret7f3a"
BOT_TOKEN = "123456:AAbotsecretZZ9yx8wv7ut6sr5qp4on3"  # noqa: S105
CHAT = "-1001234567"


Receiver = Recorder


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    # It echoes the path it was sent to, as a careless server might: the bot token is in it.
    with http_recorder(200, lambda status, path: {"ok": status == 200, "path": path}) as running:
        yield running


@pytest.fixture(autouse=True)
def _settings(settings: Any, receiver: Receiver) -> None:
    settings.GOCI_CLONE_ALLOWED_HOSTS = ["127.0.0.1"]
    settings.GOCI_PUBLIC_URL = PUBLIC
    settings.GOCI_TELEGRAM_API = receiver.base
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"


def webhook(project: Project, receiver: Receiver, when: str = "always", **extra: Any) -> Any:
    return notification_target_create(
        project=project,
        name=extra.pop("name", "hook"),
        kind="webhook",
        url=f"{receiver.base}/goci",
        credentials={"secret": HMAC_KEY},
        when=when,
        **extra,
    )


def finished(project: Project, status: str, ref: str = "main", **fields: Any) -> Build:
    """A build of the project ended as `status`, as a worker ends it."""
    build = submit(project, PIPELINE, ref=ref, commit=SHA, **fields)
    if status == Status.CANCELED:
        services.build_cancel(build=build)
    else:
        job = job_claim(worker="test")
        assert job is not None
        assert job.build_id == build.pk
        queue.job_finish(job_id=job.pk, attempt=job.attempt, status=status)
    build.refresh_from_db()
    return build


def send_all() -> int:
    return NotificationSender().send_due()


def rows() -> list[Notification]:
    return list(Notification.objects.order_by("pk"))


def due_now() -> None:
    """Time moved on: every retry is due."""
    Notification.objects.update(next_attempt_at=timezone.now())


@pytest.fixture
def shop(db: None) -> Project:
    return make_project("shop", "ann")


# -- what reaches each kind -----------------------------------------------------------


def test_a_webhook_gets_the_json_signed_with_hmac_sha256(shop: Project, receiver: Receiver) -> None:
    webhook(shop, receiver)
    build = finished(shop, Status.FAILURE, message="Fix the cart\n\nlong text")

    assert send_all() == 1

    (call,) = receiver.calls
    assert call.path == "/goci"
    expected = hmac.new(HMAC_KEY.encode(), call.raw, hashlib.sha256).hexdigest()
    assert call.headers["X-Goci-Signature"] == f"sha256={expected}"
    assert call.headers["X-Goci-Event"] == "build"
    assert call.headers["Content-Type"] == "application/json"
    body = call.body
    assert body["event"] == "build"
    assert body["project"] == "shop"
    assert body["number"] == build.number
    assert body["status"] == "failure"
    assert body["branch"] == "main"
    assert body["ref"] == "main"
    assert body["commit"] == SHA
    assert body["message"] == "Fix the cart"
    assert body["trigger"] == "api"
    assert body["url"] == PUBLIC + reverse("builds:build", args=[build.pk])
    assert isinstance(body["duration"], float)
    assert body["duration"] >= 0
    (row,) = rows()
    assert row.sent_at is not None
    assert row.attempts == 1
    assert row.last_error == ""
    assert send_all() == 0  # sent once


def test_the_author_is_the_user_or_else_the_commit_author(
    shop: Project, receiver: Receiver
) -> None:
    webhook(shop, receiver)
    ann = shop.membership_set.get().user  # type: ignore[attr-defined]
    finished(shop, Status.FAILURE, author=ann)
    finished(shop, Status.FAILURE, origin={"commit_author": "Grace Hopper"})
    send_all()
    assert [call.body["author"] for call in receiver.calls] == ["ann", "Grace Hopper"]


def test_slack_gets_text_with_the_facts_and_the_link(shop: Project, receiver: Receiver) -> None:
    notification_target_create(
        project=shop,
        name="team",
        kind="slack",
        credentials={"url": receiver.base + SLACK_PATH},
        when="always",
    )
    build = finished(shop, Status.SUCCESS, ref="refs/heads/main")
    send_all()
    (call,) = receiver.calls
    assert call.path == SLACK_PATH
    text = call.body["text"]
    assert text.startswith(f"shop #{build.number} succeeded on main\n")
    assert f"commit {SHA[:10]}" in text
    assert f"{PUBLIC}/builds/{build.pk}/" in text


def test_telegram_gets_send_message_with_the_chat(shop: Project, receiver: Receiver) -> None:
    notification_target_create(
        project=shop,
        name="phones",
        kind="telegram",
        credentials={"token": BOT_TOKEN, "chat_id": CHAT},
        when="failures",
    )
    build = finished(shop, Status.ERROR)
    send_all()
    (call,) = receiver.calls
    assert call.path == f"/bot{BOT_TOKEN}/sendMessage"
    assert call.body["chat_id"] == CHAT
    assert call.body["text"].startswith(f"shop #{build.number} could not run on main")


def test_email_goes_through_the_email_backend(shop: Project) -> None:
    notification_target_create(
        project=shop,
        name="leads",
        kind="email",
        addresses=["lead@example.com", "ops@example.com"],
        when="failures",
    )
    build = finished(shop, Status.FAILURE)
    send_all()
    (message,) = mail.outbox
    assert message.to == ["lead@example.com", "ops@example.com"]
    assert message.subject == f"[Goci] shop #{build.number} failed on main"
    assert f"{PUBLIC}/builds/{build.pk}/" in message.body
    assert rows()[0].sent_at is not None


# -- when ------------------------------------------------------------------------------

# Builds of main (and one of dev at the end), and what each rule sends of them.
SEQUENCE = [
    (Status.FAILURE, "main"),
    (Status.SUCCESS, "main"),  # fixed
    (Status.SUCCESS, "main"),
    (Status.ERROR, "main"),
    (Status.CANCELED, "main"),  # passed over when looking back
    (Status.SUCCESS, "main"),  # fixed: the error before the canceled build
    (Status.SUCCESS, "dev"),  # dev never failed
]
EXPECTED = {
    "always": [(1, "build"), (2, "fixed"), (3, "build"), (4, "build"), (5, "build"),
               (6, "fixed"), (7, "build")],
    "failures": [(1, "build"), (4, "build")],
    "changes": [(1, "build"), (2, "fixed"), (4, "build"), (6, "fixed")],
    "never": [],
}  # fmt: skip


@pytest.mark.parametrize("when", sorted(EXPECTED))
def test_each_when_rule_queues_what_it_says(shop: Project, receiver: Receiver, when: str) -> None:
    target = webhook(shop, receiver, when=when)
    webhook(shop, receiver, when="always", name="off", enabled=False)
    for status, ref in SEQUENCE:
        finished(shop, status, ref=ref)
    queued = Notification.objects.order_by("build__number")
    assert [(n.build.number, n.event) for n in queued] == EXPECTED[when]
    assert all(n.target_id == target.pk for n in queued)
    send_all()
    assert [call.headers["X-Goci-Event"] for call in receiver.calls] == [
        event for _, event in EXPECTED[when]
    ]


def test_deployments_go_to_targets_that_want_them(shop: Project, receiver: Receiver) -> None:
    webhook(shop, receiver, when="never", name="deploys")
    webhook(shop, receiver, when="always", name="builds only", deployments=False)
    build = finished(shop, Status.SUCCESS)
    Notification.objects.all().delete()
    environment = Environment.objects.create(
        project=shop, name="production", url="https://shop.example.com"
    )
    deployment = Deployment.objects.create(
        environment=environment, build=build, state=Deployment.State.SUCCESS
    )
    with transaction.atomic():
        queue_deployment(deployment)
    send_all()
    (call,) = receiver.calls
    assert call.headers["X-Goci-Event"] == "deployment"
    assert call.body["environment"] == "production"
    assert call.body["environment_url"] == "https://shop.example.com"
    assert call.body["deployment_status"] == "success"
    assert call.body["number"] == build.number
    assert rows()[0].target.name == "deploys"
    assert notifications.headline(call.body) == f"shop #{build.number} deployed to production"


# -- retries and refusals ----------------------------------------------------------------


def test_a_5xx_is_retried_with_backoff_and_then_delivered(
    shop: Project, receiver: Receiver
) -> None:
    receiver.answers = [500]
    webhook(shop, receiver)
    finished(shop, Status.FAILURE)

    assert send_all() == 1
    (row,) = rows()
    assert row.sent_at is None
    assert not row.given_up
    assert "answered 500" in row.last_error
    assert row.next_attempt_at > timezone.now()
    assert notifications.delivery_state(row) == "retrying"
    assert send_all() == 0  # not due yet

    due_now()
    assert send_all() == 1
    (row,) = rows()
    assert row.sent_at is not None
    assert row.attempts == 2
    assert row.last_error == ""
    assert len(receiver.calls) == 2
    assert receiver.calls[0].raw == receiver.calls[1].raw  # the same message


def test_a_4xx_gives_up_at_once_and_says_why(shop: Project, receiver: Receiver) -> None:
    receiver.answers = [404]
    webhook(shop, receiver)
    finished(shop, Status.FAILURE)
    send_all()
    due_now()
    assert send_all() == 0
    (row,) = rows()
    assert row.given_up
    assert row.attempts == 1
    assert "answered 404" in row.last_error
    assert "check the target's URL" in row.last_error
    assert "GOCI_FORGE_TOKEN" not in row.last_error
    assert len(receiver.calls) == 1


def test_it_gives_up_after_max_attempts(shop: Project, receiver: Receiver) -> None:
    receiver.answers = [503] * MAX_ATTEMPTS
    webhook(shop, receiver)
    finished(shop, Status.FAILURE)
    for _ in range(MAX_ATTEMPTS):
        due_now()
        assert send_all() == 1
    (row,) = rows()
    assert row.given_up
    assert row.last_error.startswith(f"gave up after {MAX_ATTEMPTS} attempts")
    due_now()
    assert send_all() == 0


def test_an_unreachable_target_never_delays_nor_fails_the_build(shop: Project) -> None:
    notification_target_create(
        project=shop,
        name="nowhere",
        kind="webhook",
        url="http://127.0.0.1:9/goci",  # discard: nothing listens
        credentials={"secret": HMAC_KEY},
        when="always",
    )
    build = finished(shop, Status.SUCCESS)
    assert build.status == Status.SUCCESS
    send_all()
    (row,) = rows()
    assert "could not connect" in row.last_error
    assert not row.given_up


def test_a_target_at_an_internal_address_is_refused_unless_allowed(
    shop: Project, receiver: Receiver, settings: Any
) -> None:
    settings.GOCI_CLONE_ALLOWED_HOSTS = []
    port = receiver.server.server_address[1]
    notification_target_create(
        project=shop,
        name="inside",
        kind="webhook",
        url=f"https://127.0.0.1:{port}/goci",
        credentials={"secret": HMAC_KEY},
        when="always",
    )
    notification_target_create(
        project=shop,
        name="metadata",
        kind="slack",
        credentials={"url": "https://169.254.169.254/latest/meta-data/"},
        when="always",
    )
    finished(shop, Status.FAILURE)
    send_all()
    assert receiver.calls == []
    for row in rows():
        assert row.given_up
        assert "refused" in row.last_error
        assert row.last_error.startswith("the target's address is refused: ")
        assert "GOCI_CLONE_ALLOWED_HOSTS" in row.last_error or "metadata" in row.last_error


def test_plain_http_needs_the_host_listed(shop: Project, settings: Any) -> None:
    settings.GOCI_CLONE_ALLOWED_HOSTS = []
    with pytest.raises(services.InvalidRequest, match="http://, which goes in clear text"):
        notification_target_create(
            project=shop,
            name="plain",
            kind="webhook",
            url="http://hooks.example.com/goci",
            credentials={"secret": HMAC_KEY},
        )


def test_a_credential_echoed_in_an_error_is_redacted(shop: Project, receiver: Receiver) -> None:
    receiver.answers = [401]
    notification_target_create(
        project=shop,
        name="phones",
        kind="telegram",
        credentials={"token": BOT_TOKEN, "chat_id": CHAT},
        when="always",
    )
    finished(shop, Status.FAILURE)
    send_all()
    (row,) = rows()
    assert row.given_up
    assert "/bot[redacted]/sendMessage" in row.last_error  # the server echoed its path
    assert BOT_TOKEN not in row.last_error


@pytest.mark.django_db(transaction=True)
def test_the_sender_thread_is_woken_when_a_build_finishes(receiver: Receiver) -> None:
    project = make_project("shop", "ann")
    webhook(project, receiver)
    sender = NotificationSender(poll=30)
    sender.start()
    try:
        finished(project, Status.FAILURE)
        wait_for(lambda: len(receiver.calls) == 1, 5, "the notification")
        wait_for(lambda: rows()[0].sent_at is not None, 5, "the row marked sent")
    finally:
        sender.stop()


# -- targets: checks, API, page, audit ----------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "fields", "words"),
    [
        ("slack", {}, "needs its credential 'url'"),
        ("telegram", {"credentials": {"token": "nope", "chat_id": CHAT}}, "not a Telegram bot"),
        ("telegram", {"credentials": {"token": BOT_TOKEN, "chat_id": "x y"}}, "chat_id"),
        ("webhook", {"credentials": {"secret": HMAC_KEY}}, "needs the URL"),
        ("webhook", {"url": "ftp://x.example.com/", "credentials": {"secret": HMAC_KEY}}, "https"),
        ("webhook", {"url": "https://a:b@x.example.com/", "credentials": {"secret": "12345678"}},
         "user name or password"),
        ("webhook", {"url": "https://x.example.com/", "credentials": {"secret": "short"}},
         "at least 8"),
        ("email", {}, "at least one address"),
        ("email", {"addresses": ["not-an-address"]}, "is not an email address"),
        ("email", {"addresses": ["a@example.com"], "credentials": {"secret": "abcdefgh"}},
         "has no credential 'secret'"),
        ("slack", {"url": "https://x.example.com/", "credentials": {"url": "https://h.example/"}},
         "has no URL"),
        ("pager", {}, "kind must be one of"),
    ],
)  # fmt: skip
def test_a_target_with_a_problem_is_refused_saying_what(
    shop: Project, kind: str, fields: dict[str, Any], words: str
) -> None:
    with pytest.raises(services.InvalidRequest, match=words):
        notification_target_create(project=shop, name="t", kind=kind, **fields)
    assert not NotificationTarget.objects.exists()


@pytest.fixture
def maintainer(shop: Project) -> Any:
    mae = make_user("mae")
    services.member_add(project=shop, user=mae, role=Role.MAINTAINER)  # type: ignore[arg-type]
    return mae


def test_the_api_makes_lists_changes_and_deletes_targets_never_showing_credentials(
    shop: Project, receiver: Receiver, maintainer: Any
) -> None:
    token = make_token(maintainer)
    url = "/api/projects/shop/notifications"
    body = {
        "name": "phones",
        "kind": "telegram",
        "credentials": {"token": BOT_TOKEN, "chat_id": CHAT},
        "when": "failures",
    }
    created = api_call("post", url, token, body)
    assert created.status_code == 201, created.content
    answer = created.json()
    assert answer["credentials_set"] == ["chat_id", "token"]
    assert answer["when"] == "failures"
    assert api_call("post", url, token, body).status_code == 409

    target_id = answer["id"]
    changed = api_call(
        "patch", f"{url}/{target_id}", token, {"credentials": {"chat_id": "@goci_news"}}
    )
    assert changed.status_code == 200, changed.content
    assert changed.json()["credentials_set"] == ["chat_id", "token"]

    listed = api_call("get", url, token)
    assert [t["name"] for t in listed.json()] == ["phones"]
    finished(shop, Status.FAILURE)
    send_all()
    (call,) = receiver.calls
    assert call.path == f"/bot{BOT_TOKEN}/sendMessage"  # the token was kept
    assert call.body["chat_id"] == "@goci_news"
    # At rest, the token and the chat are only in the encrypted credentials.
    rows = [*NotificationTarget.objects.values(), *Notification.objects.values()]
    stored = json.dumps(rows, default=str)
    assert BOT_TOKEN not in stored
    assert "goci_news" not in stored

    deliveries = api_call("get", f"{url}/deliveries", token)
    assert deliveries.status_code == 200
    (delivery,) = deliveries.json()
    assert delivery["state"] == "sent"
    assert delivery["target"] == "phones"
    assert delivery["kind"] == "telegram"
    assert delivery["event"] == "build"
    assert delivery["last_error"] == ""

    for response in (created, changed, listed, deliveries):
        text = response.content.decode()
        assert BOT_TOKEN not in text
        assert "goci_news" not in text
    assert api_call("delete", f"{url}/{target_id}", token).status_code == 204
    assert not NotificationTarget.objects.exists()
    assert not Notification.objects.exists()
    actions = list(AuditEvent.objects.filter(action__startswith="notification.").values_list(
        "action", flat=True).order_by("pk"))  # fmt: skip
    assert actions == ["notification.create", "notification.update", "notification.delete"]
    audit = json.dumps(list(AuditEvent.objects.values("details")))
    assert BOT_TOKEN not in audit
    assert "goci_news" not in audit
    assert CHAT not in audit


def test_another_projects_target_is_not_found(
    shop: Project, receiver: Receiver, maintainer: Any
) -> None:
    other = make_project("other", "olga")
    target = webhook(other, receiver)
    token = make_token(maintainer)
    url = f"/api/projects/shop/notifications/{target.pk}"
    assert api_call("patch", url, token, {"enabled": False}).status_code == 404
    assert api_call("delete", url, token).status_code == 404
    assert api_call("get", "/api/projects/other/notifications", token).status_code == 404
    client = Client()
    client.force_login(maintainer)
    page = client.post(f"/projects/shop/notifications/{target.pk}/delete")
    assert page.status_code == 404
    assert NotificationTarget.objects.get().enabled


HOSTILE = [
    ("post", "", {"name": "a\x00b", "kind": "email", "addresses": ["a@example.com"]}),
    ("post", "", {"name": "a\udc80b", "kind": "email", "addresses": ["a@example.com"]}),
    ("post", "", {"name": "x" * 101, "kind": "email", "addresses": ["a@example.com"]}),
    ("post", "", {"name": "tab\there", "kind": "email", "addresses": ["a@example.com"]}),
    ("post", "", {"name": "a", "kind": "email", "addresses": ["a\x00@example.com"]}),
    ("post", "", {"name": "a", "kind": "email", "addresses": ["a@example.com"] * 21}),
    ("post", "", {"name": "a", "kind": "email", "addresses": "a@example.com"}),
    ("post", "", {"name": "a", "kind": "webhook", "url": "https://x.example/\x00",
                  "credentials": {"secret": HMAC_KEY}}),
    ("post", "", {"name": "a", "kind": "webhook", "url": "https://x.example/",
                  "credentials": {"secret": "a\udc80bcdefghij"}}),
    ("post", "", {"name": "a", "kind": "webhook", "url": "https://x.example/",
                  "credentials": {"secret": "x" * 5000}}),
    ("post", "", {"name": "a", "kind": "webhook", "url": "https://x.example:99999999999/",
                  "credentials": {"secret": HMAC_KEY}}),
    ("post", "", {"name": "a", "kind": "webhook", "url": "https://[::1/",
                  "credentials": {"secret": HMAC_KEY}}),
    ("post", "", {"name": "a", "kind": "slack", "credentials": {"url": "x", "extra": "y"}}),
    ("post", "", {"name": "a", "kind": "telegram", "credentials": {"token": 10**30}}),
    ("post", "", {"name": "a", "kind": "email", "addresses": ["a@example.com"], "when": 1}),
    ("post", "", {"name": "a", "kind": "email", "addresses": ["a@example.com"], "id": 5}),
    ("post", "", {"name": "x" * 10_000_000, "kind": "email"}),
    ("patch", "/{target}", {"name": "a\x00"}),
    ("patch", "/{target}", {"kind": "slack"}),
    ("patch", "/{target}", {"url": "https://x.example/", "credentials": {"url": "x"}}),
    ("patch", "/{target}", {"name": "x" * 10_000_000}),
    ("patch", "/" + "9" * 30, {"name": "b"}),
    ("delete", "/" + "9" * 30, None),
    ("delete", "/-1", None),
    ("get", "/deliveries?x=%00", None),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "body"), HOSTILE)
def test_hostile_input_to_the_api_is_4xx_in_json_and_changes_nothing(
    shop: Project, maintainer: Any, method: str, path: str, body: Any
) -> None:
    target = notification_target_create(
        project=shop, name="leads", kind="email", addresses=["lead@example.com"]
    )
    before = list(NotificationTarget.objects.values())
    url = "/api/projects/shop/notifications" + path.format(target=target.pk)

    response = api_call(method, url, make_token(maintainer), body)

    if method == "get":  # an unknown query parameter is ignored
        assert response.status_code == 200
    else:
        assert 400 <= response.status_code < 500, response.content
        assert response["Content-Type"].startswith("application/json")
        assert response.json()["detail"]
    assert list(NotificationTarget.objects.values()) == before


def test_the_page_lists_adds_and_deletes_targets_never_showing_credentials(
    shop: Project, receiver: Receiver, maintainer: Any
) -> None:
    client = Client()
    client.force_login(maintainer)
    url = "/projects/shop/notifications"
    form = {
        "name": "team",
        "kind": "slack",
        "when": "changes",
        "deployments": "on",
        "enabled": "on",
        "slack_url": receiver.base + SLACK_PATH,
        "secret": "ignored: another kind's field",
    }
    assert client.post(url, form).status_code == 302
    missing = client.post(url, {**form, "name": "other", "slack_url": ""})
    assert missing.status_code == 200
    assert "needs its credential" in missing.content.decode()
    taken = client.post(url, form)
    assert "has a target named" in taken.content.decode()
    receiver.answers = [500]
    finished(shop, Status.FAILURE)
    send_all()

    page = client.get(url)
    text = page.content.decode()
    assert page.status_code == 200
    assert "team" in text
    assert "url: set" in text
    assert "retrying at" in text
    assert "answered 500" in text
    for response in (page, missing, taken):
        assert "slacksecret7f3a" not in response.content.decode()

    target = NotificationTarget.objects.get()
    assert notifications.credentials_set(target) == ["url"]
    deleted = client.post(f"{url}/{target.pk}/delete")
    assert deleted.status_code == 302
    assert not NotificationTarget.objects.exists()
    audit = json.dumps(list(AuditEvent.objects.values("details")))
    assert "slacksecret7f3a" not in audit


def test_the_settings_page_links_to_notifications(shop: Project, maintainer: Any) -> None:
    client = Client()
    client.force_login(maintainer)
    page = client.get("/projects/shop/settings").content.decode()
    assert 'href="/projects/shop/notifications"' in page


def test_a_disabled_target_gives_up_what_it_had_queued(shop: Project, receiver: Receiver) -> None:
    target = webhook(shop, receiver)
    finished(shop, Status.FAILURE)
    notifications.notification_target_update(target=target, enabled=False)
    send_all()
    assert receiver.calls == []
    (row,) = rows()
    assert row.given_up
    assert row.last_error == "the target was disabled"


def test_durations_read_as_people_say_them() -> None:
    assert notifications.duration_words(5.4) == "5s"
    assert notifications.duration_words(65) == "1m 5s"
    assert notifications.duration_words(3 * 3600 + 120) == "3h 2m"


def test_a_row_claimed_by_a_sender_is_not_claimed_again(shop: Project, receiver: Receiver) -> None:
    webhook(shop, receiver)
    finished(shop, Status.FAILURE)
    first = notifications.claim()
    assert first is not None
    assert notifications.claim() is None  # in flight: CLAIM_LEASE ahead
    assert first.next_attempt_at > timezone.now() + timedelta(minutes=10)
