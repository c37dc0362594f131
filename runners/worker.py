"""The worker: claims jobs from the queue and runs them with the engine.

`python manage.py worker` and `goci worker` run one; `goci up` runs one inside the
web process. Any number may run against one PostgreSQL, on any number of machines.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import platform
import queue
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import close_old_connections, connection
from django.utils import timezone

import goci
from builds import access_tokens, services
from builds.clone_urls import CloneUrlRefused, check_clone_url
from builds.live import Publisher
from builds.models import Build, Job, Project, Status, Step
from builds.pipeline import (
    MAX_BYTES,
    Pipeline,
    PipelineError,
    for_cell,
    input_variable,
    load,
    secrets_wanted,
    with_secret_values,
    without_registry_secrets,
)
from builds.pipeline import Step as PipelineStep
from builds.secrets import (
    CLONE_SSH_KEY,
    CLONE_TOKEN,
    SecretError,
    SecretRefused,
    secret_for_goci,
    secrets_resolve,
)
from runners import workspace as workspaces
from runners.checkout import (
    KNOWN_HOSTS,
    Checkout,
    CheckoutCanceled,
    CheckoutError,
    Credentials,
    handed_back_line,
    held_back_line,
    pr_head_ref,
    read_pipeline,
)
from runners.engine import BuildResult, Engine, Executor, StepResult
from runners.engine import Status as Outcome
from runners.executors import NO_HOST_STEPS, ByImage, prune_containers
from runners.executors.image_build import ImageBuilder
from runners.executors.local import LocalExecutor
from runners.executors.ssh import SshExecutor
from runners.lines import StepLog
from runners.models import Runner
from runners.queue import (
    LeaseLost,
    build_plan,
    build_set_changed_files,
    job_claim,
    job_finish,
    job_heartbeat,
    job_release,
    jobs_reap,
    plan_held,
)
from runners.reporting import BuildReporter, with_retry
from runners.workspace import (
    OWNER_FILE,
    empty_workspace,
    home_of,
    host_env,
    remove_workspace,
)

log = logging.getLogger(__name__)

# Cancel must reach a running step within 2 s: the heartbeat looks this often.
CHECK_EVERY = 0.5
# How often a worker looks for jobs whose lease expired (and at least every third of
# the lease).
REAP_EVERY = 5.0
# A rerun, and a rollback (an earlier deployment run again), are someone's manual runs.
EVENTS: dict[str, str] = {Build.Trigger.RERUN: "manual", Build.Trigger.ROLLBACK: "manual"}
# How far back secret_scope() looks for the build a rerun reruns.
MAX_RERUN_CHAIN = 100
# A job token ends with its job (access_tokens checks the attempt runs); its `exp` only
# bounds it if that check cannot tell: the pipeline's timeout, or a day, and a margin.
JOB_TOKEN_LIFETIME = 24 * 3600
JOB_TOKEN_SLACK = 600


@dataclass
class _Running:
    job: Job
    engine: Engine | None = None
    checkout: threading.Event | None = None  # set: stop the checkout
    reporter: BuildReporter | None = None
    release: bool = False  # shutting down: hand the job back instead of finishing it
    renewed: float = field(default_factory=time.monotonic)  # when the lease was last renewed
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def busy(self) -> bool:
        """Checking out or running steps: the heartbeat renews it and looks for a cancel."""
        return self.engine is not None or self.checkout is not None

    def cancel(self) -> None:
        checkout, engine = self.checkout, self.engine
        if checkout is not None:
            checkout.set()
        if engine is not None:
            engine.cancel()


class Worker:
    """Its threads live as long as it does - the loop that claims, one per job slot,
    one heartbeat - so each keeps one database connection (persistent in a worker
    process: see persistent_connections)."""

    def __init__(
        self,
        name: str | None = None,
        concurrency: int = 1,
        poll: float = 1.0,
        labels: Sequence[str] = (),
    ) -> None:
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.concurrency = max(1, concurrency)
        self.poll = poll
        # It takes the jobs whose labels are all among these: with none, only jobs
        # that need no label.
        self.labels = tuple(labels)
        self.runner: Runner | None = None  # its row, from register()
        self._touched = 0.0  # when the heartbeat last refreshed the row's last_contact
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._running: dict[int, _Running] = {}
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[_Running | None] = queue.SimpleQueue()
        self._beat_stop = threading.Event()
        self.publisher: Publisher | None = None

    # -- life cycle -------------------------------------------------------------

    def stop(self) -> None:
        """Stop claiming; running jobs get GOCI_SHUTDOWN_GRACE to finish. Thread-safe."""
        self._stopping.set()
        self._wake.set()

    def wake(self, **_: object) -> None:
        """A job was queued or canceled in this process (services.queue_changed)."""
        self._wake.set()

    def register(self) -> Runner:
        """Record this worker as a Runner (kind worker) and mark it online. A worker
        started again under the same name takes its row back, keeping the state an
        admin set (paused, draining) and a revocation; a remote runner's name is refused."""
        now = timezone.now()
        facts = {
            "labels": list(self.labels),
            "capacity": self.concurrency,
            "version": goci.__version__,
            "platform": f"{platform.system().lower()}/{platform.machine()}",
            "last_contact": now,
        }
        runner, created = Runner.objects.get_or_create(
            name=self.name, defaults={"kind": Runner.Kind.WORKER, **facts}
        )
        if runner.kind != Runner.Kind.WORKER:
            raise ValueError(f"the name {self.name!r} is a remote runner's: choose another")
        if not created:
            Runner.objects.filter(pk=runner.pk).update(**facts)
            for key, value in facts.items():
                setattr(runner, key, value)
        self.runner = runner
        self._touched = time.monotonic()
        return runner

    def _sign_off(self) -> None:
        """Stopping cleanly: offline at once (no last contact), not after
        GOCI_RUNNER_OFFLINE_SECONDS as for a worker that died."""
        if self.runner is not None:
            with contextlib.suppress(Exception):  # a DB outage: it goes offline by age
                Runner.objects.filter(pk=self.runner.pk).update(last_contact=None)
            self.runner = None

    def _claim(self) -> Job | None:
        return job_claim(worker=self.name, labels=self.labels, runner=self.runner)

    def run(self) -> None:
        """Claim and run jobs until stop() (blocks)."""
        with_retry(self.register, what="registering the worker")
        self.publisher = Publisher()
        listener = QueueListener(self._wake.set) if _on_postgres() else None
        services.queue_changed.connect(self.wake)
        slots = [
            threading.Thread(target=self._slot, name=f"goci-slot-{n}", daemon=True)
            for n in range(self.concurrency)
        ]
        beat = threading.Thread(target=self._heartbeat, name="goci-beat", daemon=True)
        for thread in [*slots, beat]:
            thread.start()
        reaped = 0.0
        pruner = prune_containers()
        try:
            clean_leftovers()
            while not self._stopping.is_set():
                # Persistent connections (in a worker process) are checked here, and
                # dropped after an error; otherwise this reconnects every round.
                close_old_connections()
                if time.monotonic() - reaped >= min(REAP_EVERY, settings.GOCI_LEASE_SECONDS / 3):
                    reaped = time.monotonic()
                    with contextlib.suppress(Exception):  # a DB outage: try again next round
                        jobs_reap()
                while len(self._running) < self.concurrency and not self._stopping.is_set():
                    job = with_retry(self._claim, what="claiming")
                    if job is None:
                        break
                    self._start(job)
                self._wake.wait(self.poll)
                self._wake.clear()
        finally:
            services.queue_changed.disconnect(self.wake)
            self._stopping.set()
            self._shutdown()
            for _ in slots:
                self._jobs.put(None)
            for thread in slots:
                thread.join()
            self._beat_stop.set()
            beat.join()
            if listener is not None:
                listener.stop()
            if pruner is not None and pruner.poll() is None:
                pruner.kill()  # harmless: the next start prunes again
            if pruner is not None:
                pruner.wait()
            self.close()
            connection.close()

    def close(self) -> None:
        self._sign_off()
        if self.publisher is not None:
            self.publisher.close()
            self.publisher = None

    def run_one_job(self) -> bool:
        """Claim one job and run it here; False if the queue was empty (for --once).
        Call close() when done."""
        self.publisher = self.publisher or Publisher()
        if self.runner is None:
            self.register()
        clean_leftovers()
        jobs_reap()
        job = self._claim()
        if job is None:
            return False
        running = _Running(job)
        self._running[job.pk] = running
        beat = threading.Thread(target=self._heartbeat, name="goci-beat", daemon=True)
        beat.start()
        try:
            self._run_job(running)
        finally:
            self._beat_stop.set()
            beat.join()
            self._beat_stop.clear()
        return True

    def _start(self, job: Job) -> None:
        running = _Running(job)
        with self._lock:
            self._running[job.pk] = running
        self._jobs.put(running)

    def _slot(self) -> None:
        """Run the jobs the loop hands over, one at a time, until told to stop."""
        try:
            while (running := self._jobs.get()) is not None:
                try:
                    self._run_job(running)
                except Exception:
                    log.exception("job %s crashed the worker thread", running.job.pk)
                finally:
                    self._wake.set()
        finally:
            connection.close()  # this thread's own connection

    def _shutdown(self) -> None:
        grace = time.monotonic() + settings.GOCI_SHUTDOWN_GRACE
        for running in list(self._running.values()):
            running.done.wait(max(grace - time.monotonic(), 0))
        for running in list(self._running.values()):
            if not running.done.is_set():
                log.warning("job %s still running after the grace: re-queued", running.job.pk)
                running.release = True
                running.cancel()
        for running in list(self._running.values()):
            running.done.wait()

    # -- one job ----------------------------------------------------------------

    def _run_job(self, running: _Running) -> None:
        job = running.job
        try:
            self._execute(running)
        finally:
            running.done.set()
            with self._lock:
                self._running.pop(job.pk, None)

    def _execute(self, running: _Running) -> None:
        job = running.job
        build = job.build  # job_claim read the build, its project and the steps
        steps = {step.name: step.pk for step in job.steps.all()}
        pipeline = None
        if build.pipeline:  # else the checkout reads it from the repository
            try:
                pipeline = job_pipeline(job)
            except (PipelineError, ValueError) as exc:  # validated at submit: a new format
                self._finish(job, Status.ERROR, f"the pipeline is no longer valid: {exc}")
                return
        workspace = make_workspace(job)
        try:
            if build.checkout:
                checked = self._checkout(running, workspace, steps, pipeline)
                if checked is None:  # the build ended there
                    return
                pipeline, steps = checked
            assert pipeline is not None  # build_create: no checkout, no build without one
            self._run_pipeline(running, pipeline, steps, workspace)
        finally:
            remove_workspace(workspace)

    def _run_pipeline(
        self, running: _Running, pipeline: Pipeline, steps: dict[str, int], workspace: Path
    ) -> None:
        job = running.job
        build = job.build
        try:
            values = with_retry(lambda: job_secrets(build, pipeline), what="reading secrets")
        except (SecretRefused, SecretError) as exc:
            # Before any step runs: every step shows why, and none ran without them.
            unstarted = BuildReporter(job, steps, self.publisher, on_lost=lambda: None)
            self._abandon(job, unstarted, pipeline, str(exc))
            return
        if values:
            pipeline = with_secret_values(pipeline, values)
        hostless = [s.name for s in pipeline.steps if not (s.image or s.build or s.ssh)]
        if hostless and settings.GOCI_HOST_STEPS != "allow":
            if not settings.GOCI_DEFAULT_IMAGE:
                self._refuse(job, steps, pipeline, hostless)
                return
            pipeline = with_default_image(pipeline, settings.GOCI_DEFAULT_IMAGE)
        # The job's own API credential: reads this build while this attempt runs.
        lifetime = (pipeline.timeout or JOB_TOKEN_LIFETIME) + JOB_TOKEN_SLACK
        job_token = access_tokens.issue_for_job(job, lifetime=lifetime)
        try:
            executor = self._executor(pipeline.steps, workspace, push_refused(build))
        except Exception as exc:  # noqa: BLE001  (the build shows why it could not run)
            # Docker unreachable, a bad GOCI_STEP_* setting: every step shows why.
            unstarted = BuildReporter(job, steps, self.publisher, on_lost=lambda: None)
            self._abandon(job, unstarted, pipeline, str(exc))
            return
        # `engine` is created below; the reporter calls this only while it runs.
        reporter = BuildReporter(
            job,
            steps,
            self.publisher,
            on_lost=lambda: engine.cancel(),  # noqa: PLW0108
            secrets=[*values.values(), job_token],
            # The job's result as soon as the engine has it, before the executor
            # removes containers (~100 ms each) and the workspace.
            on_finished=lambda result: self._conclude(running, result),
        )
        engine = Engine(
            pipeline,
            executor,
            reporter,
            branch=branch_of(build),
            event=EVENTS.get(build.trigger, build.trigger),
            env={**build.env, **server_env(build), "GOCI_JOB_TOKEN": job_token},
            log_cap=settings.GOCI_LOG_CAP,
            changed_files=build.changed_files,
        )
        running.reporter, running.engine = reporter, engine
        self._publish_running(job)
        try:
            engine.run()
        except Exception as exc:
            # A reporter that cannot store (a database error other than an outage): end
            # the job with the reason now. Left to the reaper, it would run again and
            # end as "runner lost" with nothing to say why.
            log.exception("job %s failed in the worker", job.pk)
            self._abandon(job, reporter, pipeline, f"Goci failed while running it: {exc}")
            return
        finally:
            running.engine = None  # the heartbeat stops looking at it
        if reporter.lost:
            log.warning("job %s attempt %s was taken from us", job.pk, job.attempt)

    def _publish_running(self, job: Job) -> None:
        if self.publisher is not None:  # the page shows "running" without waiting to poll
            self.publisher.publish(
                job.build_id, {"type": "build.status", "build": job.build_id, "status": "running"}
            )

    # -- the checkout (the step "clone") ---------------------------------------------

    def _checkout(
        self,
        running: _Running,
        workspace: Path,
        steps: dict[str, int],
        pipeline: Pipeline | None,
    ) -> tuple[Pipeline, dict[str, int]] | None:
        """Fetch the build's commit into the workspace as the step "clone", read the
        pipeline from it if the build has none yet, and find a pull request's changed
        files. Returns the pipeline and the step ids, or None if the build ended here
        (it is then finished, handed back, or no longer ours)."""
        job = running.job
        build = job.build
        clone = PipelineStep(name=services.CHECKOUT_STEP, run="", index=0)
        cancel = threading.Event()
        problem = ""
        try:
            credentials = with_retry(
                lambda: clone_credentials(build.project), what="reading clone credentials"
            )
        except SecretError as exc:
            credentials, problem = Credentials(), str(exc)
        reporter = BuildReporter(
            job, steps, self.publisher, on_lost=cancel.set, secrets=credentials.secrets()
        )
        if pipeline is not None and not pipeline.clone:  # a retry of a build planned so
            reporter.step_finished(
                clone,
                StepResult(clone.name, Outcome.SKIPPED, error="the pipeline says clone: false"),
            )
            reporter.flush()
            return None if reporter.lost else (pipeline, steps)
        step_log = StepLog(
            lambda first, lines: reporter.step_log(clone, first, lines, time.time()),
            cap=settings.GOCI_LOG_CAP,
        )
        running.reporter, running.checkout = reporter, cancel
        self._publish_running(job)
        reporter.step_started(clone, 1)
        error: str | None = None
        handed_back: bytes | None = None
        try:
            if problem:
                raise CheckoutError(problem)
            target = check_clone_url(build.project.repo_url, settings.GOCI_CLONE_ALLOWED_HOSTS)
            with Checkout(
                workspace,
                target,
                commit=build.commit,
                ref=fetch_ref(build),
                credentials=credentials,
                known_hosts=Path(settings.GOCI_DATA_DIR) / KNOWN_HOSTS,
                output=step_log.write,
                idle=reporter.idle,
                cancel=cancel,
                exclude=[OWNER_FILE],
            ) as checkout:
                checkout.fetch(pipeline.clone_depth if pipeline is not None else 1)
                if pipeline is None:
                    pipeline = self._plan(job, checkout, build.project.pipeline_path)
                    # A matrix made this job its first cell: its name and values make its
                    # steps' keys, by which its reporter's messages reach the page.
                    with_retry(
                        lambda: job.refresh_from_db(fields=["name", "matrix"]),
                        what="reading the job's cell",
                    )
                    steps = dict(Step.objects.filter(job_id=job.pk).values_list("name", "pk"))
                    if missing := sorted(set(pipeline.runs_on) - set(self.labels)):
                        holder = f"this worker ({self.name})"
                        raise _HandBack(handed_back_line(missing, holder))
                    if held := with_retry(lambda: plan_held(job.build_id), what="reading"):
                        raise _HandBack(held_back_line(held))
                if build.pr_number is not None and (build.base_commit or build.target_branch):
                    files = checkout.changed_files(build.base_commit, build.target_branch)
                    with_retry(
                        lambda: build_set_changed_files(
                            job_id=job.pk, attempt=job.attempt, changed_files=files
                        ),
                        what="storing the changed files",
                    )
                    build.changed_files = files
                if not pipeline.clone:
                    empty_workspace(workspace)
                    step_log.write(
                        b"[goci] clone: false - the files were fetched only to "
                        b"read the pipeline, and are removed\n"
                    )
                else:
                    checkout.deepen(pipeline.clone_depth)
        except CloneUrlRefused as exc:
            error = f"the clone URL is refused: {exc}"
        except (CheckoutError, PipelineError, services.InvalidRequest) as exc:
            error = str(exc)
        except OSError as exc:  # the workspace or a temporary directory
            error = f"the checkout failed: {exc}"
        except CheckoutCanceled:
            pass
        except LeaseLost:
            reporter.lost = True
        except _HandBack as back:
            handed_back = back.line
        finally:
            running.checkout = None
        if error is not None:
            step_log.write(f"{error}\n".encode())
        if handed_back:
            # The pipeline, read only now, needs labels this worker lacks (the job goes
            # back to the queue with them, for a runner that has them all), or deploys
            # where it must wait (it goes back until it may go).
            step_log.write(handed_back)
        step_log.end_attempt()
        if reporter.lost:
            return None
        if handed_back:
            reporter.flush()
            with_retry(lambda: job_release(job_id=job.pk, attempt=job.attempt), what="releasing")
            return None
        if error is None and not cancel.is_set():
            assert pipeline is not None
            reporter.step_finished(clone, StepResult(clone.name, Outcome.SUCCESS))
            reporter.flush()
            return None if reporter.lost else (pipeline, steps)
        self._end_at_checkout(running, reporter, clone, pipeline, error)
        return None

    def _plan(self, job: Job, checkout: Checkout, path: str) -> Pipeline:
        """The pipeline file of the commit, validated and stored as the build's, with its
        steps (PipelineError with every problem's file:line:column, CheckoutError)."""
        filename, data = read_pipeline(checkout, path, job.build.commit, MAX_BYTES)
        load(data, filename)  # the bytes as they are: the problems' positions are exact
        text = data.decode()
        return with_retry(
            lambda: build_plan(
                job_id=job.pk, attempt=job.attempt, pipeline=text, filename=filename
            ),
            what="planning the build",
        )

    def _end_at_checkout(
        self,
        running: _Running,
        reporter: BuildReporter,
        clone: PipelineStep,
        pipeline: Pipeline | None,
        error: str | None,
    ) -> None:
        """The checkout failed (error) or was canceled (None): the clone step says so,
        the pipeline's steps are skipped, and the job ends - or, if the worker is
        stopping, goes back to the queue."""
        job = running.job
        if error is None and running.release:
            reporter.flush()
            with_retry(lambda: job_release(job_id=job.pk, attempt=job.attempt), what="releasing")
            return
        if error is None:
            ended = StepResult(clone.name, Outcome.CANCELED)
            reason, status = "the pipeline was canceled", Status.CANCELED
        else:
            ended = StepResult(clone.name, Outcome.ERROR, error=error)
            reason, status = f"'{clone.name}' could not run", Status.ERROR
        reporter.step_finished(clone, ended)
        for step in pipeline.steps if pipeline is not None else ():
            reporter.step_finished(step, StepResult(step.name, Outcome.SKIPPED, error=reason))
        with contextlib.suppress(Exception):  # the same failure may strike again
            reporter.flush()
        if not reporter.lost:
            self._finish(job, status, reporter.sink.mask.text(error or ""))

    def _conclude(self, running: _Running, result: BuildResult) -> None:
        """The engine is done: finish the job, or hand it back if shutting down."""
        running.engine = None  # the heartbeat leaves it alone from now on
        job = running.job
        if running.release:
            with_retry(lambda: job_release(job_id=job.pk, attempt=job.attempt), what="releasing")
        else:
            self._finish(job, str(result.status))

    def _finish(self, job: Job, status: str, error: str = "") -> None:
        with contextlib.suppress(LeaseLost):
            build = with_retry(
                lambda: job_finish(job_id=job.pk, attempt=job.attempt, status=status, error=error),
                what="finishing the job",
            )
            if self.publisher is not None:
                self.publisher.publish(
                    job.build_id, {"type": "build.status", "build": job.build_id, "status": build}
                )

    def _refuse(
        self, job: Job, step_ids: dict[str, int], pipeline: Pipeline, hostless: list[str]
    ) -> None:
        """End the job before any step runs (GOCI_HOST_STEPS=deny, no default image),
        every step with it: the page and the API show why, and nothing stays queued."""
        reporter = BuildReporter(job, step_ids, self.publisher, on_lost=lambda: None)
        names = ", ".join(hostless)
        for step in pipeline.steps:
            if step.name in hostless:
                result = StepResult(step.name, Outcome.ERROR, error=NO_HOST_STEPS)
            else:
                result = StepResult(
                    step.name, Outcome.SKIPPED, error=f"not run: steps without image: {names}"
                )
            reporter.step_finished(step, result)
        reporter.flush()
        if not reporter.lost:
            self._finish(job, Status.ERROR, f"{NO_HOST_STEPS} (steps without image: {names})")

    def _abandon(self, job: Job, reporter: BuildReporter, pipeline: Pipeline, error: str) -> None:
        """End a job that could not run or whose engine failed, and its unfinished
        steps, with the reason. A step is finished if the reporter knows it ended,
        stored or not yet."""
        ended = {
            name
            for name, state in reporter.sink.states.items()
            if state["status"] not in (Status.QUEUED, Status.RUNNING)
        }
        for step in pipeline.steps:
            if step.name not in ended:
                reporter.step_finished(step, StepResult(step.name, Outcome.ERROR, error=error))
        with contextlib.suppress(Exception):  # the same failure may strike again
            reporter.flush()
        if not reporter.lost:
            self._finish(job, Status.ERROR, error)

    def _executor(
        self, steps: Sequence[PipelineStep], workspace: Path, refused: str | None
    ) -> Executor:
        containers = None
        if any(step.image for step in steps):
            from runners.executors.docker import from_environment  # noqa: PLC0415

            containers = from_environment(workspace)
        local = None
        if settings.GOCI_HOST_STEPS == "allow":
            local = LocalExecutor(workspace, env=host_env(home_of(workspace)), supervise=True)
        images = ImageBuilder(workspace, push_refused=refused)
        return ByImage(local, containers, images, SshExecutor())

    def _heartbeat(self) -> None:
        """For every running job: look for a cancel every CHECK_EVERY (one query for
        all of them), renew the lease every third of it. Reporter writes renew it too,
        but a step may be silent for longer."""
        renew_every = settings.GOCI_LEASE_SECONDS / 3
        try:
            while not self._beat_stop.wait(CHECK_EVERY):
                if time.monotonic() - self._touched >= renew_every:
                    self._touch()
                with self._lock:
                    jobs = [r for r in self._running.values() if r.busy]
                if not jobs:
                    continue
                try:
                    canceled = set(
                        Build.objects.filter(
                            pk__in=[r.job.build_id for r in jobs], cancel_requested=True
                        ).values_list("pk", flat=True)
                    )
                    for running in jobs:
                        if time.monotonic() - running.renewed >= renew_every:
                            self._renew(running, canceled)
                except Exception as exc:  # noqa: BLE001  (DB outage: the lease may still hold)
                    log.warning("heartbeat failed: %s", exc)
                    connection.close()
                    continue
                for running in jobs:
                    if running.job.build_id in canceled:
                        running.cancel()
        finally:
            connection.close()

    def _touch(self) -> None:
        """Keep the worker's row online: one UPDATE per third of a lease, busy or idle."""
        runner = self.runner
        if runner is None:
            return
        try:
            Runner.objects.filter(pk=runner.pk).update(last_contact=timezone.now())
            self._touched = time.monotonic()
        except Exception as exc:  # noqa: BLE001  (DB outage: try again next beat)
            log.warning("heartbeat of worker %s failed: %s", self.name, exc)
            connection.close()

    @staticmethod
    def _renew(running: _Running, canceled: set[int]) -> None:
        job = running.job
        try:
            job_heartbeat(job_id=job.pk, attempt=job.attempt)
            running.renewed = time.monotonic()
        except LeaseLost:
            if running.reporter is not None:
                running.reporter.lost = True
            canceled.add(job.build_id)


