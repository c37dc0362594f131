"""Run each step in its own container, through the Docker Engine API (docker-py).

One container per step (create, attach, start, wait, remove), every step on Goci's
bridge network `goci-steps`, on which containers cannot reach each other (Docker's
inter-container communication is off there), the workspace bind-mounted at
/workspace. Isolation defaults and their reasons: docs/security.md.

Only starting a container and running the step are on a step's critical path: the
next steps' containers are created while the steps before them run (ready_soon), and
containers are removed after the step's result is known. The network is made once per
machine and kept: a network per run cost ~150 ms to create and ~240 ms to remove.

Why not one long-lived container per image with `docker exec` per step (~80 ms
instead of ~400 ms)? Steps would share a pids and memory limit, a fork bomb or a
memory hog in one step would take down the steps running beside it, an OOM kill
could not be told apart per step, and a step would see what earlier steps left in
the container's filesystem and process table. See docs/benchmarks.md for figures.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
from docker.types import LogConfig, Mount

from builds.pipeline import Pipeline, Step
from runners.docker_engine import NETWORK, connect, ensure_network, explain
from runners.engine import StepOutcome, StepRun
from runners.lines import format_size
from runners.owner import owner_alive, owner_label

WORKSPACE = "/workspace"
READ_SIZE = 64 * 1024
KILL_GRACE = 1.0
PULL_POLICIES = ("if-not-present", "always", "never")

# What package managers need (apt drops to the _apt user, chowns and chmods files
# it unpacks, and signals its children); everything else Docker grants by default
# (MKNOD, NET_RAW, SETPCAP, SETFCAP, SYS_CHROOT, AUDIT_WRITE, NET_BIND_SERVICE) is
# dropped. docs/security.md gives the reason for each.
CAPABILITIES = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID")

LABEL_RUN = "goci.run"
LABEL_STEP = "goci.step"
LABEL_OWNER = "goci.owner"  # boot id, pid and start time of the goci process

# Frames of Docker's attach stream (no TTY): 1 byte stream, 3 zero, 4 bytes length.
_HEADER = struct.Struct(">BxxxL")
_STDERR = 2
# The step's stderr joins its stdout in its own shell, so their order is kept exactly
# (two pipes would not keep it), and the container's own stderr carries only the exit
# code. With it, a finished step needs no `wait` for Docker to tear the container
# down (~70 ms). A step could write a false code there, but a step decides its exit
# code anyway; without the line (killed, out of memory) Goci asks Docker.
_WRAPPER = '"$@" 2>&1; code=$?; echo "goci-exit $code" >&2; exit $code'
_EXIT_LINE = re.compile(rb"goci-exit (\d+)\n\Z")


@dataclass(frozen=True)
class Limits:
    memory: int = 2 << 30  # bytes (GOCI_STEP_MEMORY)
    cpus: float = float(min(2, os.cpu_count() or 1))  # GOCI_STEP_CPUS
    pids: int = 1024  # GOCI_STEP_PIDS


def parse_memory(text: str) -> int:
    """`2g`, `512m`, `2GiB`, `1073741824` -> bytes."""
    match = re.fullmatch(r"\s*(\d+)\s*([kmg]?)(?:i?b)?\s*", text, re.IGNORECASE)
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"{text!r} is not a memory size such as 2g or 512m")
    return int(match.group(1)) << {"": 0, "k": 10, "m": 20, "g": 30}[match.group(2).lower()]


def prune(client: docker.DockerClient, *, everything: bool = False) -> list[str]:
    """Remove containers and networks of runs whose goci process is gone (or all of
    Goci's with everything=True). Idempotent and safe beside running builds."""
    removed = []
    # The list call itself, not containers.list(): that inspects each container after
    # listing, and one removed in between (by another pruning process) raised NotFound.
    for container in client.api.containers(all=True, filters={"label": LABEL_OWNER}):
        if everything or not owner_alive((container["Labels"] or {}).get(LABEL_OWNER, "")):
            with contextlib.suppress(docker.errors.NotFound):
                client.api.remove_container(container["Id"], force=True)
                removed.append(f"container {container['Names'][0].lstrip('/')}")
    for network in client.networks.list(filters={"label": LABEL_OWNER}):
        if everything or not owner_alive(network.attrs["Labels"].get(LABEL_OWNER, "")):
            with contextlib.suppress(docker.errors.NotFound):
                network.remove()
                removed.append(f"network {network.name}")
    return removed


def from_environment(workspace: Path) -> DockerExecutor:
    """The executor as the operator configured it in the environment (never the
    pipeline): GOCI_PULL_POLICY, GOCI_STEP_MEMORY, GOCI_STEP_CPUS, GOCI_STEP_PIDS,
    DOCKER_HOST. ValueError or DockerUnavailable say what is wrong."""
    defaults = Limits()
    try:
        limits = Limits(
            memory=parse_memory(os.environ.get("GOCI_STEP_MEMORY") or "2g"),
            cpus=float(os.environ.get("GOCI_STEP_CPUS") or defaults.cpus),
            pids=int(os.environ.get("GOCI_STEP_PIDS") or defaults.pids),
        )
    except ValueError as exc:
        raise ValueError(
            f"GOCI_STEP_MEMORY, GOCI_STEP_CPUS or GOCI_STEP_PIDS is invalid: {exc}"
        ) from None
    if limits.cpus <= 0 or limits.pids < 1:
        raise ValueError("GOCI_STEP_CPUS and GOCI_STEP_PIDS must be positive")
    policy = os.environ.get("GOCI_PULL_POLICY") or "if-not-present"
    if policy not in PULL_POLICIES:
        raise ValueError(f"GOCI_PULL_POLICY={policy!r}: use one of {', '.join(PULL_POLICIES)}")
    return DockerExecutor(connect(), workspace, limits=limits, pull_policy=policy)


class DockerExecutor:
    def __init__(
        self,
        client: docker.DockerClient,
        workspace: Path,
        *,
        limits: Limits | None = None,
        pull_policy: str = "if-not-present",
        pull_timeout: float = 600.0,
        kill_grace: float = KILL_GRACE,
    ) -> None:
        if pull_policy not in PULL_POLICIES:
            raise ValueError(f"pull policy {pull_policy!r} is not one of {PULL_POLICIES}")
        self.client = client
        self.api = client.api
        self.workspace = workspace.resolve()
        self.limits = limits or Limits()
        self.pull_policy = pull_policy
        self.pull_timeout = pull_timeout
        self.kill_grace = kill_grace
        self.run_id = uuid.uuid4().hex[:12]
        self.labels = {LABEL_RUN: self.run_id, LABEL_OWNER: owner_label()}
        self.network = NETWORK
        self._network: Future[None] | None = None  # making sure it is there
        # The network's check, prune and the containers made before their step starts.
        self._background: ThreadPoolExecutor | None = None
        self._early: dict[str, tuple[dict[str, Any], Future[str | None]]] = {}  # by step
        self._containers: set[str] = set()
        self._removers: list[threading.Thread] = []
        self._images: dict[str, tuple[threading.Lock, list[str | None]]] = {}
        self._lock = threading.Lock()

    def prepare(self, pipeline: Pipeline) -> None:
        self._background = ThreadPoolExecutor(max_workers=2, thread_name_prefix="goci-docker")
        # Docker looks a container's network up when it starts the container, not when it
        # creates it: the first step's container is created while the network is checked,
        # and every step waits for that just before its start (_network_error).
        self._network = self._background.submit(ensure_network, self.api)
        # What a crashed run on this machine left behind: nothing of this run waits for it.
        self._background.submit(prune, self.client)

    def cleanup(self) -> None:
        if self._background is not None:
            # Nothing is created after this: containers not begun are never made, those
            # being made are finished and then removed below with the others.
            self._background.shutdown(wait=True, cancel_futures=True)
            self._background = None
        with self._lock:
            removers, self._removers = self._removers, []
            self._early.clear()
        for remover in removers:
            remover.join()
        with self._lock:
            containers, self._containers = self._containers, set()
        for container in containers:  # made early for steps that never ran, or orphaned
            with contextlib.suppress(docker.errors.NotFound):
                self.api.remove_container(container, force=True)
        self._network = None

    def ready_soon(self, step: Step, env: Mapping[str, str]) -> None:
        """Create (not start) the container of a step while the steps before it run."""
        workdir = self._workdir(step.workdir)
        if step.image is None or workdir is None or self._background is None:
            return
        config = self._config(step, env, workdir)
        with self._lock:
            if step.name not in self._early:
                future = self._background.submit(self._create_early, config)
                self._early[step.name] = (config, future)

    def run_step(self, run: StepRun) -> StepOutcome:
        step = run.step
        assert step.image is not None
        workdir = self._workdir(step.workdir)
        if workdir is None:
            return StepOutcome(error=f"workdir '{step.workdir}' is outside the workspace")
        error = self._ensure_image(step.image, run)
        if error is not None:
            return StepOutcome(error=error)
        if run.cancel.is_set():
            return StepOutcome(canceled=True)
        config = self._config(step, run.env, workdir)
        try:
            container = self._made_early(step.name, config) or self._create(config)
        except docker.errors.APIError as exc:
            return StepOutcome(error=f"could not create the container: {explain(exc)}")
        try:
            error = self._network_error()
            if error is not None:
                return StepOutcome(error=error)
            return self._follow(container, run)
        except docker.errors.APIError as exc:
            return StepOutcome(error=f"the Docker engine failed: {explain(exc)}")
        finally:
            # The step's result is known: removal takes a while and nobody waits for it
            # but cleanup(), the next step starts now.
            self._remove_later(container)

    def _remove_later(self, container: str) -> None:
        remover = threading.Thread(target=self._remove, args=(container,), daemon=True)
        with self._lock:
            self._removers.append(remover)
        remover.start()

    def _remove(self, container: str) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self.api.remove_container(container, force=True)
        with self._lock:
            self._containers.discard(container)

    def _workdir(self, workdir: str | None) -> str | None:
        if not workdir:
            return WORKSPACE
        # Checked on the host side of the bind mount, symlinks resolved, like local.py.
        if not (self.workspace / workdir).resolve().is_relative_to(self.workspace):
            return None
        return f"{WORKSPACE}/{workdir}"

    def _network_error(self) -> str | None:
        assert self._network is not None, "prepare() was not called"
        try:
            self._network.result()
        except (docker.errors.DockerException, OSError) as exc:
            return f"could not create the network {NETWORK}: {explain(exc)}"
        return None

    def _create_early(self, config: dict[str, Any]) -> str | None:
        if not self._image_here(config["image"]):
            return None  # the step pulls it itself, with the progress in its log
        return self._create(config)

    def _made_early(self, name: str, config: dict[str, Any]) -> str | None:
        """The container made by ready_soon for this step, if it is made exactly as the
        step would make it now (the same image, command, env, workdir, limits)."""
        with self._lock:
            early = self._early.pop(name, None)
        if early is None:
            return None
        made, future = early
        if future.cancel():  # not begun: the step creates its own without waiting
            return None
        try:
            container = future.result()
        except (docker.errors.DockerException, OSError):
            return None  # the step creates its own and says what fails
        if container is not None and made != config:
            self._remove_later(container)
            return None
        return container

    def _config(self, step: Step, env: Mapping[str, str], workdir: str) -> dict[str, Any]:
        """create_container's arguments for a step."""
        limits = self.limits
        host_config = self.api.create_host_config(
            privileged=False,
            cap_drop=["ALL"],
            cap_add=list(CAPABILITIES),
            security_opt=["no-new-privileges:true"],
            init=True,  # an init as PID 1 reaps zombies and forwards the stop signal
            pids_limit=limits.pids,
            mem_limit=limits.memory,
            memswap_limit=limits.memory,  # no swap beyond the limit
            nano_cpus=int(limits.cpus * 1e9),
            network_mode=self.network,
            ipc_mode="private",
            mounts=[Mount(WORKSPACE, str(self.workspace), type="bind")],
            # Goci keeps the log itself. Docker's json-file driver would store a second
            # copy on disk and cap a step at ~270k lines/s; without it, 1M lines in 0.9 s.
            log_config=LogConfig(type=LogConfig.types.NONE),
        )
        return {
            "image": step.image,
            "command": ["/bin/sh", "-c", _WRAPPER, "goci", step.shell, "-e", "-c", step.run],
            "working_dir": workdir,
            "environment": {**env, "GOCI_WORKSPACE": WORKSPACE},
            "labels": {**self.labels, LABEL_STEP: step.name},
            "host_config": host_config,
            "stdin_open": False,
            "tty": False,
        }

    def _create(self, config: dict[str, Any]) -> str:
        container: str = self.api.create_container(**config)["Id"]
        with self._lock:
            self._containers.add(container)
        return container

    def _follow(self, container: str, run: StepRun) -> StepOutcome:
        # Attached before start, not one byte is missed (and no log replay is needed:
        # the container has no log driver).
        sock = self.api.attach_socket(container, params={"stdout": 1, "stderr": 1, "stream": 1})
        # Closing the SocketIO wrapper leaves its socket open: close that too.
        inner = getattr(sock, "_sock", None)
        frames = _Frames(run.output)
        try:
            self.api.start(container)
            timed_out, canceled = self._stream(container, sock, run, frames)
        finally:
            sock.close()
            if inner is not None:
                inner.close()
        reported = frames.exit_code()
        if reported == 0 and not (timed_out or canceled):
            return StepOutcome(exit_code=0)
        exit_code = self.api.wait(container)["StatusCode"]
        state = self.api.inspect_container(container)["State"]
        if state.get("OOMKilled") and not (timed_out or canceled):
            limit = format_size(self.limits.memory)
            return StepOutcome(exit_code=exit_code, failure=f"out of memory (limit {limit})")
        if reported is not None:
            exit_code = reported
        return StepOutcome(exit_code=exit_code, timed_out=timed_out, canceled=canceled)

    def _stream(
        self, container: str, sock: Any, run: StepRun, frames: _Frames
    ) -> tuple[bool, bool]:
        """Copy the attach stream to the step's output until it ends, enforcing the
        timeout and cancel: TERM to the container's init, KILL after the grace."""
        deadline = None if run.timeout is None else time.monotonic() + run.timeout
        timed_out = canceled = False
        kill_at: float | None = None
        read = _reader(sock)
        with selectors.DefaultSelector() as selector:
            selector.register(sock.fileno(), selectors.EVENT_READ)
            while True:
                if _pending(sock) or selector.select(timeout=0.1):
                    data = read(READ_SIZE)
                    if not data:
                        break
                    frames.feed(data)
                now = time.monotonic()
                if kill_at is None:
                    canceled = run.cancel.is_set()
                    timed_out = not canceled and deadline is not None and now >= deadline
                    if canceled or timed_out:
                        with contextlib.suppress(docker.errors.APIError):
                            self.api.kill(container, signal="SIGTERM")
                        kill_at = now + self.kill_grace
                elif now >= kill_at:
                    with contextlib.suppress(docker.errors.APIError):
                        self.api.kill(container, signal="SIGKILL")
                    kill_at = float("inf")
        return timed_out, canceled

    def _ensure_image(self, image: str, run: StepRun) -> str | None:
        """Make the image present per the pull policy, once per run per image;
        return why it cannot be, or None."""
        with self._lock:
            lock, result = self._images.setdefault(image, (threading.Lock(), []))
        with lock:  # parallel steps of one image wait for a single pull
            if not result:
                result.append(self._pull_if_needed(image, run))
            return result[0]

    def _image_here(self, image: str) -> bool:
        """Whether the image is present for this run, without pulling it (a pull belongs
        in the log of the step that needs it)."""
        with self._lock:
            lock, result = self._images.setdefault(image, (threading.Lock(), []))
        with lock:
            if not result and self.pull_policy != "always":
                with contextlib.suppress(docker.errors.ImageNotFound):
                    self.api.inspect_image(image)  # type: ignore[no-untyped-call]  # untyped in types-docker
                    result.append(None)
            return result == [None]

    def _pull_if_needed(self, image: str, run: StepRun) -> str | None:
        if self.pull_policy != "always":
            try:
                self.api.inspect_image(image)  # type: ignore[no-untyped-call]  # untyped in types-docker
                return None
            except docker.errors.ImageNotFound:
                if self.pull_policy == "never":
                    return (
                        f"image '{image}' is not on this machine and GOCI_PULL_POLICY is never: "
                        f"pull it with `docker pull {image}` or change the policy"
                    )
        return self._pull(image, run)

    def _pull(self, image: str, run: StepRun) -> str | None:
        """Pull with progress lines in the step's log. The pull runs in its own thread
        so a cancel or a stuck registry never holds the step."""
        say = run.output
        say(f"[goci] pulling {image}\n".encode())
        outcome: list[str | None] = []

        def pull() -> None:
            try:
                last: dict[str, str] = {}
                for event in self.api.pull(image, stream=True, decode=True):
                    if "error" in event:
                        outcome.append(str(event["error"]))
                        return
                    status, layer = event.get("status", ""), event.get("id", "")
                    if status and last.get(layer) != status:  # a line per change, not per tick
                        last[layer] = status
                        say(f"[goci] {layer + ': ' if layer else ''}{status}\n".encode())
                outcome.append(None)
            except (docker.errors.DockerException, OSError) as exc:
                outcome.append(explain(exc))

        thread = threading.Thread(target=pull, name=f"pull:{image}", daemon=True)
        thread.start()
        deadline = time.monotonic() + min(self.pull_timeout, run.timeout or self.pull_timeout)
        while thread.is_alive() and not run.cancel.is_set() and time.monotonic() < deadline:
            thread.join(timeout=0.1)
        if thread.is_alive():
            if run.cancel.is_set():
                return "canceled while pulling the image"
            return f"could not pull image '{image}': no answer within {self.pull_timeout:g}s"
        if outcome and outcome[0] is not None:
            return f"could not pull image '{image}': {outcome[0]}"
        return None


class _Frames:
    """Reassembles Docker's multiplexed frames from arbitrary chunks: stdout goes to
    the step's log, the tail of stderr is kept for the exit-code line."""

    def __init__(self, output: Callable[[bytes], None]) -> None:
        self.output = output
        self.buffer = bytearray()
        self.stderr = b""

    def feed(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        start = 0
        while len(buffer) - start >= _HEADER.size:
            stream, size = _HEADER.unpack_from(buffer, start)
            end = start + _HEADER.size + size
            if len(buffer) < end:
                break
            payload = bytes(buffer[start + _HEADER.size : end])
            if stream == _STDERR:
                self.stderr = (self.stderr + payload)[-64:]
            else:
                self.output(payload)
            start = end
        del buffer[:start]

    def exit_code(self) -> int | None:
        match = _EXIT_LINE.search(self.stderr)
        return int(match.group(1)) if match else None


def _reader(sock: Any) -> Callable[[int], bytes]:
    if isinstance(sock, socket.socket):  # TLS: the SSL socket decrypts
        return sock.recv
    return lambda n: os.read(sock.fileno(), n)  # a plain socket (unix or tcp)


def _pending(sock: Any) -> bool:
    """TLS may hold decrypted bytes that select() cannot see."""
    pending = getattr(sock, "pending", None)
    return bool(pending and pending())
