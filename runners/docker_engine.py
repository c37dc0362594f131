"""The Docker engine, reached through docker-py: the connection and Goci's step
network. Light on purpose (docker-py and the standard library only): the container
executor (executors/docker.py) and the image build child (image_child.py), which
starts for every `build:` step, share it."""

from __future__ import annotations

import contextlib
import os
from typing import Any

import docker
import docker.errors

# The network every step runs on, and every image build's RUN. Without
# inter-container communication a step reaches the internet but not the containers of
# other builds, nor of its own.
NETWORK = "goci-steps"
NETWORK_OPTIONS = {"com.docker.network.bridge.enable_icc": "false"}


class DockerUnavailable(Exception):
    """The engine cannot be reached: nothing may start."""


def connect(base_url: str | None = None) -> docker.DockerClient:
    """A client for the engine at DOCKER_HOST (or base_url), checked by asking it."""
    url = base_url or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    try:
        # Without a fixed API version, creating the client asks the engine for its
        # version: that is the check (a ping after it would only cost a round trip).
        client = docker.DockerClient(base_url=url, timeout=30, version="auto")
    except (docker.errors.DockerException, OSError) as exc:
        raise DockerUnavailable(
            f"cannot reach the Docker engine at {url}: is dockerd running and may this "
            f"user use it? ({explain(exc)})"
        ) from None
    return client


def ensure_network(api: Any) -> None:
    """Make Goci's step network unless it is there (made once per machine, kept).
    Another run may be making it at the same moment: either one's is fine. One of that
    name that lets containers reach each other is refused, not used."""

    def found() -> dict[str, Any] | None:
        return next((n for n in api.networks(names=[NETWORK]) if n["Name"] == NETWORK), None)

    network = found()
    if network is None:
        with contextlib.suppress(docker.errors.APIError):  # 409: made by another run
            api.create_network(
                NETWORK, driver="bridge", options=NETWORK_OPTIONS, labels={"goci.network": "steps"}
            )
        network = found()
    if network is None:
        raise docker.errors.NotFound(f"the network {NETWORK} could not be created")
    if not NETWORK_OPTIONS.items() <= (network.get("Options") or {}).items():
        raise docker.errors.InvalidArgument(
            f"the network {NETWORK} exists but lets containers reach each other; remove it "
            f"(docker network rm {NETWORK}) and Goci makes it again"
        )


def explain(exc: BaseException) -> str:
    """An engine's error in its own words."""
    if isinstance(exc, docker.errors.APIError):
        return str(exc.explanation or exc).strip()
    return str(exc).strip() or exc.__class__.__name__
