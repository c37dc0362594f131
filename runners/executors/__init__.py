"""Executors run one step each: local.py (the host shell), docker.py (a container)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from builds.pipeline import Pipeline, Step
from runners.engine import Executor, GetsReady, StepOutcome, StepRun

# What a server that refuses host steps (GOCI_HOST_STEPS=deny) tells the user.
NO_HOST_STEPS = (
    "steps without image are disabled on this server: add image: to the step, "
    "or ask the operator to set GOCI_DEFAULT_IMAGE"
)


DOCKER_SOCKET = "/var/run/docker.sock"


def prune_containers() -> subprocess.Popen[bytes] | None:
    """Remove the containers of dead runs on this machine (`goci docker prune`) in a
    child process, where Docker is: docker-py (~7 MB) stays out of a worker or runner
    until it runs a container step, and every container run prunes again as it starts.
    Workers and runners call it as they start: the containers of one that was killed
    run on until then."""
    if not (os.environ.get("DOCKER_HOST") or Path(DOCKER_SOCKET).exists()):
        return None
    return subprocess.Popen(
        [sys.executable, "-m", "goci.cli", "docker", "prune"], stdout=subprocess.DEVNULL
    )


class ByImage:
    """Steps with an image run in containers, the others in the host shell
    (PIPELINE.md: no image -> the host shell), unless there is none (local=None);
    `build:` steps go to the image builder (image_build.py), `ssh:` steps to ssh.py."""

    def __init__(
        self,
        local: Executor | None,
        containers: Executor | None,
        images: Executor | None = None,
        ssh: Executor | None = None,
    ) -> None:
        self.local = local
        self.containers = containers
        self.images = images
        self.ssh = ssh

    def prepare(self, pipeline: Pipeline) -> None:
        for executor in (self.local, self.containers, self.images, self.ssh):
            if executor is not None:
                executor.prepare(pipeline)

    def ready_soon(self, step: Step, env: Mapping[str, str]) -> None:
        if step.build is not None or step.ssh is not None:
            return
        executor = self.containers if step.image is not None else self.local
        if isinstance(executor, GetsReady):
            executor.ready_soon(step, env)

    def run_step(self, run: StepRun) -> StepOutcome:
        if run.step.ssh is not None:
            if self.ssh is None:
                return StepOutcome(error="this step runs over SSH, and no SSH client is set up")
            return self.ssh.run_step(run)
        if run.step.build is not None:
            if self.images is None:
                return StepOutcome(error="this step builds an image, and no builder is set up")
            return self.images.run_step(run)
        if run.step.image is None:
            if self.local is None:
                return StepOutcome(error=NO_HOST_STEPS)
            return self.local.run_step(run)
        if self.containers is None:
            return StepOutcome(error="this step needs a container executor, and none is set up")
        return self.containers.run_step(run)

    def cleanup(self) -> None:
        try:
            for executor in (self.ssh, self.images):
                if executor is not None:
                    executor.cleanup()
        finally:
            try:
                if self.containers is not None:
                    self.containers.cleanup()
            finally:
                if self.local is not None:
                    self.local.cleanup()
