"""Build and deployment news: a project's notification targets, the Notification
outbox, and its sender. docs/notifications.md.

queue_build (from services.build_settle) and queue_deployment write one Notification
per target that wants the news, in the transaction that finishes the build or the
deployment; a NotificationSender in each worker process (and in `goci up`) sends them,
never a build's own code path, so a chat service that is down or slow cannot hold up
or fail a build.

The sender is the commit status sender's twin (builds/commit_status.py) and reuses its
parts: a row is claimed by moving next_attempt_at CLAIM_LEASE ahead (SKIP LOCKED on
PostgreSQL, a compare-and-swap of `attempts` everywhere), sent with no lock or
transaction held, then marked sent, retried with `backoff`, or given up (after
MAX_ATTEMPTS, or at once for what retrying cannot change: a 4xx, a refused address).
HTTP goes through commit_status.post: the host passes the clone URLs' guard
(GOCI_CLONE_ALLOWED_HOSTS), the connection goes to the address it vouched for, and no
redirect is followed. Email goes through Django's email backend.

Credentials (a Slack webhook URL, a Telegram bot token and chat, a webhook's HMAC key)
are encrypted like secrets (builds/secrets.py), never shown, never in the audit log,
and taken out of every error kept in last_error.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import smtplib
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from cryptography.fernet import InvalidToken
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.core.validators import validate_email
from django.db import IntegrityError, connection, transaction
from django.dispatch import Signal
from django.utils import timezone

from builds import services
from builds.clone_urls import MAX_URL, CloneUrlRefused, _check_host, host_listed
from builds.commit_status import (
    STOP_WAIT,
    StatusRequest,
    Unreachable,
    Unsendable,
    backoff,
    build_url,
    post,
)
from builds.models import (
    FINISHED,
    Build,
    Deployment,
    Notification,
    NotificationTarget,
    Project,
    Status,
)
from builds.secrets import decrypt, encrypt
from goci import audit
from goci.background import OutboxSender, seconds_until

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 8  # 1 s, 2 s ... about two minutes of waits before giving up
CLAIM_LEASE = timedelta(minutes=15)  # a sender that dies mid-send: sent again after it
POLL = 3.0
MAX_DELIVERIES = 50  # listed on the page and by the API
MAX_NAME = 100
MAX_ADDRESSES = 20
MAX_CREDENTIAL = 4096
MIN_WEBHOOK_SECRET = 8

Kind = NotificationTarget.Kind
When = NotificationTarget.When

# The credential fields each kind takes, all required (email takes none).
CREDENTIALS: dict[str, tuple[str, ...]] = {
    Kind.WEBHOOK: ("secret",),
    Kind.SLACK: ("url",),
    Kind.TELEGRAM: ("token", "chat_id"),
    Kind.EMAIL: (),
}
TELEGRAM_TOKEN = re.compile(r"[0-9]{1,20}:[A-Za-z0-9_-]{20,200}")
# A chat's id (a group's is negative) or a public channel's @username.
TELEGRAM_CHAT = re.compile(r"-?[0-9]{1,20}|@[A-Za-z][A-Za-z0-9_]{3,63}")
FAILED = (Status.FAILURE, Status.ERROR)
REDACTED = "[redacted]"

HINTS = {
    401: "; check the target's credentials",
    403: "; check the target's credentials and that they may post there",
    404: "; check the target's URL (Slack: the webhook may have been removed; "
    "Telegram: the bot token)",
}
REDIRECT_HINT = "check the target's URL"

notification_due = Signal()  # sent once a transaction that queued a notification commits


class NotificationError(services.InvalidRequest):
    """A target that cannot be saved as asked; the message says what to fix (a 422 in
    the API, a form error on the page)."""


# -- targets: the one place that changes them ---------------------------------------


def notification_target_create(
    *,
    project: Project,
    name: str,
    kind: str,
    url: str = "",
    addresses: Sequence[str] = (),
    credentials: Mapping[str, str] | None = None,
    when: str = When.CHANGES,
    deployments: bool = True,
    enabled: bool = True,
) -> NotificationTarget:
    """A new target of the project. Conflict if the name is taken."""
    if kind not in Kind.values:
        raise NotificationError(f"kind must be one of {', '.join(Kind.values)}, not {kind!r}")
    target = NotificationTarget(project=project, kind=kind)
    _apply(
        target,
        name=name,
        url=url,
        addresses=addresses,
        credentials=dict(credentials or {}),
        when=when,
        deployments=deployments,
        enabled=enabled,
    )
    try:
        with transaction.atomic():
            target.save()
            audit.record(
                "notification.create", project=project, obj=target, details=_details(target)
            )
    except IntegrityError:
        raise services.Conflict(f"project '{project.slug}' has a target named {name!r}") from None
    return target


def notification_target_update(*, target: NotificationTarget, **fields: Any) -> NotificationTarget:
    """Change what is given (name, url, addresses, credentials, when, deployments,
    enabled); credentials given are merged into those set, the others kept. A target
    keeps its kind."""
    unknown = set(fields) - {
        "name",
        "url",
        "addresses",
        "credentials",
        "when",
        "deployments",
        "enabled",
    }
    if unknown:
        raise NotificationError(f"a target has no field {sorted(unknown)[0]!r} to change")
    credentials = fields.pop("credentials", None)
    merged = None if credentials is None else {**_credentials(target), **credentials}
    _apply(target, credentials=merged, **fields)
    try:
        with transaction.atomic():
            target.save()
            details = {**_details(target), "credentials_changed": sorted(credentials or {})}
            audit.record("notification.update", project=target.project, obj=target, details=details)
    except IntegrityError:
        raise services.Conflict(
            f"project '{target.project.slug}' has a target named {target.name!r}"
        ) from None
    return target


def notification_target_delete(*, target: NotificationTarget) -> None:
    """Delete the target with its deliveries."""
    with transaction.atomic():
        audit.record(
            "notification.delete",
            project=target.project,
            obj=target,
            details={"name": target.name, "kind": target.kind},
        )
        target.delete()


def credentials_set(target: NotificationTarget) -> list[str]:
    """The names of the target's credential fields that hold a value: what may be said
    of them."""
    try:
        return sorted(name for name, value in _credentials(target).items() if value)
    except NotificationError:
        return []


def _details(target: NotificationTarget) -> dict[str, Any]:
    # What the audit log keeps: never a credential (a Slack URL is one).
    return {
        "name": target.name,
        "kind": target.kind,
        "url": target.url,
        "addresses": list(target.addresses),
        "when": target.when,
        "deployments": target.deployments,
        "enabled": target.enabled,
    }


def _apply(
    target: NotificationTarget,
    *,
    name: str | None = None,
    url: str | None = None,
    addresses: Sequence[str] | None = None,
    credentials: dict[str, str] | None = None,
    when: str | None = None,
    deployments: bool | None = None,
    enabled: bool | None = None,
) -> None:
    """Check and set what is given (None: unchanged)."""
    kind = target.kind
    if name is not None:
        target.name = _checked_name(name)
    if url is not None:
        if kind != Kind.WEBHOOK and url:
            raise NotificationError(f"a {kind} target has no URL (only a webhook's is one)")
        target.url = _checked_url(url, "the webhook's URL") if url else ""
    if kind == Kind.WEBHOOK and not target.url:
        raise NotificationError("a webhook target needs the URL it posts to")
    if addresses is not None:
        if kind != Kind.EMAIL and addresses:
            raise NotificationError(f"a {kind} target has no email addresses")
        target.addresses = _checked_addresses(addresses) if addresses else []
    if kind == Kind.EMAIL and not target.addresses:
        raise NotificationError("an email target needs at least one address")
    if credentials is not None:
        target.credentials = _encrypted_credentials(kind, credentials)
    elif not target.credentials and CREDENTIALS[kind]:
        _encrypted_credentials(kind, {})  # says which are missing
    if when is not None:
        if when not in When.values:
            raise NotificationError(f"when must be one of {', '.join(When.values)}, not {when!r}")
        target.when = when
    if deployments is not None:
        target.deployments = bool(deployments)
    if enabled is not None:
        target.enabled = bool(enabled)


def _text_problem(value: object, what: str, limit: int) -> str:
    if not isinstance(value, str):
        raise NotificationError(f"{what} must be text")
    if len(value) > limit:
        raise NotificationError(f"{what} is longer than {limit} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise NotificationError(f"{what} holds a control character (NUL, newline, tab...)")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise NotificationError(f"{what} holds a lone surrogate (invalid Unicode)") from None
    return value


def _checked_name(name: str) -> str:
    name = _text_problem(name, "the name", MAX_NAME).strip()
    if not name:
        raise NotificationError("the name is empty")
    return name


def _checked_url(url: str, what: str) -> str:
    """An http(s) URL with a host and no user or password in it (the host's address is
    checked when sending: DNS may change)."""
    url = _text_problem(url, what, MAX_URL).strip()
    if not url.isascii() or " " in url:
        raise NotificationError(
            f"{what} holds a space or a character that is not ASCII: percent-encode it"
        )
    try:
        parts = urlsplit(url)
        port = parts.port
        host = parts.hostname or ""
    except ValueError:
        raise NotificationError(f"{what} has an invalid host or port") from None
    if parts.scheme not in ("http", "https") or not host:
        raise NotificationError(f"{what} must be an https:// (or http://) URL with a host")
    if parts.username is not None or parts.password is not None:
        raise NotificationError(f"{what} holds a user name or password: leave them out")
    if port == 0:
        raise NotificationError(f"{what} has an invalid port")
    try:
        _check_host(host, bracketed=parts.netloc.rpartition("@")[2][:1] == "[")
    except CloneUrlRefused as exc:
        raise NotificationError(f"{what}: {exc}") from None
    if parts.scheme == "http" and not host_listed(host, settings.GOCI_CLONE_ALLOWED_HOSTS):
        raise NotificationError(
            f"{what} is http://, which goes in clear text: use https, or ask the operator "
            f"to list {host} in GOCI_CLONE_ALLOWED_HOSTS"
        )
    return url


def _checked_addresses(addresses: Sequence[str]) -> list[str]:
    if isinstance(addresses, str) or not isinstance(addresses, Sequence):
        raise NotificationError("the email addresses must be a list")
    if len(addresses) > MAX_ADDRESSES:
        raise NotificationError(f"at most {MAX_ADDRESSES} email addresses")
    checked = []
    for given in addresses:
        address = _text_problem(given, "an email address", 254).strip()
        try:
            validate_email(address)
        except ValidationError:
            raise NotificationError(f"{address!r} is not an email address") from None
        checked.append(address)
    return list(dict.fromkeys(checked))


def _encrypted_credentials(kind: str, credentials: Mapping[str, object]) -> str:
    wanted = CREDENTIALS[kind]
    unknown = sorted(set(credentials) - set(wanted))
    if unknown:
        takes = ", ".join(wanted) or "none"
        raise NotificationError(
            f"a {kind} target has no credential {unknown[0]!r} (it takes: {takes})"
        )
    values: dict[str, str] = {}
    for name in wanted:
        value = credentials.get(name)
        if not value:
            raise NotificationError(f"a {kind} target needs its credential {name!r}")
        values[name] = _text_problem(value, f"the credential {name!r}", MAX_CREDENTIAL).strip()
    if kind == Kind.SLACK:
        values["url"] = _checked_url(values["url"], "the Slack webhook URL")
    elif kind == Kind.TELEGRAM:
        if not TELEGRAM_TOKEN.fullmatch(values["token"]):
            raise NotificationError(
                "the credential 'token' is not a Telegram bot token (123456:ABC-DEF..., "
                "as BotFather gives it)"
            )
        if not TELEGRAM_CHAT.fullmatch(values["chat_id"]):
            raise NotificationError(
                "the credential 'chat_id' is neither a chat's number (-100123...) nor a "
                "channel's @name"
            )
    elif kind == Kind.WEBHOOK and len(values["secret"]) < MIN_WEBHOOK_SECRET:
        raise NotificationError(
            f"the credential 'secret' must be at least {MIN_WEBHOOK_SECRET} characters"
        )
    return encrypt(json.dumps(values)) if values else ""


def _credentials(target: NotificationTarget) -> dict[str, str]:
    if not target.credentials:
        return {}
    try:
        found = json.loads(decrypt(target.credentials))
    except (InvalidToken, ValueError):
        raise NotificationError(
            "the target's credentials cannot be decrypted with GOCI_SECRET_KEYS (was the key "
            "they were set with removed?): set them again"
        ) from None
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


# -- queueing: in the transaction that finishes the build or deployment --------------


def queue_build(build: Build) -> None:
    """Queue the news of a build that just finished for each enabled target whose
    `when` wants it: always (every build, canceled too), failures (failure or error),
    changes (failures, and a success after a failed build of the same ref: "fixed")."""
    if build.status not in FINISHED:
        return
    targets = list(
        NotificationTarget.objects.filter(project_id=build.project_id, enabled=True).exclude(
            when=When.NEVER
        )
    )
    if not targets:
        return
    fixed = build.status == Status.SUCCESS and _previous_failed(build)
    event = "fixed" if fixed else "build"
    payload: dict[str, Any] | None = None
    for target in targets:
        if not _wants(target.when, build.status, fixed):
            continue
        payload = payload or build_payload(build, event)
        _queue(target, build, event, payload)


def _wants(when: str, status: str, fixed: bool) -> bool:
    if when == When.ALWAYS:
        return True
    if when == When.FAILURES:
        return status in FAILED
    if when == When.CHANGES:
        return status in FAILED or fixed
    return False


def _previous_failed(build: Build) -> bool:
    """Whether the build of the same project and ref that finished last before this one
    failed. Canceled builds say nothing of the code: they are passed over."""
    previous = (
        Build.objects.filter(
            project_id=build.project_id,
            ref=build.ref,
            finished_at__isnull=False,
            status__in=(Status.SUCCESS, *FAILED),
        )
        .exclude(pk=build.pk)
        .order_by("-finished_at", "-pk")
        .values_list("status", flat=True)
        .first()
    )
    return previous in FAILED


def queue_deployment(deployment: Deployment) -> None:
    """Queue the news of a deployment that just finished for each enabled target with
    `deployments` on (whatever its `when`)."""
    build = deployment.build
    targets = NotificationTarget.objects.filter(
        project_id=build.project_id, enabled=True, deployments=True
    )
    payload: dict[str, Any] | None = None
    for target in targets:
        if payload is None:
            environment = deployment.environment
            payload = {
                **build_payload(build, "deployment"),
                "environment": environment.name,
                "environment_url": deployment.url or environment.url,
                "deployment_status": deployment.state,
            }
        _queue(target, build, "deployment", payload)


def _queue(target: NotificationTarget, build: Build, event: str, payload: dict[str, Any]) -> None:
    Notification.objects.create(
        target=target, build=build, event=event, payload=payload, next_attempt_at=timezone.now()
    )
    transaction.on_commit(lambda: notification_due.send(sender=None))


def build_payload(build: Build, event: str) -> dict[str, Any]:
    """What every message says of a build (the webhook's JSON body as it is)."""
    project = build.project
    finished = build.finished_at or timezone.now()
    started = build.started_at or build.created_at
    duration = max((finished - started).total_seconds(), 0.0) if started else None
    author = build.author.get_username() if build.author is not None else build.commit_author
    return {
        "event": event,
        "project": project.slug,
        "project_name": project.name or project.slug,
        "number": build.number,
        "status": build.status,
        "trigger": build.trigger,
        "ref": build.ref,
        "branch": build.ref.removeprefix("refs/heads/"),
        "commit": build.commit,
        "message": (build.message.strip().splitlines() or [""])[0][:200],
        "author": author,
        "duration": round(duration, 1) if duration is not None else None,
        "url": build_url(build),
    }


# -- what each kind sends ----------------------------------------------------------

WORDS: dict[str, str] = {
    Status.SUCCESS: "succeeded",
    Status.FAILURE: "failed",
    Status.ERROR: "could not run",
    Status.CANCELED: "was canceled",
}
DEPLOY_WORDS = {
    "success": "deployed to",
    "failure": "failed to deploy to",
    "error": "could not deploy to",
    "canceled": "canceled its deployment to",
    "rejected": "was refused deployment to",
}


def headline(payload: Mapping[str, Any]) -> str:
    """ "shop #12 failed on main" and its kin: the subject of an email, the first line
    of a chat message."""
    name = f"{payload['project']} #{payload['number']}"
    if payload["event"] == "deployment":
        state = str(payload.get("deployment_status", ""))
        words = DEPLOY_WORDS.get(state, f"deployment ({state}) to")
        return f"{name} {words} {payload.get('environment', '')}"
    status = str(payload["status"])
    line = f"{name} {WORDS.get(status, status)}"
    if payload["event"] == "fixed":
        line += " (fixed)"
    if payload.get("branch"):
        line += f" on {payload['branch']}"
    return line


def message_text(payload: Mapping[str, Any]) -> str:
    """The plain text of a message: the headline, then the facts, then the link."""
    facts = []
    if payload.get("commit"):
        facts.append(f"commit {str(payload['commit'])[:10]}")
    if payload.get("author"):
        facts.append(f"by {payload['author']}")
    if payload.get("duration") is not None:
        facts.append(f"in {duration_words(float(payload['duration']))}")
    lines = [headline(payload)]
    if facts:
        lines.append(", ".join(facts))
    if payload.get("message"):
        lines.append(str(payload["message"]))
    if payload.get("environment_url"):
        lines.append(str(payload["environment_url"]))
    if payload.get("url"):
        lines.append(str(payload["url"]))
    return "\n".join(lines)


def duration_words(seconds: float) -> str:
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m {secs}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes}m"


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def http_request(target: NotificationTarget, payload: Mapping[str, Any]) -> StatusRequest:
    """The POST that carries this payload to an HTTP target (not email)."""
    credentials = _credentials(target)
    headers = {"User-Agent": "Goci", "Content-Type": "application/json"}
    if target.kind == Kind.WEBHOOK:
        url = target.url
        body = json.dumps(payload).encode()
        digest = hmac.new(credentials["secret"].encode(), body, hashlib.sha256).hexdigest()
        headers["X-Goci-Event"] = str(payload["event"])
        headers["X-Goci-Signature"] = f"sha256={digest}"
    elif target.kind == Kind.SLACK:
        url = credentials["url"]
        text = _slack_escape(message_text(payload))
        body = json.dumps({"text": text}).encode()
    elif target.kind == Kind.TELEGRAM:
        url = f"{settings.GOCI_TELEGRAM_API}/bot{credentials['token']}/sendMessage"
        fields = {
            "chat_id": credentials["chat_id"],
            "text": message_text(payload),
            "disable_web_page_preview": True,
        }
        body = json.dumps(fields).encode()
    else:
        raise Unsendable(f"a {target.kind} target is not sent over HTTP")
    parts = urlsplit(url)
    try:
        host = (parts.hostname or "").encode("idna").decode("ascii")
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except (UnicodeError, ValueError):
        raise Unsendable("the target's URL has an invalid host or port") from None
    if parts.scheme not in ("http", "https") or not host:
        raise Unsendable("the target's URL is not an http(s) URL with a host")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return StatusRequest(
        scheme=parts.scheme,
        host=host,
        port=port,
        path=path,
        headers=headers,
        body=body,
        hints=HINTS,
        redirect_hint=REDIRECT_HINT,
        peer="the target",
    )


