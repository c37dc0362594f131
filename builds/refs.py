"""The project's repository as the server sees it, before any build: its branches and
tags (the Run form offers them) and the pipeline file at one of them (a manual run, an
API run or a schedule reads it there, to check the inputs against it and to queue the
build with that snapshot at that commit).

Git runs as the worker runs it (runners/checkout.py): the same URL check, addresses
pinned, no redirects, the clone credentials in git's environment only, a deadline; in
a temporary directory that goes with the call.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from builds.clone_urls import CloneUrlRefused, check_clone_url
from builds.models import Project
from builds.pipeline import MAX_BYTES
from runners.checkout import (
    Checkout,
    CheckoutCanceled,
    CheckoutError,
    full_ref,
    read_pipeline,
)

TIMEOUT = 60.0  # seconds of git for one answer to a person waiting on a page
MAX_REFS = 1000  # offered in the Run form


class RefError(ValueError):
    """The ref or the pipeline there cannot be read; the message says why and what to do."""


def _checkout(project: Project, directory: str) -> Checkout:
    # Imported here: runners.worker imports the engine and executors, which a web
    # process needs for nothing else.
    from runners.worker import clone_credentials  # noqa: PLC0415

    try:
        target = check_clone_url(project.repo_url, settings.GOCI_CLONE_ALLOWED_HOSTS)
    except CloneUrlRefused as error:
        raise RefError(f"the project's repository URL is refused: {error}") from error
    return Checkout(
        Path(directory),
        target,
        commit="",
        credentials=clone_credentials(project),
        timeout=TIMEOUT,
    )


def remote_refs(project: Project) -> dict[str, str]:
    """Full ref -> commit of the repository's branches and tags."""
    with tempfile.TemporaryDirectory(prefix="goci-refs-") as directory:
        try:
            with _checkout(project, directory) as checkout:
                return checkout.remote_refs()
        except (CheckoutError, CheckoutCanceled) as error:
            raise RefError(f"cannot list the repository's branches and tags: {error}") from error


def choices(project: Project, refs: dict[str, str] | None = None) -> tuple[list[str], list[str]]:
    """The branch names and tag names, for the Run form (the default branch first), of
    `refs` (as remote_refs answers) or of the repository now."""
    refs = remote_refs(project) if refs is None else refs
    branches = sorted(name[len("refs/heads/") :] for name in refs if name.startswith("refs/heads/"))
    tags = sorted(
        (name[len("refs/tags/") :] for name in refs if name.startswith("refs/tags/")),
        reverse=True,
    )
    if project.default_branch in branches:
        branches.remove(project.default_branch)
        branches.insert(0, project.default_branch)
    return branches[:MAX_REFS], tags[:MAX_REFS]


@dataclass(frozen=True)
class AtRef:
    """The repository at one ref, as pipeline_at read it."""

    ref: str  # the full ref
    commit: str
    pipeline: str  # the pipeline file's text
    refs: dict[str, str]  # every branch and tag then: full ref -> commit


def pipeline_at(project: Project, ref: str) -> AtRef:
    """The project's repository at `ref`: a branch or tag name, or a full ref
    (refs/heads/..., refs/tags/...), with one `git ls-remote` and a one-commit fetch."""
    with tempfile.TemporaryDirectory(prefix="goci-refs-") as directory:
        try:
            with _checkout(project, directory) as checkout:
                refs = checkout.remote_refs()
                wanted = _find(ref, refs)
                commit = checkout.fetch_ref(wanted)
                _, data = read_pipeline(checkout, project.pipeline_path, commit, MAX_BYTES)
        except (CheckoutError, CheckoutCanceled) as error:
            raise RefError(f"cannot read the pipeline at {ref}: {error}") from error
    # Too big or not UTF-8: load() says so, with the file's name.
    try:
        text = data.decode()
    except UnicodeDecodeError as error:
        raise RefError(f"{project.pipeline_path} at {ref} is not UTF-8 text") from error
    return AtRef(wanted, commit, text, refs)


def _find(ref: str, refs: dict[str, str]) -> str:
    candidates = [ref] if ref.startswith("refs/") else [full_ref(ref), f"refs/tags/{ref}"]
    for candidate in candidates:
        if candidate in refs:
            return candidate
    raise RefError(f"the repository has no branch or tag named {ref[:255]!r}")
