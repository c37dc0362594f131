"""Commit statuses back to the forge (builds/commit_status.py), against a recording
HTTP server on 127.0.0.1 that plays GitHub's, GitLab's and Gitea's status APIs: what
reaches it, retries with backoff, refusals, and that a forge that is down neither
blocks nor fails a build."""

from __future__ import annotations

import logging
import select
import signal
import socket
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.urls import reverse
from django.utils import timezone

from builds import commit_status, services
from builds.commit_status import (
    MAX_ATTEMPTS,
    StatusSender,
    Unsendable,
    claim,
    repository_of,
    send,
    status_request,
)
from builds.models import Build, CommitStatus, Project, Status
from builds.secrets import FORGE_TOKEN, secret_set
from runners import queue
from runners.queue import job_claim
from runners.worker import Worker
from tests.http_recorder import Recorder, http_recorder
from tests.queue_helpers import make_project, require_postgres, start_worker, wait_for

# The sender runs in its own thread, with its own connection: it must see what the
# test commits. The tests of URLs alone need no database.
DB = pytest.mark.django_db(transaction=True)

SHA = "0123456789abcdef0123456789abcdef01234567"
TOKEN = "forge-token-123"  # noqa: S105  (a test value)
PUBLIC = "https://ci.example.com"
PIPELINE = "steps: [{name: hello, run: 'echo hello'}]"


class Forge(Recorder):
    """A forge's status API on 127.0.0.1: records every call, answers with the next
    of `answers` (then 201)."""

    def url(self, path: str = "owner/repo") -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    def states(self) -> list[str]:
        return [call.body.get("state", "") for call in self.calls]


@pytest.fixture
def forge() -> Iterator[Forge]:
    with http_recorder(201, lambda status, path: {"message": f"answered {status}"}, Forge) as f:
        yield f


@pytest.fixture(autouse=True)
def _settings(settings: Any, tmp_path: Path) -> None:
    settings.GOCI_CLONE_ALLOWED_HOSTS = ["127.0.0.1"]
    settings.GOCI_PUBLIC_URL = PUBLIC
    settings.GOCI_WORKSPACE_ROOT = tmp_path / "ws"


def forge_project(repo_url: str, slug: str = "shop", token: str | None = TOKEN) -> Project:
    project = make_project(slug)
    # Set after the creation, as a maintainer would: a build of a commit of a project
    # with a repository checks it out first, which these tests do not need.
    project.repo_url = repo_url
    project.save(update_fields=["repo_url"])
    if token is not None:
        secret_set(project=project, name=FORGE_TOKEN, value=token, user=owner_of(project))
    return project


def owner_of(project: Project) -> User:
    return User.objects.get(membership__project=project, membership__role="owner")


def queue_build(project: Project, forge_name: str = "github", commit: str = SHA) -> Build:
    """A build as a forge's push queues it (with a pipeline, and no checkout: the
    project's repository is set afterwards, see forge_project)."""
    repo_url = project.repo_url
    Project.objects.filter(pk=project.pk).update(repo_url="")
    project.repo_url = ""
    try:
        build, _ = services.build_create(
            project=project,
            pipeline=PIPELINE,
            ref="refs/heads/main",
            commit=commit,
            trigger=Build.Trigger.PUSH,
            origin={"forge": forge_name},
        )
    finally:
        Project.objects.filter(pk=project.pk).update(repo_url=repo_url)
        project.repo_url = repo_url
    assert not build.checkout
    return build


def finish(build: Build, status: str) -> None:
    """End the build's job as the worker would (queue.job_finish settles it)."""
    if status == Status.CANCELED:
        services.build_cancel(build=build)
        return
    job = job_claim(worker="test")
    assert job is not None
    assert job.build_id == build.pk
    queue.job_finish(job_id=job.pk, attempt=job.attempt, status=status)


def rows(build: Build) -> list[CommitStatus]:
    return list(CommitStatus.objects.filter(build=build).order_by("pk"))


def send_all() -> int:
    return StatusSender().send_due()


# -- what reaches each forge -----------------------------------------------------------


