"""The engine runs or skips steps by the files the build changed (`when: {path: ...}`),
and skips every step when the pipeline's own `when` does not match. Real shell
processes through the local executor; the last test runs a build through the worker
and the database."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from builds.pipeline import Pipeline, Step
from runners.engine import Engine, Status, StepOutcome, StepRun
from runners.executors.local import LocalExecutor
from tests.helpers import Recorder, pipeline, run_pipeline

DOCS_AND_CODE = """
    steps:
      - {name: Docs, run: echo docs, when: {path: ['docs/**', '*.md']}}
      - name: Code
        run: echo code
        needs: []
        when: {path: {include: 'src/**', exclude: '**/*_test.go'}}
      - {name: Publish, run: echo publish, needs: [Docs]}
      - {name: Always, run: echo always, needs: []}
"""


def started(recorder: Recorder) -> list[str]:
    return [name for kind, name, _ in recorder.events if kind == "started"]


def test_a_step_runs_when_a_changed_file_matches_its_path(tmp_path: Path) -> None:
    rec = run_pipeline(DOCS_AND_CODE, tmp_path, changed_files=["docs/guide/intro.md"])
    assert rec.text("Docs") == ["docs"]
    assert rec.status("Publish") == "success"
    assert rec.status("Code") == "skipped"
    assert rec.results["Code"].error == "when: path matches none of the 1 changed file"
    assert rec.build is not None
    assert rec.build.status is Status.SUCCESS


def test_a_step_whose_path_matches_nothing_is_skipped_and_so_are_its_dependents(
    tmp_path: Path,
) -> None:
    files = ["src/app/main_test.go", "go.sum"]
    rec = run_pipeline(DOCS_AND_CODE, tmp_path, changed_files=files)
    assert rec.results["Docs"].error == "when: path matches none of the 2 changed files"
    assert rec.results["Code"].error == "when: path matches none of the 2 changed files"
    assert rec.results["Publish"].error == "'Docs' was skipped"
    assert started(rec) == ["Always"]
    assert rec.build is not None
    assert rec.build.status is Status.SUCCESS


def test_include_and_exclude_together_count_each_file(tmp_path: Path) -> None:
    files = ["src/app/main_test.go", "src/app/main.go"]
    rec = run_pipeline(DOCS_AND_CODE, tmp_path, changed_files=files)
    assert rec.text("Code") == ["code"]


def test_unknown_changed_files_run_every_step_with_a_path(tmp_path: Path) -> None:
    # An API or manual build, or a push with more commits than the forge lists.
    for options in ({}, {"changed_files": None}):
        rec = run_pipeline(DOCS_AND_CODE, tmp_path, **options)
        assert sorted(started(rec)) == ["Always", "Code", "Docs", "Publish"]


def test_an_empty_list_of_changed_files_matches_no_path(tmp_path: Path) -> None:
    rec = run_pipeline(DOCS_AND_CODE, tmp_path, changed_files=[])
    assert rec.results["Docs"].error == "when: path: no file changed"
    assert started(rec) == ["Always"]


def test_path_branch_and_event_must_all_match(tmp_path: Path) -> None:
    text = """
        steps:
          - {name: Deploy, run: echo deploy, when: {branch: main, event: push, path: 'web/**'}}
    """
    rec = run_pipeline(text, tmp_path, branch="dev", event="push", changed_files=["web/a"])
    assert rec.results["Deploy"].error == "when: does not match branch dev, event push"
    rec = run_pipeline(text, tmp_path, branch="main", event="push", changed_files=["api/a"])
    assert rec.results["Deploy"].error == "when: path matches none of the 1 changed file"
    rec = run_pipeline(text, tmp_path, branch="main", event="push", changed_files=["web/a"])
    assert rec.text("Deploy") == ["deploy"]


class Watched(LocalExecutor):
    """The real local executor, noting what the engine asks of it."""

    def __init__(self, workspace: Path) -> None:
        super().__init__(workspace)
        self.calls: list[str] = []

    def prepare(self, pipeline: Pipeline) -> None:
        self.calls.append("prepare")
        super().prepare(pipeline)

    def ready_soon(self, step: Step, env: Mapping[str, str]) -> None:
        self.calls.append(f"ready soon {step.name}")

    def run_step(self, run: StepRun) -> StepOutcome:
        self.calls.append(f"run {run.step.name}")
        return super().run_step(run)

    def cleanup(self) -> None:
        self.calls.append("cleanup")
        super().cleanup()


TOP = """
    when:
      branch: main
      path: {exclude: 'docs/**'}
    steps:
      - {name: Build, run: echo build}
      - {name: Test, run: echo test, parallel: true}
      - {name: Lint, run: echo lint, parallel: true}
