"""The Goci pipeline format: load YAML strictly, validate, plan the DAG.

Pure Python (no Django) so that `goci run` needs no database. See docs/pipeline.md.

Public API (other modules depend on these names):

- ``load(data, filename) -> Pipeline``: parse + validate + plan check; raises
  ``PipelineError`` carrying *every* problem found.
- ``load_file(path) -> Pipeline``: the same for a file, refusing big files unread.
- ``plan(pipeline) -> dict[str, tuple[str, ...]]``: step name -> names it waits for.
- ``parse_duration(text) -> int`` seconds.
- ``parse_labels(text) -> tuple[str, ...]``: a worker's `--labels a,b`, checked.
- ``json_schema() -> dict``: JSON Schema (draft-07) of the format, for editors.
- ``When.matches(branch=, event=, changed_files=)``: whether a `when` holds.
- ``Pipeline.matrix``: the cells of `matrix:` (each variable -> value), () without one;
  ``cell_name(values)``, ``for_cell(pipeline, values)`` (the pipeline of one cell, to
  run as its own job), ``matrix_variables(pipeline)`` and ``select_cells(pipeline,
  picks)`` (`goci run --matrix NAME=VALUE`).
- ``Step.build``: an ``ImageBuild`` for a `build:` step; ``check_build_path`` and
  ``check_image_reference`` check its fields again once `${NAME}` is expanded.
- ``Step.ssh``: an ``SshScript`` for an `ssh:` step, its secrets' values set by
  ``with_secret_values``.
"""

from __future__ import annotations

import codecs
import copy
import fnmatch
import functools
import itertools
import os
import posixpath
import re
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol, TypeVar, cast

from yaml.composer import Composer
from yaml.error import MarkedYAMLError, YAMLError
from yaml.events import AliasEvent, CollectionStartEvent, Event, NodeEvent, StreamEndEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import Resolver
from yaml.scanner import Scanner

try:
    from yaml._yaml import CParser
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    CParser = None  # type: ignore[assignment,misc]  # _parser() then uses PyYAML's own

EVENTS = ("push", "pull_request", "tag", "manual", "cron", "api")

# Every dataclass here has a docstring: without one, dataclass() writes one from the
# signature through inspect, which `goci run` would pay for at every start.


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
class PathFilter:
    """`when: {path: ...}`: path globs matched against the files the build changed."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def matches(self, changed_files: Sequence[str] | None) -> bool:
        """Whether one changed file is included (by any pattern if there is no include)
        and not excluded. Unknown changed files (None) match; an empty list does not."""
        if changed_files is None:
            return True
        include = _glob_regex(self.include).match if self.include else None
        exclude = _glob_regex(self.exclude).match if self.exclude else None
        return any(
            (include is None or include(file)) and (exclude is None or not exclude(file))
            for file in changed_files
        )


@dataclass(frozen=True)
class When:
    """Run a step (or the pipeline) only if every given condition matches."""

    branch: tuple[str, ...] | None = None  # glob patterns
    event: tuple[str, ...] | None = None  # glob patterns
    path: PathFilter | None = None

    def matches(
        self,
        *,
        branch: str | None,
        event: str | None,
        changed_files: Sequence[str] | None = None,
    ) -> bool:
        """`changed_files`: repository-relative paths; None when unknown."""
        return self.mismatch(branch=branch, event=event, changed_files=changed_files) is None

    def mismatch(
        self,
        *,
        branch: str | None,
        event: str | None,
        changed_files: Sequence[str] | None = None,
    ) -> str | None:
        """Why the conditions do not hold, in words for the user; None if they hold."""
        for patterns, value in ((self.branch, branch), (self.event, event)):
            if patterns is None:
                continue
            if value is None or not any(fnmatch.fnmatchcase(value, p) for p in patterns):
                return f"does not match branch {branch or '(none)'}, event {event or '(none)'}"
        if self.path is not None and not self.path.matches(changed_files):
            count = len(changed_files or ())
            if not count:
                return "path: no file changed"
            return f"path matches none of the {count} changed file{'s' if count > 1 else ''}"
        return None


@dataclass(frozen=True)
class ImageBuild:
    """`build:` of a step: an image built from the workspace through the Docker Engine API.

    Each text field may still hold `${NAME}`, expanded at run time from the step's
    environment (`$${NAME}` is the text `${NAME}`): check the expanded text again with
    check_build_path and check_image_reference. A matrix's own variables are already
    replaced in the pipeline for_cell() returns."""

    # Relative to the workspace, normalised, never absolute, no `..`.
    context: str = "."
    # Relative to the workspace (not the context), normalised; when the file names
    # none, `Dockerfile` in the context.
    dockerfile: str = ""
    tags: tuple[str, ...] = ()
    build_args: Mapping[str, str] = field(default_factory=dict)
    push: bool = False
    registry_secret: str | None = None  # the name of a secret, never its value
    cache_from: tuple[str, ...] = ()
    # The value of registry_secret, set by with_secret_values() just before the step
    # runs; never stored.
    credentials: str | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class SshScript:
    """`ssh:` of a step: a script run on another machine over SSH by the worker or runner.

    Every field is as written in the file: no `${NAME}` is replaced in any of them,
    and a matrix's cells share them (for_cell keeps them)."""

    host: str  # a host name or an IP address (v4, or v6 without brackets)
    user: str
    script: str  # run there by `sh -e`, fed on its stdin
    key_secret: str  # the NAME of a secret (upper-cased like from_secret names): a private key
    known_hosts_secret: str  # the NAME of a secret: known_hosts lines pinning the host's key
    port: int = 22
    connect_timeout: int = 15  # seconds (a duration in the file: `connect_timeout: 10s`)
    # Set by with_secret_values() just before the step runs; never stored.
    key: str | None = field(default=None, repr=False, compare=False)
    known_hosts: str | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class DeployTarget:
    """`environment:` of a step: the step deploys there (builds/deployments.py records
    it, one deployment to an environment runs at a time)."""

    name: str
    url: str = ""


@dataclass(frozen=True)
class Input:
    """One of the pipeline's `inputs:`, a value given when it is run by hand, by the
    API or by a schedule (check_inputs); steps get it as GOCI_INPUT_<NAME>."""

    name: str
    type: str = "string"  # string, choice or boolean
    default: str | None = None  # as the step gets it: "true"/"false" for a boolean
    description: str = ""
    required: bool = False
    options: tuple[str, ...] = ()  # a choice's

    @property
    def variable(self) -> str:
        return input_variable(self.name)


@dataclass(frozen=True)
class Step:
    """One step of a pipeline, validated, with the pipeline's image and env applied."""

    name: str
    run: str
    index: int  # 0-based position in `steps`
    shell: str = "sh"
    image: str | None = None  # the step's own image, else the pipeline's
    parallel: bool = False
    needs: tuple[str, ...] | None = None  # None: implicit (previous stage); () : none
    env: Mapping[str, str] = field(default_factory=dict)  # step env merged over pipeline env
    # Variable -> the name of the secret whose value it gets (`{from_secret: name}`),
    # merged like env; the values are resolved by the worker, never kept here.
    secret_env: Mapping[str, str] = field(default_factory=dict)
    workdir: str | None = None  # relative to the workspace, validated not to escape lexically
    timeout: int | None = None  # seconds
    retry: int = 0
    allow_failure: bool = False
    when: When | None = None
    # `build:` - the step builds this image and runs no container of its own: its
    # `run` is "" and its `image` None (the pipeline's image does not apply).
    build: ImageBuild | None = None
    # `ssh:` - the step runs this script on another machine, and no container or shell
    # here: its `run` is "" and its `image` None, as for `build:`.
    ssh: SshScript | None = None
    environment: DeployTarget | None = None  # `environment:` - a deployment


@dataclass(frozen=True)
class Pipeline:
    """A whole pipeline file, validated: every step and the defaults they share."""

    steps: tuple[Step, ...]
    name: str | None = None
    image: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    secret_env: Mapping[str, str] = field(default_factory=dict)  # variable -> secret name
    timeout: int | None = None  # seconds, the whole pipeline
    filename: str = "<pipeline>"
    # `clone:` - whether the worker checks the build's commit out first, and how deep
    # (1: that commit alone; 0: the whole history).
    clone: bool = True
    clone_depth: int = 1
    when: When | None = None  # unless it matches, every step is skipped
    # `runs_on:` - every label a runner (or worker) must have to take the job.
    runs_on: tuple[str, ...] = ()
    # `matrix:` - one mapping of variable -> value per combination, in order (see
    # for_cell); () without a matrix, and in the pipeline for_cell returns.
    matrix: tuple[Mapping[str, str], ...] = ()
    # `matrix: {allow_failure: [...]}` - a cell that has all the values of one of these
    # may fail without failing the build (cell_may_fail).
    matrix_may_fail: tuple[Mapping[str, str], ...] = ()
    # `inputs:` - the values a manual run, the API or a schedule gives (check_inputs).
    inputs: tuple[Input, ...] = ()

    def environments(self) -> dict[str, str]:
        """The environments its steps deploy to, each with its URL (the first given)."""
        found: dict[str, str] = {}
        for step in self.steps:
            if step.environment is not None:
                name, url = step.environment.name, step.environment.url
                if not found.get(name):
                    found[name] = url
        return found


# Limits that protect the server from hostile or broken files; all are checked
# before anything is expanded, so a bad file costs little to refuse.
MAX_BYTES = 1_048_576
MAX_DEPTH = 64
# A 500-step pipeline that merges a few anchors into every step stays around
# 30,000 nodes; "billion laughs" documents pass millions within a few levels.
MAX_NODES = 100_000
MAX_STEPS = 500
MAX_NAME = 100
MAX_CLONE_DEPTH = 1_000_000
MAX_GLOB = 4096  # characters of one path pattern
# Path patterns in a pipeline, counting each use and each {a,b} alternative: matching
# costs patterns x changed files, and compiling one costs 0.3-0.8 ms.
MAX_GLOBS = 1000
MAX_LABEL = 64  # characters of one runner label
MAX_LABELS = 20  # labels in `runs_on`, and on one runner
MAX_CELLS = 256  # combinations of a matrix, after exclude and include
# Combinations of the axes before exclude: the expansion is bounded before it runs,
# whatever exclude would remove afterwards.
MAX_AXES_PRODUCT = 4096
# Strings that use a matrix variable, times the cells: each is substituted once per
# cell, here to check it and again wherever a cell's pipeline is made.
MAX_SUBSTITUTIONS = 500_000
MAX_CELL_NAME = 100  # characters of cell_name(), a job's name
MAX_TAGS = 20  # tags of one image build
MAX_CACHE_FROM = 20  # images in one build's `cache_from`
MAX_BUILD_ARGS = 100
MAX_REFERENCE = 255  # characters of an image reference, Docker's own limit
MAX_HOST = 253  # characters of an `ssh:` host, DNS's own limit for a name
MAX_SSH_USER = 64  # characters of an `ssh:` user
MAX_CONNECT_TIMEOUT = 600  # seconds of an `ssh:` connect_timeout
MAX_INPUTS = 50
MAX_INPUT_VALUE = 10_000  # characters of one input's value (and of its default)
MAX_OPTIONS = 100  # of one choice input
MAX_ENVIRONMENT = 100  # characters of an environment's name
MAX_URL = 2000
INPUT_TYPES = ("string", "choice", "boolean")

RESERVED_KEYS = (
    "services",
    "secrets",
    "artifacts",
    "cache",
    "jobs",
    "on",
    "if",
)

_YAML_TAG = "tag:yaml.org,2002:"
_CORE_TAGS = frozenset(
    _YAML_TAG + name for name in ("str", "int", "bool", "null", "float", "map", "seq")
)
_MERGE_TAG = _YAML_TAG + "merge"

# Shared by parse_duration and the JSON schema (ECMA-262 and Python agree on it).
_DURATION = r"^(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?$"
_DURATION_RE = re.compile(_DURATION)
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
_ENV_NAME_RE = re.compile(_ENV_NAME)
# `${NAME}`, or `$${NAME}` which stays `${NAME}`; see _substitute.
_REFERENCE_RE = re.compile(r"\$(\$?)\{([A-Za-z_][A-Za-z0-9_]*)\}")
# GitHub's `${{ matrix.NAME }}`, pointed at Goci's `${NAME}`.
_GITHUB_MATRIX_RE = re.compile(r"\$\{\{\s*matrix\.([A-Za-z0-9_-]+)\s*\}\}")
# A runner label: lower case, so that `GPU` and `gpu` cannot name two label sets.
_LABEL = r"^[a-z0-9][a-z0-9._-]*$"
_LABEL_RE = re.compile(_LABEL)
# The parts of an image reference, `[host[:port]/]path[:tag][@digest]`, as Docker
# reads them (github.com/distribution/reference). Left to re's cache, compiled at
# first use: only a file with a `build:` step needs them, and compiling them all took
# 1.2 ms of every `goci run`.
_REGISTRY = (
    r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"(?::[0-9]+)?"
)
_IMAGE_PATH = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
# A path of `build:` in the schema: relative, no `..` part, no backslash.
_BUILD_PATH = r"^(?!/)(?!(?:.*/)?\.\.(?:/|$))[^\\]+$"
# What YAML parsers refuse (PyYAML's set, minus a byte-order mark inside the text,
# which libyaml refuses); checked first so both parsers report it the same way.
# Written as the few characters refused rather than "not the many allowed": the same
# set, but compiling the negated class of big ranges took 8 ms of every `goci run`.
_NOT_PRINTABLE = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x84\x86-\x9f\ud800-\udfff\ufeff\ufffe\uffff]"
)

# An `ssh:` host that is a name (its dots, dashes and length are checked apart), and one
# that can only be meant as an IPv4 address; left to re's cache like the image parts.
_HOST_NAME = r"[A-Za-z0-9.-]+"
_IPV4_LIKE = r"[0-9.]+"

_Schema = dict[str, object]

# YAML editors type `010` or `yes` as a number or a boolean, but Goci keeps the
# text as written, so string-valued keys accept those types in the schema.
_TEXT: _Schema = {"type": ["string", "number", "boolean"]}
_NAMES: _Schema = {"anyOf": [_TEXT, {"type": "array", "items": _TEXT}]}
_DURATION_SCHEMA: _Schema = {"type": "string", "minLength": 1, "pattern": _DURATION}
_VARIABLE_NAME: _Schema = {
    "pattern": _ENV_NAME,
    "not": {"anyOf": [{"enum": ["CI", "GOCI"]}, {"pattern": "^GOCI_"}]},
}
_ENV_SCHEMA: _Schema = {
    "type": "object",
    "propertyNames": _VARIABLE_NAME,
    "additionalProperties": {
        "anyOf": [
            {"type": ["string", "number", "boolean", "null"]},
            {
                "type": "object",
                "description": "The value of a secret of the project (or a global one).",
                "properties": {"from_secret": {"type": "string", "pattern": _ENV_NAME}},
                "required": ["from_secret"],
                "additionalProperties": False,
            },
        ]
    },
}

# A path pattern: relative to the repository, so neither `/` nor `!` (GitHub's
# negation: Goci has `exclude`) starts one; the rest is checked by _glob_regex.
_GLOB: _Schema = {**_TEXT, "minLength": 1, "maxLength": MAX_GLOB, "pattern": "^[^/!]"}
_GLOB_LIST: _Schema = {"type": "array", "minItems": 1, "items": _GLOB}
_GLOBS: _Schema = {"anyOf": [_GLOB, _GLOB_LIST]}

