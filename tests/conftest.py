"""Shared fixtures. Tests that need a service skip with a visible reason when it is
absent on a developer's machine, and fail when CI=true (CI provides every service)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

TEST_IMAGE = "goci-test/busybox:latest"
ON_CI = os.environ.get("CI") == "true"


def need(reason: str) -> None:
    if ON_CI:
        pytest.fail(f"CI must provide this: {reason}")
    pytest.skip(reason)


_docker: dict[str, Any] = {}


def _connect() -> Any:
    """The Docker client, or the reason there is none (memoised for the session)."""
    if "client" not in _docker:
        from runners.docker_engine import DockerUnavailable, connect

        try:
            client = connect()
            client.images.get(TEST_IMAGE)
            _docker["client"], _docker["reason"] = client, None
        except DockerUnavailable as exc:
            _docker["client"], _docker["reason"] = None, str(exc)
        except Exception as exc:  # noqa: BLE001  (docker.errors.ImageNotFound and kin)
            _docker["client"] = None
            _docker["reason"] = f"{TEST_IMAGE} is missing ({exc}): run scripts/build-test-images"
    return _docker["client"]


@pytest.fixture
def docker_client() -> Any:
    client = _connect()
    if client is None:
        need(f"the Docker engine: {_docker['reason']}")
    return client


@pytest.fixture(scope="session", autouse=True)
def nothing_left_in_docker() -> Iterator[None]:
    """After the whole suite, no container, network or volume of Goci may remain."""
    yield
    client = _docker.get("client")
    if client is None:
        return
    leftovers = [
        f"{kind} {obj.name}"
        for kind, objects in (
            ("container", client.containers.list(all=True, filters={"label": "goci.owner"})),
            ("network", client.networks.list(filters={"label": "goci.owner"})),
            ("volume", client.volumes.list(filters={"label": "goci.owner"})),
        )
        for obj in objects
    ]
    assert leftovers == [], f"Goci left these behind in Docker: {leftovers}"


@pytest.fixture(autouse=True)
def no_listen_connection_left() -> Iterator[None]:
    """A runner's long poll opens its web process's LISTEN connection (runners/api.py):
    each test may, and closes it after, before its test database may go (a poll still
    in flight then opens none)."""
    import sys

    api = sys.modules.get("runners.api")
    if api is not None:
        api.listening(True)
    yield
    api = sys.modules.get("runners.api")
    if api is not None:
        api.listening(False)
