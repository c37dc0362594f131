"""Secrets on the command line: `goci run --secret/--secret-file` masks them as the
server does, and `goci secret set|list|delete|rotate-key` manage the server's."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from django.test import override_settings

from builds.models import Secret
from builds.secrets import decrypt
from tests.helpers import goci, make_project, make_user, write_pipeline
from tests.test_cli_users import goci_cli
from tests.test_secrets_worker import PEM, PIPELINE, TOKEN, leaks
from tests.test_up import create_token, embedded_env, goci_up


def test_goci_run_masks_every_form_of_a_secret(tmp_path: Path) -> None:
    write_pipeline(tmp_path, PIPELINE)
    (tmp_path / "key.pem").write_text(PEM + "\n")

    done = goci(
        "run",
        "--secret",
        f"deploy_token={TOKEN}",
        "--secret-file",
        f"PEM_KEY={tmp_path / 'key.pem'}",
        cwd=tmp_path,
    )

    assert done.returncode == 1, done.stderr  # the second step exits 3
    assert leaks(done.stdout + done.stderr) == []
    assert "plain: ********" in done.stdout
    assert "x" * 100 + "********" in done.stdout  # the token cut by the 64 KiB split
    assert "PEM_KEY in this step: yes" in done.stdout
    assert "PEM_KEY in this step: no" in done.stdout
    assert done.stdout.count("********") >= 11


def test_goci_run_refuses_a_missing_or_short_secret_before_anything_runs(
    tmp_path: Path,
) -> None:
    write_pipeline(
        tmp_path, "steps:\n  - {name: s, run: 'touch ran', env: {T: {from_secret: t}}}\n"
    )

    missing = goci("run", cwd=tmp_path)
    short = goci("run", "--secret", "T=abc", cwd=tmp_path)

    assert missing.returncode == short.returncode == 2
    assert missing.stderr == (
        "goci: step 's' asks for secret T: give it with --secret T=VALUE or --secret-file T=PATH\n"
    )
    assert "shorter than 4 characters" in short.stderr
    assert not (tmp_path / "ran").exists()


@pytest.mark.django_db
def test_secret_commands_set_list_delete_and_never_print_a_value(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    make_project(make_user("olivia"), "shop")

    created = goci_cli(capsys, monkeypatch, "secret", "set", "shop", "TOKEN", stdin=TOKEN + "\n")
    changed = goci_cli(
        capsys, monkeypatch, "secret", "set", "shop", "TOKEN", "--events", "tag", stdin=TOKEN
    )
    made_global = goci_cli(
        capsys, monkeypatch, "secret", "set", "--global", "REGISTRY", stdin="registry-pass"
    )
    listed = goci_cli(capsys, monkeypatch, "secret", "list", "shop")
    short = goci_cli(capsys, monkeypatch, "secret", "set", "shop", "PIN", stdin="123")

    assert created == (0, "Created the secret TOKEN of project shop.\n", "")
    assert changed[:2] == (0, "Changed the secret TOKEN of project shop.\n")
    assert made_global[:2] == (0, "Created the secret REGISTRY of every project (global).\n")
    assert decrypt(Secret.objects.get(name="TOKEN").ciphertext) == TOKEN
    code, out, _ = listed
    assert code == 0
    assert [line.split()[:4] for line in out.splitlines()] == [
        ["NAME", "SCOPE", "EVENTS", "BRANCHES"],
        ["REGISTRY", "global", "push,tag,manual,cron,api", "any"],
        ["TOKEN", "project", "tag", "any"],
    ]
    assert TOKEN not in out
    assert short[0] == 2
    assert "at least 4 characters" in short[2]
    assert goci_cli(capsys, monkeypatch, "secret", "delete", "shop", "TOKEN")[0] == 0
    gone = goci_cli(capsys, monkeypatch, "secret", "delete", "shop", "TOKEN")
    assert gone == (2, "", "goci: no secret 'TOKEN' (`goci secret list` shows them)\n")


@pytest.mark.django_db
def test_rotate_key_re_encrypts_every_secret_with_the_first_key(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    make_project(make_user("olivia"), "shop")
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    with override_settings(GOCI_SECRET_KEYS=[old]):
        goci_cli(capsys, monkeypatch, "secret", "set", "shop", "TOKEN", stdin=TOKEN)
        goci_cli(capsys, monkeypatch, "secret", "set", "--global", "OTHER", stdin=TOKEN)
    with override_settings(GOCI_SECRET_KEYS=[new, old]):
        rotated = goci_cli(capsys, monkeypatch, "secret", "rotate-key")
    with override_settings(GOCI_SECRET_KEYS=[new]):
        assert [decrypt(s.ciphertext) for s in Secret.objects.all()] == [TOKEN, TOKEN]

    assert rotated == (0, "Re-encrypted 2 secrets with the first key of GOCI_SECRET_KEYS.\n", "")


def test_goci_up_says_where_the_key_comes_from_and_a_build_gets_a_secret_set_by_cli(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    with goci_up(data_dir) as server:
        server.wait_ready()
        token = create_token(data_dir, "alice")
        server.post("/api/projects", token, {"slug": "demo"})
        done = subprocess.run(
            [sys.executable, "-m", "goci.cli", "secret", "set", "demo", "DEPLOY_TOKEN"],
            input=TOKEN + "\n",
            env=embedded_env(data_dir),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert (done.returncode, done.stdout) == (
            0,
            "Created the secret DEPLOY_TOKEN of project demo.\n",
        )
        pipeline = (
            "steps:\n  - {name: s, run: 'echo got $T', env: {T: {from_secret: deploy_token}}}\n"
        )
        build = server.post("/api/builds", token, {"project": "demo", "pipeline": pipeline})
        deadline = time.monotonic() + 60
        while json.loads(server.get(f"/api/builds/{build['id']}", token)[2])["status"] in (
            "queued",
            "running",
        ):
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.2)
        _, _, logs = server.get(f"/api/builds/{build['id']}/logs", token)
        assert server.stop()[0] == 0

    assert "Secrets: encrypted with a key derived from SECRET_KEY" in server.output()
    assert logs.decode().splitlines()[-1].endswith("got ********"), logs
    assert TOKEN not in server.output()
