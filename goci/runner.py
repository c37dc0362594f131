"""`goci runner`: a remote runner. It reaches the server over HTTP(S) only, through the
runner API (/api/runner/v1/, docs/runners.md), with its own token as its one
credential: no Django, database, Redis or SECRET_KEY here
(tests/test_core_is_django_free.py).

It runs each job with the same engine and executors as `goci worker`: a reporter
batches step states and log lines into `report` calls (masked first: the server masks
nothing), a heartbeat thread renews every job's lease and looks for a cancel, and a
409 (the attempt was taken from it) stops the job and cleans up. Up to `capacity`
jobs run at once, one thread each.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import logging
import os
import platform
import queue
import random
import socket
import stat
import threading
import time
import tomllib
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import goci
from builds.clone_urls import CloneUrlRefused, check_clone_url
from builds.pipeline import (
    MAX_BYTES,
    Pipeline,
    PipelineError,
    for_cell,
    load,
    with_secret_values,
)
from builds.pipeline import Step as PipelineStep
from runners import workspace as workspaces
from runners.checkout import (
    KNOWN_HOSTS,
    Checkout,
    CheckoutCanceled,
    CheckoutError,
    Credentials,
    handed_back_line,
    held_back_line,
    read_pipeline,
)
from runners.engine import BuildResult, Engine, Executor, StepResult
from runners.engine import Status as Outcome
from runners.executors import NO_HOST_STEPS, ByImage, prune_containers
from runners.executors.image_build import ImageBuilder
from runners.executors.local import LocalExecutor
from runners.executors.ssh import SshExecutor
from runners.lines import DEFAULT_LOG_CAP, FLUSH_SECONDS, Masker, PendingLines, StepLog

log = logging.getLogger(__name__)

DEFAULT_CONFIG = Path("~/.config/goci/runner.toml")
API = "/api/runner/v1"
POLL_WAIT = 30  # seconds a `next` waits on the server (its most)
HTTP_TIMEOUT = 60.0  # a call's socket timeout: above POLL_WAIT, below forever
# Batches as the worker's LogSink's (runners/lines.py: FLUSH_*). The server takes at
# most 10,000 lines and 2 MiB a call: a body over MAX_BODY is split in two.
MAX_BODY = 2 * 1024 * 1024
MAX_LINES = 10_000
# Cancel must reach a running step within ~2 s: the lease call says so, this often at least.
CHECK_EVERY = 2.0
BACKOFF_FIRST, BACKOFF_MOST = 0.5, 30.0
CHECKOUT_STEP = "clone"  # builds.services.CHECKOUT_STEP (a Django module)
RELEASE_TRIES = 3  # a job handed back at shutdown: else its lease expiry does it


class RunnerError(Exception):
    """Something the operator must fix (a bad config, a refused registration): exit 2."""


class ApiError(Exception):
    """The server answered a 4xx (other than a retried one)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail


class Stopped(Exception):
    """A retried call gave up because the runner or the job is stopping."""


# ---------------------------------------------------------------------------
# The config file


@dataclass
class Config:
    server: str
    token: str
    name: str = ""
    capacity: int = 1
    host_steps: str = "deny"  # "allow": steps without image run in this machine's shell
    default_image: str = ""  # else, steps without image run in this image
    workspace_root: str = ""  # default: a directory beside the config file
    # Hosts (host or host:port, commas) the checkout may reach though they resolve to
    # internal addresses, as the server's GOCI_CLONE_ALLOWED_HOSTS, on this network.
    clone_allowed_hosts: str = ""

    def workspaces(self, config_path: Path) -> Path:
        return Path(self.workspace_root or config_path.parent / "workspaces").expanduser()

    def allowed_hosts(self) -> list[str]:
        return [host.strip() for host in self.clone_allowed_hosts.split(",") if host.strip()]


def _toml_string(value: str) -> str:
    # JSON's escapes (\" \\ \n \uXXXX) are TOML basic-string escapes too.
    return json.dumps(value, ensure_ascii=True)


def write_config(path: Path, config: Config) -> None:
    """Write the config readable by its owner only (0600), refusing a directory that
    others may write to (they could swap the file)."""
    path = path.expanduser()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = path.parent.stat().st_mode
    if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
        raise RunnerError(f"{path.parent} is writable by everyone: choose another --config")
    lines = [
        f"{key} = {value if isinstance(value, int) else _toml_string(value)}"
        for key, value in dataclasses.asdict(config).items()
    ]
    text = "# goci runner: its token is its only credential; keep this file private\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        os.fchmod(fd, 0o600)  # a file that existed keeps its mode through os.open
        out.write(text + "\n".join(lines) + "\n")


