"""`make bench` for container steps (issues #4 and #10).

Every figure beside its target, from one run. goci and docker runs are interleaved
(round by round) so that the noise of a shared machine falls on both alike; medians.

- an extra container step in `goci run` (marginal: (20 steps - 1 step) / 19) against
  `docker run --rm` of the same image and command (target <= 1.05x; issue #4 had 1.15x)
- a 1-step container pipeline through `goci run` against one `docker run --rm`
  (target <= 1.3x): until the result is printed, and until the process exits (it waits
  for the step's container to be removed)
- the import of docker-py, which a run with an image pays before its first step
- lines/s of a container step printing 1,000,000 lines (target >= 200,000 lines/s)
- `docker run --rm --network <user bridge>`, as Goci runs its steps (on its network
  goci-steps), in the same rounds: the part of the gap that is Docker's
- for the record: `docker exec` into a running container (the design not adopted, see
  runners/executors/docker.py)
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

from runners.docker_engine import DockerUnavailable, connect  # noqa: E402

IMAGE = "goci-test/busybox:latest"
STEPS = 20
ROUNDS = 7
LINES = 1_000_000
GOCI = [sys.executable, "-m", "goci.cli", "run"]
DOCKER_RUN = ["docker", "run", "--rm", IMAGE, "true"]
DOCKER_RUN_NET = ["docker", "run", "--rm", "--network", "goci-bench", IMAGE, "true"]
ENV = {**os.environ, "NO_COLOR": "1"}
STEP_WHY = "starting a container on a user-defined network, see the line above"
ONE_WHY = "Python, docker-py's import and the start on a user-defined network"
IMPORT = (
    "import time; t = time.perf_counter(); import requests; r = time.perf_counter(); "
    "import docker; d = time.perf_counter(); print(r - t, d - t)"
)


def wall(argv: list[str], cwd: Path, stdout: int = subprocess.DEVNULL) -> float:
    began = time.perf_counter()
    subprocess.run(argv, cwd=cwd, stdout=stdout, check=True, env=ENV)
    return time.perf_counter() - began


def result_and_exit(argv: list[str], cwd: Path) -> tuple[float, float]:
    """Seconds until `goci run` prints the pipeline's result, and until it exits."""
    began = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, env=ENV)
    assert proc.stdout is not None
    result = None
    for line in proc.stdout:
        if line.startswith(b"pipeline "):
            result = time.perf_counter() - began
    code = proc.wait()
    ended = time.perf_counter() - began
    assert code == 0, f"goci run failed ({code})"
    assert result is not None, "goci run printed no result"
    return result, ended


def write(directory: Path, name: str, steps: list[str]) -> str:
    body = "".join(f"  - name: s{i}\n    run: {cmd}\n" for i, cmd in enumerate(steps))
    (directory / name).write_text(f"image: {IMAGE}\nsteps:\n{body}")
    return name


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.1f} ms"


def verdict(ratio: float, target: float, why: str) -> str:
    if ratio <= target:
        return f"target <= {target:.2f}x: met"
    return f"target <= {target:.2f}x: MISSED by {(ratio / target - 1) * 100:.0f}% ({why})"


def spread(values: list[float]) -> str:
    return f"per-round ratios {min(values):.2f}-{max(values):.2f}x"


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
        api = client.api
        api.create_network("goci-bench", driver="bridge")
        try:
            wall([*GOCI, one], work)  # warm the page cache and Docker's image metadata
            wall(DOCKER_RUN, work)
            extra, docker_run, docker_net, results, exits = [], [], [], [], []
            step_ratios, one_ratios = [], []
            for _ in range(ROUNDS):
                runs = [wall(DOCKER_RUN, work)]
                docker_net.append(wall(DOCKER_RUN_NET, work))
                goci_n = wall([*GOCI, many], work)
                runs.append(wall(DOCKER_RUN, work))
                result, ended = result_and_exit([*GOCI, one], work)
                runs.append(wall(DOCKER_RUN, work))
                docker_net.append(wall(DOCKER_RUN_NET, work))
                per_step = (goci_n - ended) / (STEPS - 1)
                docker_round = statistics.median(runs)
                extra.append(per_step)
                docker_run.extend(runs)
                results.append(result)
                exits.append(ended)
                step_ratios.append(per_step / docker_round)
                one_ratios.append(result / docker_round)
        finally:
            api.remove_network("goci-bench")
        imports = []
        for _ in range(ROUNDS):
            done = subprocess.run(
                [sys.executable, "-c", IMPORT], capture_output=True, text=True, check=True
            )
            imports.append(tuple(float(x) for x in done.stdout.split()))

        box = api.create_container(
            IMAGE, ["sleep", "600"], host_config=api.create_host_config(init=True)
        )
        api.start(box)
        try:
            exec_api = []
            for _ in range(ROUNDS):
                began = time.perf_counter()
                exec_id = api.exec_create(box, ["sh", "-e", "-c", "true"])
                api.exec_start(exec_id)
                api.exec_inspect(exec_id)
                exec_api.append(time.perf_counter() - began)
        finally:
            api.remove_container(box, force=True)

        run_ms, net_ms = statistics.median(docker_run), statistics.median(docker_net)
        step_ms, result_ms, exit_ms = (statistics.median(v) for v in (extra, results, exits))
        print(f"docker run --rm {IMAGE} true:  {ms(run_ms)}  (median of {len(docker_run)})")
        print(
            f"the same on a user network:       {ms(net_ms)}  "
            f"(+{(net_ms - run_ms) * 1000:.0f} ms: Docker's cost of a user-defined network)"
        )
        print(
            f"extra container step in goci run: {ms(step_ms)}  "
            f"{step_ms / run_ms:5.2f}x   {verdict(step_ms / run_ms, 1.05, STEP_WHY)}; "
            f"{spread(step_ratios)}"
        )
        print(
            f"  against docker run --rm on a user network:    {step_ms / net_ms:5.2f}x"
            "   (equal footing)"
        )
        print(
            f"1-step pipeline, to its result:   {ms(result_ms)}  "
            f"{result_ms / run_ms:5.2f}x   {verdict(result_ms / run_ms, 1.3, ONE_WHY)}; "
            f"{spread(one_ratios)}"
        )
        print(
            f"1-step pipeline, to exit:         {ms(exit_ms)}  {exit_ms / run_ms:5.2f}x   "
            f"(after the result: the step's container is removed)"
        )
        print(
            f"import docker-py:                 {ms(statistics.median(d for _, d in imports))}"
            f"  of which requests + urllib3 {ms(statistics.median(r for r, _ in imports))}"
        )
        print(
            f"for the record: docker exec via docker-py (not adopted): "
            f"{ms(statistics.median(exec_api))}"
        )

        lines = write(work, "lines.yml", [f"seq {LINES}"])
        samples = []
        for _ in range(5):
            with (work / "out.log").open("wb") as out:
                samples.append(wall([*GOCI, lines], work, stdout=out.fileno()))
        got = sum(1 for line in (work / "out.log").open("rb") if line.startswith(b"s0 | "))
        assert got == LINES, f"expected {LINES} lines, found {got}"
        elapsed = statistics.median(samples)
        print(
            f"throughput, container step, {LINES:,} lines: {LINES / elapsed:10,.0f} lines/s"
            f" ({elapsed:.2f} s incl. start-up, median of 5)   target >= 200,000"
        )
    client.close()


if __name__ == "__main__":
    main()
