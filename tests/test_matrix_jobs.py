"""A matrix pipeline on the server: one Job per cell, each with its own steps (at its own
positions), its values as variables and in its images, env and `when`, run by any
worker or runner; the build's status combines its jobs. A pipeline read at checkout
fans out when it is planned: the job that read it becomes the first cell, the others
are queued with their own checkout."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import override_settings

from builds import services
from builds.models import CELL_POSITIONS, Build, Job, Project, Status, Step
from tests.git_server import GitServer, git_server
from tests.queue_helpers import log_lines, make_project, run_all, submit, wait_for
from tests.test_runner_client import finished, register, start_runner

pytestmark = pytest.mark.django_db(transaction=True)

MATRIX = """
matrix:
  SERVICE: [bot, api, web]
  exclude:
    - {SERVICE: web}
  include:
    - {SERVICE: web, PORT: "8080"}
env:
  TARGET: out-${SERVICE}
steps:
  - name: show
    run: echo "$SERVICE $TARGET ${PORT:-none}"
  - name: only-api
    when: {branch: "${SERVICE}-*"}
    run: echo special
"""


def lines_of(job: Job, name: str) -> list[str]:
    return [text for _, text in log_lines(Step.objects.get(job=job, name=name))]


@override_settings(GOCI_HOST_STEPS="allow")
def test_each_cell_is_a_job_with_its_values_and_the_build_combines_them() -> None:
    build = submit(make_project(), MATRIX, ref="refs/heads/api-fix")

    jobs = list(Job.objects.filter(build=build).order_by("id"))
    assert [(j.name, j.matrix) for j in jobs] == [
        ("SERVICE=bot", {"SERVICE": "bot"}),
        ("SERVICE=api", {"SERVICE": "api"}),
        ("PORT=8080, SERVICE=web", {"SERVICE": "web", "PORT": "8080"}),
    ]
    positions = [list(Step.objects.filter(job=j).values_list("position", flat=True)) for j in jobs]
    assert positions == [[k * CELL_POSITIONS, k * CELL_POSITIONS + 1] for k in range(3)]

    build = run_all(build)

    assert build.status == Status.SUCCESS
    assert [lines_of(j, "show") for j in jobs] == [
        ["bot out-bot none"],
        ["api out-api none"],
        ["web out-web 8080"],
    ]
    # `when: {branch: "${SERVICE}-*"}` on branch api-fix: only the api cell runs it.
    skipped = [Step.objects.get(job=j, name="only-api").status for j in jobs]
    assert skipped == [Status.SKIPPED, Status.SUCCESS, Status.SKIPPED]


@override_settings(GOCI_HOST_STEPS="allow")
def test_one_failing_cell_fails_the_build_and_the_others_still_run() -> None:
    pipeline = """
    matrix: {N: ["1", "2", "3"]}
    steps: [{name: check, run: 'echo "cell $N"; test "$N" != 2'}]
    """
    build = run_all(submit(make_project(), pipeline))

    assert build.status == Status.FAILURE
    statuses = Job.objects.filter(build=build).order_by("id").values_list("status", flat=True)
    assert list(statuses) == [Status.SUCCESS, Status.FAILURE, Status.SUCCESS]


@override_settings(GOCI_HOST_STEPS="allow")
def test_a_cell_allowed_to_fail_does_not_fail_the_build() -> None:
    pipeline = """
    matrix:
      PY: ["3.11", "3.13-dev"]
      allow_failure:
        - {PY: 3.13-dev}
    steps: [{name: test, run: 'test "$PY" = 3.11'}]
    """
    build = run_all(submit(make_project(), pipeline))

    assert build.status == Status.SUCCESS
    jobs = Job.objects.filter(build=build).order_by("id")
    assert list(jobs.values_list("name", "status", "allow_failure")) == [
        ("PY=3.11", Status.SUCCESS, False),
        ("PY=3.13-dev", Status.FAILURE, True),
    ]


def test_cancel_ends_every_queued_cell() -> None:
    build = submit(make_project(), "matrix: {N: [a, b]}\nsteps: [{name: s, run: 'true'}]")

    services.build_cancel(build=build)

    assert set(Job.objects.filter(build=build).values_list("status", flat=True)) == {
        Status.CANCELED
    }
    assert Build.objects.get(pk=build.pk).status == Status.CANCELED


def test_remote_runners_run_the_cells_in_parallel(tmp_path: Path, live_server: Any) -> None:
    pipeline = """
    matrix: {SERVICE: [bot, api]}
    steps: [{name: show, run: 'echo "cell $SERVICE"; sleep 1'}]
    """
    build = submit(make_project(), pipeline)
    config = register(tmp_path, live_server.url, "--capacity", "2")
    runner = start_runner(tmp_path, config)
    try:
        wait_for(
            lambda: Build.objects.get(pk=build.pk).status in (Status.SUCCESS, Status.FAILURE),
            60,
            "the build",
        )
    finally:
        runner.send_signal(signal.SIGTERM)
        finished(runner)

    jobs = list(Job.objects.filter(build=build).order_by("id"))
    assert Build.objects.get(pk=build.pk).status == Status.SUCCESS
    assert [lines_of(j, "show") for j in jobs] == [["cell bot"], ["cell api"]]
    # Both ran at once: each started before the other ended.
    first, second = (Step.objects.get(job=j) for j in jobs)
    assert first.started_at is not None
    assert second.started_at is not None
    assert first.finished_at is not None
    assert second.finished_at is not None
    assert first.started_at < second.finished_at
    assert second.started_at < first.finished_at


@pytest.fixture
def server(tmp_path: Path) -> Iterator[GitServer]:
    (tmp_path / "git").mkdir()
    with git_server(tmp_path / "git") as running:
        yield running


@override_settings(GOCI_HOST_STEPS="allow", GOCI_CLONE_ALLOWED_HOSTS=["127.0.0.1"])
def test_a_matrix_read_at_checkout_fans_out_when_planned(
    tmp_path: Path, server: GitServer, settings: Any
) -> None:
    settings.GOCI_WORKSPACE_ROOT = tmp_path / "ws"
    repo = server.repo("shop")
    pipeline = "matrix: {SERVICE: [bot, api]}\nsteps: [{name: show, run: 'cat $SERVICE.txt'}]\n"
    commit = repo.commit({".goci.yml": pipeline, "bot.txt": "the bot\n", "api.txt": "the api\n"})
    project = make_project("shop")
    Project.objects.filter(pk=project.pk).update(repo_url=server.url(repo))
    project.refresh_from_db()
    build, _ = services.build_create(
        project=project, pipeline="", commit=commit, ref="refs/heads/main"
    )
    assert Job.objects.filter(build=build).count() == 1  # the pipeline is not known yet

    build = run_all(build)

    assert build.status == Status.SUCCESS
    jobs = list(Job.objects.filter(build=build).order_by("id"))
    assert [j.name for j in jobs] == ["SERVICE=bot", "SERVICE=api"]
    assert [lines_of(j, "show") for j in jobs] == [["the bot"], ["the api"]]
    clones = [Step.objects.get(job=j, name="clone") for j in jobs]
    assert [(c.status, c.position) for c in clones] == [
        (Status.SUCCESS, 0),
        (Status.SUCCESS, CELL_POSITIONS),
    ]
