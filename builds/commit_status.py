"""Commit statuses sent back to the forge: the sender of the CommitStatus outbox.

services.commit_status_queue writes a row in the same transaction as the build's change
("pending" when it is queued, the final state from build_settle); a StatusSender in
each worker process (and in `goci up`) sends them here, never from a build's own code
path, so a forge that is down or slow cannot hold up or fail a build.

Where a status goes comes from the project's repo_url (set by a maintainer), never from
a delivery: GitHub's statuses API (api.github.com, or /api/v3 of any other host: GitHub
Enterprise), GitLab's commit status API (/api/v4) and Gitea's or Forgejo's (/api/v1),
with the project secret GOCI_FORGE_TOKEN. The host passes the same guard as clone URLs
(builds.clone_urls.resolve_allowed) and the request goes to the address it vouched
for, so a DNS answer cannot change in between; redirects are not followed.

A row is claimed by moving its next_attempt_at CLAIM_LEASE ahead (with SKIP LOCKED on
PostgreSQL and a compare-and-swap of `attempts` everywhere), sent without any lock or
transaction held, then marked sent, retried later with backoff, or given up: a row is
given up once `attempts` reaches MAX_ATTEMPTS, at once for a refusal that retrying
cannot change (a 4xx, no token), with last_error saying why. docs/commit-status.md.
"""

from __future__ import annotations

import functools
import http.client
import json
import logging
import random
import re
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from urllib.parse import quote, urlsplit

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Exists, OuterRef, QuerySet
from django.urls import reverse
from django.utils import timezone

from builds import services
from builds.clone_urls import CloneUrlRefused, host_listed, resolve_allowed
from builds.models import Build, CommitStatus, Project
from builds.secrets import FORGE_TOKEN, SecretError, secret_for_goci
from goci.background import OutboxSender, seconds_until

log = logging.getLogger(__name__)

TIMEOUT = 10.0  # seconds for connecting, and for each read of the answer
MAX_ATTEMPTS = 10
BACKOFF_FIRST = 1.0  # seconds before the second attempt; doubling after each
BACKOFF_MAX = 300.0
JITTER = 0.25  # up to this fraction added to each wait, so senders do not march in step
# A claimed row's next_attempt_at moves this far ahead: if its sender dies mid-send, the
# row is sent again after it. A wait for a retry is never longer than BACKOFF_MAX, so a
# row due later than IN_FLIGHT from now is being sent (the margin absorbs clock skew
# between machines): a newer status of that build waits for it, as it must not arrive
# first and be overwritten.
CLAIM_LEASE = timedelta(minutes=15)
IN_FLIGHT = timedelta(seconds=BACKOFF_MAX) + timedelta(minutes=5)
POLL = 3.0  # seconds between looks when nothing wakes the sender
MAX_ADDRESSES = 3  # of a host's addresses tried in turn when one cannot be reached
MAX_ANSWER = 4096  # bytes of a refusal's body read, to say why
STOP_WAIT = TIMEOUT * 2

GITHUB_HOSTS = ("github.com", "www.github.com")
SSH_SCHEMES = ("ssh", "git+ssh", "ssh+git", "git")
# user@host:owner/repo.git (what `git clone` takes as ssh); not C:/path, not ./x:y.
SCP_LIKE = re.compile(r"(?:[^@/\s]+@)?(?P<host>[A-Za-z0-9.-]+):(?P<path>[^/\s][^\s]*)")
SHA = re.compile(r"[0-9a-fA-F]{4,64}")
HEADER_SAFE = re.compile(r"[\x21-\x7e]+")  # visible ASCII: what a token is made of

# Goci's states as each forge knows them. GitHub and Gitea have no "canceled": a
# canceled build did not pass, and it is not the code's failure, so it is an error
# there (the description says it was canceled or superseded).
STATES: dict[str, dict[str, str]] = {
    "github": {
        "pending": "pending",
        "success": "success",
        "failure": "failure",
        "error": "error",
        "canceled": "error",
    },
    "gitlab": {
        "pending": "pending",
        "success": "success",
        "failure": "failed",
        "error": "failed",
        "canceled": "canceled",
    },
}
STATES["gitea"] = STATES["github"]


class Unsendable(Exception):
    """The status cannot be sent as things are (no token, no repository, a refused
    host, a 4xx): retrying will not help; the message says what to change."""


class Unreachable(Exception):
    """The forge could not be reached or answered 5xx or 429: worth another try."""


@dataclass(frozen=True)
class Repository:
    scheme: str  # of the forge's web and API: https, or http
    host: str
    port: int | None
    path: str  # owner/name (GitLab: group/subgroup/name), without .git


