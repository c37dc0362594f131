"""A remote runner (`goci runner`, a process with no database or SECRET_KEY) does all a
worker does with a build: it checks the commit out from a real git server on 127.0.0.1
(the step "clone", with the project's clone token, masked), reads the pipeline of that
commit and plans it through the server (`plan`), sends a pull request's changed files,
hands back a job whose `runs_on` it cannot serve, gets the secrets its steps may have
(none for a fork's code), and hands its job back at once when stopped past the grace."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from builds import services
from builds.models import Build, Job, LogChunk, Project, Status, Step
from builds.secrets import CLONE_TOKEN, secret_set
from runners.lines import MASK
from tests.git_server import GitServer, Repo, git, git_server
from tests.queue_helpers import log_lines, make_project, submit, wait_for
from tests.test_runner_client import finished, register, start_runner

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "ghp_RunnerCloneToken0042"  # noqa: S105  (a test value)
DEPLOY = "deploy-Secret-Value-77"
LOCAL = {"GOCI_CLONE_ALLOWED_HOSTS": "127.0.0.1"}  # the git server is on this machine


@pytest.fixture
def server(tmp_path: Path) -> Iterator[GitServer]:
    (tmp_path / "git").mkdir()
    with git_server(tmp_path / "git", token=TOKEN) as running:
        yield running


def project_for(server: GitServer, repo: Repo) -> Project:
    project = make_project("shop")
    Project.objects.filter(pk=project.pk).update(repo_url=server.url(repo))
    project.refresh_from_db()
    secret_set(project=project, name=CLONE_TOKEN, value=TOKEN, user=None)
    return project


def push_build(project: Project, commit: str, **fields: Any) -> Build:
    fields.setdefault("ref", "refs/heads/main")
    fields.setdefault("trigger", Build.Trigger.PUSH)
    build, _ = services.build_create(project=project, pipeline="", commit=commit, **fields)
    assert build.checkout
    return build


def lines_of(build: Build, name: str) -> list[str]:
    return [text for _, text in log_lines(Step.objects.get(job__build=build, name=name))]


def every_log(build: Build) -> str:
    return "\n".join(LogChunk.objects.filter(step__job__build=build).values_list("text", flat=True))


def run_once(tmp_path: Path, url: str, *options: str, **env: str) -> None:
    config = register(tmp_path, url, *options)
    code, err = finished(start_runner(tmp_path, config, "--once", **env), timeout=120)
    assert code == 0, err


PIPELINE = """
steps:
  - name: show
    run: |
      cat a.txt
      git rev-parse HEAD
      git remote -v
  - name: deploy
    env: {T: {from_secret: deploy_token}}
    run: echo "deploying with $T"
