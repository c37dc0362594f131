"""Two real server processes (`goci up` on two ports, one PostgreSQL database) with a
schedule due every minute: for five minutes, each due minute starts exactly one build.

This test takes about six minutes (it waits for five real minutes to pass)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import User

from builds import schedules
from builds.models import Build, Project, Schedule
from tests.helpers import REPO, make_project, make_user
from tests.queue_helpers import require_postgres, worker_env
from tests.test_up import free_port

PIPELINE = "steps:\n  - name: tick\n    run: echo tick\n"
READY_TIMEOUT = 120
MINUTES = 5
# How long after the last due minute the servers stay up: its build is queued within a
# second or two (the schedulers wake at the due time), and the next minute is far off.
AFTER_LAST = 25


class Server:
    """A `goci up` process on the test database, its output in files."""

    def __init__(self, tmp_path: Path, name: str) -> None:
        self.out = tmp_path / f"{name}.out"
        self.err = tmp_path / f"{name}.err"
        env = worker_env(tmp_path / name, GOCI_SHUTDOWN_GRACE="5")
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "goci.cli", "up", "--port", str(free_port())],
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )

    def output(self) -> str:
        return self.out.read_text() + self.err.read_text()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while "Goci is running" not in self.out.read_text():
            assert self.proc.poll() is None, f"goci up exited early:\n{self.output()}"
            assert time.monotonic() < deadline, f"goci up did not start:\n{self.output()}"
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def sleep_until(moment: datetime) -> None:
    while (left := (moment - datetime.now(UTC)).total_seconds()) > 0:
        time.sleep(min(left, 1.0))


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_servers_start_a_schedule_due_every_minute_exactly_once_a_minute(
    tmp_path: Path,
) -> None:
    require_postgres()
    # An admin exists: neither server creates one (they would race for the name).
    User.objects.create_superuser("admin", email="", password="not-used-here")  # noqa: S106
    owner = make_user("olivia")
    project: Project = make_project(owner, "shop")  # type: ignore[assignment]
    Project.objects.filter(pk=project.pk).update(pipeline=PIPELINE)
    # Disabled until both servers run, so that no minute falls due while they start.
    schedule = schedules.schedule_create(
        project=project, user=owner, cron="* * * * *", enabled=False
    )

    servers = [Server(tmp_path, "one"), Server(tmp_path, "two")]
    try:
        for server in servers:
            server.wait_ready()
        now = datetime.now(UTC)
        # The first whole minute at least 5 s away: both schedulers have looked by then.
        first = (now + timedelta(seconds=65)).replace(second=0, microsecond=0)
        Schedule.objects.filter(pk=schedule.pk).update(enabled=True, next_run_at=first)
        due = [first + timedelta(minutes=n) for n in range(MINUTES)]

        sleep_until(due[-1] + timedelta(seconds=AFTER_LAST))
        for server in servers:
            assert server.proc.poll() is None, server.output()
            server.proc.send_signal(signal.SIGTERM)
        for server in servers:
            server.stop()
        stopped = datetime.now(UTC)
    finally:
        for server in servers:
            server.stop()
    output = "\n".join(server.output() for server in servers)

    # Both were down before the next minute: the window holds exactly the due minutes.
    assert stopped < due[-1] + timedelta(minutes=1), output
    keys = list(
        Build.objects.filter(project=project, trigger=Build.Trigger.CRON)
        .order_by("pk")
        .values_list("idempotency_key", flat=True)
    )
    assert keys == [f"schedule:{schedule.pk}:{moment.isoformat()}" for moment in due], output
    schedule.refresh_from_db()
    assert schedule.next_run_at == due[-1] + timedelta(minutes=1)
    assert schedule.last_error == ""
    # Each run was started by one server: five "build #n for" lines between the two.
    assert output.count(f"schedule {schedule.pk} of shop: build #") == MINUTES, output
