"""Remote runners as they will be used (issue #13): `goci runner` processes, each in a
network namespace of its own (tests/netns.py), reach a real `goci up` over HTTP on their
own link only, on PostgreSQL and the real Docker engine. Four runners share a hundred
jobs, each run exactly once; a runner cut off mid-job, one killed with SIGKILL and one
revoked each lose their job to another runner after the lease, and nothing the first
one writes late is stored; a job no runner can take says why until one that can starts.

The server's in-process worker takes only jobs without labels and reaps expired leases,
so every job here names a label that only the runners have.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
from django.contrib.auth.models import User

from builds.models import Build, Job, LogChunk, Status, Step
from runners import services as runner_services
from runners.executors.docker import LABEL_OWNER
from runners.models import Runner
from runners.workspace import home_of
from tests.conftest import TEST_IMAGE, need
from tests.helpers import make_token
from tests.netns import (
    SERVER_NAME,
    Namespace,
    Namespaces,
    netns_fixture,  # noqa: F401  (the fixture `netns`: pytest looks here)
    unavailable,
)
from tests.queue_helpers import (
    log_lines,
    make_project,
    require_postgres,
    submit,
    wait_for,
    worker_env,
)
from tests.test_runner_client import runner_env
from tests.test_up import Up, free_port

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

LEASE = 3  # GOCI_LEASE_SECONDS of the server: expiry tests wait this, plus a reap
LABEL = "netns"
JOBS = 100
# Each of the four runners takes at least this many of the hundred jobs: they start
# together on a full queue and claim at the same pace, so one that gets (nearly) none
# means claims do not spread.
LEAST_SHARE = 5
# A step that runs until a file `done` appears in its workspace (at most five minutes,
# far beyond any wait here): the test decides when an attempt ends, and one that a runner
# fails to stop is still ticking when the test looks.
TICKER = f"""
runs_on: [{LABEL}]
steps:
  - name: tick
    image: {TEST_IMAGE}
    run: |
      i=0
      while [ ! -e done ] && [ $i -lt 3000 ]; do i=$((i+1)); echo "tick $i"; sleep 0.1; done
      echo finished
"""
ACCESS = re.compile(r'^(\S+):\d+ \S+ \S+ \[[^]]*\] "[A-Z]+ (\S+)" (\d{3}) ')


class NetServer(Up):
    """`goci up` on the tests' database, listening on every address: the namespaces reach
    it at their link's host end, by the name goci-server, which GOCI_PUBLIC_URL makes an
    allowed host (the test itself calls it on 127.0.0.1, allowed by default)."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.public = f"http://{SERVER_NAME}:{self.port}"
        self.out = directory / "up.out"
        self.err = directory / "up.err"
        env = worker_env(directory, GOCI_LEASE_SECONDS=str(LEASE), GOCI_PUBLIC_URL=self.public)
        with self.out.open("wb") as out, self.err.open("wb") as err:
            # Every address: the namespaces' links are made after it starts.
            everywhere = "0.0.0.0"  # noqa: S104  (a test server on a test machine)
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "goci.cli",
                    "up",
                    "--host",
                    everywhere,
                    "--port",
                    str(self.port),
                    "--workers",
                    "1",
                ],
                cwd=directory,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )

    def requests(self) -> list[tuple[str, str, int]]:
        """(client address, path, status) of each request answered so far, in order."""
        found = (ACCESS.match(line) for line in self.out.read_text().splitlines())
        return [(m[1], m[2], int(m[3])) for m in found if m]


@pytest.fixture(scope="module")
def server(django_db_setup: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetServer]:
    problem = unavailable()
    if problem is not None:
        need(problem)
    require_postgres()
    up = NetServer(tmp_path_factory.mktemp("netns-server"))
    try:
        up.wait_ready()
        yield up
    finally:
        if up.proc.poll() is None:
            up.proc.send_signal(signal.SIGTERM)
            try:
                up.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                up.proc.kill()
        up.proc.wait()


