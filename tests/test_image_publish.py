"""The users' "Build & Publish" story end to end: a `git push` to a real git server
delivers a signed Gitea push event to Goci; the build's matrix (bot, api, frontend)
becomes three jobs that workers run; each builds its service's image from the pushed
commit and pushes `latest` and the commit's SHA to a real registry (Debian's
docker-registry with htpasswd) with the project's `registry` secret. The six tags
pulled back have the digests recorded on the steps, the page and the API show them;
a pull request builds and pushes nothing; wrong credentials fail clearly and the
password is nowhere: not in the database, the live frames nor the raw log."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client

from builds import services
from builds.models import FINISHED, Build, Job, LogChunk, Status, Step
from builds.secrets import secret_set
from tests.git_server import GitServer, Repo
from tests.helpers import make_token
from tests.queue_helpers import run_all, wait_for
from tests.registry import Registry, registry
from tests.test_push_to_status import CORPUS, HOOK, _project, forge, open_pull_request
from tests.test_runner_client import finished, register, start_runner
from tests.test_secrets_worker import Frames

pytestmark = pytest.mark.django_db(transaction=True)
__all__ = ["forge"]  # the fixture, shared with test_push_to_status

SERVICES = ("bot", "api", "frontend")


def pipeline(host: str) -> str:
    return f"""
matrix:
  SERVICE: [bot, api, frontend]
steps:
  - name: image
    build:
      context: ${{SERVICE}}
      dockerfile: ${{SERVICE}}/Dockerfile
      tags:
        - {host}/acme/${{SERVICE}}:latest
        - {host}/acme/${{SERVICE}}:${{GOCI_COMMIT_SHA}}
      build_args: {{VERSION: "${{GOCI_COMMIT_SHA}}"}}
      push: true
      registry_secret: registry
      cache_from: {host}/acme/${{SERVICE}}:latest
