"""A NUL byte in a step's output is shown as U+FFFD and stored on every database,
and text a database refuses can never end the worker's thread."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from builds.models import Job, Status, Step
from runners.lines import MAX_LINE_BYTES, LineSplitter, StepLog
from runners.queue import job_claim
from runners.reporting import LogSink
from runners.worker import Worker
from tests.helpers import run_pipeline
from tests.queue_helpers import log_lines, make_project, require_postgres, submit


def test_the_splitter_shows_nul_as_the_replacement_character() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b"a\x00b\n\x00\nc\xffd\x00") == ["a\ufffdb", "\ufffd"]
    assert splitter.flush() == ["c\ufffdd\ufffd"]


def test_nul_is_replaced_in_lines_split_for_length_too() -> None:
    splitter = LineSplitter()
    lines = splitter.feed(b"\x00" * (MAX_LINE_BYTES + 10))  # no newline: cut from the tail
    lines += splitter.feed(b"\n" + b"\x00" * (MAX_LINE_BYTES + 10) + b"\n")  # a long line
    assert lines
    assert all("\x00" not in line for line in lines)
    assert "".join(lines) == "\ufffd" * (2 * MAX_LINE_BYTES + 20)


def test_a_step_log_emits_no_nul() -> None:
    got: list[str] = []
    log = StepLog(lambda _, lines: got.extend(lines))
    log.write(b"x\x00")
    log.end_attempt()
    assert got == ["x\ufffd"]


def test_goci_run_shows_nul_as_the_replacement_character(tmp_path: Path) -> None:
    recorder = run_pipeline("steps: [{name: nul, run: printf 'a\\000b\\n'}]", tmp_path)
    assert recorder.text("nul") == ["a\ufffdb"]


@pytest.mark.django_db(transaction=True)
def test_lines_a_database_refuses_are_stored_cleaned(settings: Any, tmp_path: Path) -> None:
    """Lines that reach the sink by another path than lines.py: a NUL (refused by
    PostgreSQL) and a lone surrogate (refused by every database driver)."""
    settings.GOCI_WORKSPACE_ROOT = tmp_path / "ws"
    submit(make_project(), "steps: [{name: s, run: 'true'}]")
    job = job_claim(worker="w")
    assert job is not None
    sink = LogSink(job, dict(Step.objects.filter(job=job).values_list("name", "id")), None)
    sink.add("s", 1, ["a\x00b", "c\udc80d", "plain"])
    sink.flush()
    assert log_lines(Step.objects.get(job=job)) == [(1, "a\ufffdb"), (2, "c\ufffdd"), (3, "plain")]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_nul_byte_is_stored_on_postgresql_and_the_build_succeeds_at_once(
    settings: Any, tmp_path: Path
) -> None:
    require_postgres()
    settings.GOCI_WORKSPACE_ROOT = tmp_path / "ws"
    build = submit(make_project(), "steps: [{name: nul, run: printf 'a\\000b\\n'}]")
    worker = Worker()
    try:
        assert worker.run_one_job() is True
    finally:
        worker.close()
    build.refresh_from_db()
    assert build.status == Status.SUCCESS
    job = Job.objects.get(build=build)
    assert (job.status, job.attempt, job.error) == (Status.SUCCESS, 1, "")
    assert log_lines(Step.objects.get(job=job)) == [(1, "a\ufffdb")]