def read_config(path: Path) -> Config:
    path = path.expanduser()
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise RunnerError(f"no runner config at {path}: run `goci runner register` first") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise RunnerError(f"cannot read {path}: {exc}") from None
    known = {f.name for f in dataclasses.fields(Config)}
    try:
        config = Config(**{k: v for k, v in data.items() if k in known})
    except TypeError as exc:
        raise RunnerError(f"{path}: {exc}") from None
    config.host_steps = os.environ.get("GOCI_HOST_STEPS", config.host_steps).strip().lower()
    config.default_image = os.environ.get("GOCI_DEFAULT_IMAGE", config.default_image)
    config.workspace_root = os.environ.get("GOCI_WORKSPACE_ROOT", config.workspace_root)
    config.clone_allowed_hosts = os.environ.get(
        "GOCI_CLONE_ALLOWED_HOSTS", config.clone_allowed_hosts
    )
    if config.host_steps not in ("allow", "deny"):
        raise RunnerError(f"host_steps must be 'allow' or 'deny', not {config.host_steps!r}")
    return config


# ---------------------------------------------------------------------------
# HTTP


def backoff(attempt: int) -> float:
    """0.5 s, 1 s, 2 s ... up to 30 s, with jitter so that runners cut off together do
    not all come back in the same instant."""
    delay = min(BACKOFF_FIRST * 2**attempt, BACKOFF_MOST)
    return float(delay * random.uniform(0.5, 1.0))  # noqa: S311  (jitter, not a secret)


class Client:
    """The runner API over keep-alive connections, one per thread (http.client is not
    thread-safe). `call` retries a lost connection and a 5xx with backoff until
    `stop` is set; the calls it retries are idempotent on the server."""

    def __init__(self, server: str, token: str = "") -> None:
        url = urllib.parse.urlsplit(server.rstrip("/"))
        if url.scheme not in ("http", "https") or not url.hostname:
            raise RunnerError(f"{server!r} is not a server URL such as https://ci.example.com")
        self.scheme, self.host, self.port = url.scheme, url.hostname, url.port
        self.base = url.path + API
        self.token = token
        self._local = threading.local()
        self._open: set[http.client.HTTPConnection] = set()
        self._lock = threading.Lock()

    def _connection(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            kind = (
                http.client.HTTPSConnection
                if self.scheme == "https"
                else http.client.HTTPConnection
            )
            conn = kind(self.host, self.port, timeout=HTTP_TIMEOUT)
            self._local.conn = conn
            with self._lock:
                self._open.add(conn)
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
            with self._lock:
                self._open.discard(conn)

    def abort(self) -> None:
        """Break every call in flight (a long poll, at shutdown)."""
        with self._lock:
            conns = list(self._open)
        for conn in conns:
            sock = conn.sock
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def once(
        self,
        path: str,
        body: object = None,
        timeout: float = HTTP_TIMEOUT,
        *,
        unless: threading.Event | None = None,
    ) -> tuple[int, Any]:
        """One POST: (status, JSON answer or None). OSError and HTTPException on a lost
        connection, or no answer within `timeout` seconds; OSError at once if `unless`
        is set (a long poll as the runner stops)."""
        if isinstance(body, bytes):
            data = body
        else:
            data = b"" if body is None else json.dumps(body, ensure_ascii=False).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"goci-runner/{goci.__version__}",
        }
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        conn = self._connection()
        conn.timeout = timeout
        try:
            if unless is not None and conn.sock is None:
                # Connected before the look below: a stop() after it finds the socket
                # to shut (abort), one before it is seen. Else a stop() while this
                # connected would leave the poll to wait for the server's answer.
                conn.connect()
            if unless is not None and unless.is_set():
                raise OSError("the call was not made: the runner is stopping")
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
            conn.request("POST", self.base + path, body=data, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException):
            self._drop()
            raise
        if response.will_close:
            self._drop()
        try:
            answer = json.loads(raw) if raw else None
        except ValueError:
            answer = {"detail": raw[:200].decode(errors="replace")}
        return response.status, answer

    def call(
        self, path: str, body: object = None, *, stop: threading.Event | None = None
    ) -> tuple[int, Any]:
        """A POST retried through lost connections and 5xx/429 answers; a 4xx raises
        ApiError; Stopped if `stop` is set while it waits to retry."""
        attempt = 0
        while True:
            try:
                status, answer = self.once(path, body)
            except (OSError, http.client.HTTPException) as exc:
                status, answer = 0, {"detail": f"{type(exc).__name__}: {exc}"}
            if 200 <= status < 300:
                return status, answer
            detail = str((answer or {}).get("detail", "")) if isinstance(answer, dict) else ""
            if 400 <= status < 500 and status != 429:
                raise ApiError(status, detail)
            if stop is not None and stop.is_set():
                raise Stopped(detail)
            delay = backoff(attempt)
            attempt += 1
            log.warning("server unreachable (%s); retrying in %.1f s", detail or status, delay)
            if stop is not None:
                if stop.wait(delay):
                    raise Stopped(detail)
            else:
                time.sleep(delay)

    def close(self) -> None:
        with self._lock:
            conns, self._open = list(self._open), set()
        for conn in conns:
            conn.close()