"""


def run_watched(text: str, workspace: Path, **options: Any) -> tuple[Recorder, Watched]:
    rec, executor = Recorder(), Watched(workspace)
    Engine(pipeline(text), executor, rec, **options).run()
    return rec, executor


def test_a_pipeline_when_that_does_not_match_skips_every_step_and_succeeds(
    tmp_path: Path,
) -> None:
    rec, executor = run_watched(TOP, tmp_path, branch="main", changed_files=["docs/a.md"])
    reason = "the pipeline's when: path matches none of the 1 changed file"
    assert {name: (str(r.status), r.error) for name, r in rec.results.items()} == {
        "Build": ("skipped", reason),
        "Test": ("skipped", reason),
        "Lint": ("skipped", reason),
    }
    assert rec.build is not None
    assert rec.build.status is Status.SUCCESS
    assert [r.name for r in rec.build.steps] == ["Build", "Test", "Lint"]
    # Nothing ran, nothing was prepared; cleanup still leaves nothing behind.
    assert executor.calls == ["cleanup"]
    assert started(rec) == []


def test_a_pipeline_when_on_branch_and_event_says_which(tmp_path: Path) -> None:
    rec, _ = run_watched(TOP, tmp_path, branch="dev", event="push", changed_files=["src/a"])
    assert (
        rec.results["Build"].error == "the pipeline's when: does not match branch dev, event push"
    )


def test_a_pipeline_when_that_matches_runs_the_steps_as_usual(tmp_path: Path) -> None:
    rec, executor = run_watched(TOP, tmp_path, branch="main", changed_files=["docs/a", "go.mod"])
    assert started(rec)[0] == "Build"
    assert sorted(started(rec)) == ["Build", "Lint", "Test"]
    assert executor.calls[0] == "prepare"
    assert rec.build is not None
    assert rec.build.status is Status.SUCCESS


def test_a_pipeline_when_with_unknown_changed_files_runs(tmp_path: Path) -> None:
    rec, _ = run_watched(TOP, tmp_path, branch="main")
    assert rec.text("Build") == ["build"]


def test_the_executor_is_not_told_ahead_of_a_step_whose_path_does_not_match(
    tmp_path: Path,
) -> None:
    text = """
        steps:
          - {name: A, run: sleep 0.2}
          - {name: B, run: echo b, when: {path: 'b/**'}}
          - {name: C, run: echo c, when: {path: 'c/**'}, needs: [A]}
    """
    rec, executor = run_watched(text, tmp_path, changed_files=["c/x"])
    assert "ready soon C" in executor.calls
    assert "ready soon B" not in executor.calls
    assert rec.status("B") == "skipped"
    assert rec.text("C") == ["c"]


def test_many_steps_sharing_a_path_condition_against_many_files_start_quickly(
    tmp_path: Path,
) -> None:
    # One anchor used by every step: the engine judges that condition once.
    code = "&code {include: ['src/**/*.go', 'go.*'], exclude: ['**/*_test.go']}"
    steps = "".join(
        f"  - {{name: s{i}, run: 'true', needs: [], when: {{path: {'*code' if i else code}}}}}\n"
        for i in range(200)
    )
    text = "steps:\n" + steps
    files = [f"docs/part{i}/page{i}.md" for i in range(3000)]
    began = time.monotonic()
    rec = run_pipeline(text, tmp_path, changed_files=files)
    assert time.monotonic() - began < 2
    assert {r.status for r in rec.results.values()} == {Status.SKIPPED}


@pytest.mark.django_db(transaction=True)
def test_a_build_whose_pipeline_when_does_not_match_ends_in_success_on_the_server(
    tmp_path: Path, settings: Any
) -> None:
    from builds.models import Build
    from builds.models import Status as BuildStatus
    from builds.models import Step as StepRow
    from tests.queue_helpers import make_project, run_one, submit

    settings.GOCI_WORKSPACE_ROOT = tmp_path / "ws"
    settings.GOCI_HOST_STEPS = "allow"
    project = make_project("paths")
    build = submit(
        project,
        """
        when: {path: 'src/**'}
        steps:
          - {name: Build, run: echo build}
          - {name: Test, run: echo test}
        """,
        ref="refs/heads/main",
        trigger=Build.Trigger.PUSH,
        origin={"changed_files": ["README.md"]},
    )
    run_one(build)
    assert build.status == BuildStatus.SUCCESS
    rows = StepRow.objects.filter(job__build=build).order_by("position")
    assert [(row.name, row.status, row.error) for row in rows] == [
        (name, "skipped", "the pipeline's when: path matches none of the 1 changed file")
        for name in ("Build", "Test")
    ]
