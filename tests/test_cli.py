"""The `goci` command as a user runs it: output, options and exit codes."""

from __future__ import annotations

import argparse
import json
import os
import platform
import pty
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import django
import pytest

from goci.cli import build_parser
from tests.helpers import REPO, goci, peak_rss_mb, processes_matching, write_pipeline

SMALLEST = """\
steps:
  - name: Install
    run: echo installing
  - name: Test
    run: echo testing
  - name: Build
    run: echo building
"""

PARALLEL = """\
steps:
  - name: Install
    run: echo deps
  - name: Test Backend
    run: sleep 0.3; echo backend ok
    parallel: true
  - name: Test Frontend
    run: echo frontend ok
    parallel: true
  - name: Package
    run: echo packaged
"""


def test_run_prefixes_every_line_with_its_step_and_ends_with_a_summary(tmp_path: Path) -> None:
    write_pipeline(tmp_path, SMALLEST)
    done = goci("run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    assert "Install | installing" in out
    assert "Test    | testing" in out
    assert any(line.startswith("Install ▶ started: echo installing") for line in out)
    assert any(line.startswith("Test    ✔ success exit 0 in ") for line in out)
    table = out[out.index(next(line for line in out if line.startswith("STEP"))) :]
    assert table[0].split() == ["STEP", "STATUS", "EXIT", "DURATION"]
    assert table[1].split()[:3] == ["Install", "success", "0"]
    assert table[-1].startswith("pipeline ✔ success in ")
    assert "(3 success)" in table[-1]
    assert "\x1b[" not in done.stdout  # not a terminal: no colour


def test_the_parallel_example_runs_the_group_together(tmp_path: Path) -> None:
    write_pipeline(tmp_path, PARALLEL, "ci.yml")
    done = goci("run", "ci.yml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    # Frontend finishes while Backend still sleeps: the group ran at the same time.
    assert out.index("Test Frontend | frontend ok") < out.index("Test Backend  | backend ok")
    assert out.index("Test Backend  ✔ success") < out.index("Package       ▶ started")


def test_a_failing_step_exits_1_and_skips_the_rest(tmp_path: Path) -> None:
    write_pipeline(tmp_path, SMALLEST.replace("echo testing", "echo no >&2; exit 7"))
    done = goci("run", cwd=tmp_path)
    assert done.returncode == 1
    assert "Test    ✘ failure exit 7" in done.stdout
    assert "Build   ○ skipped ('Test' failed)" in done.stdout
    assert "pipeline ✘ failure" in done.stdout


def test_a_timeout_exits_1_with_the_message(tmp_path: Path) -> None:
    write_pipeline(tmp_path, "steps: [{name: Slow, run: sleep 30, timeout: 1s}]")
    done = goci("run", cwd=tmp_path)
    assert done.returncode == 1
    assert "Slow ✘ failure exit 143 in" in done.stdout
    assert "(timed out after 1s)" in done.stdout


def test_allowed_failures_exit_0(tmp_path: Path) -> None:
    write_pipeline(tmp_path, "steps: [{run: exit 1, allow_failure: true}]")
    done = goci("run", cwd=tmp_path)
    assert done.returncode == 0
    assert "(failure allowed)" in done.stdout


def test_an_invalid_pipeline_exits_2_with_every_problem_and_runs_nothing(tmp_path: Path) -> None:
    write_pipeline(
        tmp_path,
        """\
        steps:
          - name: Build
            run: touch ran
            neds: [Test]
          - name: Build
            run: echo
            timeout: 90
        """.replace("        ", ""),
    )
    done = goci("run", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    err = done.stderr
    assert ".goci.yml:4:5: steps[0]: unknown key 'neds' (did you mean 'needs'?)" in err
    assert ".goci.yml:5:11: steps[1].name: duplicate step name 'Build'" in err
    assert ".goci.yml:7:14: steps[1].timeout:" in err
    assert "goci: 3 problems in .goci.yml" in err
    assert not (tmp_path / "ran").exists()


def test_a_missing_pipeline_file_exits_2_naming_both_default_names(tmp_path: Path) -> None:
    done = goci("run", cwd=tmp_path)
    assert done.returncode == 2
    assert f"goci: no pipeline file (.goci.yml or .goci.yaml) in {tmp_path}" in done.stderr
    assert "pass a file: goci run path/to/pipeline.yml" in done.stderr
    done = goci("validate", cwd=tmp_path)
    assert done.returncode == 2
    assert "pass a file: goci validate path/to/pipeline.yml" in done.stderr


def test_run_and_validate_find_a_goci_yaml(tmp_path: Path) -> None:
    write_pipeline(tmp_path, "steps: [{name: Only, run: echo from yaml}]", ".goci.yaml")
    done = goci("run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Only | from yaml" in done.stdout
    assert done.stderr == ""
    done = goci("validate", cwd=tmp_path)
    assert (done.returncode, done.stdout) == (0, ".goci.yaml: valid, 1 step\n")


def test_with_both_default_files_goci_yml_is_used_and_named(tmp_path: Path) -> None:
    write_pipeline(tmp_path, "steps: [{name: Yml, run: echo from yml}]", ".goci.yml")
    write_pipeline(tmp_path, "steps: [{name: Yaml, run: echo from yaml}]", ".goci.yaml")
    done = goci("run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Yml | from yml" in done.stdout
    assert "from yaml" not in done.stdout
    assert "goci: both .goci.yml and .goci.yaml exist here; using .goci.yml" in done.stderr


def test_an_invalid_goci_yaml_is_reported_under_its_own_name(tmp_path: Path) -> None:
    write_pipeline(tmp_path, "steps: [{rnu: x}]", ".goci.yaml")
    done = goci("validate", cwd=tmp_path)
    assert done.returncode == 2
    assert ".goci.yaml:1:10: steps[0]: unknown key 'rnu'" in done.stderr
    assert "goci: 2 problems in .goci.yaml" in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--env", "NOEQUALS"], "--env 'NOEQUALS': expected NAME=VALUE"),
        (["--env", "1BAD=x"], "--env '1BAD=x': expected NAME=VALUE"),
        (["--jobs", "0"], "argument --jobs: '0' is not a whole number of at least 1"),
        (["--event", "merge"], "argument --event: invalid choice: 'merge'"),
        (["--log-cap", "lots"], "argument --log-cap: 'lots' is not a size"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_command_lines_exit_2_and_run_nothing(
    tmp_path: Path, args: list[str], message: str
) -> None:
    write_pipeline(tmp_path, "steps: [{run: touch ran}]")
    done = goci("run", *args, cwd=tmp_path)
    assert done.returncode == 2
    assert message in done.stderr
    assert not (tmp_path / "ran").exists()


def test_env_branch_and_event_options_reach_the_steps(tmp_path: Path) -> None:
    write_pipeline(
        tmp_path,
        """\
steps:
  - {name: Show, run: 'echo "$A $B"'}
  - {name: Deploy, run: echo deploying, when: {branch: main, event: push}}
""",
    )
    done = goci(
        "run", "--env", "A=1", "--env", "B=x=y", "--branch", "main", "--event", "push",
        cwd=tmp_path,
    )  # fmt: skip
    assert "Show   | 1 x=y" in done.stdout
    assert "Deploy | deploying" in done.stdout
    done = goci("run", "--branch", "dev", "--event", "push", cwd=tmp_path)
    assert "Deploy ○ skipped (when: does not match branch dev, event push)" in done.stdout
    assert done.returncode == 0


def test_timestamps_prefix_each_line_with_the_time(tmp_path: Path) -> None:
    write_pipeline(tmp_path, "steps: [{name: T, run: echo hi}]")
    done = goci("run", "--timestamps", cwd=tmp_path)
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("T | "))
    prefix, bar, stamp, text = line.split(" ")
    assert (prefix, bar) == ("T", "|")
    assert len(stamp) == len("12:34:56.789")
    assert stamp[2] == stamp[5] == ":"
    assert text == "hi"


def test_the_branch_defaults_to_the_checked_out_git_branch(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q", "-b", "trunk", str(tmp_path)], check=True)
    write_pipeline(tmp_path, "steps: [{run: echo yes, when: {branch: trunk}}]")
    done = goci("run", cwd=tmp_path)
    assert "step 1 | yes" in done.stdout


def run_in_terminal(tmp_path: Path, env: dict[str, str]) -> str:
    """Run `goci run` with its stdout on a pseudo-terminal and return what it showed."""
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "goci.cli", "run"],
        cwd=tmp_path,
        stdout=secondary,
        stderr=secondary,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
    )
    os.close(secondary)
    chunks = []
    while True:
        try:
            data = os.read(primary, 65536)
        except OSError:  # EIO: the terminal closed
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=30)
    os.close(primary)
    return b"".join(chunks).decode()


def test_colour_on_a_terminal_unless_no_color_is_set(tmp_path: Path) -> None:
    write_pipeline(tmp_path, SMALLEST)
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    coloured = run_in_terminal(tmp_path, {**env, "NO_COLOR": ""})
    assert "\x1b[36mInstall\x1b[0m | installing" in coloured
    assert "\x1b[32m✔ success\x1b[0m" in coloured
    plain = run_in_terminal(tmp_path, {"NO_COLOR": "1"})
    assert "\x1b[" not in plain
    assert "Install | installing" in plain


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupting_stops_every_step_within_2_seconds(
    tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    marker = f"98765{code}"
    write_pipeline(
        tmp_path,
        f"""\
steps:
  - {{name: A, run: "sleep {marker}", parallel: true}}
  - {{name: B, run: "trap '' TERM INT; sleep {marker}", parallel: true}}
  - {{name: C, run: "touch ran"}}
""",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "goci.cli", "run"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    deadline = time.monotonic() + 10
    while len(processes_matching(f"sleep {marker}")) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    began = time.monotonic()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=10)
    assert time.monotonic() - began < 2
    assert proc.returncode == code
    assert "goci: interrupted; every step was stopped" in err
    assert "A ■ canceled" in out
    assert "B ■ canceled" in out
    assert "C ○ skipped ('A' was canceled)" in out
    assert processes_matching(f"sleep {marker}") == []
    assert not (tmp_path / "ran").exists()


def test_validate_prints_ok_or_every_problem(tmp_path: Path) -> None:
    write_pipeline(tmp_path, SMALLEST)
    done = goci("validate", cwd=tmp_path)
    assert (done.returncode, done.stdout) == (0, ".goci.yml: valid, 3 steps\n")
    bad = write_pipeline(tmp_path, "steps:\n  - run: [a]\n  - nmae: x\n", "bad.yml")
    done = goci("validate", str(bad), cwd=tmp_path)
    assert done.returncode == 2
    assert f"{bad}:2:10: steps[0].run: expected a string, found a list" in done.stderr
    assert f"{bad}:3:5: steps[1]: unknown key 'nmae' (did you mean 'name'?)" in done.stderr


def test_schema_prints_a_json_schema(tmp_path: Path) -> None:
    done = goci("schema", cwd=tmp_path)
    schema = json.loads(done.stdout)
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert "steps" in schema["properties"]


def project_version() -> str:
    with (REPO / "pyproject.toml").open("rb") as f:
        return str(tomllib.load(f)["project"]["version"])


def test_version_flag_prints_the_project_version(tmp_path: Path) -> None:
    done = goci("--version", cwd=tmp_path)
    assert (done.returncode, done.stdout) == (0, f"goci {project_version()}\n")


def test_version_command_adds_python_and_django(tmp_path: Path) -> None:
    done = goci("version", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"goci {project_version()}",
        f"Python {platform.python_version()}",
        f"Django {django.get_version()}",
    ]


def test_up_help_explains_every_flag_and_the_settings_that_matter(tmp_path: Path) -> None:
    done = goci("up", "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())  # argparse wraps lines where it likes
    for flag in ("--host HOST the address to listen on", "--port PORT", "--workers N"):
        assert flag in text
    assert "SQLite database" in text
    assert "a worker that runs the queued builds" in text
    assert "creates the user `admin` and prints its password once" in text
    for name in ("GOCI_DATA_DIR", "GOCI_HOST_STEPS", "DATABASE_URL", "REDIS_URL"):
        assert f"\n  {name}" in done.stdout
    assert "GOCI_PUBLIC_URL the address people open" in text


def test_every_command_and_option_has_help() -> None:
    missing = []

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for command in action._choices_actions:
                    if not command.help:
                        missing.append(f"{path} {command.dest}")
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}")
            elif not action.help:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")

    walk(build_parser(), "goci")
    assert missing == []


def test_the_goci_console_command_is_installed() -> None:
    command = Path(sys.executable).parent / "goci"
    if not command.exists() and os.environ.get("CI") != "true":
        pytest.skip("goci is not installed in this environment (run `make test`)")
    done = subprocess.run([command, "--help"], capture_output=True, text=True, check=True)
    assert "run" in done.stdout
    assert "validate" in done.stdout


@pytest.mark.slow
def test_a_step_printing_1_gib_is_truncated_at_the_cap_in_flat_memory(tmp_path: Path) -> None:
    write_pipeline(
        tmp_path,
        """\
steps:
  - name: Loud
    run: |
      yes 'a line of about one hundred bytes, printed over and over until a GiB has gone by.' \\
        | head -c 1073741824
      echo finished > done
""",
    )
    with (tmp_path / "out.log").open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "goci.cli", "run"],
            cwd=tmp_path,
            stdout=out,
            env={**os.environ, "PYTHONPATH": str(REPO), "NO_COLOR": "1"},
        )
        peak_mb = peak_rss_mb(proc)
    assert proc.returncode == 0
    assert (tmp_path / "done").read_text() == "finished\n"  # the step ran to its end
    assert peak_mb < 80, f"goci run peaked at {peak_mb:.0f} MB"
    size = (tmp_path / "out.log").stat().st_size
    assert 100 << 20 < size < 130 << 20  # the 100 MiB cap plus the prefixes
    with (tmp_path / "out.log").open("rb") as log:
        log.seek(-4096, os.SEEK_END)
        tail = log.read().decode()
    assert tail.count("log truncated") == 1
    assert "Loud | [goci] log truncated: this step printed more than 100 MiB" in tail
