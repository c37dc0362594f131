"""Run steps as shell processes on this machine, in the workspace.

Each step is `<shell> -e -c <run>` in a new session (its own process group), so a
timeout or a cancel reaches every process the step started, and nothing the step
left running in the background outlives it.

A process group does not hold a process that leaves it (`setsid -f`, a daemon's
double fork). Server workers therefore contain each step (`supervise=True`), in one
of two ways, the first this machine allows:

- A PID namespace of its own (util-linux `unshare --pid --fork --kill-child`, as root
  or in a user namespace mapped to the same user, under `setpriv --pdeathsig KILL`):
  the step's shell is the namespace's init, and when it ends the kernel kills every
  process left in the namespace, whatever session or group it moved to; if the
  worker dies, the step dies with it. It costs about 3 ms a step.
- Otherwise (containers whose seccomp profile refuses namespaces), a supervisor:
  a bare Python process (runners/supervise.py) that makes itself the step's child
  subreaper (prctl PR_SET_CHILD_SUBREAPER), so every orphan of the step is
  re-parented to it instead of to init. When the step's shell exits, or on a cancel
  or timeout, it signals every process below it, found in /proc, and reaps them all
  before it exits itself. A subreaper per step keeps one step's processes apart from
  another's and from the worker's own children (a subreaper in the worker could reap
  a zombie another thread's Popen is about to wait for). It costs one short-lived
  interpreter, 20-50 ms a step.

Neither needs root or cgroup delegation. `goci run` on a laptop, where the user runs
their own code, keeps the process group alone. docs/security.md has the rest.
"""

from __future__ import annotations

import contextlib
import functools
import os
import selectors
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from builds.pipeline import Pipeline
from runners.engine import StepOutcome, StepRun

READ_SIZE = 64 * 1024
# How long a step may take to stop after TERM before its processes get KILL.
KILL_GRACE = 1.0
# After the step's shell exits, how long to keep reading output of processes that
# escaped its process group (setsid) before giving up on them.
DRAIN_AFTER_EXIT = 1.0
# A supervisor stops its step within its grace; if it has not exited this much later
# (it was stopped or killed itself), the step's group gets KILL from here.
SUPERVISOR_SLACK = 5.0


