"""`make bench` for the build server on PostgreSQL (issues #5 and #10).

- submit-to-first-step-start latency, p50 and p95 over 100 builds (one idle worker
  woken by LISTEN/NOTIFY); targets p50 <= 50 ms, p95 <= 200 ms
- the server's cost of a trivial step: a step's cost on the worker (a 21-step build
  against a 1-step one, on the worker's clock) less its cost through the engine and
  the same executor alone, without the database; target <= 3 ms
- database transactions and new sessions per 5-step build (PostgreSQL's own counters,
  pg_stat_database, less the benchmark's own); targets <= 10 and none per build
- new sessions of an idle worker over 10 s; target none
- builds per minute: 200 builds of 5 trivial steps with 1, then 2 worker processes;
  target 2 workers >= 1.6x one
- a step printing 1,000,000 lines: lines/s persisted (target >= 100,000) and the
  worker's peak RSS (target <= 80 MB); an idle worker's RSS (target <= 60 MB) and the
  web process's (daphne serving goci.asgi), idle after a page and an API call

Uses the database goci_bench on BENCH_DATABASE_URL's server (default
postgres://postgres@127.0.0.1:5432/goci_bench), created and emptied here.
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
URL = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/goci_bench")
os.environ["DATABASE_URL"] = URL
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "goci.settings")
os.environ.pop("REDIS_URL", None)
# The benchmarks time shell steps on the workers, which servers refuse by default.
os.environ["GOCI_HOST_STEPS"] = "allow"
sys.path.insert(0, str(REPO))

from bench.measure import peak_rss_mb  # noqa: E402

NAME = URL.rsplit("/", 1)[1]
ADMIN_URL = URL.rsplit("/", 1)[0] + "/postgres"


def prepare_database() -> None:
    import psycopg

    name = URL.rsplit("/", 1)[1]
    try:
        with psycopg.connect(URL.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname=%s", [name]).fetchone():
                conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        raise SystemExit(
            f"server bench skipped: PostgreSQL is not reachable at {URL} ({exc})"
        ) from None
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v0"], cwd=REPO, check=True, env=os.environ
    )


def start_worker(tmp: Path, name: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "GOCI_WORKSPACE_ROOT": str(tmp / "ws"), "GOCI_DATA_DIR": str(tmp)}
    return subprocess.Popen(
        [sys.executable, "manage.py", "worker", "--name", name],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def counters() -> tuple[int, int]:
    """Transactions and sessions of the bench database so far, read from another
    database so that reading them counts nothing. PostgreSQL counts a backend's
    transactions when it goes idle for a while or exits: measure across exits."""
    import psycopg

    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        row = conn.execute(
            "SELECT xact_commit + xact_rollback, sessions FROM pg_stat_database WHERE datname = %s",
            [NAME],
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def main() -> None:
    prepare_database()
    import django

    django.setup()
    import psycopg
    from django.contrib.auth.models import User
    from django.db import connection

    from builds import services
    from builds.models import FINISHED, Build, Job, Project, Step

    Project.objects.all().delete()
    user, _ = User.objects.get_or_create(username="bench")
    project = services.project_create(user=user, slug="bench")
    five = "steps:\n" + "".join(f"  - {{name: s{i}, run: 'true'}}\n" for i in range(5))

    def wait_all(builds: list[Build], timeout: float) -> None:
        ids = [b.pk for b in builds]
        deadline = time.monotonic() + timeout
        while Build.objects.filter(pk__in=ids).exclude(status__in=FINISHED).exists():
            if time.monotonic() > deadline:
                raise SystemExit("bench: builds did not finish in time")
            time.sleep(0.01)

    def submit(pipeline: str, count: int) -> list[Build]:
        return [services.build_create(project=project, pipeline=pipeline)[0] for _ in range(count)]

    def job_ms(build: Build) -> float:
        job = Job.objects.get(build=build)
        assert job.started_at is not None
        assert job.finished_at is not None
        return (job.finished_at - job.started_at).total_seconds() * 1000

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        worker = start_worker(tmp, "bench-1")
        try:
            time.sleep(2)  # started and listening
            latencies = []
            for _ in range(100):
                (build,) = submit("steps: [{run: 'true'}]", 1)
                wait_all([build], 30)
                step = Step.objects.get(job__build=build)
                assert step.started_at is not None
                latencies.append((step.started_at - build.created_at).total_seconds() * 1000)
            latencies.sort()
            p50, p95 = statistics.median(latencies), latencies[94]
            print(
                f"submit to first step start:  p50 {p50:6.1f} ms  p95 {p95:6.1f} ms"
                "   targets p50 <= 50 ms, p95 <= 200 ms"
            )

            many = "steps:\n" + "".join(f"  - {{name: s{i}, run: 'true'}}\n" for i in range(21))
            one_ms, many_ms = [], []
            for _ in range(7):
                (small,) = submit("steps: [{run: 'true'}]", 1)
                wait_all([small], 30)
                (big,) = submit(many, 1)
                wait_all([big], 60)
                one_ms.append(job_ms(small))
                many_ms.append(job_ms(big))
            per_step = (statistics.median(many_ms) - statistics.median(one_ms)) / 20
            alone = engine_per_step_ms(tmp)
            print(
                f"a trivial step on the worker:  {per_step:5.2f} ms; through the engine alone "
                f"(same executor, no database): {alone:.2f} ms"
            )
            print(f"server cost of a trivial step: {per_step - alone:5.2f} ms   target <= 3 ms")
        finally:
            stop(worker)

        # Transactions and sessions: the builds are queued first, then one worker runs
        # them all and exits, so that PostgreSQL has counted everything it did.
        builds = submit(five, 50)
        connection.close()
        before = counters()
        worker = start_worker(tmp, "bench-count")
        polls = 0
        with psycopg.connect(URL, autocommit=True) as conn:
            ids = [b.pk for b in builds]
            while conn.execute(
                "SELECT 1 FROM builds_build WHERE id = ANY(%s) AND status NOT IN "
                "('success', 'failure', 'error', 'canceled') LIMIT 1",
                [ids],
            ).fetchone():
                polls += 1
                time.sleep(0.05)
            polls += 1
        stop(worker)
        time.sleep(0.5)
        after = counters()
        worker_xacts = after[0] - before[0] - polls
        # The worker's own sessions: its loop, job slot, heartbeat and LISTEN connection.
        sessions = after[1] - before[1] - 1
        print(
            f"transactions per 5-step build: {worker_xacts / 50 + 1:5.1f} "
            f"({worker_xacts / 50:.1f} in the worker, 1 to submit)   target <= 10"
        )
        print(
            f"new database sessions:         {sessions} for 50 builds "
            "(the worker's threads, once each)   target: none per build"
        )

        before = counters()
        worker = start_worker(tmp, "bench-idle")
        time.sleep(3)
        idle_rss = rss_mb(worker.pid)
        middle = counters()
        time.sleep(10)
        stop(worker)
        time.sleep(0.5)
        after = counters()
        print(
            f"idle worker, 10 s:             {after[1] - middle[1]} new sessions, "
            f"{after[0] - before[0]} transactions in 13 s   target: no new session per loop"
        )
        print(f"idle worker RSS:               {idle_rss:5.1f} MB   target <= 60 MB")

        rates = []
        for count in (1, 2):
            workers = [start_worker(tmp, f"bench-t{n}") for n in range(count)]
            try:
                time.sleep(2)
                began = time.monotonic()
                builds = submit(five, 200)
                wait_all(builds, 600)
                elapsed = time.monotonic() - began
            finally:
                for proc in workers:
                    stop(proc)
            rates.append(200 / elapsed * 60)
            print(
                f"200 builds x 5 steps, {count} worker{'s' if count > 1 else ' '}: "
                f"{rates[-1]:7.0f} builds/min ({elapsed:.1f} s)"
            )
        print(f"2 workers / 1 worker:          {rates[1] / rates[0]:5.2f}x   target >= 1.6x")

        (build,) = submit("steps: [{name: loud, run: 'seq 1000000'}]", 1)
        env = {**os.environ, "GOCI_WORKSPACE_ROOT": str(tmp / "ws"), "GOCI_DATA_DIR": str(tmp)}
        began = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "manage.py", "worker", "--once"],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        peak = peak_rss_mb(proc)
        step = Step.objects.get(job__build=build)
        assert step.started_at is not None
        assert step.finished_at is not None
        stored = sum(c.line_count for c in step.chunks.all())
        assert stored == 1_000_000, stored
        seconds = (step.finished_at - step.started_at).total_seconds()
        print(
            f"1,000,000 lines persisted:   {stored / seconds:9,.0f} lines/s ({seconds:.2f} s; "
            f"{time.monotonic() - began:.2f} s with worker start-up)   target >= 100,000"
        )
        print(f"worker peak RSS:             {peak:7.1f} MB   target <= 80 MB")
        print(f"web process RSS, idle:       {web_rss(env, token_for(user)):7.1f} MB")


def engine_per_step_ms(tmp: Path) -> float:
    """A trivial step's cost through the engine and the worker's executor for host
    steps (contained in a PID namespace), with a reporter that stores nothing."""
    from builds.pipeline import load
    from runners.engine import Engine
    from runners.executors import ByImage
    from runners.executors.local import LocalExecutor
    from runners.workspace import home_of, host_env

    class Nothing:
        def step_started(self, *args: object) -> None: ...
        def step_log(self, *args: object) -> None: ...
        def idle(self) -> None: ...
        def step_finished(self, *args: object) -> None: ...
        def build_finished(self, *args: object) -> None: ...

    def run(steps: int) -> float:
        text = "steps:\n" + "".join(f"  - {{name: s{i}, run: 'true'}}\n" for i in range(steps))
        workspace = tmp / "engine-alone"
        home_of(workspace).mkdir(parents=True, exist_ok=True)
        workspace.mkdir(exist_ok=True)
        local = LocalExecutor(workspace, env=host_env(home_of(workspace)), supervise=True)
        began = time.perf_counter()
        Engine(load(text, "bench.yml"), ByImage(local, None), Nothing()).run()
        return (time.perf_counter() - began) * 1000

    one = statistics.median(run(1) for _ in range(7))
    many = statistics.median(run(21) for _ in range(7))
    return (many - one) / 20


def token_for(user: Any) -> str:
    from builds import services

    return services.token_create(user=user, name="bench")[1]


def web_rss(env: dict[str, str], token: str) -> float:
    """daphne serving goci.asgi, as the web service runs, after a page and an API call."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-p", str(port), "goci.asgi:application"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def get(path: str) -> bytes:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {token}"}
            )
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                body: bytes = response.read()
                return body

        deadline = time.monotonic() + 60
        while True:
            try:
                get("/login/")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        get("/api/builds")
        time.sleep(2)
        return rss_mb(proc.pid)
    finally:
        stop(proc)


if __name__ == "__main__":
    main()
