"""The core that `goci run` uses (pipeline, engine, line splitting, executors) imports
nothing of Django, Channels or django-ninja, directly or through our own modules, so
that it runs with no database and no server (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import REPO

CORE = (
    "builds/pipeline.py",
    "runners/engine.py",
    "runners/lines.py",
    "runners/executors/__init__.py",
    "runners/executors/local.py",
    "runners/executors/docker.py",
    "runners/supervise.py",
    "builds/clone_urls.py",
    "runners/checkout.py",
    "runners/workspace.py",
    "goci/runner.py",  # `goci runner`: a remote runner has no database or settings
)
# The server's libraries; our modules that use them are caught through their imports.
SERVER_ONLY = {"django", "channels", "channels_redis", "ninja", "daphne", "asgiref"}


def _file_of(module: str) -> Path | None:
    """The file of one of our modules (a package's __init__.py), or None if not ours."""
    base = REPO.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imported(path: Path) -> list[str]:
    """Every module name the file imports, anywhere in it (lazy imports count too)."""
    inside = path.is_relative_to(REPO)
    package = ".".join(path.relative_to(REPO).parts[:-1]) if inside else ""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{node.module}" if node.module else parent
            else:
                base = node.module or ""
            names.append(base)
            names += [f"{base}.{alias.name}" for alias in node.names]  # maybe submodules
    return names


def server_imports(start: Path) -> list[str]:
    """'a.py -> b.py -> django.db' for every way `start` reaches a server library."""
    found = []
    seen = {start}
    todo = [(start, [start.name])]
    while todo:
        path, chain = todo.pop()
        for name in _imported(path):
            if name.split(".")[0] in SERVER_ONLY:
                found.append(" -> ".join([*chain, name]))
                continue
            # Importing a.b.c runs a/__init__.py and a/b/__init__.py first.
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):
                ours = _file_of(".".join(parts[:depth]))
                if ours is not None and ours not in seen:
                    seen.add(ours)
                    todo.append((ours, [*chain, str(ours.relative_to(REPO))]))
    return sorted(found)


@pytest.mark.parametrize("module", CORE)
def test_the_core_module_imports_nothing_of_the_server(module: str) -> None:
    assert server_imports(REPO / module) == []


@pytest.mark.parametrize(
    "line",
    [
        "import django",
        "from django.db import models",
        "import channels.layers",
        "from ninja import Router",
        "from builds import models",  # ours, and it imports Django
        "from builds.services import build_create",
        "def later():\n    from runners import worker",
    ],
)
def test_the_check_catches_a_server_import(line: str, tmp_path: Path) -> None:
    module = tmp_path / "core.py"
    module.write_text(f"from runners.lines import LineSplitter\n{line}\n")
    assert server_imports(module) != []