def persistent_connections() -> None:
    """Keep each thread's database connection for the thread's life, with Django's
    health check before each round's first query, instead of a new session per job and
    per idle second (each costs PostgreSQL ~4 ms of CPU). Only in a worker process,
    whose threads live as long as it does; web requests come on ever new threads."""
    database = settings.DATABASES["default"]
    database["CONN_MAX_AGE"] = None
    database["CONN_HEALTH_CHECKS"] = True


def server_env(build: Build) -> dict[str, str]:
    """The variables every server-side step gets (PIPELINE.md), but GOCI_JOB_TOKEN."""
    where = {"GOCI_SERVER_URL": settings.GOCI_PUBLIC_URL} if settings.GOCI_PUBLIC_URL else {}
    return {
        **where,
        "GOCI_BUILD_ID": str(build.pk),
        "GOCI_BUILD_NUMBER": str(build.number),
        "GOCI_PROJECT": build.project.slug,
        "GOCI_REF": build.ref,
        "GOCI_COMMIT": build.commit,
        "GOCI_COMMIT_SHA": build.commit,  # the name GitLab and the issue's example use
        "GOCI_EVENT": EVENTS.get(build.trigger, build.trigger),
        # The pipeline's `inputs:`, as checked when the build was queued.
        **{input_variable(name): str(value) for name, value in (build.inputs or {}).items()},
    }


