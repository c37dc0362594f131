"""`python manage.py worker`: run builds from the queue (also `goci worker`)."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

from django.core.checks import Tags
from django.core.management.base import BaseCommand, CommandParser

from builds.commit_status import StatusSender
from builds.notifications import NotificationSender
from builds.pipeline import parse_labels
from builds.schedules import Scheduler
from goci import checks
from runners.worker import Worker, persistent_connections


class Command(BaseCommand):
    help = "Claim queued builds and run them; SIGTERM stops claiming and drains gracefully."
    # The models' checks and Goci's own, not all: the URL checks would import the web
    # side (views, the API, pydantic; ~10 MB) into every worker. The web process and
    # migrate run them all.
    requires_system_checks = [Tags.models, checks.TAG]

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--concurrency", type=int, default=1, help="jobs to run at once (default 1)"
        )
        parser.add_argument("--name", help="this worker's name (default: host-pid)")
        parser.add_argument(
            "--labels",
            default="",
            help="its labels, a,b: it takes the jobs whose `runs_on` labels it all has "
            "(default none: only jobs that need no label)",
        )
        parser.add_argument(
            "--once", action="store_true", help="run at most one queued job, then exit"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["concurrency"] < 1:
            self.stderr.write("--concurrency must be at least 1")
            raise SystemExit(2)
        try:
            labels = parse_labels(options["labels"] or "")
        except ValueError as exc:
            self.stderr.write(f"--labels: {exc}")
            raise SystemExit(2) from None
        persistent_connections()
        worker = Worker(name=options["name"], concurrency=options["concurrency"], labels=labels)
        if options["once"]:
            try:
                found = worker.run_one_job()
            finally:
                worker.close()
            self.stdout.write("ran one job" if found else "no job was queued")
            return

        def stopping(signum: int) -> None:
            self.stdout.write(f"worker {worker.name}: stopping (signal {signum})")
            worker.stop()

        def stop(signum: int, frame: FrameType | None) -> None:
            # On another thread: this handler runs on the main thread, which may be
            # inside an Event.wait() holding that event's lock; stop()'s Event.set()
            # would wait for it forever (four workers of a CI run hung so).
            threading.Thread(target=stopping, args=(signum,), name="goci-stop").start()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        with_labels = f" with labels [{', '.join(labels)}]" if labels else ""
        self.stdout.write(
            f"worker {worker.name}{with_labels}: running up to {worker.concurrency} job(s) at once"
        )
        # Commit statuses go back to the forges from here, beside the builds but never
        # in their way (builds/commit_status.py). Not with --once: the next worker
        # sends what this one queued.
        sender = StatusSender()
        sender.start()
        notifier = NotificationSender()  # build and deploy news, the same way
        notifier.start()
        # Schedules start their builds from every server process and every worker (a
        # deployment with daphne and workers has no `goci up`); each due run starts
        # once whichever claims it (builds/schedules.py).
        scheduler = Scheduler()
        scheduler.start()
        try:
            worker.run()
        finally:
            scheduler.stop()
            notifier.stop()
            sender.stop()
        self.stdout.write(f"worker {worker.name}: stopped")
