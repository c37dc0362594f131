"""The worker's reporter: the engine's events become fenced database writes, and log
lines go through a sink that masks secrets, batches, stores, then publishes.

Every write names the job's attempt, so a worker that lost its lease writes nothing
more (LeaseLost). Database outages are retried: a log batch is stored exactly once
because its (step, attempt, first line) is unique.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from django.db import (
    DataError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    connection,
)
from django.utils import timezone

from builds.live import Publisher, step_message
from builds.models import Job
from builds.models import Step as StepRow
from builds.pipeline import Step
from runners import queue
from runners.engine import BuildResult, StepResult
from runners.lines import FLUSH_SECONDS, MASK, Masker, PendingLines

__all__ = ["MASK", "BuildReporter", "LogSink", "Masker", "storable", "with_retry"]

log = logging.getLogger(__name__)

# How long a database outage may last before the worker gives the job up.
RETRY_FOR = 120.0

T = TypeVar("T")
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def with_retry(call: Callable[[], T], *, what: str) -> T:
    """Run a database call, retrying while the database is unreachable (restart,
    failover). LeaseLost and other errors go to the caller."""
    delay, deadline = 0.1, time.monotonic() + RETRY_FOR
    while True:
        try:
            return call()
        except (OperationalError, InterfaceError) as exc:
            if time.monotonic() > deadline:
                raise
            log.warning("database unavailable during %s (%s); retrying", what, exc)
            connection.close()  # a broken connection is not reused
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def storable(line: str) -> str:
    """The line with NUL and lone surrogates as U+FFFD, which every database stores."""
    return _UNSTORABLE.sub("\ufffd", line)


class LogSink:
    """Gathers what a job's steps do and writes it in as few fenced transactions as
    keep the record current: everything new - steps started or ended, log lines of
    every step - goes in one transaction, at the latest FLUSH_SECONDS after the
    oldest of it happened, or as soon as FLUSH_LINES lines or FLUSH_BYTES wait
    (runners/lines.py). A
    build of trivial steps is one write; a step with output adds one per batch.
    What was stored is then published, so a page that loads from the database and
    then listens misses nothing. Memory is bounded by those limits (the engine waits
    while a batch is stored)."""

    def __init__(
        self,
        job: Job,
        step_ids: dict[str, int],
        publisher: Publisher | None,
        secrets: Sequence[str] = (),
    ) -> None:
        self.job_id = job.pk
        self.attempt = job.attempt
        self.build_id = job.build_id
        self.job = job  # its name and matrix cell: the steps' keys on the page
        self.step_ids = step_ids
        self.publisher = publisher
        self.mask = Masker(secrets)
        self.states: dict[str, dict[str, Any]] = {}  # step -> its STEP_STATE as it is now
        self.changed: dict[str, None] = {}  # steps whose state is not stored yet, in order
        self.pending = PendingLines()
        self.since: float | None = None  # when the oldest unstored news came

    def state(self, step: str, **fields: Any) -> None:
        """Set fields of the step's state (the rest stay as last set)."""
        state = self.states.setdefault(step, dict.fromkeys(queue.STEP_STATE))
        state.update(fields)
        self.changed[step] = None
        self.since = self.since or time.monotonic()

    def add(self, step: str, first_line: int, lines: Sequence[str]) -> None:
        first_line, masked = self.mask.lines(step, first_line, lines)
        self._pend(step, first_line, masked)

    def release(self, step: str | None = None) -> None:
        """The line the masker holds back for a step (all steps: None), now that the
        step's output ended."""
        for name in [step] if step is not None else list(self.mask.held):
            held = self.mask.release(name)
            if held is not None:
                self._pend(name, *held)

    def _pend(self, step: str, first_line: int, lines: list[str]) -> None:
        if not lines:
            return
        self.pending.add(step, first_line, lines)
        self.since = self.since or time.monotonic()
        if self.pending.full():
            self.flush()

    def flush_due(self) -> None:
        if self.since is not None and time.monotonic() - self.since >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Write everything new in one transaction, then publish it."""
        if self.since is None:
            return
        chunks = self.pending.take()
        changed = {step: dict(self.states[step]) for step in self.changed}
        self.changed = {}
        self.since = None
        chunks = self._store(chunks, changed)
        if self.publisher is not None:
            self._publish(chunks, changed)

    def _store(
        self, chunks: list[tuple[str, int, list[str]]], changed: dict[str, dict[str, Any]]
    ) -> list[tuple[str, int, list[str]]]:
        """Store; returns the chunks as stored."""
        steps = {self.step_ids[step]: state for step, state in changed.items()}

        def write(chunks: list[tuple[str, int, list[str]]]) -> None:
            # IntegrityError: stored by a try whose commit reply was lost; it is there once.
            with contextlib.suppress(IntegrityError):
                queue.job_report(
                    job_id=self.job_id,
                    attempt=self.attempt,
                    steps=steps,
                    chunks=[(self.step_ids[step], first, lines) for step, first, lines in chunks],
                )

        try:
            with_retry(lambda: write(chunks), what="storing log lines")
        except (DataError, ValueError) as exc:
            # Text the database refuses (NUL on PostgreSQL, a lone surrogate anywhere):
            # lines.py never makes it, but a batch must not end the worker's thread and
            # leave the job to be run again. Store it as lines.py would have.
            log.warning("log lines of job %s refused (%s); storing them cleaned", self.job_id, exc)
            chunks = [(step, first, [storable(x) for x in lines]) for step, first, lines in chunks]
            with_retry(lambda: write(chunks), what="storing log lines")
        return chunks

    def _publish(
        self, chunks: list[tuple[str, int, list[str]]], changed: dict[str, dict[str, Any]]
    ) -> None:
        """A step's lines come after it started and before it ended, as on the page."""
        assert self.publisher is not None
        running = [step for step, state in changed.items() if state["status"] == "running"]
        messages = [self._step(step, changed[step]) for step in running]
        for step, first, lines in chunks:
            messages.append(
                {
                    "type": "log.lines",
                    "build": self.build_id,
                    "step": self._key(step),
                    "attempt": self.attempt,
                    "first": first,
                    "lines": lines,
                }
            )
        messages += [self._step(step, changed[step]) for step in changed if step not in running]
        for message in messages:
            self.publisher.publish(self.build_id, message)

    def _step(self, step: str, state: dict[str, Any]) -> dict[str, Any]:
        """The "step" message the consumer's catch-up makes of the stored row."""
        message = step_message({**state, "name": self._key(step)})
        return {**message, "type": "step.status", "build": self.build_id}

    def _key(self, step: str) -> str:
        """The step as the browser knows it: Step.key (in a matrix cell, "CELL / name")."""
        return StepRow(job=self.job, name=step).key


