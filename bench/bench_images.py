"""`make bench` for image builds (issue #14): a matrix of three services, each a
`build:` step, run by one `manage.py worker --concurrency 3` (PostgreSQL, the
database goci_bench of BENCH_DATABASE_URL), against three `docker build` commands run
by hand one after another on the same Dockerfiles:

- wall time, submit to the build's end, of the matrix build (every layer new);
- the cached rebuild of the same contexts (every layer from the cache);
- the worker's RSS before and at its peak during the builds (its image build children
  are measured apart: they hold the context's tar and the engine's stream).

Each service's Dockerfile copies its files and runs two commands, on the local
goci-test/busybox image (scripts/build-test-images): nothing is pulled.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.bench_server import prepare_database, rss_mb, stop  # noqa: E402

SERVICES = ("bot", "api", "frontend")
BASE = "goci-test/busybox:latest"


def dockerfile(name: str) -> str:
    return (
        f"FROM {BASE}\nARG VERSION\nCOPY . /srv/{name}\n"
        "RUN dd if=/dev/urandom of=/srv/blob bs=1M count=8 2>/dev/null\n"
        'RUN echo "$VERSION" > /srv/version && sleep 1\n'
    )


def pipeline(nonce: str) -> str:
    """Each cell writes its service's files (as a checkout would), then builds them."""
    return f"""
matrix:
  SERVICE: [{", ".join(SERVICES)}]
steps:
  - name: sources
    run: |
      mkdir -p "$SERVICE"
      printf '%s\\n' "the $SERVICE service {nonce}" > "$SERVICE/main.txt"
      cat > "$SERVICE/Dockerfile" <<'EOF'
{_indent(dockerfile("${SERVICE}"), 6)}
      EOF
      sed -i "s/\\${{SERVICE}}/$SERVICE/" "$SERVICE/Dockerfile"
  - name: image
    build:
      context: ${{SERVICE}}
      tags: ["bench/${{SERVICE}}:latest"]
      build_args: {{VERSION: "1"}}
"""


def _indent(text: str, spaces: int) -> str:
    return "\n".join(" " * spaces + line for line in text.splitlines())


def descendants(pid: int) -> list[int]:
    """The processes below `pid`: the image builds' forkserver and each build it forks
    (runners/executors/image_build.py), and the steps' processes."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{parent}/task").iterdir():
                children = (task / "children").read_text().split()
                todo += map(int, children)
                found += map(int, children)
    return found


def by_hand(tmp: Path, nonce: str) -> float:
    """Three `docker build` commands in sequence, on the same contexts."""
    for name in SERVICES:
        context = tmp / "by-hand" / name
        context.mkdir(parents=True, exist_ok=True)
        (context / "main.txt").write_text(f"the {name} service {nonce}\n")
        (context / "Dockerfile").write_text(dockerfile(name))
    started = time.monotonic()
    for name in SERVICES:
        subprocess.run(
            ["docker", "build", "-q", "--build-arg", "VERSION=1", "-t", f"bench-hand/{name}", "."],
            cwd=tmp / "by-hand" / name,
            check=True,
            stdout=subprocess.DEVNULL,
            env={**os.environ, "DOCKER_BUILDKIT": "0"},
        )
    return time.monotonic() - started


def main() -> None:
    if subprocess.run(
        ["docker", "image", "inspect", BASE], capture_output=True, check=False
    ).returncode:
        raise SystemExit(f"image bench skipped: {BASE} is missing (scripts/build-test-images)")
    prepare_database()
    import django

    django.setup()
    from django.contrib.auth.models import User

    from builds import services
    from builds.models import FINISHED, Project, Step

    Project.objects.filter(slug="bench-images").delete()
    user, _ = User.objects.get_or_create(username="bench-images")
    project = services.project_create(user=user, slug="bench-images")

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        env = {
            **os.environ,
            "GOCI_WORKSPACE_ROOT": str(tmp / "ws"),
            "GOCI_DATA_DIR": str(tmp),
            "GOCI_HOST_STEPS": "allow",
        }
        worker = subprocess.Popen(
            [sys.executable, "manage.py", "worker", "--name", "bench-img", "--concurrency", "3"],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        peak = [0.0, 0.0]  # the worker; the largest image build child
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.is_set():
                try:
                    peak[0] = max(peak[0], rss_mb(worker.pid))
                except OSError:
                    return
                for child in descendants(worker.pid):
                    with contextlib.suppress(OSError, ValueError):
                        # Not a fork of the worker on its way to exec (it shares the
                        # worker's pages): the builds' forkserver and its forks.
                        if b"forkserver" in Path(f"/proc/{child}/cmdline").read_bytes():
                            peak[1] = max(peak[1], rss_mb(child))
                time.sleep(0.02)

        try:
            time.sleep(3)  # the worker is up and idle
            idle = rss_mb(worker.pid)
            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()

            def matrix_build(nonce: str) -> tuple[float, float]:
                started = time.monotonic()
                build, _ = services.build_create(
                    project=project, author=user, pipeline=pipeline(nonce)
                )
                while True:
                    build.refresh_from_db()
                    if build.status in FINISHED:
                        break
                    time.sleep(0.02)
                wall = time.monotonic() - started
                if build.status != "success":
                    errors = list(
                        Step.objects.filter(job__build=build).values_list("error", flat=True)
                    )
                    raise SystemExit(f"the bench build ended {build.status}: {errors}")
                steps = Step.objects.filter(job__build=build, name="image")
                longest = max(s.duration or 0.0 for s in steps)
                return wall, longest

            # Other contents by hand than in the matrix: neither warms the other's cache.
            hand_nonce, nonce = uuid.uuid4().hex, uuid.uuid4().hex
            hand = by_hand(tmp, hand_nonce)
            cold, cold_step = matrix_build(nonce)
            # The cached rebuild, and by hand: the median of three.
            warm, warm_step = sorted(matrix_build(nonce) for _ in range(3))[1]
            hand_warm = statistics.median(by_hand(tmp, hand_nonce) for _ in range(3))
            sampling.set()
            sampler.join()
        finally:
            stop(worker)
            for name in SERVICES:
                subprocess.run(
                    ["docker", "rmi", "-f", f"bench/{name}", f"bench-hand/{name}"],
                    capture_output=True,
                    check=False,
                )
    print("image builds (issue #14): 3 services, each COPY + 8 MB RUN + RUN sleep 1")
    print(f"  3 x docker build by hand, in sequence: {hand:6.2f} s")
    print(
        f"  matrix build, submit to end:           {cold:6.2f} s  ({hand / cold:.1f}x faster; "
        f"longest image step {cold_step:.2f} s)"
    )
    print(
        f"  cached rebuild, submit to end:         {warm:6.2f} s  (longest image step "
        f"{warm_step:.2f} s; by hand, cached: {hand_warm:.2f} s)"
    )
    print(f"  worker RSS: {idle:.1f} MB idle, {peak[0]:.1f} MB peak during the builds")
    print(f"  its largest child (the builds' forkserver, a build): {peak[1]:.1f} MB peak")


if __name__ == "__main__":
    main()
