"""The Docker executor against the real engine: isolation, limits, timeouts, cleanup."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from runners.engine import Engine, Status
from runners.executors import ByImage
from runners.executors.docker import (
    CAPABILITIES,
    LABEL_OWNER,
    LABEL_RUN,
    DockerExecutor,
    Limits,
)
from runners.executors.local import LocalExecutor
from runners.owner import owner_label
from tests.conftest import TEST_IMAGE
from tests.helpers import REPO, Recorder, goci, pipeline, write_pipeline

pytestmark = pytest.mark.docker

# The documented capability set (docs/security.md) as the kernel shows it.
CAP_BITS = {"CHOWN": 0, "DAC_OVERRIDE": 1, "FOWNER": 3, "FSETID": 4, "KILL": 5, "SETGID": 6}
CAP_BITS["SETUID"] = 7
EXPECTED_CAPS = f"{sum(1 << CAP_BITS[c] for c in CAPABILITIES):016x}"


def run_in_docker(
    client: Any, text: str, workspace: Path, limits: Limits | None = None, **options: Any
) -> Recorder:
    rec = Recorder()
    executor = ByImage(
        LocalExecutor(workspace),
        DockerExecutor(client, workspace, limits=limits, **options.pop("executor", {})),
    )
    text = f"image: {TEST_IMAGE}\n{textwrap.dedent(text)}"
    Engine(pipeline(text), executor, rec, **options).run()
    return rec


def goci_containers(client: Any, owner_pid: int | None = None) -> list[dict[str, Any]]:
    """Goci's containers as the engine lists them (one call: no race with removal)."""
    found = client.api.containers(all=True, filters={"label": LABEL_RUN})
    if owner_pid is not None:
        found = [c for c in found if f":{owner_pid}:" in c["Labels"].get(LABEL_OWNER, "")]
    return found


def running(client: Any, owner_pid: int | None = None) -> int:
    return sum(c["State"] == "running" for c in goci_containers(client, owner_pid))


def test_steps_share_files_through_the_workspace(docker_client: Any, tmp_path: Path) -> None:
    rec = run_in_docker(
        docker_client,
        """
        steps:
          - {name: Write, run: 'echo built > artefact; pwd'}
          - {name: Read, run: 'cat artefact; echo "$GOCI_WORKSPACE $GOCI_STEP_NAME $CI"'}
        """,
        tmp_path,
    )
    assert rec.text("Write") == ["/workspace"]
    assert rec.text("Read") == ["built", "/workspace Read true"]
    assert (tmp_path / "artefact").read_text() == "built\n"


def test_output_matches_the_local_executor(docker_client: Any, tmp_path: Path) -> None:
    script = r"""
        steps:
          - run: |
              echo one; echo two >&2; echo three
              printf 'bad \377\376 bytes\n'
              head -c 200000 /dev/zero | tr '\0' x
              exit 3
    """
    rec = run_in_docker(docker_client, script, tmp_path)
    lines = rec.text("step 1")
    assert lines[:4] == ["one", "two", "three", "bad \ufffd\ufffd bytes"]
    assert lines[4:] == ["x" * 65536] * 3 + ["x" * (200000 - 3 * 65536)]
    assert rec.results["step 1"].exit_code == 3
    assert rec.status("step 1") == "failure"


def test_parallel_container_steps_overlap(docker_client: Any, tmp_path: Path) -> None:
    rec = run_in_docker(
        docker_client,
        """
        steps:
          - {name: A, run: sleep 1, parallel: true}
          - {name: B, run: sleep 1, parallel: true}
        """,
        tmp_path,
    )
    t = {(kind, name): at for kind, name, at in rec.events}
    assert t[("started", "B")] < t[("finished", "A")]
    assert t[("started", "A")] < t[("finished", "B")]
    assert rec.status("A") == rec.status("B") == "success"


def test_a_step_sees_nothing_of_the_host(docker_client: Any, tmp_path: Path) -> None:
    secret = tmp_path / "outside-secret"
    secret.write_text("host only")
    workspace = tmp_path / "ws"
    workspace.mkdir()
    rec = run_in_docker(
        docker_client,
        f"""
        steps:
          - run: |
              test ! -e {secret} && echo "no host file"
              test ! -e /var/run/docker.sock && test ! -e /run/docker.sock && echo "no socket"
              grep -E '^(NoNewPrivs|CapEff|CapBnd|CapPrm):' /proc/self/status
              cat /proc/1/cmdline | tr '\\0' ' '; echo
        """,
        workspace,
    )
    lines = rec.text("step 1")
    assert lines[:2] == ["no host file", "no socket"]
    status = dict(line.split(":\t") for line in lines[2:6])
    assert status == {
        "CapPrm": EXPECTED_CAPS,
        "CapEff": EXPECTED_CAPS,
        "CapBnd": EXPECTED_CAPS,
        "NoNewPrivs": "1",
    }
    assert lines[6].startswith("/sbin/docker-init -- ")  # an init reaps zombies