# The keys of the format: the validator refuses any other key and json_schema()
# is built from these tables, so the two cannot drift apart.
_PIPELINE_KEYS: dict[str, tuple[str, _Schema]] = {
    "name": ("Name of the pipeline.", {**_TEXT, "minLength": 1, "maxLength": MAX_NAME}),
    "image": (
        "Default container image of every step, e.g. golang:1.22; "
        "without it steps run in the host shell.",
        {**_TEXT, "minLength": 1},
    ),
    "env": (
        "Environment variables of every step; a step's own env is merged over them.",
        _ENV_SCHEMA,
    ),
    "timeout": ("Time limit of the whole pipeline: 90s, 10m, 1h, 1h30m.", _DURATION_SCHEMA),
    "clone": (
        "Check the build's commit out into the workspace before the first step: true "
        "(the default, that commit alone), false, or {depth: N}.",
        {"anyOf": [{"type": "boolean"}, {"$ref": "#/definitions/clone"}]},
    ),
    "when": (
        "Run the pipeline only if every given condition matches; otherwise every step "
        "is skipped and the build succeeds.",
        {"allOf": [{"$ref": "#/definitions/when"}]},
    ),
    "runs_on": (
        "Labels a runner must all have to take this pipeline's job, e.g. [linux, gpu]: "
        "a label or a list of them; without it any runner takes it.",
        {
            "anyOf": [
                {"$ref": "#/definitions/label"},
                {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": MAX_LABELS,
                    "items": {"$ref": "#/definitions/label"},
                },
            ]
        },
    ),
    "matrix": (
        "Run the pipeline once per combination of values, each as its own job with the "
        "values as environment variables and ${NAME} replaced in image, env, when and build: "
        "NAME: [values], with optional include and exclude; at most 256 combinations.",
        {"allOf": [{"$ref": "#/definitions/matrix"}]},
    ),
    "inputs": (
        "Values given when the pipeline is run by hand, by the API or by a schedule, "
        "NAME: {type, default, description, required, options}; steps get each as "
        "GOCI_INPUT_<NAME>.",
        {
            "type": "object",
            "maxProperties": MAX_INPUTS,
            "propertyNames": {"pattern": r"^[A-Za-z_][A-Za-z0-9_-]*$"},
            "additionalProperties": {"$ref": "#/definitions/input"},
        },
    ),
    "steps": (
        "Required. The steps to run, in file order.",
        {
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_STEPS,
            "items": {"$ref": "#/definitions/step"},
        },
    ),
}
_STEP_KEYS: dict[str, tuple[str, _Schema]] = {
    "name": (
        "Unique name of the step, one line; default `step N` (1-based).",
        {**_TEXT, "minLength": 1, "maxLength": MAX_NAME, "pattern": r"^[^\r\n]*$"},
    ),
    "run": (
        "Shell script run with `sh -e` (or `shell`); may span lines. A step has one of "
        "`run`, `build` and `ssh`.",
        _TEXT,
    ),
    "build": (
        "Build an image from the workspace (instead of `run`): the context directory, or "
        "{context, dockerfile, tags, build_args, push, registry_secret, cache_from}.",
        {"anyOf": [{"$ref": "#/definitions/build_path"}, {"$ref": "#/definitions/build"}]},
    ),
    "ssh": (
        "Run a script on another machine over SSH (instead of `run`): {host, port, user, "
        "key_secret, known_hosts_secret, script, connect_timeout}.",
        {"$ref": "#/definitions/ssh"},
    ),
    "shell": (
        "Interpreter of `run`, one word such as sh or bash; default sh.",
        {"type": "string", "pattern": r"^\S+$"},
    ),
    "image": (
        "Container image of this step; default the pipeline's image.",
        {**_TEXT, "minLength": 1},
    ),
    "parallel": (
        "Consecutive steps with `parallel: true` start together once the step before them "
        "has succeeded; the next step waits for all of them.",
        {"type": "boolean"},
    ),
    "needs": (
        "Steps this step waits for, a name or a list; replaces the implicit order. "
        "`needs: []` starts at once.",
        _NAMES,
    ),
    "env": ("Environment variables of this step, merged over the pipeline's env.", _ENV_SCHEMA),
    "workdir": (
        "Working directory, relative to the workspace; must not leave it.",
        {**_TEXT, "minLength": 1},
    ),
    "timeout": (
        "Time limit of the step: 90s, 10m, 1h, 1h30m; the step then fails.",
        _DURATION_SCHEMA,
    ),
    "retry": (
        "Re-run a failed step up to N more times (0 to 5).",
        {"type": "integer", "minimum": 0, "maximum": 5},
    ),
    "allow_failure": (
        "A failure of this step neither fails the pipeline nor skips the steps that need it.",
        {"type": "boolean"},
    ),
    "when": (
        "Run only if every given condition matches; otherwise the step is skipped.",
        {"allOf": [{"$ref": "#/definitions/when"}]},
    ),
    "environment": (
        "The step deploys to this environment: its name, or {name, url}. Goci records "
        "each deployment and runs one of an environment at a time.",
        {
            "anyOf": [
                {"$ref": "#/definitions/environment_name"},
                {"$ref": "#/definitions/environment"},
            ]
        },
    ),
}
_ENVIRONMENT_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
_ENVIRONMENT_KEYS: dict[str, tuple[str, _Schema]] = {
    "name": (
        "Required. The environment's name, e.g. production: letters, digits, ., _ and -.",
        {"$ref": "#/definitions/environment_name"},
    ),
    "url": (
        "Where the deployed service answers, http(s)://...; shown with each deployment.",
        {"type": "string", "maxLength": MAX_URL, "pattern": r"^https?://\S+$"},
    ),
}
_INPUT_KEYS: dict[str, tuple[str, _Schema]] = {
    "type": (
        "string (the default), choice (one of `options`) or boolean.",
        {"enum": list(INPUT_TYPES)},
    ),
    "default": ("The value when none is given.", _TEXT),
    "description": ("What the value is for, shown beside its field.", _TEXT),
    "required": (
        "A value must be given (or come from `default`); default false.",
        {"type": "boolean"},
    ),
    "options": (
        "A choice's values.",
        {"type": "array", "minItems": 1, "maxItems": MAX_OPTIONS, "items": _TEXT},
    ),
}
_IMAGE_NAME: _Schema = {"type": "string", "minLength": 1, "maxLength": MAX_REFERENCE}
_SECRET_NAME: _Schema = {"type": "string", "pattern": _ENV_NAME}
_BUILD_KEYS: dict[str, tuple[str, _Schema]] = {
    "context": (
        "Directory sent to the Docker engine as the build context, relative to the "
        "workspace; default `.`. No absolute path, no `..`.",
        {"$ref": "#/definitions/build_path"},
    ),
    "dockerfile": (
        "The Dockerfile, relative to the workspace (not the context); default "
        "`Dockerfile` in the context.",
        {"$ref": "#/definitions/build_path"},
    ),
    "tags": (
        "Names of the image, `[host[:port]/]path[:tag]`: one or a list of at most "
        f"{MAX_TAGS}; `${{NAME}}` is expanded from the step's environment.",
        {
            "anyOf": [
                _IMAGE_NAME,
                {"type": "array", "minItems": 1, "maxItems": MAX_TAGS, "items": _IMAGE_NAME},
            ]
        },
    ),
    "build_args": (
        "The Dockerfile's ARG values, NAME: value; never a secret (they stay in the "
        "image's history).",
        {
            "type": "object",
            "maxProperties": MAX_BUILD_ARGS,
            "propertyNames": {"pattern": _ENV_NAME},
            "additionalProperties": {"type": ["string", "number", "boolean", "null"]},
        },
    ),
    "push": (
        "Push every tag after the build (never for a pull request); needs `tags`.",
        {"type": "boolean"},
    ),
    "registry_secret": (
        "Name of the secret holding the registry's credentials: JSON "
        '{"username": ..., "password": ...} or a token.',
        _SECRET_NAME,
    ),
    "cache_from": (
        "Images whose layers the build may reuse, pulled first: one or a list of at "
        f"most {MAX_CACHE_FROM}.",
        {
            "anyOf": [
                _IMAGE_NAME,
                {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": MAX_CACHE_FROM,
                    "items": _IMAGE_NAME,
                },
            ]
        },
    ),
}
_SSH_KEYS: dict[str, tuple[str, _Schema]] = {
    "host": (
        "Required. The machine that runs the script: a host name, an IPv4 address or an "
        "IPv6 address (without brackets).",
        {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_HOST,
            "pattern": r"^(?!-)[A-Za-z0-9.:-]+$",
        },
    ),
    "port": (
        "The SSH port of the host; default 22.",
        {"type": "integer", "minimum": 1, "maximum": 65535},
    ),
    "user": (
        "Required. The user to log in as there.",
        {**_TEXT, "minLength": 1, "maxLength": MAX_SSH_USER, "pattern": r"^(?!-)\S+$"},
    ),
    "key_secret": (
        "Required. Name of the secret holding the private key to log in with.",
        _SECRET_NAME,
    ),
    "known_hosts_secret": (
        "Required. Name of the secret holding the host's key as known_hosts lines "
        "(ssh-keyscan -p PORT HOST); an unknown or changed host key fails the step.",
        _SECRET_NAME,
    ),
    "script": (
        "Required. The commands run on the host with `sh -e`; may span lines. It gets the "
        "step's plain `env` and Goci's variables, never a secret.",
        {**_TEXT, "minLength": 1},
    ),
    "connect_timeout": (
        "Time limit of the connection (not of the script): 10s, 1m; at most 10m, default 15s.",
        _DURATION_SCHEMA,
    ),
}
# What a step does: exactly one of these keys.
_STEP_KINDS = ("run", "build", "ssh")
_DOES = {
    "run": "runs a script (`run`)",
    "build": "builds an image (`build`)",
    "ssh": "runs a script on another machine (`ssh`)",
}
# The keys an `ssh:` must have, with what each is for.
_SSH_REQUIRED = {
    "host": "the host name or IP address of the machine that runs the script",
    "user": "the user to log in as on the host",
    "key_secret": "the secret holding the private key to log in with",
    "known_hosts_secret": "the secret holding the host's key, as known_hosts lines "
    "(ssh-keyscan HOST); Goci never trusts a host it does not know",
    "script": "the commands to run on the host",
}
_WHEN_KEYS: dict[str, tuple[str, _Schema]] = {
    "branch": ("Branch name or glob pattern (release/*), or a list of them.", _NAMES),
    "event": (
        "Event or list of events: " + ", ".join(EVENTS) + ".",
        {
            "anyOf": [
                {"enum": list(EVENTS)},
                {"type": "array", "minItems": 1, "items": {"enum": list(EVENTS)}},
            ]
        },
    ),
    "path": (
        "Run only if the build changed a file that matches: a pattern (src/**, **/*.go), "
        "a list of them, or {include: [...], exclude: [...]}.",
        {"anyOf": [_GLOB, _GLOB_LIST, {"$ref": "#/definitions/path"}]},
    ),
}
_PATH_KEYS: dict[str, tuple[str, _Schema]] = {
    "include": ("A changed file counts if it matches one of these patterns.", _GLOBS),
    "exclude": ("A changed file does not count if it matches one of these patterns.", _GLOBS),
}
_MATRIX_ROW: _Schema = {
    "type": "object",
    "minProperties": 1,
    "propertyNames": _VARIABLE_NAME,
    "additionalProperties": _TEXT,
}
_MATRIX_KEYS: dict[str, tuple[str, _Schema]] = {
    "include": (
        "Mappings of NAME: value. One whose axis values match combinations adds its other "
        "variables to them; one that matches none is a combination of its own.",
        {"type": "array", "minItems": 1, "items": _MATRIX_ROW},
    ),
    "exclude": (
        "Mappings of axis NAME: value; every combination that has all of them is removed "
        "(before include is applied).",
        {"type": "array", "minItems": 1, "items": _MATRIX_ROW},
    ),
    "allow_failure": (
        "Mappings of NAME: value; a combination that has all of one's values may fail "
        "without failing the build (GitHub Actions' continue-on-error).",
        {"type": "array", "minItems": 1, "items": _MATRIX_ROW},
    ),
}
_CLONE_KEYS: dict[str, tuple[str, _Schema]] = {
    "depth": (
        "Commits of history to fetch: 1 (the default) is the commit alone, 0 the whole history.",
        {"type": "integer", "minimum": 0, "maximum": MAX_CLONE_DEPTH},
    ),
}

# Keys that users bring from other CI systems, with what Goci calls them.
_PIPELINE_HINTS = {
    "pipeline": "Goci calls this 'steps', a list of steps",
    "variables": "Goci calls this 'env'",
    "environment": "Goci calls this 'env'",
    "container": "Goci calls this 'image'",
    "stages": "steps run in file order; use 'parallel' and 'needs' to change that",
    "trigger": "Goci calls this 'when'",
    "skip_clone": "write `clone: false`",
    "depth": "write `clone: {depth: N}`",
    "fetch-depth": "write `clone: {depth: N}`; 0 fetches the whole history",
    "runs-on": "Goci calls this 'runs_on', the labels a runner must have",
    "tags": "Goci calls this 'runs_on', the labels a runner must have",
    "labels": "Goci calls this 'runs_on', the labels a runner must have",
    "platform": "name it as a label in 'runs_on', e.g. `runs_on: [linux, arm64]`",
    "strategy": "write `matrix:` at the top of the pipeline",
}
_RUNS_ON_HINT = "labels apply to the whole pipeline: write `runs_on:` at its top"
_RUN_HINT = "Goci calls this 'run', one script with a command per line"
_TAGS_HINT = "the names of the image this step builds: write `tags` under `build:`"
_SSH_KEY_HINT = "a key of `ssh:`, the script a step runs on another machine: write it under `ssh:`"
_STEP_HINTS = {
    "depends_on": "Goci calls this 'needs'",
    "commands": _RUN_HINT,
    "script": _RUN_HINT,
    "variables": "Goci calls this 'env'",
    "container": "Goci calls this 'image'",
    "allow_failures": "Goci calls this 'allow_failure'",
    "continue-on-error": "Goci calls this 'allow_failure'",
    "failure": "for `failure: ignore` write `allow_failure: true`",
    "working_directory": "Goci calls this 'workdir'",
    "working-directory": "Goci calls this 'workdir'",
    "timeout-minutes": "write `timeout: 30m`",
    "timeout_in_minutes": "write `timeout: 30m`",
    "group": "mark consecutive steps with `parallel: true`",
    "only": "use 'when' with 'branch' and 'event'",
    "except": "use 'when' with 'branch' and 'event'",
    "rules": "use 'when' with 'branch' and 'event'",
    "uses": "Goci runs the script in 'run'; it checks the commit out itself (see 'clone')",
    "runs-on": _RUNS_ON_HINT,
    "runs_on": _RUNS_ON_HINT,
    "tags": _RUNS_ON_HINT,
    "labels": _RUNS_ON_HINT,
    "matrix": "a matrix applies to the whole pipeline: write `matrix:` at its top",
    "strategy": "write `matrix:` at the top of the pipeline",
    **dict.fromkeys(
        ("context", "dockerfile", "build_args", "push", "registry_secret", "cache_from"),
        "a key of `build:`, the image a step builds: write it under `build:`",
    ),
    # Not `user`, `port` or `script`, which mean other things on a step without `ssh:`
    # (on one with it, read_step points every key of `ssh` there).
    **dict.fromkeys(("host", "key_secret", "known_hosts_secret", "connect_timeout"), _SSH_KEY_HINT),
}
_CREDENTIALS_HINT = "put the credentials in a secret and name it in `registry_secret`"
_BUILD_HINTS = {
    "file": "Goci calls this 'dockerfile'",
    "Dockerfile": "Goci calls this 'dockerfile'",
    "args": "Goci calls this 'build_args'",
    "build-args": "Goci calls this 'build_args'",
    "build_arg": "Goci calls this 'build_args'",
    "cache-from": "Goci calls this 'cache_from'",
    "username": _CREDENTIALS_HINT,
    "password": _CREDENTIALS_HINT,
    "registry": _CREDENTIALS_HINT,
    "credentials": _CREDENTIALS_HINT,
    "platform": "not supported: the image is built for the platform of the runner that "
    "takes the job; choose it with `runs_on`",
    "platforms": "not supported: the image is built for the platform of the runner that "
    "takes the job; choose it with `runs_on`",
}
_KEY_HINT = "put the private key in a secret and name it in `key_secret`"
_KNOWN_HOSTS_HINT = "put the known_hosts lines in a secret and name it in `known_hosts_secret`"
_SSH_HINTS = {
    **dict.fromkeys(("hostname", "server", "address"), "Goci calls this 'host'"),
    **dict.fromkeys(("username", "login"), "Goci calls this 'user'"),
    **dict.fromkeys(("key", "private_key", "password", "identity_file"), _KEY_HINT),
    **dict.fromkeys(("known_hosts", "fingerprint", "host_key"), _KNOWN_HOSTS_HINT),
    **dict.fromkeys(("command", "commands", "run"), "Goci calls this 'script'"),
    "timeout": "the step's `timeout:` limits the whole step; `connect_timeout:` the connection",
}
_WHEN_HINTS = {
    "paths": "Goci calls this 'path'",
    "changes": "Goci calls this 'path'",
    "paths-ignore": "write `path: {exclude: [...]}`",
    "paths_ignore": "write `path: {exclude: [...]}`",
}
_CLONE_HINTS = {
    "disable": "write `clone: false`",
    "fetch-depth": "Goci calls this 'depth'; 0 fetches the whole history",
    "fetch_depth": "Goci calls this 'depth'; 0 fetches the whole history",
}

_T = TypeVar("_T")


# ---------------------------------------------------------------------------
# Public functions


def load(data: bytes | str, filename: str = "<pipeline>") -> Pipeline:
    """Read a pipeline file strictly; raise one PipelineError with every problem."""
    text = _decode(data, filename)
    loader, root, problems = _compose(text, filename)
    checker = _Checker(filename, loader.rejected)
    checker.problems.extend(problems)
    checker.check_mappings(root)
    pipeline = checker.read_pipeline(root)
    if checker.problems or pipeline is None:
        raise PipelineError(checker.problems)
    return pipeline


