"""The worker checks the build's exact commit out before the first step (the step
"clone"), from a real git server on 127.0.0.1 (tests/git_server.py): the pipeline
comes from that commit, `clone:` changes how much is fetched, a pull request's changed
files come from `git diff base...head`, credentials never reach the log or the
workspace, and a URL Goci must not reach is refused without a connection."""

from __future__ import annotations

import base64
import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection

from builds import services
from builds.models import Build, Job, LogChunk, Project, Status, Step
from builds.secrets import CLONE_SSH_KEY, CLONE_TOKEN, secret_set
from runners.worker import Worker
from tests.git_server import GitServer, Listener, Repo, git, git_server
from tests.queue_helpers import log_lines, make_project, run_one

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "ghp_T0kenForTheTestServer42"  # noqa: S105  (a test value)
SHOW = """
steps:
  - name: show
    run: |
      cat a.txt
      git rev-parse HEAD
      git rev-list --count HEAD
      git status --porcelain
      echo "status done"
"""


@pytest.fixture(autouse=True)
def workspaces(tmp_path: Path, settings: Any) -> None:
    settings.GOCI_WORKSPACE_ROOT = tmp_path / "ws"
    settings.GOCI_CLONE_ALLOWED_HOSTS = ["127.0.0.1"]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[GitServer]:
    (tmp_path / "git").mkdir()
    with git_server(tmp_path / "git") as running:
        yield running


def project_for(url: str, slug: str = "shop", **fields: Any) -> Project:
    """A project with this clone URL, stored as is: as if saved before a check (or
    before its host's DNS changed)."""
    project = make_project(slug)
    Project.objects.filter(pk=project.pk).update(repo_url=url, **fields)
    project.refresh_from_db()
    return project


def push_build(project: Project, commit: str, pipeline: str = "", **fields: Any) -> Build:
    fields.setdefault("ref", "refs/heads/main")
    fields.setdefault("trigger", Build.Trigger.PUSH)
    build, _ = services.build_create(project=project, pipeline=pipeline, commit=commit, **fields)
    return build


def lines_of(build: Build, step: str) -> list[str]:
    return [text for _, text in log_lines(Step.objects.get(job__build=build, name=step))]


def step(build: Build, name: str) -> Step:
    return Step.objects.get(job__build=build, name=name)


def stored_log(build: Build) -> str:
    return "\n".join(LogChunk.objects.filter(step__job__build=build).values_list("text", flat=True))


def test_a_build_of_a_commit_runs_the_pipeline_of_that_commit_on_its_files(
    server: GitServer, settings: Any
) -> None:
    repo = server.repo("shop")
    first = repo.commit({".goci.yml": SHOW, "a.txt": "first version\n"}, "one")
    repo.commit({".goci.yml": SHOW.replace("show", "later"), "a.txt": "second\n"}, "two")
    build = push_build(project_for(server.url(repo)), first)
    assert build.checkout
    assert build.pipeline == ""

    build = run_one(build)

    assert build.status == Status.SUCCESS, build.jobs.get().error
    assert build.pipeline == SHOW  # the snapshot of the file in that commit
    names = list(Step.objects.filter(job__build=build).values_list("name", flat=True))
    assert names == ["clone", "show"]  # the first commit's pipeline, after "clone"
    assert lines_of(build, "show") == ["first version", first, "1", "status done"]
    clone = lines_of(build, "clone")
    assert f"$ git fetch --no-tags --depth=1 origin {first}" in clone
    assert step(build, "clone").status == Status.SUCCESS
    assert list(Path(settings.GOCI_WORKSPACE_ROOT).iterdir()) == []  # removed after


def test_the_pipeline_is_read_from_goci_yaml_when_goci_yml_is_missing(server: GitServer) -> None:
    repo = server.repo("shop")
    sha = repo.commit({".goci.yaml": SHOW, "a.txt": "from yaml\n"})

    build = run_one(push_build(project_for(server.url(repo)), sha))

    assert build.status == Status.SUCCESS
    assert lines_of(build, "show")[0] == "from yaml"


def test_a_missing_pipeline_file_ends_the_build_in_error_on_the_clone_step(
    server: GitServer,
) -> None:
    repo = server.repo("shop")
    sha = repo.commit({"a.txt": "no pipeline here\n"})

    build = run_one(push_build(project_for(server.url(repo)), sha))

    assert build.status == Status.ERROR
    clone = step(build, "clone")
    assert clone.status == Status.ERROR
    assert clone.error.startswith(f".goci.yml: no such file in commit {sha[:12]} (nor .goci.yaml)")
    assert clone.error in "\n".join(lines_of(build, "clone"))
    assert build.jobs.get().error == clone.error


