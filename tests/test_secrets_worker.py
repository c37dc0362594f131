"""Secrets in a build run by the worker: a step gets only those it asks for, and every
form of their values is masked in the stored log, the live frames, the raw download
and the step's error; a build that may not have a secret ends in error before any step
runs."""

from __future__ import annotations

import base64
import sys
import textwrap
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from builds.models import Build, LogChunk, Status, Step
from builds.secrets import secret_set
from runners.lines import MASK, MAX_LINE_BYTES
from runners.worker import Worker
from tests.conftest import TEST_IMAGE
from tests.queue_helpers import make_project, submit

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "s3cr3t/t0ken+value=42"  # noqa: S105  (a test value, in every form below)
PEM = textwrap.dedent(
    """\
    -----BEGIN TEST KEY-----
    MIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8Qu
    KUpRKfFLfRYC9AIKjbJTWit+CqvjWYzvQwECAwEAAQJAIJLixBy2qpFoS4DSmoEm
    -----END TEST KEY-----"""
)
PEM_LINES = [line for line in PEM.split("\n") if "TEST KEY" not in line]
URL_ENCODE = 'import os, urllib.parse as u; print(u.quote(os.environ["TOKEN"], safe=""))'
# Counts the processes of this machine whose command line holds the token.
IN_PS = (
    "import glob, os; v = os.environ['TOKEN'].encode(); "
    "print('processes showing it:', sum(v in open(p, 'rb').read() "
    "for p in glob.glob('/proc/[0-9]*/cmdline') if os.access(p, os.R_OK)))"
)
# The token printed so that the 64 KiB cut of a long line falls in its middle.
BEFORE_CUT = MAX_LINE_BYTES - len(TOKEN) // 2

PIPELINE = f"""
env:
  TOKEN: {{from_secret: deploy_token}}
steps:
  - name: leak
    env: {{PEM_KEY: {{from_secret: pem_key}}}}
    run: |
      echo "plain: $TOKEN"
      printf '%s' "$TOKEN" | base64
      echo "$TOKEN" | base64
      echo "again $TOKEN" | base64
      printf '%s\\n' "$PEM_KEY"
      printf '%s' "$PEM_KEY" | base64 -w 0; echo
      {sys.executable} -c '{URL_ENCODE}'
      head -c {BEFORE_CUT} /dev/zero | tr '\\0' x; echo "$TOKEN tail"
      echo "PEM_KEY in this step: ${{PEM_KEY:+yes}}"
      {sys.executable} -c "{IN_PS}"
  - name: other
    run: 'echo "PEM_KEY in this step: ${{PEM_KEY:-no}}"; exit 3'
"""


