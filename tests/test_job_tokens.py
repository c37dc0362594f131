"""Job tokens: each running job gets GOCI_JOB_TOKEN, a JWT that reads its own build and
that build's logs through the API, and nothing else; it is masked like a secret and
stops working when the job ends."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from builds import access_tokens
from builds.models import Build, Job, LogChunk, Status, Step
from runners.lines import MASK
from tests.helpers import api_call
from tests.queue_helpers import make_project, run_one, submit

pytestmark = pytest.mark.django_db(transaction=True)

# What a step does with its token: every call and the status the server answered.
PROBE = """
import json, os, sys, urllib.request, urllib.error
url, token, me = os.environ["URL"], os.environ["GOCI_JOB_TOKEN"], os.environ["GOCI_BUILD_ID"]
open(sys.argv[1], "w").write(token)
def call(method, path):
    request = urllib.request.Request(url + path, method=method,
                                     headers={"Authorization": "Bearer " + token})
    try:
        with urllib.request.urlopen(request) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
status, body = call("GET", "/api/builds/" + me)
print("own build", status, json.loads(body)["status"])
status, body = call("GET", "/api/builds/" + me + "/logs")
print("own logs", status, body.splitlines()[0])
for name, method, path in [
    ("same project's other build", "GET", "/api/builds/" + os.environ["SIBLING"]),
    ("other tenant's build", "GET", "/api/builds/" + os.environ["FOREIGN"]),
    ("other build's logs", "GET", "/api/builds/" + os.environ["SIBLING"] + "/logs"),
    ("no such build", "GET", "/api/builds/999999"),
    ("cancel own build", "POST", "/api/builds/" + me + "/cancel"),
    ("list builds", "GET", "/api/builds"),
    ("projects", "GET", "/api/projects"),
    ("secrets", "GET", "/api/projects/shop/secrets"),
    ("tokens", "GET", "/api/tokens"),
]:
    status, body = call(method, path)
    print(name, status, json.loads(body)["detail"])