def test_a_pipeline_path_of_the_project_is_read_instead(server: GitServer) -> None:
    repo = server.repo("shop")
    sha = repo.commit({"ci/pipeline.yml": SHOW, "a.txt": "custom path\n", ".goci.yml": "bad"})

    build = run_one(push_build(project_for(server.url(repo), pipeline_path="ci/pipeline.yml"), sha))

    assert build.status == Status.SUCCESS
    assert lines_of(build, "show")[0] == "custom path"


def test_an_invalid_pipeline_file_ends_the_build_in_error_with_its_line_and_column(
    server: GitServer,
) -> None:
    repo = server.repo("shop")
    sha = repo.commit({".goci.yml": "steps:\n  - name: a\n    run: echo\n    retyr: 2\n"})

    build = run_one(push_build(project_for(server.url(repo)), sha, origin={"forge": "github"}))

    assert build.status == Status.ERROR
    clone = step(build, "clone")
    assert clone.status == Status.ERROR
    assert clone.error == ".goci.yml:4:5: steps[0]: unknown key 'retyr' (did you mean 'retry'?)"
    assert clone.error.splitlines()[0] in lines_of(build, "clone")
    assert build.jobs.get().error == clone.error  # what the commit status is made from
    assert list(Step.objects.filter(job__build=build).values_list("name", flat=True)) == ["clone"]


def test_a_symlinked_pipeline_file_is_not_followed(server: GitServer, tmp_path: Path) -> None:
    outside = tmp_path / "outside.yml"
    outside.write_text("steps:\n  - {name: leaked, run: 'true'}\n")
    repo = server.repo("shop")
    repo.commit({"a.txt": "x\n"})
    sha = repo.symlink(".goci.yml", str(outside))

    build = run_one(push_build(project_for(server.url(repo)), sha))

    assert build.status == Status.ERROR
    assert step(build, "clone").error == (
        ".goci.yml is a symbolic link; Goci reads only a file there"
    )


def test_clone_false_removes_the_checkout_once_the_pipeline_is_read(server: GitServer) -> None:
    repo = server.repo("shop")
    pipeline = "clone: false\nsteps:\n  - {name: look, run: 'ls -A; echo listed'}\n"
    sha = repo.commit({".goci.yml": pipeline, "a.txt": "x\n"})

    build = run_one(push_build(project_for(server.url(repo)), sha))

    assert build.status == Status.SUCCESS
    assert lines_of(build, "look") == [".goci-owner", "listed"]
    assert "[goci] clone: false" in "\n".join(lines_of(build, "clone"))


def test_a_submitted_pipeline_with_clone_false_checks_nothing_out(server: GitServer) -> None:
    repo = server.repo("shop")
    sha = repo.commit({"a.txt": "x\n"})
    pipeline = "clone: false\nsteps:\n  - {name: look, run: 'ls -A'}\n"

    build = run_one(push_build(project_for(server.url(repo)), sha, pipeline=pipeline))

    assert not build.checkout
    assert build.status == Status.SUCCESS
    assert server.seen() == []


@pytest.mark.parametrize(("depth", "count", "shallow"), [(3, "3", "true"), (0, "5", "false")])
def test_clone_depth_fetches_that_much_history(
    server: GitServer, depth: int, count: str, shallow: str
) -> None:
    repo = server.repo("shop")
    pipeline = (
        f"clone: {{depth: {depth}}}\nsteps:\n  - name: history\n"
        "    run: git rev-list --count HEAD; git rev-parse --is-shallow-repository\n"
    )
    for n in range(4):
        repo.commit({"n.txt": f"{n}\n"}, f"commit {n}")
    sha = repo.commit({".goci.yml": pipeline})

    build = run_one(push_build(project_for(server.url(repo)), sha))

    assert build.status == Status.SUCCESS
    assert lines_of(build, "history") == [count, shallow]


def test_a_submitted_pipeline_fetches_its_depth_at_once(server: GitServer) -> None:
    repo = server.repo("shop")
    for n in range(4):
        repo.commit({"n.txt": f"{n}\n"}, f"commit {n}")
    pipeline = "clone: {depth: 2}\nsteps:\n  - {name: history, run: git rev-list --count HEAD}\n"

    build = run_one(push_build(project_for(server.url(repo)), repo.commits[-1], pipeline=pipeline))

    assert lines_of(build, "history") == ["2"]
    assert f"$ git fetch --no-tags --depth=2 origin {repo.commits[-1]}" in lines_of(build, "clone")


