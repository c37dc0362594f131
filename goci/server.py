"""`goci up`: the embedded default in one process.

SQLite and the in-memory channel layer (unless DATABASE_URL / REDIS_URL say otherwise),
daphne serving the dashboard, the API and the WebSockets, and a worker running builds,
all on one asyncio loop. The worker must live in this process: with the in-memory
channel layer, log lines published by another process never reach the browser (P4).
"""

from __future__ import annotations

# daphne.server installs Twisted's asyncio reactor; it must be imported before anything
# imports twisted.internet.reactor, or daphne would run on another reactor.
import daphne.server  # isort:skip

import asyncio
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import traceback
from typing import Any, Protocol

import django
from asgiref.sync import sync_to_async
from daphne.access import AccessLogGenerator
from daphne.endpoints import build_endpoint_description_strings
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError
from twisted.internet import reactor

from builds import live
from goci.public import absolute_url

EXIT_OK, EXIT_FAILED = 0, 1
# How long past GOCI_SHUTDOWN_GRACE to wait for the worker before exiting without it.
STOP_MARGIN = 15
ADMIN = "admin"
# Addresses meaning "every interface": shown to the user as 127.0.0.1.
ANY_ADDRESS = ("0.0.0.0", "::")  # noqa: S104  (recognised here, not bound)


class InProcessWorker(Protocol):
    """runners.worker.Worker, as far as this module uses it."""

    def run(self) -> None: ...
    def stop(self) -> None: ...


def say(text: str) -> None:
    sys.stdout.write(text + "\n")


def complain(text: str) -> None:
    sys.stderr.write(f"goci: {text}\n")


class Daphne(daphne.server.Server):  # type: ignore[misc]
    """daphne's Server, keeping the reason when it cannot listen (port in use)."""

    listen_failure = ""

    def listen_error(self, failure: Any) -> None:
        # daphne only logs this and stops; we report it and exit non-zero.
        self.listen_failure = failure.getErrorMessage()
        self.stop()


class Embedded:
    """daphne and the in-process worker on the same loop, stopped together."""

    def __init__(self, server: Daphne, worker: InProcessWorker, grace: int, login: str) -> None:
        self.server = server
        self.worker = worker
        self.grace = grace
        self.login = login
        self.stopping = False
        self.exit_code = EXIT_OK
        self.task: asyncio.Task[None] | None = None  # held: the loop keeps only weak refs

    def started(self) -> None:
        """On the server's loop, once daphne listens."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.signalled, sig)
        # P5: the in-memory channel layer works only from the loop it lives on, so the
        # worker publishes log lines on this one (builds.live), and it is started from
        # here through sync_to_async rather than as a plain thread.
        live.SERVER_LOOP = loop
        self.task = asyncio.create_task(sync_to_async(self.worker.run, thread_sensitive=False)())
        self.task.add_done_callback(self.worker_done)
        host, port = self.server.listening_addresses[0]
        address = url(host, port)
        if settings.GOCI_PUBLIC_URL:  # behind a proxy: the address people open
            say(f"\nGoci is listening on {address}; people open {absolute_url('/')}")
            address = absolute_url("/")
        say(f"\nGoci is running at {address}  (Ctrl-C stops it)")
        say(f"Sign in at {address} {self.login} (operators: {address}admin/).")
        if host in ANY_ADDRESS:
            say("Listening on every interface: add this machine's name to ALLOWED_HOSTS.")
        say(host_steps_policy())

    def signalled(self, signum: int) -> None:
        if self.stopping:
            # Exiting now would orphan the steps' processes while the reaper re-queues
            # their jobs, so they could run twice; the grace bounds the wait anyway.
            say(f"Still stopping: running jobs are stopped {self.grace}s after the first signal.")
            return
        self.stopping = True
        say(f"\nStopping: running jobs get up to {self.grace}s to finish.")
        loop = asyncio.get_running_loop()
        # stop() may wait for the running jobs, whose log lines need this loop to get
        # out, so it must not block the loop.
        loop.run_in_executor(None, self.worker.stop)
        loop.call_later(self.grace + STOP_MARGIN, self.give_up)

    def worker_done(self, task: asyncio.Task[None]) -> None:
        error = None if task.cancelled() else task.exception()
        if error is not None:
            traceback.print_exception(error)
            complain("the worker failed; stopping the server")
            self.exit_code = EXIT_FAILED
        elif not self.stopping:
            # Serving without a worker would queue builds that never run.
            complain("the worker stopped on its own; stopping the server")
            self.exit_code = EXIT_FAILED
        self.server.stop()

    def give_up(self) -> None:
        complain(f"the worker did not stop within {self.grace + STOP_MARGIN}s; exiting anyway")
        sys.stdout.flush()
        # Its thread is not a daemon: a normal exit would wait for it forever.
        os._exit(EXIT_FAILED)


def host_steps_policy() -> str:
    """What happens to steps without an image here (docs/security.md), said at start."""
    if settings.GOCI_HOST_STEPS == "allow":
        return (
            "Steps without an image run on this machine with Goci's own rights "
            "(GOCI_HOST_STEPS=allow): only for a server no one else uses."
        )
    if settings.GOCI_DEFAULT_IMAGE:
        return f"Steps without an image run in {settings.GOCI_DEFAULT_IMAGE} (GOCI_DEFAULT_IMAGE)."
    return (
        "Steps without an image are refused (GOCI_HOST_STEPS=deny): give each step an "
        "image:, set GOCI_DEFAULT_IMAGE, or on your own machine GOCI_HOST_STEPS=allow."
    )


def url(host: str, port: int) -> str:
    if host in ANY_ADDRESS:
        host = "127.0.0.1"
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def prepare() -> bool:
    """Everything a start needs: the system checks, the schema, the static files. In
    child processes: the migration graph, the models' states and the storages they
    load (~70 MB) would otherwise stay in the server for as long as it runs. Their
    errors (a failed system check, an unreachable database) are on stderr; False then."""
    for command in (
        # migrate runs the system checks first: a misconfiguration (goci.E001, ...)
        # stops it with every problem, before anything runs.
        ["migrate", "--no-input", "--verbosity", "0"],
        # Plain daphne serves no static files (P11): whitenoise serves what this
        # collects, and the manifest storage needs it to render {% static %} at all.
        ["collectstatic", "--no-input", "--verbosity", "0"],
    ):
        if subprocess.run([sys.executable, "-m", "django", *command], check=False).returncode:
            return False
    return True


def ensure_admin() -> str:
    """Make sure someone can log in: ask for the first admin on a terminal, otherwise
    create `admin` with a password that is printed this once and never again. Returns
    how to log in."""
    users = get_user_model()
    if users.objects.filter(is_superuser=True).exists():
        return "with your admin account"
    if sys.stdin.isatty():
        say("No admin yet: create the first one.")
        call_command("createsuperuser", interactive=True)
        return "with the account you just created"
    if users.objects.filter(username=ADMIN).exists():
        complain(
            f"no admin exists and the name {ADMIN!r} is taken: "
            "create one with `goci user add NAME --admin`"
        )
        return "once you have created an admin"
    password = secrets.token_urlsafe(16)
    users.objects.create_superuser(ADMIN, email="", password=password)
    say(f"Created the admin user {ADMIN!r} with the password: {password}")
    say("It is shown only this once: keep it, or change it after logging in.")
    return f"as {ADMIN} with the password above"


def configure_logging() -> None:
    """The worker's events and server errors on stderr; requests are in the access log."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("daphne").setLevel(logging.WARNING)  # not its start-up chatter
    logging.getLogger("django.request").setLevel(logging.ERROR)  # 4xx: in the access log


