"""GitLab deliveries: X-Gitlab-Event ("Push Hook", "Tag Push Hook", "Merge Request
Hook"), X-Gitlab-Token (the secret itself, not a signature: compared in constant time),
Idempotency-Key (the same for every retry of one event; newer GitLab) or else
X-Gitlab-Event-UUID."""

from __future__ import annotations

import hmac

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

TOKEN_HEADER = "x-gitlab-token"  # noqa: S105  (a header's name, not a secret)
MR_BUILDS = ("open", "reopen", "update")


def verify(headers: Headers, body: bytes, secret: str) -> str | None:
    given = headers.get(TOKEN_HEADER)
    if given is None:
        return "no X-Gitlab-Token header: set the webhook's secret token on GitLab"
    if not given:
        return "the X-Gitlab-Token header is empty: set the webhook's secret token on GitLab"
    if not hmac.compare_digest(secret.encode(), given.encode(errors="replace")):
        return "the X-Gitlab-Token header is not the project's webhook secret"
    return None


def parse(event: str, payload: Payload) -> Trigger | Ignore:
    if event in ("Push Hook", "Tag Push Hook"):
        return _push(payload)
    if event == "Merge Request Hook":
        return _merge_request(payload)
    return other_event(event, "Push Hook, Tag Push Hook and Merge Request Hook")


def _push(payload: Payload) -> Trigger | Ignore:
    ref = payload.text("ref", 255)
    kind = ref_kind(ref)
    if is_zero(payload.text("after", 64)):
        return Ignore(f"{'tag' if kind == 'tag' else 'branch'} deletion: nothing to build")
    if kind is None:
        return Ignore(f"ref {ref!r} is neither a branch nor a tag")
    # checkout_sha: the commit itself (`after` is the tag object of an annotated tag).
    sha = payload.sha("checkout_sha") if payload.has("checkout_sha") else payload.sha("after")
    commits = payload.items("commits")
    head = head_commit(commits, sha) or Payload({})
    before = payload.text("before", 64, default="")
    project = payload.part("project")
    web_url = project.url("web_url")
    # The commit's message (for a tag without it in `commits`, the tag's own).
    message = head.first("message", limit=MAX_MESSAGE) or payload.first(
        "message", limit=MAX_MESSAGE
    )
    if kind == "tag":
        compare = f"{web_url}/-/tags/{ref.removeprefix('refs/tags/')}" if web_url else ""
    else:
        compare = f"{web_url}/-/compare/{before}...{sha}" if web_url and before else ""
    # GitLab lists at most 20 commits; total_commits_count says how many were pushed.
    total = payload.data.get("total_commits_count")
    known = kind == "push" and not is_zero(before) and total == len(commits)
    return Trigger(
        event=kind,
        ref=ref,
        commit=sha,
        message=message,
        commit_author=head.part("author").first("name") or payload.first("user_name"),
        compare_url=compare if len(compare) <= 2000 else "",
        changed_files=changed_files(commits) if known else None,
        clone_url=project.url("git_http_url"),
        sender=payload.first("user_username"),
    )


def _merge_request(payload: Payload) -> Trigger | Ignore:
    attributes = payload.obj("object_attributes")
    action = attributes.text("action", default="")
    if action not in MR_BUILDS:
        return pr_ignored("merge request", action, MR_BUILDS)
    # An update without `oldrev` changed the title, labels or the like: no new commit.
    if action == "update" and not attributes.has("oldrev"):
        return Ignore("merge request updated without new commits: nothing new to build")
    number = attributes.integer("iid")
    last = attributes.obj("last_commit")
    diff_refs = attributes.part("diff_refs")
    return Trigger(
        event="pull_request",
        ref=f"refs/merge-requests/{number}/head",
        commit=last.sha("id"),
        message=last.text("message", MAX_MESSAGE, default=""),
        commit_author=last.part("author").first("name") or payload.part("user").first("username"),
        compare_url=attributes.url("url"),
        pr_number=number,
        pr_title=attributes.text("title", 500),
        source_branch=attributes.text("source_branch", 255),
        target_branch=attributes.text("target_branch", 255),
        base_commit=diff_refs.sha("base_sha") if diff_refs.has("base_sha") else "",
        fork=is_fork(
            attributes.data.get("source_project_id"), attributes.data.get("target_project_id")
        ),
        clone_url=payload.part("project").url("git_http_url"),
        sender=payload.part("user").first("username"),
    )


FORGE = Forge(
    name="gitlab",
    label="GitLab",
    event_headers=("x-gitlab-event",),
    delivery_headers=("idempotency-key", "x-gitlab-event-uuid"),
    verify=verify,
    parse=parse,
)
