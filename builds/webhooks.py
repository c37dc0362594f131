"""POST /hooks/{project-slug}: a forge's delivery in, a build out (docs/webhooks.md).

The view is thin and strict about order: the size first (413 before anything is read
past 25 MiB), then the project (404), the forge (from its headers) and the signature
on the raw body (401: no secret, a missing, empty, truncated or wrong signature), and
only then the payload (builds/forges/). Every answer is JSON with a `detail`.

Every delivery to a known project that is not too big is kept (services.delivery_record,
the last 100 of a project) with its outcome: the deliveries page shows them. Only a verified
one keeps its body, which a maintainer may redeliver. The delivery id is the build's
idempotency key: a forge's redelivery of an event is a no-op (200), and ten copies
racing on PostgreSQL make one build (build_create's project lock and unique key).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from django.contrib.auth.models import User
from django.http import HttpRequest, JsonResponse
from django.urls import path, reverse
from django.views.decorators.csrf import csrf_exempt

from builds import forges, services
from builds.forges import Forge, Ignore, Malformed, Payload, Trigger
from builds.models import Build, Project, WebhookDelivery
from goci import audit
from goci.audit import context

MAX_BODY = 25 * 1024 * 1024  # GitHub's own limit for a delivery
READ_CHUNK = 1024 * 1024
SLUG = re.compile(r"[-\w]{1,100}", re.ASCII)
# Kept with a delivery: what a redelivery needs to recognise it again, and what helps
# a maintainer read it. Never a token or a signature (GitLab's token is the secret).
KEPT_HEADERS = (
    "content-type",
    "user-agent",
    "x-github-event",
    "x-github-delivery",
    "x-github-hook-id",
    "x-gitlab-event",
    "x-gitlab-event-uuid",
    "x-gitlab-webhook-uuid",
    "x-gitlab-instance",
    "idempotency-key",
    "x-gitea-event",
    "x-gitea-event-type",
    "x-gitea-delivery",
    "x-forgejo-event",
    "x-forgejo-event-type",
    "x-forgejo-delivery",
)
KEY_FORMAT = re.compile(r"[\x21-\x7e]{1,150}")


class Unreadable(ValueError):
    """A verified body that is no JSON (400)."""


@dataclass(frozen=True)
class Answer:
    status: int
    detail: str
    delivery: WebhookDelivery
    build: Build | None = None

    def response(self) -> JsonResponse:
        data: dict[str, Any] = {"detail": self.detail, "delivery": self.delivery.pk}
        if self.build is not None:
            data["build"] = {
                "id": self.build.pk,
                "number": self.build.number,
                "url": reverse("builds:build", args=[self.build.pk]),
            }
        return JsonResponse(data, status=self.status)


def _json(status: int, detail: str, **headers: str) -> JsonResponse:
    return JsonResponse({"detail": detail}, status=status, headers=headers)


@csrf_exempt
def receive(request: HttpRequest, slug: str) -> JsonResponse:
    if request.method != "POST":
        return _json(405, "A forge delivers webhooks with POST.", Allow="POST")
    declared = request.META.get("CONTENT_LENGTH") or "0"
    if not (declared.isascii() and declared.isdigit()):
        return _json(400, "The Content-Length header is not a number.")
    if int(declared) > MAX_BODY:
        return _too_big()
    project = Project.objects.filter(slug=slug).first() if SLUG.fullmatch(slug) else None
    if project is None:
        return _json(404, f"No project has this webhook URL ({request.path}).")
    body = _read(request)
    if body is None:
        return _too_big()
    headers = {name.lower(): value for name, value in request.headers.items()}
    forge = forges.recognise(headers, forges.all_forges())
    if forge is None:
        return _reject(
            project,
            None,
            headers,
            400,
            "not a delivery of GitHub, GitLab, Gitea or Forgejo (no X-GitHub-Event, "
            "X-Gitlab-Event, X-Gitea-Event or X-Forgejo-Event header)",
        )
    secret = services.webhook_secret(project)
    if not secret:
        return _reject(
            project,
            forge,
            headers,
            401,
            "the project has no webhook secret: a maintainer makes one in its settings",
        )
    if problem := forge.verify(headers, body, secret):
        return _reject(project, forge, headers, 401, problem)
    return process(
        project,
        forge,
        headers,
        body,
        delivery_id=forge.delivery_id(headers),
        request=request,
    ).response()


def _read(request: HttpRequest) -> bytes | None:
    """The body, or None past MAX_BODY. Read from the stream, not request.body: never
    more than the limit and one byte (a chunked body declares no length), whatever
    DATA_UPLOAD_MAX_MEMORY_SIZE says."""
    chunks: list[bytes] = []
    size = 0
    while size <= MAX_BODY:
        chunk = request.read(min(READ_CHUNK, MAX_BODY + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return None if size > MAX_BODY else b"".join(chunks)


def _too_big() -> JsonResponse:
    return _json(413, f"A delivery may hold at most {MAX_BODY // 2**20} MiB.")


def _reject(
    project: Project, forge: Forge | None, headers: dict[str, str], status: int, reason: str
) -> JsonResponse:
    """Refused before the body was trusted: kept without it, for the deliveries page."""
    delivery = _record(
        project,
        forge,
        headers,
        WebhookDelivery.Outcome.REJECTED,
        reason,
        delivery_id=forge.delivery_id(headers) if forge else "",
    )
    return Answer(status, f"Rejected: {reason}.", delivery).response()


def process(
    project: Project,
    forge: Forge,
    headers: dict[str, str],
    body: bytes,
    *,
    delivery_id: str,
    request: HttpRequest | None = None,
    redelivery_of: WebhookDelivery | None = None,
    author: User | None = None,
) -> Answer:
    """What a verified delivery makes: a build, or the reason it makes none. `request`:
    the forge's own (the audit log says it came `via` webhook, from the forge); a
    redelivery instead gets a fresh idempotency key, so it really builds again."""
    kept: dict[str, Any] = {
        "delivery_id": delivery_id,
        "body": body,
        "redelivery_of": redelivery_of,
    }

    def answer(status: int, outcome: str, reason: str, build: Build | None = None) -> Answer:
        delivery = _record(project, forge, headers, outcome, reason, build=build, **kept)
        return Answer(status, reason[:1].upper() + reason[1:] + ".", delivery, build)

    event = forge.event(headers)
    try:
        result = forge.parse(event, _payload(headers, body))
    except Unreadable as exc:
        return answer(400, WebhookDelivery.Outcome.REJECTED, str(exc))
    except Malformed as exc:
        return answer(422, WebhookDelivery.Outcome.REJECTED, f"the payload is malformed: {exc}")
    if isinstance(result, Ignore):
        return answer(result.status, WebhookDelivery.Outcome.IGNORED, result.reason)
    if marker := result.skip_marker:
        return answer(
            202, WebhookDelivery.Outcome.IGNORED, f"{marker} in the head commit's message: no build"
        )
    if not project.repo_url:
        return answer(
            422,
            WebhookDelivery.Outcome.REJECTED,
            "the project has no repository URL to check the commit out from: a maintainer "
            "sets it in the project's settings, then redelivers this delivery",
        )
    key = (
        f"redelivery:{uuid.uuid4().hex}" if redelivery_of else _idempotency_key(forge, delivery_id)
    )
    try:
        with _acting(request, forge, result):
            build, created = services.build_create(
                project=project,
                pipeline="",
                author=author,
                ref=result.ref,
                commit=result.commit,
                message=result.message,
                trigger=result.event,
                fork=result.fork,
                idempotency_key=key,
                origin=result.origin(forge.name),
            )
    except services.InvalidRequest as exc:
        return answer(422, WebhookDelivery.Outcome.REJECTED, str(exc))
    if not created:
        return answer(
            200,
            WebhookDelivery.Outcome.DUPLICATE,
            f"delivered before: build #{build.number} (a redelivery builds nothing new)",
            build,
        )
    return answer(201, WebhookDelivery.Outcome.BUILD, f"build #{build.number} queued", build)


def redeliver(delivery: WebhookDelivery, *, author: User) -> Answer:
    """Process a verified delivery's stored body again, as a new delivery."""
    forge = next(f for f in forges.all_forges() if f.name == delivery.forge)
    assert delivery.body is not None
    return process(
        delivery.project,
        forge,
        dict(delivery.headers),
        bytes(delivery.body),
        delivery_id=delivery.delivery_id,
        redelivery_of=delivery,
        author=author,
    )


