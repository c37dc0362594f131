"""What the Docker executor does beside a running step (issue #10): the next steps'
containers are created early, containers and the network are removed after the
result. The steps must not notice, and nothing may be left behind."""

from __future__ import annotations

import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from runners.engine import Engine, Status, StepRun
from runners.executors import ByImage
from runners.executors.docker import LABEL_RUN, LABEL_STEP, DockerExecutor
from runners.executors.local import LocalExecutor
from tests.conftest import TEST_IMAGE
from tests.helpers import Recorder, pipeline

pytestmark = pytest.mark.docker

ENV_SEEN = "env | grep -v -E '^(HOSTNAME|HOME|PATH|PWD|SHLVL)=' | sort"


def engine_for(
    client: Any, text: str, workspace: Path, **options: Any
) -> tuple[Engine, DockerExecutor, Recorder]:
    containers = DockerExecutor(client, workspace)
    rec = Recorder()
    text = f"image: {TEST_IMAGE}\n{textwrap.dedent(text)}"
    executor = ByImage(LocalExecutor(workspace), containers)
    return Engine(pipeline(text), executor, rec, **options), containers, rec


def events(client: Any, run_id: str, since: float, kind: str) -> list[tuple[str, str, int]]:
    """(step, container id, when in ns) of Docker's `kind` events for the run's containers."""
    found = client.api.events(
        since=int(since),
        until=int(time.time()) + 1,
        decode=True,
        filters={"type": "container", "event": kind, "label": f"{LABEL_RUN}={run_id}"},
    )
    return [(e["Actor"]["Attributes"][LABEL_STEP], e["Actor"]["ID"], e["timeNano"]) for e in found]


def left_behind(client: Any, run_id: str) -> list[str]:
    label = {"label": f"{LABEL_RUN}={run_id}"}
    containers = client.api.containers(all=True, filters=label)
    networks = client.api.networks(filters=label)
    return [c["Id"] for c in containers] + [n["Name"] for n in networks]


def test_the_next_step_runs_in_the_container_made_while_the_step_before_ran(
    docker_client: Any, tmp_path: Path
) -> None:
    began = time.time() - 1
    engine, executor, rec = engine_for(
        docker_client,
        f"""
        env: {{FROM_PIPELINE: p}}
        steps:
          - {{name: First, run: 'sleep 1; echo first'}}
          - name: Second
            env: {{FROM_STEP: s}}
            run: |
              echo "$HOSTNAME"
              {ENV_SEEN}
        """,
        tmp_path,
        env={"EXTRA": "x"},
    )
    assert engine.run().status is Status.SUCCESS
    made = events(docker_client, executor.run_id, began, "create")
    [(second, made_at)] = [(cid, at) for step, cid, at in made if step == "Second"]
    died = events(docker_client, executor.run_id, began, "die")
    [first_died] = [at for step, _, at in died if step == "First"]
    assert made_at < first_died  # made early, and the only container of the step
    lines = rec.text("Second")
    assert lines[0] == second[:12]  # it is the one that ran
    assert lines[1:] == [
        "CI=true",
        "EXTRA=x",
        "FROM_PIPELINE=p",
        "FROM_STEP=s",
        "GOCI=true",
        "GOCI_STEP_NAME=Second",
        "GOCI_WORKSPACE=/workspace",
    ]
    assert left_behind(docker_client, executor.run_id) == []


