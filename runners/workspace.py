"""A job's directories on the machine that runs it, for the worker and the remote
runner alike (no Django: `goci runner` has no settings): the workspace, marked with its
owner so that the next process on this machine removes it if this one dies, and the
host steps' HOME beside it; and the environment a host step starts from."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from runners.owner import owner_alive, owner_label

OWNER_FILE = ".goci-owner"
HOME_SUFFIX = ".home"
# PATH of host steps on a server or runner (Docker's default): the process's own may
# name its virtualenv or other private tools.
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def host_env(home: Path) -> dict[str, str]:
    """All a host step's environment starts from (the pipeline's env and Goci's
    variables come on top). Nothing of the process's own: DATABASE_URL, SECRET_KEY, a
    runner's token file or proxies with passwords would give every build its keys."""
    return {
        "PATH": HOST_PATH,
        "HOME": str(home),
        # The machine's language and time zone, not secrets: kept so output and
        # timestamps read as on the machine itself.
        "LANG": os.environ.get("LANG") or "C.UTF-8",
        "TZ": os.environ.get("TZ") or "UTC",
    }


def make_workspace(root: Path, name: str) -> Path:
    """A fresh workspace `root/name` (and its HOME), marked with its owner."""
    path = root / name
    remove_workspace(path)
    path.mkdir(parents=True)
    (path / OWNER_FILE).write_text(owner_label())
    home_of(path).mkdir()
    return path


def home_of(workspace: Path) -> Path:
    """HOME of the job's host steps: fresh per job, beside the workspace rather than in
    it, so that it is never mistaken for the checked-out files."""
    return workspace.with_name(workspace.name + HOME_SUFFIX)


def remove_workspace(workspace: Path) -> None:
    # HOME first: clean_leftovers() keeps a HOME while its workspace is there.
    shutil.rmtree(home_of(workspace), ignore_errors=True)
    shutil.rmtree(workspace, ignore_errors=True)


def empty_workspace(workspace: Path) -> None:
    """Remove the checkout (`clone: false`), keeping the owner mark."""
    for path in workspace.iterdir():
        if path.name == OWNER_FILE:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def clean_leftovers(root: Path) -> None:
    """Remove the workspaces of processes on this machine that died."""
    if not root.is_dir():
        return
    for path in root.iterdir():
        marker = path / OWNER_FILE
        with contextlib.suppress(OSError):
            if marker.is_file() and not owner_alive(marker.read_text().strip()):
                remove_workspace(path)
    for path in root.glob(f"*{HOME_SUFFIX}"):  # a process died between the two removals
        if not path.with_name(path.name.removesuffix(HOME_SUFFIX)).exists():
            shutil.rmtree(path, ignore_errors=True)
