"""The forges' deliveries read without Django: recognising the forge from its headers,
verifying a signature on the raw bytes, and turning every real payload of the corpus
(tests/corpus/webhooks/, copied byte-for-byte from the team's shared corpus) into the
build it asks for, or the reason it asks for none. The view that does this for a
request is tested in tests/test_webhooks.py."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest

from builds.forges import (
    MAX_CHANGED_FILES,
    Ignore,
    Malformed,
    Payload,
    Trigger,
    all_forges,
    gitea,
    github,
    gitlab,
    recognise,
)

CORPUS = Path(__file__).resolve().parent / "corpus" / "webhooks"
INDEX = json.loads((CORPUS / "index.json").read_text()) if CORPUS.exists() else []
SIGNED = json.loads((CORPUS / "signed-deliveries.json").read_text()) if CORPUS.exists() else []
FORGES = {forge.name: forge for forge in all_forges()}
ZERO = "0" * 40

# What each corpus payload must give: a build of this event, or an ignore whose reason
# holds these words (and a ping is 200, every other ignore 202).
EXPECTED: dict[str, tuple[str, str]] = {
    "github/push-branch.json": ("build", "push"),
    "github/push-branch-forced.json": ("build", "push"),
    "github/push-branch-created.json": ("build", "push"),
    "github/push-branch-deleted.json": ("ignore", "branch deletion"),
    "github/push-tag.json": ("build", "tag"),
    "github/push-tag-2.json": ("build", "tag"),
    "github/push-tag-deleted.json": ("ignore", "tag deletion"),
    "github/pull_request-opened.json": ("build", "pull_request"),
    "github/pull_request-synchronize.json": ("build", "pull_request"),
    "github/pull_request-closed.json": ("ignore", "pull request 'closed'"),
    "github/pull_request-closed-merged.json": ("ignore", "pull request 'merged'"),
    "github/pull_request-reopened.json": ("build", "pull_request"),
    "github/ping.json": ("ignore", "ping"),
    "github/ping-app.json": ("ignore", "ping"),
    "gitlab/push-branch.json": ("build", "push"),
    "gitlab/push-branch-2.json": ("build", "push"),
    "gitlab/push-branch-created.json": ("build", "push"),
    "gitlab/push-branch-deleted.json": ("ignore", "branch deletion"),
    "gitlab/tag_push-created.json": ("build", "tag"),
    "gitlab/tag_push-created-2.json": ("build", "tag"),
    "gitlab/tag_push-deleted.json": ("ignore", "tag deletion"),
    "gitlab/merge_request-opened.json": ("build", "pull_request"),
    "gitlab/merge_request-opened-2.json": ("build", "pull_request"),
    "gitlab/merge_request-updated.json": ("build", "pull_request"),
    "gitlab/merge_request-updated-no-new-commits.json": ("ignore", "without new commits"),
    "gitlab/merge_request-closed.json": ("ignore", "merge request 'close'"),
    "gitlab/merge_request-merged.json": ("ignore", "merge request 'merge'"),
    "gitea/push-branch-abbreviated.json": ("build", "push"),
    "gitea/push-branch-multi.json": ("build", "push"),
    "gitea/push-branch-created.json": ("build", "push"),
    "gitea/push-branch.json": ("build", "push"),
    "gitea/create-tag.json": ("ignore", "create event"),
    "gitea/create-branch.json": ("ignore", "create event"),
    "gitea/delete-branch.json": ("ignore", "delete event"),
    "gitea/delete-tag.json": ("ignore", "delete event"),
    "gitea/pull_request-opened-abbreviated.json": ("build", "pull_request"),
    "gitea/pull_request-opened.json": ("build", "pull_request"),
    "gitea/pull_request-synchronized.json": ("build", "pull_request"),
    "gitea/pull_request-closed.json": ("ignore", "pull request 'closed'"),
    "gitea/pull_request-closed-merged.json": ("ignore", "pull request 'merged'"),
    "gitea/pull_request-reopened.json": ("build", "pull_request"),
}

pytestmark = pytest.mark.skipif(not CORPUS.exists(), reason=f"no corpus at {CORPUS}")


def lower(headers: dict[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def parse_file(entry: dict[str, Any]) -> Trigger | Ignore:
    headers = lower(entry["headers"])
    forge = recognise(headers, all_forges())
    assert forge is not None
    assert forge.name == entry["file"].split("/")[0]
    return forge.parse(
        forge.event(headers), Payload(json.loads((CORPUS / entry["file"]).read_bytes()))
    )


def test_the_table_names_every_payload_of_the_corpus() -> None:
    assert {entry["file"] for entry in INDEX} == set(EXPECTED)


@pytest.mark.parametrize("entry", INDEX, ids=[entry["file"] for entry in INDEX])
def test_every_corpus_payload_gives_its_build_or_the_reason_for_none(entry: dict[str, Any]) -> None:
    result = parse_file(entry)
    kind, what = EXPECTED[entry["file"]]
    extract = entry["extract"]
    if kind == "ignore":
        assert isinstance(result, Ignore)
        assert what in result.reason
        assert result.status == (200 if what == "ping" else 202)
        return
    assert isinstance(result, Trigger)
    assert result.event == what
    if what == "pull_request":
        number = extract.get("number", extract.get("iid"))
        assert result.pr_number == number
        assert result.commit == extract.get("head_sha", extract.get("last_commit"))
        assert result.source_branch == extract.get("head_ref", extract.get("source_branch"))
        assert result.target_branch == extract.get("base_ref", extract.get("target_branch"))
        assert result.pr_title
        prefix = "merge-requests" if entry["file"].startswith("gitlab/") else "pull"
        assert result.ref == f"refs/{prefix}/{number}/head"
        assert result.changed_files is None  # from git diff after the checkout
    else:
        assert result.ref == extract["ref"]
        # GitLab's checkout_sha is the commit (its `after` may be an annotated tag).
        assert result.commit == (extract.get("checkout_sha") or extract["after"])
    assert result.compare_url.startswith(("https://", "http://"))
    assert result.commit_author


def test_a_push_lists_the_files_its_commits_changed() -> None:
    result = parse_file(next(e for e in INDEX if e["file"] == "gitea/push-branch-multi.json"))
    assert isinstance(result, Trigger)
    body = json.loads((CORPUS / "gitea/push-branch-multi.json").read_bytes())
    paths = {p for c in body["commits"] for k in ("added", "modified", "removed") for p in c[k]}
    assert result.changed_files is not None
    assert set(result.changed_files) == paths
    assert len(result.changed_files) == len(paths)  # each once
    assert result.message == "add some text\n"  # the head commit's: Gitea lists it first


@pytest.mark.parametrize(
    ("file", "why"),
    [
        ("github/push-branch-forced.json", "a forced push drops commits the list omits"),
        ("github/push-branch-created.json", "a new branch: changed since what?"),
        ("github/push-tag.json", "a tag"),
        ("gitlab/push-branch.json", "GitLab lists 2 of the 4 pushed commits"),
        ("gitea/push-branch-created.json", "a new branch"),
    ],
)
def test_changed_files_are_unknown_when_the_payload_cannot_tell(file: str, why: str) -> None:
    result = parse_file(next(e for e in INDEX if e["file"] == file))
    assert isinstance(result, Trigger)
    assert result.changed_files is None, why


def push(commits: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    return {
        "ref": "refs/heads/main",
        "before": "a" * 40,
        "after": "b" * 40,
        "commits": commits,
        "head_commit": {"id": "b" * 40, "message": "work", "author": {"name": "Ann"}},
        **fields,
    }


def commit(n: int, **files: list[str]) -> dict[str, Any]:
    return {"id": f"{n:040x}", "added": [], "modified": [], "removed": [], **files}


def test_a_github_push_of_twenty_commits_may_be_capped_so_its_files_are_unknown() -> None:
    result = github.parse("push", Payload(push([commit(n, added=[f"f{n}"]) for n in range(20)])))
    assert isinstance(result, Trigger)
    assert result.changed_files is None
    result = github.parse("push", Payload(push([commit(n, added=[f"f{n}"]) for n in range(19)])))
    assert isinstance(result, Trigger)
    assert result.changed_files == tuple(f"f{n}" for n in range(19))


def test_an_abbreviated_commit_without_its_file_lists_makes_them_unknown() -> None:
    result = github.parse("push", Payload(push([{"id": "b" * 40, "message": "x"}])))
    assert isinstance(result, Trigger)
    assert result.changed_files is None


def test_too_many_changed_files_are_unknown_rather_than_stored() -> None:
    many = [f"dir/file{n}" for n in range(MAX_CHANGED_FILES + 1)]
    result = github.parse("push", Payload(push([commit(1, modified=many)])))
    assert isinstance(result, Trigger)
    assert result.changed_files is None


@pytest.mark.parametrize("message", ["docs [skip ci]", "[CI SKIP] typo", "x\n\n[skip ci]\n"])
def test_skip_markers_in_the_head_commits_message_are_found(message: str) -> None:
    body = push([], head_commit={"id": "b" * 40, "message": message})
    result = github.parse("push", Payload(body))
    assert isinstance(result, Trigger)
    assert result.skip_marker in ("[skip ci]", "[ci skip]")
    clean = github.parse("push", Payload(push([])))
    assert isinstance(clean, Trigger)
    assert clean.skip_marker is None


def test_a_pull_request_from_another_repository_is_a_fork() -> None:
    entry = next(e for e in INDEX if e["file"] == "github/pull_request-opened.json")
    body = json.loads((CORPUS / entry["file"]).read_bytes())
    same = github.parse("pull_request", Payload(body))
    assert isinstance(same, Trigger)
    assert not same.fork
    body["pull_request"]["head"]["repo"]["id"] = 1
    body["pull_request"]["head"]["repo"]["full_name"] = "mallory/Hello-World"
    fork = github.parse("pull_request", Payload(body))
    assert isinstance(fork, Trigger)
    assert fork.fork
    body["pull_request"]["head"]["repo"] = None  # the fork was deleted
    gone = github.parse("pull_request", Payload(body))
    assert isinstance(gone, Trigger)
    assert gone.fork


def test_a_gitlab_merge_request_from_another_project_is_a_fork() -> None:
    body = json.loads((CORPUS / "gitlab/merge_request-opened.json").read_bytes())
    body["object_attributes"]["source_project_id"] = 99
    result = gitlab.parse("Merge Request Hook", Payload(body))
    assert isinstance(result, Trigger)
    assert result.fork


def test_other_events_are_ignored_with_their_name() -> None:
    for forge, event in (("github", "issues"), ("gitlab", "Issue Hook"), ("gitea", "release")):
        result = FORGES[forge].parse(event, Payload({}))
        assert isinstance(result, Ignore)
        assert result.status == 202
        assert repr(event) in result.reason


# ---------------------------------------------------------------------------
# Recognising the forge


@pytest.mark.parametrize(
    ("headers", "forge"),
    [
        ({"x-github-event": "push"}, "github"),
        ({"x-gitlab-event": "Push Hook"}, "gitlab"),
        ({"x-gitea-event": "push"}, "gitea"),
        ({"x-forgejo-event": "push"}, "gitea"),
        # Gitea and Forgejo send GitHub's headers too: they are not GitHub.
        ({"x-github-event": "push", "x-gitea-event": "push"}, "gitea"),
        ({"x-github-event": "push", "x-forgejo-event": "push", "x-gitea-event": "push"}, "gitea"),
        ({"x-gogs-event": "push"}, None),
        ({"x-github-event": ""}, None),
        ({}, None),
    ],
)
def test_the_forge_is_recognised_from_its_event_header(
    headers: dict[str, str], forge: str | None
) -> None:
    found = recognise(headers, all_forges())
    assert (found.name if found else None) == forge


def test_the_delivery_id_comes_from_the_forges_header() -> None:
    assert FORGES["github"].delivery_id({"x-github-delivery": "a-b"}) == "a-b"
    # GitLab's Idempotency-Key stays the same across retries; its Event-UUID is shared
    # by hooks that other hooks triggered: the key comes first.
    both = {"idempotency-key": "key", "x-gitlab-event-uuid": "uuid"}
    assert FORGES["gitlab"].delivery_id(both) == "key"
    assert FORGES["gitlab"].delivery_id({"x-gitlab-event-uuid": "uuid"}) == "uuid"
    assert FORGES["gitea"].delivery_id({"x-gitea-delivery": "g"}) == "g"
    assert FORGES["gitea"].delivery_id({"x-forgejo-delivery": "f", "x-gitea-delivery": "f"}) == "f"
    assert FORGES["github"].delivery_id({}) == ""


# ---------------------------------------------------------------------------
# Signatures, on the raw bytes


def signed_cases() -> list[tuple[str, bytes, str, dict[str, str]]]:
    """(forge, body, secret, headers) of every real signed delivery of the corpus."""
    cases = []
    for entry in SIGNED:
        body = (
            entry["body_literal"].encode()
            if "body_literal" in entry
            else (CORPUS / entry["body"]).read_bytes()
        )
        check = lower(entry["check"])
        if entry.get("headers"):
            headers = lower(json.loads((CORPUS / entry["headers"]).read_text()))
        else:
            headers = {name: value for name, value in check.items() if "gitea" in name} or check
        forge = next(
            (name for name in ("gitea", "gitlab") if name in entry.get("body", "")), "github"
        )
        cases.append((forge, body, entry["secret"], headers))
    return cases


SIGNED_CASES = signed_cases()


@pytest.mark.parametrize(("forge", "body", "secret", "headers"), SIGNED_CASES)
def test_every_real_signed_delivery_verifies_byte_for_byte(
    forge: str, body: bytes, secret: str, headers: dict[str, str]
) -> None:
    verify = FORGES[forge].verify
    assert verify(headers, body, secret) is None
    assert verify(headers, body, secret + "x") is not None  # another secret
    if forge != "gitlab":  # GitLab signs nothing: its token is the secret itself
        flipped = bytes([body[0] ^ 1]) + body[1:]
        assert verify(headers, flipped, secret) is not None
        assert verify(headers, body + b" ", secret) is not None
        if body.startswith(b"{"):  # re-serialised JSON is other bytes
            assert verify(headers, json.dumps(json.loads(body)).encode(), secret) is not None


def test_githubs_documented_test_vector() -> None:
    assert (
        github.sign(b"Hello, World!", "It's a Secret to Everybody")
        == "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    )


BODY = b'{"ref": "refs/heads/main"}'
SECRET = "s3cret-s3cret"  # noqa: S105  (a test's)
SHA1 = "sha1=" + hmac.new(SECRET.encode(), BODY, hashlib.sha1).hexdigest()
GITEA = gitea.sign(BODY, SECRET)
GOOD = {
    "github": {"x-hub-signature-256": github.sign(BODY, SECRET)},
    "gitlab": {"x-gitlab-token": SECRET},
    "gitea": {"x-gitea-signature": gitea.sign(BODY, SECRET)},
}
BAD: list[tuple[str, dict[str, str], str]] = [
    ("github", {}, "no X-Hub-Signature-256"),
    ("github", {"x-hub-signature-256": ""}, "empty"),
    ("github", {"x-hub-signature-256": github.sign(BODY, SECRET)[:-1]}, "not sha256="),
    ("github", {"x-hub-signature-256": github.sign(BODY, "other")}, "does not match"),
    ("github", {"x-hub-signature-256": github.sign(BODY, SECRET)[7:]}, "not sha256="),
    ("github", {"x-hub-signature": SHA1}, "no X-Hub"),  # the legacy SHA-1 is not enough
    ("github", {"x-gitea-signature": gitea.sign(BODY, SECRET)}, "no X-Hub"),  # another forge's
    ("github", {"x-gitlab-token": SECRET}, "no X-Hub"),
    ("gitlab", {}, "no X-Gitlab-Token"),
    ("gitlab", {"x-gitlab-token": ""}, "empty"),
    ("gitlab", {"x-gitlab-token": SECRET[:-1]}, "not the project's"),
    ("gitlab", {"x-gitlab-token": SECRET + "\x00"}, "not the project's"),
    ("gitlab", {"x-hub-signature-256": github.sign(BODY, SECRET)}, "no X-Gitlab-Token"),
    ("gitea", {}, "no X-Gitea-Signature"),
    ("gitea", {"x-gitea-signature": ""}, "empty"),
    ("gitea", {"x-gitea-signature": gitea.sign(BODY, SECRET)[:-2]}, "not 64 hex"),
    ("gitea", {"x-gitea-signature": gitea.sign(BODY, "other")}, "does not match"),
    ("gitea", {"x-hub-signature-256": github.sign(BODY, SECRET)}, "no X-Gitea-Signature"),
    # Forgejo sends both: both must hold.
    ("gitea", {"x-gitea-signature": GITEA, "x-forgejo-signature": "0" * 64}, "does not match"),
    ("gitea", {"x-gitea-signature": GITEA, "x-forgejo-signature": ""}, "empty"),
]  # fmt: skip


@pytest.mark.parametrize("forge", sorted(GOOD))
def test_a_good_signature_verifies(forge: str) -> None:
    assert FORGES[forge].verify(GOOD[forge], BODY, SECRET) is None


def test_forgejo_signs_with_its_own_header_too() -> None:
    signature = gitea.sign(BODY, SECRET)
    assert FORGES["gitea"].verify({"x-forgejo-signature": signature}, BODY, SECRET) is None
    both = {"x-forgejo-signature": signature, "x-gitea-signature": signature.upper()}
    assert FORGES["gitea"].verify(both, BODY, SECRET) is None


@pytest.mark.parametrize(
    ("forge", "headers", "why"), BAD, ids=[f"{f}-{w}-{i}" for i, (f, _, w) in enumerate(BAD)]
)
def test_every_bad_signature_is_refused_and_says_why(
    forge: str, headers: dict[str, str], why: str
) -> None:
    problem = FORGES[forge].verify(headers, BODY, SECRET)
    assert problem is not None
    assert why in problem


# ---------------------------------------------------------------------------
# Payload fields that no forge sends and no column holds


def pr_body() -> dict[str, Any]:
    return json.loads((CORPUS / "github/pull_request-opened.json").read_bytes())


def set_field(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    *parents, last = path.split(".")
    node = body
    for name in parents:
        node = node[name]
    node[last] = value
    return body


HOSTILE = ["a\x00b", "\ud800", "x" * 10_000_000, 10**30, 2**31, -1, 0, True, 1.5, ["x"], {"a": 1}]
PR_FIELDS = [
    "pull_request.number",
    "pull_request.title",
    "pull_request.head.sha",
    "pull_request.head.ref",
    "pull_request.base.ref",
    "pull_request.base.sha",
]


@pytest.mark.parametrize("value", HOSTILE, ids=lambda v: repr(v)[:20])
@pytest.mark.parametrize("field", PR_FIELDS)
def test_a_hostile_field_is_malformed_never_a_crash(field: str, value: Any) -> None:
    body = set_field(pr_body(), field, value)
    with pytest.raises(Malformed, match=field.replace(".", r"\.")):
        github.parse("pull_request", Payload(body))


@pytest.mark.parametrize("value", ["a\x00b", "\ud800", "x" * 200_000, 7, None])
def test_a_hostile_commit_message_is_malformed(value: Any) -> None:
    body = push([], head_commit={"id": "b" * 40, "message": value})
    if value is None:  # no message is no problem
        assert isinstance(github.parse("push", Payload(body)), Trigger)
        return
    with pytest.raises(Malformed, match=r"head_commit\.message"):
        github.parse("push", Payload(body))


@pytest.mark.parametrize("path", ["a\x00b", "\udcff", "x" * 5000, 3])
def test_a_hostile_changed_path_is_malformed(path: Any) -> None:
    with pytest.raises(Malformed, match=r"commits\[0\]\.added\[0\]"):
        github.parse("push", Payload(push([commit(1, added=[path])])))


@pytest.mark.parametrize("payload", [[], "x", 3, None])
def test_a_payload_that_is_no_object_is_malformed(payload: Any) -> None:
    with pytest.raises(Malformed, match="not a JSON object"):
        github.parse("push", Payload(payload))


def test_a_javascript_compare_link_is_dropped() -> None:
    result = github.parse("push", Payload(push([], compare="javascript:alert(1)")))
    assert isinstance(result, Trigger)
    assert result.compare_url == ""
