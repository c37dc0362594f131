"""`make bench` for the checkout (issue #12): a 10,000-commit repository (made with
`git fast-import`: 500 files, each commit changes one of them), served by the tests'
git server (git http-backend on 127.0.0.1), fetched through runners/checkout.py as a
build would: shallow (depth 1, the default) and whole (`clone: {depth: 0}`). Medians
of 3 rounds, each into a fresh workspace."""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

COMMITS = 10_000
FILES = 500
ROUNDS = 3


def make_repository(bare: Path) -> str:
    """A bare repository of COMMITS commits on main; returns the last commit's id."""
    from tests.git_server import git, git_env

    git("init", "--quiet", "--bare", "--initial-branch=main", bare)
    stream = bytearray()
    for n in range(COMMITS):
        path = f"src/module{n % FILES:03d}.py"
        content = f"# {path}, version {n // FILES}\n" + "".join(
            f"def f{i}(x):\n    return x * {i} + {n}\n" for i in range(20)
        )
        data = content.encode()
        message = f"change {path} ({n})\n".encode()
        stream += b"commit refs/heads/main\n"
        stream += f"committer Bench <bench@example.com> {1_700_000_000 + n} +0000\n".encode()
        stream += b"data %d\n%s" % (len(message), message)  # parent: the branch's tip
        stream += b"M 100644 inline %s\ndata %d\n%s\n" % (path.encode(), len(data), data)
    subprocess.run(
        ["git", "fast-import", "--quiet"],
        input=bytes(stream),
        cwd=bare,
        env=git_env(),
        check=True,
    )
    git("repack", "-a", "-d", "-q", cwd=bare)  # as a forge serves it: one pack, with deltas
    return git("rev-parse", "main", cwd=bare)


def fetch(url: str, commit: str, depth: int, workspace: Path) -> float:
    from builds.clone_urls import check_clone_url
    from runners.checkout import Checkout

    workspace.mkdir()
    began = time.perf_counter()
    target = check_clone_url(url, ["127.0.0.1"])
    with Checkout(workspace, target, commit=commit, ref="main") as checkout:
        checkout.fetch(depth)
    return time.perf_counter() - began


def main() -> None:
    from tests.git_server import git, git_server

    with tempfile.TemporaryDirectory(prefix="goci-bench-clone-") as scratch:
        root = Path(scratch) / "git"
        root.mkdir()
        began = time.perf_counter()
        commit = make_repository(root / "big.git")
        made = time.perf_counter() - began
        pack = sum(p.stat().st_size for p in (root / "big.git" / "objects").rglob("*.pack"))
        print(
            f"clone: a {COMMITS:,}-commit repository ({FILES} files, {pack / 2**20:.1f} MiB "
            f"packed) made with git fast-import in {made:.1f} s"
        )
        with git_server(root) as server:
            url = server.url("big")
            for label, depth in (("shallow (depth 1)", 1), ("whole history (depth 0)", 0)):
                times = []
                for n in range(ROUNDS):
                    workspace = Path(scratch) / f"ws-{depth}-{n}"
                    times.append(fetch(url, commit, depth, workspace))
                    count = git("rev-list", "--count", "HEAD", cwd=workspace)
                    assert count == ("1" if depth else str(COMMITS)), count
                print(
                    f"clone: {label + ':':25s} median {statistics.median(times):6.2f} s "
                    f"(min {min(times):.2f}, max {max(times):.2f}; {ROUNDS} rounds)   (reported)"
                )


if __name__ == "__main__":
    main()
