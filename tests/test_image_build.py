"""`build:` steps against the real Docker engine and a real registry (Debian's
docker-registry with htpasswd, started here): the image is built from the workspace,
tagged, pushed with the named secret's credentials, its ID and digests recorded; a
pull request pushes nothing; the layer cache is reused; failures name the instruction
or the tag; nothing leaves the workspace; credentials show nowhere."""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from builds.pipeline import load, with_secret_values
from runners.engine import Engine, Status
from runners.executors import ByImage
from runners.executors.image_build import ImageBuilder, registry_auth
from tests.helpers import Recorder, goci, write_pipeline
from tests.registry import PASSWORD, Registry, registry

TEST_IMAGE = "goci-test/busybox:latest"


@pytest.fixture
def reg(tmp_path_factory: pytest.TempPathFactory, docker_client: Any) -> Iterator[Registry]:
    with registry(tmp_path_factory.mktemp("registry")) as running:
        yield running


@pytest.fixture
def images(docker_client: Any) -> Iterator[list[str]]:
    """Images (tags or IDs) the test made: removed after it, with what they alone hold."""
    made: list[str] = []
    yield made
    for image in reversed(made):
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(image, force=True)


def service(workspace: Path, name: str, *, extra: str = "") -> None:
    """A service's directory: a Dockerfile with a build arg, a COPY and a RUN."""
    directory = workspace / name
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "app.txt").write_text(f"{name} {uuid.uuid4().hex}\n")
    (directory / "Dockerfile").write_text(
        f"FROM {TEST_IMAGE}\nARG VERSION\nCOPY app.txt /app.txt\n"
        f'RUN echo "version $VERSION" > /version\n{extra}'
    )


def run(
    text: str,
    workspace: Path,
    *,
    secrets: dict[str, str] | None = None,
    push_refused: str | None = None,
    env: dict[str, str] | None = None,
) -> Recorder:
    pipeline = load(text, "test.yml")
    if secrets:
        pipeline = with_secret_values(pipeline, secrets)
    recorder = Recorder()
    executor = ByImage(None, None, ImageBuilder(workspace, push_refused=push_refused))
    Engine(pipeline, executor, recorder, env=env or {}).run()
    return recorder


def pushing(reg: Registry, repository: str, **build: str) -> str:
    more = "".join(f"\n      {key}: {value}" for key, value in build.items())
    return f"""
steps:
  - name: image
    build:
      context: api
      tags: ["{reg.host}/{repository}:latest", "{reg.host}/{repository}:${{GOCI_COMMIT_SHA}}"]
      build_args: {{VERSION: "${{GOCI_COMMIT_SHA}}"}}
      push: true
      registry_secret: registry{more}
"""


SHA = "0123456789abcdef0123456789abcdef01234567"


def test_an_image_is_built_tagged_pushed_and_its_digests_recorded(
    tmp_path: Path, reg: Registry, images: list[str], docker_client: Any
) -> None:
    service(tmp_path, "api")
    repository = f"acme/api-{uuid.uuid4().hex[:8]}"
    images += [f"{reg.host}/{repository}:latest", f"{reg.host}/{repository}:{SHA}"]

    rec = run(
        pushing(reg, repository),
        tmp_path,
        secrets={"REGISTRY": reg.secret()},
        env={"GOCI_COMMIT_SHA": SHA},
    )

    log = "\n".join(rec.text("image"))
    assert rec.status("image") == "success", log
    result = rec.results["image"]
    assert result.image_id.startswith("sha256:")
    assert len(result.image_id) == 71
    assert set(result.digests) == set(images)
    assert reg.tags(repository) == sorted(["latest", SHA])
    for tag in ("latest", SHA):
        assert result.digests[f"{reg.host}/{repository}:{tag}"] == reg.digest(repository, tag)
    # The build's own output is the step's log, then what Goci did with the image.
    assert "Step 3/4 : COPY app.txt /app.txt" in log
    assert f"built {result.image_id}" in log
    assert f"pushed {reg.host}/{repository}:{SHA}: {result.digests[images[1]]}" in log
    # The build arg came from the step's environment.
    built = docker_client.images.get(result.image_id)
    assert "VERSION" in json.dumps(built.history())
    out = docker_client.containers.run(result.image_id, ["cat", "/version"], remove=True)
    assert out == f"version {SHA}\n".encode()
    assert PASSWORD not in log  # masked or never written
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and PASSWORD in p.read_text()]


