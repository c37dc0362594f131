"""`make bench` for the build server on PostgreSQL (issue #5).

- submit-to-first-step-start latency, p50 and p95 over 100 builds (one idle worker
  woken by LISTEN/NOTIFY); targets p50 <= 50 ms, p95 <= 200 ms
- builds per minute: 200 builds of 5 trivial steps with 2 worker processes
- a step printing 1,000,000 lines: lines/s persisted (target >= 100,000) and the
  worker's peak RSS (target <= 150 MB)

Uses the database goci_bench on BENCH_DATABASE_URL's server (default
postgres://postgres@127.0.0.1:5432/goci_bench), created and emptied here.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
URL = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/goci_bench")
os.environ["DATABASE_URL"] = URL
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "goci.settings")
os.environ.pop("REDIS_URL", None)
# The benchmarks time shell steps on the workers, which servers refuse by default.
os.environ["GOCI_HOST_STEPS"] = "allow"
sys.path.insert(0, str(REPO))

from bench.measure import peak_rss_mb  # noqa: E402


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


def main() -> None:
    prepare_database()
    import django

    django.setup()
    from django.contrib.auth.models import User

    from builds import services
    from builds.models import FINISHED, Build, Project, Step

    Project.objects.all().delete()
    user, _ = User.objects.get_or_create(username="bench")
    project = services.project_create(user=user, slug="bench")

    def wait_all(builds: list[Build], timeout: float) -> None:
        ids = [b.pk for b in builds]
        deadline = time.monotonic() + timeout
        while Build.objects.filter(pk__in=ids).exclude(status__in=FINISHED).exists():
            if time.monotonic() > deadline:
                raise SystemExit("bench: builds did not finish in time")
            time.sleep(0.01)

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        worker = start_worker(tmp, "bench-1")
        try:
            time.sleep(2)  # started and listening
            latencies = []
            for _ in range(100):
                build, _ = services.build_create(project=project, pipeline="steps: [{run: 'true'}]")
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

            second = start_worker(tmp, "bench-2")
            try:
                time.sleep(2)
                five = "steps:\n" + "".join(f"  - {{name: s{i}, run: 'true'}}\n" for i in range(5))
                began = time.monotonic()
                builds = [
                    services.build_create(project=project, pipeline=five)[0] for _ in range(200)
                ]
                wait_all(builds, 600)
                elapsed = time.monotonic() - began
                print(
                    f"200 builds x 5 steps, 2 workers: {200 / elapsed * 60:7.0f} builds/min "
                    f"({elapsed:.1f} s)"
                )
            finally:
                second.send_signal(signal.SIGTERM)
                second.wait()
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait()

        build, _ = services.build_create(
            project=project, pipeline="steps: [{name: loud, run: 'seq 1000000'}]"
        )
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
        print(f"worker peak RSS:             {peak:7.1f} MB   target <= 150 MB")


if __name__ == "__main__":
    main()
