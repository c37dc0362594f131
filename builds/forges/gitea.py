"""Gitea and Forgejo deliveries (one payload format): X-Gitea-Event or X-Forgejo-Event,
X-Gitea-Signature or X-Forgejo-Signature (hex HMAC-SHA256 of the raw body, no
prefix; both must match when both are sent), X-Gitea-Delivery or X-Forgejo-Delivery.

They also send GitHub's headers (X-GitHub-Event, X-Hub-Signature-256): recognise()
tries this forge before GitHub's. A new tag comes as a `push` of refs/tags/... and as a
`create` event; the push builds it (as on the other forges), the `create` is ignored."""

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

SIGNATURES = ("x-forgejo-signature", "x-gitea-signature")
SIGNATURE_FORMAT = re.compile(r"[0-9a-fA-F]{64}")
PR_BUILDS = ("opened", "synchronized", "reopened")


def sign(body: bytes, secret: str) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(headers: Headers, body: bytes, secret: str) -> str | None:
    given = [(name, headers[name]) for name in SIGNATURES if name in headers]
    if not given:
        return "no X-Gitea-Signature or X-Forgejo-Signature header: set the webhook's secret"
    expected = sign(body, secret).encode()
    for name, value in given:
        shown = "X-Forgejo-Signature" if "forgejo" in name else "X-Gitea-Signature"
        if not value:
            return f"the {shown} header is empty: set the webhook's secret"
        if not SIGNATURE_FORMAT.fullmatch(value):
            return f"the {shown} header is not 64 hex digits"
        if not hmac.compare_digest(expected, value.lower().encode()):
            return "the signature does not match the project's webhook secret"
    return None


def parse(event: str, payload: Payload) -> Trigger | Ignore:
    if event == "push":
        return _push(payload)
    if event == "pull_request":
        return _pull_request(payload)
    if event in ("create", "delete"):
        return Ignore(
            f"{event} event: a new branch or tag is built from its push event, "
            "and a deleted one needs no build"
        )
    return other_event(event, "push and pull_request")


def _push(payload: Payload) -> Trigger | Ignore:
    ref = payload.text("ref", 255)
    kind = ref_kind(ref)
    if is_zero(payload.text("after", 64)):
        return Ignore(f"{'tag' if kind == 'tag' else 'branch'} deletion: nothing to build")
    if kind is None:
        return Ignore(f"ref {ref!r} is neither a branch nor a tag")
    sha = payload.sha("after")
    commits = payload.items("commits")
    head = payload.maybe_obj("head_commit") or head_commit(commits, sha) or Payload({})
    # total_commits (newer Gitea) says whether `commits` lists every pushed commit.
    total = payload.data.get("total_commits", len(commits))
    known = (
        kind == "push"
        and not is_zero(payload.text("before", 64, default="0"))
        and total == len(commits)
    )
    return Trigger(
        event=kind,
        ref=ref,
        commit=sha,
        message=head.text("message", MAX_MESSAGE, default=""),
        commit_author=head.part("author").first("name", "username")
        or payload.part("pusher").first("login", "username"),
        compare_url=payload.url("compare_url"),
        changed_files=changed_files(commits) if known else None,
        clone_url=payload.part("repository").url("clone_url"),
        sender=payload.part("sender").first("login", "username"),
    )


def _pull_request(payload: Payload) -> Trigger | Ignore:
    action = payload.text("action", default="")
    pr = payload.obj("pull_request")
    if action not in PR_BUILDS:
        merged = action == "closed" and pr.flag("merged")
        return pr_ignored("pull request", "merged" if merged else action, PR_BUILDS)
    head, base = pr.obj("head"), pr.obj("base")
    number = pr.integer("number") if pr.has("number") else payload.integer("number")
    return Trigger(
        event="pull_request",
        ref=f"refs/pull/{number}/head",
        commit=head.sha("sha"),
        commit_author=pr.part("user").first("login", "username"),
        compare_url=pr.url("html_url"),
        pr_number=number,
        pr_title=pr.text("title", 500),
        source_branch=head.text("ref", 255),
        target_branch=base.text("ref", 255),
        base_commit=base.sha("sha") if base.has("sha") else "",
        fork=is_fork(head.data.get("repo_id"), base.data.get("repo_id")),
        clone_url=payload.part("repository").url("clone_url"),
        sender=payload.part("sender").first("login", "username"),
    )


FORGE = Forge(
    name="gitea",
    label="Gitea or Forgejo",
    event_headers=("x-forgejo-event", "x-gitea-event"),
    delivery_headers=("x-forgejo-delivery", "x-gitea-delivery"),
    verify=verify,
    parse=parse,
)
