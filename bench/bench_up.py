"""`make bench` for the embedded default: `goci up` (SQLite, in-memory channel layer,
the worker in the web process), driven over its HTTP API as a user would (issue #10).

- submit to first step start, p50 and p95 over 100 builds of one trivial step;
  targets p50 <= 30 ms, p95 <= 60 ms (the worker is woken when the submit commits)
- submit to finished of the same builds, against Buildbot's (the issue's figures:
  232 ms to the first step plus ~150 ms a step); target <= 0.3x
- the process's resident memory idle, after those builds; target <= 100 MB

Times are the server's own (the build's created_at, its step's started_at and the
build's finished_at, from the API), so the client's polling does not count.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BUILDS = 100
BUILDBOT_SUBMIT_TO_FINISHED_MS = 232 + 150  # the Buildbot 4.3 figures, 1 step


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Client:
    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        request = urllib.request.Request(  # noqa: S310  (our own server on localhost)
            self.url + path,
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.token}"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return json.loads(response.read())


def ms(later: str, earlier: str) -> float:
    return (datetime.fromisoformat(later) - datetime.fromisoformat(earlier)).total_seconds() * 1000


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        env = {
            **{k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")},
            "GOCI_DATA_DIR": str(data),
            "GOCI_HOST_STEPS": "allow",  # the server's own cost, not a container's
            "GOCI_WORKSPACE_ROOT": str(Path(tmp) / "ws"),
        }
        port = free_port()
        out = Path(tmp) / "up.out"
        with out.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "goci.cli", "up", "--port", str(port), "--workers", "1"],
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + 120
            while "Goci is running" not in out.read_text():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"goci up did not start:\n{out.read_text()}")
                time.sleep(0.1)
            token = subprocess.run(
                [sys.executable, "-m", "goci.cli", "token", "create", "--user", "admin"],
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            api = Client(f"http://127.0.0.1:{port}/api", token)
            api.call("POST", "/projects", {"slug": "bench"})
            time.sleep(2)  # idle, as a user finds it
            first, done = [], []
            for _ in range(BUILDS):
                build = api.call(
                    "POST", "/builds", {"project": "bench", "pipeline": "steps: [{run: 'true'}]"}
                )
                while build["status"] not in ("success", "failure", "error", "canceled"):
                    time.sleep(0.05)  # a page gets its news pushed; this only waits
                    build = api.call("GET", f"/builds/{build['id']}")
                assert build["status"] == "success", build
                step = build["jobs"][0]["steps"][0]
                first.append(ms(step["started_at"], build["created_at"]))
                done.append(ms(build["finished_at"], build["created_at"]))
            time.sleep(2)
            idle_mb = rss_mb(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    first.sort()
    done.sort()
    p95 = BUILDS * 95 // 100 - 1
    print(
        f"goci up, submit to first step:   p50 {statistics.median(first):6.1f} ms  "
        f"p95 {first[p95]:6.1f} ms   targets p50 <= 30 ms, p95 <= 60 ms"
    )
    finished = statistics.median(done)
    print(
        f"goci up, 1-step build finished:  p50 {finished:6.1f} ms  p95 {done[p95]:6.1f} ms   "
        f"{finished / BUILDBOT_SUBMIT_TO_FINISHED_MS:.2f}x Buildbot's "
        f"~{BUILDBOT_SUBMIT_TO_FINISHED_MS} ms   target <= 0.3x"
    )
    print(f"goci up, resident memory idle:   {idle_mb:6.1f} MB   target <= 100 MB")


if __name__ == "__main__":
    main()
