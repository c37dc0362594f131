"""Build (and push) a step's image through the Docker Engine API: `build:` steps.

The step gets no container of its own, so nothing of the pipeline ever holds a Docker
socket: the worker (or runner) asks the engine to build the workspace's context, as
`docker build` does. RUN instructions run as in any `docker build`: in the engine's
unprivileged build containers, on Goci's step network, with no host mounts.

Each build runs in a child process (`python -m runners.executors.image_build`), which
talks to the engine and writes the build's output to its stdout, the step's log:

- a cancel or a timeout ends the child, and the engine stops a build or a push whose
  client went away; a thread blocked on the engine's stream could not be stopped;
- the child starts with an empty DOCKER_CONFIG: docker-py would otherwise send every
  credential of this machine's ~/.docker/config.json with each build. The step's own
  credentials (its `registry_secret`) reach the child on its stdin, never in a file,
  an argument or the environment, and only the tags' registries get them;
- the context's tar, the pull and push streams stay out of the worker's memory.

What the child found (the image's ID, each pushed tag's digest, why it failed) comes
back as one JSON object on a pipe of its own, never mixed into the log.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

from builds.pipeline import ImageBuild, Pipeline, check_image_reference, expand_variables
from runners.engine import StepOutcome, StepRun

READ_SIZE = 64 * 1024
KILL_GRACE = 5.0  # after TERM, the child has this long to hang up before KILL
PUSH_SKIPPED = "push skipped: {reason}"
_STEP_LINE = re.compile(r"^Step \d+/\d+ : ")


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
        self._children: set[subprocess.Popen[bytes]] = set()
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
        result_read, result_write = os.pipe()
        with tempfile.TemporaryDirectory(prefix="goci-docker-config-") as config:
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "DOCKER_CONFIG": config,  # empty: no credential of this machine is sent
                "PYTHONPATH": os.pathsep.join(sys.path),
            }
            try:
                child = subprocess.Popen(
                    [sys.executable, "-m", "runners.executors.image_build", str(result_write)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    pass_fds=(result_write,),
                    env=env,
                    start_new_session=True,
                )
            except OSError as exc:
                os.close(result_read)
                return StepOutcome(error=f"could not start the image build: {exc.strerror}")
            finally:
                os.close(result_write)
            with self._lock:
                self._children.add(child)
            try:
                return self._follow(child, request, run, result_read)
            finally:
                with self._lock:
                    self._children.discard(child)

    def _follow(
        self, child: subprocess.Popen[bytes], request: dict[str, Any], run: StepRun, result: int
    ) -> StepOutcome:
        assert child.stdin is not None
        assert child.stdout is not None
        with contextlib.suppress(BrokenPipeError):
            child.stdin.write(json.dumps(request).encode())
        with contextlib.suppress(BrokenPipeError):
            child.stdin.close()
        answer: list[bytes] = []
        reader = threading.Thread(target=_read_all, args=(result, answer), daemon=True)
        reader.start()
        pump = threading.Thread(target=_pump, args=(child.stdout, run.output), daemon=True)
        pump.start()
        deadline = None if run.timeout is None else time.monotonic() + run.timeout
        timed_out = canceled = False
        while child.poll() is None:
            if run.cancel.wait(0.1):
                canceled = True
            elif deadline is not None and time.monotonic() >= deadline:
                timed_out = True
            if canceled or timed_out:
                child.terminate()
                try:
                    child.wait(self.kill_grace)
                except subprocess.TimeoutExpired:
                    child.kill()
                break
        child.wait()
        pump.join()
        reader.join()
        child.stdout.close()
        if canceled or timed_out:
            return StepOutcome(exit_code=None, canceled=canceled, timed_out=timed_out)
        try:
            found = json.loads(b"".join(answer) or b"{}")
        except ValueError:
            found = {}
        if not found or not (found.get("image_id") or found.get("error") or found.get("failure")):
            return StepOutcome(
                error=f"the image build ended without a result (exit {child.returncode})"
            )
        return StepOutcome(
            exit_code=0 if found.get("failure") is None and found.get("error") is None else 1,
            error=found.get("error"),
            failure=found.get("failure"),
            image_id=found.get("image_id") or "",
            digests=found.get("digests") or {},
        )


def _pump(stream: IO[bytes], output: Callable[[bytes], None]) -> None:
    while data := stream.read1(READ_SIZE):  # type: ignore[attr-defined]
        output(data)


def _read_all(fd: int, into: list[bytes]) -> None:
    with os.fdopen(fd, "rb") as pipe:
        into.append(pipe.read())


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


def registry_of(reference: str) -> str:
    """The registry host of an image reference (Docker Hub's for one without a host)."""
    first, sep, _ = reference.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


# ---------------------------------------------------------------------------
# The child: `python -m runners.executors.image_build RESULT_FD`, request on stdin.


class _Failed(Exception):
    """The build or push failed: the step's failure."""


def _child(result_fd: int) -> int:
    request = json.load(sys.stdin)
    out = sys.stdout
    result: dict[str, Any] = {"image_id": "", "digests": {}}

    def hang_up(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # closes the engine's stream: it stops the build

    signal.signal(signal.SIGTERM, hang_up)
    try:
        import docker  # noqa: PLC0415
        import docker.errors  # noqa: PLC0415

        from runners.executors.docker import DockerUnavailable, connect  # noqa: PLC0415

        try:
            client = connect(request["docker_host"])
        except DockerUnavailable as exc:
            result["error"] = str(exc)
            return 1
        try:
            _build_and_push(client, request, result, out)
        except _Failed as exc:
            result["failure"] = str(exc)
        except docker.errors.DockerException as exc:
            result["error"] = f"the Docker engine failed: {_message(exc)}"
        except Exception as exc:  # noqa: BLE001  (the engine went away mid-stream)
            result["error"] = f"the image build failed: {type(exc).__name__}: {exc}"
        finally:
            client.close()
        return 0
    finally:
        out.flush()
        with os.fdopen(result_fd, "w") as pipe:
            json.dump(result, pipe)


def _build_and_push(
    client: Any, request: dict[str, Any], result: dict[str, Any], out: IO[str]
) -> None:
    from docker import errors  # noqa: PLC0415

    from runners.executors.docker import NETWORK, ensure_network  # noqa: PLC0415

    api = client.api
    tags: list[str] = request["tags"]
    registries = {registry_of(tag) for tag in tags}
    credentials: dict[str, str] | None = request["credentials"]

    def say(text: str) -> None:
        out.write(text + "\n")
        out.flush()

    def auth_for(reference: str) -> dict[str, str]:
        """Credentials go to the registries of the tags only, never to another one."""
        if credentials is None or registry_of(reference) not in registries:
            return {}
        return credentials

    if credentials is not None and "username" in credentials:
        for registry in sorted(registries):
            try:
                api.login(
                    credentials["username"], credentials["password"], registry=registry, reauth=True
                )
            except errors.APIError as exc:
                # The engine's words (never the password): "unauthorized: ...".
                raise _Failed(
                    f"the registry {registry} refused the credentials of the registry secret "
                    f"({_message(exc)})"
                ) from None
            say(f"logged in to {registry}")
    for reference in request["cache_from"]:
        say(f"cache_from: pulling {reference}")
        try:
            for event in api.pull(
                reference, stream=True, decode=True, auth_config=auth_for(reference)
            ):
                if "error" in event:
                    raise errors.APIError(event["error"])
        except errors.APIError as exc:
            why = _message(exc)
            say(f"cache_from: {reference} could not be pulled ({why}): building without it")
    ensure_network(api)  # the build's RUN containers run on Goci's step network
    step = ""
    image_id = ""
    stream = api.build(
        path=request["context"],
        dockerfile=request["dockerfile"],
        buildargs=request["build_args"] or None,
        cache_from=request["cache_from"] or None,
        network_mode=NETWORK,
        rm=True,
        forcerm=True,
        decode=True,
    )
    for event in stream:
        if "stream" in event:
            text = event["stream"]
            for line in text.splitlines():
                if _STEP_LINE.match(line):
                    step = line
            out.write(text)
            out.flush()
        elif "status" in event:
            _status(event, out)
        elif "aux" in event and isinstance(event["aux"], dict):
            image_id = event["aux"].get("ID") or image_id
        elif "error" in event:
            at = f" at {step}" if step else ""
            raise _Failed(f"the build failed{at}: {event['error'].strip()}")
    if not image_id:
        raise _Failed("the build ended without an image")
    result["image_id"] = image_id
    say(f"built {image_id}")
    for tag in tags:
        repository, _, name = _split(tag)
        api.tag(image_id, repository, name or "latest")
        say(f"tagged {tag}")
    if not request["push"]:
        return
    for tag in tags:
        repository, _, name = _split(tag)
        digest = ""
        say(f"pushing {tag}")
        for event in api.push(
            repository, tag=name or "latest", stream=True, decode=True, auth_config=auth_for(tag)
        ):
            if "error" in event:
                raise _Failed(f"pushing {tag} failed: {event['error'].strip()}")
            if isinstance(event.get("aux"), dict) and event["aux"].get("Digest"):
                digest = event["aux"]["Digest"]
            elif "status" in event:
                _status(event, out)
        if not digest:
            raise _Failed(f"pushing {tag} failed: the registry gave no digest")
        result["digests"][tag] = digest
        say(f"pushed {tag}: {digest}")


_PROGRESS = ("Downloading", "Extracting", "Pushing", "Waiting", "Preparing", "Verifying Checksum")


def _status(event: Mapping[str, Any], out: IO[str]) -> None:
    """A pull's or push's progress: the end of each layer, not every percent."""
    status = str(event.get("status", ""))
    if status.startswith(_PROGRESS):
        return
    layer = event.get("id")
    out.write(f"{layer}: {status}\n" if layer else f"{status}\n")
    out.flush()


def _split(reference: str) -> tuple[str, str, str]:
    """`host:5000/a/b:tag` -> ("host:5000/a/b", ":", "tag"); no tag -> ("...", "", "")."""
    slash = reference.rfind("/")
    colon = reference.rfind(":")
    if colon > slash:
        return reference[:colon], ":", reference[colon + 1 :]
    return reference, "", ""


def _message(exc: BaseException) -> str:
    explanation = getattr(exc, "explanation", None)
    return str(explanation or exc).strip()


if __name__ == "__main__":
    sys.exit(_child(int(sys.argv[1])))