class Frames:
    """The channel layer's side of the worker's Publisher: what browsers are sent."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    def publish(self, build_id: int, message: dict[str, Any]) -> None:
        self.messages.append(message)

    def close(self) -> None:
        pass


def run(build: Build) -> Frames:
    frames = Frames()
    worker = Worker(name="w1")
    worker.publisher = frames  # type: ignore[assignment]
    try:
        assert worker.run_one_job() is True
    finally:
        worker.close()
    build.refresh_from_db()
    return frames


def leaks(text: str) -> list[str]:
    """The values, or pieces of them, that the text gives away."""
    forms = [TOKEN, *PEM_LINES, base64.b64encode(TOKEN.encode()).decode()[:-4]]
    forms += [base64.b64encode(PEM.encode()).decode()[8:40], "s3cr3t%2Ft0ken"]
    forms += [TOKEN[: len(TOKEN) // 2 + 1], TOKEN[len(TOKEN) // 2 - 1 :]]
    return [form for form in forms if form in text]


def test_every_form_of_a_printed_secret_is_masked_everywhere() -> None:
    project = make_project("shop")
    owner = User.objects.get(username="ann")
    secret_set(project=project, name="DEPLOY_TOKEN", value=TOKEN, user=owner)
    secret_set(project=project, name="PEM_KEY", value=PEM, user=owner)
    build = submit(project, PIPELINE, trigger=Build.Trigger.PUSH, ref="refs/heads/main")

    frames = run(build)

    assert TOKEN not in build.pipeline
    leak, other = Step.objects.filter(job__build=build).order_by("position")
    assert (leak.status, other.status) == (Status.SUCCESS, Status.FAILURE)
    stored = "\n".join(
        LogChunk.objects.filter(step__job__build=build).values_list("text", flat=True)
    )
    assert leaks(stored) == []
    assert stored.count(MASK) >= 11  # each form printed above
    assert "plain: ********" in stored
    assert "x" * 100 + MASK in stored  # the token cut by the 64 KiB split
    assert "PEM_KEY in this step: yes" in stored
    assert "PEM_KEY in this step: no" in stored  # only the step that asked got it
    assert "processes showing it: 0" in stored  # not in ps, nor in a step's command line
    live = "\n".join(
        line for m in frames.messages if m["type"] == "log.lines" for line in m["lines"]
    )
    assert live == stored  # the same lines went out
    assert leaks(live) == []
    client = Client()
    client.force_login(owner)
    raw = b"".join(client.get(f"/builds/{build.pk}/log.txt").streaming_content)  # type: ignore[attr-defined]
    assert leaks(raw.decode()) == []
    assert b"plain: ********" in raw


def test_an_unknown_secret_ends_the_build_in_error_naming_it_and_the_step() -> None:
    build = submit(
        make_project(),
        "steps:\n  - name: deploy\n    env: {T: {from_secret: nope}}\n    run: echo hi\n",
    )

    run(build)

    assert build.status == Status.ERROR
    step = Step.objects.get(job__build=build)
    assert step.status == Status.ERROR
    assert step.error == "step 'deploy' asks for secret NOPE, which does not exist"
    assert not LogChunk.objects.exists()  # nothing ran


def test_a_secret_not_given_to_the_event_ends_the_build_naming_the_rule() -> None:
    project = make_project()
    secret_set(project=project, name="DEPLOY_TOKEN", value=TOKEN, user=None)
    build = submit(
        project,
        "steps:\n  - name: deploy\n    env: {T: {from_secret: deploy_token}}\n    run: echo\n",
        trigger=Build.Trigger.PULL_REQUEST,
    )

    run(build)

    assert build.status == Status.ERROR
    assert Step.objects.get(job__build=build).error == (
        "step 'deploy' asks for secret DEPLOY_TOKEN, which is not given to pull_request "
        "builds (its events: push, tag, manual, cron, api)"
    )


def test_a_fork_build_runs_with_no_secret_and_so_does_its_rerun() -> None:
    """As in GitHub Actions and Woodpecker: a fork's code runs, and the variables it
    asks secrets for stay unset."""
    project = make_project()
    owner = User.objects.get(username="ann")
    secret_set(
        project=project, name="DEPLOY_TOKEN", value=TOKEN, user=None, events=["pull_request"]
    )
    pipeline = (
        "steps:\n  - name: deploy\n    env: {T: {from_secret: deploy_token}}\n"
        '    run: echo "T=${T:-unset}"\n'
    )
    build = submit(project, pipeline, trigger=Build.Trigger.PULL_REQUEST)
    Build.objects.filter(pk=build.pk).update(fork=True)
    build.refresh_from_db()

    run(build)
    from builds import services

    rerun = services.build_rerun(build=build, author=owner)
    run(rerun)

    for each in (build, rerun):
        assert each.status == Status.SUCCESS
        step = Step.objects.get(job__build=each)
        assert LogChunk.objects.get(step=step).text == "T=unset"


def test_a_step_that_when_skips_needs_no_secret() -> None:
    """A pull request's build skips the deploy step kept for pushes: the secret that
    step asks for, not given to pull requests, does not stop the build."""
    project = make_project()
    secret_set(project=project, name="DEPLOY_TOKEN", value=TOKEN, user=None)  # not for PRs
    pipeline = """
        steps:
          - name: test
            run: echo tested
          - name: deploy
            when: {event: push}
            env: {T: {from_secret: deploy_token}}
            run: echo "deploying with $T"
        """
    pull = submit(project, pipeline, trigger=Build.Trigger.PULL_REQUEST, ref="refs/pull/1/head")
    push = submit(project, pipeline, trigger=Build.Trigger.PUSH, ref="refs/heads/main")

    run(pull)
    run(push)

    steps = dict(Step.objects.filter(job__build=pull).values_list("name", "status"))
    assert (pull.status, steps) == (Status.SUCCESS, {"test": "success", "deploy": "skipped"})
    deploy = Step.objects.get(job__build=push, name="deploy")
    assert (push.status, deploy.status) == (Status.SUCCESS, Status.SUCCESS)
    assert LogChunk.objects.get(step=deploy).text == "deploying with ********"


@pytest.mark.docker
def test_a_container_step_gets_its_secret_masked_and_its_command_line_holds_none(
    docker_client: Any,
) -> None:
    project = make_project()
    secret_set(project=project, name="DEPLOY_TOKEN", value=TOKEN, user=None)
    build = submit(
        project,
        f"""
        steps:
          - name: boxed
            image: {TEST_IMAGE}
            env: {{T: {{from_secret: deploy_token}}}}
            run: |
              test "${{#T}}" = {len(TOKEN)} && echo "got $T"
              printf '%s' "$T" > /tmp/value
              echo "in a command line: $(cat /proc/[0-9]*/cmdline | grep -c -F -f /tmp/value)"
        """,
        trigger=Build.Trigger.PUSH,
        ref="refs/heads/main",
    )

    run(build)

    assert build.status == Status.SUCCESS
    stored = LogChunk.objects.get().text
    assert stored.split("\n") == ["got ********", "in a command line: 0"]