def load_file(path: str | os.PathLike[str]) -> Pipeline:
    """Load a pipeline file; its size is checked before it is read."""
    filename = os.fspath(path)
    with Path(filename).open("rb") as file:
        size = os.fstat(file.fileno()).st_size
        if size > MAX_BYTES:
            raise PipelineError([Problem(filename, 1, 1, "", _too_big(size))])
        # One byte more than allowed: a file that grows after fstat is still caught.
        data = file.read(MAX_BYTES + 1)
    return load(data, filename)


def expand_variables(text: str, values: Mapping[str, str]) -> str:
    """A `build:` field at run time: each `${NAME}` replaced by values[NAME] (KeyError
    naming NAME when it is not set), `$${NAME}` by the text `${NAME}`."""
    if "${" not in text:
        return text

    def value(match: re.Match[str]) -> str:
        return "${" + match[2] + "}" if match[1] else values[match[2]]

    return _REFERENCE_RE.sub(value, text)


def without_registry_secrets(pipeline: Pipeline) -> Pipeline:
    """The pipeline with no `build:` step naming a registry secret: a build that must
    not push (a pull request's, a fork's) needs none, and its code gets none."""
    steps = tuple(
        replace(step, build=replace(step.build, registry_secret=None))
        if step.build is not None and step.build.registry_secret
        else step
        for step in pipeline.steps
    )
    return replace(pipeline, steps=steps)


def secrets_wanted(
    pipeline: Pipeline,
    *,
    branch: str | None = None,
    event: str | None = None,
    changed_files: Sequence[str] | None = None,
    judge: bool = False,
) -> list[tuple[str, str]]:
    """(step, secret name) for every secret a step asks for (in its env, then its
    build's `registry_secret` or its ssh's `key_secret` and `known_hosts_secret`), in
    step order. With
    `judge`, only of the steps whose `when` (and the pipeline's) can hold for this
    branch, event and changed files: a deploy step kept for pushes does not need its
    secrets in a pull request's build, which skips it."""

    def holds(when: When | None) -> bool:
        return when is None or when.matches(branch=branch, event=event, changed_files=changed_files)

    if judge and not holds(pipeline.when):
        return []
    return [
        (step.name, name)
        for step in pipeline.steps
        if not judge or holds(step.when)
        for name in _secrets_of(step)
    ]


def _secrets_of(step: Step) -> list[str]:
    names = list(step.secret_env.values())
    if step.build is not None and step.build.registry_secret is not None:
        names.append(step.build.registry_secret)
    if step.ssh is not None:
        names += [step.ssh.key_secret, step.ssh.known_hosts_secret]
    return names


def with_secret_values(pipeline: Pipeline, values: Mapping[str, str]) -> Pipeline:
    """The pipeline with each step's secrets in its env, a build step's registry
    credentials in `build.credentials`, and an ssh step's private key and known_hosts
    lines in `ssh.key` and `ssh.known_hosts`: only those it asks for. Made just before
    it runs (worker, `goci run`) and never stored. `values`: by secret name; a secret
    without a value (a step that will be skipped, a fork's build) leaves its variable
    unset, and the credentials, key or known_hosts None."""

    def with_values(step: Step) -> Step:
        if step.secret_env:
            secret = {var: values[name] for var, name in step.secret_env.items() if name in values}
            step = replace(step, env={**step.env, **secret})
        if step.build is not None and step.build.registry_secret is not None:
            credentials = values.get(step.build.registry_secret)
            step = replace(step, build=replace(step.build, credentials=credentials))
        if step.ssh is not None:
            ssh = replace(
                step.ssh,
                key=values.get(step.ssh.key_secret),
                known_hosts=values.get(step.ssh.known_hosts_secret),
            )
            step = replace(step, ssh=ssh)
        return step

    return replace(pipeline, steps=tuple(map(with_values, pipeline.steps)))


def matrix_variables(pipeline: Pipeline) -> tuple[str, ...]:
    """The variables of the pipeline's matrix (its axes, then the ones only `include`
    adds), in the order the file first names them; () without a matrix."""
    return tuple(dict.fromkeys(name for cell in pipeline.matrix for name in cell))


def cell_may_fail(pipeline: Pipeline, values: Mapping[str, str]) -> bool:
    """Whether this cell of the matrix may fail without failing the build."""
    return any(
        all(values.get(name) == value for name, value in row.items())
        for row in pipeline.matrix_may_fail
    )


def cell_name(values: Mapping[str, str]) -> str:
    """`GO=1.22, OS=linux`: one cell of a matrix, by its variables in alphabetical order,
    so that the name does not depend on how the values were stored. At most
    MAX_CELL_NAME characters: a longer name is cut and ends with a digest of the values,
    so that it stays distinct."""
    name = ", ".join(f"{key}={values[key]}" for key in sorted(values))
    if len(name) <= MAX_CELL_NAME:
        return name
    import hashlib  # noqa: PLC0415  (only very long values need it)

    digest = hashlib.sha256(
        "\0".join(f"{key}\0{values[key]}" for key in sorted(values)).encode(
            "utf-8", "surrogatepass"
        )
    ).hexdigest()
    return f"{name[: MAX_CELL_NAME - 12]}... {digest[:8]}"


def for_cell(pipeline: Pipeline, values: Mapping[str, str]) -> Pipeline:
    """The pipeline of one cell of its matrix (one of `pipeline.matrix`), to run as a job
    of its own: `${NAME}` of each matrix variable replaced by the cell's value (or by
    nothing where the cell lacks it) in the images, the env values and the `when`
    conditions; `$${NAME}` written as `${NAME}`; any other text left as it is, for the
    shell. The cell's values are set in the env of the pipeline and of every step, over
    a variable of the same name written in the file (plain or from a secret), as in
    Woodpecker. In a build step's paths, tags, build args and cache_from, `${NAME}` is
    replaced too, but `$${NAME}` stays as written: these are expanded again at run time,
    which undoes the escape. An ssh step's `ssh:` is kept as written (its env and `when`
    are substituted as any step's). The result has no matrix. The substitution is on
    the parsed strings, so a value cannot change the document's structure; load()
    checked every cell."""
    cell = dict(values)
    if cell not in pipeline.matrix:
        raise ValueError(f"{cell_name(cell)!r} is not a cell of the pipeline's matrix")
    names = frozenset(matrix_variables(pipeline))

    def sub(text: str) -> str:
        return _substitute(text, cell, names)

    def sub_env(env: Mapping[str, str]) -> dict[str, str]:
        return {key: sub(value) for key, value in env.items() if key not in cell} | cell

    def sub_when(when: When | None) -> When | None:
        if when is None:
            return None
        path = when.path
        if path is not None:
            path = PathFilter(
                include=tuple(map(sub, path.include)), exclude=tuple(map(sub, path.exclude))
            )
        return When(
            branch=None if when.branch is None else tuple(map(sub, when.branch)),
            event=None if when.event is None else tuple(map(sub, when.event)),
            path=path,
        )

    def no_secret(secret_env: Mapping[str, str]) -> dict[str, str]:
        return {key: name for key, name in secret_env.items() if key not in cell}

    def sub_build(build: ImageBuild | None) -> ImageBuild | None:
        if build is None:
            return None

        def kept(text: str) -> str:
            return _REFERENCE_RE.sub(
                lambda m: m[0] if m[1] or m[2] not in names else cell.get(m[2], ""), text
            )

        return replace(
            build,
            context=posixpath.normpath(kept(build.context)),
            dockerfile=posixpath.normpath(kept(build.dockerfile)),
            tags=tuple(map(kept, build.tags)),
            build_args={key: kept(value) for key, value in build.build_args.items()},
            cache_from=tuple(map(kept, build.cache_from)),
        )

    steps = tuple(
        replace(
            step,
            image=None if step.image is None else sub(step.image),
            env=sub_env(step.env),
            secret_env=no_secret(step.secret_env),
            when=sub_when(step.when),
            build=sub_build(step.build),
        )
        for step in pipeline.steps
    )
    return replace(
        pipeline,
        steps=steps,
        image=None if pipeline.image is None else sub(pipeline.image),
        env=sub_env(pipeline.env),
        secret_env=no_secret(pipeline.secret_env),
        when=sub_when(pipeline.when),
        matrix=(),
        matrix_may_fail=(),
    )


def select_cells(
    pipeline: Pipeline, picks: Sequence[tuple[str, str]]
) -> tuple[Mapping[str, str], ...]:
    """The cells of the matrix that have every picked variable at one of the values
    picked for it (`--matrix OS=linux --matrix GO=1.22 --matrix GO=1.23`); every cell
    when nothing is picked. ValueError, listing the cells, if none matches."""
    if not picks:
        return pipeline.matrix
    if not pipeline.matrix:
        raise ValueError("the pipeline has no matrix")
    variables = matrix_variables(pipeline)
    wanted: dict[str, set[str]] = {}
    for name, value in picks:
        if name not in variables:
            hint = _did_you_mean(name, variables)
            raise ValueError(
                f"{name!r} is not a variable of the matrix"
                + (f" ({hint})" if hint else "")
                + f"; its variables are {', '.join(variables)}"
            )
        wanted.setdefault(name, set()).add(value)
    cells = tuple(
        cell
        for cell in pipeline.matrix
        if all(name in cell and cell[name] in values for name, values in wanted.items())
    )
    if not cells:
        picked = " ".join(f"{name}={value}" for name, value in picks)
        listed = "".join(f"\n  {cell_name(cell)}" for cell in pipeline.matrix)
        raise ValueError(f"no cell of the matrix has {picked}; its cells are:{listed}")
    return cells


def _substitute(text: str, values: Mapping[str, str], names: frozenset[str]) -> str:
    """`${NAME}` of a matrix variable -> its value in the cell ("" if the cell lacks it);
    `$${NAME}` of one -> `${NAME}`; everything else as written. One pass: a value is
    never substituted again."""
    if "${" not in text:
        return text
    parts = _template(text, names)
    if len(parts) == 1:
        return parts[0]
    out = list(parts)
    out[1::2] = [values.get(name, "") for name in parts[1::2]]
    return "".join(out)


@functools.lru_cache(maxsize=4096)
def _template(text: str, names: frozenset[str]) -> tuple[str, ...]:
    """`text` as (text, variable, text, ..., variable, text), escapes undone: each cell
    of a matrix then costs a join, not a regex (a string is substituted per cell)."""
    parts = [""]
    end = 0
    for match in _REFERENCE_RE.finditer(text):
        escaped, name = match.groups()
        if name not in names:
            continue
        parts[-1] += text[end : match.start()] + ("${" + name + "}" if escaped else "")
        if not escaped:
            parts += [name, ""]
        end = match.end()
    parts[-1] += text[end:]
    return tuple(parts)


def parse_labels(text: str) -> tuple[str, ...]:
    """`linux,gpu` (a worker's `--labels`) -> ("linux", "gpu"): each checked like a
    label of `runs_on`, duplicates dropped; "" is no label. ValueError says why."""
    labels = [label.strip() for label in text.split(",")] if text.strip() else []
    for label in labels:
        check_label(label)
    if len(set(labels)) > MAX_LABELS:
        raise ValueError(f"at most {MAX_LABELS} labels, found {len(set(labels))}")
    return tuple(dict.fromkeys(labels))


def check_label(label: str) -> str:
    """A runner label, or ValueError saying why it is not one."""
    shown = repr(label) if len(label) <= 40 else f"a label of {len(label)} characters"
    if not label:
        raise ValueError("a label is empty")
    if len(label) > MAX_LABEL:
        raise ValueError(f"a label may be at most {MAX_LABEL} characters, found {shown}")
    if not _LABEL_RE.fullmatch(label):
        hint = f" (write {label.lower()!r})" if _LABEL_RE.fullmatch(label.lower()) else ""
        raise ValueError(
            f"invalid label {shown}{hint}: use lower-case letters, digits, '.', '_' and '-', "
            "starting with a letter or digit"
        )
    return label


def check_build_path(text: str, key: str = "context") -> str:
    """A path of `build:` (its `key`, context or dockerfile), normalised; ValueError
    saying why it is not one. It must stay inside the workspace: not absolute, and no
    `..` part at all (lexical: symbolic links are the executor's to refuse)."""
    if not text.strip():
        what = "a directory of the workspace such as . or app"
        if key == "dockerfile":
            what = "a file of the workspace such as app/Dockerfile, or remove it"
        raise ValueError(f"`{key}` is empty: write {what}")
    if "\\" in text:
        raise ValueError(f"a backslash is not allowed in `{key}`: separate directories with '/'")
    if any(ord(char) < 32 or ord(char) == 127 for char in text):
        raise ValueError(f"`{key}` has a control character: remove it")
    if _is_absolute(text) or ".." in text.split("/"):
        raise ValueError(
            f"`{key}` must stay inside the workspace: write a path relative to it, "
            f"without '..', found {text!r}"
        )
    return posixpath.normpath(text)


def check_image_reference(text: str, *, digest: bool = False, variables: bool = False) -> str:
    """An image reference, `[host[:port]/]path[:tag]`, as Docker reads it; with `digest`
    it may end in `@sha256:...` (a tag may not: the build makes the image). ValueError
    saying why it is not one. With `variables`, each `${NAME}` (expanded later) counts
    as a letter."""
    shown = repr(text) if len(text) <= 80 else f"the name of {len(text)} characters"

    def valid(pattern: str, part: str) -> bool:
        return re.fullmatch(pattern, _placeholders(part) if variables else part) is not None

    length = len(_placeholders(text) if variables else text)
    if not text.strip():
        raise ValueError("the image name is empty: write one such as registry.example.com/app:1.0")
    if length > MAX_REFERENCE:
        raise ValueError(
            f"an image name may be at most {MAX_REFERENCE} characters, this one has {length}"
        )
    name, at, pinned = text.partition("@")
    if at and not digest:
        raise ValueError(
            f"{shown} has a digest: a tag names the image this build makes, "
            "so write it as name:tag, without '@...'"
        )
    if at and not valid(_DIGEST, pinned):
        raise ValueError(f"invalid digest {pinned!r}: write @sha256: and 64 hexadecimal digits")
    slash, colon = name.rfind("/"), name.rfind(":")
    tag = ""
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
        if not valid(_IMAGE_TAG, tag):
            raise ValueError(
                f"invalid tag {tag!r} in {shown}: use letters, digits, '_', '.' and '-', "
                "not starting with '.' or '-', at most 128 characters"
            )
    parts = name.split("/")
    host = ""
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        host = parts.pop(0)
        if not valid(_REGISTRY, host):
            raise ValueError(
                f"invalid registry {host!r} in {shown}: write a host name such as "
                "registry.example.com, with an optional :port"
            )
    for part in parts:
        if valid(_IMAGE_PATH, part):
            continue
        if not part:
            raise ValueError(f"{shown} has an empty name part: remove the extra '/'")
        if valid(_IMAGE_PATH, part.lower()):
            fixed = "/".join(([host] if host else []) + [_lower(p) for p in parts])
            fixed += f":{tag}" if tag else ""
            raise ValueError(f"image names are lower case: write {fixed!r}")
        raise ValueError(
            f"invalid name part {part!r} in {shown}: use lower-case letters and digits, "
            "separated by '.', '_', '__' or '-'"
        )
    return text


def _lower(text: str) -> str:
    """`text` in lower case, but for the names in its `${NAME}`."""
    out, end = [], 0
    for match in _REFERENCE_RE.finditer(text):
        out += [text[end : match.start()].lower(), match[0]]
        end = match.end()
    return "".join(out) + text[end:].lower()


def _placeholders(text: str) -> str:
    """`text` with each `${NAME}` (expanded at run time) as one letter, `$${NAME}` as the
    text it stands for: what the static checks of `build:` look at."""
    if "${" not in text:
        return text
    return _REFERENCE_RE.sub(lambda m: "${" + m[2] + "}" if m[1] else "x", text)


def plan(pipeline: Pipeline) -> dict[str, tuple[str, ...]]:
    """Step name -> names of the steps it waits for (see docs/pipeline.md)."""
    waits = _waits_for([(s.name, s.parallel, s.needs) for s in pipeline.steps])
    return {step.name: wait for step, wait in zip(pipeline.steps, waits, strict=True)}


