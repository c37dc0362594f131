"""The supervisor of a host step on a server worker (runners/executors/local.py).

It runs alone in a bare interpreter (`python -I -S runners/supervise.py ...`), so it
imports only the standard library, and it never touches the step's output. It makes
itself the step's child subreaper, so that every process the step starts stays below
it whatever session or group it moves to, and stops and reaps them all when the step
ends.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import sys
import time


def main() -> None:
    """argv: GRACE PARENT_PID KEEP_LC_CTYPE SHELL ARGS...; it exits with the shell's code
    (128 + N when a signal N killed the shell).
    """
    pr_set_pdeathsig, pr_set_child_subreaper = 1, 36
    grace, parent, keep_lc_ctype = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
    command = sys.argv[4:]
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0) != 0:
        sys.exit(f"goci: cannot supervise the step: prctl: {os.strerror(ctypes.get_errno())}")
    # If the worker dies (kill -9), its steps stop too instead of running on unowned.
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGTERM, lambda *_: None)  # seen through wake_r instead
    env = dict(os.environ)
    if not keep_lc_ctype:  # Python's C-locale coercion (PEP 538) is not the step's
        env.pop("LC_CTYPE", None)

    def descendants() -> list[int]:
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):  # noqa: PTH208  (no pathlib: a fast start)
            if entry.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    with open(f"/proc/{entry}/stat") as f:  # noqa: PTH123  (as above)
                        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                    children.setdefault(ppid, []).append(int(entry))
        found: list[int] = []
        todo = [os.getpid()]
        while todo:
            kids = children.get(todo.pop(), [])
            found += kids
            todo += kids
        return found

    def signal_all(sig: int) -> list[int]:
        """Signal every process below this one; return their pids (zombies too)."""
        pidfds = {}
        for pid in descendants():
            with contextlib.suppress(OSError):
                pidfds[pid] = os.pidfd_open(pid)
        # A pidfd pins its process: checked below us again after it was opened, a pid
        # reused since the first scan is never signaled.
        below = set(descendants())
        for pid, pidfd in pidfds.items():
            with contextlib.suppress(OSError):
                if pid in below:
                    signal.pidfd_send_signal(pidfd, sig)
            os.close(pidfd)
        return list(pidfds)

    code = 128 + signal.SIGTERM
    if os.getppid() == parent:  # else the worker died before PDEATHSIG was set
        shell = os.posix_spawn(command[0], command, env, setsigdef=(signal.SIGPIPE, signal.SIGXFSZ))
        shell_fd = os.pidfd_open(shell)
        kill_at: float | None = None
        while True:
            timeout = None if kill_at is None else max(kill_at - time.monotonic(), 0.0)
            ready, _, _ = select.select([shell_fd, wake_r], [], [], timeout)
            if shell_fd in ready:
                break
            if wake_r in ready:
                os.read(wake_r, 64)
                if kill_at is None:  # TERM to all, KILL after the grace
                    signal_all(signal.SIGTERM)
                    kill_at = time.monotonic() + grace
            elif kill_at is not None and time.monotonic() >= kill_at:
                signal.pidfd_send_signal(shell_fd, signal.SIGKILL)
                break
        _, status = os.waitpid(shell, 0)  # before reaping the rest, which would take it
        code = os.waitstatus_to_exitcode(status)
        code = 128 - code if code < 0 else code
    while signal_all(signal.SIGKILL):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(-1, 0)  # everything below is dying: reap one, look again
    sys.exit(code)


if __name__ == "__main__":
    main()
