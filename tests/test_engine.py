"""The engine's semantics, run with the real local executor (real shell processes)."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from builds.pipeline import Step
from runners.engine import BuildResult, Engine, Status, StepOutcome, StepRun
from runners.executors.local import LocalExecutor
from tests.helpers import Recorder, pipeline, processes_matching, run_pipeline

SMALLEST = """
steps:
  - name: Install
    run: echo installing
  - name: Test
    run: echo testing
  - name: Build
    run: echo building
"""


def starts(recorder: Recorder) -> list[str]:
    return [name for kind, name, _ in recorder.events if kind == "started"]


def test_steps_run_in_order_and_succeed(tmp_path: Path) -> None:
    rec = run_pipeline(SMALLEST, tmp_path)
    assert starts(rec) == ["Install", "Test", "Build"]
    assert rec.text("Test") == ["testing"]
    assert rec.build is not None
    assert rec.build.status is Status.SUCCESS
    assert [r.exit_code for r in rec.build.steps] == [0, 0, 0]


def test_a_failing_step_skips_the_steps_after_it(tmp_path: Path) -> None:
    rec = run_pipeline(SMALLEST.replace("echo testing", "echo oops; exit 3"), tmp_path)
    assert rec.build is not None
    assert rec.build.status is Status.FAILURE
    assert rec.status("Test") == "failure"
    assert rec.results["Test"].exit_code == 3
    assert rec.status("Build") == "skipped"
    assert rec.results["Build"].error == "'Test' failed"
    assert "Build" not in starts(rec)


def test_parallel_steps_overlap_in_time(tmp_path: Path) -> None:
    began = time.monotonic()
    rec = run_pipeline(
        """
        steps:
          - {name: A, run: sleep 1, parallel: true}
          - {name: B, run: sleep 1, parallel: true}
        """,
        tmp_path,
    )
    assert rec.build is not None
    assert rec.build.status is Status.SUCCESS
    assert time.monotonic() - began < 1.8


def test_jobs_limits_how_many_steps_run_at_once(tmp_path: Path) -> None:
    began = time.monotonic()
    text = """
        steps:
          - {name: A, run: sleep 0.4, parallel: true}
          - {name: B, run: sleep 0.4, parallel: true}
    """
    run_pipeline(text, tmp_path, jobs=1)
    assert time.monotonic() - began >= 0.8


def test_a_parallel_group_waits_for_the_step_before_and_blocks_the_step_after(
    tmp_path: Path,
) -> None:
    rec = run_pipeline(
        """
        steps:
          - {name: Install, run: sleep 0.2}
          - {name: Backend, run: sleep 0.3, parallel: true}
          - {name: Frontend, run: sleep 0.1, parallel: true}
          - {name: Package, run: "true"}
        """,
        tmp_path,
    )
    t = {(kind, name): at for kind, name, at in rec.events}
    assert t[("started", "Backend")] >= t[("finished", "Install")]
    assert t[("started", "Frontend")] >= t[("finished", "Install")]
    assert t[("started", "Package")] >= t[("finished", "Backend")]
    assert t[("started", "Frontend")] < t[("finished", "Backend")]


DIAMOND = """
steps:
  - {name: A, run: "true"}
  - {name: B, run: "exit 1", needs: [A]}
  - {name: C, run: "sleep 0.3; echo c ran", needs: [A]}
  - {name: D, run: "true", needs: [B, C]}
  - {name: E, run: "true", needs: [C]}