def test_a_server_that_will_not_send_a_commit_by_its_id_is_asked_for_the_branch(
    tmp_path: Path,
) -> None:
    (tmp_path / "git").mkdir()
    with git_server(tmp_path / "git", sha_wants=False) as server:
        repo = server.repo("shop")
        older = repo.commit({".goci.yml": SHOW, "a.txt": "older\n"})
        repo.commit({"a.txt": "newer\n"})

        build = run_one(push_build(project_for(server.url(repo)), older))

    assert build.status == Status.SUCCESS, step(build, "clone").error
    assert lines_of(build, "show")[:2] == ["older", older]
    clone = "\n".join(lines_of(build, "clone"))
    assert "Server does not allow request for unadvertised object" in clone
    assert "fetching refs/heads/main instead" in clone


def _pull_request(repo: Repo) -> tuple[str, str]:
    """main: c1 (pipeline, a.txt), c2 (b.txt); the PR branched off c1: a.txt and
    docs/guide.md, at refs/pull/7/head and refs/merge-requests/7/head only."""
    pipeline = """
steps:
  - {name: head, run: git rev-parse HEAD}
  - name: docs
    when: {path: "docs/**"}
    run: cat docs/guide.md
  - name: src
    when: {path: {include: ["src/**"]}}
    run: echo src
"""
    c1 = repo.commit({".goci.yml": pipeline, "a.txt": "one\n"}, "c1")
    head = repo.commit(
        {"a.txt": "changed\n", "docs/guide.md": "the guide\n"},
        "the pull request",
        branch="feature",
        ref="refs/pull/7/head",
        start=c1,
    )
    git("push", "--quiet", "origin", f"{head}:refs/merge-requests/7/head", cwd=repo.work)
    git("push", "--quiet", "origin", ":refs/heads/feature", cwd=repo.work)
    base = repo.commit({"b.txt": "on main since\n"}, "c2", branch="main")
    return head, base


@pytest.mark.parametrize(("forge", "sha_wants"), [("github", True), ("gitlab", False)])
def test_a_pull_request_runs_its_head_with_the_files_it_changed(
    tmp_path: Path, forge: str, sha_wants: bool
) -> None:
    (tmp_path / "git").mkdir()
    with git_server(tmp_path / "git", sha_wants=sha_wants) as server:
        repo = server.repo("shop")
        head, base = _pull_request(repo)
        build = push_build(
            project_for(server.url(repo)),
            head,
            ref="refs/pull/7/merge" if forge == "github" else "refs/merge-requests/7/head",
            trigger=Build.Trigger.PULL_REQUEST,
            origin={
                "forge": forge,
                "pr_number": 7,
                "base_commit": base,
                "source_branch": "feature",
                "target_branch": "main",
            },
        )

        if not sha_wants:
            # Pushed since: the build's commit is no ref's tip, which such a server
            # would send; it will not send it by its id.
            newer = repo.commit({"c.txt": "newer\n"}, "newer", branch="feature")
            for ref in ("refs/pull/7/head", "refs/merge-requests/7/head"):
                git("push", "--quiet", "--force", "origin", f"{newer}:{ref}", cwd=repo.work)

        build = run_one(build)

    assert build.status == Status.SUCCESS, step(build, "clone").error
    assert sorted(build.changed_files) == ["a.txt", "docs/guide.md"]  # not main's b.txt
    assert lines_of(build, "docs") == ["the guide"]
    assert step(build, "src").status == Status.SKIPPED
    assert lines_of(build, "head") == [head]
    if not sha_wants:
        assert "fetching refs/merge-requests/7/head instead" in "\n".join(lines_of(build, "clone"))