@DB
@pytest.mark.parametrize("status", [Status.SUCCESS, Status.FAILURE, Status.ERROR, Status.CANCELED])
def test_github_enterprise_gets_pending_then_the_end(forge: Forge, status: str) -> None:
    project = forge_project(forge.url("owner/repo"))
    build = queue_build(project, "github")
    assert send_all() == 1
    finish(build, status)
    assert send_all() == 1
    path = f"/api/v3/repos/owner/repo/statuses/{SHA}"
    assert [(c.method, c.path) for c in forge.calls] == [("POST", path)] * 2
    expected = "error" if status == Status.CANCELED else status  # GitHub has no canceled
    assert forge.states() == ["pending", expected]
    target = PUBLIC + reverse("builds:build", args=[build.pk])
    for call in forge.calls:
        assert call.headers["Authorization"] == f"Bearer {TOKEN}"
        assert call.headers["Accept"] == "application/vnd.github+json"
        assert call.headers["Host"] == f"127.0.0.1:{forge.port}"
        assert call.body["context"] == "goci/shop"
        assert call.body["target_url"] == target
    assert forge.calls[0].body["description"] == f"#{build.number} is queued"
    assert [row.sent_at is not None for row in rows(build)] == [True, True]


@DB
@pytest.mark.parametrize(
    ("status", "state"),
    [
        (Status.SUCCESS, "success"),
        (Status.FAILURE, "failed"),
        (Status.ERROR, "failed"),
        (Status.CANCELED, "canceled"),
    ],
)
def test_gitlab_gets_its_own_states_by_project_path(forge: Forge, status: str, state: str) -> None:
    project = forge_project(forge.url("group/sub/repo.git"))
    build = queue_build(project, "gitlab")
    finish(build, status)  # the pending one is superseded before it is sent
    assert send_all() == 1
    (call,) = forge.calls
    assert call.path == f"/api/v4/projects/group%2Fsub%2Frepo/statuses/{SHA}"
    assert call.headers["PRIVATE-TOKEN"] == TOKEN
    assert "Authorization" not in call.headers
    assert call.body["state"] == state
    assert call.body["name"] == "goci/shop"
    assert call.body["target_url"] == f"{PUBLIC}/builds/{build.pk}/"


@DB
def test_gitlab_gets_pending_too(forge: Forge) -> None:
    project = forge_project(forge.url("group/repo"))
    queue_build(project, "gitlab")
    send_all()
    assert forge.states() == ["pending"]
    assert forge.calls[0].path == f"/api/v4/projects/group%2Frepo/statuses/{SHA}"


@DB
@pytest.mark.parametrize("status", [Status.SUCCESS, Status.FAILURE, Status.ERROR, Status.CANCELED])
def test_gitea_gets_pending_then_the_end(forge: Forge, status: str) -> None:
    project = forge_project(forge.url("owner/repo"))
    build = queue_build(project, "gitea")
    send_all()
    finish(build, status)
    send_all()
    assert [c.path for c in forge.calls] == [f"/api/v1/repos/owner/repo/statuses/{SHA}"] * 2
    assert forge.states() == ["pending", "error" if status == Status.CANCELED else status]
    for call in forge.calls:
        assert call.headers["Authorization"] == f"token {TOKEN}"
        assert call.body["context"] == "goci/shop"
        assert call.body["target_url"] == f"{PUBLIC}/builds/{build.pk}/"


@DB
def test_the_sender_thread_is_woken_by_the_queue(forge: Forge) -> None:
    """Running as in a worker: the pending status goes out at once (the signal wakes
    the sender), not at its next poll."""
    project = forge_project(forge.url())
    sender = StatusSender(poll=30)
    sender.start()
    try:
        started = time.monotonic()
        build = queue_build(project)
        wait_for(lambda: len(forge.calls) == 1, 5, "the pending status")
        assert time.monotonic() - started < 5  # its poll is 30 s
        finish(build, Status.SUCCESS)
        wait_for(lambda: len(forge.calls) == 2, 5, "the final status")
    finally:
        sender.stop()
    assert forge.states() == ["pending", "success"]