class BuildReporter:
    """The engine's reporter inside a worker. After LeaseLost it stops writing and
    calls `on_lost` (which cancels the engine)."""

    def __init__(
        self,
        job: Job,
        step_ids: dict[str, int],
        publisher: Publisher | None,
        on_lost: Callable[[], None],
        secrets: Sequence[str] = (),
        *,
        on_finished: Callable[[BuildResult], None] | None = None,
    ) -> None:
        self.job_id = job.pk
        self.attempt = job.attempt
        self.build_id = job.build_id
        self.on_lost = on_lost
        self.on_finished = on_finished
        self.lost = False
        self.sink = LogSink(job, step_ids, publisher, secrets)
        self.result: BuildResult | None = None

    def _guard(self, call: Callable[[], None], what: str) -> None:
        if self.lost:
            return
        try:
            with_retry(call, what=what)
        except queue.LeaseLost:
            self.lost = True
            self.on_lost()

    def step_started(self, step: Step, attempt: int) -> None:
        self.sink.state(
            step.name,
            status="running",
            started_at=timezone.now(),
            finished_at=None,
            exit_code=None,
            error="",
            image=step.image or "",
            image_id="",
            digests={},
        )

    def step_log(self, step: Step, first_line: int, lines: Sequence[str], at: float) -> None:
        if not self.lost:
            self._guard(lambda: self.sink.add(step.name, first_line, lines), "storing log lines")

    def idle(self) -> None:
        if not self.lost:
            self._guard(self.sink.flush_due, "storing log lines")

    def step_finished(self, step: Step, result: StepResult) -> None:
        """Stored with what comes next, within FLUSH_SECONDS, or with the build's end."""
        if not self.lost:
            self._guard(lambda: self.sink.release(step.name), "storing log lines")
        started = (self.sink.states.get(step.name) or {}).get("started_at")
        self.sink.state(
            step.name,
            status=str(result.status),
            exit_code=result.exit_code,
            error=self.sink.mask.text(result.error or ""),
            started_at=started,
            finished_at=timezone.now() if started else None,
            image=step.image or "",
            image_id=result.image_id,
            digests=dict(result.digests),
        )

    def build_finished(self, result: BuildResult) -> None:
        self.flush()
        self.result = result
        if self.on_finished is not None and not self.lost:
            self.on_finished(result)

    def flush(self) -> None:
        self._guard(self.sink.release, "storing log lines")
        self._guard(self.sink.flush, "storing the build's progress")
