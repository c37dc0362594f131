"""The server-side commands as an operator types them: goci token create, goci worker;
and the test session itself, which must not depend on what `make up` left in var/."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

from tests.data_dir import PREFIX
from tests.helpers import REPO
from tests.test_up import embedded_env, manage


def run(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "goci.cli", *args],
        env=embedded_env(data_dir),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("commands") / "data"
    manage_py = [sys.executable, str(REPO / "manage.py"), "migrate", "-v0"]
    subprocess.run(manage_py, env=embedded_env(data), check=True, timeout=120)
    manage(data, "from django.contrib.auth.models import User; User.objects.create_user('ann')")
    return data


def test_token_create_prints_a_token_once_that_authenticates(data_dir: Path) -> None:
    done = run(data_dir, "token", "create", "--user", "ann", "--name", "laptop")
    assert done.returncode == 0, done.stderr
    secret = done.stdout.strip()
    assert secret.startswith("goci_")
    assert "it is shown once" in done.stderr
    found = manage(
        data_dir,
        f"from builds.services import token_user; print(token_user({secret!r}).username)",
    )
    assert found == "ann"
    stored = manage(
        data_dir, "from builds.models import ApiToken; print(ApiToken.objects.get().digest)"
    )
    assert secret not in stored  # only its digest is kept


def test_token_create_for_an_unknown_user_says_how_to_make_one(data_dir: Path) -> None:
    done = run(data_dir, "token", "create", "--user", "nobody")
    assert done.returncode == 2
    assert "goci: no user 'nobody': create one with `goci user add nobody`" in done.stderr


def test_worker_refuses_a_concurrency_below_1(data_dir: Path) -> None:
    done = run(data_dir, "worker", "--concurrency", "0")
    assert done.returncode == 2
    assert "argument --concurrency: '0' is not a whole number of at least 1" in done.stderr


def test_worker_once_with_an_empty_queue_says_so(data_dir: Path) -> None:
    done = run(data_dir, "worker", "--once")
    assert done.returncode == 0, done.stderr
    assert "no job was queued" in done.stdout


def test_the_test_session_keeps_its_data_out_of_the_checkout() -> None:
    # `make up` leaves a database, a secret key and collected static files in var/: the
    # tests must neither read them nor write there (tests/data_dir.py).
    data_dir = settings.GOCI_DATA_DIR
    assert data_dir.name.startswith(PREFIX)
    assert not data_dir.is_relative_to(REPO)
    assert os.environ["GOCI_DATA_DIR"] == str(data_dir)  # for the processes tests start
    assert Path(settings.STATIC_ROOT).is_relative_to(data_dir)
    if "GOCI_WORKSPACE_ROOT" not in os.environ:
        assert Path(settings.GOCI_WORKSPACE_ROOT).is_relative_to(data_dir)
    if settings.DATABASES["default"]["ENGINE"].endswith("sqlite3"):
        assert Path(settings.DATABASES["default"]["TEST"]["NAME"]).is_relative_to(data_dir)