def test_a_pull_request_builds_but_pushes_nothing(
    tmp_path: Path, reg: Registry, images: list[str]
) -> None:
    service(tmp_path, "api")
    repository = f"acme/pr-{uuid.uuid4().hex[:8]}"
    images += [f"{reg.host}/{repository}:latest", f"{reg.host}/{repository}:{SHA}"]

    rec = run(
        pushing(reg, repository),
        tmp_path,
        secrets={"REGISTRY": reg.secret()},
        env={"GOCI_COMMIT_SHA": SHA},
        push_refused="pull_request",
    )

    assert rec.status("image") == "success"
    assert rec.text("image")[0] == "push skipped: pull_request"
    assert rec.results["image"].image_id.startswith("sha256:")
    assert rec.results["image"].digests == {}
    assert repository not in reg.repositories()
    assert reg.tags(repository) == []


def test_an_unchanged_rebuild_reuses_every_layer(
    tmp_path: Path, reg: Registry, images: list[str]
) -> None:
    service(tmp_path, "api")
    repository = f"acme/cache-{uuid.uuid4().hex[:8]}"
    images += [f"{reg.host}/{repository}:latest", f"{reg.host}/{repository}:{SHA}"]
    text = pushing(reg, repository)
    secrets = {"REGISTRY": reg.secret()}
    env = {"GOCI_COMMIT_SHA": SHA}

    started = time.monotonic()
    first = run(text, tmp_path, secrets=secrets, env=env)
    time.monotonic() - started
    started = time.monotonic()
    second = run(text, tmp_path, secrets=secrets, env=env)
    time.monotonic() - started

    assert first.status("image") == second.status("image") == "success"
    assert first.results["image"].image_id == second.results["image"].image_id
    assert first.results["image"].digests == second.results["image"].digests
    log = second.text("image")
    steps = [line for line in log if line.startswith("Step ")]
    # Every instruction after FROM came from the cache.
    assert log.count(" ---> Using cache") == len(steps) - 1 == 3, log


def test_cache_from_pulls_the_pushed_image_so_a_fresh_machine_starts_warm(
    tmp_path: Path, reg: Registry, images: list[str], docker_client: Any
) -> None:
    service(tmp_path, "api")
    repository = f"acme/warm-{uuid.uuid4().hex[:8]}"
    latest = f"{reg.host}/{repository}:latest"
    images += [latest, f"{reg.host}/{repository}:{SHA}"]
    text = pushing(reg, repository, cache_from=latest)
    secrets = {"REGISTRY": reg.secret()}
    first = run(text, tmp_path, secrets=secrets, env={"GOCI_COMMIT_SHA": SHA})
    assert first.status("image") == "success", first.text("image")
    log = first.text("image")
    assert any(f"cache_from: {latest} could not be pulled" in line for line in log)
    # A fresh machine: none of the image's layers are here any more.
    docker_client.images.remove(first.results["image"].image_id, force=True)

    second = run(text, tmp_path, secrets=secrets, env={"GOCI_COMMIT_SHA": SHA})

    log = second.text("image")
    assert second.status("image") == "success", log
    assert f"cache_from: pulling {latest}" in log
    assert log.count(" ---> Using cache") == 3, log


def test_a_failing_instruction_fails_the_step_and_is_named(
    tmp_path: Path, images: list[str], docker_client: Any
) -> None:
    service(tmp_path, "api", extra="RUN echo about to fail && exit 3\n")
    rec = run("steps:\n  - name: image\n    build: api\n", tmp_path)

    result = rec.results["image"]
    assert result.status is Status.FAILURE
    assert result.error is not None
    assert result.error.startswith(
        "the build failed at Step 5/5 : RUN echo about to fail && exit 3"
    )
    assert "returned a non-zero code: 3" in result.error
    assert "about to fail" in rec.text("image")


