"""`make bench` for `goci run`: per-step overhead, log throughput and peak memory.

Prints medians of several runs on this machine; targets from issue #3:
overhead <= 5 ms per step, >= 500,000 lines/s, peak RSS <= 60 MB.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNS = 7
STEPS = 20
LINES = 1_000_000
GOCI = [sys.executable, "-m", "goci.cli", "run"]
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.measure import peak_rss_mb  # noqa: E402


def timed(
    argv: list[str], cwd: Path, stdout: int | None = subprocess.DEVNULL
) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one command."""
    began = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, stdout=stdout, env={**os.environ, "NO_COLOR": "1"})
    rss = peak_rss_mb(proc)
    elapsed = time.perf_counter() - began
    if proc.returncode != 0:
        raise SystemExit(f"bench: {' '.join(argv)} exited {proc.returncode}")
    return elapsed, rss


def median_of(argv: list[str], cwd: Path) -> float:
    return statistics.median(timed(argv, cwd)[0] for _ in range(RUNS))


def write(directory: Path, name: str, steps: list[str]) -> str:
    body = "".join(f"  - name: s{i}\n    run: {cmd}\n" for i, cmd in enumerate(steps))
    (directory / name).write_text("steps:\n" + body)
    return name


def main() -> None:
    os.chdir(REPO)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        one = write(work, "one.yml", ["true"])
        many = write(work, "many.yml", ["true"] * STEPS)
        bare_loop = f"for i in $(seq {STEPS}); do sh -c true; done"

        goci_1 = median_of([*GOCI, one], work)
        goci_n = median_of([*GOCI, many], work)
        bare_1 = median_of(["sh", "-c", "sh -c true"], work)
        bare_n = median_of(["sh", "-c", bare_loop], work)
        per_step = ((goci_n - goci_1) - (bare_n - bare_1)) / (STEPS - 1) * 1000
        overall = (goci_n - bare_n) / STEPS * 1000
        print(f"goci run, {STEPS} trivial steps:      {goci_n * 1000:8.1f} ms (median of {RUNS})")
        print(f"bare sh -c, {STEPS} times:            {bare_n * 1000:8.1f} ms")
        print(f"per-step overhead (marginal):      {per_step:8.2f} ms   target <= 5 ms")
        print(f"per-step overhead (incl. startup): {overall:8.2f} ms   (Python start-up spread)")
        print(f"goci start-up (1-step pipeline):   {goci_1 * 1000:8.1f} ms")

        lines = write(work, "lines.yml", [f"seq {LINES}"])
        samples = []
        for _ in range(5):
            with (work / "out.log").open("wb") as out:
                samples.append(timed([*GOCI, lines], work, stdout=out.fileno()))
        elapsed = statistics.median(s[0] for s in samples)
        rss_mb = max(s[1] for s in samples)
        got = sum(1 for line in (work / "out.log").open("rb") if line.startswith(b"s0 | "))
        assert got == LINES, f"expected {LINES} lines in the output, found {got}"
        print(
            f"throughput, {LINES:,} lines to a file: {LINES / elapsed:10,.0f} lines/s "
            f"({elapsed:.2f} s, median of 5)   target >= 500,000"
        )
        print(f"peak RSS of goci run:              {rss_mb:8.1f} MB   target <= 60 MB")


if __name__ == "__main__":
    main()
