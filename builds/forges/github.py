"""GitHub (and GitHub Enterprise) deliveries: X-GitHub-Event, X-Hub-Signature-256
("sha256=" + hex HMAC-SHA256 of the raw body with the secret), X-GitHub-Delivery
(the same for a redelivery of one event)."""

from __future__ import annotations

import hashlib
import hmac
import re

from builds.forges import (
    MAX_MESSAGE,
    Forge,
    Headers,
    Ignore,
    Payload,
    Trigger,
    changed_files,
    head_commit,
    is_fork,
    is_zero,
    other_event,
    pr_ignored,
    ref_kind,
)

SIGNATURE = "x-hub-signature-256"
SIGNATURE_FORMAT = re.compile(r"sha256=[0-9a-fA-F]{64}")
PR_BUILDS = ("opened", "synchronize", "reopened")
# The push payload lists at most this many commits in some GitHub versions and APIs;
# a push that reaches it may have changed more files than listed.
COMMITS_CAP = 20


def sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(headers: Headers, body: bytes, secret: str) -> str | None:
    given = headers.get(SIGNATURE)
    if given is None:
        return "no X-Hub-Signature-256 header: set the webhook's secret on GitHub"
    if not given:
        return "the X-Hub-Signature-256 header is empty: set the webhook's secret on GitHub"
    if not SIGNATURE_FORMAT.fullmatch(given):
        return "the X-Hub-Signature-256 header is not sha256=<64 hex digits>"
    if not hmac.compare_digest(sign(body, secret).encode(), given.lower().encode()):
        return "the signature does not match the project's webhook secret"
    return None


def parse(event: str, payload: Payload) -> Trigger | Ignore:
    if event == "ping":
        return Ignore("ping: the webhook works; pushes and pull requests will start builds", 200)
    if event == "push":
        return _push(payload)
    if event == "pull_request":
        return _pull_request(payload)
    return other_event(event, "push and pull_request")


def _push(payload: Payload) -> Trigger | Ignore:
    ref = payload.text("ref", 255)
    kind = ref_kind(ref)
    after = payload.text("after", 64)
    if payload.flag("deleted") or is_zero(after):
        return Ignore(f"{'tag' if kind == 'tag' else 'branch'} deletion: nothing to build")
    if kind is None:
        return Ignore(f"ref {ref!r} is neither a branch nor a tag")
    sha = payload.sha("after")
    commits = payload.items("commits")
    head = payload.maybe_obj("head_commit") or head_commit(commits, sha) or Payload({})
    known = (
        kind == "push"
        and not payload.flag("created")
        and not payload.flag("forced")
        and len(commits) < COMMITS_CAP
    )
    return Trigger(
        event=kind,
        ref=ref,
        commit=sha,
        message=head.text("message", MAX_MESSAGE, default=""),
        commit_author=head.part("author").first("name", "username")
        or payload.part("pusher").first("name"),
        compare_url=payload.url("compare"),
        changed_files=changed_files(commits) if known else None,
        clone_url=payload.part("repository").url("clone_url"),
        sender=payload.part("sender").first("login"),
    )


def _pull_request(payload: Payload) -> Trigger | Ignore:
    action = payload.text("action", default="")
    pr = payload.obj("pull_request")
    if action not in PR_BUILDS:
        merged = action == "closed" and pr.flag("merged")
        return pr_ignored("pull request", "merged" if merged else action, PR_BUILDS)
    head, base = pr.obj("head"), pr.obj("base")
    number = pr.integer("number")
    return Trigger(
        event="pull_request",
        ref=f"refs/pull/{number}/head",
        commit=head.sha("sha"),
        commit_author=pr.part("user").first("login"),
        compare_url=pr.url("html_url"),
        pr_number=number,
        pr_title=pr.text("title", 500),
        source_branch=head.text("ref", 255),
        target_branch=base.text("ref", 255),
        base_commit=base.sha("sha"),
        fork=is_fork(head.part("repo").data.get("id"), base.part("repo").data.get("id")),
        clone_url=payload.part("repository").url("clone_url"),
        sender=payload.part("sender").first("login"),
    )


FORGE = Forge(
    name="github",
    label="GitHub",
    event_headers=("x-github-event",),
    delivery_headers=("x-github-delivery",),
    verify=verify,
    parse=parse,
)