def _payload(headers: dict[str, str], body: bytes) -> Payload:
    """The JSON object of the body; GitHub and Gitea may also send it form-encoded."""
    if headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        try:
            fields = parse_qs(body.decode(), max_num_fields=50, strict_parsing=True)
        except ValueError as exc:
            raise Unreadable("the body is not a form with a payload field") from exc
        if len(fields.get("payload", [])) != 1:
            raise Unreadable("the form has no payload field (or more than one)")
        body = fields["payload"][0].encode()
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:  # bad JSON or UTF-8; too deep; 10**5000
        raise Unreadable("the body is not JSON") from exc
    return Payload(data)


def _idempotency_key(forge: Forge, delivery_id: str) -> str | None:
    """The build's key for a delivery id: the id itself when it is a plain token, else
    its digest (the column holds 200 characters; a hostile id could hold anything)."""
    if not delivery_id:
        return None
    if KEY_FORMAT.fullmatch(delivery_id):
        return f"{forge.name}:{delivery_id}"
    digest = hashlib.sha256(delivery_id.encode(errors="surrogateescape")).hexdigest()
    return f"{forge.name}:sha256:{digest}"


def _acting(
    request: HttpRequest | None, forge: Forge, trigger: Trigger
) -> contextlib.AbstractContextManager[None]:
    """The audit log's origin of a delivery from a forge: `via` webhook, by the forge
    account that caused it. A redelivery keeps the page's (the maintainer who asked)."""
    if request is None:
        return contextlib.nullcontext()
    who = f"{trigger.sender} ({forge.name})" if trigger.sender else f"{forge.label} webhook"
    return context.acting(
        context.Origin(via=context.WEBHOOK, request=request, name=audit.text(who, 150))
    )


def _record(
    project: Project,
    forge: Forge | None,
    headers: dict[str, str],
    outcome: str,
    reason: str,
    *,
    delivery_id: str,
    body: bytes | None = None,
    build: Build | None = None,
    redelivery_of: WebhookDelivery | None = None,
) -> WebhookDelivery:
    """Keep the delivery. Header values are whatever the sender wrote: made text that
    any database stores (no NUL, no lone surrogate) and cut."""
    kept = {name: audit.text(headers[name], 500) for name in KEPT_HEADERS if name in headers}
    return services.delivery_record(
        project=project,
        delivery_id=audit.text(delivery_id, 200),
        forge=forge.name if forge else "",
        event=audit.text(forge.event(headers), 100) if forge else "",
        outcome=outcome,
        reason=audit.text(reason, 2000),
        build=build,
        headers=kept,
        body=body,
        redelivery_of=redelivery_of,
    )


urlpatterns = [path("<str:slug>", receive, name="webhook")]