def parse_duration(text: str) -> int:
    """`90s`, `10m`, `1h`, `1h30m`, `2h5m10s` -> seconds; ValueError otherwise."""
    example = "write e.g. 90s, 10m, 1h or 1h30m"
    if not text:
        raise ValueError(f"the duration is empty; {example}")
    # Long digit strings would only hit int()'s own limit; no timeout needs them.
    match = _DURATION_RE.fullmatch(text) if len(text) <= 32 else None
    if match is None:
        if text.isascii() and text.isdigit() and len(text) <= 32:
            raise ValueError(
                f"the duration {text!r} has no unit; write {text}s, {text}m or {text}h"
            )
        if text.startswith("-"):
            raise ValueError(f"the duration {text!r} is negative; {example}")
        raise ValueError(f"invalid duration {text!r}; {example}")
    hours, minutes, seconds = (int(group or 0) for group in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total == 0:
        raise ValueError(f"the duration {text!r} is zero; {example}")
    return total


def json_schema() -> dict[str, object]:
    """JSON Schema (draft-07) of the format, for editors such as VS Code."""

    def properties(table: dict[str, tuple[str, _Schema]]) -> _Schema:
        return {key: {"description": text, **schema} for key, (text, schema) in table.items()}

    schema: dict[str, object] = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "Goci pipeline",
        "description": "A Goci pipeline file (.goci.yml). See docs/pipeline.md.",
        "type": "object",
        "additionalProperties": False,
        "required": ["steps"],
        "properties": properties(_PIPELINE_KEYS),
        "definitions": {
            "step": {
                "type": "object",
                "additionalProperties": False,
                "oneOf": [{"required": [key]} for key in _STEP_KINDS],
                "properties": properties(_STEP_KEYS),
            },
            "build": {
                "type": "object",
                "additionalProperties": False,
                "minProperties": 1,
                "properties": properties(_BUILD_KEYS),
            },
            "ssh": {
                "type": "object",
                "additionalProperties": False,
                "required": list(_SSH_REQUIRED),
                "properties": properties(_SSH_KEYS),
            },
            "input": {
                "type": "object",
                "additionalProperties": False,
                "properties": properties(_INPUT_KEYS),
            },
            "environment_name": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_ENVIRONMENT,
                "pattern": _ENVIRONMENT_NAME,
            },
            "environment": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name"],
                "properties": properties(_ENVIRONMENT_KEYS),
            },
            "build_path": {
                **_TEXT,
                "description": "A path relative to the workspace, without `..`.",
                "minLength": 1,
                "pattern": _BUILD_PATH,
            },
            "when": {
                "type": "object",
                "additionalProperties": False,
                "minProperties": 1,
                "properties": properties(_WHEN_KEYS),
            },
            "path": {
                "type": "object",
                "additionalProperties": False,
                "minProperties": 1,
                "properties": properties(_PATH_KEYS),
            },
            "clone": {
                "type": "object",
                "additionalProperties": False,
                "minProperties": 1,
                "properties": properties(_CLONE_KEYS),
            },
            "matrix": {
                "type": "object",
                "minProperties": 1,
                "propertyNames": _VARIABLE_NAME,
                "properties": properties(_MATRIX_KEYS),
                "additionalProperties": {
                    "description": "An axis: the values of this variable.",
                    "type": "array",
                    "minItems": 1,
                    "items": _TEXT,
                },
            },
            "label": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_LABEL,
                "pattern": _LABEL,
            },
        },
    }
    # The tables share sub-dicts; a caller that edits its schema must not edit them.
    return copy.deepcopy(schema)


# ---------------------------------------------------------------------------
# Bytes -> text -> YAML node tree (never Python objects)


def _too_big(size: int) -> str:
    return (
        f"the file is {size / MAX_BYTES:.1f} MiB ({size} bytes); "
        f"a pipeline file may be at most 1 MiB ({MAX_BYTES} bytes)"
    )


def _decode(data: bytes | str, filename: str) -> str:
    if isinstance(data, str):
        if len(data) > MAX_BYTES:  # at least that many bytes: no need to encode it
            raise PipelineError([Problem(filename, 1, 1, "", _too_big(len(data)))])
        # As bytes, text is measured like a file and a lone surrogate fails like bad UTF-8.
        data = data.encode("utf-8", "surrogatepass")
    if len(data) > MAX_BYTES:
        raise PipelineError([Problem(filename, 1, 1, "", _too_big(len(data)))])
    bom = data.startswith(codecs.BOM_UTF8)
    body = data[len(codecs.BOM_UTF8) :] if bom else data
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        line = body.count(b"\n", 0, error.start) + 1
        line_start = body.rfind(b"\n", 0, error.start) + 1
        # Everything before the bad byte decoded fine, so this slice does too.
        column = len(body[line_start : error.start].decode("utf-8")) + 1
        offset = error.start + (len(codecs.BOM_UTF8) if bom else 0)
        message = (
            f"not valid UTF-8 at byte {offset} (line {line}, column {column}); "
            "save the file as UTF-8"
        )
        raise PipelineError([Problem(filename, line, column, "", message)]) from None
    bad = _NOT_PRINTABLE.search(text)
    if bad is not None:
        line = text.count("\n", 0, bad.start()) + 1
        column = bad.start() - text.rfind("\n", 0, bad.start())
        message = f"the character U+{ord(bad.group()):04X} is not allowed in YAML; remove it"
        raise PipelineError([Problem(filename, line, column, "", message)])
    return text


class _Position(Protocol):
    """A YAML mark, from PyYAML or libyaml: 0-based line and column."""

    @property
    def line(self) -> int: ...
    @property
    def column(self) -> int: ...


def _problem(filename: str, mark: _Position | None, path: str, message: str) -> Problem:
    if mark is None:
        return Problem(filename, 1, 1, path, message)
    return Problem(filename, mark.line + 1, mark.column + 1, path, message)


def _show_tag(tag: str) -> str:
    return "!!" + tag.removeprefix(_YAML_TAG) if tag.startswith(_YAML_TAG) else tag


class _PyParser(Reader, Scanner, Parser):
    """PyYAML's own parser, used when PyYAML was built without libyaml."""

    def __init__(self, text: str) -> None:
        Reader.__init__(self, text)
        Scanner.__init__(self)
        Parser.__init__(self)


def _parser(text: str) -> CParser | _PyParser:
    # libyaml's parser is several times faster on big hostile files.
    return _PyParser(text) if CParser is None else CParser(text)


class _Loader(Composer, Resolver):
    """A YAML parser's events composed into nodes; there is no constructor at all.

    The result is a tree of nodes with positions: no tag can make it build a
    Python object or run code. It also counts nodes and nesting as they come,
    and notes unsupported tags and aliases.
    """

    def __init__(self, text: str, filename: str) -> None:
        Composer.__init__(self)
        Resolver.__init__(self)
        self.parser = _parser(text)
        self.filename = filename
        self.depth = 0
        self.nodes = 0
        self.rejected: dict[int, str] = {}  # id of a node with an unsupported tag -> the tag
        self.aliases: list[tuple[_Position | None, str, Node]] = []  # (where, anchor name, node)

    # The three calls Composer makes to its parser.
    def check_event(self, *choices: type[Event]) -> bool:
        return self.parser.check_event(*choices)

    def peek_event(self) -> Event:
        return cast("Event", self.parser.peek_event())

    def get_event(self) -> Event:
        return cast("Event", self.parser.get_event())

    def fatal(self, mark: _Position | None, message: str) -> PipelineError:
        return PipelineError([_problem(self.filename, mark, "", message)])

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        event = self.peek_event()
        if isinstance(event, AliasEvent):
            if event.anchor not in self.anchors:
                name = event.anchor
                raise self.fatal(
                    event.start_mark, f"unknown alias '*{name}': define '&{name}' before using it"
                )
            node = super().compose_node(parent, index)
            if node is not None:
                self.aliases.append((event.start_mark, str(event.anchor), node))
            return node
        assert isinstance(event, NodeEvent)
        # Stop as soon as a limit is passed: the rest would only cost time and memory.
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise self.fatal(
                event.start_mark,
                f"the YAML has more than {MAX_NODES} nodes; a pipeline needs far fewer",
            )
        nested = isinstance(event, CollectionStartEvent)
        if nested:
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise self.fatal(
                    event.start_mark, f"the YAML is nested more than {MAX_DEPTH} levels deep"
                )
        if event.anchor is not None:
            # YAML lets a later anchor reuse a name (GitLab files do) and aliases then
            # mean the newest node; PyYAML refuses that, so forget the older node.
            self.anchors.pop(event.anchor, None)
        node = super().compose_node(parent, index)
        if nested:
            self.depth -= 1
        tag = getattr(event, "tag", None)
        if node is not None and tag not in (None, "!") and tag not in _CORE_TAGS:
            # Reported by the checker, which knows the node's path.
            self.rejected[id(node)] = _show_tag(str(tag))
        return node


def _compose(text: str, filename: str) -> tuple[_Loader, Node, list[Problem]]:
    """The node tree of the first document; a second document is a problem, not a stop."""
    problems = []
    loader = _Loader(text, filename)
    try:
        loader.get_event()  # stream start
        if loader.check_event(StreamEndEvent):
            raise loader.fatal(None, "the file is empty: a pipeline needs `steps:`")
        root = loader.compose_document()
        if not loader.check_event(StreamEndEvent):
            # Still check the first document: its problems are worth knowing too.
            message = "expected one YAML document, found several (a second one starts here)"
            problems.append(_problem(filename, loader.peek_event().start_mark, "", message))
    except MarkedYAMLError as error:
        raise PipelineError([_syntax_problem(error, text, filename)]) from None
    except YAMLError as error:  # ReaderError: _decode already refused what it refuses
        raise loader.fatal(None, f"invalid YAML: {error}") from None
    finally:
        loader.parser.dispose()
    if root is None or _is_empty(root):
        empty = _problem(filename, None, "", "the file is empty: a pipeline needs `steps:`")
        raise PipelineError(problems or [empty])
    if loader.aliases:
        _check_aliases(loader, root)
    return loader, root, problems


# PyYAML names tokens by their grammar names; say what the user sees instead.
_TOKEN_WORDS = {
    "<block end>": "the end of an indented block",
    "<block mapping start>": "a new key",
    "<block sequence start>": "a list item",
    "<stream end>": "the end of the file",
    "<document start>": "'---'",
    "<scalar>": "a value",
}


def _syntax_problem(error: MarkedYAMLError, text: str, filename: str) -> Problem:
    mark = error.problem_mark or error.context_mark
    problem = error.problem or "invalid YAML"
    for token, words in _TOKEN_WORDS.items():
        problem = problem.replace(f"'{token}'", words).replace(token, words)
    if problem.startswith("mapping values are not allowed"):
        problem += " (quote a value that contains ': ', or check the indentation)"
    message = f"invalid YAML: {problem}"
    if error.context and error.context_mark is not None:
        message += f" ({error.context} that starts on line {error.context_mark.line + 1})"
    # Tabs are the most common cause; libyaml does not name the character.
    lines = text.split("\n")  # YAML also breaks lines at a lone \r: guard the index
    if mark is not None and mark.line < len(lines) and lines[mark.line][mark.column :][:1] == "\t":
        message = "invalid YAML: found a tab character; indent YAML with spaces"
    return _problem(filename, mark, "", message)


def _children(node: Node) -> list[Node]:
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, SequenceNode):
        return list(node.value)
    return []


def _check_aliases(loader: _Loader, root: Node) -> None:
    """Refuse documents whose aliases expand too far, without expanding them.

    Each distinct node is visited once (memoised), so "billion laughs" costs
    as little as its text; sizes saturate at MAX_NODES + 1 to keep numbers small.
    """
    sizes: dict[int, int] = {}
    depths: dict[int, int] = {}
    on_path: set[int] = set()
    # Iterative: alias chains can be far longer than Python's recursion limit.
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            on_path.discard(key)
            children = _children(node)
            sizes[key] = min(MAX_NODES + 1, 1 + sum(sizes[id(child)] for child in children))
            if isinstance(node, ScalarNode):
                depths[key] = 0
            else:
                depths[key] = 1 + max((depths[id(child)] for child in children), default=0)
        elif key in on_path:
            name, mark = next((n, m) for m, n, target in loader.aliases if target is node)
            raise loader.fatal(mark, f"recursive alias '*{name}': a node cannot contain itself")
        elif key not in sizes:
            on_path.add(key)
            stack.append((node, True))
            stack.extend((child, False) for child in _children(node))

    def worst(measure: dict[int, int]) -> tuple[_Position | None, str, int]:
        mark, name, node = max(loader.aliases, key=lambda alias: measure[id(alias[2])])
        return mark, name, measure[id(node)]

    if sizes[id(root)] > MAX_NODES:
        mark, name, size = worst(sizes)
        amount = f"more than {MAX_NODES}" if size > MAX_NODES else str(size)
        raise loader.fatal(
            mark,
            f"YAML aliases expand to more than {MAX_NODES} nodes (billion laughs?); "
            f"'*{name}' alone stands for {amount} nodes",
        )
    if depths[id(root)] > MAX_DEPTH:
        mark, name, _ = worst(depths)
        raise loader.fatal(
            mark, f"YAML alias '*{name}' nests the document more than {MAX_DEPTH} levels deep"
        )


# ---------------------------------------------------------------------------
# Node tree -> Pipeline, collecting every problem


def _is_empty(node: Node) -> bool:
    """`key:` with nothing after it (not `key: ""`)."""
    # PyYAML marks a plain scalar with style None, libyaml with "".
    return isinstance(node, ScalarNode) and node.value == "" and not node.style


