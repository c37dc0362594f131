"""A worker in the submitting process (goci up's) is woken when the submit commits,
not at its next poll: the queue_changed signal, sent on commit and never before."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from django.db import transaction

from builds import services
from builds.models import FINISHED, Build
from runners.worker import Worker
from tests.queue_helpers import make_project, submit, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_queue_changed_is_sent_when_the_submit_commits_not_before() -> None:
    project = make_project()
    heard: list[bool] = []

    def receiver(**_: Any) -> None:
        # The build is visible to others (committed) when the signal comes.
        heard.append(Build.objects.exists())

    services.queue_changed.connect(receiver)
    try:
        with transaction.atomic():
            submit(project, "steps: [{run: 'true'}]")
            assert heard == []
        assert heard == [True]
        build = Build.objects.get()
        services.build_cancel(build=build)  # a cancel wakes workers too
        assert heard == [True, True]
    finally:
        services.queue_changed.disconnect(receiver)


def test_a_worker_that_would_poll_once_a_minute_starts_a_build_at_once(
    tmp_path: Path, settings: Any
) -> None:
    settings.GOCI_WORKSPACE_ROOT = tmp_path / "ws"
    project = make_project()
    worker = Worker(poll=600)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        for n in range(3):
            if n:
                time.sleep(0.5)  # the worker has gone back to waiting
            build = submit(project, "steps: [{run: 'true'}]")
            wait_for(
                lambda: Build.objects.filter(pk=build.pk, status__in=FINISHED).exists(),  # noqa: B023
                30,
                "the build to run without waiting for the worker's poll",
            )
    finally:
        worker.stop()
        thread.join()