# What a refusal's message suggests to change (a forge's; builds/notifications.py sends
# its own through the same post()).
FORGE_HINTS = {
    401: "; check the project secret GOCI_FORGE_TOKEN",
    403: "; check that GOCI_FORGE_TOKEN may set commit statuses",
    404: "; check the repository URL, and that GOCI_FORGE_TOKEN may see the repository",
}
FORGE_REDIRECT_HINT = "check the project's repository URL"


@dataclass(frozen=True)
class StatusRequest:
    scheme: str
    host: str
    port: int
    path: str
    headers: dict[str, str]
    body: bytes
    hints: Mapping[int, str] = field(default_factory=lambda: FORGE_HINTS)
    redirect_hint: str = FORGE_REDIRECT_HINT
    peer: str = "the forge"  # who is at the other end, as a refusal names it


def repository_of(repo_url: str) -> Repository:
    """Where the repository lives, from the project's repo_url: an http(s) URL as it
    is; an ssh:// or scp-like (git@host:owner/repo) one as https on the same host."""
    url = repo_url.strip()
    if "://" in url:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        try:
            port = parts.port if scheme in ("http", "https") else None
        except ValueError:
            raise Unsendable(f"the repository URL {repo_url!r} has an invalid port") from None
        if scheme in SSH_SCHEMES:
            scheme = "https"
        elif scheme not in ("http", "https"):
            raise Unsendable(f"no forge API is known for the repository URL {repo_url!r}")
        host, path = parts.hostname or "", parts.path
    elif match := SCP_LIKE.fullmatch(url):
        scheme, host, port, path = "https", match["host"].lower(), None, match["path"]
    else:
        raise Unsendable(
            f"the repository URL {repo_url!r} is neither https://host/owner/repo, "
            "ssh://git@host/owner/repo nor git@host:owner/repo"
        )
    try:
        host = host.encode("idna").decode("ascii")  # a name as DNS, TLS and Host see it
    except UnicodeError:
        raise Unsendable(f"the repository URL {repo_url!r} has an invalid host name") from None
    path = path.strip("/").removesuffix(".git").strip("/")
    segments = path.split("/")
    if not host or not path or any(s in ("", ".", "..") for s in segments):
        raise Unsendable(f"the repository URL {repo_url!r} names no owner/repository")
    return Repository(scheme=scheme, host=host, port=port, path=path)


def status_request(
    build: Build, state: str, description: str, token: str, target_url: str
) -> StatusRequest:
    """The POST that sets this status on the build's commit at its forge."""
    forge = build.forge
    if forge not in STATES:
        raise Unsendable(f"no commit status API for the forge {forge!r}")
    if not SHA.fullmatch(build.commit):
        raise Unsendable(f"the build's commit {build.commit!r} is not a commit sha")
    repo = repository_of(build.project.repo_url)
    sha = build.commit.lower()
    context = f"goci/{build.project.slug}"
    mapped = STATES[forge].get(state, "error")
    headers = {"User-Agent": "Goci", "Content-Type": "application/json"}
    host, port = repo.host, repo.port
    fields = {"state": mapped, "description": description}
    if forge == "gitlab":
        project = quote(repo.path, safe="")
        path = f"/api/v4/projects/{project}/statuses/{sha}"
        headers["PRIVATE-TOKEN"] = token
        fields["name"] = context
    else:
        owner_repo = _owner_repo(repo)
        fields["context"] = context
        if forge == "gitea":
            path = f"/api/v1/repos/{owner_repo}/statuses/{sha}"
            headers["Authorization"] = f"token {token}"
        else:
            headers["Authorization"] = f"Bearer {token}"
            headers["Accept"] = "application/vnd.github+json"
            if host in GITHUB_HOSTS:
                host, port = "api.github.com", None
                path = f"/repos/{owner_repo}/statuses/{sha}"
            else:  # GitHub Enterprise Server
                path = f"/api/v3/repos/{owner_repo}/statuses/{sha}"
    if target_url:
        fields["target_url"] = target_url
    default_port = 443 if repo.scheme == "https" else 80
    return StatusRequest(
        scheme=repo.scheme,
        host=host,
        port=port or default_port,
        path=path,
        headers=headers,
        body=json.dumps(fields).encode(),
    )


def _owner_repo(repo: Repository) -> str:
    segments = repo.path.split("/")
    if len(segments) != 2:
        raise Unsendable(
            f"{repo.path!r} is not owner/repository: the repository URL must name both"
        )
    return "/".join(quote(segment, safe="") for segment in segments)


