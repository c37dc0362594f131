"""Build (and push) a step's image through the Docker Engine API: `build:` steps.

The step gets no container of its own, so nothing of the pipeline ever holds a Docker
socket: the worker (or runner) asks the engine to build the workspace's context, as
`docker build` does. RUN instructions run as in any `docker build`: in the engine's
unprivileged build containers, on Goci's step network, with no host mounts.

Each build runs in a child process (runners/image_child.py), forked from a
forkserver that imported docker-py once, which talks to the engine and sends the
build's output, the step's log, over a pipe:

- a cancel or a timeout ends the child, and the engine stops a build or a push whose
  client went away; a thread blocked on the engine's stream could not be stopped;
- the child reads no Docker config (its HOME and DOCKER_CONFIG are an empty
  directory): docker-py would otherwise send every credential of this machine's
  ~/.docker/config.json with each build. The step's own credentials (its
  `registry_secret`) reach the child over the pipe, never in a file, an argument or
  the environment, and only the tags' registries get them;
- the context's tar, the pull and push streams stay out of the worker's memory.

What the child found (the image's ID, each pushed tag's digest, why it failed) comes
back as the last message on that pipe, apart from the log.
"""

from __future__ import annotations

import contextlib
import functools
import json
import multiprocessing
import os
import posixpath
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from builds.pipeline import ImageBuild, Pipeline, check_image_reference, expand_variables
from runners.engine import StepOutcome, StepRun

KILL_GRACE = 5.0  # after TERM, the child has this long to hang up before KILL
PUSH_SKIPPED = "push skipped: {reason}"


class BuildProblem(Exception):
    """The step cannot build: what to fix, for the step's error."""