def test_a_private_repository_is_cloned_with_the_token_which_lands_nowhere(
    tmp_path: Path,
) -> None:
    copy = tmp_path / "copy"
    pipeline = f"""
steps:
  - name: look
    run: |
      git remote -v
      cat .git/config
      git config --list --show-origin
      cp -a . {copy}
"""
    (tmp_path / "git").mkdir()
    with git_server(tmp_path / "git", token=TOKEN) as server:
        repo = server.repo("private")
        sha = repo.commit({".goci.yml": pipeline, "a.txt": "secret code\n"})
        project = project_for(server.url(repo))
        owner = User.objects.get(username="ann")
        secret_set(project=project, name=CLONE_TOKEN, value=TOKEN, user=owner)

        build = run_one(push_build(project, sha))
        sent = [r.headers.get("authorization", "") for r in server.seen()]

    assert build.status == Status.SUCCESS, step(build, "clone").error
    basic = base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()
    assert sent
    assert all(header == f"Basic {basic}" for header in sent)
    forms = [TOKEN, basic, TOKEN[:12], basic[:16]]
    text = stored_log(build) + build.jobs.get().error
    assert [form for form in forms if form in text] == []
    assert f"origin\t{server.url(repo)} (fetch)" in lines_of(build, "look")
    assert (copy / "a.txt").read_text() == "secret code\n"
    leaked = [
        str(path)
        for path in copy.rglob("*")
        if path.is_file() and any(form.encode() in path.read_bytes() for form in forms)
    ]
    assert leaked == []


def test_a_private_repository_without_a_token_says_which_secret_to_set(tmp_path: Path) -> None:
    (tmp_path / "git").mkdir()
    with git_server(tmp_path / "git", token=TOKEN) as server:
        repo = server.repo("private")
        sha = repo.commit({".goci.yml": SHOW})

        build = run_one(push_build(project_for(server.url(repo)), sha))

    assert build.status == Status.ERROR
    error = step(build, "clone").error
    assert error.startswith("git fetch failed:\nfatal: could not read Username")
    assert "set the project secret GOCI_CLONE_TOKEN" in error


def test_the_checkout_is_readable_by_any_user_whatever_the_worker_umask(
    server: GitServer,
) -> None:
    repo = server.repo("shop")
    pipeline = "steps:\n  - {name: modes, run: 'stat -c \"%a %n\" . a.txt sub sub/b.txt run.sh'}\n"
    sha = repo.commit(
        {".goci.yml": pipeline, "a.txt": "x\n", "sub/b.txt": "y\n", "run.sh": "#!/bin/sh\n"}
    )
    (repo.work / "run.sh").chmod(0o755)
    sha = repo.commit({}, "executable")
    old = os.umask(0o077)  # a hardened worker's
    try:
        build = run_one(push_build(project_for(server.url(repo)), sha))
    finally:
        os.umask(old)

    assert lines_of(build, "modes") == [
        "755 .",
        "644 a.txt",
        "755 sub",
        "644 sub/b.txt",
        "755 run.sh",
    ]


def test_a_redirect_to_an_internal_host_is_not_followed(tmp_path: Path) -> None:
    internal = Listener("127.0.0.2")
    (tmp_path / "git").mkdir()
    try:
        with git_server(tmp_path / "git", redirect_to=f"http://127.0.0.2:{internal.port}") as srv:
            repo = srv.repo("shop")
            sha = repo.commit({".goci.yml": SHOW})
            build = run_one(push_build(project_for(srv.url(repo)), sha))
            asked = srv.seen()
    finally:
        connected = internal.close()

    assert build.status == Status.ERROR
    error = step(build, "clone").error
    assert "returned error: 302" in error
    assert "a redirect, which Goci does not follow" in error
    assert len(asked) == 1  # the first request; nothing after the redirect
    assert connected == []


