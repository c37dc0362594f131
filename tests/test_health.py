"""/healthz and /readyz (goci/health.py): what a load balancer or Kubernetes probes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import Client, override_settings

from tests.helpers import REPO

HOST = {"HTTP_HOST": "localhost"}


def test_healthz_answers_without_touching_the_database() -> None:
    # No `db` fixture: pytest-django fails any query this test would make.
    response = Client().get("/healthz", **HOST)
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_is_ok_when_everything_answers(db: None) -> None:
    response = Client().get("/readyz", **HOST)
    assert response.status_code == 200, response.content
    assert response.json() == {
        "status": "ok",
        "checks": {"database": "ok", "migrations": "ok", "channel_layer": "ok"},
    }


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # closed again: connecting is refused


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP server that accepts connections and never answers a byte."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    listener.close()
    for conn in accepted:
        conn.close()
    thread.join(timeout=5)


def _redis_layer(port: int) -> dict[str, Any]:
    return {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [f"redis://127.0.0.1:{port}/0"]},
        }
    }


def test_readyz_is_503_when_the_channel_layer_is_unreachable(db: None) -> None:
    with override_settings(CHANNEL_LAYERS=_redis_layer(_closed_port())):
        response = Client().get("/readyz", **HOST)
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "not ready"
    assert body["checks"] == {
        "database": "ok",
        "migrations": "ok",
        "channel_layer": "unreachable",
    }


def test_readyz_gives_up_on_a_channel_layer_that_does_not_answer(
    db: None, silent_server: int
) -> None:
    import time

    began = time.monotonic()
    with override_settings(CHANNEL_LAYERS=_redis_layer(silent_server)):
        response = Client().get("/readyz", **HOST)
    assert time.monotonic() - began < 5
    assert response.status_code == 503
    assert response.json()["checks"]["channel_layer"] == "no answer within 2 s"


# A Django process of its own (the settings read from its environment), asking
# /readyz through Django's whole request stack between the steps it is given.
SCRIPT = """
import json, sys
import django
django.setup()
from django.core.management import call_command
from django.test import Client
for step in json.loads(sys.argv[1]):
    if step[0] == "migrate":
        call_command("migrate", *step[1:], verbosity=0)
    else:
        response = Client().get("/readyz", HTTP_HOST="localhost")
        print(json.dumps([response.status_code, response.content.decode()]), flush=True)
"""


def _server_process(tmp_path: Path, steps: list[list[str]], **env: str) -> list[Any]:
    base = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(steps)],
        cwd=REPO,
        env={
            **base,
            "DJANGO_SETTINGS_MODULE": "goci.settings",
            "GOCI_DATA_DIR": str(tmp_path),
            "PYTHONPATH": str(REPO),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_readyz_is_503_when_the_database_is_unreachable(tmp_path: Path) -> None:
    password = "not-to-be-shown-7c1e"  # noqa: S105  (a test value that must not leak)
    url = f"postgres://goci:{password}@127.0.0.1:{_closed_port()}/goci"
    [[status, text]] = _server_process(tmp_path, [["readyz"]], DATABASE_URL=url)
    assert status == 503
    assert json.loads(text) == {
        "status": "not ready",
        "checks": {"database": "unreachable", "migrations": "unknown", "channel_layer": "ok"},
    }
    assert password not in text
    assert "127.0.0.1" not in text


# The builds app one migration back: its last migration is then the one not applied.
PREVIOUS = sorted(p.stem for p in (REPO / "builds" / "migrations").glob("0*.py"))[-2]


def test_readyz_is_503_until_every_migration_is_applied(tmp_path: Path) -> None:
    answers = _server_process(
        tmp_path,
        [["migrate"], ["migrate", "builds", PREVIOUS], ["readyz"], ["migrate"], ["readyz"]],
    )
    (before, text), (after, _) = answers
    assert before == 503
    assert json.loads(text)["checks"] == {
        "database": "ok",
        "migrations": "1 not applied",
        "channel_layer": "ok",
    }
    assert after == 200
