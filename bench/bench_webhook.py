"""`make bench` for a push's way through Goci (issue #12): delivery to first step.

A repository on the tests' git server (git http-backend on 127.0.0.1); a web process
(daphne serving goci.asgi) and one worker process on PostgreSQL. For each of 50 pushes,
a signed Gitea push delivery is posted to /hooks/{slug}; the clock runs from the POST to
the start of the step "clone" (the worker took the job) and to the start of the
pipeline's first step (the commit fetched, the pipeline read from it and planned). The
next push waits for the build to end, so that none supersedes another.

Uses the database goci_bench on BENCH_DATABASE_URL's server, like bench_server.py.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.bench_server import prepare_database, start_worker, stop  # noqa: E402

PUSHES = 50
CORPUS = REPO / "tests" / "corpus" / "webhooks" / "gitea" / "push-branch.json"
PIPELINE = "steps:\n  - {name: hello, run: 'echo hello'}\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_web(tmp: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "GOCI_DATA_DIR": str(tmp)}
    web = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "daphne",
            "-b",
            "127.0.0.1",
            "-p",
            str(port),
            "goci.asgi:application",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/login/", timeout=1)
            return web
        except OSError:
            time.sleep(0.1)
    raise SystemExit("bench: the web process did not start")


def deliver(url: str, secret: str, before: str, after: str, clone_url: str) -> float:
    payload = json.loads(CORPUS.read_text())
    commit = {"id": after, "message": "a push", "author": {"name": "Bench"}, "modified": ["n"]}
    payload.update(
        ref="refs/heads/main",
        before=before,
        after=after,
        commits=[commit],
        head_commit=commit,
        total_commits=1,
    )
    payload["repository"]["clone_url"] = clone_url
    body = json.dumps(payload).encode()
    headers = {
        "Content-Type": "application/json",
        "X-Gitea-Event": "push",
        "X-Gitea-Delivery": after,
        "X-Gitea-Signature": hmac.new(secret.encode(), body, hashlib.sha256).hexdigest(),
    }
    request = urllib.request.Request(url, data=body, headers=headers)  # noqa: S310
    sent = time.time()
    with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310
        if answer.status != 201:
            raise SystemExit(f"bench: the delivery was answered {answer.status}")
    return sent


def main() -> None:
    os.environ["GOCI_CLONE_ALLOWED_HOSTS"] = "127.0.0.1"
    # One key for this process and the web and worker processes (each has its own data
    # directory, so a key derived from its SECRET_KEY would differ).
    from cryptography.fernet import Fernet

    os.environ["GOCI_SECRET_KEYS"] = Fernet.generate_key().decode()
    prepare_database()
    import django

    django.setup()
    from django.contrib.auth.models import User

    from builds import services
    from builds.models import FINISHED, Build, Project, Step
    from builds.secrets import FORGE_TOKEN, secret_set
    from tests.git_server import GitServer, Repo

    Project.objects.all().delete()
    user, _ = User.objects.get_or_create(username="bench")
    project = services.project_create(user=user, slug="bench")

    def seconds_after(sent: float, moment: datetime | None) -> float:
        assert moment is not None
        return moment.timestamp() - sent

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        server = GitServer(tmp / "git").start()
        repo = Repo.create(server.root / "acme", "shop")
        clone_url = f"{server.base}/acme/shop.git"
        services.project_update(project=project, repo_url=clone_url)
        # Statuses go to the git server's forge API (recorded there), as in production.
        secret_set(project=project, name=FORGE_TOKEN, value="bench-forge-token", user=user)
        secret = services.webhook_secret(project)
        port = free_port()
        web = start_web(tmp, port)
        worker = start_worker(tmp, "bench-hooks")
        hook_url = f"http://127.0.0.1:{port}/hooks/bench"
        to_clone, to_first = [], []
        try:
            time.sleep(2)  # the worker started and listens
            before = repo.commit({".goci.yml": PIPELINE}, "the pipeline")
            for n in range(PUSHES):
                after = repo.commit({"n": f"{n}\n"}, f"push {n}")
                sent = deliver(hook_url, secret, before, after, clone_url)
                before = after
                deadline = time.monotonic() + 60
                while True:
                    build = Build.objects.filter(project=project, commit=after).first()
                    if build is not None and build.status in FINISHED:
                        break
                    if time.monotonic() > deadline:
                        raise SystemExit("bench: a build did not finish in time")
                    time.sleep(0.01)
                if build.status != "success":
                    raise SystemExit(f"bench: build {build.pk} ended {build.status}")
                steps = {s.name: s for s in Step.objects.filter(job__build=build)}
                to_clone.append(seconds_after(sent, steps["clone"].started_at))
                to_first.append(seconds_after(sent, steps["hello"].started_at))
        finally:
            stop(worker)
            stop(web)
            server.stop()

    def show(what: str, values: list[float]) -> None:
        values = sorted(v * 1000 for v in values)
        p95 = values[max(0, round(0.95 * len(values)) - 1)]
        print(f"{what:<44} p50 {statistics.median(values):6.0f} ms  p95 {p95:6.0f} ms")

    print(f"push delivery to first step, {PUSHES} pushes (daphne + 1 worker, PostgreSQL):")
    show("  delivery to the checkout's start (clone)", to_clone)
    show("  delivery to the pipeline's first step", to_first)
    print("  (Buildbot, the Python peer: 285 ms from submit to first step, without a checkout)")


if __name__ == "__main__":
    main()