def secret_scope(build: Build) -> dict[str, Any]:
    """The event and fork flag that decide which secrets a build gets. A rerun runs the
    code of the build it reruns, so it is judged by that one's event (build_rerun
    copies the fork flag): a rerun of a pull request must not count as "manual"."""
    origin: Build | None = build
    for _ in range(MAX_RERUN_CHAIN):  # a loop, not recursion: chains may be long
        if origin is None or origin.trigger != Build.Trigger.RERUN:
            break
        origin = origin.rerun_of
    trigger = origin.trigger if origin is not None else build.trigger
    return {"event": EVENTS.get(trigger, trigger), "fork": build.fork}


def push_refused(build: Build) -> str | None:
    """Why this build's `build:` steps must not push: the code is a pull request's (or a
    fork's), judged as secret_scope judges it; None when they may."""
    scope = secret_scope(build)
    if scope["event"] == "pull_request":
        return "pull_request"
    return "fork" if scope["fork"] else None


def job_pipeline(job: Job) -> Pipeline:
    """The pipeline this job runs: the build's, or its matrix cell's (PipelineError,
    ValueError for a cell the pipeline no longer has)."""
    pipeline = load(job.build.pipeline, job.build.project.pipeline_path)
    return for_cell(pipeline, job.matrix) if job.matrix else pipeline


