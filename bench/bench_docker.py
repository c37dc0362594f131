"""`make bench` for container steps (issue #4).

- a container step's cost in `goci run` against `docker run --rm` of the same image and
  command (20 steps, medians; target <= 1.15x)
- lines/s of a container step printing 1,000,000 lines through `goci run` into a file
  (target >= 200,000 lines/s)
- for the record: `docker exec` into a running container, the design not adopted
  (see runners/executors/docker.py for why)
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from runners.executors.docker import DockerUnavailable, connect  # noqa: E402

IMAGE = "goci-test/busybox:latest"
STEPS = 20
RUNS = 5
LINES = 1_000_000
GOCI = [sys.executable, "-m", "goci.cli", "run"]


def wall(argv: list[str], cwd: Path, stdout: int = subprocess.DEVNULL) -> float:
    began = time.perf_counter()
    subprocess.run(argv, cwd=cwd, stdout=stdout, check=True, env={**os.environ, "NO_COLOR": "1"})
    return time.perf_counter() - began


def write(directory: Path, name: str, steps: list[str]) -> str:
    body = "".join(f"  - name: s{i}\n    run: {cmd}\n" for i, cmd in enumerate(steps))
    (directory / name).write_text(f"image: {IMAGE}\nsteps:\n{body}")
    return name


def main() -> None:
    try:
        client = connect()
        client.images.get(IMAGE)
    except DockerUnavailable as exc:
        print(f"docker bench skipped: {exc}")
        return
    except Exception as exc:  # noqa: BLE001
        print(f"docker bench skipped: {IMAGE} missing ({exc}); run scripts/build-test-images")
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        one, many = write(work, "one.yml", ["true"]), write(work, "many.yml", ["true"] * STEPS)
        goci_1 = statistics.median(wall([*GOCI, one], work) for _ in range(RUNS))
        goci_n = statistics.median(wall([*GOCI, many], work) for _ in range(RUNS))
        per_step = (goci_n - goci_1) / (STEPS - 1)
        docker_run = statistics.median(
            wall(["docker", "run", "--rm", IMAGE, "true"], work) for _ in range(STEPS)
        )
        api = client.api
        api.create_network("goci-bench", driver="bridge")
        try:
            docker_run_net = statistics.median(
                wall(["docker", "run", "--rm", "--network", "goci-bench", IMAGE, "true"], work)
                for _ in range(STEPS)
            )
        finally:
            api.remove_network("goci-bench")
        box = api.create_container(
            IMAGE, ["sleep", "600"], host_config=api.create_host_config(init=True)
        )
        api.start(box)
        try:
            exec_api, exec_cli = [], []
            for _ in range(STEPS):
                began = time.perf_counter()
                exec_id = api.exec_create(box, ["sh", "-e", "-c", "true"])
                api.exec_start(exec_id)
                api.exec_inspect(exec_id)
                exec_api.append(time.perf_counter() - began)
                exec_cli.append(wall(["docker", "exec", box["Id"], "true"], work))
        finally:
            api.remove_container(box, force=True)
        print(f"container step in goci run (marginal, {STEPS} steps): {per_step * 1000:7.1f} ms")
        print(f"docker run --rm {IMAGE} true (median of {STEPS}):  {docker_run * 1000:7.1f} ms")
        print(
            f"ratio goci step / docker run --rm:               {per_step / docker_run:7.2f}x"
            "   target <= 1.15x"
        )
        print(
            f"docker run --rm on a user network, as Goci runs: {docker_run_net * 1000:7.1f} ms"
            f"   ratio {per_step / docker_run_net:.2f}x"
        )
        print(
            f"docker exec via docker-py (not adopted):         "
            f"{statistics.median(exec_api) * 1000:7.1f} ms"
        )
        print(
            f"docker exec via the CLI (not adopted):           "
            f"{statistics.median(exec_cli) * 1000:7.1f} ms"
        )
        print(f"goci run start-up with one container step:      {goci_1 * 1000:7.1f} ms")

        lines = write(work, "lines.yml", [f"seq {LINES}"])
        samples = []
        for _ in range(RUNS):
            with (work / "out.log").open("wb") as out:
                samples.append(wall([*GOCI, lines], work, stdout=out.fileno()))
        got = sum(1 for line in (work / "out.log").open("rb") if line.startswith(b"s0 | "))
        assert got == LINES, f"expected {LINES} lines, found {got}"
        elapsed = statistics.median(samples)
        print(
            f"throughput, container step, {LINES:,} lines:    {LINES / elapsed:10,.0f} lines/s"
            f" ({elapsed:.2f} s incl. start-up, median of {RUNS})   target >= 200,000"
        )
    client.close()


if __name__ == "__main__":
    main()
