"""Goci's step network against the real engine: made once and kept, and no container
on it reaches another, whether of the same run or of another build."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import docker.errors
import pytest

from runners.docker_engine import NETWORK, NETWORK_OPTIONS, ensure_network
from tests.test_docker import run_in_docker

pytestmark = pytest.mark.docker

# `listen` serves one line on its own address and says where; `probe` waits for that,
# then tries it. The control: `listen` reaches its own address, so nc works here.
TWO_AT_ONCE = """
steps:
  - name: listen
    parallel: true
    run: |
      ip=$(hostname -i)
      nc -l -p 9000 -e echo hello &
      sleep 0.3
      echo "self: $(nc -w 2 $ip 9000 || echo unreachable)"
      nc -l -p 9000 -e echo hello &
      echo $ip > address
      sleep 4
  - name: probe
    parallel: true
    run: |
      while [ ! -s address ]; do sleep 0.1; done
      echo "other: $(nc -w 2 $(cat address) 9000 || echo unreachable)"
"""


def test_a_step_cannot_reach_another_step_s_container(docker_client: Any, tmp_path: Path) -> None:
    rec = run_in_docker(docker_client, TWO_AT_ONCE, tmp_path)
    assert "self: hello" in rec.text("listen")
    assert rec.text("probe")[-1] == "other: unreachable"


def test_the_network_is_made_once_and_kept(docker_client: Any, tmp_path: Path) -> None:
    run_in_docker(docker_client, "steps: [{run: 'true'}]", tmp_path)
    (network,) = docker_client.api.networks(names=[NETWORK])
    run_in_docker(docker_client, "steps: [{run: 'true'}]", tmp_path)
    assert [n["Id"] for n in docker_client.api.networks(names=[NETWORK])] == [network["Id"]]
    assert NETWORK_OPTIONS.items() <= network["Options"].items()


def test_a_network_of_that_name_that_lets_containers_talk_is_refused(
    docker_client: Any, tmp_path: Path
) -> None:
    """Someone made `goci-steps` by hand, without the isolation: no step runs on it."""
    api = docker_client.api
    for network in api.networks(names=[NETWORK]):
        if network["Name"] == NETWORK:
            api.remove_network(NETWORK)
    api.create_network(NETWORK, driver="bridge")
    try:
        with pytest.raises(docker.errors.InvalidArgument, match="reach each other"):
            ensure_network(api)
        rec = run_in_docker(docker_client, "steps: [{name: s, run: 'true'}]", tmp_path)
        assert rec.results["s"].status == "error"
        assert "lets containers reach each other" in (rec.results["s"].error or "")
    finally:
        api.remove_network(NETWORK)
    ensure_network(api)  # as Goci makes it, for the tests after this one