def _describe(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if _is_empty(node):
        return "nothing"
    text = str(node.value)
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    import difflib  # noqa: PLC0415  (only a file with a mistake needs it)

    matches = difflib.get_close_matches(word, list(choices), n=1)
    return f"did you mean {matches[0]!r}?" if matches else None


def _parse_name(text: str) -> str:
    if not text.strip():
        raise ValueError("the name is empty")
    if "\n" in text or "\r" in text:
        raise ValueError("a name must fit on one line")
    if len(text) > MAX_NAME:
        raise ValueError(f"a name may be at most {MAX_NAME} characters, this one has {len(text)}")
    return text


def _parse_run(text: str) -> str:
    if not text.strip():
        raise ValueError("`run` is empty: write the commands this step runs")
    return text


def _parse_image(text: str) -> str:
    if not text.strip():
        raise ValueError("the image is empty: name one such as golang:1.22, or remove `image:`")
    return text


def _parse_event(text: str) -> str:
    if text not in EVENTS:
        hint = _did_you_mean(text, EVENTS)
        known = "events are " + ", ".join(EVENTS)
        raise ValueError(f"unknown event {text!r} ({hint + '; ' if hint else ''}{known})")
    return text


_INPUT_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_ENVIRONMENT_NAME_RE = re.compile(_ENVIRONMENT_NAME)
_URL_RE = re.compile(r"https?://[^\s/?#]+[^\s]*")


def input_variable(name: str) -> str:
    """GOCI_INPUT_<NAME>: upper case, `-` as `_` (GitHub's `log-level` is LOG_LEVEL)."""
    return "GOCI_INPUT_" + name.upper().replace("-", "_")


def _parse_input_type(text: str) -> str:
    if text not in INPUT_TYPES:
        hint = _did_you_mean(text, INPUT_TYPES)
        raise ValueError(
            f"unknown input type {text!r} ({hint + '; ' if hint else ''}types are "
            + ", ".join(INPUT_TYPES)
            + ")"
        )
    return text


def _parse_input_value(text: str) -> str:
    if len(text) > MAX_INPUT_VALUE:
        raise ValueError(f"at most {MAX_INPUT_VALUE} characters, found {len(text)}")
    if "\0" in text:
        raise ValueError("a value cannot hold a NUL character")
    return text


def _parse_environment(text: str) -> str:
    if not _ENVIRONMENT_NAME_RE.fullmatch(text) or len(text) > MAX_ENVIRONMENT:
        raise ValueError(
            f"invalid environment name {text[:MAX_ENVIRONMENT]!r}: at most "
            f"{MAX_ENVIRONMENT} letters, digits, ., _ and -, starting with a letter or digit"
        )
    return text


def _parse_url(text: str) -> str:
    if len(text) > MAX_URL or not _URL_RE.fullmatch(text):
        raise ValueError(f"expected an http:// or https:// URL of at most {MAX_URL} characters")
    return text


class InputsError(ValueError):
    """The values given for a pipeline's inputs are wrong: each problem, by input."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"inputs.{name}: {message}" for name, message in problems))


def check_inputs(pipeline: Pipeline, given: Mapping[str, object]) -> dict[str, str]:
    """The value of every declared input, from `given` or its default ("" if neither),
    as a step gets it; InputsError naming every problem: an undeclared input, a
    required one missing, a wrong type, a choice not among the options."""
    declared = {item.name: item for item in pipeline.inputs}
    problems: list[tuple[str, str]] = []
    for name in given:
        if name not in declared:
            hint = _did_you_mean(str(name), declared)
            known = (
                "the pipeline declares " + ", ".join(declared)
                if declared
                else "the pipeline declares no `inputs:`"
            )
            problems.append(
                (str(name)[:100], f"unknown input ({hint + '; ' if hint else ''}{known})")
            )
    values: dict[str, str] = {}
    for name, item in declared.items():
        value = given.get(name)
        if value is None or value == "":
            if item.required and item.default is None:
                problems.append((name, "required: give a value"))
            values[name] = item.default or ""
            continue
        problem = _input_problem(item, value)
        if problem is not None:
            problems.append((name, problem))
            continue
        values[name] = str(value).lower() if item.type == "boolean" else str(value)
    if problems:
        raise InputsError(problems)
    return values


def _input_problem(item: Input, value: object) -> str | None:
    if item.type == "boolean":
        if isinstance(value, bool) or (
            isinstance(value, str) and value.lower() in ("true", "false")
        ):
            return None
        return "expected true or false"
    if not isinstance(value, str):
        return "expected a string"
    if len(value) > MAX_INPUT_VALUE:
        return f"at most {MAX_INPUT_VALUE} characters, found {len(value)}"
    if "\0" in value:
        return "a value cannot hold a NUL character"
    try:
        value.encode()
    except UnicodeEncodeError:
        return "not valid text (a lone surrogate)"
    if item.type == "choice" and value not in item.options:
        return f"{value[:100]!r} is not one of " + ", ".join(item.options)
    return None


def _parse_shell(text: str) -> str:
    if not text or any(char.isspace() for char in text):
        raise ValueError(f"the shell must be one word such as 'sh' or 'bash', found {text!r}")
    return text


def _parse_bool(text: str) -> bool:
    # Only true/false: YAML 1.1 also reads yes/no/on/off as booleans, a classic trap.
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    raise ValueError(f"expected true or false, found {text!r}")


def _parse_retry(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"expected a whole number from 0 to 5, found {text!r}")
    digits = text.lstrip("0") or "0"
    if len(digits) > 1 or int(digits) > 5:
        raise ValueError(f"retry may be at most 5, found {text}")
    return int(digits)


def _is_absolute(text: str) -> bool:
    """A path from the root, for POSIX or Windows."""
    return posixpath.isabs(text) or text.startswith("\\") or bool(re.match(r"[A-Za-z]:[\\/]", text))


def _parse_workdir(text: str) -> str:
    if not text.strip():
        raise ValueError("workdir is empty; remove it to run in the workspace itself")
    if _is_absolute(text):
        raise ValueError(f"workdir must be relative to the workspace, found {text!r}")
    depth = 0
    for part in text.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                raise ValueError(f"workdir {text!r} leaves the workspace")
        elif part not in ("", "."):
            depth += 1
    return text


def _parse_ssh_host(text: str) -> str:
    """An `ssh:` host: a host name, an IPv4 address, or an IPv6 address without brackets."""
    shown = repr(text if len(text) <= 80 else text[:77] + "...")
    if not text.strip():
        raise ValueError("`host` is empty: write the host name or IP address of the machine")
    if any(char.isspace() or ord(char) < 32 or ord(char) == 127 for char in text):
        raise ValueError(f"a host has no spaces or control characters, found {shown}")
    if len(text) > MAX_HOST:
        raise ValueError(f"a host may be at most {MAX_HOST} characters, this one has {len(text)}")
    user, at, host = text.rpartition("@")
    if at:
        raise ValueError(
            f"write the user in `user:` and the host alone: `user: {user}`, `host: {host}`"
        )
    if text.startswith("["):
        address, _, port = text[1:].partition("]")
        if port.startswith(":"):
            raise ValueError(
                f"write the port in `port:` and the address without brackets: "
                f"`host: {address}`, `port: {port[1:]}`"
            )
        raise ValueError(f"write an IPv6 address without brackets: `host: {address}`")
    import ipaddress  # noqa: PLC0415  (only an `ssh:` step needs it)

    if ":" in text:
        name, _, port = text.rpartition(":")
        if ":" not in name and port.isascii() and port.isdigit():
            raise ValueError(f"write the port in `port:`: `host: {name}`, `port: {port}`")
        try:
            # A zone (fe80::1%eth0) names an interface of one machine: no host of a pipeline.
            valid = ipaddress.IPv6Address(text).scope_id is None
        except ValueError:
            valid = False
        if not valid:
            raise ValueError(
                f"invalid IPv6 address {shown}: write one such as 2001:db8::5, without brackets"
            )
        return text
    if not re.fullmatch(_HOST_NAME, text):
        raise ValueError(
            f"invalid host {shown}: write a host name (letters, digits, '-' and '.') "
            "or an IP address"
        )
    if re.fullmatch(_IPV4_LIKE, text):
        try:
            ipaddress.IPv4Address(text)
        except ValueError:
            raise ValueError(
                f"invalid IPv4 address {shown}: write four numbers from 0 to 255, "
                "such as 203.0.113.5"
            ) from None
        return text
    for label in text.split("."):
        if not label:
            raise ValueError(f"invalid host name {shown}: a part between dots is empty")
        if len(label) > 63:
            raise ValueError(
                f"invalid host name {shown}: a part between dots may be at most 63 characters"
            )
        if label.startswith("-") or label.endswith("-"):
            raise ValueError(
                f"invalid host name {shown}: a part between dots cannot start or end with '-'"
            )
    return text


def _parse_port(text: str) -> int:
    shown = repr(text) if len(text) <= 40 else f"a value of {len(text)} characters"
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"expected a port number from 1 to 65535, found {shown}")
    digits = text.lstrip("0") or "0"
    if len(digits) > 5 or not 1 <= int(digits) <= 65535:
        raise ValueError(f"a port is a number from 1 to 65535, found {shown}")
    return int(digits)


def _parse_ssh_user(text: str) -> str:
    shown = repr(text if len(text) <= 80 else text[:77] + "...")
    if not text.strip():
        raise ValueError("`user` is empty: write the user to log in as on the host")
    if any(char.isspace() or ord(char) < 32 or ord(char) == 127 for char in text):
        raise ValueError(f"a user has no spaces or control characters, found {shown}")
    if len(text) > MAX_SSH_USER:
        raise ValueError(
            f"a user may be at most {MAX_SSH_USER} characters, this one has {len(text)}"
        )
    if text.startswith("-"):
        raise ValueError(f"a user cannot start with '-', found {shown}")
    return text


def _parse_script(text: str) -> str:
    if not text.strip():
        raise ValueError("`script` is empty: write the commands to run on the host")
    if "\0" in text:
        raise ValueError("`script` has a NUL character (\\0): remove it")
    return text


def _parse_connect_timeout(text: str) -> int:
    seconds = parse_duration(text)
    if seconds > MAX_CONNECT_TIMEOUT:
        raise ValueError(f"connect_timeout may be at most 10m, found {text!r}")
    return seconds


def _default_dockerfile(context: str) -> str:
    return posixpath.normpath(posixpath.join(context, "Dockerfile"))


def _parse_clone(text: str) -> bool:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    raise ValueError(f"expected true, false or {{depth: N}}, found {text!r}")


def _parse_depth(text: str) -> int:
    expected = f"expected a whole number from 0 to {MAX_CLONE_DEPTH}"
    shown = repr(text) if len(text) <= 40 else f"a value of {len(text)} characters"
    if text.startswith("-") and text[1:].isascii() and text[1:].isdigit():
        raise ValueError("the depth cannot be negative; 0 fetches the whole history")
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"{expected}, found {shown}")
    digits = text.lstrip("0") or "0"
    if len(digits) > len(str(MAX_CLONE_DEPTH)) or int(digits) > MAX_CLONE_DEPTH:
        raise ValueError(
            f"the depth may be at most {MAX_CLONE_DEPTH} (0 fetches the whole history), "
            f"found {shown}"
        )
    return int(digits)


# ---------------------------------------------------------------------------
# Path patterns of `when: {path: ...}`, with doublestar's rules (Woodpecker's): the
# whole path is matched; `*`, `?` and `[...]` stay within one directory level, `**`
# stands for any number of levels, `{a,b}` for either. Each pattern becomes one
# regular expression whose every choice but the last is atomic (earliest fit, kept), so
# no pattern can make matching backtrack badly: see _level_regex and _glob_regex.


def _class_end(text: str, start: int) -> int:
    """Index of the `]` closing the `[` at `start` (fnmatch's rule: a `]` first in the
    class is part of it), or -1."""
    index = start + 1
    if index < len(text) and text[index] in "!^":
        index += 1
    if index < len(text) and text[index] == "]":
        index += 1
    return text.find("]", index)


def _braces(text: str) -> tuple[int, int, list[str]] | None:
    """The first `{...}` of text outside `[...]`: (start, end, its alternatives)."""
    index = 0
    while index < len(text):
        char = text[index]
        if char == "[":
            end = _class_end(text, index)
            index = index + 1 if end < 0 else end + 1
            continue
        if char != "{":
            index += 1
            continue
        start, depth, begin = index, 0, index + 1
        alternatives: list[str] = []
        while index < len(text):
            char = text[index]
            if char == "[" and (end := _class_end(text, index)) >= 0:
                index = end
            elif char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
                if depth == 0:
                    return start, index, [*alternatives, text[begin:index]]
            elif char == "," and depth == 1:
                alternatives.append(text[begin:index])
                begin = index + 1
            index += 1
        raise ValueError("'{' is not closed; write [{] for a literal {")
    return None


def _class_regex(body: str) -> str:
    """`[...]` (its text between the brackets) as a regex class that never takes `/`.
    Everything but an `a-z` range is literal, so it is escaped; a backwards range
    would be a regex error, so it is refused here."""

    def literal(char: str) -> str:
        return "\\" + char if char in "\\[]^&~|-" else char

    negate = body[:1] in ("!", "^")
    body = body[1:] if negate else body
    out = []
    index = 0
    while index < len(body):
        if index + 2 < len(body) and body[index + 1] == "-":
            low, high = body[index], body[index + 2]
            if low > high:
                raise ValueError(f"the range {low}-{high} is backwards; write {high}-{low}")
            out.append(f"{literal(low)}-{literal(high)}")
            index += 3
        else:
            out.append(literal(body[index]))
            index += 1
    return f"[^/{''.join(out)}]" if negate else f"[{''.join(out)}]"


def _level_regex(level: str) -> str:
    """One directory level of a pattern as a regex that never leaves the level. As in
    fnmatch, every `*` but the last takes the earliest text where what follows it fits,
    and keeps it (an atomic group): the text between stars has a fixed length, so the
    earliest fit never loses a match, and `*a*a*a*b` costs no more than `*b`."""
    if level in (".", ".."):
        raise ValueError("'.' and '..' are not allowed: write the path from the repository's top")
    if "**" in level:
        raise ValueError(
            "'**' must be a whole directory level, as in 'src/**/*.go'; within a name write '*'"
        )
    chunks = [""]  # the level's text between its stars, as regexes
    index = 0
    while index < len(level):
        char = level[index]
        if char == "*":
            chunks.append("")
        elif char == "?":
            chunks[-1] += "[^/]"
        elif char == "[":
            end = _class_end(level, index)
            if end < 0:
                raise ValueError(
                    "'[' is not closed within its directory level; write [[] for a literal ["
                )
            chunks[-1] += _class_regex(level[index + 1 : end])
            index = end
        else:
            chunks[-1] += re.escape(char)
        index += 1
    if len(chunks) == 1:
        return chunks[0]
    head, *middle, tail = chunks
    return head + "".join(f"(?>[^/]*?{chunk})" for chunk in middle) + "[^/]*" + tail


def _levels_regex(levels: list[str]) -> str:
    """A pattern without braces, split at `/`, as a regex of the whole path. Between two
    `**`, a run of levels takes the earliest levels where it fits, and keeps them (an
    atomic group): the `**` after it takes any number of levels, so that never loses a
    match. The last run is anchored at the end, the first at the start."""
    runs: list[list[str]] = [[]]
    for level in levels:
        if level == "**":
            if runs[-1] or len(runs) == 1:  # a/**/**/b is a/**/b
                runs.append([])
        else:
            runs[-1].append(_level_regex(level))
    if len(runs) == 1:
        return "/".join(runs[0])
    first, *middle, last = runs
    regex = "/".join(first)
    after_level = bool(first)  # the next level starts after a "/"
    for run in middle:
        regex += ("/" if after_level else "") + f"(?>(?:[^/]*/)*?{'/'.join(run)}(?![^/]))"
        after_level = True
    if last:
        return regex + ("/" if after_level else "") + "(?:[^/]*/)*" + "/".join(last)
    return regex + ("(?:/.*)?" if after_level else ".*")


@functools.lru_cache(maxsize=4096)
def _glob_sources(pattern: str) -> tuple[str, ...]:
    """A path pattern as the regexes of whole paths it stands for (one per `{a,b}`
    alternative), not compiled: validating a file needs no compiling, which costs
    far more. ValueError, saying why to the user, if the text is not a pattern Goci
    reads the way its author meant."""
    if not pattern.strip():
        raise ValueError("the pattern is empty")
    if len(pattern) > MAX_GLOB:
        raise ValueError(
            f"a pattern may be at most {MAX_GLOB} characters, this one has {len(pattern)}"
        )
    if pattern.startswith("!"):
        raise ValueError("'!' does not negate a pattern here: list it under 'exclude' instead")
    if pattern.startswith("/"):
        raise ValueError(
            f"paths are relative to the repository's top: write {pattern.lstrip('/') or '**'!r}"
        )
    if "\\" in pattern:
        raise ValueError(
            "a backslash is not allowed: separate directories with '/', and write "
            "[*], [?], [[] or [{] for a literal *, ?, [ or {"
        )
    if pattern.endswith("/"):
        raise ValueError(
            f"a pattern matches files, not directories: write {pattern + '**'!r} "
            "for every file under it"
        )
    regexes: list[str] = []
    todo = [pattern]
    while todo:
        text = todo.pop()
        braces = _braces(text)
        if braces is None:
            levels = text.split("/")
            if "" in levels:
                raise ValueError("a directory level is empty ('//'); write one '/'")
            regexes.append(_levels_regex(levels))
            continue
        start, end, alternatives = braces
        todo.extend(text[:start] + alt + text[end + 1 :] for alt in reversed(alternatives))
        if len(regexes) + len(todo) > MAX_GLOBS:
            raise ValueError(f"the braces make more than {MAX_GLOBS} patterns of this one")
    return tuple(regexes)


@functools.lru_cache(maxsize=1024)
def _glob_regex(patterns: tuple[str, ...]) -> re.Pattern[str]:
    """Valid path patterns (see _glob_sources) as one compiled regex that matches a
    path matched by any of them: one call per changed file, whatever their number."""
    sources = (f"(?:{source})" for pattern in patterns for source in _glob_sources(pattern))
    return re.compile(f"(?:{'|'.join(sources)})\\Z", re.DOTALL)


def _waits_for(
    steps: Sequence[tuple[str, bool, tuple[str, ...] | None]],
) -> list[tuple[str, ...]]:
    """The dependency rule: explicit needs, else every step of the previous stage.

    Consecutive `parallel` steps form one stage; every other step is a stage alone.
    """
    waits: list[tuple[str, ...]] = []
    previous: list[str] = []
    current: list[str] = []
    for index, (name, parallel, needs) in enumerate(steps):
        if not (parallel and index > 0 and steps[index - 1][1]):
            previous, current = current, []
        current.append(name)
        waits.append(needs if needs is not None else tuple(previous))
    return waits


def _components(graph: list[list[int]]) -> list[list[int]]:
    """Strongly connected components (Kosaraju); iterative, so no chain hits the recursion limit."""
    seen = [False] * len(graph)
    order: list[int] = []
    for start in range(len(graph)):
        if seen[start]:
            continue
        seen[start] = True
        stack = [(start, iter(graph[start]))]
        while stack:
            vertex, successors = stack[-1]
            for successor in successors:
                if not seen[successor]:
                    seen[successor] = True
                    stack.append((successor, iter(graph[successor])))
                    break
            else:
                stack.pop()
                order.append(vertex)
    reverse: list[list[int]] = [[] for _ in graph]
    for vertex, targets in enumerate(graph):
        for target in targets:
            reverse[target].append(vertex)
    assigned = [False] * len(graph)
    components: list[list[int]] = []
    for start in reversed(order):
        if assigned[start]:
            continue
        assigned[start] = True
        members, todo = [start], [start]
        while todo:
            for other in reverse[todo.pop()]:
                if not assigned[other]:
                    assigned[other] = True
                    members.append(other)
                    todo.append(other)
        components.append(members)
    return components


def _cycle_from(start: int, graph: list[list[int]], members: set[int]) -> list[int]:
    """Shortest cycle start -> ... -> start inside one strongly connected component."""
    parent: dict[int, int] = {}
    queue = deque([start])
    while queue:
        vertex = queue.popleft()
        for successor in graph[vertex]:
            if successor == start:
                path = [vertex]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return [*reversed(path), start]
            if successor in members and successor not in parent:
                parent[successor] = vertex
                queue.append(successor)
    raise AssertionError("a strongly connected component always has a cycle")


@dataclass
class _Draft:
    """What the DAG checks need of one step, even when the step itself is wrong."""

    index: int
    node: Node
    name: str | None  # None when the name itself is wrong (already reported)
    name_node: Node
    name_path: str
    parallel: bool = False
    needs: list[tuple[str, Node, str]] | None = None  # (name, node, path)
    step: Step | None = None  # None when the step has problems


@dataclass(frozen=True)
class _Deferred:
    """A string that uses a matrix variable, to be checked once per cell, substituted."""

    node: Node
    path: str
    text: str
    check: Callable[[str], object]
    glob: bool = False  # a path pattern: _glob_sources, counted against MAX_GLOBS


class _Checker:
    def __init__(self, filename: str, rejected: dict[int, str]) -> None:
        self.filename = filename
        self.rejected = rejected
        self.problems: list[Problem] = []
        self.globs_used = 0  # path patterns so far (MAX_GLOBS)
        # The matrix's variables, known before the rest of the file is read, so that
        # the checks of strings that use them wait for their values.
        self.variables: frozenset[str] = frozenset()
        self.may_fail: tuple[dict[str, str], ...] = ()
        self.deferred: list[_Deferred] = []
        self.substituted = 0  # strings that use a matrix variable (MAX_SUBSTITUTIONS)
        self.matrix_node: Node | None = None  # the key `matrix`, if there is one

    def add(self, node: Node, path: str, message: str) -> None:
        self.problems.append(_problem(self.filename, node.start_mark, path, message))

    # -- every mapping of the document, known keys or not

    def check_mappings(self, root: Node) -> None:
        """Tags, duplicate keys, non-string keys and bad merges, anywhere in the file."""
        seen: set[int] = set()

        def walk(node: Node, path: str) -> None:
            # An alias is the same node as its anchor: check it once, where it is written.
            if id(node) in seen:
                return
            seen.add(id(node))
            self.check_tag(node, path)
            if isinstance(node, SequenceNode):
                for index, item in enumerate(node.value):
                    walk(item, f"{path}[{index}]")
                return
            if not isinstance(node, MappingNode):
                return
            first: dict[str, Node] = {}
            for key, value in node.value:
                if id(key) in self.rejected:
                    self.check_tag(key, path)
                    continue
                if not isinstance(key, ScalarNode):
                    self.add(key, path, f"a key must be a name, found {_describe(key)}")
                    continue
                name = str(key.value)
                if key.tag == _MERGE_TAG:
                    self.check_merge(key, value, path)
                    walk(value, path)
                    continue
                if name in first:
                    line = first[name].start_mark.line + 1
                    message = f"duplicate key {name!r} (first defined on line {line})"
                    self.add(key, _join(path, name), message)
                else:
                    first[name] = key
                walk(value, _join(path, name))

        walk(root, "")

    def check_tag(self, node: Node, path: str) -> None:
        if id(node) in self.rejected:
            tag = self.rejected[id(node)]
            self.add(node, path, f"unsupported tag {tag!r}: Goci reads plain YAML; remove the tag")

    def check_merge(self, key: Node, value: Node, path: str) -> None:
        sources = list(value.value) if isinstance(value, SequenceNode) else [value]
        for source in sources:
            if not isinstance(source, MappingNode) and id(source) not in self.rejected:
                # Reported at `<<`: an aliased value's position is where its anchor is.
                message = f"'<<' merges mappings only, found {_describe(source)}"
                if isinstance(value, SequenceNode) and isinstance(source, ScalarNode):
                    message += " (YAML merge keys cannot splice lists)"
                self.add(key, path, message)
                return

    def pairs(self, node: MappingNode) -> dict[str, tuple[Node, Node]]:
        """Key name -> (key node, value node), with `<<` merges applied."""
        explicit: dict[str, tuple[Node, Node]] = {}
        merged: dict[str, tuple[Node, Node]] = {}
        for key, value in node.value:
            if not isinstance(key, ScalarNode) or id(key) in self.rejected:
                continue
            if key.tag != _MERGE_TAG:
                explicit.setdefault(str(key.value), (key, value))
                continue
            sources = list(value.value) if isinstance(value, SequenceNode) else [value]
            for source in sources:
                if isinstance(source, MappingNode) and id(source) not in self.rejected:
                    # Mappings earlier in `<<: [*a, *b]` win, as the YAML merge spec says.
                    for name, pair in self.pairs(source).items():
                        merged.setdefault(name, pair)
        return merged | explicit  # keys written in the mapping override merged ones

    # -- typed readers: each reports what is wrong and returns None

    def mapping(self, node: Node, path: str, expected: str) -> dict[str, tuple[Node, Node]] | None:
        if id(node) in self.rejected:
            return None
        if not isinstance(node, MappingNode):
            self.add(node, path, f"expected {expected}, found {_describe(node)}")
            return None
        return self.pairs(node)

    def text(self, node: Node, path: str, expected: str = "a string") -> str | None:
        if id(node) in self.rejected:
            return None
        if not isinstance(node, ScalarNode):
            self.add(node, path, f"expected {expected}, found {_describe(node)}")
            return None
        # The text as written: `010`, `yes` and `12:30` stay strings, never 8, True, 750.
        return str(node.value)

    def scalar(
        self,
        pairs: dict[str, tuple[Node, Node]],
        key: str,
        path: str,
        parse: Callable[[str], _T],
        expected: str = "a string",
    ) -> _T | None:
        if key not in pairs:
            return None
        node, where = pairs[key][1], _join(path, key)
        text = self.text(node, where, expected)
        if text is None:
            return None
        try:
            return parse(text)
        except ValueError as error:
            self.add(node, where, str(error))
            return None

    def names(
        self, node: Node, path: str, *, allow_empty: bool, what: str = "name"
    ) -> list[tuple[str, Node, str]] | None:
        """A name (or another `what`) or a list of them, each with its node and path."""
        if id(node) in self.rejected:
            return None
        if isinstance(node, ScalarNode) and not _is_empty(node):
            return [(str(node.value), node, path)]
        if not isinstance(node, SequenceNode):
            self.add(node, path, f"expected a {what} or a list of {what}s, found {_describe(node)}")
            return None
        if not node.value and not allow_empty:
            self.add(node, path, "the list is empty, so it would never match; remove it")
            return None
        found = []
        for index, item in enumerate(node.value):
            text = self.text(item, f"{path}[{index}]", f"a {what}")
            if text is not None:
                found.append((text, item, f"{path}[{index}]"))
        return found

    def check_keys(
        self,
        pairs: dict[str, tuple[Node, Node]],
        path: str,
        known: Mapping[str, object],
        hints: Mapping[str, str],
        *,
        reserved: bool = True,
        fallback: str | None = None,
    ) -> None:
        for name, (key, _) in pairs.items():
            if name in known:
                continue
            if reserved and name in RESERVED_KEYS:
                message = (
                    f"{name!r} is not supported yet (reserved for a later version of the format)"
                )
            else:
                hint = hints.get(name) or _did_you_mean(name, known) or fallback
                message = f"unknown key {name!r}" + (f" ({hint})" if hint else "")
            self.add(key, path, message)

    def env(
        self, pairs: dict[str, tuple[Node, Node]], path: str
    ) -> tuple[dict[str, str], dict[str, str]]:
        """The plain variables, and those that come from a secret (variable -> secret)."""
        if "env" not in pairs:
            return {}, {}
        where = _join(path, "env")
        mapping = self.mapping(pairs["env"][1], where, "a mapping of NAME: value")
        if mapping is None:
            return {}, {}
        env, secrets = {}, {}
        for name, (key, value) in mapping.items():
            var_path = f"{where}.{name}"
            self.variable_name(name, key, var_path)
            if isinstance(value, MappingNode) and id(value) not in self.rejected:
                secret = self.from_secret(value, var_path)
                if secret is not None:
                    secrets[name] = secret
                continue
            text = self.text(value, var_path, "a string or {from_secret: name}")
            if text is not None:
                self.matrix_text(value, var_path, text)
                env[name] = text
        return env, secrets

    def variable_name(self, name: str, key: Node, path: str, what: str = "variable") -> bool:
        """Whether `name` may be an environment variable of the file (else reported); a
        build arg (`what`) may also have a name Goci sets."""
        if not _ENV_NAME_RE.fullmatch(name):
            message = (
                f"invalid {what} name {name!r}: "
                "use letters, digits and _, not starting with a digit"
            )
            self.add(key, path, message)
            return False
        if what == "variable" and (name in ("CI", "GOCI") or name.startswith("GOCI_")):
            self.add(key, path, f"{name!r} is set by Goci; choose another name")
            return False
        return True

    def from_secret(self, node: MappingNode, path: str) -> str | None:
        mapping = self.pairs(node)
        fallback = "a variable's mapping takes only 'from_secret'"
        self.check_keys(mapping, path, {"from_secret": None}, {}, reserved=False, fallback=fallback)
        if "from_secret" not in mapping:
            if not mapping:
                self.add(node, path, "expected {from_secret: name}, found an empty mapping")
            return None
        return self.secret_name(mapping["from_secret"][1], f"{path}.from_secret")

    def secret_name(self, value: Node, where: str) -> str | None:
        name = self.text(value, where, "a secret's name")
        if name is None:
            return None
        # Secret names are A-Z, 0-9 and _: `from_secret: deploy_token` (Woodpecker's
        # lower case) names DEPLOY_TOKEN.
        if not _ENV_NAME_RE.fullmatch(name):
            self.add(
                value,
                where,
                f"invalid secret name {name!r}: use letters, digits and _, "
                "not starting with a digit",
            )
            return None
        return name.upper()

    def when(self, pairs: dict[str, tuple[Node, Node]], path: str) -> When | None:
        if "when" not in pairs:
            return None
        node, where = pairs["when"][1], _join(path, "when")
        expected = "a mapping with `branch`, `event` and/or `path`"
        if isinstance(node, SequenceNode) and id(node) not in self.rejected:
            # Woodpecker's list of alternatives; Goci's lists are within a condition.
            message = f"expected {expected}, found a list (write one mapping; a condition "
            self.add(node, where, message + "takes a list of alternatives: `event: [push, tag]`)")
            return None
        mapping = self.mapping(node, where, expected)
        if mapping is None:
            return None
        if not mapping:
            message = "`when` has no conditions: give `branch`, `event` and/or `path`, or remove it"
            self.add(node, where, message)
            return None
        fallback = "when supports only 'branch', 'event' and 'path'"
        self.check_keys(mapping, where, _WHEN_KEYS, _WHEN_HINTS, reserved=False, fallback=fallback)
        branch = event = path_filter = None
        if "branch" in mapping:
            found = self.names(mapping["branch"][1], f"{where}.branch", allow_empty=False)
            for name, item, item_path in found or ():
                self.matrix_text(item, item_path, name)
            branch = None if found is None else tuple(name for name, _, _ in found)
        if "event" in mapping:
            found = self.names(mapping["event"][1], f"{where}.event", allow_empty=False)
            for name, item, item_path in found or ():
                if self.matrix_text(item, item_path, name, _parse_event):
                    continue
                try:
                    _parse_event(name)
                except ValueError as error:
                    self.add(item, item_path, str(error))
            event = None if found is None else tuple(name for name, _, _ in found)
        if "path" in mapping:
            path_filter = self.path_filter(mapping["path"][1], f"{where}.path")
        return When(branch=branch, event=event, path=path_filter)

    def path_filter(self, node: Node, path: str) -> PathFilter | None:
        """`path: PATTERN`, `path: [PATTERNS]` or `path: {include: ..., exclude: ...}`."""
        if not isinstance(node, MappingNode) or id(node) in self.rejected:
            include = self.globs(node, path)
            return None if include is None else PathFilter(include=include)
        mapping = self.pairs(node)
        if not mapping:
            self.add(node, path, "`path` has no patterns: give `include` and/or `exclude`")
            return None
        fallback = "path takes only 'include' and 'exclude'"
        self.check_keys(mapping, path, _PATH_KEYS, {}, reserved=False, fallback=fallback)
        parts = {
            key: self.globs(mapping[key][1], f"{path}.{key}") if key in mapping else ()
            for key in _PATH_KEYS
        }
        include, exclude = parts["include"], parts["exclude"]
        if include is None or exclude is None or not (include or exclude):
            return None
        return PathFilter(include=include, exclude=exclude)

    def globs(self, node: Node, path: str) -> tuple[str, ...] | None:
        found = self.names(node, path, allow_empty=False, what="pattern")
        if found is None:
            return None
        for pattern, item, item_path in found:
            if self.globs_used > MAX_GLOBS:
                break  # said once; checking the rest would only cost time
            if self.matrix_text(item, item_path, pattern, _glob_sources, glob=True):
                continue
            try:
                self.globs_used += len(_glob_sources(pattern))
            except ValueError as error:
                self.add(item, item_path, str(error))
                continue
            if self.globs_used > MAX_GLOBS:
                message = (
                    f"too many path patterns: a pipeline may have at most {MAX_GLOBS}, "
                    "counting each use and each {a,b} alternative"
                )
                self.add(item, item_path, message)
        return tuple(pattern for pattern, _, _ in found)

    def clone(self, pairs: dict[str, tuple[Node, Node]]) -> tuple[bool, int]:
        """`clone: true|false|{depth: N}` -> (check out?, depth)."""
        if "clone" not in pairs:
            return True, 1
        node = pairs["clone"][1]
        if _is_empty(node):
            self.add(node, "clone", "expected true, false or {depth: N}, found nothing")
            return True, 1
        if not isinstance(node, MappingNode) or id(node) in self.rejected:
            clone = self.scalar(pairs, "clone", "", _parse_clone, "true, false or {depth: N}")
            return clone is not False, 1
        mapping = self.pairs(node)
        if not mapping:
            message = "`clone` is empty: write `clone: {depth: N}`, or remove it for depth 1"
            self.add(node, "clone", message)
            return True, 1
        hints = dict(_CLONE_HINTS)
        for name, (_, value) in mapping.items():
            if isinstance(value, MappingNode) and name not in _CLONE_KEYS:
                # Woodpecker's and Drone's clone step: `clone: {git: {image: ..., settings:
                # {depth: 50}}}`. Goci fetches by itself, so only the depth carries over.
                step = self.pairs(value)
                settings = step["settings"][1] if "settings" in step else value
                their_depth = "N"
                if isinstance(settings, MappingNode):
                    written = self.pairs(settings).get("depth", (None, None))[1]
                    text = str(written.value) if isinstance(written, ScalarNode) else ""
                    if text.isascii() and text.isdigit() and len(text) <= 7:
                        their_depth = text
                hints[name] = (
                    f"Goci fetches the commit itself: write `clone: {{depth: {their_depth}}}`"
                )
        fallback = "clone takes only 'depth'"
        self.check_keys(mapping, "clone", _CLONE_KEYS, hints, reserved=False, fallback=fallback)
        depth = self.scalar(
            mapping, "depth", "clone", _parse_depth, f"a whole number from 0 to {MAX_CLONE_DEPTH}"
        )
        return True, 1 if depth is None else depth

    # -- the matrix

    def matrix(self, pairs: dict[str, tuple[Node, Node]]) -> tuple[dict[str, str], ...]:
        """`matrix:` -> its cells in order (the axes' combinations, the last axis varying
        fastest, without those excluded, then the new combinations of `include`); ()
        without a matrix or when it has problems (reported). Notes its variables first:
        the strings of the rest of the file that use them are checked per cell."""
        if "matrix" not in pairs:
            return ()
        # Problems of the whole matrix are reported at its key: its value's position
        # is that of its first axis.
        self.matrix_node, node = pairs["matrix"]
        expected = "a mapping of NAME: [values], with optional `include` and `exclude`"
        if isinstance(node, SequenceNode) and id(node) not in self.rejected:
            # Woodpecker's and GitHub's `include` written without its key.
            self.add(node, "matrix", f"expected {expected}, found a list (write `include:` first)")
            return ()
        mapping = self.mapping(node, "matrix", expected)
        if mapping is None:
            return ()
        if not mapping:
            message = "the matrix is empty: give a variable and its values, or remove it"
            self.add(self.matrix_node, "matrix", message)
            return ()
        before = len(self.problems)
        broken = False  # a part already reported (a tag), or reported here
        axes: dict[str, list[str]] = {}
        for name, (key, value) in mapping.items():
            if name in _MATRIX_KEYS:
                continue
            path = f"matrix.{name}"
            if (
                isinstance(value, SequenceNode)
                and value.value
                and isinstance(value.value[0], MappingNode)
                and (hint := _did_you_mean(name, _MATRIX_KEYS))
            ):
                # `includes:` is a list of mappings: not an axis, a misspelt key.
                self.add(key, "matrix", f"unknown key {name!r} ({hint})")
                continue
            valid = self.variable_name(name, key, path)
            values = self.axis(value, path)
            if valid:
                axes[name] = values or []
            broken = broken or values is None
        include = self.rows(mapping, "include", axes)
        exclude = self.rows(mapping, "exclude", axes)
        may_fail = self.rows(mapping, "allow_failure", axes)
        names = [*axes, *(name for row, _, _ in include or () for name in row if name not in axes)]
        self.variables = frozenset(names)
        if (
            broken
            or include is None
            or exclude is None
            or may_fail is None
            or len(self.problems) > before
        ):
            return ()
        cells = self.expand(self.matrix_node, axes, include, exclude)
        self.may_fail = self.allowed_to_fail(may_fail, names, cells) if cells else ()
        return cells

    def allowed_to_fail(
        self,
        rows: Sequence[tuple[dict[str, str], Node, str]],
        names: Sequence[str],
        cells: Sequence[Mapping[str, str]],
    ) -> tuple[dict[str, str], ...]:
        """`allow_failure:` entries: each names variables of the matrix, and matches at
        least one of its cells (else it is a mistake, reported)."""
        for row, item, path in rows:
            if unknown := [name for name in row if name not in names]:
                hint = _did_you_mean(unknown[0], names)
                message = f"{unknown[0]!r} is not a variable of the matrix" + (
                    f" ({hint})" if hint else f" ({', '.join(names)})"
                )
                self.add(item, path, message)
            elif not any(all(cell.get(k) == v for k, v in row.items()) for cell in cells):
                self.add(item, path, "it matches no combination of the matrix: fix or remove it")
        return tuple(row for row, _, _ in rows)

    def axis(self, node: Node, path: str) -> list[str] | None:
        """An axis: a non-empty list of values, each once; None if anything is wrong."""
        if id(node) in self.rejected:
            return None
        if not isinstance(node, SequenceNode):
            message = f"expected a list of values, found {_describe(node)}"
            if isinstance(node, ScalarNode) and not _is_empty(node):
                message += f" (write [{node.value}] for one value)"
            self.add(node, path, message)
            return None
        if not node.value:
            self.add(node, path, "the list is empty: give at least one value, or remove it")
            return None
        values: dict[str, Node] = {}
        valid = True
        for index, item in enumerate(node.value):
            item_path = f"{path}[{index}]"
            value = self.matrix_value(item, item_path)
            if value is None:
                valid = False
            elif value in values:
                line = values[value].start_mark.line + 1
                self.add(item, item_path, f"duplicate value {value!r} (first on line {line})")
                valid = False
            else:
                values[value] = item
        return list(values) if valid else None

    def matrix_value(self, node: Node, path: str) -> str | None:
        """A value of the matrix: a scalar, as written (`1.10` stays 1.10), on one line."""
        expected = "a value (a string, number or boolean)"
        if _is_empty(node):
            self.add(node, path, f"expected {expected}, found nothing (write '' for no text)")
            return None
        text = self.text(node, path, expected)
        if text is None:
            return None
        if "\n" in text or "\r" in text:
            self.add(node, path, "a matrix value must fit on one line")
            return None
        return text

    def rows(
        self, mapping: dict[str, tuple[Node, Node]], key: str, axes: Mapping[str, list[str]]
    ) -> list[tuple[dict[str, str], Node, str]] | None:
        """`include:` or `exclude:`: (NAME -> value, node, path) of each entry, or None if
        anything is wrong. An entry of exclude may only name axes, and values they have."""
        if key not in mapping:
            return []
        node, path = mapping[key][1], f"matrix.{key}"
        if id(node) in self.rejected:
            return None
        if not isinstance(node, SequenceNode):
            message = f"expected a list of mappings (`- NAME: value`), found {_describe(node)}"
            self.add(node, path, message)
            return None
        if not node.value:
            self.add(node, path, f"the list is empty: remove `{key}`")
            return None
        rows = []
        valid = True
        for index, item in enumerate(node.value):
            item_path = f"{path}[{index}]"
            pairs = self.mapping(item, item_path, "a mapping of NAME: value")
            if not pairs:
                if pairs is not None:
                    what = {
                        "exclude": "would remove every combination",
                        "allow_failure": "would let every combination fail",
                    }.get(key, "adds nothing")
                    self.add(item, item_path, f"the mapping is empty: it {what}; remove it")
                valid = False
                continue
            row: dict[str, str] = {}
            for name, (name_node, value_node) in pairs.items():
                where = f"{item_path}.{name}"
                named = self.variable_name(name, name_node, where)
                value = self.matrix_value(value_node, where)
                if not named or value is None:
                    valid = False
                    continue
                if key == "exclude" and name not in axes:
                    hint = _did_you_mean(name, axes)
                    known = f"the axes are {', '.join(axes)}" if axes else "there is no axis"
                    message = f"{name!r} is not an axis of the matrix ({hint or known})"
                    self.add(name_node, where, message)
                    valid = False
                elif key == "exclude" and value not in axes[name]:
                    hint = _did_you_mean(value, axes[name])
                    message = f"{value!r} is not a value of {name}" + (
                        f" ({hint})" if hint else f" ({', '.join(axes[name])})"
                    )
                    self.add(value_node, where, message)
                    valid = False
                else:
                    row[name] = value
            rows.append((row, item, item_path))
        return rows if valid else None

    def expand(
        self,
        node: Node,
        axes: Mapping[str, list[str]],
        include: Sequence[tuple[dict[str, str], Node, str]],
        exclude: Sequence[tuple[dict[str, str], Node, str]],
    ) -> tuple[dict[str, str], ...]:
        """The cells, as GitHub Actions makes them: exclude first, from the axes'
        combinations; then each include entry adds its variables that are not axes to
        every combination whose axes it matches (a later entry overriding what an
        earlier one added, never an axis), or else is a new combination."""
        before = len(self.problems)
        product = 1
        for values in axes.values():
            product *= len(values)
            if product > MAX_AXES_PRODUCT:
                counts = " x ".join(str(len(values)) for values in axes.values())
                message = (
                    f"the axes make too many combinations ({counts}); a matrix may have at "
                    f"most {MAX_CELLS}, and at most {MAX_AXES_PRODUCT} before exclude"
                )
                self.add(node, "matrix", message)
                return ()
        combinations = (
            [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())]
            if axes
            else []
        )
        kept = [
            combination
            for combination in combinations
            if not any(
                all(combination[name] == value for name, value in row.items())
                for row, _, _ in exclude
            )
        ]
        added: list[tuple[dict[str, str], str]] = []
        for row, item, path in include:
            matches = [
                combination
                for combination in kept
                if all(combination[name] == value for name, value in row.items() if name in axes)
            ]
            for combination in matches:
                combination.update((name, value) for name, value in row.items() if name not in axes)
            if matches:
                continue
            same = next((other for cell, other in added if cell == row), None)
            if same is not None:
                self.add(item, path, f"the same combination as {same}; remove one of them")
                continue
            added.append((dict(row), path))
        cells = (*kept, *(row for row, _ in added))
        if not cells:
            message = "the matrix has no combination left: exclude removes every one"
            self.add(node, "matrix", message)
        elif len(cells) > MAX_CELLS:
            message = (
                f"the matrix makes {len(cells)} combinations; it may make at most {MAX_CELLS} "
                "(exclude some, or split the pipeline)"
            )
            self.add(node, "matrix", message)
        names: dict[str, dict[str, str]] = {}
        for cell in cells:
            other = names.setdefault(cell_name(cell), cell)
            if other is not cell:
                # Only values with ", " or "=" in them, or cut very long ones, can do that.
                message = f"two combinations have the same name {cell_name(cell)!r}"
                self.add(node, "matrix", message + "; change a value")
                break
        return () if len(self.problems) > before else cells

    def check_cells(self, cells: tuple[dict[str, str], ...]) -> None:
        """Check, with each cell's values, the strings that use the matrix: an image
        that becomes empty, an unknown event, a path pattern that is no longer one.
        A problem is reported once, naming the cells it happens in."""
        assert self.matrix_node is not None
        if self.substituted * len(cells) > MAX_SUBSTITUTIONS:
            message = (
                f"{self.substituted} strings use the matrix's variables, in each of its "
                f"{len(cells)} combinations: more than {MAX_SUBSTITUTIONS} substitutions"
            )
            self.add(self.matrix_node, "matrix", message)
            return
        # (deferred, message) -> the cells it happens in; the first is named
        found: dict[tuple[int, str], list[int]] = {}
        globs = [self.globs_used] * len(cells)
        first_glob = None
        for index, item in enumerate(self.deferred):
            # A string at a time, as its parts: per cell only a join (see _template).
            parts = list(_template(item.text, self.variables))
            slots = parts[1::2]
            results: dict[str, object] = {}  # substituted text -> check's result
            for number, cell in enumerate(cells):
                parts[1::2] = [cell.get(name, "") for name in slots]
                text = "".join(parts)
                result = results.get(text, results)
                if result is results:
                    try:
                        result = results[text] = item.check(text)
                    except ValueError as error:
                        result = results[text] = error
                if isinstance(result, ValueError):
                    found.setdefault((index, str(result)), []).append(number)
                elif item.glob:
                    globs[number] += len(cast("tuple[str, ...]", result))
            if item.glob and first_glob is None:
                first_glob = index
        if first_glob is not None:
            message = (
                f"too many path patterns: a pipeline may have at most {MAX_GLOBS}, "
                "counting each use and each {a,b} alternative"
            )
            over = [number for number, count in enumerate(globs) if count > MAX_GLOBS]
            if over:
                found[first_glob, message] = over
        for (index, message), numbers in found.items():
            item = self.deferred[index]
            more = f" (and {len(numbers) - 1} more)" if len(numbers) > 1 else ""
            where = f"in matrix cell {cell_name(cells[numbers[0]])}{more}"
            self.add(item.node, item.path, f"{where}: {message}")

    def image(self, pairs: dict[str, tuple[Node, Node]], path: str) -> str | None:
        """`image:`, whose check waits for each cell when it uses the matrix."""
        if "image" not in pairs:
            return None
        node, where = pairs["image"][1], _join(path, "image")
        text = self.text(node, where)
        if text is None:
            return None
        if self.variables:
            unknown = [
                name
                for escaped, name in _REFERENCE_RE.findall(text)
                if not escaped and name not in self.variables
            ]
            if unknown:
                hint = _did_you_mean(unknown[0], self.variables)
                known = "its variables are " + ", ".join(sorted(self.variables))
                message = f"${{{unknown[0]}}} is not a variable of the matrix"
                self.add(node, where, f"{message} ({hint or known})")
                return None
        if self.matrix_text(node, where, text, _parse_image):
            return text
        try:
            return _parse_image(text)
        except ValueError as error:
            self.add(node, where, str(error))
            return None

    # -- `build:`

    def build(self, node: Node, path: str) -> ImageBuild | None:
        """`build: DIR` or `build: {context: ..., tags: ..., ...}`; None if anything is
        wrong (reported)."""
        where = f"{path}.build"
        if isinstance(node, ScalarNode) and not _is_empty(node) and id(node) not in self.rejected:
            context = self.build_path(node, where, "context")
            if context is None:
                return None
            return ImageBuild(context=context, dockerfile=_default_dockerfile(context))
        expected = "a directory (the build context) or a mapping with `context`, `tags`..."
        mapping = self.mapping(node, where, expected)
        if mapping is None:
            return None
        if not mapping:
            message = "`build` is empty: write `build: .` to build the workspace's Dockerfile"
            self.add(node, where, message)
            return None
        before = len(self.problems)
        fallback = "build takes only " + ", ".join(_BUILD_KEYS)
        self.check_keys(
            mapping, where, _BUILD_KEYS, _BUILD_HINTS, reserved=False, fallback=fallback
        )
        context = dockerfile = None
        if "context" in mapping:
            context = self.build_path(mapping["context"][1], f"{where}.context", "context")
        if "dockerfile" in mapping:
            file_node = mapping["dockerfile"][1]
            dockerfile = self.build_path(file_node, f"{where}.dockerfile", "dockerfile")
        tags = self.references(mapping, "tags", where, MAX_TAGS)
        cache_from = self.references(mapping, "cache_from", where, MAX_CACHE_FROM)
        build_args = self.build_args(mapping, where)
        push = self.scalar(mapping, "push", where, _parse_bool, "true or false")
        secret = None
        if "registry_secret" in mapping:
            secret = self.secret_name(mapping["registry_secret"][1], f"{where}.registry_secret")
        if push and "tags" not in mapping:
            message = (
                "`push: true` needs `tags`: name the image to push, "
                "e.g. registry.example.com/app:1.0"
            )
            self.add(mapping["push"][1], f"{where}.push", message)
        if len(self.problems) > before:
            return None
        context = context or "."
        return ImageBuild(
            context=context,
            dockerfile=dockerfile or _default_dockerfile(context),
            tags=tags or (),
            build_args=build_args or {},
            push=bool(push),
            registry_secret=secret,
            cache_from=cache_from or (),
        )

    # -- `ssh:`

    def ssh(self, node: Node, path: str) -> SshScript | None:
        """`ssh: {host: ..., user: ..., ...}`, every field as written (no `${NAME}` is
        replaced); None if anything is wrong (reported)."""
        where = f"{path}.ssh"
        keys = "`host`, `user`, `key_secret`, `known_hosts_secret` and `script`"
        mapping = self.mapping(node, where, f"a mapping with {keys}")
        if mapping is None:
            return None
        if not mapping:
            self.add(node, where, f"`ssh` is empty: write {keys}")
            return None
        before = len(self.problems)
        fallback = "ssh takes only " + ", ".join(_SSH_KEYS)
        self.check_keys(mapping, where, _SSH_KEYS, _SSH_HINTS, reserved=False, fallback=fallback)
        for key, what in _SSH_REQUIRED.items():
            if key not in mapping:
                self.add(node, where, f"missing key {key!r}: {what}")
        host = self.scalar(mapping, "host", where, _parse_ssh_host, "a host name or IP address")
        port = self.scalar(mapping, "port", where, _parse_port, "a port number from 1 to 65535")
        user = self.scalar(mapping, "user", where, _parse_ssh_user, "a user name")
        script = self.scalar(
            mapping,
            "script",
            where,
            _parse_script,
            "the script, one string (write `script: |` and a command per line)",
        )
        connect_timeout = self.scalar(
            mapping, "connect_timeout", where, _parse_connect_timeout, "a duration"
        )
        secrets = {
            key: self.secret_name(mapping[key][1], f"{where}.{key}")
            for key in ("key_secret", "known_hosts_secret")
            if key in mapping
        }
        key_secret = secrets.get("key_secret")
        known_hosts_secret = secrets.get("known_hosts_secret")
        if key_secret is not None and key_secret == known_hosts_secret:
            message = (
                f"`known_hosts_secret` names {key_secret}, the secret of `key_secret`: the "
                "host's key and the private key to log in with are two secrets"
            )
            self.add(mapping["known_hosts_secret"][1], f"{where}.known_hosts_secret", message)
        if (
            len(self.problems) > before
            or host is None
            or user is None
            or script is None
            or key_secret is None
            or known_hosts_secret is None
        ):
            return None
        return SshScript(
            host=host,
            user=user,
            script=script,
            key_secret=key_secret,
            known_hosts_secret=known_hosts_secret,
            port=22 if port is None else port,
            connect_timeout=15 if connect_timeout is None else connect_timeout,
        )

    def build_path(self, node: Node, path: str, key: str) -> str | None:
        """`context` or `dockerfile`, normalised; its check waits for each cell of the
        matrix when it uses the matrix's variables."""
        text = self.text(node, path, "a path")
        if text is None:
            return None
        if self.matrix_text(node, path, text, functools.partial(check_build_path, key=key)):
            return posixpath.normpath(text)
        try:
            return check_build_path(text, key)
        except ValueError as error:
            self.add(node, path, str(error))
            return None

    def references(
        self, mapping: dict[str, tuple[Node, Node]], key: str, path: str, limit: int
    ) -> tuple[str, ...] | None:
        """`tags` or `cache_from` (a digest allowed there): an image reference or a list
        of at most `limit`, each once."""
        if key not in mapping:
            return ()
        node, where = mapping[key][1], f"{path}.{key}"
        noun = "tag" if key == "tags" else "image"
        if isinstance(node, SequenceNode) and not node.value:
            self.add(node, where, f"the list is empty: name at least one {noun}, or remove `{key}`")
            return None
        found = self.names(node, where, allow_empty=False)
        if found is None:
            return None
        if len(found) > limit:
            message = f"too many {noun}s ({len(found)}); `{key}` may have at most {limit}"
            self.add(node, where, message)
            return None
        check = functools.partial(check_image_reference, digest=key == "cache_from", variables=True)
        first: dict[str, Node] = {}
        valid = True
        for text, item, item_path in found:
            if text in first:
                line = first[text].start_mark.line + 1
                self.add(item, item_path, f"duplicate {noun} {text!r} (first on line {line})")
                valid = False
                continue
            first[text] = item
            valid = self.checked(item, item_path, text, check) and valid
        return tuple(first) if valid else None

    def build_args(self, mapping: dict[str, tuple[Node, Node]], path: str) -> dict[str, str] | None:
        """`build_args`: NAME -> the value as written, `${NAME}` replaced per cell."""
        if "build_args" not in mapping:
            return {}
        where = f"{path}.build_args"
        args = self.mapping(mapping["build_args"][1], where, "a mapping of NAME: value")
        if args is None:
            return None
        if len(args) > MAX_BUILD_ARGS:
            message = (
                f"too many build args ({len(args)}); a build may have at most {MAX_BUILD_ARGS}"
            )
            self.add(mapping["build_args"][1], where, message)
            return None
        values = {}
        for name, (key, value) in args.items():
            arg_path = f"{where}.{name}"
            self.variable_name(name, key, arg_path, what="build arg")
            if isinstance(value, MappingNode) and "from_secret" in self.pairs(value):
                message = (
                    "a build arg cannot come from a secret: build args stay in the image's "
                    "history, where anyone who pulls the image reads them; remove it"
                )
                self.add(value, arg_path, message)
                continue
            text = self.text(value, arg_path, "a value (a string, number or boolean)")
            if text is not None:
                self.matrix_text(value, arg_path, text)
                values[name] = text
        return values

    def checked(self, node: Node, path: str, text: str, check: Callable[[str], object]) -> bool:
        """Whether `text` passes `check` (else reported), or will be checked in each cell
        of the matrix, with its values, because it uses them."""
        if self.matrix_text(node, path, text, check):
            return True
        try:
            check(text)
        except ValueError as error:
            self.add(node, path, str(error))
            return False
        return True

    def matrix_text(
        self,
        node: Node,
        path: str,
        text: str,
        check: Callable[[str], object] | None = None,
        *,
        glob: bool = False,
    ) -> bool:
        """Whether `text`, a string where `${NAME}` is substituted, uses a variable of
        the matrix: its `check` then waits for each cell's values. Also true when it
        uses GitHub's syntax, reported here."""
        if self.matrix_node is None or "${" not in text:
            return False
        if self.github_matrix(node, path, text, script=False):
            return True
        if not any(name in self.variables for _, name in _REFERENCE_RE.findall(text)):
            return False
        self.substituted += 1
        if check is not None:
            self.deferred.append(_Deferred(node, path, text, check, glob))
        return True

    def github_matrix(self, node: Node, path: str, text: str, *, script: bool) -> bool:
        """Report GitHub's `${{ matrix.NAME }}` (Goci's is `${NAME}`, and in a script
        the variable itself)."""
        match = _GITHUB_MATRIX_RE.search(text)
        if match is None:
            return False
        name = match.group(1)
        write = f"${name}, an environment variable of the step" if script else f"${{{name}}}"
        message = f"GitHub's `{match.group()}` is not Goci's syntax: write {write}"
        self.add(node, path, message)
        return True

    # -- the document

    def read_pipeline(self, root: Node) -> Pipeline | None:
        if id(root) in self.rejected:
            return None
        if not isinstance(root, MappingNode):
            self.add(
                root, "", f"the top level must be a mapping with `steps:`, found {_describe(root)}"
            )
            return None
        pairs = self.pairs(root)
        self.check_keys(pairs, "", _PIPELINE_KEYS, _PIPELINE_HINTS)
        name = self.scalar(pairs, "name", "", _parse_name)
        cells = self.matrix(pairs)
        image = self.image(pairs, "")
        env, secrets = self.env(pairs, "")
        timeout = self.scalar(pairs, "timeout", "", parse_duration, "a duration")
        clone, clone_depth = self.clone(pairs)
        when = self.when(pairs, "")
        runs_on = self.runs_on(pairs)
        inputs = self.inputs(pairs)
        steps = self.read_steps(root, pairs, image, env, secrets)
        if cells and not self.problems:
            self.check_cells(cells)
        if self.problems or steps is None:
            return None
        return Pipeline(
            steps=tuple(steps),
            name=name,
            image=image,
            env=env,
            secret_env=secrets,
            timeout=timeout,
            filename=self.filename,
            clone=clone,
            clone_depth=clone_depth,
            when=when,
            runs_on=runs_on,
            matrix=cells,
            matrix_may_fail=self.may_fail if cells else (),
            inputs=inputs,
        )

    def inputs(self, pairs: dict[str, tuple[Node, Node]]) -> tuple[Input, ...]:
        """`inputs: {NAME: {type, default, description, required, options}}`."""
        if "inputs" not in pairs:
            return ()
        mapping = self.mapping(pairs["inputs"][1], "inputs", "a mapping of NAME: {type, ...}")
        if mapping is None:
            return ()
        if len(mapping) > MAX_INPUTS:
            message = f"too many inputs ({len(mapping)}); a pipeline may have at most {MAX_INPUTS}"
            self.add(pairs["inputs"][1], "inputs", message)
            return ()
        found: list[Input] = []
        variables: dict[str, str] = {}
        for name, (key, value) in mapping.items():
            where = f"inputs.{name}"
            if not _INPUT_NAME_RE.fullmatch(name):
                message = (
                    f"invalid input name {name!r}: use letters, digits, _ and -, "
                    "not starting with a digit or -"
                )
                self.add(key, where, message)
                continue
            other = variables.setdefault(input_variable(name), name)
            if other != name:
                message = f"{name!r} and {other!r} would both be {input_variable(name)}: rename one"
                self.add(key, where, message)
                continue
            item = self.input(name, value, where)
            if item is not None:
                found.append(item)
        return tuple(found)

    def input(self, name: str, node: Node, where: str) -> Input | None:
        if _is_empty(node):
            return Input(name=name)  # `version:` alone: a string, optional
        mapping = self.mapping(node, where, "a mapping with `type`, `default`, ...")
        if mapping is None:
            return None
        before = len(self.problems)
        fallback = "an input takes only " + ", ".join(_INPUT_KEYS)
        self.check_keys(mapping, where, _INPUT_KEYS, {}, reserved=False, fallback=fallback)
        kind = self.scalar(mapping, "type", where, _parse_input_type, "string, choice or boolean")
        kind = kind or "string"
        default = self.scalar(mapping, "default", where, _parse_input_value)
        description = self.scalar(mapping, "description", where, str) or ""
        required = self.scalar(mapping, "required", where, _parse_bool, "true or false")
        options: tuple[str, ...] = ()
        if "options" in mapping:
            node_options = mapping["options"][1]
            if kind != "choice":
                self.add(mapping["options"][0], where, "`options` are for `type: choice`")
            found = self.names(node_options, f"{where}.options", allow_empty=False, what="option")
            if found is not None:
                options = tuple(dict.fromkeys(text for text, _, _ in found))
                if len(options) > MAX_OPTIONS:
                    message = f"too many options ({len(options)}); at most {MAX_OPTIONS}"
                    self.add(node_options, f"{where}.options", message)
        elif kind == "choice":
            self.add(node, where, "missing key 'options': the values a choice offers")
        if default is not None and kind == "boolean":
            if default.lower() not in ("true", "false"):
                message = f"a boolean's default is true or false, found {default!r}"
                self.add(mapping["default"][1], f"{where}.default", message)
            default = default.lower()
        if default is not None and kind == "choice" and options and default not in options:
            message = f"the default {default!r} is not one of the options: " + ", ".join(options)
            self.add(mapping["default"][1], f"{where}.default", message)
        if len(self.problems) > before:
            return None
        return Input(
            name=name,
            type=kind,
            default=default,
            description=description,
            required=bool(required),
            options=options,
        )

    def environment(self, pairs: dict[str, tuple[Node, Node]], path: str) -> DeployTarget | None:
        """`environment: production` or `environment: {name: production, url: ...}`."""
        if "environment" not in pairs:
            return None
        node, where = pairs["environment"][1], f"{path}.environment"
        if isinstance(node, ScalarNode) and id(node) not in self.rejected:
            name = self.scalar(pairs, "environment", path, _parse_environment, "a name")
            return None if name is None else DeployTarget(name=name)
        mapping = self.mapping(node, where, "a name or {name, url}")
        if mapping is None:
            return None
        # Drone's and GitLab's `environment:` on a step is its variables: say so.
        hint = (
            "`environment` names where the step deploys, {name, url}; "
            "the step's variables are `env`"
        )
        before = len(self.problems)
        self.check_keys(mapping, where, _ENVIRONMENT_KEYS, {}, reserved=False, fallback=hint)
        if "name" not in mapping:
            self.add(node, where, "missing key 'name': the environment this step deploys to")
        name = self.scalar(mapping, "name", where, _parse_environment, "a name")
        url = self.scalar(mapping, "url", where, _parse_url, "a URL")
        if len(self.problems) > before or name is None:
            return None
        return DeployTarget(name=name, url=url or "")

    def runs_on(self, pairs: dict[str, tuple[Node, Node]]) -> tuple[str, ...]:
        """`runs_on: gpu` or `runs_on: [linux, gpu]`: the labels, each checked once."""
        if "runs_on" not in pairs:
            return ()
        node = pairs["runs_on"][1]
        if isinstance(node, SequenceNode) and not node.value:
            message = "the list is empty: name the labels a runner must have, or remove it"
            self.add(node, "runs_on", message)
            return ()
        found = self.names(node, "runs_on", allow_empty=False, what="label")
        if found is None:
            return ()
        for label, item, item_path in found:
            try:
                check_label(label)
            except ValueError as error:
                self.add(item, item_path, str(error))
        labels = tuple(dict.fromkeys(label for label, _, _ in found))
        if len(labels) > MAX_LABELS:
            message = f"too many labels ({len(labels)}); a pipeline may need at most {MAX_LABELS}"
            self.add(node, "runs_on", message)
        return labels

    def read_steps(
        self,
        root: Node,
        pairs: dict[str, tuple[Node, Node]],
        image: str | None,
        env: dict[str, str],
        secrets: dict[str, str],
    ) -> list[Step] | None:
        if "steps" not in pairs:
            self.add(root, "", "missing key 'steps': a pipeline needs a list of steps to run")
            return None
        node = pairs["steps"][1]
        if id(node) in self.rejected:
            return None
        if not isinstance(node, SequenceNode):
            hint = (
                " (write each step as a list item: `- name: ...`)"
                if isinstance(node, MappingNode)
                else ""
            )
            self.add(node, "steps", f"expected a list of steps, found {_describe(node)}{hint}")
            return None
        items: list[Node] = list(node.value)
        if not items:
            self.add(
                node, "steps", "the list of steps is empty: a pipeline needs at least one step"
            )
            return None
        if len(items) > MAX_STEPS:
            self.add(
                node,
                "steps",
                f"too many steps ({len(items)}); a pipeline may have at most {MAX_STEPS}",
            )
            return None
        drafts = [
            self.read_step(item, index, image, env, secrets) for index, item in enumerate(items)
        ]
        self.check_graph(drafts)
        return [draft.step for draft in drafts if draft.step is not None]

    def read_step(
        self,
        node: Node,
        index: int,
        image: str | None,
        env: dict[str, str],
        secrets: dict[str, str],
    ) -> _Draft:
        path = f"steps[{index}]"
        draft = _Draft(
            index=index, node=node, name=f"step {index + 1}", name_node=node, name_path=path
        )
        pairs = self.mapping(node, path, "a step (a mapping with `run:`)")
        if pairs is None:
            return draft
        before = len(self.problems)
        builds, sshes = "build" in pairs, "ssh" in pairs
        hints = _STEP_HINTS | ({"tags": _TAGS_HINT} if builds else {})
        hints |= dict.fromkeys(_SSH_KEYS, _SSH_KEY_HINT) if sshes else {}
        self.check_keys(pairs, path, _STEP_KEYS, hints)
        if "name" in pairs:
            draft.name_node, draft.name_path = pairs["name"][1], f"{path}.name"
            draft.name = self.scalar(pairs, "name", path, _parse_name)
        self.step_kind(node, pairs, path)
        run = self.scalar(pairs, "run", path, _parse_run)
        if run is not None and self.matrix_node is not None:
            self.github_matrix(pairs["run"][1], f"{path}.run", run, script=True)
        shell = own_image = workdir = build = ssh = None
        if builds or sshes:
            runs_none = (
                "a build step runs no container of its own"
                if builds
                else "an ssh step runs its script on the host it names, in no container "
                "or shell here"
            )
            for key in ("image", "shell", "workdir"):
                if key in pairs:
                    self.add(pairs[key][0], f"{path}.{key}", f"{runs_none}: remove `{key}`")
            if builds:
                build = self.build(pairs["build"][1], path)
            if sshes:
                ssh = self.ssh(pairs["ssh"][1], path)
        else:
            shell = self.scalar(pairs, "shell", path, _parse_shell)
            own_image = self.image(pairs, path)
            workdir = self.scalar(pairs, "workdir", path, _parse_workdir)
        draft.parallel = bool(self.scalar(pairs, "parallel", path, _parse_bool, "true or false"))
        if "needs" in pairs:
            draft.needs = self.names(pairs["needs"][1], f"{path}.needs", allow_empty=True)
        step_env, step_secrets = self.env(pairs, path)
        timeout = self.scalar(pairs, "timeout", path, parse_duration, "a duration")
        retry = self.scalar(pairs, "retry", path, _parse_retry, "a whole number from 0 to 5")
        allow_failure = self.scalar(pairs, "allow_failure", path, _parse_bool, "true or false")
        when = self.when(pairs, path)
        environment = self.environment(pairs, path)
        if (
            len(self.problems) == before
            and draft.name is not None
            and (run is not None or build is not None or ssh is not None)
        ):
            needs = None
            if draft.needs is not None:
                needs = tuple(dict.fromkeys(name for name, _, _ in draft.needs))
            draft.step = Step(
                name=draft.name,
                run=run or "",
                index=index,
                shell=shell or "sh",
                image=None if build is not None or ssh is not None else own_image or image,
                parallel=draft.parallel,
                needs=needs,
                # A step's own variable, plain or secret, replaces the pipeline's.
                env={k: v for k, v in env.items() if k not in step_secrets} | step_env,
                secret_env={k: v for k, v in secrets.items() if k not in step_env} | step_secrets,
                workdir=workdir,
                timeout=timeout,
                retry=retry or 0,
                allow_failure=bool(allow_failure),
                when=when,
                build=build,
                ssh=ssh,
                environment=environment,
            )
        return draft

    def step_kind(self, node: Node, pairs: dict[str, tuple[Node, Node]], path: str) -> None:
        """Report a step that has none, or more than one, of `run`, `build` and `ssh`."""
        kinds = [key for key in _STEP_KINDS if key in pairs]
        if not kinds:
            message = (
                "missing key 'run': the commands this step runs (or `build:`, an image to "
                "build, or `ssh:`, a script to run on another machine)"
            )
            self.add(node, path, message)
        elif len(kinds) == 2:
            first, second = kinds
            message = (
                f"a step either {_DOES[first]} or {_DOES[second]}, not both: make them two steps"
            )
            self.add(pairs[second][0], path, message)
        elif len(kinds) == 3:
            message = (
                f"a step either {_DOES['run']}, {_DOES['build']} or {_DOES['ssh']}, "
                "not all three: make them three steps"
            )
            self.add(pairs["ssh"][0], path, message)

    def check_graph(self, drafts: list[_Draft]) -> None:
        first: dict[str, _Draft] = {}
        for draft in drafts:
            if draft.name is None:
                continue
            other = first.setdefault(draft.name, draft)
            if other is not draft:
                line = other.name_node.start_mark.line + 1
                message = (
                    f"duplicate step name {draft.name!r} "
                    f"(first used by steps[{other.index}] on line {line})"
                )
                self.add(draft.name_node, draft.name_path, message)
        names = [draft.name for draft in drafts if draft.name is not None]
        # With a wrong name among the steps, "unknown step" could be that step: stay quiet.
        names_known = len(names) == len(drafts)
        for draft in drafts:
            for need, node, path in draft.needs or ():
                if need == draft.name:
                    self.add(node, path, "a step cannot need itself")
                elif need not in first and names_known:
                    hint = _did_you_mean(need, first)
                    self.add(
                        node,
                        path,
                        f"unknown step {need!r} in needs" + (f" ({hint})" if hint else ""),
                    )
        if len(first) != len(drafts):
            return  # names are missing or shared: edges would be guesses
        waits = _waits_for(
            [
                (
                    name,
                    draft.parallel,
                    None if draft.needs is None else tuple(n for n, _, _ in draft.needs),
                )
                for name, draft in zip(names, drafts, strict=True)
            ]
        )
        position = {name: index for index, name in enumerate(names)}
        # Implicit edges point backwards but `needs` may point forwards: check both kinds.
        graph = [
            [position[other] for other in wait if other in position and other != name]
            for name, wait in zip(names, waits, strict=True)
        ]
        for members in _components(graph):
            if len(members) > 1:
                cycle = _cycle_from(min(members), graph, set(members))
                start = drafts[cycle[0]]
                message = "cycle: " + " -> ".join(names[index] for index in cycle)
                self.add(start.node, f"steps[{start.index}]", message)