@DB
def test_without_a_public_url_the_link_is_left_out_and_said_once(
    forge: Forge, settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings.GOCI_PUBLIC_URL = ""
    commit_status._say_no_public_url.cache_clear()
    project = forge_project(forge.url())
    with caplog.at_level(logging.WARNING, logger="builds.commit_status"):
        queue_build(project)
        queue_build(project, commit="f" * 40)
        send_all()
    assert len(forge.calls) == 2
    assert all("target_url" not in call.body for call in forge.calls)
    said = [r for r in caplog.records if "GOCI_PUBLIC_URL is not set" in r.getMessage()]
    assert len(said) == 1


# -- retries, refusals, giving up ------------------------------------------------------


@DB
def test_a_5xx_is_retried_with_growing_waits(forge: Forge) -> None:
    forge.answers = [500, 500]
    project = forge_project(forge.url())
    sender = StatusSender(poll=30)
    sender.start()
    try:
        build = queue_build(project)
        wait_for(lambda: len(forge.calls) == 3, 15, "three calls")
        wait_for(lambda: rows(build)[0].sent_at is not None, 5, "the row marked sent")
    finally:
        sender.stop()
    first, second, third = (call.at for call in forge.calls)
    # 1 s then 2 s, each with up to 25% more (the upper bounds leave room for a slow CI)
    assert 1.0 <= second - first < 4.0
    assert 2.0 <= third - second < 6.0
    (row,) = rows(build)
    assert row.attempts == 3
    assert row.last_error == ""


@DB
def test_429_is_retried_too(forge: Forge) -> None:
    forge.answers = [429]
    project = forge_project(forge.url())
    build = queue_build(project)
    send_all()
    (row,) = rows(build)
    assert row.sent_at is None
    assert "429" in row.last_error
    assert row.next_attempt_at > timezone.now()
    CommitStatus.objects.filter(pk=row.pk).update(next_attempt_at=timezone.now())
    send_all()
    assert rows(build)[0].sent_at is not None
    assert len(forge.calls) == 2


@DB
@pytest.mark.parametrize(("code", "hint"), [(401, "GOCI_FORGE_TOKEN"), (422, "answered 422")])
def test_a_4xx_is_not_retried_and_says_why(forge: Forge, code: int, hint: str) -> None:
    forge.answers = [code]
    project = forge_project(forge.url())
    build = queue_build(project)
    send_all()
    (row,) = rows(build)
    assert row.sent_at is None
    assert row.attempts == MAX_ATTEMPTS  # given up
    assert hint in row.last_error
    assert f"answered {code}" in row.last_error  # the forge's own words
    CommitStatus.objects.filter(pk=row.pk).update(next_attempt_at=timezone.now())
    assert send_all() == 0
    assert len(forge.calls) == 1


@DB
def test_it_gives_up_after_ten_attempts(forge: Forge) -> None:
    forge.answers = [503] * 20
    project = forge_project(forge.url())
    build = queue_build(project)
    for _ in range(12):
        CommitStatus.objects.filter(build=build).update(next_attempt_at=timezone.now())
        send_all()
    assert len(forge.calls) == MAX_ATTEMPTS
    (row,) = rows(build)
    assert row.attempts == MAX_ATTEMPTS
    assert row.last_error.startswith("gave up after 10 attempts: ")
    assert "503" in row.last_error


@DB
def test_a_redirect_is_not_followed(forge: Forge) -> None:
    forge.answers = [301]
    project = forge_project(forge.url())
    build = queue_build(project)
    send_all()
    assert len(forge.calls) == 1
    assert "redirects are not followed" in rows(build)[0].last_error


@DB
def test_without_a_token_nothing_is_sent_and_the_error_says_what_to_set(forge: Forge) -> None:
    project = forge_project(forge.url(), token=None)
    build = queue_build(project)
    send_all()
    assert forge.calls == []
    (row,) = rows(build)
    assert row.attempts == MAX_ATTEMPTS
    assert "set the project secret GOCI_FORGE_TOKEN" in row.last_error
    assert send_all() == 0


@DB
def test_an_older_unsent_pending_is_never_sent_after_the_end(forge: Forge) -> None:
    forge.answers = [503]
    project = forge_project(forge.url())
    build = queue_build(project)
    send_all()  # the pending one fails and waits for a retry
    finish(build, Status.SUCCESS)
    CommitStatus.objects.filter(build=build).update(next_attempt_at=timezone.now())
    send_all()
    CommitStatus.objects.filter(build=build).update(next_attempt_at=timezone.now())
    assert send_all() == 0
    assert forge.states() == ["pending", "success"]  # the failed try, then only the end
    pending, success = rows(build)
    assert pending.superseded
    assert pending.sent_at is None
    assert success.sent_at is not None


@DB
def test_a_newer_status_waits_for_the_one_being_sent(forge: Forge) -> None:
    """Claimed, the pending one is on its way when the build ends: the end is sent only
    after it, or it would arrive first and be overwritten."""
    project = forge_project(forge.url())
    build = queue_build(project)
    in_flight = claim()
    assert in_flight is not None
    finish(build, Status.FAILURE)
    assert claim() is None  # the failure waits
    send(in_flight)
    later = claim()
    assert later is not None
    assert later.state == "failure"
    send(later)
    assert forge.states() == ["pending", "failure"]


@DB
def test_a_rerun_s_status_waits_for_the_one_being_sent_of_the_same_commit(forge: Forge) -> None:
    """A rerun's statuses go to the same commit and context: they wait too."""
    project = forge_project(forge.url())
    build = queue_build(project)
    in_flight = claim()
    assert in_flight is not None
    rerun = services.build_rerun(build=build, author=None)
    assert claim() is None
    send(in_flight)
    later = claim()
    assert later is not None
    assert later.build_id == rerun.pk


@DB
def test_a_status_of_another_build_is_not_held_up(forge: Forge) -> None:
    project = forge_project(forge.url())
    first = queue_build(project)
    in_flight = claim()
    assert in_flight is not None
    assert in_flight.build_id == first.pk
    other = queue_build(project, commit="e" * 40)
    nxt = claim()
    assert nxt is not None
    assert nxt.build_id == other.pk


@DB
def test_a_dead_sender_s_claim_expires(forge: Forge) -> None:
    project = forge_project(forge.url())
    build = queue_build(project)
    first = claim()  # and its sender dies
    assert first is not None
    assert first.next_attempt_at - timezone.now() > commit_status.CLAIM_LEASE - timedelta(seconds=5)
    assert claim() is None
    CommitStatus.objects.filter(build=build).update(next_attempt_at=timezone.now())  # expired
    again = claim()
    assert again is not None
    assert again.attempts == 2


# -- never in a build's way -------------------------------------------------------------


@DB
def test_a_forge_that_is_down_neither_blocks_nor_fails_a_build(settings: Any) -> None:
    settings.GOCI_HOST_STEPS = "allow"
    with socket.socket() as closed:  # a port where nothing listens
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    project = forge_project(f"http://127.0.0.1:{port}/owner/repo")
    sender = StatusSender(poll=0.2)
    sender.start()
    try:
        build = queue_build(project)
        worker = Worker(name="w1")
        started = time.monotonic()
        try:
            assert worker.run_one_job() is True
        finally:
            worker.close()
        took = time.monotonic() - started
        build.refresh_from_db()
        assert build.status == Status.SUCCESS
        assert took < 10
        wait_for(
            lambda: all(row.attempts >= 1 for row in rows(build) if not row.superseded),
            10,
            "the final status tried",
        )
    finally:
        sender.stop()
    pending, success = rows(build)
    assert (pending.state, success.state) == ("pending", "success")
    assert success.sent_at is None
    assert "could not connect to 127.0.0.1" in success.last_error
    assert "Connection refused" in success.last_error
    assert success.next_attempt_at > timezone.now()  # to be retried


# -- where statuses may go ---------------------------------------------------------------


def _listener() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    return sock


def _nothing_connected(sock: socket.socket) -> bool:
    readable, _, _ = select.select([sock], [], [], 0.3)
    return readable == []


@DB
@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://127.0.0.1:{port}/owner/repo", "loopback"),
        ("https://localhost:{port}/owner/repo", "loopback"),
        ("http://127.0.0.1:{port}/owner/repo", "only https"),
        ("ssh://git@127.0.0.1:{port}/owner/repo.git", "loopback"),
        ("git@127.0.0.1:owner/repo.git", "loopback"),
    ],
)
def test_a_refused_address_gets_no_connection(settings: Any, url: str, reason: str) -> None:
    settings.GOCI_CLONE_ALLOWED_HOSTS = []
    with _listener() as sock:
        port = sock.getsockname()[1]
        project = forge_project(url.format(port=port))
        build = queue_build(project)
        send_all()
        assert _nothing_connected(sock)
    (row,) = rows(build)
    assert row.sent_at is None
    assert row.attempts == MAX_ATTEMPTS
    assert reason in row.last_error