"""


def test_a_runner_checks_out_the_commit_reads_its_pipeline_and_runs_it(
    tmp_path: Path, live_server: Any, server: GitServer
) -> None:
    repo = server.repo("shop")
    commit = repo.commit({".goci.yml": PIPELINE, "a.txt": "one\n"}, "c1")
    project = project_for(server, repo)
    secret_set(project=project, name="DEPLOY_TOKEN", value=DEPLOY, user=None)
    build = push_build(project, commit)

    run_once(tmp_path, live_server.url, **LOCAL)

    build.refresh_from_db()
    clone = Step.objects.get(job__build=build, name="clone")
    assert build.status == Status.SUCCESS, clone.error
    assert build.pipeline == PIPELINE  # the commit's file, planned through the server
    assert [s.name for s in Step.objects.filter(job__build=build).order_by("position")] == [
        "clone",
        "show",
        "deploy",
    ]
    assert lines_of(build, "show")[:2] == ["one", commit]
    assert lines_of(build, "deploy") == [f"deploying with {MASK}"]
    logs = every_log(build)
    assert TOKEN not in logs
    assert DEPLOY not in logs
    assert server.seen()  # it did fetch over HTTP, with the token
    assert Job.objects.get(build=build).runner is not None


def test_a_pipeline_read_at_checkout_needing_other_labels_goes_back_to_the_queue(
    tmp_path: Path, live_server: Any, server: GitServer
) -> None:
    repo = server.repo("shop")
    pipeline = "runs_on: [gpu]\nsteps: [{name: train, run: echo trained}]\n"
    build = push_build(project_for(server, repo), repo.commit({".goci.yml": pipeline}, "c1"))

    run_once(tmp_path / "plain", live_server.url, "--name", "plain", **LOCAL)

    job = Job.objects.get(build=build)
    assert (job.status, job.attempt, job.labels) == (Status.QUEUED, 2, ["gpu"])
    clone = Step.objects.get(job=job, name="clone")
    said = [text for _, text in log_lines(clone, attempt=1)]
    assert any("runs_on needs [gpu]" in line and "(plain)" in line for line in said)

    run_once(tmp_path / "gpu", live_server.url, "--name", "big", "--labels", "gpu", **LOCAL)

    build.refresh_from_db()
    assert build.status == Status.SUCCESS
    assert lines_of(build, "train") == ["trained"]
    assert Job.objects.get(build=build).worker == "big"


def test_a_runner_hands_back_a_push_whose_deployment_waits_for_approval(
    tmp_path: Path, live_server: Any, server: GitServer
) -> None:
    from builds import deployments
    from builds.models import Deployment, Environment

    repo = server.repo("shop")
    pipeline = "steps: [{name: ship, environment: production, run: echo shipped}]\n"
    project = project_for(server, repo)
    Environment.objects.create(project=project, name="production", protected=True)
    build = push_build(project, repo.commit({".goci.yml": pipeline}, "c1"))

    run_once(tmp_path / "r1", live_server.url, "--name", "r1", **LOCAL)

    job = Job.objects.get(build=build)
    assert (job.status, job.attempt) == (Status.QUEUED, 2)
    said = [text for _, text in log_lines(Step.objects.get(job=job, name="clone"), attempt=1)]
    assert said[-1] == (
        "[goci] waiting for approval to deploy to production: back to the queue until then"
    )
    deployment = Deployment.objects.get(build=build)
    assert deployment.state == "waiting"
    deployments.approve(deployment=deployment, user=project.members.get(username="ann"))

    run_once(tmp_path / "r2", live_server.url, "--name", "r2", **LOCAL)

    build.refresh_from_db()
    assert build.status == Status.SUCCESS
    assert lines_of(build, "ship") == ["shipped"]
    deployment.refresh_from_db()
    assert deployment.state == "success"


def test_the_runner_refuses_a_clone_url_on_an_internal_address(
    tmp_path: Path, live_server: Any, server: GitServer
) -> None:
    repo = server.repo("shop")
    build = push_build(project_for(server, repo), repo.commit({".goci.yml": PIPELINE}, "c1"))

    run_once(tmp_path, live_server.url)  # no GOCI_CLONE_ALLOWED_HOSTS: 127.0.0.1 is refused

    build.refresh_from_db()
    assert build.status == Status.ERROR
    clone = Step.objects.get(job__build=build, name="clone")
    assert clone.status == Status.ERROR
    assert clone.error.startswith("the clone URL is refused")
    assert not server.seen()  # refused before any connection


def test_an_invalid_pipeline_in_the_commit_ends_the_build_with_its_position(
    tmp_path: Path, live_server: Any, server: GitServer
) -> None:
    repo = server.repo("shop")
    bad = "steps:\n  - name: one\n    run: true\n    colour: red\n"
    build = push_build(project_for(server, repo), repo.commit({".goci.yml": bad}, "c1"))

    run_once(tmp_path, live_server.url, **LOCAL)

    build.refresh_from_db()
    assert build.status == Status.ERROR
    clone = Step.objects.get(job__build=build, name="clone")
    assert ".goci.yml:4:" in clone.error
    assert "colour" in clone.error
    assert build.pipeline == ""  # nothing planned


def test_a_pull_request_on_a_runner_gets_the_files_it_changed(
    tmp_path: Path, live_server: Any, server: GitServer
) -> None:
    pipeline = """
steps:
  - name: docs
    when: {path: "docs/**"}
    run: cat docs/guide.md
  - name: src
    when: {path: "src/**"}
    run: echo src