def test_the_container_is_unprivileged_and_limited(docker_client: Any, tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    def inspect_while_running() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not seen:
            for container in goci_containers(docker_client, os.getpid()):
                with contextlib.suppress(docker.errors.NotFound):
                    seen.update(docker_client.api.inspect_container(container["Id"]))
            time.sleep(0.05)

    watcher = threading.Thread(target=inspect_while_running)
    watcher.start()
    rec = run_in_docker(
        docker_client,
        "steps: [{name: Wait, run: sleep 2}]",
        tmp_path,
        limits=Limits(memory=256 << 20, cpus=0.5, pids=100),
    )
    watcher.join()
    assert rec.status("Wait") == "success"
    host = seen["HostConfig"]
    assert host["Privileged"] is False
    assert host["CapDrop"] == ["ALL"]
    assert sorted(host["CapAdd"]) == sorted(CAPABILITIES)
    assert host["SecurityOpt"] == ["no-new-privileges:true"]
    assert host["Init"] is True
    assert host["PidsLimit"] == 100
    assert host["Memory"] == 256 << 20
    assert host["MemorySwap"] == 256 << 20
    assert host["NanoCpus"] == 500_000_000
    assert host["NetworkMode"].startswith("goci-")
    assert host["NetworkMode"] != "host"
    assert [(m["Type"], m["Destination"]) for m in seen["Mounts"]] == [("bind", "/workspace")]
    assert seen["Config"]["Labels"]["goci.step"] == "Wait"
    assert seen["Config"]["Labels"][LABEL_OWNER] == owner_label()


def test_a_fork_bomb_fails_while_the_host_and_a_parallel_step_carry_on(
    docker_client: Any, tmp_path: Path
) -> None:
    started = time.monotonic()
    rec = run_in_docker(
        docker_client,
        """
        steps:
          - {name: Bomb, run: 'bomb() { bomb | bomb & }; bomb; sleep 30', timeout: 5s,
             parallel: true}
          - {name: Calm, run: 'sleep 2; echo still fine', parallel: true}
        """,
        tmp_path,
        limits=Limits(cpus=1.0),
    )
    # The host can still start processes while the bomb is defused.
    assert subprocess.run(["true"], check=False, timeout=5).returncode == 0
    assert rec.status("Bomb") == "failure"
    assert rec.results["Bomb"].error == "timed out after 5s"
    assert rec.status("Calm") == "success"
    assert rec.text("Calm") == ["still fine"]
    assert time.monotonic() - started < 20


def test_a_memory_hog_ends_with_the_out_of_memory_message(
    docker_client: Any, tmp_path: Path
) -> None:
    rec = run_in_docker(
        docker_client,
        # The shell keeps the whole 300 MB in one variable.
        r"""
        steps:
          - {name: Hog, run: 'x=$(head -c 300000000 /dev/zero | tr "\0" x); echo ${#x}'}
        """,
        tmp_path,
        limits=Limits(memory=64 << 20),
    )
    assert rec.status("Hog") == "failure"
    assert rec.results["Hog"].error == "out of memory (limit 64 MiB)"


def test_a_timeout_kills_a_container_that_ignores_term(docker_client: Any, tmp_path: Path) -> None:
    began = time.monotonic()
    rec = run_in_docker(
        docker_client,
        "steps: [{name: Stubborn, run: \"trap '' TERM; sleep 1000\", timeout: 1s}]",
        tmp_path,
    )
    assert rec.status("Stubborn") == "failure"
    assert rec.results["Stubborn"].error == "timed out after 1s"
    assert time.monotonic() - began < 6
    assert goci_containers(docker_client) == []


def test_cancel_stops_and_removes_every_container(docker_client: Any, tmp_path: Path) -> None:
    rec = Recorder()
    executor = ByImage(LocalExecutor(tmp_path), DockerExecutor(docker_client, tmp_path))
    text = f"""
        image: {TEST_IMAGE}
        steps:
          - {{name: A, run: sleep 100, parallel: true}}
          - {{name: B, run: "trap '' TERM; sleep 100", parallel: true}}
          - {{name: C, run: "true"}}
    """
    engine = Engine(pipeline(text), executor, rec)
    thread = threading.Thread(target=engine.run)
    thread.start()
    deadline = time.monotonic() + 20
    while running(docker_client, os.getpid()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    began = time.monotonic()
    engine.cancel()
    thread.join(timeout=10)
    assert time.monotonic() - began < 3
    assert rec.status("A") == rec.status("B") == "canceled"
    assert rec.status("C") == "skipped"
    assert goci_containers(docker_client) == []
    assert docker_client.networks.list(filters={"label": LABEL_RUN}) == []


def test_a_missing_image_is_an_error_within_seconds_and_skips_dependents(
    docker_client: Any, tmp_path: Path
) -> None:
    began = time.monotonic()
    rec = run_in_docker(
        docker_client,
        """
        steps:
          - {name: Build, image: goci-test/does-not-exist:1, run: "true"}
          - {name: Ship, run: "true"}
        """,
        tmp_path,
    )
    assert time.monotonic() - began < 10
    assert rec.status("Build") == "error"
    error = rec.results["Build"].error or ""
    assert error.startswith("could not pull image 'goci-test/does-not-exist:1': ")
    assert rec.text("Build")[0] == "[goci] pulling goci-test/does-not-exist:1"
    assert rec.results["Ship"].error == "'Build' could not run"


def test_pull_policy_never_refuses_a_missing_image(docker_client: Any, tmp_path: Path) -> None:
    rec = run_in_docker(
        docker_client,
        "steps: [{name: Build, image: goci-test/absent:2, run: 'true'}]",
        tmp_path,
        executor={"pull_policy": "never"},
    )
    assert rec.results["Build"].error == (
        "image 'goci-test/absent:2' is not on this machine and GOCI_PULL_POLICY is never: "
        "pull it with `docker pull goci-test/absent:2` or change the policy"
    )


def test_a_workdir_symlink_out_of_the_workspace_is_an_error(
    docker_client: Any, tmp_path: Path
) -> None:
    (tmp_path / "link").symlink_to("/etc")
    rec = run_in_docker(docker_client, "steps: [{run: pwd, workdir: link}]", tmp_path)
    assert rec.results["step 1"].error == "workdir 'link' is outside the workspace"


def test_orphans_of_a_dead_run_are_pruned_and_live_ones_kept(
    docker_client: Any, tmp_path: Path
) -> None:
    api = docker_client.api
    dead = api.create_container(
        TEST_IMAGE, ["true"], labels={LABEL_RUN: "dead", LABEL_OWNER: "gone:999999999:1"}
    )["Id"]
    alive = api.create_container(
        TEST_IMAGE, ["true"], labels={LABEL_RUN: "alive", LABEL_OWNER: owner_label()}
    )["Id"]
    try:
        rec = run_in_docker(docker_client, "steps: [{run: 'true'}]", tmp_path)
        assert rec.status("step 1") == "success"
        ids = {c["Id"] for c in goci_containers(docker_client)}
        assert dead not in ids
        assert alive in ids
    finally:
        api.remove_container(alive, force=True)
        if dead in {c["Id"] for c in goci_containers(docker_client)}:
            api.remove_container(dead, force=True)


def test_goci_docker_prune_removes_orphans(docker_client: Any, tmp_path: Path) -> None:
    orphan = docker_client.api.create_container(
        TEST_IMAGE, ["true"], labels={LABEL_RUN: "x", LABEL_OWNER: "gone:1:1"}
    )["Id"]
    name = docker_client.api.inspect_container(orphan)["Name"].lstrip("/")
    done = goci("docker", "prune", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"removed container {name}" in done.stdout
    assert orphan not in {c["Id"] for c in goci_containers(docker_client)}


def test_goci_run_with_an_image_prints_like_the_local_executor(
    docker_client: Any, tmp_path: Path
) -> None:
    write_pipeline(
        tmp_path,
        f"""\
image: {TEST_IMAGE}
steps:
  - {{name: Hello, run: echo hello}}
  - {{name: Fail, run: exit 4}}
""",
    )
    done = goci("run", cwd=tmp_path)
    assert done.returncode == 1
    assert "Hello | hello" in done.stdout
    assert "Hello ✔ success exit 0" in done.stdout
    assert "Fail  ✘ failure exit 4" in done.stdout


def test_ctrl_c_on_goci_run_removes_every_container(docker_client: Any, tmp_path: Path) -> None:
    write_pipeline(
        tmp_path,
        f"""\
image: {TEST_IMAGE}
steps:
  - {{name: A, run: sleep 100, parallel: true}}
  - {{name: B, run: "trap '' TERM INT; sleep 100", parallel: true}}
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
    deadline = time.monotonic() + 20
    while running(docker_client, proc.pid) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    began = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    assert time.monotonic() - began < 3
    assert proc.returncode == 130, err
    assert "A ■ canceled" in out
    assert goci_containers(docker_client) == []
    assert docker_client.networks.list(filters={"label": LABEL_RUN}) == []


def test_an_unreachable_engine_exits_2_before_any_step(tmp_path: Path) -> None:
    write_pipeline(tmp_path, f"image: {TEST_IMAGE}\nsteps: [{{run: touch ran}}]")
    done = goci("run", cwd=tmp_path, env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert done.returncode == 2
    assert "goci: cannot reach the Docker engine at unix:///nonexistent/docker.sock: " in (
        done.stderr
    )
    assert "is dockerd running and may this user use it?" in done.stderr
    assert done.stdout == ""
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("GOCI_PULL_POLICY", "sometimes", "GOCI_PULL_POLICY='sometimes': use one of"),
        ("GOCI_STEP_MEMORY", "lots", "GOCI_STEP_MEMORY, GOCI_STEP_CPUS or GOCI_STEP_PIDS"),
        ("GOCI_STEP_CPUS", "-1", "GOCI_STEP_CPUS and GOCI_STEP_PIDS must be positive"),
    ],
)
def test_bad_operator_settings_exit_2(
    tmp_path: Path, variable: str, value: str, message: str
) -> None:
    write_pipeline(tmp_path, f"image: {TEST_IMAGE}\nsteps: [{{run: touch ran}}]")
    done = goci("run", cwd=tmp_path, env={variable: value})
    assert done.returncode == 2
    assert message in done.stderr
    assert not (tmp_path / "ran").exists()


def test_local_steps_still_run_on_the_host_beside_container_steps(
    docker_client: Any, tmp_path: Path
) -> None:
    rec = Recorder()
    executor = ByImage(LocalExecutor(tmp_path), DockerExecutor(docker_client, tmp_path))
    text = f"""
        steps:
          - {{name: InBox, image: {TEST_IMAGE}, run: 'echo $GOCI_WORKSPACE'}}
          - {{name: OnHost, run: 'echo $GOCI_WORKSPACE'}}
    """
    result = Engine(pipeline(text), executor, rec).run()
    assert result.status is Status.SUCCESS
    assert rec.text("InBox") == ["/workspace"]
    assert rec.text("OnHost") == [str(tmp_path.resolve())]


@pytest.fixture
def local_registry(docker_client: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A real registry (Debian's docker-registry) on localhost holding the test image."""
    from tests.registry import registry

    with registry(tmp_path_factory.mktemp("registry"), auth=False) as running:
        image = f"{running.host}/goci-test/pull-me:1"
        try:
            # A layer of its own, so that pulling really downloads something.
            maker = docker_client.containers.create(TEST_IMAGE, ["sh", "-c", "echo x > /marker"])
            try:
                maker.start()
                maker.wait()
                repository, tag = image.rsplit(":", 1)
                maker.commit(repository=repository, tag=tag)
            finally:
                maker.remove(force=True)
            docker_client.images.push(image)
            docker_client.images.remove(image)
            yield image
        finally:
            with contextlib.suppress(docker.errors.ImageNotFound):
                docker_client.images.remove(image)


def test_a_missing_image_is_pulled_with_progress_in_the_step_log(
    docker_client: Any, local_registry: str, tmp_path: Path
) -> None:
    rec = run_in_docker(
        docker_client,
        f"""
        steps:
          - {{name: A, image: "{local_registry}", run: echo pulled, parallel: true}}
          - {{name: B, image: "{local_registry}", run: echo same image, parallel: true}}
        """,
        tmp_path,
    )
    assert rec.status("A") == rec.status("B") == "success"
    pulled = rec.text("A") if rec.text("A")[0].startswith("[goci] pulling") else rec.text("B")
    assert pulled[0] == f"[goci] pulling {local_registry}"
    assert "[goci] 1: Pulling from goci-test/pull-me" in pulled
    assert any(line.endswith(": Pull complete") for line in pulled), pulled
    assert any(line.startswith("[goci] Status: Downloaded newer image") for line in pulled)
    assert pulled[-1] in ("pulled", "same image")
    # One pull per image per run: the other step found it present.
    assert sum(text[0].startswith("[goci] pulling") for text in (rec.text("A"), rec.text("B"))) == 1


def test_an_unreachable_registry_gives_up_without_hanging(
    docker_client: Any, tmp_path: Path
) -> None:
    began = time.monotonic()
    rec = run_in_docker(
        docker_client,
        # 10.255.255.1 is not routed: a connect there hangs until someone gives up.
        "steps: [{name: Build, image: '10.255.255.1:5000/nothing:1', run: 'true'}]",
        tmp_path,
        executor={"pull_timeout": 2},
    )
    assert time.monotonic() - began < 8
    assert rec.status("Build") == "error"
    assert (rec.results["Build"].error or "").startswith(
        "could not pull image '10.255.255.1:5000/nothing:1': "
    )