# ---------------------------------------------------------------------------
# register / unregister


def register(
    *, server: str, registration_token: str, name: str, labels: Sequence[str], capacity: int
) -> Config:
    client = Client(server)
    body = {
        "registration_token": registration_token,
        "name": name,
        "labels": list(labels),
        "capacity": capacity,
        "version": goci.__version__,
        "platform": f"{platform.system().lower()}/{platform.machine()}",
    }
    try:
        _, answer = client.call("/register", body, stop=threading.Event())
    except ApiError as exc:
        raise RunnerError(f"the server refused the registration: {exc.detail}") from None
    except Stopped:
        raise RunnerError(f"cannot reach {server}") from None
    finally:
        client.close()
    return Config(server=server, token=answer["token"], name=answer["name"], capacity=capacity)


def unregister(config: Config) -> None:
    client = Client(config.server, config.token)
    try:
        client.call("/unregister", stop=threading.Event())
    except ApiError as exc:
        if exc.status != 401:  # already gone (revoked or unregistered): forget it anyway
            raise RunnerError(f"the server refused: {exc.detail}") from None
    finally:
        client.close()


# ---------------------------------------------------------------------------
# The reporter: engine events -> batched `report` calls


def _now() -> str:
    return datetime.now(UTC).isoformat()


class HttpReporter:
    """The engine's reporter in a remote runner: LogSink's batching, sent over HTTP.
    Only the engine's thread calls it. After a 409/404/401 it sends nothing more and
    calls `on_lost` (which cancels the engine)."""

    def __init__(
        self,
        job: Job,
        secrets: Sequence[str],
        on_lost: Callable[[], None],
        on_finished: Callable[[BuildResult], None] | None = None,
    ) -> None:
        self.job = job
        self.mask = Masker(secrets)
        self.on_lost = on_lost
        self.on_finished = on_finished
        self.lost = False
        self.started: dict[str, str] = {}  # step -> started_at
        self.ended: set[str] = set()  # steps whose end was reported (sent or not yet)
        self.changed: dict[str, dict[str, Any]] = {}  # step -> fields not sent yet
        self.pending = PendingLines()
        self.since: float | None = None
        # One batch in flight on the sender's thread while the next gathers here: a
        # step that prints faster than the server stores gets bigger batches (up to
        # MAX_LINES), not more calls; one more waiting batch at most (back-pressure).
        self._outbox: queue.Queue[tuple[dict[str, Any], list[list[Any]]] | None]
        self._outbox = queue.Queue(maxsize=1)
        self._busy = threading.Event()
        self._sender = threading.Thread(target=self._sending, name="goci-report", daemon=True)
        self._sender.start()

    # -- the engine's Reporter protocol --

    def step_started(self, step: PipelineStep, attempt: int) -> None:
        self.started[step.name] = _now()
        self._state(
            step.name,
            status="running",
            started_at=self.started[step.name],
            finished_at=None,
            exit_code=None,
            error="",
            image=step.image or "",
            image_id="",
            digests={},
        )

    def step_log(
        self, step: PipelineStep, first_line: int, lines: Sequence[str], at: float
    ) -> None:
        if not self.lost:
            self._pend(step.name, *self.mask.lines(step.name, first_line, lines))

    def step_finished(self, step: PipelineStep, result: StepResult) -> None:
        self._release(step.name)
        self.ended.add(step.name)
        started = self.started.get(step.name)
        self._state(
            step.name,
            status=str(result.status),
            exit_code=result.exit_code,
            error=self.mask.text(result.error or ""),
            finished_at=_now() if started else None,
            image=step.image or "",
            image_id=result.image_id,
            digests=dict(result.digests),
        )

    def idle(self) -> None:
        due = self.since is not None and time.monotonic() - self.since >= FLUSH_SECONDS
        if due and not self._busy.is_set():
            self._hand_off()

    def build_finished(self, result: BuildResult) -> None:
        self.flush()
        self.close()
        if self.on_finished is not None and not self.lost:
            self.on_finished(result)

    # -- batching --

    def _state(self, step: str, **fields: Any) -> None:
        self.changed.setdefault(step, {}).update(fields)
        self.since = self.since or time.monotonic()

    def _release(self, step: str) -> None:
        held = self.mask.release(step)
        if held is not None:
            self._pend(step, *held)

    def _pend(self, step: str, first_line: int, lines: list[str]) -> None:
        if not lines:
            return
        self.pending.add(step, first_line, lines)
        self.since = self.since or time.monotonic()
        waiting = self.pending
        if self._busy.is_set():
            if waiting.lines >= MAX_LINES or waiting.size >= MAX_BODY // 2:
                self._hand_off()  # waits while a batch is in flight and one waits
        elif waiting.full():
            self._hand_off()

    def flush(self) -> None:
        """Send everything new and wait until the server has it."""
        self._hand_off()
        self._outbox.join()

    def close(self) -> None:
        """Stop the sender's thread (after a flush)."""
        if self._sender.is_alive():
            self._outbox.put(None)
            self._sender.join()

    def _hand_off(self) -> None:
        """Pass step states and log lines gathered so far to the sender."""
        if self.since is None:
            return
        ids = self.job.step_ids
        steps = {str(ids[name]): fields for name, fields in self.changed.items() if name in ids}
        chunks = [[ids[s], first, lines] for s, first, lines in self.pending.take() if s in ids]
        self.changed = {}
        self.since = None
        if self.lost:
            return
        if self._sender.is_alive():
            self._busy.set()
            self._outbox.put((steps, chunks))
        else:  # closed (the engine ended): send from here
            self._send(steps, chunks)

    def _sending(self) -> None:
        while (batch := self._outbox.get()) is not None:
            try:
                if not self.lost:
                    self._send(*batch)
            except Exception as exc:  # noqa: BLE001  (the job stops with the reason logged)
                self._lose(exc)
            finally:
                if self._outbox.unfinished_tasks <= 1:
                    self._busy.clear()
                self._outbox.task_done()
        self._outbox.task_done()

    def _send(self, steps: dict[str, Any], chunks: list[list[Any]]) -> None:
        lines = sum(len(chunk[2]) for chunk in chunks)
        body = json.dumps({"steps": steps, "chunks": chunks}, ensure_ascii=False).encode()
        if (lines > MAX_LINES or len(body) > MAX_BODY) and lines > 1:
            first, second = _halves(chunks)
            self._send({}, first)  # the lines first: a step's end comes after its output
            self._send(steps, second)
            return
        try:
            self.job.client.call(
                f"/jobs/{self.job.id}/{self.job.attempt}/report",
                body,
                stop=self.job.gone,
            )
        except (ApiError, Stopped) as exc:
            self._lose(exc)

    def _lose(self, exc: Exception) -> None:
        if not self.lost:
            log.warning("job %s attempt %s: %s; stopping it", self.job.id, self.job.attempt, exc)
            self.lost = True
            self.on_lost()


