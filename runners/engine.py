"""Run a pipeline's DAG of steps through an executor, reporting to a reporter.

No Django here: the CLI, the worker and the remote runner plug in their own reporter.

Threads: each running step has one thread that calls the executor and pushes events
(started, log batch, finished) into a *bounded* queue. The engine's own thread is the
only one that schedules steps and calls the reporter, so reporters need no locks, and a
slow reporter slows the steps' output (back-pressure) instead of growing memory.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, runtime_checkable

from builds.pipeline import Pipeline, Step, When, plan
from runners.lines import DEFAULT_LOG_CAP, StepLog

# How often the engine looks at cancellation and the pipeline deadline when idle.
TICK = 0.05


class Status(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"  # a command exited non-zero or timed out
    ERROR = "error"  # Goci or the infrastructure could not run it
    CANCELED = "canceled"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class StepOutcome:
    """What an executor reports about one attempt of a step."""

    exit_code: int | None = None
    timed_out: bool = False
    canceled: bool = False
    error: str | None = None  # infrastructure error, shown to the user
    failure: str | None = None  # why a non-zero exit happened, if known (out of memory)
    # A `build:` step's image: its ID, and each pushed tag's digest.
    image_id: str = ""
    digests: Mapping[str, str] = field(default_factory=dict)


@dataclass
class StepRun:
    """Everything an executor needs for one attempt of a step."""

    step: Step
    env: dict[str, str]  # pipeline + step + extra env and Goci's variables
    output: Callable[[bytes], None]  # raw bytes of stdout and stderr, in order
    timeout: float | None  # seconds, or None
    cancel: threading.Event  # set: stop the step now (TERM, then KILL after a grace)


class Executor(Protocol):
    def prepare(self, pipeline: Pipeline) -> None: ...

    def run_step(self, run: StepRun) -> StepOutcome: ...

    def cleanup(self) -> None:
        """Idempotent; safe when prepare failed."""


@runtime_checkable
class GetsReady(Protocol):
    """An executor that can do part of a step's work before the step starts (docker.py
    creates its container). Optional: the engine calls it only on executors that have it."""

    def ready_soon(self, step: Step, env: Mapping[str, str]) -> None:
        """`step` starts with `env` as soon as the running steps succeed. It may also never
        start (a failure, a cancel): cleanup() undoes what this did. Must not block."""


@dataclass(frozen=True)
class StepResult:
    """How a step ended, over all its attempts."""

    name: str
    status: Status
    exit_code: int | None = None
    # Why it did not succeed when the exit code does not say: a timeout, an
    # infrastructure error, the reason for a skip. None for success and plain failures.
    error: str | None = None
    duration: float = 0.0  # seconds, all attempts
    attempts: int = 0
    allowed_failure: bool = False
    image_id: str = ""  # a `build:` step's (StepOutcome)
    digests: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BuildResult:
    """How the whole run ended, with every step's result."""

    status: Status
    steps: tuple[StepResult, ...]
    duration: float


class Reporter(Protocol):
    def step_started(self, step: Step, attempt: int) -> None: ...

    def step_log(self, step: Step, first_line: int, lines: Sequence[str], at: float) -> None:
        """Lines `first_line`, `first_line + 1`, ... of the step, read at `at` (epoch s)."""

    def step_finished(self, step: Step, result: StepResult) -> None: ...

    def build_finished(self, result: BuildResult) -> None: ...

    def idle(self) -> None:
        """Called at least every TICK while the build runs, for time-based batching."""


def format_duration(seconds: float) -> str:
    """5 -> '5s', 90 -> '1m30s', 5400 -> '1h30m' (the pipeline format's own notation)."""
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{v}{u}" for v, u in ((hours, "h"), (minutes, "m"), (secs, "s")) if v]
    return "".join(parts) or "0s"


@dataclass(frozen=True)
class _Started:
    """A step's attempt began (a step thread's event)."""

    step: Step
    attempt: int


