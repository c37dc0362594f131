"""A worker that starts removes the containers that dead runs left on its machine, in a
child process (`goci docker prune`), so that docker-py stays out of the worker until a
container step needs it."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from runners.executors.docker import LABEL_OWNER, LABEL_RUN
from runners.owner import owner_label
from runners.worker import Worker
from tests.conftest import TEST_IMAGE
from tests.queue_helpers import wait_for

pytestmark = [pytest.mark.docker, pytest.mark.django_db(transaction=True)]


def test_a_starting_worker_removes_a_dead_run_s_containers_and_keeps_live_ones(
    docker_client: Any, tmp_path: Path, settings: Any
) -> None:
    settings.GOCI_WORKSPACE_ROOT = tmp_path / "ws"
    api = docker_client.api
    dead = api.create_container(
        TEST_IMAGE, ["sleep", "60"], labels={LABEL_RUN: "dead", LABEL_OWNER: "gone:999999999:1"}
    )["Id"]
    api.start(dead)
    alive = api.create_container(
        TEST_IMAGE, ["true"], labels={LABEL_RUN: "alive", LABEL_OWNER: owner_label()}
    )["Id"]
    worker = Worker(poll=0.1)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:

        def ids() -> set[str]:
            return {c["Id"] for c in api.containers(all=True, filters={"label": LABEL_RUN})}

        wait_for(lambda: dead not in ids(), 30, "the dead run's container to go")
        assert alive in ids()
    finally:
        worker.stop()
        thread.join()
        api.remove_container(alive, force=True)
        if dead in {c["Id"] for c in api.containers(all=True)}:
            api.remove_container(dead, force=True)