@dataclass
class Remote:
    """A `goci runner` in its own namespace; its config, workspaces and logs under home."""

    name: str
    ns: Namespace
    home: Path
    process: subprocess.Popen[bytes] | None = None
    pids: list[int] = field(default_factory=list)  # of each start: containers carry it

    @property
    def config(self) -> Path:
        return self.home / "conf" / "runner.toml"

    @property
    def row(self) -> Runner:
        return Runner.objects.get(name=self.name)

    def goci(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "goci.cli", "runner", *args]

    def register(self, server: NetServer, labels: list[str]) -> None:
        _, secret = runner_services.registration_token_create(user=None)
        done = self.ns.run(
            self.goci(
                "register",
                "--server",
                server.public,
                "--token",
                secret,
                "--name",
                self.name,
                "--labels",
                ",".join(labels),
                "--config",
                str(self.config),
            ),
            env=runner_env(self.home),
        )
        assert done.returncode == 0, done.stderr

    def start(self) -> None:
        log = self.home / f"run-{len(self.pids) + 1}.log"
        with log.open("wb") as err:  # the child keeps its own copy
            self.process = self.ns.popen(
                self.goci("run", "--config", str(self.config)),
                env=runner_env(self.home),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        self.pids.append(self.process.pid)

    def call(self, path: str, body: object) -> int:
        """One runner API call with this runner's own token, over its own link: the
        status the server answered."""
        code = (
            "import json, sys\nfrom pathlib import Path\n"
            "from goci.runner import Client, read_config\n"
            "config = read_config(Path(sys.argv[1]))\n"
            "client = Client(config.server, config.token)\n"
            "print(client.once(sys.argv[2], json.loads(sys.argv[3]))[0])\n"
        )
        argv = [sys.executable, "-c", code, str(self.config), path, json.dumps(body)]
        done = self.ns.run(argv, env=runner_env(self.home))
        assert done.returncode == 0, done.stderr
        return int(done.stdout.strip())

    def stop(self) -> int:
        """SIGTERM (it finishes its jobs and exits); the exit code."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def output(self) -> str:
        return "".join(log.read_text() for log in sorted(self.home.glob("run-*.log")))

    def workspace(self, job: Job, attempt: int) -> Path:
        return self.home / "workspaces" / f"job{job.pk}-a{attempt}"

    def containers(self, docker: Any) -> list[Any]:
        """Goci's containers made by this runner's processes (their owner label)."""
        return [
            container
            # sparse: a full list inspects each one after listing, and raised NotFound
            # for the container the other runner's prune removed in between.
            for container in docker.containers.list(
                all=True, sparse=True, filters={"label": LABEL_OWNER}
            )
            if _owner_pid(container.attrs["Labels"][LABEL_OWNER]) in self.pids
        ]


def _owner_pid(owner: str) -> int:
    return int(owner.split(":")[1])  # runners.owner: boot id, pid, start time


@pytest.fixture
def remotes(
    transactional_db: None, netns: Namespaces, server: NetServer, tmp_path: Path
) -> Iterator[Callable[..., Remote]]:
    """remotes(name, *labels): a runner registered in a new namespace (not started)."""
    made: list[Remote] = []

    def make(name: str, *labels: str) -> Remote:
        remote = Remote(name, netns.new(), tmp_path / name)
        remote.register(server, list(labels))
        made.append(remote)
        return remote

    yield make
    for remote in made:
        if remote.process is not None and remote.process.poll() is None:
            remote.kill()
        # Shown with the test's captured output when it fails.
        sys.stderr.write(f"--- runner {remote.name} ({remote.ns.ns_ip}) ---\n{remote.output()}\n")
    try:
        client = docker.from_env()
    except docker.errors.DockerException:  # no engine: nothing of ours can be in it
        return
    try:
        for remote in made:
            for container in remote.containers(client):  # a killed runner's, if a test failed
                container.remove(force=True)
    finally:
        client.close()


def tick_job(build: Build) -> Job:
    return Job.objects.get(build=build)


def tick_step(build: Build) -> int:
    return Step.objects.get(job__build=build, name="tick").pk


def ticks(build: Build, attempt: int) -> list[str]:
    step = Step.objects.get(job__build=build, name="tick")
    return [text for _, text in log_lines(step, attempt=attempt)]


def finished(build: Build) -> bool:
    return Build.objects.get(pk=build.pk).status not in (Status.QUEUED, Status.RUNNING)


def taken_over(build: Build, by: Remote) -> Callable[[], bool]:
    """The job's attempt 2 runs on `by` (the reaper moved it on, `by` claimed it)."""

    def check() -> bool:
        job = tick_job(build)
        return job.attempt == 2 and job.status == Status.RUNNING and job.runner_id == by.row.pk

    return check


def run_to_the_end_on(build: Build, remote: Remote, attempt: int) -> None:
    """Wait for the attempt's first tick on `remote`, then let its step finish."""
    wait_for(lambda: ticks(build, attempt) != [], 30, f"{remote.name}'s first tick")
    (remote.workspace(tick_job(build), attempt) / "done").touch()
    wait_for(lambda: finished(build), 30, "the build to end")


def assert_ran_on(build: Build, remote: Remote, attempt: int) -> None:
    build.refresh_from_db()
    job = tick_job(build)
    assert (build.status, job.status, job.attempt) == (Status.SUCCESS, Status.SUCCESS, attempt)
    assert (job.runner_id, job.worker) == (remote.row.pk, remote.name)
    step = Step.objects.get(job=job, name="tick")
    assert (step.status, step.exit_code) == (Status.SUCCESS, 0)
    lines = ticks(build, attempt)
    assert lines == [f"tick {n}" for n in range(1, len(lines))] + ["finished"]


def test_four_runners_share_a_hundred_jobs_and_run_each_exactly_once(
    remotes: Callable[..., Remote], tmp_path: Path
) -> None:
    runners = [remotes(f"r{n}", LABEL) for n in range(4)]
    marks = tmp_path / "marks"
    project = make_project()
    pipeline = f"""
    runs_on: [{LABEL}]
    steps:
      - name: mark
        run: |
          echo "build $GOCI_BUILD_NUMBER"
          echo "$GOCI_BUILD_NUMBER" >> {marks}
    """
    builds = [submit(project, pipeline) for _ in range(JOBS)]
    for remote in runners:  # all at once, onto a full queue: none starts late
        remote.start()
    wait_for(
        lambda: Build.objects.filter(status__in=(Status.QUEUED, Status.RUNNING)).count() == 0,
        90,
        "every build to end",
    )

    assert Counter(Build.objects.values_list("status", flat=True)) == {Status.SUCCESS: JOBS}
    assert Counter(Job.objects.values_list("status", "attempt")) == {(Status.SUCCESS, 1): JOBS}
    numbers = sorted(build.number for build in builds)
    assert sorted(int(n) for n in marks.read_text().split()) == numbers  # each ran once
    chunks = LogChunk.objects.values_list(
        "step__job__build__number", "attempt", "first_line", "line_count", "text"
    )
    assert sorted(chunks) == [(n, 1, 1, 1, f"build {n}") for n in numbers]  # stored once
    steps = Step.objects.values_list("status", "exit_code")
    assert Counter(steps) == {(Status.SUCCESS, 0): JOBS}
    shares = Counter(Job.objects.values_list("runner__name", flat=True))
    assert set(shares) == {r.name for r in runners}, shares
    assert min(shares.values()) >= LEAST_SHARE, shares
    assert [r.stop() for r in runners] == [0, 0, 0, 0]


def test_a_runner_cut_off_mid_job_loses_it_and_every_late_write_is_refused(
    remotes: Callable[..., Remote], server: NetServer, docker_client: Any
) -> None:
    a, b = remotes("a", LABEL, "only-a"), remotes("b", LABEL)
    project = make_project()
    build = submit(project, TICKER)
    a.start()
    wait_for(lambda: len(ticks(build, 1)) >= 3, 30, "a's first ticks")
    job = tick_job(build)
    assert job.runner_id == a.row.pk

    a.ns.down()
    b.start()
    # Cut off for a whole lease, a stops its attempt (its container goes) rather than
    # run it beside the next one: the server hands the job on at the same moment.
    wait_for(lambda: not a.containers(docker_client), LEASE + 20, "a to stop its cut-off job")
    assert "could not be renewed" in a.output()
    wait_for(taken_over(build, b), LEASE + 20, "the lease to expire and b to take attempt 2")
    answered = len(server.requests())
    stored = ticks(build, 1)  # a's lines up to the partition, never more from now on
    wait_for(lambda: ticks(build, 2) != [], 30, "b's first tick")

    a.ns.up()
    # What a kept of attempt 1 (lines printed while cut off) it never sends; a write
    # for that attempt with a's own token, over a's link, is refused.
    late = a.call(f"/jobs/{job.pk}/1/report", {"chunks": [[tick_step(build), 999, ["late"]]]})
    assert late == 409
    run_to_the_end_on(build, b, 2)

    assert_ran_on(build, b, 2)
    assert ticks(build, 1) == stored
    calls = [
        status
        for client, path, status in server.requests()[answered:]
        if client == a.ns.ns_ip and path.startswith(f"/api/runner/v1/jobs/{job.pk}/1/")
    ]
    assert 409 in calls, calls  # a's late calls reached the server...
    assert set(calls) == {409}, calls  # ... and every one was refused
    # Its cleanup follows the refusal (a CI run looked a moment before it was done).
    lost = a.home / "workspaces" / f"job{job.pk}-a1"
    wait_for(lambda: not lost.exists(), 30, "a to remove its lost job's workspace")

    # a goes on taking jobs: one only it can run.
    again = submit(project, "runs_on: [only-a]\nsteps: [{name: again, run: echo again}]")
    wait_for(lambda: finished(again), 30, "a's next build")
    again.refresh_from_db()
    assert again.status == Status.SUCCESS
    assert Job.objects.get(build=again).runner_id == a.row.pk
    assert (a.stop(), b.stop()) == (0, 0)


def test_a_runner_killed_mid_job_hands_it_on_after_the_lease_and_leaves_what_its_restart_cleans(
    remotes: Callable[..., Remote], docker_client: Any
) -> None:
    a, b = remotes("a", LABEL), remotes("b", LABEL)
    build = submit(make_project(), TICKER)
    a.start()
    wait_for(lambda: len(ticks(build, 1)) >= 2, 30, "a's first ticks")
    workspace = a.workspace(tick_job(build), 1)

    a.kill()
    # What a SIGKILL leaves: the step's container, still running, and the workspace.
    assert [c.status for c in a.containers(docker_client)] == ["running"]
    assert workspace.is_dir()
    assert home_of(workspace).is_dir()

    b.start()
    wait_for(taken_over(build, b), LEASE + 20, "the lease to expire and b to take attempt 2")
    run_to_the_end_on(build, b, 2)

    assert_ran_on(build, b, 2)
    # b's container step pruned the container of a's dead process (runners.owner)...
    wait_for(lambda: not a.containers(docker_client), 10, "a's orphaned container to go")
    # ... but a's workspace is under a's own root: only a's next start removes it.
    assert workspace.is_dir()
    a.start()
    wait_for(lambda: not workspace.exists(), 30, "the restarted runner to clean up")
    assert not home_of(workspace).exists()
    assert (a.stop(), b.stop()) == (0, 0)


def test_a_runner_revoked_mid_job_stops_it_and_exits_and_the_job_runs_elsewhere(
    remotes: Callable[..., Remote], server: NetServer, docker_client: Any
) -> None:
    a, b = remotes("a", LABEL), remotes("b", LABEL)
    build = submit(make_project(), TICKER)
    a.start()
    wait_for(lambda: len(ticks(build, 1)) >= 2, 30, "a's first ticks")
    answered = len(server.requests())

    runner_services.runner_revoke(runner=a.row)
    assert a.process is not None
    code = a.process.wait(timeout=30)

    assert code == 1
    assert "the server refused this runner" in a.output()
    assert "revoked" in a.output()
    assert not a.containers(docker_client)  # its job stopped before it exited
    calls = [status for client, _, status in server.requests()[answered:] if client == a.ns.ns_ip]
    assert 401 in calls, calls
    assert set(calls[calls.index(401) :]) == {401}, calls  # from the first 401 on, all are
    stored = ticks(build, 1)

    b.start()
    wait_for(taken_over(build, b), LEASE + 20, "the lease to expire and b to take attempt 2")
    run_to_the_end_on(build, b, 2)

    assert_ran_on(build, b, 2)
    assert ticks(build, 1) == stored
    assert b.stop() == 0


def test_a_job_no_runner_can_take_says_why_until_one_with_its_label_starts(
    remotes: Callable[..., Remote], server: NetServer
) -> None:
    project = make_project()
    token = make_token(User.objects.get(username="ann"))
    build = submit(project, "runs_on: [gpu]\nsteps: [{name: train, run: echo trained}]")

    def shown() -> dict[str, Any]:
        status, _, body = server.get(f"/api/builds/{build.pk}", token)
        assert status == 200
        answer: dict[str, Any] = json.loads(body)
        return answer

    assert shown()["queue_reason"] == "waiting for a runner with labels [gpu]: none is online"
    gpu = remotes("gpu", "gpu", "linux")  # registered: online from now on
    assert shown()["queue_reason"] == "position 1 of 1 in the queue"

    gpu.start()
    wait_for(lambda: finished(build), 30, "the build to run")
    assert (shown()["status"], shown()["queue_reason"]) == ("success", None)
    assert Job.objects.get(build=build).runner_id == gpu.row.pk
    assert log_lines(Step.objects.get(job__build=build)) == [(1, "trained")]
    assert gpu.stop() == 0
