"""The child process of an image build: executors/image_build.py forks one for each
`build:` step from a forkserver that imported this module (docker-py and the
standard library only, runners/docker_engine.py). It talks to the Docker engine: logs
in to the tags' registries, pulls `cache_from`, builds, tags and pushes; the output
(the step's log), then what it found (image ID, digests, failure), go over a pipe.
A TERM raises SystemExit wherever it is: the engine's stream closes, and the engine
stops the build or push."""

from __future__ import annotations

import os
import re
import signal
import tempfile
from collections.abc import Mapping
from typing import Any

from docker import errors

from runners.docker_engine import NETWORK, DockerUnavailable, connect, ensure_network, explain

_STEP_LINE = re.compile(r"^Step \d+/\d+ : ")


def registry_of(reference: str) -> str:
    """The registry host of an image reference (Docker Hub's for one without a host)."""
    first, sep, _ = reference.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


class _Failed(Exception):
    """The build or push failed: the step's failure."""


def run(request: dict[str, Any], conn: Any) -> None:
    """Build (and push) as `request` says; the output as ("out", bytes) messages on
    `conn`, then ("result", {...}): image_id, digests, and failure or error."""
    result: dict[str, Any] = {"image_id": "", "digests": {}}

    def hang_up(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # closes the engine's stream: it stops the build

    signal.signal(signal.SIGTERM, hang_up)
    # docker-py reads ~/.docker/config.json (or DOCKER_CONFIG's) and sends all of it
    # with every build: nothing of this machine's may reach a Dockerfile.
    with tempfile.TemporaryDirectory(prefix="goci-build-") as empty:
        os.environ["HOME"] = os.environ["DOCKER_CONFIG"] = empty
        out = _Output(conn)
        try:
            client = connect(request["docker_host"])
        except DockerUnavailable as exc:
            result["error"] = str(exc)
            conn.send(("result", result))
            return
        try:
            _build_and_push(client, request, result, out)
        except _Failed as exc:
            result["failure"] = str(exc)
        except errors.DockerException as exc:
            result["error"] = f"the Docker engine failed: {explain(exc)}"
        except Exception as exc:  # noqa: BLE001  (the engine went away mid-stream)
            result["error"] = f"the image build failed: {type(exc).__name__}: {exc}"
        finally:
            client.close()
        conn.send(("result", result))


class _Output:
    """The step's log, as text written to the pipe (what `say` and the streams write)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def write(self, text: str) -> None:
        if text:
            self.conn.send(("out", text.encode("utf-8", "surrogateescape")))

    def flush(self) -> None:
        pass


def _build_and_push(
    client: Any, request: dict[str, Any], result: dict[str, Any], out: _Output
) -> None:
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
                    f"({explain(exc)})"
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
            why = explain(exc)
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


def _status(event: Mapping[str, Any], out: _Output) -> None:
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