def deliver(target: NotificationTarget, payload: Mapping[str, Any]) -> None:
    """Send one message now; Unsendable or Unreachable say why not."""
    if target.kind == Kind.EMAIL:
        _email(target, payload)
        return
    post(http_request(target, payload), list(settings.GOCI_CLONE_ALLOWED_HOSTS))


def _email(target: NotificationTarget, payload: Mapping[str, Any]) -> None:
    try:
        send_mail(
            subject=f"[Goci] {headline(payload)}",
            message=message_text(payload),
            from_email=None,  # DEFAULT_FROM_EMAIL
            recipient_list=list(target.addresses),
        )
    except (smtplib.SMTPRecipientsRefused, smtplib.SMTPSenderRefused) as exc:
        raise Unsendable(f"the mail server refused it: {exc}") from None
    except (smtplib.SMTPException, OSError) as exc:
        raise Unreachable(f"the mail server could not be reached: {exc}") from None


# -- reading the outbox ------------------------------------------------------------


def delivery_state(row: Notification) -> str:
    """queued (not tried yet), retrying, sent or given up."""
    if row.sent_at is not None:
        return "sent"
    if row.given_up:
        return "given up"
    return "retrying" if row.attempts else "queued"


def recent_deliveries(project: Project) -> list[Notification]:
    """The project's last MAX_DELIVERIES notifications, newest first."""
    rows = (
        Notification.objects.filter(target__project=project)
        .select_related("target", "build")
        .defer("payload")
        .order_by("-id")[:MAX_DELIVERIES]
    )
    return list(rows)


