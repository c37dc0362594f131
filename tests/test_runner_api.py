"""The runner API (/api/runner/v1/) as a remote runner calls it: register, long-poll for
a job, renew its lease, report steps and log batches, finish, unregister. Fencing (409
for an attempt that is no longer current, 404 for another runner's job, 401 for a
revoked runner), batches stored once however often they are sent, hostile bodies as
4xx JSON; and the same over a real HTTP server, with a job submitted mid-wait."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from builds import services
from builds.models import Build, Job, LogChunk, Status, Step
from runners import api as runner_api
from runners import services as runner_services
from runners.models import Runner
from runners.queue import jobs_reap
from tests.helpers import make_token
from tests.queue_helpers import log_lines, make_project, require_postgres, submit, worker_env

PIPELINE = "steps: [{name: one, run: 'true'}, {name: two, run: 'true'}]"
V1 = "/api/runner/v1"


def call(method: str, path: str, token: str | None = None, body: object = None) -> Any:
    data = body if isinstance(body, str | bytes) else b"" if body is None else json.dumps(body)
    extra = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token is not None else {}
    return Client().generic(
        method.upper(), V1 + path, data, content_type="application/json", **extra
    )


def register(name: str = "r1", labels: list[str] | None = None, capacity: int = 1) -> str:
    _, secret = runner_services.registration_token_create(user=None)
    response = call(
        "post",
        "/register",
        body={
            "registration_token": secret,
            "name": name,
            "labels": labels or [],
            "capacity": capacity,
            "version": "0.13",
            "platform": "linux/amd64",
        },
    )
    assert response.status_code == 201, response.content
    token: str = response.json()["token"]
    assert token.startswith("goci_runner_")
    return token


def claim(token: str, wait: int = 0) -> dict[str, Any]:
    response = call("post", f"/next?wait={wait}", token)
    assert response.status_code == 200, response.content
    job: dict[str, Any] = response.json()
    return job


def job_path(job: dict[str, Any], what: str) -> str:
    return f"/jobs/{job['job_id']}/{job['attempt']}/{what}"


@pytest.mark.django_db
def test_a_runner_registers_takes_a_job_reports_and_finishes_it() -> None:
    token = register(labels=["linux"])
    runner = Runner.objects.get(name="r1")
    assert (runner.kind, runner.labels, runner.version) == ("runner", ["linux"], "0.13")
    assert runner.token_digest == services.token_digest(token)  # only the digest is kept
    assert call("post", "/next?wait=0", token).status_code == 204
    build = submit(make_project(), PIPELINE)

    job = claim(token)

    assert job["build_id"] == build.pk
    assert job["project"] == "demo"
    assert [step["name"] for step in job["steps"]] == ["one", "two"]
    assert job["env"]["GOCI_BUILD_ID"] == str(build.pk)
    assert job["job_token"]
    assert job["lease_seconds"] > 0
    row = Job.objects.get(pk=job["job_id"])
    assert (row.status, row.runner_id, row.worker) == (Status.RUNNING, runner.pk, "r1")
    lease = call("post", job_path(job, "lease"), token)
    assert lease.json() == {"cancel_requested": False, "lease_seconds": job["lease_seconds"]}
    one, two = (step["id"] for step in job["steps"])
    now = timezone.now().isoformat()
    report = {
        "steps": {
            str(one): {"status": "success", "exit_code": 0, "started_at": now, "finished_at": now},
            str(two): {"status": "success", "exit_code": 0, "started_at": now, "finished_at": now},
        },
        "chunks": [[one, 1, ["hello", "world"]]],
    }
    assert call("post", job_path(job, "report"), token, report).status_code == 200
    finished = call("post", job_path(job, "finish"), token, {"status": "success"})
    assert finished.status_code == 200, finished.content
    assert finished.json() == {"build_status": "success"}
    # Sent again (its answer was lost): the same answer, nothing changes.
    assert call("post", job_path(job, "finish"), token, {"status": "success"}).json() == {
        "build_status": "success"
    }
    build.refresh_from_db()
    assert build.status == Status.SUCCESS
    assert log_lines(Step.objects.get(pk=one)) == [(1, "hello"), (2, "world")]
    assert Step.objects.get(pk=two).exit_code == 0


@pytest.mark.django_db
def test_a_job_needing_labels_goes_only_to_a_runner_with_all_of_them() -> None:
    plain = register("plain", labels=["linux"])
    gpu = register("gpu", labels=["linux", "gpu"])
    build = submit(make_project(), PIPELINE)
    Job.objects.filter(build=build).update(labels=["linux", "gpu"])

    assert call("post", "/next?wait=0", plain).status_code == 204
    assert claim(gpu)["build_id"] == build.pk


@pytest.mark.django_db
def test_a_paused_or_draining_runner_gets_no_job_at_once() -> None:
    token = register()
    submit(make_project(), PIPELINE)
    runner = Runner.objects.get(name="r1")
    for state in (Runner.State.PAUSED, Runner.State.DRAINING):
        runner_services.runner_set_state(runner=runner, state=state)
        started = time.monotonic()
        assert call("post", "/next?wait=5", token).status_code == 204
        assert time.monotonic() - started < 1
    runner_services.runner_set_state(runner=runner, state=Runner.State.ACTIVE)
    assert call("post", "/next?wait=0", token).status_code == 200


@pytest.mark.django_db
def test_a_runner_takes_no_more_jobs_than_its_capacity() -> None:
    token = register(capacity=1)
    project = make_project()
    submit(project, PIPELINE)
    submit(project, PIPELINE)
    claim(token)
    assert call("post", "/next?wait=0", token).status_code == 204


@pytest.mark.django_db
def test_a_call_for_an_attempt_the_reaper_moved_on_gets_409_and_writes_nothing() -> None:
    token = register()
    submit(make_project(), PIPELINE)
    job = claim(token)
    Job.objects.filter(pk=job["job_id"]).update(lease_expires_at=timezone.now() - timedelta(1))
    assert jobs_reap() == 1

    step = job["steps"][0]["id"]
    body = {"chunks": [[step, 1, ["late"]]], "steps": {str(step): {"status": "running"}}}
    for path, sent in (
        ("lease", None),
        ("report", body),
        ("plan", {"pipeline": PIPELINE, "filename": ".goci.yml"}),
        ("changed-files", {"changed_files": ["a"]}),
        ("release", None),
        ("finish", {"status": "success"}),
    ):
        response = call("post", job_path(job, path), token, sent)
        assert response.status_code == 409, (path, response.content)
        assert response.json()["detail"].startswith("the job was taken")
    assert not LogChunk.objects.exists()
    assert Step.objects.get(pk=step).status == Status.QUEUED
    assert Job.objects.get(pk=job["job_id"]).attempt == 2


@pytest.mark.django_db
def test_another_runners_job_is_not_found() -> None:
    mine = register("mine")
    other = register("other")
    submit(make_project(), PIPELINE)
    job = claim(mine)
    step = job["steps"][0]["id"]

    for path, body in (
        ("lease", None),
        ("report", {"chunks": [[step, 1, ["x"]]]}),
        ("plan", {"pipeline": PIPELINE, "filename": ".goci.yml"}),
        ("changed-files", {"changed_files": ["a"]}),
        ("release", None),
        ("finish", {"status": "failure"}),
    ):
        response = call("post", job_path(job, path), other, body)
        assert response.status_code == 404, response.content
        assert response.json() == {"detail": f"job {job['job_id']} not found"}
    assert call("post", "/jobs/999999/1/lease", mine).status_code == 404
    assert Job.objects.get(pk=job["job_id"]).status == Status.RUNNING
    assert not LogChunk.objects.exists()


@pytest.mark.django_db
def test_only_a_build_read_at_checkout_is_planned() -> None:
    token = register()
    submit(make_project(), PIPELINE)
    job = claim(token)

    other = "steps: [{name: other, run: 'true'}]"
    response = call("post", job_path(job, "plan"), token, {"pipeline": other, "filename": "f"})

    assert response.status_code == 422
    assert "has its pipeline already" in response.json()["detail"]
    assert Build.objects.get().pipeline == PIPELINE
    assert [s.name for s in Step.objects.all()] == [s["name"] for s in job["steps"]]


@pytest.mark.django_db
def test_a_report_may_not_touch_a_step_of_another_job() -> None:
    token = register(capacity=2)
    project = make_project()
    submit(project, PIPELINE)
    submit(project, PIPELINE)
    first, second = claim(token), claim(token)
    foreign = second["steps"][0]["id"]

    response = call("post", job_path(first, "report"), token, {"chunks": [[foreign, 1, ["x"]]]})

    assert response.status_code == 422
    assert "is not a step of job" in response.json()["detail"]
    assert not LogChunk.objects.exists()


@pytest.mark.django_db
def test_a_revoked_runner_gets_401_at_its_next_call() -> None:
    token = register()
    submit(make_project(), PIPELINE)
    job = claim(token)
    runner_services.runner_revoke(runner=Runner.objects.get(name="r1"))

    for path in ("/next?wait=0", job_path(job, "lease"), "/unregister"):
        response = call("post", path, token)
        assert response.status_code == 401, path
        assert "runner token" in response.json()["detail"]
    # Its job is left to the reaper, as a vanished worker's.
    assert Job.objects.get(pk=job["job_id"]).status == Status.RUNNING


@pytest.mark.django_db
def test_unregister_hands_the_running_job_back_and_ends_the_token() -> None:
    token = register()
    submit(make_project(), PIPELINE)
    job = claim(token)

    assert call("post", "/unregister", token).status_code == 204

    row = Job.objects.get(pk=job["job_id"])
    assert (row.status, row.attempt, row.runner_id) == (Status.QUEUED, 2, None)
    assert not Runner.objects.filter(name="r1").exists()
    assert call("post", "/next?wait=0", token).status_code == 401


@pytest.mark.django_db
def test_a_resent_or_overlapping_batch_is_stored_once() -> None:
    token = register()
    submit(make_project(), PIPELINE)
    job = claim(token)
    step = job["steps"][0]["id"]
    lines = [f"line {n}" for n in range(1, 11)]

    def send(first: int, batch: list[str]) -> None:
        body = {"chunks": [[step, first, batch]]}
        response = call("post", job_path(job, "report"), token, body)
        assert response.status_code == 200, response.content

    send(1, lines[:5])
    send(1, lines[:5])  # resent whole: its answer was lost
    send(3, lines[2:8])  # overlaps: 3-5 stored, 6-8 new
    send(10, lines[9:])  # 9 lost for now...
    send(9, lines[8:])  # ...and resent with 10

    assert log_lines(Step.objects.get(pk=step)) == [(n, f"line {n}") for n in range(1, 11)]


@pytest.mark.django_db
def test_nul_and_lone_surrogates_in_lines_are_stored_as_the_worker_stores_them() -> None:
    token = register()
    submit(make_project(), PIPELINE)
    job = claim(token)
    step = job["steps"][0]["id"]
    body = '{"chunks": [[STEP, 1, ["a\\u0000b", "c\\udc80d", "plain"]]]}'.replace("STEP", str(step))

    assert call("post", job_path(job, "report"), token, body).status_code == 200

    assert log_lines(Step.objects.get(pk=step)) == [(1, "a\ufffdb"), (2, "c\ufffdd"), (3, "plain")]


S = -7777  # stands for the id of the job's first step

HOSTILE = [
    ("/register", "[]", 422),
    ("/register", '"text"', 422),
    ("/register", "{", 422),
    ("/register", {"registration_token": "x", "name": "a\u0000b"}, 422),
    ("/register", '{"registration_token": "x", "name": "\\ud800"}', 422),
    ("/register", {"registration_token": "x", "name": "n", "capacity": 10**400}, 422),
    ("/register", {"registration_token": "x", "name": "n", "capacity": 1e308}, 422),
    ("/register", {"registration_token": "x", "name": "n", "labels": ["a b"]}, 422),
    ("/register", {"registration_token": "x", "name": "n", "labels": "linux"}, 422),
    ("/register", {"registration_token": "nope", "name": "n"}, 401),
    ("/register", {"registration_token": "x" * 10_000_000, "name": "n"}, 413),
    ("/next?wait=31", None, 422),
    ("/next?wait=99999999999999999999999", None, 422),
    ("/next?wait=-1", None, 422),
    ("/jobs/99999999999999999999999/1/lease", None, 422),
    ("/jobs/1/0/lease", None, 422),
    ("/jobs/{job}/{attempt}/report", {"chunks": [["x", 1, ["a"]]]}, 422),
    ("/jobs/{job}/{attempt}/report", {"chunks": [[S, 0, ["a"]]]}, 422),
    ("/jobs/{job}/{attempt}/report", {"chunks": [[S, 2**31, ["a"]]]}, 422),
    ("/jobs/{job}/{attempt}/report", {"chunks": [[S, 2**31 - 1, ["a", "b"]]]}, 422),
    ("/jobs/{job}/{attempt}/report", {"chunks": [[10**30, 1, ["a"]]]}, 422),
    ("/jobs/{job}/{attempt}/report", {"chunks": [[S, 1, [1]]]}, 422),
    ("/jobs/{job}/{attempt}/report", {"chunks": [[S, 1, ["x" * 70_000]]]}, 422),
    ("/jobs/{job}/{attempt}/report", {"chunks": [[S, 1, ["a"] * 10_001]]}, 413),
    ("/jobs/{job}/{attempt}/report", {"chunks": [[S, 1, ["a" * 60_000] * 40]]}, 413),
    ("/jobs/{job}/{attempt}/report", {"steps": {S: {"status": "bogus"}}}, 422),
    ("/jobs/{job}/{attempt}/report", {"steps": {S: {"exit_code": 2**40}}}, 422),
    ("/jobs/{job}/{attempt}/report", {"steps": {S: {"worker": "x"}}}, 422),
    ("/jobs/{job}/{attempt}/report", {"steps": {S: {"error": "a\u0000"}}}, 422),
    ("/jobs/{job}/{attempt}/report", {"steps": {S: {"started_at": "soon"}}}, 422),
    ("/jobs/{job}/{attempt}/report", {"unknown": 1}, 422),
    ("/jobs/{job}/{attempt}/report", {"steps": {S: {"image_id": "sha256:\u0000"}}}, 422),
    ("/jobs/{job}/{attempt}/report", '{"steps": {"-7777": {"image_id": "\\ud800"}}}', 422),
    ("/jobs/{job}/{attempt}/report", {"steps": {S: {"digests": {"a\u0000": "x"}}}}, 422),
    ("/jobs/{job}/{attempt}/report", {"steps": {S: {"digests": {"t": 10**400}}}}, 422),
    ("/jobs/{job}/{attempt}/report", {"steps": {S: {"digests": ["x"]}}}, 422),
    ("/jobs/{job}/{attempt}/report", {"steps": {S: {"image_id": "x" * 10_000_000}}}, 413),
    ("/jobs/{job}/{attempt}/plan", {"pipeline": "steps: [", "filename": ".goci.yml"}, 422),
    ("/jobs/{job}/{attempt}/plan", {"pipeline": "a\u0000", "filename": ".goci.yml"}, 422),
    ("/jobs/{job}/{attempt}/plan", '{"pipeline": "\\ud800", "filename": "f"}', 422),
    ("/jobs/{job}/{attempt}/plan", {"pipeline": "x" * 1_048_577, "filename": "f"}, 422),
    ("/jobs/{job}/{attempt}/plan", {"pipeline": "x" * 10_000_000, "filename": "f"}, 413),
    ("/jobs/{job}/{attempt}/plan", {"pipeline": "steps: []"}, 422),
    ("/jobs/{job}/{attempt}/changed-files", {"changed_files": ["a\u0000"]}, 422),
    ("/jobs/{job}/{attempt}/changed-files", {"changed_files": ["a"] * 10_001}, 422),
    ("/jobs/{job}/{attempt}/changed-files", {"changed_files": 10**400}, 422),
    ("/jobs/{job}/{attempt}/changed-files", {}, 422),
    ("/jobs/{job}/{attempt}/finish", {"status": "running"}, 422),
    ("/jobs/{job}/{attempt}/finish", {}, 422),
    ("/jobs/{job}/{attempt}/finish", {"status": "error", "error": "x" * 10_001}, 422),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("path", "body", "status"), HOSTILE)
def test_hostile_input_is_a_json_4xx_and_changes_nothing(path: str, body: Any, status: int) -> None:
    token = register()
    submit(make_project(), PIPELINE)
    job = claim(token)
    step = job["steps"][0]["id"]
    path = path.format(job=job["job_id"], attempt=job["attempt"])
    if body is not None and not isinstance(body, str):
        body = json.dumps(body)
    if body is not None:
        body = body.replace(str(S), str(step))
    before = (list(Runner.objects.values_list("name")), LogChunk.objects.count())

    response = call("post", path, token if not path.startswith("/register") else None, body)

    assert response.status_code == status, response.content[:500]
    assert response["Content-Type"] == "application/json"
    assert response.json()["detail"]
    assert (list(Runner.objects.values_list("name")), LogChunk.objects.count()) == before
    assert Step.objects.get(pk=step).status == Status.QUEUED


@pytest.mark.django_db
def test_the_runner_api_is_documented_in_its_own_openapi_schema() -> None:
    schema = Client().get(f"{V1}/openapi.json").json()
    assert set(schema["paths"]) == {
        f"{V1}/register",
        f"{V1}/unregister",
        f"{V1}/next",
        f"{V1}/jobs/{{job_id}}/{{attempt}}/lease",
        f"{V1}/jobs/{{job_id}}/{{attempt}}/report",
        f"{V1}/jobs/{{job_id}}/{{attempt}}/plan",
        f"{V1}/jobs/{{job_id}}/{{attempt}}/changed-files",
        f"{V1}/jobs/{{job_id}}/{{attempt}}/release",
        f"{V1}/jobs/{{job_id}}/{{attempt}}/finish",
    }
    assert Client().get(f"{V1}/docs").status_code == 200
    wrong = Client().get(f"{V1}/next")
    assert wrong.status_code == 405
    assert "detail" in wrong.json()


@pytest.mark.django_db
def test_a_user_token_is_no_runner_token() -> None:
    from tests.helpers import make_user

    user_token = make_token(make_user("ann2"))
    assert call("post", "/next?wait=0", user_token).status_code == 401
    runner_token = register()
    assert (
        Client().get("/api/builds", HTTP_AUTHORIZATION=f"Bearer {runner_token}").status_code == 401
    )


# ---------------------------------------------------------------------------
# Over real HTTP (a threaded server on the test database).


def http(url: str, token: str | None = None, body: object = None) -> tuple[int, Any]:
    request = urllib.request.Request(  # noqa: S310  (a test server's http URL)
        url, data=json.dumps(body).encode() if body is not None else b"", method="POST"
    )
    request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=40) as response:  # noqa: S310  (test URL)
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.django_db(transaction=True)
def test_over_http_a_long_poll_gets_a_job_submitted_while_it_waits(live_server: Any) -> None:
    base = live_server.url + V1
    _, secret = runner_services.registration_token_create(user=None)
    status, registered = http(
        f"{base}/register", body={"registration_token": secret, "name": "far", "labels": []}
    )
    assert status == 201
    token = registered["token"]
    project = make_project()
    got: dict[str, Any] = {}

    def poll() -> None:
        started = time.monotonic()
        got["answer"] = http(f"{base}/next?wait=10", token)
        got["seconds"] = time.monotonic() - started

    poller = threading.Thread(target=poll)
    poller.start()
    time.sleep(1.0)
    build = submit(project, PIPELINE)  # another thread: its commit wakes the poll
    poller.join(timeout=15)

    status, job = got["answer"]
    assert status == 200
    assert job["build_id"] == build.pk
    assert 1.0 <= got["seconds"] < 3.0
    step = job["steps"][0]["id"]
    path = f"{base}/jobs/{job['job_id']}/{job['attempt']}"
    assert http(f"{path}/lease", token)[0] == 200
    chunks = {"chunks": [[step, 1, ["over", "http"]]]}
    assert http(f"{path}/report", token, chunks)[0] == 200
    assert http(f"{path}/report", token, chunks)[0] == 200  # resent: stored once
    assert http(f"{path}/finish", token, {"status": "failure", "error": "step one"}) == (
        200,
        {"build_status": "failure"},
    )
    assert log_lines(Step.objects.get(pk=step)) == [(1, "over"), (2, "http")]
    assert Build.objects.get(pk=build.pk).status == Status.FAILURE
    # An empty wait answers at its end, no later.
    started = time.monotonic()
    assert http(f"{base}/next?wait=1", token)[0] == 204
    assert 0.9 <= time.monotonic() - started < 2.5


@pytest.mark.django_db(transaction=True)
def test_a_long_poll_wakes_on_a_submit_from_another_process(
    live_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL's NOTIFY reaches the web process's LISTEN connection: without it the
    poll would look again only after POLL_SECONDS, here longer than its wait."""
    require_postgres()
    monkeypatch.setattr(runner_api, "POLL_SECONDS", 60.0)
    token = register("far")
    project = make_project()
    got: dict[str, Any] = {}

    def poll() -> None:
        got["answer"] = http(f"{live_server.url}{V1}/next?wait=20", token)

    poller = threading.Thread(target=poll)
    poller.start()
    time.sleep(1.0)  # the poll is waiting, and its process LISTENs
    code = (
        "import django; django.setup()\n"
        "from builds import services\nfrom builds.models import Project\n"
        f"services.build_create(project=Project.objects.get(pk={project.pk}), "
        f"pipeline={PIPELINE!r})\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**worker_env(tmp_path), "DJANGO_SETTINGS_MODULE": "goci.settings"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    poller.join(timeout=30)

    status, job = got["answer"]
    assert status == 200  # not a 204 at the end of the 20 s wait
    assert job["build_id"] == Build.objects.get().pk


@pytest.mark.django_db
def test_a_long_poll_reaps_expired_leases_so_runners_alone_hand_jobs_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With remote runners and no worker, nothing else would re-queue a lost job."""
    lost, taker = register("lost"), register("taker")
    submit(make_project(), PIPELINE)
    job = claim(lost)
    Job.objects.filter(pk=job["job_id"]).update(lease_expires_at=timezone.now() - timedelta(1))
    monkeypatch.setattr(runner_api, "_reaped_at", 0.0)

    again = claim(taker)

    assert (again["job_id"], again["attempt"]) == (job["job_id"], 2)
    assert call("post", job_path(job, "lease"), lost).status_code == 409


@pytest.mark.django_db
def test_a_build_steps_image_and_digests_are_reported_checked_and_shown() -> None:
    token = register()
    submit(make_project(), PIPELINE)
    job = claim(token)
    assert job["push_refused"] is None  # an API build may push
    step = job["steps"][0]["id"]
    image_id = "sha256:" + "a" * 64
    digest = "sha256:" + "b" * 64
    bad = [
        {"image_id": "sha256:short"},
        {"image_id": "a" * 71},
        {"digests": {"x/y:1": "md5:abc"}},
        {"digests": {"x/y:\u0000": digest}},
        {"digests": {f"x/y:{i}": digest for i in range(21)}},
        {"digests": {"x" * 256: digest}},
    ]
    for state in bad:
        response = call("post", job_path(job, "report"), token, {"steps": {str(step): state}})
        assert response.status_code == 422, state
        assert response.json()["detail"]
    good = {"status": "success", "image_id": image_id, "digests": {"x/y:1": digest}}
    response = call("post", job_path(job, "report"), token, {"steps": {str(step): good}})
    assert response.status_code == 200, response.content
    stored = Step.objects.get(pk=step)
    assert (stored.image_id, stored.digests) == (image_id, {"x/y:1": digest})
    from django.contrib.auth.models import User

    owner = User.objects.get(username="ann")  # make_project's owner
    api = Client().get(
        f"/api/builds/{job['build_id']}", headers={"Authorization": f"Bearer {make_token(owner)}"}
    )
    shown = api.json()["jobs"][0]["steps"][0]
    assert (shown["image_id"], shown["digests"]) == (image_id, {"x/y:1": digest})


@pytest.mark.django_db
def test_a_pull_request_job_says_its_images_must_not_be_pushed() -> None:
    token = register()
    submit(make_project(), PIPELINE, trigger=Build.Trigger.PULL_REQUEST)
    assert claim(token)["push_refused"] == "pull_request"
