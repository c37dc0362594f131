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
from typing import TypeVar

from django.db import (
    DatabaseError,
    DataError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    connection,
)

from builds import models, services
from builds.live import STEP_VALUES, Publisher, step_message
from builds.models import Job
from builds.pipeline import Step
from runners.engine import BuildResult, StepResult

log = logging.getLogger(__name__)

FLUSH_LINES = 2000
FLUSH_BYTES = 256 * 1024
FLUSH_SECONDS = 0.1
MASK = "********"
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


class Masker:
    """Replaces every secret value in log lines (longest first, so that a secret that
    contains another is masked whole)."""

    def __init__(self, secrets: Sequence[str]) -> None:
        self.secrets = sorted({s for s in secrets if len(s) >= 3}, key=len, reverse=True)

    def __call__(self, lines: list[str]) -> list[str]:
        if not self.secrets:
            return lines
        out = []
        for line in lines:
            masked = line
            for secret in self.secrets:
                if secret in masked:
                    masked = masked.replace(secret, MASK)
            out.append(masked)
        return out


class LogSink:
    """Batches one job's log lines per step: a batch is stored when it holds
    FLUSH_LINES lines or FLUSH_BYTES, or is FLUSH_SECONDS old, and then published.
    Memory is bounded by those limits (the engine waits while a batch is stored)."""

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
        self.step_ids = step_ids
        self.publisher = publisher
        self.mask = Masker(secrets)
        self.pending: dict[str, tuple[int, list[str]]] = {}  # step -> (first line, lines)
        self.size: dict[str, int] = {}
        self.since: dict[str, float] = {}

    def add(self, step: str, first_line: int, lines: Sequence[str]) -> None:
        lines = self.mask(list(lines))
        if step in self.pending:
            self.pending[step][1].extend(lines)
        else:
            self.pending[step] = (first_line, lines)
            self.since[step] = time.monotonic()
            self.size[step] = 0
        self.size[step] += sum(len(line) for line in lines)
        if len(self.pending[step][1]) >= FLUSH_LINES or self.size[step] >= FLUSH_BYTES:
            self.flush(step)

    def flush_due(self) -> None:
        now = time.monotonic()
        for step in [s for s, since in self.since.items() if now - since >= FLUSH_SECONDS]:
            self.flush(step)

    def flush(self, step: str | None = None) -> None:
        for name in [step] if step else list(self.pending):
            if name not in self.pending:
                continue
            first, lines = self.pending.pop(name)
            del self.since[name], self.size[name]
            self._store(name, first, lines)

    def _store(self, step: str, first: int, lines: list[str]) -> None:
        step_id = self.step_ids[step]

        def append(lines: list[str]) -> None:
            # IntegrityError: stored by a try whose commit reply was lost; it is there once.
            with contextlib.suppress(IntegrityError):
                services.log_append(
                    job_id=self.job_id,
                    attempt=self.attempt,
                    step_id=step_id,
                    first_line=first,
                    lines=lines,
                )

        try:
            with_retry(lambda: append(lines), what="storing log lines")
        except (DataError, ValueError) as exc:
            # Text the database refuses (NUL on PostgreSQL, a lone surrogate anywhere):
            # lines.py never makes it, but a batch must not end the worker's thread and
            # leave the job to be run again. Store it as lines.py would have.
            log.warning("log lines of step %s refused (%s); storing them cleaned", step, exc)
            lines = [storable(line) for line in lines]
            with_retry(lambda: append(lines), what="storing log lines")
        if self.publisher is not None:
            self.publisher.publish(
                self.build_id,
                {
                    "type": "log.lines",
                    "build": self.build_id,
                    "step": step,
                    "attempt": self.attempt,
                    "first": first,
                    "lines": lines,
                },
            )


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
    ) -> None:
        self.job_id = job.pk
        self.attempt = job.attempt
        self.build_id = job.build_id
        self.publisher = publisher
        self.on_lost = on_lost
        self.lost = False
        self.started: set[str] = set()
        self.sink = LogSink(job, step_ids, publisher, secrets)
        self.result: BuildResult | None = None

    def _guard(self, call: Callable[[], None], what: str) -> None:
        if self.lost:
            return
        try:
            with_retry(call, what=what)
        except services.LeaseLost:
            self.lost = True
            self.on_lost()

    def _publish_step(self, name: str) -> None:
        """Publish the step as just stored (times, exit code, skip reason), the same
        message the consumer's catch-up reads, so a live page matches a reloaded one."""
        if self.publisher is None or self.lost:
            return
        try:
            row = (
                models.Step.objects.filter(job_id=self.job_id, name=name)
                .values(*STEP_VALUES)
                .first()
            )
        except DatabaseError:  # a preview is not worth holding the build up: pages poll
            log.warning("step %s of build %s not published", name, self.build_id, exc_info=True)
            return
        if row is not None:
            message = {**step_message(row), "type": "step.status", "build": self.build_id}
            self.publisher.publish(self.build_id, message)

    def step_started(self, step: Step, attempt: int) -> None:
        self.started.add(step.name)
        self._guard(
            lambda: services.step_start(
                job_id=self.job_id, attempt=self.attempt, name=step.name, image=step.image or ""
            ),
            "starting a step",
        )
        self._publish_step(step.name)

    def step_log(self, step: Step, first_line: int, lines: Sequence[str], at: float) -> None:
        if not self.lost:
            self._guard(lambda: self.sink.add(step.name, first_line, lines), "storing log lines")

    def idle(self) -> None:
        if not self.lost:
            self._guard(self.sink.flush_due, "storing log lines")

    def step_finished(self, step: Step, result: StepResult) -> None:
        self._guard(lambda: self.sink.flush(step.name), "storing log lines")
        self._guard(
            lambda: services.step_finish(
                job_id=self.job_id,
                attempt=self.attempt,
                name=step.name,
                status=str(result.status),
                exit_code=result.exit_code,
                error=result.error,
                started=step.name in self.started,
            ),
            "finishing a step",
        )
        self._publish_step(step.name)

    def build_finished(self, result: BuildResult) -> None:
        self._guard(self.sink.flush, "storing log lines")
        self.result = result
