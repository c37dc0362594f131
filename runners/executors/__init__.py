"""Executors run one step each: local.py (the host shell), docker.py (a container)."""

from __future__ import annotations

from builds.pipeline import Pipeline
from runners.engine import Executor, StepOutcome, StepRun


class ByImage:
    """Steps with an image run in containers, the others in the host shell
    (PIPELINE.md: no image -> the host shell)."""

    def __init__(self, local: Executor, containers: Executor | None) -> None:
        self.local = local
        self.containers = containers

    def prepare(self, pipeline: Pipeline) -> None:
        self.local.prepare(pipeline)
        if self.containers is not None:
            self.containers.prepare(pipeline)

    def run_step(self, run: StepRun) -> StepOutcome:
        if run.step.image is None:
            return self.local.run_step(run)
        if self.containers is None:
            return StepOutcome(error="this step needs a container executor, and none is set up")
        return self.containers.run_step(run)

    def cleanup(self) -> None:
        try:
            if self.containers is not None:
                self.containers.cleanup()
        finally:
            self.local.cleanup()