def job_secrets(build: Build, pipeline: Pipeline) -> dict[str, str]:
    """The values of the secrets that the pipeline's steps may use in this build, by
    name (SecretRefused, SecretError). None for a fork's code: the variables it asks
    for stay unset (as in GitHub Actions and Woodpecker), and the build page says why."""
    if push_refused(build):
        # A pull request's image is built, never pushed: its steps need no credential
        # of the registry, and its code gets none (so a PR builds whatever the
        # secret's events are).
        pipeline = without_registry_secrets(pipeline)
    wanted = secrets_wanted(
        pipeline,
        branch=branch_of(build),
        event=EVENTS.get(build.trigger, build.trigger),
        changed_files=build.changed_files,
        judge=True,
    )
    if not wanted or build.fork:
        return {}
    return secrets_resolve(
        project=build.project, wanted=wanted, **secret_scope(build), branch=branch_of(build)
    )


def with_default_image(pipeline: Pipeline, image: str) -> Pipeline:
    """The pipeline with `image` for every step that has none (GOCI_DEFAULT_IMAGE)."""
    steps = tuple(
        step if step.image or step.build or step.ssh else dataclasses.replace(step, image=image)
        for step in pipeline.steps
    )
    return dataclasses.replace(pipeline, steps=steps)


def clone_credentials(project: Project) -> Credentials:
    """The project's GOCI_CLONE_TOKEN and GOCI_CLONE_SSH_KEY, for Goci's own use only."""
    return Credentials(
        token=secret_for_goci(project, CLONE_TOKEN) or "",
        ssh_key=secret_for_goci(project, CLONE_SSH_KEY) or "",
    )