"""


def files(host: str) -> dict[str, str]:
    out = {".goci.yml": pipeline(host)}
    for name in SERVICES:
        out[f"{name}/Dockerfile"] = (
            "FROM goci-test/busybox:latest\nARG VERSION\n"
            f'COPY main.txt /srv/{name}.txt\nRUN echo "$VERSION" > /srv/version\n'
        )
        out[f"{name}/main.txt"] = f"the {name} service\n"
    return out


@pytest.fixture
def reg(tmp_path_factory: pytest.TempPathFactory, docker_client: Any) -> Iterator[Registry]:
    with registry(tmp_path_factory.mktemp("registry")) as running:
        yield running
        for image in docker_client.images.list(name=f"{running.host}/*"):
            for tag in image.tags:
                docker_client.images.remove(tag, force=True)


def pushed(repo: Repo, project: Any, live_url: str, tmp_path: Path, host: str) -> str:
    hook = tmp_path / "hook.py"
    hook.write_text(HOOK)
    repo.on_push(
        [sys.executable, str(hook)],
        env={
            "CORPUS": str(CORPUS / "push-branch.json"),
            "URL": live_url,
            "SECRET": services.webhook_secret(project),
            "CLONE_URL": project.repo_url,
        },
    )
    return repo.commit(files(host), "three services")


def log_of(build: Build) -> str:
    chunks = LogChunk.objects.filter(step__job__build=build)
    return "\n".join(chunks.order_by("step__position", "first_line").values_list("text", flat=True))


def test_a_push_builds_the_matrix_and_publishes_six_tags_with_their_digests(  # noqa: PLR0917
    forge: GitServer,
    live_server: Any,
    settings: Any,
    tmp_path: Path,
    reg: Registry,
    docker_client: Any,
) -> None:
    repo, project = _project(forge, live_server.url, settings)
    owner = User.objects.get(username="ann")
    secret_set(project=project, name="REGISTRY", value=reg.secret(), user=owner)
    sha = pushed(repo, project, live_server.url, tmp_path, reg.host)
    build = Build.objects.get()

    build = run_all(build)

    log = log_of(build)
    assert build.status == Status.SUCCESS, log
    jobs = list(Job.objects.filter(build=build).order_by("id"))
    assert [j.name for j in jobs] == [f"SERVICE={s}" for s in SERVICES]
    steps = {
        s.job.matrix["SERVICE"]: s for s in Step.objects.filter(job__build=build, name="image")
    }
    assert sorted(reg.repositories()) == sorted(f"acme/{s}" for s in SERVICES)
    for name in SERVICES:
        step = steps[name]
        assert step.image_id.startswith("sha256:")
        assert reg.tags(f"acme/{name}") == sorted(["latest", sha])
        assert step.digests == {
            f"{reg.host}/acme/{name}:{tag}": reg.digest(f"acme/{name}", tag)
            for tag in ("latest", sha)
        }
    # Pulled back (the local copies gone first), each tag is the recorded digest.
    for name in SERVICES:
        for tag in ("latest", sha):
            reference = f"{reg.host}/acme/{name}:{tag}"
            docker_client.images.remove(reference, force=True)
            image = docker_client.images.pull(
                reference, auth_config={"username": reg.user, "password": reg.password}
            )
            assert (
                f"{reg.host}/acme/{name}@{steps[name].digests[reference]}"
                in image.attrs["RepoDigests"]
            )
    out = docker_client.containers.run(
        f"{reg.host}/acme/api:{sha}", ["cat", "/srv/api.txt", "/srv/version"], remove=True
    )
    assert out.decode() == f"the api service\n{sha}\n"
    assert reg.password not in log

    client = Client()
    client.force_login(owner)
    page = client.get(f"/builds/{build.pk}/").content.decode()
    api_digest = steps["api"].digests[f"{reg.host}/acme/api:{sha}"]
    assert steps["api"].image_id in page
    assert api_digest in page
    answer = client.get(
        f"/api/builds/{build.pk}", headers={"Authorization": f"Bearer {make_token(owner)}"}
    )
    assert answer.status_code == 200, answer.content
    data = answer.json()
    api_step = next(
        s
        for j in data["jobs"]
        if j["name"] == "SERVICE=api"
        for s in j["steps"]
        if s["name"] == "image"
    )
    assert api_step["image_id"] == steps["api"].image_id
    assert api_step["digests"][f"{reg.host}/acme/api:{sha}"] == api_digest


def test_a_pull_request_builds_and_pushes_nothing(
    forge: GitServer, live_server: Any, settings: Any, reg: Registry
) -> None:
    repo, project = _project(forge, live_url=live_server.url, settings=settings)
    owner = User.objects.get(username="ann")
    secret_set(project=project, name="REGISTRY", value=reg.secret(), user=owner)
    base = repo.commit(files(reg.host), "base")
    head = repo.commit(
        {"api/main.txt": "changed\n"}, "a change", branch="feature", ref="refs/pull/7/head"
    )
    assert open_pull_request(live_server.url, project, base, head, fork=False) == 201
    build = run_all(Build.objects.get())

    log = log_of(build)
    assert build.status == Status.SUCCESS, _debug(build)
    assert log.count("push skipped: pull_request") == 3
    assert reg.repositories() == []
    for step in Step.objects.filter(job__build=build, name="image"):
        assert step.image_id.startswith("sha256:")
        assert step.digests == {}


def test_wrong_credentials_fail_clearly_and_the_password_is_nowhere(
    forge: GitServer,
    live_server: Any,
    settings: Any,
    tmp_path: Path,
    reg: Registry,
) -> None:
    repo, project = _project(forge, live_server.url, settings)
    owner = User.objects.get(username="ann")
    wrong = "not-the-password-7f3e9a"
    secret_set(project=project, name="REGISTRY", value=reg.secret(password=wrong), user=owner)
    pushed(repo, project, live_server.url, tmp_path, reg.host)
    frames = Frames()

    build = run_all(Build.objects.get(), frames)

    assert build.status == Status.FAILURE
    for step in Step.objects.filter(job__build=build, name="image"):
        assert step.status == Status.FAILURE
        assert step.error.startswith(f"the registry {reg.host} refused the credentials")
    assert reg.repositories() == []
    # Nowhere: every table, every frame sent to browsers, the raw log.
    with connection.cursor() as cursor:
        tables = connection.introspection.table_names(cursor)
        for table in tables:
            cursor.execute(f'SELECT * FROM "{table}"')  # noqa: S608  (our own table names)
            for row in cursor.fetchall():
                assert wrong not in repr(row), table
    assert wrong not in json.dumps(frames.messages)
    assert any(m["type"] == "log.lines" for m in frames.messages)
    client = Client()
    client.force_login(owner)
    raw = b"".join(client.get(f"/builds/{build.pk}/log.txt").streaming_content)  # type: ignore[attr-defined]
    assert wrong.encode() not in raw
    assert b"logged in" not in raw


def _debug(build: Build) -> str:
    return repr(list(Step.objects.filter(job__build=build).values_list("name", "status", "error")))


def test_a_remote_runner_builds_and_publishes_the_matrix_too(
    forge: GitServer, live_server: Any, settings: Any, tmp_path: Path, reg: Registry
) -> None:
    """The same push, run by a `goci runner` that reaches the server over HTTP only."""
    repo, project = _project(forge, live_server.url, settings)
    owner = User.objects.get(username="ann")
    secret_set(project=project, name="REGISTRY", value=reg.secret(), user=owner)
    sha = repo.commit(files(reg.host), "three services")
    answer = Client().post(
        "/api/builds",
        {"project": project.slug, "ref": "refs/heads/main", "commit": sha},
        content_type="application/json",
        headers={"Authorization": f"Bearer {make_token(owner)}"},
    )
    assert answer.status_code == 201, answer.content
    build = Build.objects.get()
    config = register(tmp_path, live_server.url, "--capacity", "3")
    runner = start_runner(tmp_path, config, GOCI_CLONE_ALLOWED_HOSTS="127.0.0.1")
    try:
        wait_for(
            lambda: Build.objects.get(pk=build.pk).status in FINISHED, 120, "the runner's build"
        )
    finally:
        runner.send_signal(signal.SIGTERM)
        finished(runner)

    build.refresh_from_db()
    assert build.status == Status.SUCCESS, _debug(build)
    runners = set(Job.objects.filter(build=build).values_list("runner__kind", flat=True))
    assert runners == {"runner"}  # not a worker: the remote runner ran every cell
    for name in SERVICES:
        step = Step.objects.get(job__build=build, job__matrix={"SERVICE": name}, name="image")
        assert step.digests == {
            f"{reg.host}/acme/{name}:{tag}": reg.digest(f"acme/{name}", tag)
            for tag in ("latest", sha)
        }
    assert reg.password not in log_of(build)