class ImageBuilder:
    """The executor of `build:` steps (runners/executors/__init__.py routes them here).
    `push_refused`: why this build must not push ("pull_request", "fork"), or None."""

    def __init__(
        self,
        workspace: Path,
        *,
        push_refused: str | None = None,
        docker_host: str | None = None,
        kill_grace: float = KILL_GRACE,
    ) -> None:
        self.workspace = workspace.resolve()
        self.push_refused = push_refused
        self.docker_host = docker_host or os.environ.get("DOCKER_HOST") or None
        self.kill_grace = kill_grace
        self._children: set[Any] = set()  # multiprocessing's Process, running
        self._lock = threading.Lock()

    def prepare(self, pipeline: Pipeline) -> None:
        if not self.workspace.is_dir():
            raise RuntimeError(f"workspace {self.workspace} is not a directory")

    def cleanup(self) -> None:
        with self._lock:
            children, self._children = self._children, set()
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                child.kill()

    def run_step(self, run: StepRun) -> StepOutcome:
        spec = run.step.build
        if spec is None:
            return StepOutcome(error=f"step '{run.step.name}' has no `build:`")
        try:
            request = self.request(spec, run.env)
        except BuildProblem as exc:
            return StepOutcome(error=str(exc))
        if spec.push and not request["push"]:
            run.output(f"{PUSH_SKIPPED.format(reason=self.push_refused)}\n".encode())
        return self._run_child(request, run)

    # -- what the child gets

    def request(self, spec: ImageBuild, env: Mapping[str, str]) -> dict[str, Any]:
        """The child's instructions: every `${NAME}` expanded from the step's
        environment, the paths resolved inside the workspace (BuildProblem if not)."""

        def expand(text: str, where: str) -> str:
            try:
                return expand_variables(text, env)
            except KeyError as exc:
                name = exc.args[0]
                raise BuildProblem(
                    f"build.{where}: ${{{name}}} is not set in the step's environment "
                    "(set it in `env:`, or write $${" + name + "} for the text itself)"
                ) from None

        context_name = expand(spec.context, "context")
        dockerfile_name = expand(spec.dockerfile, "dockerfile")
        context = self.inside(context_name, "context", directory=True)
        dockerfile = self.inside(dockerfile_name, "dockerfile", directory=False)
        self.no_link_out(context, context_name)
        tags = [expand(tag, f"tags[{i}]") for i, tag in enumerate(spec.tags)]
        cache_from = [expand(ref, f"cache_from[{i}]") for i, ref in enumerate(spec.cache_from)]
        for where, refs, digest in (("tags", tags, False), ("cache_from", cache_from, True)):
            for i, ref in enumerate(refs):
                try:
                    check_image_reference(ref, digest=digest)
                except ValueError as exc:
                    raise BuildProblem(f"build.{where}[{i}] is {ref!r}: {exc}") from None
        build_args = {
            name: expand(value, f"build_args.{name}") for name, value in spec.build_args.items()
        }
        return {
            "context": str(context),
            "dockerfile": str(dockerfile),
            "tags": tags,
            "build_args": build_args,
            "cache_from": cache_from,
            "push": spec.push and self.push_refused is None,
            "credentials": registry_auth(spec.credentials) if spec.credentials else None,
            "docker_host": self.docker_host,
        }

    def inside(self, name: str, key: str, *, directory: bool) -> Path:
        """`name` (workspace-relative) resolved, symlinks followed: it must stay inside
        the workspace and be there."""
        normal = posixpath.normpath(name)
        if posixpath.isabs(normal) or normal == ".." or normal.startswith("../"):
            raise BuildProblem(f"build.{key} '{name}' is outside the workspace")
        path = (self.workspace / normal).resolve()
        if not path.is_relative_to(self.workspace):
            raise BuildProblem(
                f"build.{key} '{name}' leads outside the workspace through a symlink "
                f"(it resolves to {path})"
            )
        if directory and not path.is_dir():
            raise BuildProblem(f"build.{key} '{name}' is not a directory of the workspace")
        if not directory and not path.is_file():
            raise BuildProblem(
                f"build.{key} '{name}' is not a file of the workspace"
                + ("" if key != "dockerfile" else " (name it with `dockerfile:`)")
            )
        return path

    def no_link_out(self, context: Path, name: str) -> None:
        """Refuse a context with a symlink that leads outside the workspace: the engine
        would not follow it, but a build that needs it is wrong and would mislead."""
        for root, dirs, files in os.walk(context):
            for entry in (*dirs, *files):
                path = Path(root, entry)
                if path.is_symlink():
                    target = path.resolve()
                    if not target.is_relative_to(self.workspace):
                        where = path.relative_to(self.workspace)
                        raise BuildProblem(
                            f"build.context '{name}' holds a symlink that leads outside the "
                            f"workspace: {where} -> {path.readlink()}"
                        )

    # -- the child

    def _run_child(self, request: dict[str, Any], run: StepRun) -> StepOutcome:
        """The build in a process forked from the forkserver (image_child.py): its output
        and then its result come over a pipe; a cancel or timeout ends it."""
        context = _context()
        reader, writer = context.Pipe(duplex=False)
        child = context.Process(target=_child_main, args=(request, writer), daemon=True)
        try:
            child.start()
        except OSError as exc:
            return StepOutcome(error=f"could not start the image build: {exc.strerror}")
        finally:
            writer.close()
        with self._lock:
            self._children.add(child)
        try:
            return self._follow(child, reader, run)
        finally:
            reader.close()
            with self._lock:
                self._children.discard(child)

    def _follow(self, child: Any, reader: Any, run: StepRun) -> StepOutcome:
        deadline = None if run.timeout is None else time.monotonic() + run.timeout
        timed_out = canceled = False
        found: dict[str, Any] = {}
        while True:
            if reader.poll(0.1):
                try:
                    kind, value = reader.recv()
                except EOFError:  # the child is gone
                    break
                if kind == "out":
                    run.output(value)
                else:
                    found = value
                continue
            canceled = run.cancel.is_set()
            timed_out = not canceled and deadline is not None and time.monotonic() >= deadline
            if canceled or timed_out:
                child.terminate()  # TERM: it hangs up on the engine, which stops
                child.join(self.kill_grace)
                if child.exitcode is None:
                    child.kill()
                break
        child.join()
        if canceled or timed_out:
            return StepOutcome(exit_code=None, canceled=canceled, timed_out=timed_out)
        if not (found.get("image_id") or found.get("error") or found.get("failure")):
            return StepOutcome(
                error=f"the image build ended without a result (exit {child.exitcode})"
            )
        return StepOutcome(
            exit_code=0 if found.get("failure") is None and found.get("error") is None else 1,
            error=found.get("error"),
            failure=found.get("failure"),
            image_id=found.get("image_id") or "",
            digests=found.get("digests") or {},
        )


@functools.cache
def _context() -> Any:
    """One forkserver per process, with docker-py imported once: each build forks from
    it in milliseconds instead of starting an interpreter and importing docker-py
    (~0.3 s), and stays a process of its own (a cancel ends it; its memory goes)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["runners.image_child"])
    return context


def _child_main(request: dict[str, Any], conn: Any) -> None:
    from runners import image_child  # noqa: PLC0415  (preloaded in the forkserver)

    image_child.run(request, conn)


def registry_auth(value: str) -> dict[str, str]:
    """A `registry_secret`'s value as the engine's auth: a JSON object with `username`
    and `password` (or `token` for the password), or a bare token (a registry token,
    sent as is)."""
    text = value.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            raise BuildProblem(
                "the registry secret is not valid JSON: write "
                '{"username": "...", "password": "..."} or the token alone'
            ) from None
        if not isinstance(data, dict):
            raise BuildProblem("the registry secret must be a JSON object or a token")
        username = data.get("username")
        password = data.get("password", data.get("token"))
        if isinstance(username, str) and username and isinstance(password, str) and password:
            return {"username": username, "password": password}
        if set(data) == {"token"} and isinstance(password, str) and password:
            return {"registrytoken": password}
        raise BuildProblem(
            'the registry secret needs "username" and "password" (or "token"), as strings'
        )
    if not text:
        raise BuildProblem("the registry secret is empty")
    return {"registrytoken": text}