def test_wrong_credentials_fail_clearly_without_the_password(
    tmp_path: Path, reg: Registry, images: list[str]
) -> None:
    service(tmp_path, "api")
    repository = f"acme/denied-{uuid.uuid4().hex[:8]}"
    wrong = "wrong-password-5a9c7e"
    rec = run(
        pushing(reg, repository),
        tmp_path,
        secrets={"REGISTRY": reg.secret(password=wrong)},
        env={"GOCI_COMMIT_SHA": SHA},
    )

    result = rec.results["image"]
    assert result.status is Status.FAILURE
    assert result.error is not None
    assert result.error.startswith(f"the registry {reg.host} refused the credentials")
    everything = result.error + "\n".join(rec.text("image"))
    assert wrong not in everything
    assert reg.tags(repository) == []


def test_a_push_that_fails_names_the_tag(tmp_path: Path, images: list[str]) -> None:
    service(tmp_path, "api")
    # Nothing listens there: the tag's push fails (no credentials, so no login first).
    with __import__("socket").socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    tag = f"127.0.0.1:{port}/acme/nowhere:1"
    images.append(tag)
    rec = run(
        f"steps:\n  - name: image\n    build: {{context: api, tags: [{tag}], push: true}}\n",
        tmp_path,
    )

    result = rec.results["image"]
    assert result.status is Status.FAILURE
    assert result.error is not None
    assert result.error.startswith(f"pushing {tag} failed:")
    assert result.image_id.startswith("sha256:")


def test_a_context_that_leaves_the_workspace_through_a_symlink_is_refused(
    tmp_path: Path,
) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    outside = tmp_path / "outside"
    service(outside, "api")
    (workspace / "api").symlink_to(outside / "api")
    (workspace / "inner").mkdir()
    (workspace / "inner" / "Dockerfile").write_text(f"FROM {TEST_IMAGE}\n")
    (workspace / "inner" / "secrets").symlink_to("/etc")

    rec = run(
        "steps:\n  - {name: a, build: api}\n  - {name: b, build: inner, needs: []}\n", workspace
    )

    assert rec.status("a") == rec.status("b") == "error"
    assert rec.results["a"].error == (
        f"build.context 'api' leads outside the workspace through a symlink "
        f"(it resolves to {(outside / 'api').resolve()})"
    )
    assert rec.results["b"].error == (
        "build.context 'inner' holds a symlink that leads outside the workspace: "
        "inner/secrets -> /etc"
    )


def test_an_unset_variable_in_a_tag_is_an_error_that_says_how_to_fix_it(tmp_path: Path) -> None:
    service(tmp_path, "api")
    rec = run(
        "steps:\n  - name: image\n    build: {context: api, tags: ['x/y:${NOPE}']}\n", tmp_path
    )
    assert rec.status("image") == "error"
    assert rec.results["image"].error == (
        "build.tags[0]: ${NOPE} is not set in the step's environment "
        "(set it in `env:`, or write $${NOPE} for the text itself)"
    )


def test_a_cancel_stops_the_build_and_leaves_no_build_container(
    tmp_path: Path, images: list[str], docker_client: Any
) -> None:
    marker = uuid.uuid4().hex
    service(tmp_path, "api", extra=f"RUN echo {marker} && sleep 60\n")
    pipeline = load("steps:\n  - name: image\n    build: api\n", "test.yml")
    recorder = Recorder()
    engine = Engine(pipeline, ByImage(None, None, ImageBuilder(tmp_path)), recorder)

    def cancel_when_running() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and marker not in recorder.text("image"):
            time.sleep(0.05)
        engine.cancel()

    canceller = threading.Thread(target=cancel_when_running)
    canceller.start()
    started = time.monotonic()
    result = engine.run()
    canceller.join()

    assert result.status is Status.CANCELED
    assert time.monotonic() - started < 30
    # The engine stopped the build: its RUN container goes (forcerm) within a few seconds.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        running = [
            c
            for c in docker_client.containers.list(all=True, sparse=True)
            if marker in json.dumps(c.attrs.get("Command", ""))
        ]
        if not running:
            break
        time.sleep(0.2)
    assert not running