def build_url(build: Build) -> str:
    """The build page people open from the forge, or "" without GOCI_PUBLIC_URL."""
    if not settings.GOCI_PUBLIC_URL:
        _say_no_public_url()
        return ""
    # The dashboard's own URLconf (mounted at the root), not the whole site's: that
    # would load the API and pydantic (~16 MB) into every worker for one path.
    return settings.GOCI_PUBLIC_URL + reverse("build", args=[build.pk], urlconf="builds.urls")


@functools.cache
def _say_no_public_url() -> None:
    log.warning(
        "GOCI_PUBLIC_URL is not set: commit statuses are sent without a link to the "
        "build (set it to the address people open Goci at)"
    )


def post(request: StatusRequest, allowed_hosts: list[str]) -> None:
    """Send it to an address the guard allows, returning when the forge took it;
    Unreachable or Unsendable otherwise."""
    if request.scheme == "http" and not host_listed(request.host, allowed_hosts):
        raise Unsendable(
            f"http to {request.host} is refused: only https, unless the operator lists "
            "the host in GOCI_CLONE_ALLOWED_HOSTS"
        )
    try:
        # Only to tell a DNS outage (worth another try) from a refusal (which is not):
        # the addresses connected to are those resolve_allowed vouches for.
        socket.getaddrinfo(request.host, request.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise Unreachable(f"{request.host} cannot be resolved ({exc})") from None
    try:
        addresses = resolve_allowed(request.host, request.port, allowed_hosts)
    except CloneUrlRefused as exc:
        raise Unsendable(f"{request.peer}'s address is refused: {exc}") from None
    problems = []
    for address in addresses[:MAX_ADDRESSES]:
        try:
            sock = _connect(request, address)
        except OSError as exc:
            problems.append(f"{address}: {exc}")
            continue
        _exchange(request, sock)
        return
    raise Unreachable(f"could not connect to {request.host} ({'; '.join(problems)})")


def _connect(request: StatusRequest, address: str) -> socket.socket:
    sock = socket.create_connection((address, request.port), timeout=TIMEOUT)
    if request.scheme != "https":
        return sock
    try:
        # The certificate is checked against the host's name, not the address dialled.
        return ssl.create_default_context().wrap_socket(sock, server_hostname=request.host)
    except OSError:
        sock.close()
        raise


def _exchange(request: StatusRequest, sock: socket.socket) -> None:
    conn = http.client.HTTPConnection(request.host, request.port, timeout=TIMEOUT)
    # Our socket, to the vetted address; never reopened (which would resolve the name).
    conn.sock = sock
    conn.auto_open = 0
    try:
        conn.request("POST", request.path, body=request.body, headers=request.headers)
        response = conn.getresponse()
        answer = response.read(MAX_ANSWER)
    except (OSError, http.client.HTTPException) as exc:
        said = str(exc) or type(exc).__name__
        raise Unreachable(f"{request.host} did not answer: {said}") from None
    finally:
        conn.close()
    status = response.status
    if 200 <= status < 300:
        return
    said = f"{request.host} answered {status} {response.reason}"
    if status == 429 or status >= 500:
        raise Unreachable(said)
    if 300 <= status < 400:
        where = response.getheader("Location") or "nowhere"
        raise Unsendable(
            f"{said} (to {where[:200]}): redirects are not followed; {request.redirect_hint}"
        )
    hint = request.hints.get(status, "")
    text = answer.decode("utf-8", "replace").replace("\n", " ").strip()[:300]
    raise Unsendable(f"{said}{hint}" + (f": {text}" if text else ""))


def backoff(attempts: int) -> timedelta:
    """The wait after the attempts-th failed attempt: 1 s, 2 s, 4 s ... 5 min, with up
    to JITTER more."""
    delay = min(BACKOFF_FIRST * 2 ** min(attempts - 1, 30), BACKOFF_MAX)
    jittered = delay * (1 + random.uniform(0, JITTER))  # noqa: S311  (spreading, not a secret)
    return timedelta(seconds=min(jittered, BACKOFF_MAX))


def _claimable(now: datetime) -> QuerySet[CommitStatus]:
    """Rows that may be sent once due: not sent, not superseded, not given up, and
    with no status of the same commit and context (a rerun shares them) being sent now
    (IN_FLIGHT)."""
    in_flight = CommitStatus.objects.filter(
        build__project=OuterRef("build__project"),
        build__commit=OuterRef("build__commit"),
        sent_at__isnull=True,
        next_attempt_at__gt=now + IN_FLIGHT,
    )
    return CommitStatus.objects.filter(
        sent_at__isnull=True, superseded=False, attempts__lt=MAX_ATTEMPTS
    ).exclude(Exists(in_flight))


def claim() -> CommitStatus | None:
    """Take one due row for this sender (its attempt counts from now), or None."""
    now = timezone.now()
    with transaction.atomic():
        due = _claimable(now).filter(next_attempt_at__lte=now).order_by("next_attempt_at", "pk")
        if connection.vendor == "postgresql":
            # Only the outbox's row: the build's (joined for the in-flight check) is the
            # worker's to lock while it settles the build.
            due = due.select_for_update(skip_locked=True, of=("self",))
        found = due.values_list("pk", "attempts").first()
        if found is None:
            return None
        pk, attempts = found
        # SQLite has no row locks (SKIP LOCKED is a no-op there): the compare-and-swap
        # on `attempts` lets one sender win; PostgreSQL's lock already did.
        taken = CommitStatus.objects.filter(
            pk=pk, attempts=attempts, sent_at__isnull=True, superseded=False
        ).update(attempts=attempts + 1, next_attempt_at=now + CLAIM_LEASE)
    if not taken:
        return None
    return CommitStatus.objects.select_related("build__project").get(pk=pk)


def send(row: CommitStatus) -> None:
    """Send a claimed row and record what came of it."""
    build = row.build
    try:
        token = _token(build.project)
        request = status_request(build, row.state, row.description, token, build_url(build))
        post(request, list(settings.GOCI_CLONE_ALLOWED_HOSTS))
    except Unsendable as exc:
        log.warning("commit status %s of %s not sent: %s", row.state, build, exc)
        _record(row, attempts=MAX_ATTEMPTS, last_error=str(exc))
    except Unreachable as exc:
        _retry_later(row, str(exc))
    except Exception as exc:  # unforeseen: logged, and retried like the above
        log.exception("commit status %s of %s: sending failed", row.state, build)
        _retry_later(row, f"{type(exc).__name__}: {exc}")
    else:
        log.info("commit status %s of %s sent to %s", row.state, build, request.host)
        _record(row, sent_at=timezone.now(), last_error="")


def _retry_later(row: CommitStatus, reason: str) -> None:
    if row.attempts >= MAX_ATTEMPTS:
        error = f"gave up after {row.attempts} attempts: {reason}"
        log.warning("commit status %s of %s: %s", row.state, row.build, error)
        _record(row, last_error=error)
    else:
        wait = backoff(row.attempts)
        log.info("commit status %s of %s: %s; again in %s", row.state, row.build, reason, wait)
        _record(row, last_error=reason, next_attempt_at=timezone.now() + wait)


def _token(project: Project) -> str:
    try:
        token = secret_for_goci(project, FORGE_TOKEN)
    except SecretError as exc:
        raise Unsendable(str(exc)) from None
    token = (token or "").strip()
    if not token:
        raise Unsendable(
            f"no API token: set the project secret {FORGE_TOKEN} to a token of the forge "
            "that may set commit statuses"
        )
    if not HEADER_SAFE.fullmatch(token):
        raise Unsendable(f"the secret {FORGE_TOKEN} holds characters no HTTP header can carry")
    return token


def _record(row: CommitStatus, **fields: object) -> None:
    # Out of flight now (next_attempt_at is no longer CLAIM_LEASE ahead), unless the
    # caller set a later retry.
    fields.setdefault("next_attempt_at", timezone.now())
    CommitStatus.objects.filter(pk=row.pk).update(**fields)


def next_due_in(now: datetime | None = None) -> float | None:
    """Seconds until the next claimable row is due (0 if one is), or None."""
    now = now or timezone.now()
    first = (
        _claimable(now)
        .order_by("next_attempt_at")
        .values_list("next_attempt_at", flat=True)
        .first()
    )
    return seconds_until(first, now)


class StatusSender(OutboxSender[CommitStatus]):
    """A daemon thread that sends due commit statuses until stop(): woken by
    services.commit_status_due in this process, and looking every `poll` seconds (and
    when a retry falls due) for those queued elsewhere."""

    name = "goci-status"
    what = "commit statuses"

    def __init__(self, poll: float = POLL) -> None:
        super().__init__(poll, STOP_WAIT, services.commit_status_due)

    def claim(self) -> CommitStatus | None:
        return claim()

    def send(self, row: CommitStatus) -> None:
        send(row)

    def next_due(self) -> float | None:
        return next_due_in()
