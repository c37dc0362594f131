"""`make bench` for remote runners (issue #13), against `goci worker` on the same machine:

- submit-to-first-step latency, p50 over 20 builds of one `echo` step, submitted through
  the API of the web process (daphne serving goci.asgi, as in production): one idle
  worker (LISTEN/NOTIFY), then one idle `goci runner run` (long poll over HTTP);
  target runner p50 <= 2x the worker's
- a step printing 1,000,000 lines through the runner: lines/s stored (target >= 200,000),
  every line once; the runner's RSS idle and its peak during that step

Uses the database goci_bench on BENCH_DATABASE_URL's server (bench_server.py). The
runner runs with no DATABASE_URL, SECRET_KEY or Django settings.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.bench_server import prepare_database, rss_mb, start_worker, stop  # noqa: E402
from bench.bench_webhook import free_port, start_web  # noqa: E402
from bench.measure import peak_rss_mb  # noqa: E402

BUILDS = 20
HELLO = "steps: [{name: hello, run: 'echo hello'}]"
LOUD = "steps: [{name: loud, run: 'seq 1000000'}]"
SERVER_ONLY = ("DATABASE_URL", "SECRET_KEY", "REDIS_URL", "DJANGO_SETTINGS_MODULE")


def runner_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SERVER_ONLY}
    return {**env, "GOCI_HOST_STEPS": "allow", "GOCI_WORKSPACE_ROOT": str(tmp / "runner-ws")}


def goci_runner(tmp: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "goci.cli", "runner", *args, "--config", str(tmp / "r.toml")]


def main() -> None:
    prepare_database()
    import django

    django.setup()
    from django.contrib.auth.models import User

    from builds import services
    from builds.models import FINISHED, Build, Project, Step
    from runners import services as runner_services
    from runners.models import Runner

    Project.objects.filter(slug="bench-runner").delete()
    services_user, _ = User.objects.get_or_create(username="bench-runner")
    project = services.project_create(user=services_user, slug="bench-runner")
    token = services.token_create(user=services_user, name="bench-runner")[1]

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        port = free_port()
        web = start_web(tmp, port)
        base = f"http://127.0.0.1:{port}"

        def submit(pipeline: str) -> Build:
            body = json.dumps({"project": project.slug, "pipeline": pipeline}).encode()
            request = urllib.request.Request(  # noqa: S310  (this benchmark's own server)
                f"{base}/api/builds",
                data=body,
                method="POST",
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                answer: dict[str, Any] = json.loads(response.read())
            return Build.objects.get(pk=answer["id"])

        def wait(build: Build, timeout: float = 120) -> Build:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                build.refresh_from_db()
                if build.status in FINISHED:
                    return build
                time.sleep(0.01)
            raise SystemExit(f"bench: build {build.pk} did not finish")

        def latencies() -> list[float]:
            found = []
            for _ in range(BUILDS):
                build = wait(submit(HELLO))
                assert build.status == "success", build.status
                step = Step.objects.get(job__build=build)
                assert step.started_at is not None
                found.append((step.started_at - build.created_at).total_seconds() * 1000)
            return found

        try:
            worker = start_worker(tmp, "bench-runner-worker")
            try:
                time.sleep(2)
                by_worker = latencies()
            finally:
                stop(worker)
            Runner.objects.filter(name="bench-remote").delete()
            secret = runner_services.registration_token_create(user=None)[1]
            subprocess.run(
                goci_runner(tmp, "register", "--server", base, "--token", secret, "--name",
                            "bench-remote"),
                env=runner_env(tmp), check=True, capture_output=True,
            )  # fmt: skip
            runner = subprocess.Popen(
                goci_runner(tmp, "run"), env=runner_env(tmp), stderr=subprocess.DEVNULL
            )
            try:
                time.sleep(2)
                idle_rss = rss_mb(runner.pid)
                by_runner = latencies()
            finally:
                stop(runner)
            build = submit(LOUD)
            runner = subprocess.Popen(
                goci_runner(tmp, "run", "--once"), env=runner_env(tmp), stderr=subprocess.DEVNULL
            )
            peak = peak_rss_mb(runner)
            build = wait(build)
            step = Step.objects.get(job__build=build)
            stored = sum(chunk.line_count for chunk in step.chunks.all())
            assert stored == 1_000_000, stored
            assert step.started_at is not None
            assert step.finished_at is not None
            seconds = (step.finished_at - step.started_at).total_seconds()
            Runner.objects.filter(name="bench-remote").delete()
        finally:
            stop(web)

    worker_p50, runner_p50 = statistics.median(by_worker), statistics.median(by_runner)
    print(f"submit (API) to first step, p50 of {BUILDS} builds, daphne + PostgreSQL:")
    print(f"  goci worker (LISTEN/NOTIFY):      {worker_p50:7.0f} ms")
    print(
        f"  goci runner (HTTP long poll):     {runner_p50:7.0f} ms   "
        f"{runner_p50 / worker_p50:4.1f}x the worker's   target <= 2x"
    )
    print(
        f"1,000,000 lines through the runner: {stored / seconds:9,.0f} lines/s "
        f"({seconds:.2f} s), each stored once   target >= 200,000"
    )
    print(f"runner RSS idle:                    {idle_rss:7.1f} MB")
    print(f"runner peak RSS, 1,000,000 lines:   {peak:7.1f} MB")


if __name__ == "__main__":
    main()