# -- the sender --------------------------------------------------------------------


def claim() -> Notification | None:
    """Take one due row for this sender (its attempt counts from now), or None."""
    now = timezone.now()
    with transaction.atomic():
        due = Notification.objects.filter(
            sent_at__isnull=True, given_up=False, next_attempt_at__lte=now
        ).order_by("next_attempt_at", "pk")
        if connection.vendor == "postgresql":
            due = due.select_for_update(skip_locked=True)
        found = due.values_list("pk", "attempts").first()
        if found is None:
            return None
        pk, attempts = found
        # SQLite has no row locks: the compare-and-swap on `attempts` lets one sender win.
        taken = Notification.objects.filter(
            pk=pk, attempts=attempts, sent_at__isnull=True, given_up=False
        ).update(attempts=attempts + 1, next_attempt_at=now + CLAIM_LEASE)
    if not taken:
        return None
    return Notification.objects.select_related("target__project", "build").get(pk=pk)


def send(row: Notification) -> None:
    """Send a claimed row and record what came of it."""
    target = row.target
    try:
        if not target.enabled:
            raise Unsendable("the target was disabled")
        deliver(target, row.payload)
    except Unsendable as exc:
        error = _redacted(str(exc), target)
        log.warning("notification %s to %s not sent: %s", row.pk, target, error)
        _record(row, given_up=True, last_error=error)
    except Unreachable as exc:
        _retry_later(row, _redacted(str(exc), target))
    # Unforeseen: retried like the above, and logged without the traceback, which could
    # hold a credential (a bot token is in the URL).
    except Exception as exc:  # noqa: BLE001
        error = _redacted(f"{type(exc).__name__}: {exc}", target)
        log.warning("notification %s to %s: sending failed: %s", row.pk, target, error)
        _retry_later(row, error)
    else:
        log.info("notification %s (%s of %s) sent to %s", row.pk, row.event, row.build, target)
        _record(row, sent_at=timezone.now(), last_error="")