@DB
def test_the_metadata_address_is_refused_even_when_listed(settings: Any) -> None:
    settings.GOCI_CLONE_ALLOWED_HOSTS = ["169.254.169.254"]
    project = forge_project("https://169.254.169.254/owner/repo")
    build = queue_build(project)
    send_all()
    assert "metadata" in rows(build)[0].last_error


# -- the URL of each forge's API -------------------------------------------------------


def _request(repo_url: str, forge_name: str, **build_fields: Any) -> Any:
    project = Project(slug="shop", repo_url=repo_url)
    build = Build(project=project, forge=forge_name, commit=SHA, pk=7, **build_fields)
    return status_request(build, "success", "#1 succeeded", TOKEN, "")


@pytest.mark.parametrize(
    ("repo_url", "forge_name", "host", "port", "path"),
    [
        ("https://github.com/owner/repo", "github", "api.github.com", 443, "/repos/owner/repo"),
        ("https://github.com/owner/repo.git", "github", "api.github.com", 443, "/repos/owner/repo"),
        ("git@github.com:owner/repo.git", "github", "api.github.com", 443, "/repos/owner/repo"),
        ("ssh://git@github.com/owner/repo", "github", "api.github.com", 443, "/repos/owner/repo"),
        ("https://ghe.example.com/o/r", "github", "ghe.example.com", 443, "/api/v3/repos/o/r"),
        ("ssh://git@ghe.example.com:2222/o/r", "github", "ghe.example.com", 443,
         "/api/v3/repos/o/r"),
        ("https://gitlab.com/g/s/r.git", "gitlab", "gitlab.com", 443, "/api/v4/projects/g%2Fs%2Fr"),
        ("git@gitlab.example.com:g/r.git", "gitlab", "gitlab.example.com", 443,
         "/api/v4/projects/g%2Fr"),
        ("https://codeberg.org/o/r", "gitea", "codeberg.org", 443, "/api/v1/repos/o/r"),
        ("https://git.example.com:3000/o/r/", "gitea", "git.example.com", 3000,
         "/api/v1/repos/o/r"),
    ],
)  # fmt: skip
def test_each_forge_s_api_url_comes_from_the_repository_url(
    repo_url: str, forge_name: str, host: str, port: int, path: str
) -> None:
    request = _request(repo_url, forge_name)
    assert (request.scheme, request.host, request.port) == ("https", host, port)
    assert request.path == f"{path}/statuses/{SHA}"


