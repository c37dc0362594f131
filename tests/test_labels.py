"""Labels: `runs_on` in the pipeline, a job's labels, workers with `--labels`, and
every worker recorded as a Runner (online while it beats, offline once it stops)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.utils import timezone

import goci
from builds.models import Build, Job, Status
from builds.pipeline import PipelineError, json_schema, load, parse_labels
from runners.models import Runner
from runners.queue import job_claim
from runners.reasons import queue_reason
from runners.worker import Worker
from tests.helpers import REPO
from tests.helpers import goci as run_goci
from tests.queue_helpers import make_project, require_postgres, submit, wait_for, worker_env

GPU = "runs_on: [linux, gpu]\nsteps: [{run: 'true'}]"
PLAIN = "steps: [{run: 'true'}]"


def problems(text: str) -> list[str]:
    with pytest.raises(PipelineError) as caught:
        load(text, ".goci.yml")
    return [str(problem) for problem in caught.value.problems]


# -- the pipeline


def test_runs_on_takes_a_label_or_a_list_and_drops_repeats() -> None:
    assert load("runs_on: [linux, gpu, linux]\nsteps: [{run: x}]").runs_on == ("linux", "gpu")
    assert load("runs_on: arm64\nsteps: [{run: x}]").runs_on == ("arm64",)
    assert load("steps: [{run: x}]").runs_on == ()


def test_bad_labels_are_reported_with_their_line_and_column() -> None:
    text = "steps: [{run: x}]\nruns_on: [GPU, 'a b', {x: 1}, ok.1_-x]\n"
    assert problems(text) == [
        ".goci.yml:2:11: runs_on[0]: invalid label 'GPU' (write 'gpu'): use lower-case "
        "letters, digits, '.', '_' and '-', starting with a letter or digit",
        ".goci.yml:2:16: runs_on[1]: invalid label 'a b': use lower-case letters, digits, "
        "'.', '_' and '-', starting with a letter or digit",
        ".goci.yml:2:23: runs_on[2]: expected a label, found a mapping",
    ]


@pytest.mark.parametrize(
    ("runs_on", "message"),
    [
        ("[]", "runs_on: the list is empty: name the labels a runner must have, or remove it"),
        ("", "runs_on: expected a label or a list of labels, found nothing"),
        (
            "[" + ",".join(f"l{n}" for n in range(21)) + "]",
            "runs_on: too many labels (21); a pipeline may need at most 20",
        ),
        ("x" * 65, "runs_on: a label may be at most 64 characters, found a label of 65 characters"),
        ("-x", "runs_on: invalid label '-x'"),
    ],
)
def test_runs_on_limits(runs_on: str, message: str) -> None:
    (found,) = problems(f"runs_on: {runs_on}\nsteps: [{{run: x}}]\n")
    assert found.startswith(".goci.yml:1:")
    assert message in found


def test_other_systems_keys_point_to_runs_on() -> None:
    text = (
        "runs-on: ubuntu-latest\ntags: [docker]\nlabels: {type: exec}\nplatform: linux/amd64\n"
        "steps:\n  - {run: x, tags: [gpu], runs-on: gpu}\n"
    )
    to_top = "labels apply to the whole pipeline: write `runs_on:` at its top"
    assert problems(text) == [
        ".goci.yml:1:1: unknown key 'runs-on' (Goci calls this 'runs_on', the labels a "
        "runner must have)",
        ".goci.yml:2:1: unknown key 'tags' (Goci calls this 'runs_on', the labels a runner "
        "must have)",
        ".goci.yml:3:1: unknown key 'labels' (Goci calls this 'runs_on', the labels a runner "
        "must have)",
        ".goci.yml:4:1: unknown key 'platform' (name it as a label in 'runs_on', e.g. "
        "`runs_on: [linux, arm64]`)",
        f".goci.yml:6:14: steps[0]: unknown key 'tags' ({to_top})",
        f".goci.yml:6:27: steps[0]: unknown key 'runs-on' ({to_top})",
    ]


def test_the_json_schema_describes_runs_on() -> None:
    schema = json_schema()
    assert "runs_on" in schema["properties"]  # type: ignore[operator]
    label = schema["definitions"]["label"]  # type: ignore[index]
    assert label == {"type": "string", "minLength": 1, "maxLength": 64, "pattern": label["pattern"]}


def test_parse_labels_reads_a_workers_option() -> None:
    assert parse_labels(" linux, gpu ,linux") == ("linux", "gpu")
    assert parse_labels("") == ()
    with pytest.raises(ValueError, match="invalid label 'Big'"):
        parse_labels("linux,Big")
    with pytest.raises(ValueError, match="a label is empty"):
        parse_labels("linux,,gpu")


def test_goci_worker_refuses_bad_labels_before_starting(tmp_path: Path) -> None:
    result = run_goci("worker", "--labels", "gpu,GPU!", cwd=tmp_path)
    assert result.returncode == 2
    assert "invalid label 'GPU!'" in result.stderr


# -- the queue


@pytest.mark.django_db
def test_a_job_stores_its_labels_and_only_a_runner_with_all_of_them_claims_it() -> None:
    project = make_project()
    build = submit(project, GPU)
    job = Job.objects.get(build=build)
    assert job.labels == ["linux", "gpu"]
    assert job_claim(worker="plain") is None
    assert job_claim(worker="linux", labels=["linux"]) is None
    assert job_claim(worker="gpu", labels=["gpu", "arm64"]) is None
    taken = job_claim(worker="both", labels=["arm64", "gpu", "linux"])
    assert taken is not None
    assert taken.pk == job.pk


@pytest.mark.django_db
def test_a_worker_with_labels_also_takes_jobs_that_need_none_oldest_first() -> None:
    project = make_project()
    gpu, plain = submit(project, GPU), submit(project, PLAIN)
    assert [job_claim(worker="x", labels=["linux", "gpu"]) for _ in range(2)] != [None, None]
    assert set(Job.objects.values_list("build_id", "status")) == {
        (gpu.pk, Status.RUNNING),
        (plain.pk, Status.RUNNING),
    }


@pytest.mark.django_db
def test_a_worker_with_no_label_skips_labelled_jobs_to_take_a_plain_one() -> None:
    project = make_project()
    submit(project, GPU)
    plain = submit(project, PLAIN)
    taken = job_claim(worker="x")
    assert taken is not None
    assert taken.build_id == plain.pk


@pytest.mark.django_db(transaction=True)
def test_a_worker_records_itself_as_a_runner_and_signs_off(
    tmp_path: Path, settings: object
) -> None:
    settings.GOCI_WORKSPACE_ROOT = tmp_path / "ws"  # type: ignore[attr-defined]
    build = submit(make_project(), GPU)
    worker = Worker(name="w-gpu", concurrency=3, labels=["linux", "gpu"])
    try:
        assert worker.run_one_job()
    finally:
        row = Runner.objects.get(name="w-gpu")
        worker.close()
    assert (row.kind, row.labels, row.capacity, row.version) == (
        "worker",
        ["linux", "gpu"],
        3,
        goci.__version__,
    )
    assert "/" in row.platform
    assert row.last_contact is not None
    assert Job.objects.get(build=build).runner_id == row.pk
    assert Build.objects.get(pk=build.pk).status == Status.SUCCESS
    assert Runner.objects.get(name="w-gpu").last_contact is None  # offline at once


@pytest.mark.django_db
def test_a_remote_runners_name_is_refused_to_a_worker() -> None:
    Runner.objects.create(name="r1", kind=Runner.Kind.RUNNER, last_contact=timezone.now())
    with pytest.raises(ValueError, match="remote runner"):
        Worker(name="r1").register()


@pytest.mark.django_db
def test_a_restarted_worker_keeps_the_state_an_admin_set() -> None:
    Worker(name="w1").register()
    Runner.objects.filter(name="w1").update(state=Runner.State.PAUSED)
    again = Worker(name="w1", labels=["gpu"]).register()
    assert (again.state, again.labels) == (Runner.State.PAUSED, ["gpu"])
    submit(make_project(), PLAIN)
    assert job_claim(worker="w1", runner=again) is None


# -- worker processes on PostgreSQL


def start(tmp_path: Path, name: str, labels: str = "") -> subprocess.Popen[bytes]:
    command = [sys.executable, str(REPO / "manage.py"), "worker", "--name", name]
    with (tmp_path / f"{name}.log").open("wb") as log:
        return subprocess.Popen(
            [*command, "--labels", labels],
            env=worker_env(tmp_path),
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=20)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_labelled_job_waits_until_a_worker_with_its_labels_starts(tmp_path: Path) -> None:
    require_postgres()
    project = make_project()
    gpu = submit(project, GPU)
    plain = submit(project, PLAIN)
    workers = [start(tmp_path, "plain"), start(tmp_path, "linux", "linux")]
    try:
        wait_for(
            lambda: Build.objects.get(pk=plain.pk).status == Status.SUCCESS, 30, "the plain build"
        )
        wait_for(
            lambda: Runner.objects.filter(name="linux", last_contact__isnull=False).exists(),
            30,
            "the second worker's row",
        )
        build = Build.objects.get(pk=gpu.pk)
        assert build.status == Status.QUEUED
        assert (
            queue_reason(build) == "waiting for a runner with labels [linux, gpu]: none is online"
        )
        workers.append(start(tmp_path, "gpu", "gpu,linux,cuda"))
        wait_for(lambda: Build.objects.get(pk=gpu.pk).status == Status.SUCCESS, 30, "the gpu build")
        assert Job.objects.get(build=gpu).runner.name == "gpu"  # type: ignore[union-attr]
        row = Runner.objects.get(name="gpu")
        assert (row.labels, row.kind, row.capacity) == (["gpu", "linux", "cuda"], "worker", 1)
    finally:
        for process in workers:
            stop(process)
    assert [process.returncode for process in workers] == [0, 0, 0]
    assert set(Runner.objects.values_list("name", "last_contact")) == {
        ("plain", None),
        ("linux", None),
        ("gpu", None),
    }


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_worker_paused_by_an_admin_takes_nothing_until_resumed(tmp_path: Path) -> None:
    require_postgres()
    project = make_project()
    process = start(tmp_path, "w1", "gpu")
    try:
        wait_for(lambda: Runner.objects.filter(name="w1").exists(), 30, "the worker's row")
        Runner.objects.filter(name="w1").update(state=Runner.State.PAUSED)
        build = submit(project, PLAIN)
        assert queue_reason(Build.objects.get(pk=build.pk)) == "runner w1 is paused"
        time.sleep(2)  # several polls (and the submit's wake-up) of the worker
        assert Build.objects.get(pk=build.pk).status == Status.QUEUED
        Runner.objects.filter(name="w1").update(state=Runner.State.ACTIVE)
        wait_for(lambda: Build.objects.get(pk=build.pk).status == Status.SUCCESS, 30, "the build")
    finally:
        stop(process)
    assert process.returncode == 0