"""


def test_diamond_failure_skips_only_the_dependents_of_the_failure(tmp_path: Path) -> None:
    rec = run_pipeline(DIAMOND, tmp_path)
    assert {n: rec.status(n) for n in "ABCDE"} == {
        "A": "success",
        "B": "failure",
        "C": "success",
        "D": "skipped",
        "E": "success",
    }
    assert rec.text("C") == ["c ran"]
    assert rec.build is not None
    assert rec.build.status is Status.FAILURE


def test_needs_empty_starts_at_once_and_independent_branches_keep_running(
    tmp_path: Path,
) -> None:
    rec = run_pipeline(
        """
        steps:
          - {name: Slow, run: sleep 0.5}
          - {name: Broken, run: exit 1}
          - {name: Lint, run: echo linted, needs: []}
        """,
        tmp_path,
    )
    t = {(kind, name): at for kind, name, at in rec.events}
    assert t[("started", "Lint")] < t[("finished", "Slow")]
    assert rec.status("Lint") == "success"


def test_allow_failure_lets_dependents_run_and_the_pipeline_pass(tmp_path: Path) -> None:
    rec = run_pipeline(
        """
        steps:
          - {name: Flaky, run: exit 4, allow_failure: true}
          - {name: After, run: echo after}
        """,
        tmp_path,
    )
    assert rec.status("Flaky") == "failure"
    assert rec.results["Flaky"].allowed_failure
    assert rec.status("After") == "success"
    assert rec.build is not None
    assert rec.build.status is Status.SUCCESS


def test_retry_runs_a_failed_step_again_and_numbers_lines_on(tmp_path: Path) -> None:
    rec = run_pipeline(
        """
        steps:
          - name: Flaky
            retry: 2
            run: |
              n=$(cat count 2>/dev/null || echo 0); n=$((n+1)); echo $n > count
              echo "attempt $n"
              [ "$n" -ge 2 ]
        """,
        tmp_path,
    )
    assert rec.status("Flaky") == "success"
    assert rec.results["Flaky"].attempts == 2
    assert rec.lines["Flaky"] == [(1, "attempt 1"), (2, "attempt 2")]
    assert starts(rec) == ["Flaky", "Flaky"]


def test_retry_gives_up_after_the_last_attempt(tmp_path: Path) -> None:
    rec = run_pipeline("steps: [{name: Bad, run: exit 1, retry: 2}]", tmp_path)
    assert rec.status("Bad") == "failure"
    assert rec.results["Bad"].attempts == 3


def test_when_skips_steps_whose_conditions_do_not_match(tmp_path: Path) -> None:
    text = """
        steps:
          - {name: Deploy, run: echo deploy, when: {branch: [main, release/*], event: push}}
          - {name: Always, run: echo always, needs: []}
    """
    rec = run_pipeline(text, tmp_path, branch="feature/x", event="push")
    assert rec.status("Deploy") == "skipped"
    assert "does not match" in (rec.results["Deploy"].error or "")
    assert rec.status("Always") == "success"
    rec = run_pipeline(text, tmp_path, branch="release/1.2", event="push")
    assert rec.status("Deploy") == "success"
    rec = run_pipeline(text, tmp_path, branch="main", event="manual")
    assert rec.status("Deploy") == "skipped"


def test_a_step_after_a_skipped_step_is_skipped(tmp_path: Path) -> None:
    text = """
        steps:
          - {name: Deploy, run: "true", when: {event: tag}}
          - {name: Announce, run: "true"}
    """
    rec = run_pipeline(text, tmp_path, event="push")
    assert rec.results["Announce"].error == "'Deploy' was skipped"


def test_a_timeout_kills_a_step_that_ignores_term_and_leaves_nothing(tmp_path: Path) -> None:
    marker = "987651"
    began = time.monotonic()
    rec = run_pipeline(
        f"""
        steps:
          - name: Stubborn
            timeout: 1s
            run: |
              trap '' TERM
              sleep {marker} &
              sleep {marker}
        """,
        tmp_path,
    )
    assert rec.status("Stubborn") == "failure"
    assert rec.results["Stubborn"].error == "timed out after 1s"
    assert time.monotonic() - began < 4
    assert processes_matching(f"sleep {marker}") == []


def test_a_pipeline_timeout_stops_the_running_step_and_skips_the_rest(tmp_path: Path) -> None:
    rec = run_pipeline(
        """
        timeout: 1s
        steps:
          - {name: Long, run: sleep 30}
          - {name: Next, run: "true"}
        """,
        tmp_path,
    )
    assert rec.status("Long") == "failure"
    assert rec.results["Long"].error == "pipeline timed out after 1s"
    assert rec.status("Next") == "skipped"
    assert rec.results["Next"].error == "'Long' failed"


def test_cancel_stops_every_running_step_and_leaves_nothing(tmp_path: Path) -> None:
    marker = "987652"
    rec = Recorder()
    engine = Engine(
        pipeline(
            f"""
            steps:
              - {{name: A, run: "sleep {marker}", parallel: true}}
              - {{name: B, run: "trap '' TERM; sleep {marker}", parallel: true}}
              - {{name: C, run: "true"}}
            """
        ),
        LocalExecutor(tmp_path),
        rec,
    )
    thread = threading.Thread(target=engine.run)
    thread.start()
    deadline = time.monotonic() + 5
    while len(processes_matching(f"sleep {marker}")) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    began = time.monotonic()
    engine.cancel()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert time.monotonic() - began < 2
    assert rec.status("A") == rec.status("B") == "canceled"
    assert rec.status("C") == "skipped"
    assert rec.build is not None
    assert rec.build.status is Status.CANCELED
    assert processes_matching(f"sleep {marker}") == []


def test_background_processes_end_with_their_step(tmp_path: Path) -> None:
    marker = "987653"
    rec = run_pipeline(f"steps: [{{run: 'sleep {marker} & echo started'}}]", tmp_path)
    assert rec.status("step 1") == "success"
    assert processes_matching(f"sleep {marker}") == []


def test_step_environment(tmp_path: Path) -> None:
    rec = run_pipeline(
        """
        env: {WHO: pipeline, KEEP: kept}
        steps:
          - name: Show
            env: {WHO: step, ZERO: 010}
            run: echo "$CI $GOCI $GOCI_STEP_NAME $GOCI_WORKSPACE $WHO $KEEP $ZERO $EXTRA"
        """,
        tmp_path,
        env={"EXTRA": "from-cli"},
    )
    assert rec.text("Show") == [f"true true Show {tmp_path.resolve()} step kept 010 from-cli"]


def test_goci_variables_cannot_be_overridden_from_outside(tmp_path: Path) -> None:
    rec = run_pipeline("steps: [{run: echo $CI}]", tmp_path, env={"CI": "false"})
    assert rec.text("step 1") == ["true"]


def test_stdout_and_stderr_arrive_in_order(tmp_path: Path) -> None:
    rec = run_pipeline("steps: [{run: 'echo one; echo two >&2; echo three'}]", tmp_path)
    assert rec.text("step 1") == ["one", "two", "three"]


def test_the_script_runs_with_sh_e(tmp_path: Path) -> None:
    rec = run_pipeline("steps: [{run: 'false\n\necho unreachable'}]", tmp_path)
    assert rec.status("step 1") == "failure"
    assert rec.text("step 1") == []


def test_another_shell_can_be_chosen(tmp_path: Path) -> None:
    rec = run_pipeline("steps: [{shell: bash, run: 'echo $BASH_VERSION'}]", tmp_path)
    assert rec.text("step 1")[0][0].isdigit()


def test_a_missing_shell_is_an_error_not_a_failure(tmp_path: Path) -> None:
    rec = run_pipeline("steps: [{shell: no-such-shell, run: 'true'}]", tmp_path)
    assert rec.status("step 1") == "error"
    assert rec.results["step 1"].error == "shell 'no-such-shell' was not found on this machine"
    assert rec.build is not None
    assert rec.build.status is Status.ERROR


def test_workdir_runs_in_a_subdirectory(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    rec = run_pipeline("steps: [{run: pwd, workdir: sub}]", tmp_path)
    assert rec.text("step 1") == [str(tmp_path.resolve() / "sub")]


def test_workdir_may_not_escape_through_a_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "link").symlink_to(outside)
    rec = run_pipeline("steps: [{run: 'touch escaped', workdir: link}]", workspace)
    assert rec.status("step 1") == "error"
    assert rec.results["step 1"].error == "workdir 'link' is outside the workspace"
    assert not (outside / "escaped").exists()


def test_a_missing_workdir_is_an_error(tmp_path: Path) -> None:
    rec = run_pipeline("steps: [{run: 'true', workdir: nope}]", tmp_path)
    assert rec.results["step 1"].error == "workdir 'nope' does not exist in the workspace"


def test_invalid_utf8_and_a_10_mib_line_without_newline(tmp_path: Path) -> None:
    rec = run_pipeline(
        r"""
        steps:
          - run: |
              printf 'bad \377\376 bytes\n'
              head -c 10485760 /dev/zero | tr '\0' x
        """,
        tmp_path,
    )
    lines = rec.text("step 1")
    assert lines[0] == "bad \ufffd\ufffd bytes"
    assert len(lines) == 1 + 160
    assert all(line == "x" * 65536 for line in lines[1:])
    assert [n for n, _ in rec.lines["step 1"]] == list(range(1, 162))


def test_the_log_cap_truncates_with_one_marker_while_the_step_runs_on(tmp_path: Path) -> None:
    rec = run_pipeline(
        """
        steps:
          - run: |
              yes 0123456789 | head -c 100000
              echo done > finished
        """,
        tmp_path,
        log_cap=1000,
    )
    lines = rec.text("step 1")
    assert lines[:90] == ["0123456789"] * 90
    assert lines[-1].startswith("[goci] log truncated")
    assert sum("log truncated" in line for line in lines) == 1
    assert (tmp_path / "finished").read_text() == "done\n"
    assert rec.status("step 1") == "success"


class BrokenExecutor(LocalExecutor):
    def prepare(self, pipeline: object) -> None:
        raise RuntimeError("disk full")


def test_an_executor_that_cannot_prepare_ends_every_step_in_error(tmp_path: Path) -> None:
    rec = Recorder()
    result = Engine(pipeline(SMALLEST), BrokenExecutor(tmp_path), rec).run()
    assert result.status is Status.ERROR
    assert {r.status for r in result.steps} == {Status.ERROR}
    assert rec.results["Install"].error == "could not prepare the executor: disk full"


@pytest.mark.parametrize("jobs", [0, 2])
def test_many_steps_all_finish(tmp_path: Path, jobs: int) -> None:
    steps = "\n".join(f"  - {{name: s{i}, run: 'echo {i}', needs: []}}" for i in range(30))
    rec = run_pipeline(f"steps:\n{steps}\n", tmp_path, jobs=jobs)
    assert all(rec.text(f"s{i}") == [str(i)] for i in range(30))


class ToldReady(LocalExecutor):
    """The real local executor, keeping what the engine tells it ahead of time."""

    def __init__(self, workspace: Path, order: list[str]) -> None:
        super().__init__(workspace)
        self.order = order  # shared with the reporter: what happened, in order
        self.envs: dict[str, dict[str, str]] = {}

    def ready_soon(self, step: Step, env: Mapping[str, str]) -> None:
        self.order.append(f"ready soon {step.name}")
        self.envs[step.name] = dict(env)

    def run_step(self, run: StepRun) -> StepOutcome:
        self.order.append(f"run {run.step.name}")
        assert run.env == self.envs.get(run.step.name, run.env), "told another env"
        return super().run_step(run)

    def cleanup(self) -> None:
        self.order.append("cleanup")
        super().cleanup()


class OrderRecorder(Recorder):
    def __init__(self, order: list[str]) -> None:
        super().__init__()
        self.order = order

    def build_finished(self, result: BuildResult) -> None:
        self.order.append("build finished")
        super().build_finished(result)


DAG = """
    env: {SHARED: pipeline}
    steps:
      - {name: A, run: sleep 0.3}
      - {name: B, run: 'echo "$SHARED $OWN $EXTRA"', env: {OWN: b}, parallel: true}
      - {name: C, run: sleep 0.3, parallel: true}
      - {name: D, run: echo d}
      - {name: Never, run: echo no, when: {branch: release}, needs: [A]}
"""


def test_the_executor_hears_of_each_step_one_stage_ahead_with_its_env(tmp_path: Path) -> None:
    order: list[str] = []
    executor = ToldReady(tmp_path, order)
    rec = OrderRecorder(order)
    Engine(pipeline(DAG), executor, rec, branch="main", env={"EXTRA": "x"}).run()
    assert rec.text("B") == ["pipeline b x"]
    assert order.index("ready soon B") < order.index("run B")
    assert order.index("ready soon C") < order.index("run C")
    # D only once B and C run, not when A does: one stage ahead, not the whole DAG.
    assert order.index("run B") < order.index("ready soon D") < order.index("run D")
    assert "ready soon A" not in order  # it started at once
    assert "ready soon Never" not in order  # its `when` does not match
    assert executor.envs["B"] == {
        "SHARED": "pipeline",
        "OWN": "b",
        "EXTRA": "x",
        "CI": "true",
        "GOCI": "true",
        "GOCI_STEP_NAME": "B",
    }


def test_the_result_is_reported_before_the_executor_cleans_up(tmp_path: Path) -> None:
    order: list[str] = []
    Engine(pipeline(SMALLEST), ToldReady(tmp_path, order), OrderRecorder(order)).run()
    assert order[-2:] == ["build finished", "cleanup"]


def test_a_step_told_ready_that_never_runs_is_still_cleaned_up(tmp_path: Path) -> None:
    order: list[str] = []
    text = SMALLEST.replace("echo testing", "sleep 0.2; exit 3")
    rec = OrderRecorder(order)
    Engine(pipeline(text), ToldReady(tmp_path, order), rec).run()
    assert "ready soon Build" in order
    assert "run Build" not in order
    assert rec.status("Build") == "skipped"
    assert order[-1] == "cleanup"