def fetch_ref(build: Build) -> str:
    """The ref to fetch if the server will not send the commit by its id: a pull
    request's head, or the build's ref."""
    if build.pr_number is not None:
        return pr_head_ref(build.forge, build.pr_number)
    return build.ref


class _HandBack(Exception):
    """The pipeline read from the repository runs on labels this worker lacks, or its
    deployment must wait: `line` says which, in the clone step's log."""

    def __init__(self, line: bytes) -> None:
        super().__init__(line.decode())
        self.line = line


def branch_of(build: Build) -> str | None:
    """The branch `when:` and secrets' branch rules see: a pull request's target branch
    (as Woodpecker's CI_COMMIT_BRANCH and GitHub's `branches:` filter), none for a tag."""
    if build.pr_number is not None:
        return build.target_branch or None
    if build.ref.startswith("refs/tags/"):
        return None
    return build.ref.removeprefix("refs/heads/") or None


def make_workspace(job: Job) -> Path:
    """A fresh directory for one attempt of a job (runners/workspace.py)."""
    return workspaces.make_workspace(
        Path(settings.GOCI_WORKSPACE_ROOT), f"job{job.pk}-a{job.attempt}"
    )


def clean_leftovers() -> None:
    """Remove workspaces of workers on this machine that died."""
    workspaces.clean_leftovers(Path(settings.GOCI_WORKSPACE_ROOT))


def _on_postgres() -> bool:
    return connection.vendor == "postgresql"


class QueueListener:
    """LISTEN on its own autocommit connection: `on_notify` runs the moment a build is
    queued or canceled in any process, instead of at the next poll. An idle worker
    wakes with it; so does a web process's long polls of remote runners."""

    def __init__(self, on_notify: Callable[[], None]) -> None:
        self.on_notify = on_notify
        self._stop = threading.Event()
        self.params = connection.get_connection_params()
        self.thread = threading.Thread(target=self._listen, name="goci-listen", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=5)

    def _listen(self) -> None:
        import psycopg  # noqa: PLC0415

        while not self._stop.is_set():
            try:
                with psycopg.connect(**self.params, autocommit=True) as conn:
                    conn.execute(f"LISTEN {services.QUEUE_CHANNEL}")
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=1.0, stop_after=1):
                            self.on_notify()
            except Exception as exc:  # noqa: BLE001  (PostgreSQL restarts: poll meanwhile)
                log.warning("LISTEN connection lost (%s); reconnecting", exc)
                self._stop.wait(1.0)