def _listen(host: str, port: int) -> Listener:
    """A listener on the port the URL leads to (ssh's 22 for user@host:path, if this
    user may take it; any other port proves less, but the URL is refused all the same)."""
    try:
        return Listener(host, port)
    except OSError:
        return Listener(host, 0)


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize(
    ("host", "url", "reason"),
    [
        ("127.0.0.1", "https://127.0.0.1:{port}/r.git", "127.0.0.1 is a loopback address"),
        ("127.0.0.1", "http://127.0.0.1:{port}/r.git", "127.0.0.1 is not listed"),
        ("127.0.0.1", "https://localhost:{port}/r.git", "localhost resolves to 127.0.0.1"),
        ("127.0.0.1", "http://2130706433:{port}/r.git", "decimal, octal and hex forms"),
        ("127.0.0.1", "http://0177.0.0.1:{port}/r.git", "decimal, octal and hex forms"),
        ("127.0.0.1", "https://[::ffff:127.0.0.1]:{port}/r.git", "an IPv6 form of 127.0.0.1"),
        ("127.0.0.1", "ssh://git@127.0.0.1:{port}/r.git", "127.0.0.1 is a loopback address"),
        ("127.0.0.1", "127.0.0.1:r.git", "127.0.0.1 is a loopback address"),
        ("::1", "https://[::1]:{port}/r.git", "::1 is a loopback address"),
    ],
)
def test_a_clone_url_to_an_internal_address_is_refused_without_a_connection(
    settings: Any, host: str, url: str, reason: str
) -> None:
    if host == "::1" and not _ipv6_loopback():
        pytest.skip("this machine has no IPv6 loopback address (::1) to listen on")
    settings.GOCI_CLONE_ALLOWED_HOSTS = []
    listener = _listen(host, 0 if "{port}" in url else 22)
    try:
        project = project_for(url.format(port=listener.port))
        build = run_one(push_build(project, "a" * 40))
    finally:
        connected = listener.close()

    assert connected == []
    assert build.status == Status.ERROR
    error = step(build, "clone").error
    assert error.startswith("the clone URL is refused: ")
    assert reason in error
    assert "$ git" not in "\n".join(lines_of(build, "clone"))  # git never ran


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("file:///srv/git/shop.git", "file:// reads the worker's own disk"),
        ("ext::sh -c touch% /tmp/pwned", "ext:: runs any command"),
        ("/srv/git/shop.git", "is a local path"),
        ("--upload-pack=touch /tmp/pwned", "starts with '-'"),
        ("-u", "starts with '-'"),
        ("https://169.254.169.254/latest/meta-data", "a cloud metadata address"),
        ("https://[fd00:ec2::254]/x.git", "a cloud metadata address"),
        ("https://user:pass@example.com/x.git", "GOCI_CLONE_TOKEN"),
    ],
)
def test_a_forbidden_clone_url_is_refused_before_git_runs(url: str, reason: str) -> None:
    build = run_one(push_build(project_for(url), "b" * 40))

    assert build.status == Status.ERROR
    error = step(build, "clone").error
    assert error.startswith("the clone URL is refused: ")
    assert reason in error
    assert "$ git" not in "\n".join(lines_of(build, "clone"))
    assert "user:pass" not in error  # a password in the URL is never repeated


def test_a_commit_that_is_not_a_full_id_is_refused(server: GitServer) -> None:
    repo = server.repo("shop")
    repo.commit({".goci.yml": SHOW})

    build = run_one(push_build(project_for(server.url(repo)), "--upload-pack=x"))

    assert build.status == Status.ERROR
    assert "is not a full commit id" in step(build, "clone").error


def test_a_commit_missing_from_the_repository_ends_the_build_in_error(server: GitServer) -> None:
    repo = server.repo("shop")
    repo.commit({".goci.yml": SHOW})

    build = run_one(push_build(project_for(server.url(repo)), "c" * 40, ref=""))

    assert build.status == Status.ERROR
    assert f"the commit {'c' * 40} is not in the repository" in step(build, "clone").error


def test_a_commit_missing_from_its_branch_ends_the_build_in_error(server: GitServer) -> None:
    repo = server.repo("shop")
    repo.commit({".goci.yml": SHOW})

    build = run_one(push_build(project_for(server.url(repo)), "d" * 40))

    assert build.status == Status.ERROR
    assert f"the commit {'d' * 40} is not on refs/heads/main" in step(build, "clone").error