def _redacted(text: str, target: NotificationTarget) -> str:
    """The text without any of the target's credentials (a bot token is in the URL it
    posts to; an answer may echo what it got)."""
    try:
        values = _credentials(target).values()
    except NotificationError:
        return text
    for value in sorted(values, key=len, reverse=True):
        if value:
            text = text.replace(value, REDACTED)
    return text


def _retry_later(row: Notification, reason: str) -> None:
    if row.attempts >= MAX_ATTEMPTS:
        error = f"gave up after {row.attempts} attempts: {reason}"
        log.warning("notification %s to %s: %s", row.pk, row.target, error)
        _record(row, given_up=True, last_error=error)
    else:
        wait = backoff(row.attempts)
        log.info("notification %s to %s: %s; again in %s", row.pk, row.target, reason, wait)
        _record(row, last_error=reason, next_attempt_at=timezone.now() + wait)


def _record(row: Notification, **fields: object) -> None:
    fields.setdefault("next_attempt_at", timezone.now())
    Notification.objects.filter(pk=row.pk).update(**fields)


def next_due_in(now: datetime | None = None) -> float | None:
    """Seconds until the next row is due (0 if one is), or None."""
    now = now or timezone.now()
    first = (
        Notification.objects.filter(sent_at__isnull=True, given_up=False)
        .order_by("next_attempt_at")
        .values_list("next_attempt_at", flat=True)
        .first()
    )
    return seconds_until(first, now)


class NotificationSender(OutboxSender[Notification]):
    """A daemon thread that sends due notifications until stop(): woken by
    notification_due in this process, and looking every `poll` seconds (and when a
    retry falls due) for those queued elsewhere."""

    name = "goci-notify"
    what = "notifications"

    def __init__(self, poll: float = POLL) -> None:
        super().__init__(poll, STOP_WAIT, notification_due)

    def claim(self) -> Notification | None:
        return claim()

    def send(self, row: Notification) -> None:
        send(row)

    def next_due(self) -> float | None:
        return next_due_in()
