"""The Goci pipeline format: load YAML strictly, validate, plan the DAG.

Pure Python (no Django) so that `goci run` needs no database. See docs/pipeline.md.

Public API (other modules depend on these names):

- ``load(data, filename) -> Pipeline``: parse + validate + plan check; raises
  ``PipelineError`` carrying *every* problem found.
- ``plan(pipeline) -> dict[str, tuple[str, ...]]``: step name -> names it waits for.
- ``parse_duration(text) -> int`` seconds.
- ``json_schema() -> dict``: JSON Schema (draft-07) of the format, for editors.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field

EVENTS = ("push", "pull_request", "tag", "manual", "cron", "api")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a pipeline file, with where it is."""

    filename: str
    line: int  # 1-based
    column: int  # 1-based
    path: str  # e.g. "steps[2].needs"; "" for the document itself
    message: str

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{self.filename}:{self.line}:{self.column}: {where}{self.message}"


class PipelineError(Exception):
    """Raised with every problem of a pipeline file at once, sorted by position."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems, key=lambda p: (p.line, p.column, p.path))
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass(frozen=True)
class When:
    """Run a step only if every given condition matches (glob patterns allowed)."""

    branch: tuple[str, ...] | None = None
    event: tuple[str, ...] | None = None

    def matches(self, *, branch: str | None, event: str | None) -> bool:
        for patterns, value in ((self.branch, branch), (self.event, event)):
            if patterns is None:
                continue
            if value is None or not any(fnmatch.fnmatchcase(value, p) for p in patterns):
                return False
        return True


@dataclass(frozen=True)
class Step:
    name: str
    run: str
    index: int  # 0-based position in `steps`
    shell: str = "sh"
    image: str | None = None  # the step's own image, else the pipeline's
    parallel: bool = False
    needs: tuple[str, ...] | None = None  # None: implicit (previous stage); () : none
    env: Mapping[str, str] = field(default_factory=dict)  # step env merged over pipeline env
    workdir: str | None = None  # relative to the workspace, validated not to escape lexically
    timeout: int | None = None  # seconds
    retry: int = 0
    allow_failure: bool = False
    when: When | None = None


@dataclass(frozen=True)
class Pipeline:
    steps: tuple[Step, ...]
    name: str | None = None
    image: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    timeout: int | None = None  # seconds, the whole pipeline
    filename: str = "<pipeline>"
