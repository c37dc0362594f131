"""`ssh:` steps against a real OpenSSH server (Debian's sshd, started here on
127.0.0.1 with a throwaway key): the script runs there, its output is the step's
log and its exit code the step's; an unknown or changed host key, a refused key and a
host that cannot be reached fail the step saying so; the key never reaches a file,
a container or the log; a cancel ends the step at once."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from builds.pipeline import load, with_secret_values
from runners.engine import Engine, Status
from runners.executors import ByImage
from runners.executors.ssh import SshExecutor
from tests.helpers import Recorder, goci, write_pipeline
from tests.sshd import Sshd, keygen, sshd

OTHER_KEY = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"


@pytest.fixture
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    with sshd(tmp_path_factory.mktemp("ssh")) as running:
        yield running


def deploy(server: Sshd, script: str, **more: object) -> str:
    options = "".join(f"\n      {key}: {value}" for key, value in more.items())
    body = "\n".join(f"        {line}" for line in script.splitlines())
    return f"""
steps:
  - name: deploy
    ssh:
      host: 127.0.0.1
      port: {server.port}
      user: root
      key_secret: ssh_key
      known_hosts_secret: ssh_known_hosts{options}
      script: |
{body}
"""


def run(text: str, secrets: dict[str, str]) -> Recorder:
    pipeline = with_secret_values(load(text, "test.yml"), secrets)
    recorder = Recorder()
    Engine(pipeline, ByImage(None, None, None, SshExecutor()), recorder).run()
    return recorder


def secrets(server: Sshd, **override: str) -> dict[str, str]:
    return {"SSH_KEY": server.key, "SSH_KNOWN_HOSTS": server.known_hosts, **override}


def test_the_script_runs_there_with_its_output_and_exit_code(server: Sshd, tmp_path: Path) -> None:
    record = tmp_path / f"received-{uuid.uuid4().hex}"
    script = (
        f'echo "deploying as $(id -un) in $PWD" > {record}\n'
        "echo to stdout\n"
        "echo to stderr >&2\n"
        "read -r line || echo 'stdin is empty'\n"
        "exit 3\n"
    )

    rec = run(deploy(server, script), secrets(server))

    result = rec.results["deploy"]
    assert result.status is Status.FAILURE
    assert result.exit_code == 3
    assert rec.text("deploy") == ["to stdout", "to stderr", "stdin is empty"]
    assert record.read_text().startswith("deploying as root in /")
    assert not any(line in "\n".join(rec.text("deploy")) for line in server.key.splitlines()[1:-1])


def test_sh_e_stops_at_the_first_failing_command(server: Sshd) -> None:
    rec = run(deploy(server, "echo one\nfalse\necho never"), secrets(server))
    assert rec.results["deploy"].status is Status.FAILURE
    assert rec.text("deploy") == ["one"]


def test_an_unknown_host_key_is_refused_before_anything_runs(server: Sshd, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    other = f"[127.0.0.1]:{server.port + 1} {server.host_key}\n"  # another host's line

    rec = run(deploy(server, f"touch {marker}"), secrets(server, SSH_KNOWN_HOSTS=other))

    result = rec.results["deploy"]
    assert result.status is Status.ERROR
    assert result.error is not None
    assert result.error.startswith(f"the host key of 127.0.0.1:{server.port} (ssh-ed25519 SHA256:")
    assert "is not in the known_hosts_secret SSH_KNOWN_HOSTS" in result.error
    assert f"ssh-keyscan -p {server.port} 127.0.0.1" in result.error
    assert not marker.exists()


def test_a_changed_host_key_is_refused(server: Sshd, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    changed = f"[127.0.0.1]:{server.port} ssh-ed25519 {OTHER_KEY}\n"

    rec = run(deploy(server, f"touch {marker}"), secrets(server, SSH_KNOWN_HOSTS=changed))

    result = rec.results["deploy"]
    assert result.status is Status.ERROR
    assert result.error is not None
    assert result.error.startswith(f"the host key of 127.0.0.1:{server.port} changed")
    assert not marker.exists()


def test_a_key_the_host_does_not_know_is_refused(server: Sshd, tmp_path: Path) -> None:
    keygen(tmp_path / "stranger")
    rec = run(deploy(server, "true"), secrets(server, SSH_KEY=(tmp_path / "stranger").read_text()))
    result = rec.results["deploy"]
    assert result.status is Status.ERROR
    assert result.error == (
        f"127.0.0.1:{server.port} refused the key of key_secret SSH_KEY for user 'root'"
    )


def test_a_host_that_cannot_be_reached_fails_naming_it_and_the_reason(server: Sshd) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    text = deploy(server, "true").replace(f"port: {server.port}", f"port: {closed}")

    started = time.monotonic()
    rec = run(text, secrets(server))

    result = rec.results["deploy"]
    assert result.status is Status.ERROR
    assert result.error is not None
    assert result.error.startswith(f"could not connect to 127.0.0.1:{closed}: ")
    assert "refused" in result.error.lower()
    assert time.monotonic() - started < 5


def test_a_silent_host_fails_within_connect_timeout(server: Sshd) -> None:
    # A listener that never answers SSH's greeting.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        text = deploy(server, "true", connect_timeout="1s").replace(
            f"port: {server.port}", f"port: {port}"
        )
        started = time.monotonic()
        rec = run(text, secrets(server))
        took = time.monotonic() - started

    result = rec.results["deploy"]
    assert result.status is Status.ERROR
    assert result.error is not None
    assert result.error.startswith(f"could not connect to 127.0.0.1:{port}")
    assert took < 4


def test_a_cancel_ends_the_step_at_once(server: Sshd) -> None:
    marker = uuid.uuid4().hex
    pipeline = with_secret_values(
        load(deploy(server, f"echo started {marker}\nsleep 60"), "t.yml"), secrets(server)
    )
    recorder = Recorder()
    engine = Engine(pipeline, ByImage(None, None, None, SshExecutor()), recorder)

    def cancel_when_started() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not recorder.text("deploy"):
            time.sleep(0.02)
        engine.cancel()

    canceller = threading.Thread(target=cancel_when_started)
    canceller.start()
    started = time.monotonic()
    result = engine.run()
    canceller.join()

    assert result.status is Status.CANCELED
    assert recorder.text("deploy") == [f"started {marker}"]
    assert time.monotonic() - started < 10


def test_a_key_that_is_no_private_key_says_so(server: Sshd) -> None:
    rec = run(deploy(server, "true"), secrets(server, SSH_KEY="not a key at all"))
    assert rec.results["deploy"].error == (
        "the key_secret is not a private key Goci can use (Ed25519, ECDSA or RSA, "
        "as ssh-keygen writes it)"
    )


def test_goci_run_deploys_with_the_secrets_given_and_masks_the_key(
    server: Sshd, tmp_path: Path
) -> None:
    record = tmp_path / "deployed"
    write_pipeline(tmp_path, deploy(server, f"echo ok > {record}\ncat {record}"))
    key_file = tmp_path.parent / f"key-{uuid.uuid4().hex}"
    key_file.write_text(server.key)

    done = goci(
        "run",
        "--secret-file",
        f"SSH_KEY={key_file}",
        "--secret",
        f"SSH_KNOWN_HOSTS={server.known_hosts.strip()}",
        cwd=tmp_path,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok" in done.stdout
    assert record.read_text() == "ok\n"
    assert json.dumps(server.key) not in done.stdout


@pytest.mark.django_db(transaction=True)
def test_a_worker_deploys_with_the_projects_secrets_and_the_key_is_nowhere(
    server: Sshd, tmp_path: Path
) -> None:
    from django.contrib.auth.models import User
    from django.db import connection

    from builds.models import Status as BuildStatus
    from builds.models import Step
    from builds.secrets import secret_set
    from tests.queue_helpers import make_project, run_all, submit
    from tests.test_secrets_worker import Frames

    project = make_project("shop")
    owner = User.objects.get(username="ann")
    secret_set(project=project, name="SSH_KEY", value=server.key, user=owner)
    secret_set(project=project, name="SSH_KNOWN_HOSTS", value=server.known_hosts, user=owner)
    record = tmp_path / "deployed"
    build = submit(project, deploy(server, f"echo deployed > {record}\necho done"))
    frames = Frames()

    build = run_all(build, frames)

    step = Step.objects.get(job__build=build, name="deploy")
    assert (build.status, step.status, step.exit_code) == ("success", BuildStatus.SUCCESS, 0)
    assert record.read_text() == "deployed\n"
    key_lines = [line for line in server.key.splitlines() if "PRIVATE KEY" not in line]
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names(cursor):
            cursor.execute(f'SELECT * FROM "{table}"')  # noqa: S608  (our own table names)
            for row in cursor.fetchall():
                assert not any(line in repr(row) for line in key_lines), table
    assert not any(line in json.dumps(frames.messages) for line in key_lines)


def test_the_script_gets_the_steps_env_and_gocis_variables_never_a_secret(
    server: Sshd,
) -> None:
    text = deploy(
        server,
        'echo "v=$VERSION i=$GOCI_INPUT_VERSION s=${SECRET:-none}"\n'
        'echo "t=${GOCI_JOB_TOKEN:-none} q=$QUOTED"',
    )
    text = text.replace(
        "  - name: deploy\n",
        '  - name: deploy\n    env:\n      VERSION: v1\n      QUOTED: "it\'s $HOME"\n'
        "      SECRET: {from_secret: api_token}\n",
    )
    pipeline = with_secret_values(
        load(text, "test.yml"), {**secrets(server), "API_TOKEN": "s3cret-value"}
    )
    recorder = Recorder()
    extra = {"GOCI_INPUT_VERSION": "v2", "GOCI_JOB_TOKEN": "job-token-value"}
    Engine(pipeline, ByImage(None, None, None, SshExecutor()), recorder, env=extra).run()
    assert recorder.results["deploy"].status == Status.SUCCESS
    assert recorder.text("deploy") == ["v=v1 i=v2 s=none", "t=none q=it's $HOME"]
