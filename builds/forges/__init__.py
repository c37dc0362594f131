"""What a forge's webhook delivery says, behind one small interface (docs/webhooks.md).

One module per forge (github, gitlab, gitea for Gitea and Forgejo) gives a `Forge`:
the headers that name it, how it signs a delivery (checked on the raw body, in
constant time, before anything is parsed), and how its payload turns into a `Trigger`
(build this commit) or an `Ignore` (and why not). No Django here: builds/webhooks.py
is the view that reads the request, keeps the delivery and queues the build.

Every value taken from a payload goes through `Payload`, which refuses (`Malformed`,
a 422) what no forge sends and no column holds: a wrong type, a NUL, a lone surrogate,
a number or a text too big.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

# Git's "no commit" in before/after: a created or deleted ref.
ZERO_SHA = re.compile(r"0+")
SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
# What the build's columns hold (builds/models.py Build), and what no real payload
# exceeds: a longer value is refused rather than cut (a cut ref names another ref).
MAX_REF = 255
MAX_MESSAGE = 100_000
MAX_NAME = 200
MAX_TITLE = 500
MAX_URL = 2000
MAX_PATH = 4096
# More changed files than this: "not known" (every `when: path` matches), rather than
# a list that would weigh on every page and query of the build.
MAX_CHANGED_FILES = 10_000
MAX_INT = 2**31 - 1  # a PositiveIntegerField on every database
SKIP_MARKERS = ("[skip ci]", "[ci skip]")


class Malformed(ValueError):
    """A verified delivery whose payload is not what its forge sends (422)."""


@dataclass(frozen=True)
class Trigger:
    """A build to queue: what the forge told of the commit (services.ORIGIN_FIELDS and
    build_create's ref, commit, message, trigger and fork)."""

    event: str  # push, tag or pull_request (Build.Trigger's values)
    ref: str  # refs/heads/x, refs/tags/x, or the PR's own ref (refs/pull/N/head)
    commit: str
    message: str = ""  # the head commit's, where the payload has it
    commit_author: str = ""
    compare_url: str = ""
    pr_number: int | None = None
    pr_title: str = ""
    source_branch: str = ""
    target_branch: str = ""
    base_commit: str = ""
    fork: bool = False  # the code comes from another repository: no secrets
    # Paths the push changed, for `when: {path: ...}`; None: not known (a PR's come
    # from `git diff` after the checkout; a tag, a new branch, a forced or capped push).
    changed_files: tuple[str, ...] | None = None
    clone_url: str = ""  # shown only: the project's repo_url is what is cloned
    sender: str = ""  # the forge account that caused it, for the audit log

    def origin(self, forge: str) -> dict[str, Any]:
        """build_create's `origin` (services.ORIGIN_FIELDS)."""
        return {
            "forge": forge,
            "commit_author": self.commit_author,
            "compare_url": self.compare_url,
            "pr_number": self.pr_number,
            "pr_title": self.pr_title,
            "source_branch": self.source_branch,
            "target_branch": self.target_branch,
            "base_commit": self.base_commit,
            "changed_files": None if self.changed_files is None else list(self.changed_files),
        }

    @property
    def skip_marker(self) -> str | None:
        """`[skip ci]` or `[ci skip]` if the head commit's message holds one."""
        lowered = self.message.lower()
        return next((marker for marker in SKIP_MARKERS if marker in lowered), None)


@dataclass(frozen=True)
class Ignore:
    """A verified delivery that starts no build, and why (200 for a ping, else 202)."""

    reason: str
    status: int = 202


Headers = Mapping[str, str]  # lower-case names
Parse = Callable[[str, "Payload"], Trigger | Ignore]


@dataclass(frozen=True)
class Forge:
    name: str  # github, gitlab or gitea (Build.forge)
    label: str
    event_headers: tuple[str, ...]  # any one of them names this forge
    delivery_headers: tuple[str, ...]  # the first one present identifies the delivery
    verify: Callable[[Headers, bytes, str], str | None]  # None, or why it is refused
    parse: Parse

    def event(self, headers: Headers) -> str:
        return next((headers[name] for name in self.event_headers if headers.get(name)), "")

    def delivery_id(self, headers: Headers) -> str:
        return next((headers[name] for name in self.delivery_headers if headers.get(name)), "")


def recognise(headers: Headers, forges: tuple[Forge, ...]) -> Forge | None:
    """The forge whose event header the delivery carries. Order matters: Gitea and
    Forgejo also send GitHub's headers, so they come first."""
    return next(
        (forge for forge in forges if any(headers.get(h) for h in forge.event_headers)), None
    )


def is_zero(sha: str) -> bool:
    return bool(ZERO_SHA.fullmatch(sha))


class Payload:
    """A JSON object of a delivery, read with the type and limits each field must have;
    `where` names the field in the refusal (`pull_request.head.sha`)."""

    def __init__(self, data: Any, where: str = "") -> None:
        if not isinstance(data, dict):
            raise Malformed(f"{where or 'the payload'}: not a JSON object")
        self.data: dict[str, Any] = data
        self.where = where

    def _name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def obj(self, key: str) -> Payload:
        return Payload(self.data.get(key), self._name(key))

    def maybe_obj(self, key: str) -> Payload | None:
        return self.obj(key) if self.has(key) else None

    def part(self, key: str) -> Payload:
        """An object that may be absent or null (then an empty one)."""
        return self.obj(key) if self.has(key) else Payload({}, self._name(key))

    def first(self, *keys: str, limit: int = MAX_NAME) -> str:
        """The first of these text fields that is set and not empty, or ""."""
        for key in keys:
            if value := self.text(key, limit, default=""):
                return value
        return ""

    def text(self, key: str, limit: int = MAX_NAME, *, default: str | None = None) -> str:
        value = self.data.get(key)
        if value is None and default is not None:
            return default
        return checked_text(value, self._name(key), limit)

    def sha(self, key: str) -> str:
        value = self.text(key, 64)
        if not SHA.fullmatch(value):
            raise Malformed(f"{self._name(key)}: not a commit id (40 or 64 hex digits)")
        return value

    def url(self, key: str) -> str:
        """A web address to link to, or "" (a javascript: link is never shown)."""
        value = self.text(key, MAX_URL, default="")
        return value if value.startswith(("https://", "http://")) else ""

    def integer(self, key: str) -> int:
        value = self.data.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_INT:
            raise Malformed(f"{self._name(key)}: not a number from 1 to {MAX_INT}")
        return value

    def flag(self, key: str) -> bool:
        return self.data.get(key) is True

    def items(self, key: str) -> list[Any]:
        value = self.data.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise Malformed(f"{self._name(key)}: not a list")
        return value


def checked_text(value: Any, where: str, limit: int) -> str:
    if not isinstance(value, str):
        raise Malformed(f"{where}: not a string")
    if len(value) > limit:
        raise Malformed(f"{where}: longer than {limit} characters")
    if "\x00" in value:
        raise Malformed(f"{where}: holds a NUL character")
    try:
        value.encode()
    except UnicodeEncodeError as exc:  # JSON's "\ud800": no database stores it
        raise Malformed(f"{where}: holds a lone surrogate") from exc
    return value


def is_fork(head_repository: Any, base_repository: Any) -> bool:
    """Whether a pull request's head repository (its id) is not its base repository.
    Not known (a deleted fork, an abbreviated payload) counts as a fork: its build gets
    no secrets."""
    return head_repository is None or base_repository is None or head_repository != base_repository


def ref_kind(ref: str) -> str | None:
    """push for a branch, tag for a tag, None for any other ref."""
    if ref.startswith("refs/heads/") and len(ref) > len("refs/heads/"):
        return "push"
    if ref.startswith("refs/tags/") and len(ref) > len("refs/tags/"):
        return "tag"
    return None


def changed_files(commits: list[Any], where: str = "commits") -> tuple[str, ...] | None:
    """The paths added, modified or removed by the pushed commits, in first-seen order;
    None if a commit does not list them (an abbreviated payload) or there are too many."""
    found: dict[str, None] = {}
    for index, raw in enumerate(commits):
        commit = Payload(raw, f"{where}[{index}]")
        for key in ("added", "modified", "removed"):
            if key not in commit.data:
                return None
            for i, path in enumerate(commit.items(key)):
                found[checked_text(path, f"{commit.where}.{key}[{i}]", MAX_PATH)] = None
        if len(found) > MAX_CHANGED_FILES:
            return None
    return tuple(found)


def head_commit(commits: list[Any], sha: str, where: str = "commits") -> Payload | None:
    """The pushed commit `sha` among `commits` (GitHub lists oldest first, Gitea newest
    first: found by id)."""
    for index, raw in enumerate(commits):
        commit = Payload(raw, f"{where}[{index}]")
        if commit.data.get("id") == sha:
            return commit
    return None


def pr_ignored(noun: str, action: str, builds: tuple[str, ...]) -> Ignore:
    shown = repr(action[:100]) if action else "without an action"
    return Ignore(f"{noun} {shown}: only {', '.join(builds[:-1])} and {builds[-1]} start a build")


def other_event(event: str, builds: str) -> Ignore:
    shown = event if len(event) <= 100 else event[:100] + "…"
    return Ignore(f"event {shown!r} starts no build (only {builds} do)")


def all_forges() -> tuple[Forge, ...]:
    """Every forge, in the order they are recognised (Gitea before GitHub)."""
    from builds.forges import gitea, github, gitlab  # noqa: PLC0415  (they import this)

    return (gitea.FORGE, gitlab.FORGE, github.FORGE)