def _halves(chunks: list[list[Any]]) -> tuple[list[list[Any]], list[list[Any]]]:
    """Two batches of about half the lines each, in order."""
    if len(chunks) > 1:
        middle = len(chunks) // 2
        return chunks[:middle], chunks[middle:]
    step, first, lines = chunks[0]
    middle = len(lines) // 2
    return [[step, first, lines[:middle]]], [[step, first + middle, lines[middle:]]]


# ---------------------------------------------------------------------------
# One job


@dataclass
class Job:
    """A job this runner holds: what `next` answered, and how to stop it."""

    payload: dict[str, Any]
    client: Client
    lease_seconds: float
    engine: Engine | None = None
    checkout: threading.Event | None = None  # set: stop the checkout
    reporter: HttpReporter | None = None
    release: bool = False  # shutting down: hand it back (`release`), do not finish it
    gone: threading.Event = field(default_factory=threading.Event)  # taken, or given up
    renewed: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def id(self) -> int:
        return int(self.payload["job_id"])

    @property
    def attempt(self) -> int:
        return int(self.payload["attempt"])

    @property
    def step_ids(self) -> dict[str, int]:
        return {step["name"]: int(step["id"]) for step in self.payload["steps"]}

    def cancel(self) -> None:
        if self.checkout is not None:
            self.checkout.set()
        if self.engine is not None:
            self.engine.cancel()

    def call(self, what: str, body: object = None) -> Any:
        """A call about this attempt (ApiError, Stopped once the job is gone)."""
        return self.client.call(f"/jobs/{self.id}/{self.attempt}/{what}", body, stop=self.gone)[1]

    def lose(self) -> None:
        """The attempt is no longer ours: stop, write nothing more."""
        self.gone.set()
        if self.reporter is not None:
            self.reporter.lost = True
        self.cancel()