@pytest.mark.parametrize(
    ("repo_url", "forge_name", "problem"),
    [
        ("", "github", "neither"),
        ("file:///srv/repo", "github", "no forge API"),
        ("https://github.com/owner", "github", "not owner/repository"),
        ("https://gitea.example.com/a/b/c", "gitea", "not owner/repository"),
        ("https://github.com/../x", "github", "names no owner"),
        ("https://host:99999/o/r", "github", "invalid port"),
        ("https://github.com/o/r", "bitbucket", "no commit status API"),
    ],
)
def test_a_repository_url_without_an_api_says_why(
    repo_url: str, forge_name: str, problem: str
) -> None:
    with pytest.raises(Unsendable, match=problem):
        _request(repo_url, forge_name)


def test_the_commit_must_be_a_sha() -> None:
    with pytest.raises(Unsendable, match="not a commit sha"):
        status_request(
            Build(project=Project(slug="p", repo_url="https://github.com/o/r"), forge="github",
                  commit="main; rm"),
            "success", "", TOKEN, "",
        )  # fmt: skip


def test_an_ssh_url_maps_to_https_of_its_host() -> None:
    repo = repository_of("ssh://git@forge.example.com:2222/team/app.git")
    assert (repo.scheme, repo.host, repo.port, repo.path) == (
        "https",
        "forge.example.com",
        None,
        "team/app",
    )