print("the token itself:", token)
"""


def _log(build: Build) -> str:
    chunks = LogChunk.objects.filter(step__job__build=build).order_by(
        "step__position", "first_line"
    )
    return "\n".join(chunks.values_list("text", flat=True))


def test_a_job_token_reads_its_own_build_and_gets_404_on_any_other(
    live_server: Any, tmp_path: Path
) -> None:
    shop = make_project("shop")
    sibling = submit(shop, "steps:\n  - {name: a, run: 'true'}\n")
    foreign = submit(make_project("other", user="olga"), "steps:\n  - {name: b, run: 'true'}\n")
    Job.objects.filter(build__in=[sibling, foreign]).update(status=Status.SUCCESS)
    saved = tmp_path / "token"
    (tmp_path / "probe.py").write_text(PROBE)
    build = submit(
        shop,
        f"steps:\n  - name: probe\n    run: {sys.executable} {tmp_path}/probe.py {saved}\n",
        env={"URL": live_server.url, "SIBLING": str(sibling.pk), "FOREIGN": str(foreign.pk)},
    )

    run_one(build)

    log = _log(build)
    assert build.status == Status.SUCCESS, log
    assert "own build 200 running" in log
    # The step's own header; its status there may still read "queued": the worker
    # stores a step's start with its first batch, up to 100 ms later.
    assert "own logs 200 ==> probe (" in log
    assert f"same project's other build 404 build {sibling.pk} not found" in log
    assert f"other tenant's build 404 build {foreign.pk} not found" in log
    assert f"other build's logs 404 build {sibling.pk} not found" in log
    assert "no such build 404 build 999999 not found" in log
    refused = f"403 a job token reads only its own build: GET /api/builds/{build.pk} and"
    for call in ("cancel own build", "list builds", "projects", "secrets", "tokens"):
        assert f"{call} {refused}" in log
    token = saved.read_text()
    assert len(token) > 100
    assert token not in log
    assert f"the token itself: {MASK}" in log
    # The job has ended: the same token is no longer accepted, for its own build too.
    assert api_call("get", f"/api/builds/{build.pk}", token).status_code == 401


def test_each_attempt_has_its_own_token_and_only_a_running_one_works() -> None:
    project = make_project()
    build = submit(project, "steps:\n  - {name: a, run: 'true'}\n")
    job = Job.objects.get(build=build)
    Job.objects.filter(pk=job.pk).update(status=Status.RUNNING, attempt=2)
    job.refresh_from_db()
    first = access_tokens.issue_for_job(Job(pk=job.pk, build_id=build.pk, attempt=1), 60)
    second = access_tokens.issue_for_job(job, 60)

    assert api_call("get", f"/api/builds/{build.pk}", first).status_code == 401
    answer = api_call("get", f"/api/builds/{build.pk}", second)
    assert answer.status_code == 200
    assert answer.json()["id"] == build.pk
    logs = api_call("get", f"/api/builds/{build.pk}/logs", second)
    assert logs.status_code == 200
    assert logs["Content-Type"].startswith("text/plain")

    for ended in (Status.SUCCESS, Status.CANCELED, Status.QUEUED):
        Job.objects.filter(pk=job.pk).update(status=ended)
        assert api_call("get", f"/api/builds/{build.pk}", second).status_code == 401


def test_a_job_token_cannot_be_forged_or_stretched(settings: Any) -> None:
    build = submit(make_project(), "steps:\n  - {name: a, run: 'true'}\n")
    job = Job.objects.get(build=build)
    Job.objects.filter(pk=job.pk).update(status=Status.RUNNING)
    good = access_tokens.issue_for_job(job, 60)
    assert api_call("get", f"/api/builds/{build.pk}", good).status_code == 200

    import jwt

    now = timezone.now()
    claims: dict[str, Any] = {"job": job.pk, "att": 1, "bid": build.pk, "iat": now}
    expired = access_tokens.issue_for_job(job, -1)
    wrong_key = jwt.encode(
        {**claims, "exp": now.timestamp() + 60},
        "a guessed key, 32 bytes or more!",
        algorithm="HS256",
    )
    other_build = jwt.encode(
        {**claims, "bid": build.pk + 1, "exp": now.timestamp() + 60},
        access_tokens._key(),
        algorithm="HS256",
    )
    no_exp = jwt.encode(claims, access_tokens._key(), algorithm="HS256")
    strings = jwt.encode(
        {**claims, "job": str(job.pk), "exp": now.timestamp() + 60},
        access_tokens._key(),
        algorithm="HS256",
    )
    for token in (expired, wrong_key, other_build, no_exp, strings):
        assert api_call("get", f"/api/builds/{build.pk}", token).status_code == 401, token
    # A user's JWT cannot pass for a job's, nor the other way round.
    user = User.objects.get(username="ann")
    user_jwt = access_tokens.issue(user=user, scopes=["read"])
    assert api_call("get", "/api/projects", user_jwt).status_code == 200
    assert api_call("get", "/api/projects", good).status_code == 403


def test_the_token_is_in_every_step_env_and_masked_in_the_stored_log(tmp_path: Path) -> None:
    build = submit(
        make_project(),
        """
        steps:
          - name: one
            run: 'echo "one $GOCI_JOB_TOKEN"; printf %s "$GOCI_JOB_TOKEN" | base64 -w0; echo'
          - name: two
            run: 'echo "two ${#GOCI_JOB_TOKEN} chars: $GOCI_JOB_TOKEN"'
        """,
    )
    run_one(build)

    log = _log(build)
    assert build.status == Status.SUCCESS, log
    assert f"one {MASK}" in log
    assert f"chars: {MASK}" in log
    assert "eyJ" not in log  # no piece of a JWT (its header's base64) nor base64 of it
    steps = Step.objects.filter(job__build=build)
    assert all(step.status == Status.SUCCESS for step in steps)
    assert "GOCI_JOB_TOKEN" not in json.dumps(build.env)