def test_a_build_canceled_while_it_checks_out_ends_canceled(
    server: GitServer, settings: Any
) -> None:
    settings.GOCI_LEASE_SECONDS = 3
    repo = server.repo("shop")
    sha = repo.commit({".goci.yml": SHOW})
    build = push_build(project_for(server.url(repo)), sha)
    server.stall = 30.0
    worker = Worker(name="w1")

    def cancel_soon() -> None:
        time.sleep(1.0)
        try:
            services.build_cancel(build=Build.objects.get(pk=build.pk))
        finally:
            connection.close()  # this thread's own

    canceller = threading.Thread(target=cancel_soon)
    canceller.start()
    started = time.monotonic()
    try:
        assert worker.run_one_job() is True
    finally:
        worker.close()
        canceller.join()
    build.refresh_from_db()

    assert time.monotonic() - started < 10
    assert build.status == Status.CANCELED
    assert step(build, "clone").status == Status.CANCELED
    assert Job.objects.get(build=build).status == Status.CANCELED


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Debian's sshd on 127.0.0.1 (tests/sshd.py), letting in the key it returns (as
    this user: the test runs git over it)."""
    from tests.sshd import sshd as start

    with start(tmp_path) as server:
        yield {"port": server.port, "key": server.key, "log": server.log}


def test_an_ssh_clone_uses_the_deploy_key_which_never_lands_in_the_workspace(
    tmp_path: Path, sshd: dict[str, Any], settings: Any
) -> None:
    copy = tmp_path / "copy"
    (tmp_path / "git").mkdir()
    repo = Repo.create(tmp_path / "git", "shop")
    sha = repo.commit(
        {
            ".goci.yml": f"steps:\n  - {{name: look, run: 'cat a.txt; cp -a . {copy}'}}\n",
            "a.txt": "over ssh\n",
        }
    )
    project = project_for(f"ssh://root@127.0.0.1:{sshd['port']}{repo.bare}")
    owner = User.objects.get(username="ann")
    secret_set(project=project, name=CLONE_SSH_KEY, value=sshd["key"], user=owner)

    build = run_one(push_build(project, sha))

    assert build.status == Status.SUCCESS, step(build, "clone").error + sshd["log"].read_text()
    assert lines_of(build, "look") == ["over ssh"]
    key_lines = [line for line in sshd["key"].splitlines() if "PRIVATE KEY" not in line]
    leaked = [
        str(path)
        for path in copy.rglob("*")
        if path.is_file() and any(line.encode() in path.read_bytes() for line in key_lines)
    ]
    assert leaked == []
    assert not any(line in stored_log(build) for line in key_lines)
    known = (Path(settings.GOCI_DATA_DIR) / "ssh_known_hosts").read_text()
    assert f"[127.0.0.1]:{sshd['port']} ssh-ed25519 " in known  # trusted on first use
    assert not list(Path(tempfile.gettempdir()).glob("goci-git-*/id"))  # removed after


def test_an_ssh_host_whose_key_changed_is_refused(
    tmp_path: Path, sshd: dict[str, Any], settings: Any
) -> None:
    known = Path(settings.GOCI_DATA_DIR) / "ssh_known_hosts"
    known.parent.mkdir(parents=True, exist_ok=True)
    other = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    known.write_text(f"[127.0.0.1]:{sshd['port']} ssh-ed25519 {other}\n")
    (tmp_path / "git").mkdir()
    repo = Repo.create(tmp_path / "git", "shop")
    sha = repo.commit({".goci.yml": SHOW})
    project = project_for(f"ssh://root@127.0.0.1:{sshd['port']}{repo.bare}")
    owner = User.objects.get(username="ann")
    secret_set(project=project, name=CLONE_SSH_KEY, value=sshd["key"], user=owner)

    try:
        build = run_one(push_build(project, sha))
    finally:
        known.unlink()

    assert build.status == Status.ERROR
    assert "the SSH host key differs" in step(build, "clone").error


def test_the_git_servers_post_receive_hook_runs_on_every_push(tmp_path: Path) -> None:
    seen = tmp_path / "pushed"
    repo = Repo.create(tmp_path, "hooked")
    repo.on_push(["sh", "-c", 'cat >> "$OUT"'], env={"OUT": str(seen)})

    first = repo.commit({"a.txt": "1\n"})
    second = repo.commit({"a.txt": "2\n"})

    lines = seen.read_text().splitlines()
    assert lines == [f"{'0' * 40} {first} refs/heads/main", f"{first} {second} refs/heads/main"]


def test_a_pipeline_read_from_the_commit_goes_to_a_worker_with_its_runs_on_labels(
    server: GitServer,
) -> None:
    """runs_on is known only once the pipeline is read from the commit: a worker
    without those labels hands the job back, with them, and one that has them runs it."""
    repo = server.repo("shop")
    sha = repo.commit({".goci.yml": "runs_on: [gpu]\n" + SHOW, "a.txt": "on a gpu\n"})
    build = push_build(project_for(server.url(repo)), sha)

    plain = Worker(name="plain")
    try:
        assert plain.run_one_job() is True
    finally:
        plain.close()

    job = build.jobs.get()
    assert (job.status, job.attempt, job.labels) == (Status.QUEUED, 2, ["gpu"])
    assert "does not have: back to the queue" in stored_log(build)
    plain = Worker(name="plain")
    try:
        assert plain.run_one_job() is False  # not for it any more
    finally:
        plain.close()
    gpu = Worker(name="gpu", labels=["gpu"])
    try:
        assert gpu.run_one_job() is True
    finally:
        gpu.close()
    build.refresh_from_db()
    assert build.status == Status.SUCCESS
    assert lines_of(build, "show")[0] == "on a gpu"
    assert build.jobs.get().runner.name == "gpu"  # type: ignore[union-attr]