class LocalExecutor:
    def __init__(
        self,
        workspace: Path,
        *,
        kill_grace: float = KILL_GRACE,
        env: Mapping[str, str] | None = None,
        supervise: bool = False,
        namespace: bool | None = None,
    ) -> None:
        """`env`: what every step's environment starts from (then the step's own and
        Goci's variables); None inherits this process's environment (`goci run`).
        `supervise`: also stop processes that left the step's process group, in a PID
        namespace (`namespace`: None if this machine allows it) or under a supervisor."""
        self.workspace = workspace.resolve()
        self.kill_grace = kill_grace
        self.base_env = None if env is None else dict(env)
        use_namespace = supervise and (pid_namespace_ok() if namespace is None else namespace)
        # In a namespace, the plain group signals below are enough: KILL to the step's
        # unshare ends the namespace's init, and with it every process in it.
        self.prefix: tuple[str, ...] = pid_namespace_prefix() if use_namespace else ()
        self.supervise = supervise and not use_namespace
        self._groups: set[int] = set()
        self._lock = threading.Lock()

    def prepare(self, pipeline: Pipeline) -> None:
        if not self.workspace.is_dir():
            raise RuntimeError(f"workspace {self.workspace} is not a directory")

    def cleanup(self) -> None:
        with self._lock:
            groups, self._groups = self._groups, set()
        for pgid in groups:
            if self.supervise:  # its supervisor stops all of it, escaped processes too
                with contextlib.suppress(ProcessLookupError):  # unreaped: pid not reused
                    os.kill(pgid, signal.SIGTERM)
            else:
                _signal_group(pgid, signal.SIGKILL)

    def run_step(self, run: StepRun) -> StepOutcome:
        step = run.step
        cwd = self._workdir(step.workdir)
        if isinstance(cwd, str):
            return StepOutcome(error=cwd)
        shell = shutil.which(step.shell)
        if shell is None:
            return StepOutcome(error=f"shell '{step.shell}' was not found on this machine")
        base = os.environ if self.base_env is None else self.base_env
        env = {**base, **run.env, "GOCI_WORKSPACE": str(self.workspace)}
        argv = [*self.prefix, shell, "-e", "-c", step.run]
        if self.supervise:
            keep_lc_ctype = "1" if "LC_CTYPE" in env else "0"
            grace = str(self.kill_grace)
            argv = [*SUPERVISOR, grace, str(os.getpid()), keep_lc_ctype, *argv]
        try:
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,  # one pipe: the order of stdout and stderr is kept
                start_new_session=True,
            )
        except OSError as exc:
            return StepOutcome(error=f"could not start {step.shell}: {exc.strerror}")
        with self._lock:
            self._groups.add(proc.pid)
        try:
            return self._follow(proc, run)
        finally:
            if proc.returncode is None:  # _follow raised: stop the step, then reap it
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait()
            with self._lock:
                self._groups.discard(proc.pid)
            if proc.stdout:
                proc.stdout.close()

    def _workdir(self, workdir: str | None) -> Path | str:
        if not workdir:
            return self.workspace
        # resolve() follows symlinks, so a link inside the workspace pointing out is caught.
        path = (self.workspace / workdir).resolve()
        if not path.is_relative_to(self.workspace):
            return f"workdir '{workdir}' is outside the workspace"
        if not path.is_dir():
            return f"workdir '{workdir}' does not exist in the workspace"
        return path

    def _follow(self, proc: subprocess.Popen[bytes], run: StepRun) -> StepOutcome:
        assert proc.stdout is not None
        out = proc.stdout.fileno()
        # A pidfd becomes readable when the shell exits, without reaping it: one select()
        # waits for output and exit together, and the group id stays reserved until every
        # signal below has been sent.
        exit_fd = os.pidfd_open(proc.pid)
        deadline = None if run.timeout is None else time.monotonic() + run.timeout
        timed_out = canceled = False
        kill_at: float | None = None
        exited_at: float | None = None
        with selectors.DefaultSelector() as selector:
            selector.register(out, selectors.EVENT_READ)
            selector.register(exit_fd, selectors.EVENT_READ)
            try:
                while selector.get_map():
                    for key, _ in selector.select(timeout=0.1):
                        if key.fd == exit_fd:
                            # The shell is done: what it left in the background goes too.
                            _signal_group(proc.pid, signal.SIGKILL)
                            exited_at = time.monotonic()
                            selector.unregister(exit_fd)
                        elif data := os.read(out, READ_SIZE):
                            run.output(data)
                        else:
                            selector.unregister(out)
                    now = time.monotonic()
                    if exited_at is not None and now - exited_at > DRAIN_AFTER_EXIT:
                        break  # a process that left the group (setsid) holds the pipe open
                    if kill_at is None and exited_at is None:
                        canceled = run.cancel.is_set()
                        timed_out = not canceled and deadline is not None and now >= deadline
                        if canceled or timed_out:
                            if self.supervise:  # it stops the step, escaped processes too
                                signal.pidfd_send_signal(exit_fd, signal.SIGTERM)
                                kill_at = now + self.kill_grace + SUPERVISOR_SLACK
                            else:
                                _signal_group(proc.pid, signal.SIGTERM)
                                kill_at = now + self.kill_grace
                    elif kill_at is not None and now >= kill_at:
                        _signal_group(proc.pid, signal.SIGKILL)
            finally:
                os.close(exit_fd)
        code = proc.wait()
        exit_code = code if code >= 0 else 128 - code  # killed by signal N -> 128 + N
        return StepOutcome(exit_code=exit_code, timed_out=timed_out, canceled=canceled)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone
        os.killpg(pgid, sig)


def pid_namespace_prefix() -> tuple[str, ...]:
    """The command that runs a step as the init of a PID namespace of its own."""
    user = () if os.geteuid() == 0 else ("--user", "--map-current-user")
    return (
        *("setpriv", "--pdeathsig", "KILL", "--"),  # the worker dies: the step too
        *("unshare", *user, "--pid", "--fork", "--kill-child"),
    )


@functools.cache
def pid_namespace_ok() -> bool:
    """Whether this machine lets us make PID namespaces (tried once per process)."""
    try:
        tried = subprocess.run(
            [*pid_namespace_prefix(), "true"], capture_output=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):  # no util-linux, or a hung kernel call
        return False
    return tried.returncode == 0


# The supervisor's command (runners/supervise.py), run with -I (no PYTHON* variables,
# which belong to the step) and -S (no site packages: a fast start).
SUPERVISOR = (sys.executable, "-I", "-S", str(Path(__file__).resolve().parents[1] / "supervise.py"))
