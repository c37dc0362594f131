"""`goci run` of a pipeline without images loads only what running it needs: no Django,
no docker-py, none of what only other commands use. Every import costs start-up time
(issue #10); bench/bench_cli.py shows the time, this shows the modules."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import goci, write_pipeline

# What a shell-only `goci run` must not import, with who needs it instead.
NOT_FOR_A_SHELL_RUN = (
    "django",  # the server's commands
    "channels",
    "ninja",
    "asgiref",
    "docker",  # docker-py, only for steps with an image
    "requests",  # docker-py's transport
    "runners.executors.docker",
    "importlib.metadata",  # `goci version` and `--version`
    "email",  # importlib.metadata's
    "zipfile",
    "tomllib",
    "platform",
    "json",  # `goci schema`
    "secrets",  # `goci user add`
    "difflib",  # "did you mean" in a file with a mistake
)


def imported_modules(stderr: str) -> set[str]:
    """The modules that python -X importtime reported loading."""
    return {
        line.rsplit("|", 1)[1].strip()
        for line in stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }


def goci_importing(*args: str, cwd: Path) -> tuple[int, set[str]]:
    done = goci(*args, cwd=cwd, env={"PYTHONPROFILEIMPORTTIME": "1"})
    return done.returncode, imported_modules(done.stderr)


def loaded(modules: set[str], package: str) -> list[str]:
    return sorted(m for m in modules if m == package or m.startswith(package + "."))


def test_a_shell_only_run_imports_nothing_it_does_not_need(tmp_path: Path) -> None:
    write_pipeline(tmp_path, "steps: [{name: a, run: echo hi}, {name: b, run: 'true'}]")
    code, modules = goci_importing("run", cwd=tmp_path)
    assert code == 0
    assert "builds.pipeline" in modules  # the check sees the imports at all
    assert {name: loaded(modules, name) for name in NOT_FOR_A_SHELL_RUN} == {
        name: [] for name in NOT_FOR_A_SHELL_RUN
    }


def test_a_run_with_when_conditions_imports_no_more(tmp_path: Path) -> None:
    write_pipeline(tmp_path, "steps: [{run: echo hi, when: {branch: main, event: manual}}]")
    code, modules = goci_importing("run", cwd=tmp_path)
    assert code == 0
    assert [m for name in NOT_FOR_A_SHELL_RUN for m in loaded(modules, name)] == []


def test_the_commands_that_need_them_still_import_them(tmp_path: Path) -> None:
    code, modules = goci_importing("schema", cwd=tmp_path)
    assert (code, loaded(modules, "json")[:1]) == (0, ["json"])
    code, modules = goci_importing("--version", cwd=tmp_path)
    assert (code, loaded(modules, "importlib.metadata")[:1]) == (0, ["importlib.metadata"])
    write_pipeline(tmp_path, "steps: [{name: a, run: 'true', nedes: []}]")
    code, modules = goci_importing("validate", cwd=tmp_path)
    assert (code, loaded(modules, "difflib")) == (2, ["difflib"])