def test_a_container_made_for_another_env_is_not_used(docker_client: Any, tmp_path: Path) -> None:
    text = f"image: {TEST_IMAGE}\nsteps: [{{name: Show, run: 'echo $WHICH $HOSTNAME'}}]"
    step = pipeline(text).steps[0]
    executor = DockerExecutor(docker_client, tmp_path)
    executor.prepare(pipeline(text))
    try:
        executor.ready_soon(step, {"WHICH": "early"})
        deadline = time.monotonic() + 20
        label = {"label": f"{LABEL_STEP}=Show", "status": "created"}
        early: list[dict[str, Any]] = []
        while not early and time.monotonic() < deadline:
            early = [
                c
                for c in docker_client.api.containers(all=True, filters=label)
                if c["Labels"][LABEL_RUN] == executor.run_id
            ]
            time.sleep(0.05)
        assert len(early) == 1
        output: list[bytes] = []
        run = StepRun(step, {"WHICH": "late"}, output.append, None, threading.Event())
        outcome = executor.run_step(run)
    finally:
        executor.cleanup()
    assert outcome.exit_code == 0
    which, hostname = b"".join(output).decode().split()
    assert which == "late"
    assert not early[0]["Id"].startswith(hostname)
    assert left_behind(docker_client, executor.run_id) == []


def test_nothing_is_left_when_a_failure_skips_the_steps_made_early(
    docker_client: Any, tmp_path: Path
) -> None:
    began = time.time() - 1
    engine, executor, rec = engine_for(
        docker_client,
        """
        steps:
          - {name: Fails, run: 'sleep 1; exit 3'}
          - {name: B, run: echo b, parallel: true}
          - {name: C, run: echo c, parallel: true}
        """,
        tmp_path,
    )
    assert engine.run().status is Status.FAILURE
    assert rec.results["Fails"].exit_code == 3
    assert rec.status("B") == rec.status("C") == "skipped"
    made = {step for step, _, _ in events(docker_client, executor.run_id, began, "create")}
    assert made == {"Fails", "B", "C"}  # B and C were made, and never started
    assert left_behind(docker_client, executor.run_id) == []


def test_nothing_is_left_when_a_run_with_steps_made_early_is_canceled(
    docker_client: Any, tmp_path: Path
) -> None:
    engine, executor, rec = engine_for(
        docker_client,
        """
        steps:
          - {name: Long, run: sleep 100}
          - {name: Next, run: echo never}
        """,
        tmp_path,
    )
    thread = threading.Thread(target=engine.run)
    thread.start()
    label = {"label": f"{LABEL_RUN}={executor.run_id}"}
    deadline = time.monotonic() + 20
    states: dict[str, str] = {}
    while states != {"Long": "running", "Next": "created"} and time.monotonic() < deadline:
        found = docker_client.api.containers(all=True, filters=label)
        states = {c["Labels"][LABEL_STEP]: c["State"] for c in found}
        time.sleep(0.05)
    assert states == {"Long": "running", "Next": "created"}
    engine.cancel()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert rec.status("Long") == "canceled"
    assert rec.status("Next") == "skipped"
    assert left_behind(docker_client, executor.run_id) == []


def test_output_order_and_exit_codes_match_the_host_shell(
    docker_client: Any, tmp_path: Path
) -> None:
    steps = """
        steps:
          - {name: A, run: 'echo a1; echo a2 >&2; echo a3'}
          - {name: B, run: 'echo b; exit 5', allow_failure: true}
          - {name: C, run: 'echo c1; sleep 0.2; echo c2', parallel: true}
          - {name: D, run: 'echo d; exit 7', parallel: true, allow_failure: true}
          - {name: E, run: 'echo e'}
    """
    (tmp_path / "d").mkdir()
    engine, executor, in_docker = engine_for(docker_client, steps, tmp_path / "d")
    engine.run()
    on_host = Recorder()
    Engine(pipeline(steps), LocalExecutor(tmp_path), on_host).run()
    for rec in (in_docker, on_host):
        assert [n for kind, n, _ in rec.events if kind == "started"][:2] == ["A", "B"]
        assert [n for kind, n, _ in rec.events if kind == "finished"][-1] == "E"
    for name in "ABCDE":
        assert in_docker.lines[name] == on_host.lines[name]
        assert in_docker.results[name].exit_code == on_host.results[name].exit_code
        assert in_docker.status(name) == on_host.status(name)
    assert [in_docker.results[n].exit_code for n in "ABCDE"] == [0, 5, 0, 7, 0]
    assert left_behind(docker_client, executor.run_id) == []
