"""`make bench` for `goci run`: per-step overhead, log throughput, peak memory and
start-up time.

Prints medians of several runs on this machine; targets from issue #3:
overhead <= 5 ms per step, >= 500,000 lines/s, peak RSS <= 60 MB; from issue #10:
a 1-step `goci run` in <= 60 ms and <= 0.8x pypyr's start-up.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

RUNS = 7
STEPS = 20
LINES = 1_000_000
GOCI = [sys.executable, "-m", "goci.cli", "run"]
STARTUP_RUNS = 21
IMPORT_RUNS = 7
# pypyr's start-up as issue #10 measured it, shown when pypyr is not installed here.
PYPYR_ISSUE_MS = 85.0
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


def cached_bytecode_env(work: Path) -> dict[str, str]:
    """An environment that keeps compiled bytecode (in work/, not in the checkout), as an
    installed goci has: with PYTHONDONTWRITEBYTECODE every start would also compile
    goci's own modules, which `python -c pass` never does."""
    env = {**os.environ, "NO_COLOR": "1", "PYTHONPYCACHEPREFIX": str(work / "pycache")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def wall_ms(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    began = time.perf_counter()
    subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, check=True)
    return (time.perf_counter() - began) * 1000


def import_times(argv: list[str], cwd: Path, env: dict[str, str]) -> dict[str, float]:
    """Top-level module -> cumulative import ms, from one `python -X importtime` run."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *argv],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=True,
    )
    times: dict[str, float] = {}
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line.split("|")
        if not name.startswith("  "):  # nested imports are indented below their importer
            times[name.strip()] = times.get(name.strip(), 0) + int(cumulative) / 1000
    return times


def install_pypyr() -> str | None:
    """pypyr in a virtualenv of its own under var/ (made once; never a dependency of
    Goci's), or None where PyPI cannot be reached."""
    venv = REPO / "var" / "bench" / "pypyr"
    pypyr = venv / "bin" / "pypyr"
    if not pypyr.exists():
        print("installing pypyr into var/bench/pypyr to compare start-up ...", flush=True)
        try:
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
            subprocess.run(
                [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "pypyr"],
                check=True,
                timeout=300,
            )
        except (subprocess.SubprocessError, OSError) as exc:
            print(f"  pypyr could not be installed ({exc})")
            return None
    return str(pypyr)


def startup(work: Path) -> None:
    """Start-up of a 1-step `goci run`, interleaved with `python -c pass` (and pypyr, if
    installed) so that a busy machine slows them alike."""
    env = cached_bytecode_env(work)
    one = write(work, "one.yml", ["true"])
    (work / "pypyr-one.yaml").write_text(
        "steps:\n  - name: pypyr.steps.cmd\n    in:\n      cmd: 'true'\n"
    )
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "goci run (python -m goci.cli)": [*GOCI, one],
    }
    script = Path(sys.executable).with_name("goci")
    if script.exists():
        commands["goci run (console script)"] = [str(script), "run", one]
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    pypyr = shutil.which("pypyr", path=search) or install_pypyr()
    if pypyr is not None:
        commands["pypyr, 1 cmd step"] = [pypyr, "pypyr-one"]
    samples: dict[str, list[float]] = defaultdict(list)
    for argv in commands.values():
        wall_ms(argv, work, env)  # writes the bytecode caches
    for _ in range(STARTUP_RUNS):
        for label, argv in commands.items():
            samples[label].append(wall_ms(argv, work, env))
    median = {label: statistics.median(times) for label, times in samples.items()}
    goci_ms = median["goci run (python -m goci.cli)"]
    print(f"start-up, medians of {STARTUP_RUNS} interleaved runs (bytecode cached):")
    for label, ms in median.items():
        target = "   target <= 60 ms" if label.startswith("goci run") else ""
        print(f"  {label + ':':33s}{ms:8.1f} ms{target}")
    if pypyr is None:
        print(
            f"  {'pypyr (issue #10, not measured):':33s}{PYPYR_ISSUE_MS:8.1f} ms   "
            f"(pip install pypyr to measure it here)"
        )
    pypyr_ms = median.get("pypyr, 1 cmd step", PYPYR_ISSUE_MS)
    print(
        f"  {'goci run / pypyr:':33s}{goci_ms / pypyr_ms:8.2f} x    target <= 0.8 x "
        f"({0.8 * pypyr_ms:.0f} ms)"
    )

    runs = [import_times(["-m", "goci.cli", "run", one], work, env) for _ in range(IMPORT_RUNS)]
    bare = [import_times(["-c", "pass"], work, env) for _ in range(IMPORT_RUNS)]
    total = statistics.median(sum(times.values()) for times in runs)
    bare_total = statistics.median(sum(times.values()) for times in bare)
    print(
        f"import time of goci run:           {total:8.1f} ms   (python -X importtime, sum of "
        f"top-level modules, median of {IMPORT_RUNS}; python -c pass: {bare_total:.1f} ms)"
    )
    names = {name for times in runs for name in times}
    biggest = sorted(
        ((statistics.median(times.get(name, 0) for times in runs), name) for name in names),
        reverse=True,
    )
    for ms, name in biggest[:5]:
        print(f"  {name + ':':33s}{ms:8.1f} ms")


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

        startup(work)


if __name__ == "__main__":
    main()