@dataclass(frozen=True)
class _Log:
    """Lines a step printed, numbered from first_line."""

    step: Step
    first_line: int
    lines: list[str]
    at: float


@dataclass(frozen=True)
class _Finished:
    """A step's attempt ended."""

    step: Step
    result: StepResult


class Engine:
    def __init__(
        self,
        pipeline: Pipeline,
        executor: Executor,
        reporter: Reporter,
        *,
        branch: str | None = None,
        event: str | None = None,
        env: Mapping[str, str] | None = None,
        jobs: int = 0,
        log_cap: int = DEFAULT_LOG_CAP,
        changed_files: Sequence[str] | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.executor = executor
        self.reporter = reporter
        self.branch = branch
        self.event = event
        # Repository-relative paths for `when: {path: ...}`; None: unknown, paths match.
        self.changed_files = None if changed_files is None else tuple(changed_files)
        self._mismatches: dict[When, str | None] = {}  # each distinct `when` judged once
        self.extra_env = dict(env or {})
        self.jobs = jobs  # most steps at once; 0 = no limit
        self.log_cap = log_cap
        self._cancel = threading.Event()
        # Bounded: a step that prints faster than the reporter writes waits for it.
        # Each event holds up to one 64 KiB read as lines (~0.5 MB of str objects).
        self._events: queue.Queue[_Started | _Log | _Finished] = queue.Queue(maxsize=16)
        self._deadline: float | None = None
        self._ready_soon = executor.ready_soon if isinstance(executor, GetsReady) else None
        self._told_ready: set[str] = set()  # steps the executor was told of, once each

    def cancel(self) -> None:
        """Stop every running step and start no other. Thread- and signal-safe."""
        self._cancel.set()

    @property
    def canceled(self) -> bool:
        return self._cancel.is_set()

    def run(self) -> BuildResult:
        steps = self.pipeline.steps
        deps = plan(self.pipeline)
        results: dict[str, StepResult] = {}
        running: dict[str, float] = {}  # name -> when it started (monotonic)
        pending = list(steps)
        start = time.monotonic()
        if self.pipeline.when is not None:
            mismatch = self._mismatch(self.pipeline.when)
            if mismatch is not None:
                # Nothing to run, so nothing to prepare. The build succeeds: nothing
                # failed, and a forge's required status check must not wait forever.
                reason = f"the pipeline's when: {mismatch}"
                return self._finish_all(steps, Status.SKIPPED, reason, start, Status.SUCCESS)
        if self.pipeline.timeout:
            self._deadline = start + self.pipeline.timeout
        try:
            self.executor.prepare(self.pipeline)
        except Exception as exc:  # noqa: BLE001  (any failure to prepare is the build's error)
            message = f"could not prepare the executor: {exc}"
            return self._finish_all(steps, Status.ERROR, message, start, Status.ERROR)
        last_idle = time.monotonic()
        try:
            while pending or running:
                pending = self._schedule(pending, deps, results, running, self._stop_reason())
                if not running:
                    if pending:  # plan() guarantees this never happens; never spin on it
                        raise RuntimeError(f"steps cannot start: {[s.name for s in pending]}")
                    continue
                with contextlib.suppress(queue.Empty):
                    self._handle(self._events.get(timeout=TICK), results, running)
                if time.monotonic() - last_idle >= TICK:
                    last_idle = time.monotonic()
                    self.reporter.idle()
        except BaseException:
            if running:
                # Only after a reporter error (say, a closed stdout): stop the steps
                # before the executor cleans up.
                self._cancel.set()
            self.executor.cleanup()
            raise
        status = Status.CANCELED if self._cancel.is_set() else _overall(list(results.values()))
        build = BuildResult(
            status=status,
            steps=tuple(results[s.name] for s in steps),
            duration=time.monotonic() - start,
        )
        # The result first: removing containers and networks takes a while and changes
        # nothing in it. run() still returns only when nothing is left behind.
        try:
            self.reporter.build_finished(build)
        finally:
            self.executor.cleanup()
        return build

    def _schedule(
        self,
        pending: list[Step],
        deps: Mapping[str, tuple[str, ...]],
        results: dict[str, StepResult],
        running: dict[str, float],
        stop_reason: str | None,
    ) -> list[Step]:
        """Start or skip every step whose dependencies are done; return the rest."""
        started = False
        changed = True
        while changed:  # a skip can unblock a step listed before it (needs point forward)
            changed = False
            still: list[Step] = []
            for step in pending:
                needs = deps[step.name]
                if any(name not in results for name in needs):
                    still.append(step)
                    continue
                blocker = next((n for n in needs if not _lets_dependents_run(results[n])), None)
                reason = None
                if blocker is not None:
                    reason = f"'{blocker}' {_PAST[results[blocker].status]}"
                elif stop_reason is not None:
                    reason = stop_reason
                elif step.when and (mismatch := self._mismatch(step.when)) is not None:
                    reason = f"when: {mismatch}"
                if reason is not None:
                    result = StepResult(step.name, Status.SKIPPED, error=reason)
                    results[step.name] = result
                    self.reporter.step_finished(step, result)
                    changed = True
                elif self.jobs and len(running) >= self.jobs:
                    still.append(step)
                else:
                    running[step.name] = time.monotonic()
                    threading.Thread(
                        target=self._run_step,
                        args=(step, running[step.name]),
                        name=f"step:{step.name}",
                        daemon=True,  # the executor's cleanup, not interpreter exit, stops steps
                    ).start()
                    started = True
            pending = still
        if started and stop_reason is None and self._ready_soon is not None:
            self._tell_ready_soon(pending, deps, results, running)
        return pending

    def _tell_ready_soon(
        self,
        pending: list[Step],
        deps: Mapping[str, tuple[str, ...]],
        results: Mapping[str, StepResult],
        running: Mapping[str, float],
    ) -> None:
        """Tell the executor of the steps that start when the running ones succeed (one
        step ahead, not the whole DAG), so that it can get them ready meanwhile."""
        assert self._ready_soon is not None
        for step in pending:
            if step.name in self._told_ready:
                continue
            needs = deps[step.name]
            if not all(
                n in running or (n in results and _lets_dependents_run(results[n])) for n in needs
            ):
                continue
            if step.when and self._mismatch(step.when) is not None:
                continue
            self._told_ready.add(step.name)
            self._ready_soon(step, self._step_env(step))

    def _mismatch(self, when: When) -> str | None:
        """Why `when` does not hold for this build, or None. Remembered: path patterns
        against many changed files cost more than branch and event."""
        if when not in self._mismatches:
            self._mismatches[when] = when.mismatch(
                branch=self.branch, event=self.event, changed_files=self.changed_files
            )
        return self._mismatches[when]

    def _stop_reason(self) -> str | None:
        """Why no further step may start, if so. Running steps stop by themselves at the
        pipeline deadline (their timeout is capped by it); a cancel stops them here."""
        if self._cancel.is_set():
            return "the pipeline was canceled"
        if self._deadline is not None and time.monotonic() >= self._deadline:
            return f"pipeline timed out after {format_duration(self.pipeline.timeout or 0)}"
        return None

    def _handle(
        self,
        event: _Started | _Log | _Finished,
        results: dict[str, StepResult],
        running: dict[str, float],
    ) -> None:
        match event:
            case _Log(step, first_line, lines, at):
                self.reporter.step_log(step, first_line, lines, at)
            case _Started(step, attempt):
                self.reporter.step_started(step, attempt)
            case _Finished(step, result):
                results[step.name] = result
                del running[step.name]
                self.reporter.step_finished(step, result)

    def _run_step(self, step: Step, started: float) -> None:
        """The step's thread: every attempt, then one 'finished' event."""
        put = self._events.put

        def emit(first: int, lines: list[str]) -> None:
            put(_Log(step, first, lines, time.time()))

        log = StepLog(emit, cap=self.log_cap)
        env = self._step_env(step)
        outcome = StepOutcome()
        attempts = 0
        status = Status.ERROR
        error: str | None = None
        for attempt in range(1, step.retry + 2):
            attempts = attempt
            put(_Started(step, attempt))
            timeout, limit_message = self._timeout_for(step)
            run = StepRun(step, env, output=log.write, timeout=timeout, cancel=self._cancel)
            try:
                outcome = self.executor.run_step(run)
            except Exception as exc:  # noqa: BLE001  (an executor bug must not hang the build)
                outcome = StepOutcome(error=f"{type(exc).__name__}: {exc}")
            log.end_attempt()
            status, error = _classify(outcome, limit_message)
            if status is not Status.FAILURE or self._cancel.is_set():
                break
        result = StepResult(
            name=step.name,
            status=status,
            exit_code=outcome.exit_code,
            error=error,
            duration=time.monotonic() - started,
            attempts=attempts,
            allowed_failure=step.allow_failure and status in _FAILED,
            image_id=outcome.image_id,
            digests=outcome.digests,
        )
        put(_Finished(step, result))

    def _timeout_for(self, step: Step) -> tuple[float | None, str]:
        """The tighter of the step's timeout and what is left of the pipeline's."""
        timeout: float | None = step.timeout
        message = f"timed out after {format_duration(step.timeout or 0)}"
        if self._deadline is not None:
            left = max(self._deadline - time.monotonic(), 0.0)
            if timeout is None or left < timeout:
                timeout = left
                message = f"pipeline timed out after {format_duration(self.pipeline.timeout or 0)}"
        return timeout, message

    def _step_env(self, step: Step) -> dict[str, str]:
        env = dict(step.env)
        env.update(self.extra_env)
        # Goci's own variables come last: a pipeline cannot make CI look like something else.
        env.update({"CI": "true", "GOCI": "true", "GOCI_STEP_NAME": step.name})
        return env

    def _finish_all(
        self,
        steps: Sequence[Step],
        status: Status,
        message: str,
        start: float,
        overall: Status,
    ) -> BuildResult:
        """End every step with `status` and `message` before any runs."""
        self.executor.cleanup()
        results = []
        for step in steps:
            result = StepResult(step.name, status, error=message)
            results.append(result)
            self.reporter.step_finished(step, result)
        build = BuildResult(overall, tuple(results), time.monotonic() - start)
        self.reporter.build_finished(build)
        return build


_FAILED = (Status.FAILURE, Status.ERROR)
_PAST = {
    Status.FAILURE: "failed",
    Status.ERROR: "could not run",
    Status.CANCELED: "was canceled",
    Status.SKIPPED: "was skipped",
    Status.SUCCESS: "succeeded",
}


def _lets_dependents_run(result: StepResult) -> bool:
    return result.status is Status.SUCCESS or result.allowed_failure


def _classify(outcome: StepOutcome, limit_message: str) -> tuple[Status, str | None]:
    if outcome.canceled:
        return Status.CANCELED, None
    if outcome.timed_out:
        return Status.FAILURE, limit_message
    if outcome.error is not None:
        return Status.ERROR, outcome.error
    if outcome.failure is not None:
        return Status.FAILURE, outcome.failure
    if outcome.exit_code == 0:
        return Status.SUCCESS, None
    return Status.FAILURE, None  # the exit code says it all


def _overall(results: Sequence[StepResult]) -> Status:
    statuses = [r for r in results if not r.allowed_failure]
    if any(r.status is Status.ERROR for r in statuses):
        return Status.ERROR
    if any(r.status in (Status.FAILURE, Status.CANCELED) for r in statuses):
        return Status.FAILURE
    return Status.SUCCESS