"""
    repo = server.repo("shop")
    c1 = repo.commit({".goci.yml": pipeline, "a.txt": "one\n"}, "c1")
    head = repo.commit(
        {"docs/guide.md": "the guide\n"}, "pr", branch="feature", ref="refs/pull/7/head", start=c1
    )
    git("push", "--quiet", "origin", ":refs/heads/feature", cwd=repo.work)
    base = repo.commit({"b.txt": "on main since\n"}, "c2", branch="main")
    build = push_build(
        project_for(server, repo),
        head,
        ref="refs/pull/7/merge",
        trigger=Build.Trigger.PULL_REQUEST,
        origin={
            "forge": "github",
            "pr_number": 7,
            "base_commit": base,
            "source_branch": "feature",
            "target_branch": "main",
        },
    )

    run_once(tmp_path, live_server.url, **LOCAL)

    build.refresh_from_db()
    assert build.status == Status.SUCCESS
    assert build.changed_files == ["docs/guide.md"]
    assert lines_of(build, "docs") == ["the guide"]
    assert Step.objects.get(job__build=build, name="src").status == Status.SKIPPED


def test_a_runner_gets_the_secrets_of_its_steps_and_a_fork_gets_none(
    tmp_path: Path, live_server: Any
) -> None:
    project = make_project()
    secret_set(project=project, name="DEPLOY_TOKEN", value=DEPLOY, user=None)
    pipeline = (
        "steps:\n  - name: deploy\n    env: {T: {from_secret: deploy_token}}\n"
        '    run: echo "T=${T:-unset}"; echo "$T" | base64\n'
    )
    own = submit(project, pipeline)
    fork = submit(project, pipeline)
    Build.objects.filter(pk=fork.pk).update(fork=True)
    refused = submit(project, pipeline.replace("deploy_token", "nope"))
    config = register(tmp_path, live_server.url, "--capacity", "3")
    runner = start_runner(tmp_path, config)
    try:
        wait_for(
            lambda: not Build.objects.filter(status__in=["queued", "running"]).exists(),
            60,
            "the three builds to end",
        )
    finally:
        runner.send_signal(signal.SIGTERM)
        finished(runner)

    for build in (own, fork, refused):
        build.refresh_from_db()
    assert own.status == Status.SUCCESS
    assert lines_of(own, "deploy")[0] == f"T={MASK}"
    assert DEPLOY not in every_log(own)
    assert fork.status == Status.SUCCESS
    assert lines_of(fork, "deploy")[0] == "T=unset"
    assert refused.status == Status.ERROR
    assert Step.objects.get(job__build=refused).error == (
        "step 'deploy' asks for secret NOPE, which does not exist"
    )
    assert not LogChunk.objects.filter(step__job__build=refused).exists()  # nothing ran


def test_a_runner_stopped_past_the_grace_hands_its_job_back_at_once(
    tmp_path: Path, live_server: Any
) -> None:
    build = submit(make_project(), "steps: [{name: long, run: 'echo started; sleep 60'}]")
    config = register(tmp_path, live_server.url)
    runner = start_runner(tmp_path, config, "--grace", "1")
    wait_for(
        lambda: any(text == "started" for _, text in log_lines(Step.objects.get())),
        60,
        "the step to start",
    )

    stopped = time.monotonic()
    runner.send_signal(signal.SIGTERM)
    code, err = finished(runner, timeout=30)

    assert code == 0, err
    job = Job.objects.get(build=build)
    # Back in the queue now, as attempt 2: not after the lease (settings.GOCI_LEASE_SECONDS).
    assert (job.status, job.attempt, job.runner) == (Status.QUEUED, 2, None)
    assert time.monotonic() - stopped < 15
    assert "handed back" in err


def test_a_matrix_read_at_checkout_on_a_runner_runs_every_cell(
    tmp_path: Path, live_server: Any, server: GitServer
) -> None:
    repo = server.repo("shop")
    pipeline = "matrix: {SERVICE: [bot, api]}\nsteps: [{name: show, run: 'cat $SERVICE.txt'}]\n"
    commit = repo.commit({".goci.yml": pipeline, "bot.txt": "the bot\n", "api.txt": "the api\n"})
    build = push_build(project_for(server, repo), commit)
    config = register(tmp_path, live_server.url, "--capacity", "2")
    runner = start_runner(tmp_path, config, **LOCAL)
    try:
        wait_for(
            lambda: Build.objects.get(pk=build.pk).status not in (Status.QUEUED, Status.RUNNING),
            60,
            "the build to end",
        )
    finally:
        runner.send_signal(signal.SIGTERM)
        finished(runner)

    build.refresh_from_db()
    assert build.status == Status.SUCCESS
    jobs = list(Job.objects.filter(build=build).order_by("id"))
    assert [(j.name, j.matrix) for j in jobs] == [
        ("SERVICE=bot", {"SERVICE": "bot"}),
        ("SERVICE=api", {"SERVICE": "api"}),
    ]
    shown = [[t for _, t in log_lines(Step.objects.get(job=j, name="show"))] for j in jobs]
    assert shown == [["the bot"], ["the api"]]