def test_registry_secret_forms() -> None:
    assert registry_auth('{"username": "u", "password": "p"}') == {"username": "u", "password": "p"}
    assert registry_auth('{"username": "u", "token": "t"}') == {"username": "u", "password": "t"}
    assert registry_auth("tok-123") == {"registrytoken": "tok-123"}
    assert registry_auth('{"token": "t"}') == {"registrytoken": "t"}
    from runners.executors.image_build import BuildProblem

    for bad, words in (
        ("{not json", "not valid JSON"),
        ('{"username": "u"}', 'needs "username" and "password"'),
        ("[1]", None),
    ):
        if words is None:
            assert registry_auth(bad) == {"registrytoken": "[1]"}
            continue
        with pytest.raises(BuildProblem, match=words):
            registry_auth(bad)


def test_a_dockerfile_never_gets_this_machines_docker_credentials(
    tmp_path: Path, reg: Registry, images: list[str], docker_client: Any
) -> None:
    """docker-py sends every credential of ~/.docker/config.json with a build: the
    build's child reads none, so a Dockerfile cannot pull with the server's own. With
    the step's registry secret, the same FROM works."""
    base = f"{reg.host}/private/base:1"
    images.append(base)
    docker_client.images.get(TEST_IMAGE).tag(base)
    auth = {"username": reg.user, "password": reg.password}
    for event in docker_client.api.push(base, stream=True, decode=True, auth_config=auth):
        assert "error" not in event, event
    docker_client.images.remove(base)
    home = tmp_path / "home"
    (home / ".docker").mkdir(parents=True)
    token = base64.b64encode(f"{reg.user}:{reg.password}".encode()).decode()
    (home / ".docker" / "config.json").write_text(
        json.dumps({"auths": {reg.host: {"auth": token}}})
    )
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "Dockerfile").write_text(f"FROM {base}\nRUN true\n")
    tag = f"{reg.host}/private/app:1"
    images.append(tag)
    build = f"{{context: app, tags: ['{tag}'], registry_secret: registry}}"
    text = f"steps:\n  - name: image\n    build: {build}\n"
    write_pipeline(tmp_path, text.replace(", registry_secret: registry", ""))
    machine = {"HOME": str(home), "DOCKER_CONFIG": str(home / ".docker")}

    done = goci("run", cwd=tmp_path, env=machine, timeout=120)

    assert done.returncode == 1, done.stdout + done.stderr
    assert "no basic auth credentials" in done.stdout or "unauthorized" in done.stdout
    write_pipeline(tmp_path, text)
    done = goci("run", "--secret", f"REGISTRY={reg.secret()}", cwd=tmp_path, env=machine)
    assert done.returncode == 0, done.stdout + done.stderr


def test_goci_run_builds_and_pushes_with_the_secret_given_and_masks_it(
    tmp_path: Path, reg: Registry, images: list[str]
) -> None:
    service(tmp_path, "api")
    repository = f"acme/cli-{uuid.uuid4().hex[:8]}"
    images += [f"{reg.host}/{repository}:latest", f"{reg.host}/{repository}:{SHA}"]
    write_pipeline(tmp_path, pushing(reg, repository).replace("${GOCI_COMMIT_SHA}", SHA))

    done = goci("run", "--secret", f"REGISTRY={reg.secret()}", cwd=tmp_path, timeout=120)

    assert done.returncode == 0, done.stdout + done.stderr
    assert f"pushed {reg.host}/{repository}:{SHA}: sha256:" in done.stdout
    assert reg.tags(repository) == sorted(["latest", SHA])
    assert PASSWORD not in done.stdout + done.stderr


def test_goci_run_as_a_pull_request_builds_without_the_secret_and_pushes_nothing(
    tmp_path: Path, reg: Registry, images: list[str]
) -> None:
    service(tmp_path, "api")
    repository = f"acme/cli-pr-{uuid.uuid4().hex[:8]}"
    images += [f"{reg.host}/{repository}:latest", f"{reg.host}/{repository}:{SHA}"]
    write_pipeline(tmp_path, pushing(reg, repository).replace("${GOCI_COMMIT_SHA}", SHA))

    done = goci("run", "--event", "pull_request", cwd=tmp_path, timeout=120)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "push skipped: pull_request" in done.stdout
    assert reg.tags(repository) == []