def up(host: str, port: int, workers: int) -> int:
    """Serve Goci on host:port with an in-process worker running `workers` jobs at once.
    Returns the exit code: 0 after SIGINT/SIGTERM, 1 if it could not start or the
    worker failed."""
    if workers < 1:
        complain("--workers must be at least 1")
        return EXIT_FAILED
    # A log line written to a pipe (a service manager, a test) must not wait for a buffer.
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "goci.settings")
    try:
        django.setup()
        configure_logging()
        if settings.DATABASES["default"]["ENGINE"].endswith("sqlite3"):
            say(f"Data: {settings.GOCI_DATA_DIR}")
        from builds.secrets import key_notice  # noqa: PLC0415  (the models must be loaded)

        say(key_notice())
        if not prepare():
            complain("cannot start: the database or the static files could not be prepared")
            return EXIT_FAILED
        login = ensure_admin()
        if not settings.GOCI_PASSWORD_SIGNIN:
            login = "with a forge account (password sign-in is off)"
        # Only now: importing them sets up the ASGI app and loads the models.
        from builds.commit_status import StatusSender  # noqa: PLC0415
        from builds.notifications import NotificationSender  # noqa: PLC0415
        from builds.schedules import Scheduler  # noqa: PLC0415
        from goci.asgi import application  # noqa: PLC0415
        from runners.worker import Worker  # noqa: PLC0415

        worker = Worker(name=f"{socket.gethostname()}-up", concurrency=workers)
        sender = StatusSender()  # commit statuses back to the forges, beside the worker
        scheduler = Scheduler()  # schedules' builds; every server process races for them
        notifier = NotificationSender()  # build and deploy news, the same way
    except (ValueError, OSError, ImproperlyConfigured, CommandError, DatabaseError) as exc:
        # Settings (DEBUG=ture), the data directory, the database: say which and stop.
        complain(f"cannot start: {exc}")
        return EXIT_FAILED

    server = Daphne(
        application=application,
        endpoints=build_endpoint_description_strings(host=host, port=port),
        signal_handlers=False,  # ours (Embedded.signalled) stop the worker first
        action_logger=AccessLogGenerator(sys.stdout),
    )
    embedded = Embedded(server, worker, settings.GOCI_SHUTDOWN_GRACE, login)
    # Twisted runs "when running" calls just before the asyncio loop starts; started()
    # needs the running loop (and its errors logged by asyncio), so it is queued there.
    reactor.callWhenRunning(lambda: asyncio.get_event_loop().call_soon(embedded.started))
    sender.start()
    scheduler.start()
    notifier.start()
    server.run()
    notifier.stop()
    scheduler.stop()
    sender.stop()
    if server.listen_failure:
        # "Couldn't listen on 127.0.0.1:8000: [Errno 98] Address already in use."
        complain(f"{server.listen_failure} Choose another with --port (or --host).")
        return EXIT_FAILED
    if embedded.exit_code == EXIT_OK:
        say("Goci stopped.")
    return embedded.exit_code
