"""`make bench` for delivering (issue #15): a Run of a ref with inputs, a deployment's
news, an SSH deploy step.

A repository on the tests' git server (git http-backend on 127.0.0.1); a web process
(daphne serving goci.asgi) and one worker process on PostgreSQL; a webhook target on a
recording HTTP server. For each of 30 runs, POST /api/projects/{slug}/run with a ref and
inputs: the clock runs from the POST to its answer (the pipeline read from the
repository at that ref, the inputs checked, the build queued), to the pipeline's first
step, and from the build's end to the signed webhook's arrival. Then an `ssh:` step
against Debian's sshd on 127.0.0.1 (as the tests start it), per step, beside what a
container step costs (~450-500 ms).

Uses the database goci_bench on BENCH_DATABASE_URL's server, like bench_server.py.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.bench_server import prepare_database, start_worker, stop, token_for  # noqa: E402
from bench.bench_webhook import free_port, start_web  # noqa: E402

RUNS = 30
PIPELINE = """\
inputs:
  version: {default: latest}
steps:
  - name: deploy
    environment: {name: production, url: 'https://app.example.com'}
    run: echo "deploying $GOCI_INPUT_VERSION"
"""


def show(what: str, values: list[float]) -> None:
    values = sorted(v * 1000 for v in values)
    p95 = values[max(0, round(0.95 * len(values)) - 1)]
    print(f"{what:<48} p50 {statistics.median(values):6.0f} ms  p95 {p95:6.0f} ms")


def run(url: str, token: str, version: str) -> tuple[float, float, int]:
    body = json.dumps({"ref": "main", "inputs": {"version": version}}).encode()
    request = urllib.request.Request(  # noqa: S310  (our own server)
        url,
        data=body,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    sent = time.time()
    with urllib.request.urlopen(request, timeout=60) as answer:  # noqa: S310
        answered = time.time()
        if answer.status != 201:
            raise SystemExit(f"bench: the run was answered {answer.status}")
        return sent, answered, int(json.load(answer)["id"])


def ssh_step_ms(tmp: Path) -> str:
    """Median cost of an `ssh:` step (connect, pinned host key, script, exit code)."""
    from builds.pipeline import load, with_secret_values
    from runners.engine import Engine
    from runners.executors import ByImage
    from runners.executors.ssh import SshExecutor
    from tests.helpers import Recorder
    from tests.sshd import sshd

    try:
        with sshd(tmp / "ssh") as host:
            text = (
                "steps:\n  - name: deploy\n    ssh:\n      host: 127.0.0.1\n"
                f"      port: {host.port}\n      user: root\n      key_secret: key\n"
                "      known_hosts_secret: hosts\n      script: echo deployed\n"
            )
            pipeline = with_secret_values(load(text), {"KEY": host.key, "HOSTS": host.known_hosts})
            times = []
            for _ in range(10):
                began = time.perf_counter()
                Engine(pipeline, ByImage(None, None, None, SshExecutor()), Recorder()).run()
                times.append((time.perf_counter() - began) * 1000)
            return f"{statistics.median(times):6.0f} ms"
    except BaseException as exc:  # noqa: BLE001  (tests.sshd skips with a reason)
        return f"not measured ({exc})"


def main() -> None:
    os.environ["GOCI_CLONE_ALLOWED_HOSTS"] = "127.0.0.1"
    from cryptography.fernet import Fernet

    os.environ["GOCI_SECRET_KEYS"] = Fernet.generate_key().decode()
    prepare_database()
    import django

    django.setup()
    from django.contrib.auth.models import User

    from builds import services
    from builds.models import FINISHED, Build, Deployment, Project, Step
    from builds.notifications import notification_target_create
    from tests.git_server import GitServer, Repo
    from tests.http_recorder import http_recorder

    Project.objects.all().delete()
    user, _ = User.objects.get_or_create(username="bench")
    project = services.project_create(user=user, slug="bench")
    token = token_for(user)

    with tempfile.TemporaryDirectory() as tmp_name, http_recorder() as hooks:
        tmp = Path(tmp_name)
        server = GitServer(tmp / "git").start()
        repo = Repo.create(server.root / "acme", "shop")
        repo.commit({".goci.yml": PIPELINE}, "the pipeline")
        services.project_update(project=project, repo_url=f"{server.base}/acme/shop.git")
        notification_target_create(
            project=project,
            name="hook",
            kind="webhook",
            url=f"{hooks.base}/goci",
            credentials={"secret": "bench-hmac-key"},
            when="always",
            deployments=True,
        )
        port = free_port()
        web = start_web(tmp, port)
        worker = start_worker(tmp, "bench-deliver")
        url = f"http://127.0.0.1:{port}/api/projects/bench/run"
        answers, to_first, news = [], [], []
        try:
            time.sleep(2)  # the worker started and listens
            for n in range(RUNS):
                heard = len(hooks.calls)
                sent, answered, build_id = run(url, token, f"v{n}")
                deadline = time.monotonic() + 60
                while Build.objects.get(pk=build_id).status not in FINISHED:
                    if time.monotonic() > deadline:
                        raise SystemExit("bench: a build did not finish in time")
                    time.sleep(0.01)
                build = Build.objects.get(pk=build_id)
                if build.status != "success":
                    raise SystemExit(f"bench: build {build.pk} ended {build.status}")
                while len(hooks.calls) < heard + 2:  # the build's and the deployment's
                    if time.monotonic() > deadline:
                        raise SystemExit("bench: the news did not arrive")
                    time.sleep(0.005)
                arrived = time.time() - (time.monotonic() - hooks.calls[heard + 1].at)
                finished: datetime | None = build.finished_at
                first: datetime | None = Step.objects.get(
                    job__build=build, name="deploy"
                ).started_at
                assert finished is not None
                assert first is not None
                answers.append(answered - sent)
                to_first.append(first.timestamp() - sent)
                news.append(arrived - finished.timestamp())
            deployed = Deployment.objects.filter(state="success").count()
        finally:
            stop(worker)
            stop(web)
            server.stop()
        ssh = ssh_step_ms(tmp)

    print(f"Run a ref with inputs, {RUNS} runs (daphne + 1 worker, PostgreSQL, git over HTTP):")
    show("  POST /run to its answer (ls-remote, fetch, queue)", answers)
    show("  POST /run to the pipeline's first step", to_first)
    show("  the build's end to the signed webhook's arrival", news)
    print(f"  deployments recorded and succeeded: {deployed} of {RUNS}")
    print(f"  an ssh: step (connect, host key, script), per step: {ssh}")
    print("  (Buildbot, the Python peer: 285 ms from submit to first step; docker run ~450 ms)")


if __name__ == "__main__":
    main()