def _cell(pipeline: Pipeline, payload: dict[str, Any]) -> Pipeline:
    """The pipeline of the job's matrix cell, or the pipeline (ValueError: no such cell)."""
    values = payload.get("matrix") or {}
    return for_cell(pipeline, values) if values else pipeline


def _branch(ref: str) -> str | None:
    return ref.removeprefix("refs/heads/") if ref.startswith("refs/heads/") else None


class Runner:
    """Takes jobs with `next` and runs up to `capacity` of them at once."""

    def __init__(self, config: Config, config_path: Path, *, grace: float = 60.0) -> None:
        self.config = config
        self.client = Client(config.server, config.token)
        self.capacity = max(1, config.capacity)
        self.root = config.workspaces(config_path)
        self.known_hosts = config_path.expanduser().parent / KNOWN_HOSTS
        self.grace = grace
        self.stopping = threading.Event()
        self.fatal: str | None = None
        self._running: dict[int, Job] = {}
        self._lock = threading.Lock()
        self._slot_free = threading.Event()
        self._beat_stop = threading.Event()

    def stop(self) -> None:
        """Take no more jobs: sets flags and shuts the poll's socket (call it from a
        thread, not a signal handler: the main thread may hold what it takes)."""
        self.stopping.set()
        self._slot_free.set()
        self.client.abort()

    def run(self, *, once: bool = False) -> int:
        """Until stop() (or one job with `once`); 0, or 1 if the server refuses this runner."""
        self.root.mkdir(parents=True, exist_ok=True)
        # What a runner killed here left: its workspaces, and its steps' containers,
        # which would otherwise run on until the next container step here prunes them.
        workspaces.clean_leftovers(self.root)
        pruner = prune_containers()
        beat = threading.Thread(target=self._heartbeat, name="goci-beat", daemon=True)
        beat.start()
        threads: list[threading.Thread] = []
        attempt = 0
        try:
            while not self.stopping.is_set():
                with self._lock:
                    full = len(self._running) >= self.capacity
                if full:
                    self._slot_free.wait(1.0)
                    self._slot_free.clear()
                    continue
                try:
                    status, payload = self.client.once(
                        f"/next?wait={POLL_WAIT}", unless=self.stopping
                    )
                except (OSError, http.client.HTTPException) as exc:
                    status, payload = 0, {"detail": str(exc)}
                if self.stopping.is_set():
                    if status == 200:  # answered as we stopped: back to the queue at once
                        self._release(Job(payload, self.client, 0.0))
                    break
                if status == 200:
                    attempt = 0
                    job = Job(payload, self.client, float(payload["lease_seconds"]))
                    with self._lock:
                        self._running[job.id] = job
                    thread = threading.Thread(
                        target=self._run_job, args=(job,), name=f"goci-job-{job.id}", daemon=True
                    )
                    thread.start()
                    threads.append(thread)
                    if once:
                        thread.join()
                        break
                elif status == 204:
                    attempt = 0
                elif status == 401:
                    self.fatal = str((payload or {}).get("detail", "unauthorized"))
                    break
                elif 400 <= status < 500 and status != 429:
                    self.fatal = f"{status}: {(payload or {}).get('detail', '')}"
                    break
                else:
                    delay = backoff(attempt)
                    attempt += 1
                    log.warning(
                        "cannot reach the server (%s); again in %.1f s", status or payload, delay
                    )
                    self.stopping.wait(delay)
        finally:
            self._shutdown()
            for thread in threads:
                thread.join()
            self._beat_stop.set()
            beat.join()
            self.client.close()
            if pruner is not None:
                if pruner.poll() is None:
                    pruner.kill()  # harmless: the next start prunes again
                pruner.wait()
        return 1 if self.fatal else 0

    def _shutdown(self) -> None:
        deadline = time.monotonic() + self.grace
        for job in self._jobs():
            job.done.wait(max(deadline - time.monotonic(), 0))
        for job in self._jobs():
            if not job.done.is_set():
                log.warning("job %s still running after the grace: handed back", job.id)
                job.release = True
                job.cancel()

    def _jobs(self) -> list[Job]:
        with self._lock:
            return list(self._running.values())

    # -- the heartbeat --

    def _heartbeat(self) -> None:
        while not self._beat_stop.wait(0.5):
            for job in self._jobs():
                every = min(CHECK_EVERY, job.lease_seconds / 3)
                silent = time.monotonic() - job.renewed
                if job.gone.is_set() or silent < every:
                    continue
                if silent > job.lease_seconds:
                    # Cut off from the server for a whole lease: it hands the job on
                    # (another runner may run it now), so this attempt stops here rather
                    # than run twice, a deploy step say, until the link comes back.
                    log.warning(
                        "job %s attempt %s: its lease could not be renewed for %.0f s, so "
                        "the server hands it on: stopping it",
                        job.id,
                        job.attempt,
                        silent,
                    )
                    job.lose()
                    continue
                path = f"/jobs/{job.id}/{job.attempt}/lease"
                try:
                    status, answer = self.client.once(path, timeout=max(1.0, every))
                except (OSError, http.client.HTTPException) as exc:
                    log.warning("lease of job %s not renewed: %s", job.id, exc)
                    continue  # the lease may still hold; the next beat tries again
                if status == 200:
                    job.renewed = time.monotonic()
                    if answer.get("cancel_requested"):
                        job.cancel()
                elif status in (401, 404, 409):
                    log.warning("job %s attempt %s was taken: stopping it", job.id, job.attempt)
                    job.lose()

    # -- one job --

    def _run_job(self, job: Job) -> None:
        try:
            self._execute(job)
        except Exception:
            log.exception("job %s crashed its thread", job.id)
        finally:
            job.done.set()
            with self._lock:
                self._running.pop(job.id, None)
            self._slot_free.set()

    def _execute(self, job: Job) -> None:
        payload = job.payload
        pipeline = None
        if payload["pipeline"]:  # else the checkout reads it from the repository
            try:
                pipeline = _cell(load(payload["pipeline"], payload["pipeline_path"]), payload)
            except (PipelineError, ValueError) as exc:
                self._refuse(job, f"the pipeline is no longer valid: {exc}", ())
                return
        workspace = workspaces.make_workspace(self.root, f"job{job.id}-a{job.attempt}")
        try:
            if payload["checkout"]:
                pipeline = self._checkout(job, workspace, pipeline)
                if pipeline is None:  # the job ended there (or was handed back, or lost)
                    return
            assert pipeline is not None  # the server sends a pipeline or a checkout
            self._run_pipeline(job, pipeline, workspace)
        finally:
            workspaces.remove_workspace(workspace)

    def _run_pipeline(self, job: Job, pipeline: Pipeline, workspace: Path) -> None:
        payload = job.payload
        token = str(payload["job_token"])
        secrets: dict[str, str] = payload.get("secrets") or {}
        names = [step.name for step in pipeline.steps]
        if payload.get("secrets_error"):
            self._refuse(job, str(payload["secrets_error"]), (), names)
            return
        if secrets:
            pipeline = with_secret_values(pipeline, secrets)
        hostless = [s.name for s in pipeline.steps if not (s.image or s.build or s.ssh)]
        if hostless and self.config.host_steps != "allow":
            if not self.config.default_image:
                why = f"{NO_HOST_STEPS} (steps without image: {', '.join(hostless)})"
                self._refuse(job, why, hostless, names)
                return
            steps = tuple(
                s
                if s.image or s.build or s.ssh
                else dataclasses.replace(s, image=self.config.default_image)
                for s in pipeline.steps
            )
            pipeline = dataclasses.replace(pipeline, steps=steps)
        reporter = HttpReporter(
            job,
            [*secrets.values(), token],
            on_lost=job.lose,
            on_finished=lambda r: self._finish(job, str(r.status)),
        )
        job.reporter = reporter
        try:
            executor = self._executor(pipeline, workspace, payload.get("push_refused"))
        except Exception as exc:  # noqa: BLE001  (Docker unreachable: every step says why)
            self._abandon(job, reporter, pipeline, str(exc))
            return
        engine = Engine(
            pipeline,
            executor,
            reporter,
            branch=payload.get("branch") if "branch" in payload else _branch(str(payload["ref"])),
            event=str(payload["event"]),
            env={**payload["env"], "GOCI_JOB_TOKEN": token},
            log_cap=DEFAULT_LOG_CAP,
            changed_files=payload["changed_files"],
        )
        job.engine = engine
        if job.gone.is_set() or job.release:
            engine.cancel()
        try:
            engine.run()
        except Exception as exc:
            log.exception("job %s failed in the runner", job.id)
            self._abandon(job, reporter, pipeline, f"Goci failed while running it: {exc}")

    # -- the checkout (the step "clone"), as the worker's --

    def _checkout(self, job: Job, workspace: Path, pipeline: Pipeline | None) -> Pipeline | None:
        """Fetch the build's commit into the workspace as the step "clone"; read the
        pipeline from it if the build has none yet (`plan`), and send a pull request's
        changed files. The pipeline, or None if the job ended here."""
        payload, clone_info = job.payload, job.payload["clone"] or {}
        clone = PipelineStep(name=CHECKOUT_STEP, run="", index=0)
        credentials = Credentials(
            token=str(clone_info.get("token", "")), ssh_key=str(clone_info.get("ssh_key", ""))
        )
        cancel = threading.Event()
        reporter = HttpReporter(job, credentials.secrets(), on_lost=job.lose)
        job.reporter = reporter
        if pipeline is not None and not pipeline.clone:  # a retry of a build planned so
            skipped = StepResult(
                clone.name, Outcome.SKIPPED, error="the pipeline says clone: false"
            )
            reporter.step_finished(clone, skipped)
            reporter.flush()
            reporter.close()
            return None if reporter.lost else pipeline
        step_log = StepLog(
            lambda first, lines: reporter.step_log(clone, first, lines, time.time()),
            cap=DEFAULT_LOG_CAP,
        )
        job.checkout = cancel
        if job.gone.is_set() or job.release:
            cancel.set()
        reporter.step_started(clone, 1)
        error: str | None = None
        back: bytes | None = None  # the line that says why the job goes back
        try:
            if clone_info.get("error"):
                raise CheckoutError(str(clone_info["error"]))
            target = check_clone_url(str(payload["repo_url"]), self.config.allowed_hosts())
            with Checkout(
                workspace,
                target,
                commit=str(payload["commit"]),
                ref=str(clone_info.get("fetch_ref", "")),
                credentials=credentials,
                known_hosts=self.known_hosts,
                output=step_log.write,
                idle=reporter.idle,
                cancel=cancel,
                exclude=[workspaces.OWNER_FILE],
            ) as checkout:
                checkout.fetch(pipeline.clone_depth if pipeline is not None else 1)
                base, target_branch = clone_info.get("base_commit"), clone_info.get("target_branch")
                if clone_info.get("pull_request") and (base or target_branch):
                    files = checkout.changed_files(str(base or ""), str(target_branch or ""))
                    job.call("changed-files", {"changed_files": files})
                    payload["changed_files"] = files
                if pipeline is None:
                    pipeline, back = self._plan(job, checkout)
                if not back and not pipeline.clone:
                    workspaces.empty_workspace(workspace)
                    step_log.write(
                        b"[goci] clone: false - the files were fetched only to "
                        b"read the pipeline, and are removed\n"
                    )
                elif not back:
                    checkout.deepen(pipeline.clone_depth)
        except CloneUrlRefused as exc:
            error = f"the clone URL is refused: {exc}"
        except (CheckoutError, PipelineError) as exc:
            error = str(exc)
        except ApiError as exc:
            if exc.status in (401, 404, 409):
                job.lose()
            else:  # 422: the server refused the pipeline (it says why) or the files
                error = exc.detail
        except Stopped:
            job.lose()
        except OSError as exc:  # the workspace or a temporary directory
            error = f"the checkout failed: {exc}"
        except CheckoutCanceled:
            pass
        finally:
            job.checkout = None
        if error is not None:
            step_log.write(f"{error}\n".encode())
        if back:
            # The pipeline, read only now, needs labels this runner lacks (the job goes
            # back to the queue with them, for a runner that has them all), or deploys
            # where it must wait (it goes back until it may go).
            step_log.write(back)
        step_log.end_attempt()
        if job.gone.is_set():
            reporter.close()
            return None
        if back or (error is None and cancel.is_set() and job.release):
            reporter.flush()
            reporter.close()
            self._release(job)
            return None
        if error is None and not cancel.is_set():
            assert pipeline is not None
            reporter.step_finished(clone, StepResult(clone.name, Outcome.SUCCESS))
            reporter.flush()
            reporter.close()
            return None if reporter.lost else pipeline
        if error is None:
            ended = StepResult(clone.name, Outcome.CANCELED)
            reason, status = "the pipeline was canceled", "canceled"
        else:
            ended = StepResult(clone.name, Outcome.ERROR, error=error)
            reason, status = f"'{clone.name}' could not run", "error"
        reporter.step_finished(clone, ended)
        for step in pipeline.steps if pipeline is not None else ():
            reporter.step_finished(step, StepResult(step.name, Outcome.SKIPPED, error=reason))
        with contextlib.suppress(Exception):
            reporter.flush()
        reporter.close()
        if not reporter.lost:
            self._finish(job, status, reporter.mask.text(error or ""))
        return None

    def _plan(self, job: Job, checkout: Checkout) -> tuple[Pipeline, bytes | None]:
        """The commit's pipeline file, checked here and sent to the server (`plan`),
        which stores it with its steps: their ids and the secrets come back, and the line
        that says why the job goes back, if it does (labels this runner lacks, or a
        deployment that must wait) (PipelineError, CheckoutError, ApiError)."""
        payload = job.payload
        path = str(payload["pipeline_path"])
        filename, data = read_pipeline(checkout, path, str(payload["commit"]), MAX_BYTES)
        pipeline = load(data, filename)  # the bytes as they are: exact positions
        answer = job.call("plan", {"pipeline": data.decode(), "filename": filename})
        payload["matrix"] = answer.get("matrix") or {}
        pipeline = _cell(pipeline, payload)  # with a matrix, this job is its first cell
        payload["steps"] = answer["steps"]
        payload["secrets"] = answer["secrets"]
        payload["secrets_error"] = answer["secrets_error"]
        if missing := list(answer["missing_labels"]):
            return pipeline, handed_back_line(missing, f"this runner ({self.config.name})")
        if held := str(answer.get("held") or ""):
            return pipeline, held_back_line(held)
        return pipeline, None

    def _executor(self, pipeline: Pipeline, workspace: Path, refused: str | None) -> Executor:
        containers = None
        if any(step.image for step in pipeline.steps):
            from runners.executors.docker import from_environment  # noqa: PLC0415

            containers = from_environment(workspace)
        local = None
        if self.config.host_steps == "allow":
            home = workspaces.home_of(workspace)
            local = LocalExecutor(workspace, env=workspaces.host_env(home), supervise=True)
        images = ImageBuilder(workspace, push_refused=refused)
        return ByImage(local, containers, images, SshExecutor())

    def _finish(self, job: Job, status: str, error: str = "") -> None:
        if job.gone.is_set():
            return
        if job.release:
            self._release(job)
            return
        try:
            job.client.call(
                f"/jobs/{job.id}/{job.attempt}/finish",
                {"status": status, "error": error},
                stop=job.gone,
            )
        except (ApiError, Stopped) as exc:
            log.warning("job %s attempt %s not finished: %s", job.id, job.attempt, exc)

    def _release(self, job: Job) -> None:
        """Hand the job back to the queue (attempt + 1), a few tries at most: a server
        out of reach gets it back when the lease expires."""
        for attempt in range(RELEASE_TRIES):
            try:
                status, answer = job.client.once(f"/jobs/{job.id}/{job.attempt}/release")
            except (OSError, http.client.HTTPException) as exc:
                status, answer = 0, {"detail": str(exc)}
            if status < 500 and status not in (0, 429):
                if status != 204:
                    log.warning("job %s not handed back: %s", job.id, answer)
                return
            time.sleep(backoff(attempt))
        log.warning("job %s not handed back (server unreachable): left to its lease", job.id)

    def _refuse(
        self, job: Job, error: str, culprits: Sequence[str], names: Sequence[str] = ()
    ) -> None:
        """End the job before any of its steps run (those in `names`, else all), each
        with the reason."""
        reporter = HttpReporter(job, [], on_lost=job.lose)
        for step in job.payload["steps"]:
            name = step["name"]
            if names and name not in names:
                continue
            fake = PipelineStep(name=name, run="", index=int(step["position"]))
            failed = name in culprits or not culprits
            status = Outcome.ERROR if failed else Outcome.SKIPPED
            why = error if failed else f"not run: {', '.join(culprits)} could not run"
            reporter.step_finished(fake, StepResult(name, status, error=why))
        reporter.flush()
        reporter.close()
        if not reporter.lost:
            self._finish(job, "error", error)

    def _abandon(self, job: Job, reporter: HttpReporter, pipeline: Pipeline, error: str) -> None:
        for step in pipeline.steps:
            if step.name not in reporter.ended:
                reporter.step_finished(step, StepResult(step.name, Outcome.ERROR, error=error))
        with contextlib.suppress(Exception):
            reporter.flush()
        reporter.close()
        if not reporter.lost:
            self._finish(job, "error", reporter.mask.text(error))
