"""A pytest plugin, loaded with `-p tests.data_dir` (pyproject's addopts): every test
session gets a data directory of its own, and the checkout's var/ is never used; and
the environment the tests' servers and workers start from.

goci.settings reads GOCI_DATA_DIR once and derives the SQLite test database, the
generated secret key, STATIC_ROOT and the workspaces from it. pytest-django loads the
settings in its own pytest_load_initial_conftests, before any conftest.py is imported,
so this has to be a plugin named on the command line; a conftest hook runs too late.
Without it the tests read what `make up` left in var/ (a collected static manifest turns
every {% static %} URL into a hashed one), so `make up` then `make test` failed.

An explicit GOCI_DATA_DIR is replaced too: a server's data directory is no more the
tests' business than the checkout's. Screenshots (GOCI_SCREENSHOTS) are kept apart.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

PREFIX = "goci-test-"
_made: list[Path] = []


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests() -> None:
    data_dir = Path(tempfile.mkdtemp(prefix=PREFIX))
    _made.append(data_dir)
    # In the environment, so the goci processes the tests start inherit it as well.
    os.environ["GOCI_DATA_DIR"] = str(data_dir)
    # Servers refuse steps without an image by default (GOCI_HOST_STEPS=deny), but most
    # worker tests run shell steps: the host has no image to spare for each of them.
    # Tests of `deny` override it (the `settings` fixture, or a subprocess's env).
    os.environ.setdefault("GOCI_HOST_STEPS", "allow")


def pytest_unconfigure() -> None:
    for data_dir in _made:
        shutil.rmtree(data_dir, ignore_errors=True)