def test_the_build_link_is_the_dashboards_build_page() -> None:
    build = Build(pk=42)
    assert commit_status.build_url(build) == PUBLIC + reverse("builds:build", args=[42])


# -- two senders ---------------------------------------------------------------------------


@DB
@pytest.mark.postgres
def test_two_senders_racing_send_each_status_once(forge: Forge) -> None:
    require_postgres()
    project = forge_project(forge.url())
    Project.objects.filter(pk=project.pk).update(auto_cancel=False)  # 40 builds of main
    project.auto_cancel = False
    builds = [queue_build(project, commit=f"{n:040x}") for n in range(40)]
    senders = [StatusSender(poll=0.1) for _ in range(2)]
    for sender in senders:
        sender.start()
    try:
        wait_for(lambda: len(forge.calls) >= 40, 30, "40 statuses")
        time.sleep(0.5)  # a duplicate would come now
    finally:
        for sender in senders:
            sender.stop()
    paths = sorted(call.path for call in forge.calls)
    assert paths == sorted(f"/api/v3/repos/owner/repo/statuses/{b.commit}" for b in builds)
    assert CommitStatus.objects.filter(sent_at__isnull=True).count() == 0
    assert set(CommitStatus.objects.values_list("attempts", flat=True)) == {1}


# -- where senders run -----------------------------------------------------------------


@DB
@pytest.mark.postgres
def test_a_worker_process_sends_the_statuses_of_what_it_runs(
    forge: Forge, tmp_path: Path, settings: Any
) -> None:
    require_postgres()
    project = forge_project(forge.url())
    build = queue_build(project)
    worker = start_worker(
        tmp_path,
        "w1",
        GOCI_CLONE_ALLOWED_HOSTS="127.0.0.1",
        GOCI_PUBLIC_URL=PUBLIC,
        GOCI_HOST_STEPS="allow",
        SECRET_KEY=settings.SECRET_KEY,  # the token's key is derived from it
    )
    try:
        wait_for(lambda: len(forge.calls) == 2, 60, "pending and success from the worker")
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=30)
    assert code == 0, (tmp_path / "w1.log").read_text()
    assert forge.states() == ["pending", "success"]
    assert forge.calls[1].body["target_url"] == f"{PUBLIC}/builds/{build.pk}/"
    assert all(row.sent_at is not None for row in rows(build))


def test_goci_up_sends_statuses_and_stops_cleanly(
    forge: Forge, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.test_up import GRACE, goci_up, manage

    data_dir = tmp_path / "data"
    monkeypatch.setenv("GOCI_CLONE_ALLOWED_HOSTS", "127.0.0.1")
    with goci_up(data_dir) as server:
        server.wait_ready()
        manage(
            data_dir,
            "from django.contrib.auth.models import User\n"
            "from builds import services\n"
            "from builds.secrets import secret_set\n"
            "user = User.objects.create_user('ann')\n"
            "project = services.project_create(user=user, slug='shop')\n"
            f"secret_set(project=project, name='GOCI_FORGE_TOKEN', value={TOKEN!r}, "
            "user=user)\n"
            "services.build_create(project=project, pipeline='steps: [{run: \"true\"}]', "
            f"commit={SHA!r}, ref='refs/heads/main', trigger='push', "
            "origin={'forge': 'gitea'})\n"
            f"services.project_update(project=project, repo_url={forge.url()!r})\n",
        )
        # Queued by another process: the sender finds it at its next look.
        wait_for(lambda: len(forge.calls) >= 1, 30, f"a status from goci up:\n{server.output()}")
        code, took = server.stop()
    assert code == 0, server.output()
    assert took < GRACE, server.output()
    assert forge.calls[0].path == f"/api/v1/repos/owner/repo/statuses/{SHA}"
    assert forge.calls[0].headers["Authorization"] == f"token {TOKEN}"
