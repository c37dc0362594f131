"""The `goci` command: run and validate pipelines on this machine; serve them (`goci up`,
`goci worker`) and manage the server's users and tokens.

Exit codes of `goci run`: 0 all steps succeeded (allowed failures included), 1 a step
failed, timed out or could not run, 2 the pipeline or the command line is invalid
(nothing ran), 130 interrupted (Ctrl-C), 143 terminated (SIGTERM).

This module imports no Django at the top: `goci run` needs no database and no server;
the server's commands set Django up when they run. Start-up time counts for `goci run`
(issue #10): what only other commands use (importlib.metadata, json, secrets, docker-py)
is imported inside them, and tests/test_cli_imports.py checks that it stays so.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, TextIO

from builds.pipeline import (
    EVENTS,
    InputsError,
    Pipeline,
    PipelineError,
    Step,
    cell_may_fail,
    cell_name,
    check_inputs,
    for_cell,
    input_variable,
    json_schema,
    load_file,
    matrix_variables,
    parse_labels,
    secrets_wanted,
    select_cells,
    with_secret_values,
    without_registry_secrets,
)
from runners.engine import BuildResult, Engine, Executor, Status, StepResult
from runners.executors import ByImage
from runners.executors.local import LocalExecutor
from runners.lines import DEFAULT_LOG_CAP, MIN_SECRET, Masker, format_size

if TYPE_CHECKING:
    from django.contrib.auth.models import User

    from builds.models import Project

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143
# Looked for in this order when no file is named; .yml first, as Goci has always used it.
DEFAULT_FILES = (".goci.yml", ".goci.yaml")
MAX_PREFIX = 24

# Step prefixes cycle through these (like docker compose); statuses have fixed colours.
PALETTE = ("36", "33", "32", "35", "34", "96", "93", "92", "95", "94")
STATUS_STYLE = {
    Status.SUCCESS: ("32", "✔", "+"),
    Status.FAILURE: ("31", "✘", "x"),
    Status.ERROR: ("1;31", "!", "!"),
    Status.CANCELED: ("33", "■", "-"),
    Status.SKIPPED: ("2", "○", "o"),
}
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class UsageError(Exception):
    """A bad command line or file: exit 2 before anything runs."""


def format_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.2f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


class ConsoleReporter:
    """Live output: every line prefixed with its step, a start and end line per step,
    and a summary table at the end."""

    def __init__(
        self,
        pipeline: Pipeline,
        out: TextIO,
        *,
        color: bool,
        timestamps: bool = False,
        secrets: Sequence[str] = (),
    ) -> None:
        self.out = out
        self.mask = Masker(secrets)
        self.color = color
        self.timestamps = timestamps
        self.unicode = (getattr(out, "encoding", None) or "").lower().replace("-", "") == "utf8"
        self.width = min(max(len(s.name) for s in pipeline.steps), MAX_PREFIX)
        self.names = {
            step.name: self._paint(PALETTE[i % len(PALETTE)], self._fit(step.name))
            for i, step in enumerate(pipeline.steps)
        }
        self.order = [s.name for s in pipeline.steps]
        self.retries = {s.name: s.retry for s in pipeline.steps}

    def _fit(self, name: str) -> str:
        if len(name) > self.width:
            name = name[: self.width - 1] + ("…" if self.unicode else "~")
        return name.ljust(self.width)

    def _paint(self, code: str, text: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.color else text

    def _status(self, status: Status) -> str:
        code, symbol, ascii_symbol = STATUS_STYLE[status]
        return self._paint(code, f"{symbol if self.unicode else ascii_symbol} {status}")

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def step_started(self, step: Step, attempt: int) -> None:
        arrow = "▶" if self.unicode else ">"
        what = "started" if attempt == 1 else f"retrying (attempt {attempt} of {step.retry + 1})"
        first = step.run.strip().splitlines()[0] if step.run.strip() else ""
        self._write(f"{self.names[step.name]} {arrow} {what}: {first}\n")

    def step_log(self, step: Step, first_line: int, lines: Sequence[str], at: float) -> None:
        if self.mask:
            _, lines = self.mask.lines(step.name, first_line, lines)
        self._lines(step, lines, at)

    def _lines(self, step: Step, lines: Sequence[str], at: float) -> None:
        if not lines:
            return  # a piece of a long line, held until the next (Masker.lines)
        prefix = f"{self.names[step.name]} | "
        if self.timestamps:
            stamp = time.strftime("%H:%M:%S", time.localtime(at)) + f".{int(at % 1 * 1000):03d}"
            prefix += self._paint("2", stamp) + " "
        # One write per batch: joining in C keeps up with steps printing millions of lines.
        self._write(prefix + ("\n" + prefix).join(lines) + "\n")

    def step_finished(self, step: Step, result: StepResult) -> None:
        held = self.mask.release(step.name)
        if held is not None:
            self._lines(step, held[1], time.time())
        parts = [self._status(result.status)]
        if result.exit_code is not None:
            parts.append(f"exit {result.exit_code}")
        if result.status is not Status.SKIPPED:
            parts.append(f"in {format_seconds(result.duration)}")
        if result.error:
            parts.append(f"({self.mask.text(result.error)})")
        if result.allowed_failure:
            parts.append("(failure allowed)")
        self._write(f"{self.names[step.name]} {' '.join(parts)}\n")

    def idle(self) -> None:
        pass  # every batch is written as it comes

    def build_finished(self, result: BuildResult) -> None:
        rows: list[tuple[str, ...]] = [("STEP", "STATUS", "EXIT", "DURATION", "NOTE")]
        for r in result.steps:
            note = self.mask.text(r.error or "")
            if r.allowed_failure:
                note = "failure allowed" + (f"; {note}" if note else "")
            if r.attempts > 1:
                note = f"{r.attempts} attempts" + (f"; {note}" if note else "")
            duration = "" if r.status is Status.SKIPPED else format_seconds(r.duration)
            exit_code = "" if r.exit_code is None else str(r.exit_code)
            rows.append((r.name, str(r.status), exit_code, duration, note))
        if not any(row[4] for row in rows[1:]):
            rows = [row[:4] for row in rows]  # no notes: no empty NOTE column
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = ["", self._paint("1", _row(rows[0], widths))]
        for r, row in zip(result.steps, rows[1:], strict=True):
            line = _row(row, widths)
            code = STATUS_STYLE[r.status][0]
            start = widths[0] + 2
            end = start + len(row[1])
            lines.append(line[:start] + self._paint(code, line[start:end]) + line[end:])
        counts: dict[str, int] = {}
        for r in result.steps:
            counts[str(r.status)] = counts.get(str(r.status), 0) + 1
        summary = ", ".join(f"{n} {status}" for status, n in counts.items())
        lines.append(
            f"pipeline {self._status(result.status)} in {format_seconds(result.duration)} "
            f"({summary})"
        )
        self._write("\n".join(lines) + "\n")


def _row(cells: Sequence[str], widths: Sequence[int]) -> str:
    return "  ".join(cell.ljust(w) for cell, w in zip(cells, widths, strict=True)).rstrip()


def use_color(out: TextIO) -> bool:
    # https://no-color.org: any non-empty NO_COLOR disables colour.
    return out.isatty() and not os.environ.get("NO_COLOR")


def parse_env(pairs: Sequence[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not ENV_NAME.fullmatch(name):
            raise UsageError(f"--env {pair!r}: expected NAME=VALUE with NAME like FOO_BAR")
        env[name] = value
    return env


def parse_secrets(pairs: Sequence[str], files: Sequence[str]) -> dict[str, str]:
    """--secret NAME=VALUE and --secret-file NAME=PATH, by secret name (upper case, as
    `from_secret: name` names it)."""
    values = {}
    for option, pair in [("--secret", p) for p in pairs] + [("--secret-file", p) for p in files]:
        name, sep, value = pair.partition("=")
        what = "VALUE" if option == "--secret" else "PATH"
        if not sep or not ENV_NAME.fullmatch(name):
            raise UsageError(f"{option} {name!r}: expected NAME={what} with NAME like DEPLOY_TOKEN")
        if option == "--secret-file":
            try:
                # One trailing newline is the editor's, not the value's.
                value = Path(value).read_text().removesuffix("\n").removesuffix("\r")
            except (OSError, UnicodeDecodeError) as exc:
                raise UsageError(f"--secret-file {name}: cannot read {value!r}: {exc}") from None
        if len(value) < MIN_SECRET:
            raise UsageError(
                f"{option} {name}: the value is shorter than {MIN_SECRET} characters, too "
                "short to be masked in the output usefully"
            )
        values[name.upper()] = value
    return values


def pipeline_secrets(pipeline: Pipeline, given: dict[str, str]) -> Pipeline:
    """The pipeline with the secrets its steps ask for; one not given is an error
    before anything runs, as on a server."""
    for step, name in secrets_wanted(pipeline):
        if name not in given:
            raise UsageError(
                f"step {step!r} asks for secret {name}: give it with --secret {name}=VALUE "
                f"or --secret-file {name}=PATH"
            )
    return with_secret_values(pipeline, given)


def parse_size(text: str) -> int:
    match = re.fullmatch(r"(\d+)\s*([KMG]i?B?|B)?", text.strip(), re.IGNORECASE)
    if not match or int(match.group(1)) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 100MiB, 512KiB or 1GiB")
    unit = (match.group(2) or "B")[0].upper()
    return int(match.group(1)) * {"B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[unit]


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def text_arg(text: str) -> str:
    """A name stored by the server: bytes that are not UTF-8 reach Python as lone
    surrogates (surrogateescape), which no database stores."""
    try:
        text.encode()
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(
            f"{text.encode(errors='surrogateescape')!r} is not UTF-8 text"
        ) from None
    return text


def labels_arg(text: str) -> str:
    """`--labels a,b`, checked here so that a typo stops before Django starts."""
    try:
        return ",".join(parse_labels(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def git_branch(directory: Path) -> str | None:
    """The checked-out branch, for `when: branch`; None outside a repository."""
    return git_output(directory, "symbolic-ref", "--short", "-q", "HEAD")


def git_output(directory: Path, *args: str) -> str | None:
    """What `git ARGS` prints in `directory`; None outside a repository."""
    try:
        done = subprocess.run(
            ["git", "-C", str(directory), *args],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


def pipeline_file(given: str | None, command: str) -> str:
    """The file named on the command line, or else the default one found here."""
    if given is not None:
        return given
    found = [name for name in DEFAULT_FILES if Path(name).exists()]
    if not found:
        raise UsageError(
            f"no pipeline file ({' or '.join(DEFAULT_FILES)}) in {Path.cwd()}; "
            f"pass a file: goci {command} path/to/pipeline.yml"
        )
    if len(found) > 1:
        # Like docker compose with compose.yaml and compose.yml: use one, say which.
        print(f"goci: both {' and '.join(found)} exist here; using {found[0]}", file=sys.stderr)
    return found[0]


def read_pipeline(file: str) -> Pipeline:
    path = Path(file)
    if not path.exists():
        raise UsageError(f"no pipeline file {file!r} in {Path.cwd()}")
    if not path.is_file():
        raise UsageError(f"{file!r} is not a file")
    return load_file(path)


def docker_executor(workspace: Path) -> Executor:
    from runners.docker_engine import DockerUnavailable  # noqa: PLC0415  (docker-py is slow to import)
    from runners.executors import docker as docker_exec  # noqa: PLC0415

    try:
        return docker_exec.from_environment(workspace)
    except (ValueError, DockerUnavailable) as exc:
        raise UsageError(str(exc)) from None


def input_env(pipeline: Pipeline, given: list[str]) -> dict[str, str]:
    """GOCI_INPUT_<NAME> of each of the pipeline's `inputs:`, from --input NAME=VALUE
    or its default, checked as the server checks them."""
    values: dict[str, str] = {}
    for item in given:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"--input {item!r}: expected NAME=VALUE")
        values[name] = value
    try:
        checked = check_inputs(pipeline, values)
    except InputsError as exc:
        raise UsageError("; ".join(f"--input {n}: {m}" for n, m in exc.problems)) from None
    return {input_variable(name): value for name, value in checked.items()}


def cmd_run(args: argparse.Namespace) -> int:
    env = parse_env(args.env)
    secrets = parse_secrets(args.secret, args.secret_file)
    picks = []
    for pick in args.matrix:
        name, sep, value = pick.partition("=")
        if not sep or not ENV_NAME.fullmatch(name):
            raise UsageError(
                f"--matrix {pick!r}: expected NAME=VALUE, NAME a variable of the matrix"
            )
        picks.append((name, value))
    args.file = pipeline_file(args.file, "run")
    pipeline = read_pipeline(args.file)
    env = {**input_env(pipeline, args.input), **env}
    if args.event == "pull_request":
        pipeline = without_registry_secrets(pipeline)  # it never pushes: no credentials
    try:
        cells = select_cells(pipeline, picks)
    except ValueError as exc:
        raise UsageError(f"--matrix: {exc}") from None
    for name in matrix_variables(pipeline):
        if name in env:
            # Its value would differ from the one substituted in images and `when`.
            raise UsageError(f"--env {name}: a variable of the matrix; pick cells with --matrix")
    # Every cell is made (and gets its secrets) before the first one runs: a usage error
    # stops them all. Cells run one after another, in the same directory.
    runs = (
        [(cell_name(cell), pipeline_secrets(for_cell(pipeline, cell), secrets)) for cell in cells]
        if pipeline.matrix
        else [("", pipeline_secrets(pipeline, secrets))]
    )
    workspace = Path(args.file).resolve().parent
    needs_docker = any(step.image for _, run in runs for step in run.steps)
    images = None
    if any(step.build for _, run in runs for step in run.steps):
        from runners.executors.image_build import ImageBuilder  # noqa: PLC0415

        # As on the server, a pull request's image is built, never pushed.
        refused = "pull_request" if args.event == "pull_request" else None
        images = ImageBuilder(workspace, push_refused=refused)
        # Tags name the commit (${GOCI_COMMIT_SHA}), as on the server.
        commit = git_output(workspace, "rev-parse", "-q", "--verify", "HEAD")
        if commit:
            env = {"GOCI_COMMIT": commit, "GOCI_COMMIT_SHA": commit, **env}
    ssh = None
    if any(step.ssh for _, run in runs for step in run.steps):
        from runners.executors.ssh import SshExecutor  # noqa: PLC0415

        ssh = SshExecutor()
    executor = ByImage(
        LocalExecutor(workspace), docker_executor(workspace) if needs_docker else None, images, ssh
    )
    # The branch only matters to `when`; asking git costs a process, so only then.
    branch = args.branch
    if branch is None and any(p.when or any(s.when for s in p.steps) for _, p in runs):
        branch = git_branch(workspace)
    engines: list[Engine] = []
    received: list[int] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        if engines:
            engines[-1].cancel()

    results: list[tuple[str, Status]] = []
    reporter = None
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for number, (name, cell_pipeline) in enumerate(runs, start=1):
            if received:
                break
            if name:
                blank = "\n" if number > 1 else ""
                print(f"{blank}=== matrix cell {number} of {len(runs)}: {name} ===", flush=True)
            reporter = ConsoleReporter(
                cell_pipeline,
                sys.stdout,
                color=use_color(sys.stdout),
                timestamps=args.timestamps,
                secrets=list(secrets.values()),
            )
            engines.append(
                Engine(
                    cell_pipeline,
                    executor,
                    reporter,
                    branch=branch,
                    event=args.event,
                    env=env,
                    jobs=args.jobs or 0,
                    log_cap=args.log_cap,
                )
            )
            if received:  # a signal before the engine could be told
                engines[-1].cancel()
            results.append((name, engines[-1].run().status))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        left = len(runs) - len(results)
        not_run = f"; {left} matrix cell{'s' if left != 1 else ''} not run" if left else ""
        print(f"goci: interrupted; every step was stopped{not_run}", file=sys.stderr)
        return EXIT_TERMINATED if received[0] == signal.SIGTERM else EXIT_INTERRUPTED
    # A cell allowed to fail (`matrix: {allow_failure: ...}`) fails only its own line.
    may_fail = {cell_name(cell) for cell in cells if cell_may_fail(pipeline, cell)}
    failed = [
        status
        for name, status in results
        if status is not Status.SUCCESS and not (status is Status.FAILURE and name in may_fail)
    ]
    if len(results) > 1 and reporter is not None:
        width = max(len(name) for name, _ in results)
        lines = ["", reporter._paint("1", f"{'CELL'.ljust(width)}  STATUS")]
        lines += [
            f"{name.ljust(width)}  {reporter._status(status)}"
            + (" (allowed to fail)" if name in may_fail else "")
            for name, status in results
        ]
        counts: dict[str, int] = {}
        for _, status in results:
            counts[str(status)] = counts.get(str(status), 0) + 1
        summary = ", ".join(f"{n} {status}" for status, n in counts.items())
        overall = failed[0] if failed else Status.SUCCESS
        lines.append(f"matrix {reporter._status(overall)}: {len(results)} cells ({summary})")
        print("\n".join(lines), flush=True)
    return EXIT_FAILED if failed else EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    args.file = pipeline_file(args.file, "validate")
    pipeline = read_pipeline(args.file)
    count = len(pipeline.steps)
    print(f"{args.file}: valid, {count} step{'s' if count != 1 else ''}")
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    import json  # noqa: PLC0415  (only this command needs it; `goci run` starts faster)

    print(json.dumps(json_schema(), indent=2))
    return EXIT_OK


def goci_version() -> str:
    """The installed version; from a checkout that was never installed, pyproject's."""
    # importlib.metadata alone takes longer to import than all `goci run` needs.
    import importlib.metadata  # noqa: PLC0415

    try:
        return importlib.metadata.version("goci")
    except importlib.metadata.PackageNotFoundError:
        import tomllib  # noqa: PLC0415

        pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
        with pyproject.open("rb") as f:
            return str(tomllib.load(f)["project"]["version"])


class VersionAction(argparse.Action):
    """`goci --version`, looking the version up only when asked (argparse's own
    action="version" needs the text while the parser is built, on every command)."""

    def __init__(self, option_strings: Sequence[str], dest: str, help: str) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        print(f"goci {goci_version()}")
        parser.exit()


def cmd_version(args: argparse.Namespace) -> int:
    import importlib.metadata  # noqa: PLC0415
    import platform  # noqa: PLC0415

    print(f"goci {goci_version()}")
    print(f"Python {platform.python_version()}")
    print(f"Django {importlib.metadata.version('django')}")
    return EXIT_OK


def cmd_docker_prune(args: argparse.Namespace) -> int:
    from runners.docker_engine import DockerUnavailable, connect  # noqa: PLC0415
    from runners.executors import docker as docker_exec  # noqa: PLC0415

    try:
        client = connect()
    except DockerUnavailable as exc:
        raise UsageError(str(exc)) from None
    try:
        removed = docker_exec.prune(client, everything=args.all)
    finally:
        client.close()
    for item in removed:
        print(f"removed {item}")
    print(f"goci: removed {len(removed)} object{'s' if len(removed) != 1 else ''}")
    return EXIT_OK


def setup_django() -> None:
    """The server-side commands need Django; `goci run` never loads it."""
    import django  # noqa: PLC0415

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "goci.settings")
    django.setup()


def cmd_worker(args: argparse.Namespace) -> int:
    setup_django()
    from django.core.management import call_command  # noqa: PLC0415

    options = {"concurrency": args.concurrency, "once": args.once, "labels": args.labels}
    if args.name:
        options["name"] = args.name
    call_command("worker", **options)
    return EXIT_OK


def _token_owner(args: argparse.Namespace) -> User:
    from django.contrib.auth import get_user_model  # noqa: PLC0415  (set up by the caller)

    user = get_user_model().objects.filter(username=args.user).first()
    if user is None:
        raise UsageError(f"no user {args.user!r}: create one with `goci user add {args.user}`")
    return user


def cmd_token_create(args: argparse.Namespace) -> int:
    scopes = [scope.strip() for scope in args.scopes.split(",") if scope.strip()]
    with server_database():
        from builds.services import InvalidRequest, token_create  # noqa: PLC0415

        try:
            token, secret = token_create(
                user=_token_owner(args),
                name=args.name,
                scopes=scopes,
                expires_in_days=args.expires_in_days,
            )
        except InvalidRequest as exc:
            raise UsageError(str(exc)) from None
    print(secret)
    expiry = f"until {token.expires_at:%Y-%m-%d %H:%M UTC}" if token.expires_at else "no expiry"
    print(
        f"goci: token {args.name!r} (id {token.pk}) for {args.user}, scopes "
        f"{','.join(token.scopes)}, {expiry}; it is shown once, store it now",
        file=sys.stderr,
    )
    return EXIT_OK


def cmd_token_list(args: argparse.Namespace) -> int:
    with server_database():
        from builds.services import tokens_usable  # noqa: PLC0415

        tokens = list(tokens_usable().filter(user=_token_owner(args)).order_by("id"))
    if not tokens:
        print(f"No tokens: create one with `goci token create --user {args.user}`.")
        return EXIT_OK
    rows = [("ID", "NAME", "PREFIX", "SCOPES", "EXPIRES", "LAST USED")]
    for token in tokens:
        rows.append(
            (
                str(token.pk),
                token.name,
                token.prefix,
                ",".join(token.scopes),
                f"{token.expires_at:%Y-%m-%d %H:%M UTC}" if token.expires_at else "never",
                f"{token.last_used_at:%Y-%m-%d %H:%M UTC}" if token.last_used_at else "never",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print("\n".join(_row(row, widths) for row in rows))
    return EXIT_OK


def cmd_token_revoke(args: argparse.Namespace) -> int:
    with server_database():
        from builds.services import token_revoke, tokens_usable  # noqa: PLC0415

        token = tokens_usable().filter(user=_token_owner(args), pk=args.id).first()
        if token is None:
            raise UsageError(
                f"{args.user} has no token {args.id} that still works "
                f"(`goci token list --user {args.user}`)"
            )
        token_revoke(token=token)
    print(f"goci: token {token.name!r} (id {token.pk}) of {args.user} revoked", file=sys.stderr)
    return EXIT_OK


def cmd_runner_token_create(args: argparse.Namespace) -> int:
    with server_database():
        from builds.services import InvalidRequest  # noqa: PLC0415
        from runners.services import registration_token_create  # noqa: PLC0415

        try:
            token, secret = registration_token_create(
                user=None, single_use=not args.reusable, expires_in_hours=args.expires_in_hours
            )
        except InvalidRequest as exc:
            raise UsageError(str(exc)) from None
    print(secret)
    use = "single-use" if token.single_use else "reusable"
    expiry = f"until {token.expires_at:%Y-%m-%d %H:%M UTC}" if token.expires_at else "no expiry"
    print(
        f"goci: registration token {token.prefix}… (id {token.pk}), {use}, {expiry}; it is "
        "shown once: register a runner with `goci runner register --server URL --token TOKEN`",
        file=sys.stderr,
    )
    return EXIT_OK


def cmd_runner_token_list(args: argparse.Namespace) -> int:
    with server_database():
        from runners.models import RegistrationToken  # noqa: PLC0415

        tokens = list(RegistrationToken.objects.order_by("id"))
    if not tokens:
        print("No registration tokens: create one with `goci runner token create`.")
        return EXIT_OK

    def when(moment: object) -> str:
        return f"{moment:%Y-%m-%d %H:%M UTC}" if moment else "-"

    rows = [("ID", "PREFIX", "USE", "EXPIRES", "USED", "REVOKED")]
    for token in tokens:
        rows.append(
            (
                str(token.pk),
                token.prefix,
                "single-use" if token.single_use else "reusable",
                when(token.expires_at) if token.expires_at else "never",
                when(token.used_at),
                when(token.revoked_at),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print("\n".join(_row(row, widths) for row in rows))
    return EXIT_OK


def cmd_runner_token_revoke(args: argparse.Namespace) -> int:
    with server_database():
        from runners.models import RegistrationToken  # noqa: PLC0415
        from runners.services import registration_token_revoke  # noqa: PLC0415

        token = RegistrationToken.objects.filter(pk=args.id).first()
        if token is None:
            raise UsageError(f"no registration token {args.id} (`goci runner token list`)")
        registration_token_revoke(token=token)
    print(f"goci: registration token {token.prefix}… (id {token.pk}) revoked", file=sys.stderr)
    return EXIT_OK


def _runner_config(args: argparse.Namespace) -> Path:
    return (
        Path(args.config).expanduser() if args.config else Path.home() / ".config/goci/runner.toml"
    )


def cmd_runner_register(args: argparse.Namespace) -> int:
    import socket  # noqa: PLC0415

    from goci import runner  # noqa: PLC0415  (http.client, tomllib: only for runners)

    path = _runner_config(args)
    labels = [label for label in args.labels.split(",") if label]
    try:
        config = runner.register(
            server=args.server,
            registration_token=args.token,
            name=args.name or socket.gethostname(),
            labels=labels,
            capacity=args.capacity,
        )
        runner.write_config(path, config)
    except runner.RunnerError as exc:
        raise UsageError(str(exc)) from None
    print(
        f"goci: registered runner {config.name!r} with {config.server}; its token is in "
        f"{path} (mode 0600): start it with `goci runner run --config {path}`",
        file=sys.stderr,
    )
    return EXIT_OK


def cmd_runner_run(args: argparse.Namespace) -> int:
    import logging  # noqa: PLC0415

    from goci import runner  # noqa: PLC0415

    logging.basicConfig(level=logging.INFO, format="goci runner: %(message)s")
    path = _runner_config(args)
    try:
        worker = runner.Runner(runner.read_config(path), path, grace=args.grace)
    except runner.RunnerError as exc:
        raise UsageError(str(exc)) from None

    def stop(signum: int, frame: FrameType | None) -> None:
        # On another thread: this handler runs on the main thread, which may hold a
        # lock that stop() takes (an Event it waits on, the client's connections).
        threading.Thread(target=worker.stop, name="goci-stop").start()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)
    code = worker.run(once=args.once)
    if worker.fatal:
        print(f"goci: the server refused this runner: {worker.fatal}", file=sys.stderr)
    return code


def cmd_runner_unregister(args: argparse.Namespace) -> int:
    from goci import runner  # noqa: PLC0415

    path = _runner_config(args)
    try:
        config = runner.read_config(path)
        runner.unregister(config)
    except runner.RunnerError as exc:
        raise UsageError(str(exc)) from None
    path.unlink()
    print(f"goci: runner {config.name!r} unregistered; {path} removed", file=sys.stderr)
    return EXIT_OK


@contextlib.contextmanager
def server_database() -> Iterator[None]:
    """Django set up for a command on the server's data, and a database that cannot be
    used (a data directory `goci up` never started on, PostgreSQL down) said plainly."""
    setup_django()
    from django.db import DatabaseError  # noqa: PLC0415

    from goci.audit.context import from_cli  # noqa: PLC0415

    try:
        with from_cli():  # the audit log says it came from the command line, and whose
            yield
    except DatabaseError as exc:
        raise UsageError(
            f"cannot use the database: {exc} (a new data directory gets its tables on the "
            "first `goci up`, or with `python manage.py migrate`)"
        ) from None


def cmd_user_add(args: argparse.Namespace) -> int:
    with server_database():
        from django.contrib.auth import get_user_model, password_validation  # noqa: PLC0415
        from django.core.exceptions import ValidationError  # noqa: PLC0415
        from django.db import IntegrityError  # noqa: PLC0415

        users = get_user_model()
        name = users.normalize_username(args.name)
        taken = f"the name {name!r} is taken (`goci user list` shows every user)"
        if users.objects.filter(username=name).exists():
            raise UsageError(taken)
        user = users(username=name, is_staff=args.admin, is_superuser=args.admin)
        try:
            user.full_clean(exclude=["password"])
        except ValidationError as exc:
            raise UsageError(f"{name!r} cannot be a username: {' '.join(exc.messages)}") from None
        if args.password_stdin:
            # One trailing newline is echo's or the file's, not the password's.
            try:
                password = sys.stdin.buffer.read().decode()
            except UnicodeDecodeError:
                raise UsageError("the password on stdin is not UTF-8 text") from None
            password = password.removesuffix("\n").removesuffix("\r")
            if not password:
                raise UsageError(
                    "the password on stdin is empty: pipe one in, or leave out "
                    "--password-stdin to have one generated"
                )
            try:
                password_validation.validate_password(password, user)
            except ValidationError as exc:
                problems = "".join(f"\n  - {message}" for message in exc.messages)
                raise UsageError(f"the password is refused; choose another:{problems}") from None
        else:
            import secrets  # noqa: PLC0415

            password = secrets.token_urlsafe(16)
        user.set_password(password)
        try:
            user.save()
        except IntegrityError:  # added by someone else since full_clean()
            raise UsageError(taken) from None
    what = "admin" if args.admin else "user"
    if args.password_stdin:
        print(f"Created the {what} {name!r}.")
    else:
        print(f"Created the {what} {name!r} with the password: {password}")
        print("It is shown only this once: keep it.", file=sys.stderr)
    return EXIT_OK


def cmd_user_list(args: argparse.Namespace) -> int:
    with server_database():
        from django.contrib.auth import get_user_model  # noqa: PLC0415
        from django.db.models import Count  # noqa: PLC0415

        users = list(
            get_user_model()
            .objects.annotate(project_count=Count("membership"))
            .order_by("username")
        )
    if not users:
        print("No users yet: create one with `goci user add NAME`.")
        return EXIT_OK
    rows = [("USERNAME", "ADMIN", "ACTIVE", "PROJECTS", "LAST LOGIN")]
    for user in users:
        last = user.last_login.strftime("%Y-%m-%d %H:%M UTC") if user.last_login else "never"
        rows.append(
            (
                user.get_username(),
                "yes" if user.is_superuser else "no",
                "yes" if user.is_active else "no",
                str(user.project_count),
                last,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print("\n".join(_row(row, widths) for row in rows))
    return EXIT_OK


def cmd_user_delete(args: argparse.Namespace) -> int:
    with server_database():
        from django.contrib.auth import get_user_model  # noqa: PLC0415

        from builds import services  # noqa: PLC0415

        user = get_user_model().objects.filter(username=args.name).first()
        if user is None:
            raise UsageError(f"no user {args.name!r} (`goci user list` shows every user)")
        try:
            deleted = services.user_delete(user=user, with_projects=args.force)
        except services.InvalidRequest as exc:
            raise UsageError(str(exc)) from None
    slugs = ", ".join(deleted)
    print(f"Deleted the user {args.name!r}" + (f" and the projects {slugs}." if deleted else "."))
    return EXIT_OK


def _secret_scope(args: argparse.Namespace, with_name: bool) -> tuple[Project | None, str]:
    """The project (None with --global) and the secret's name ("" if not wanted)."""
    from builds.models import Project  # noqa: PLC0415  (Django is set up by the caller)

    expected = ([] if args.is_global else ["PROJECT"]) + (["NAME"] if with_name else [])
    if len(args.names) != len(expected):
        usage = " ".join(expected) or "no argument"
        raise UsageError(f"expected {usage}" + (" with --global" if args.is_global else ""))
    name = args.names[-1] if with_name else ""
    if args.is_global:
        return None, name
    project = Project.objects.filter(slug=args.names[0]).first()
    if project is None:
        raise UsageError(f"no project {args.names[0]!r}")
    return project, name


def cmd_secret_set(args: argparse.Namespace) -> int:
    with server_database():
        from builds import secrets  # noqa: PLC0415

        project, name = _secret_scope(args, with_name=True)
        try:
            value = sys.stdin.buffer.read().decode()
        except UnicodeDecodeError:
            raise UsageError("the value on stdin is not UTF-8 text") from None
        # One trailing newline is echo's or the file's, not the value's.
        value = value.removesuffix("\n").removesuffix("\r")
        events = None if args.events is None else [e for e in args.events.split(",") if e]
        branches = None if args.branches is None else [b for b in args.branches.split(",") if b]
        try:
            _, created = secrets.secret_set(
                project=project,
                name=name,
                value=value,
                user=None,
                events=events,
                branches=branches,
            )
        except secrets.SecretError as exc:
            raise UsageError(str(exc)) from None
    where = f"project {project}" if project is not None else "every project (global)"
    print(f"{'Created' if created else 'Changed'} the secret {name} of {where}.")
    return EXIT_OK


def cmd_secret_list(args: argparse.Namespace) -> int:
    with server_database():
        from builds import secrets  # noqa: PLC0415

        project, _ = _secret_scope(args, with_name=False)
        found = secrets.secret_list(project=project)
    if not found:
        print("No secrets yet: set one with `goci secret set PROJECT NAME < value-file`.")
        return EXIT_OK
    rows = [("NAME", "SCOPE", "EVENTS", "BRANCHES", "UPDATED", "BY")]
    for info in found:
        rows.append(
            (
                info.name,
                "global" if info.is_global else "project",
                ",".join(info.events) or "-",
                ",".join(info.branches) or "any",
                info.updated_at.strftime("%Y-%m-%d %H:%M UTC"),
                info.updated_by or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print("\n".join(_row(row, widths) for row in rows))
    return EXIT_OK


def cmd_secret_delete(args: argparse.Namespace) -> int:
    with server_database():
        from builds import secrets  # noqa: PLC0415

        project, name = _secret_scope(args, with_name=True)
        if not secrets.secret_delete(project=project, name=name):
            raise UsageError(f"no secret {name!r} (`goci secret list` shows them)")
    print(f"Deleted the secret {name}.")
    return EXIT_OK


def cmd_secret_rotate_key(args: argparse.Namespace) -> int:
    with server_database():
        from builds import secrets  # noqa: PLC0415

        try:
            count = secrets.secrets_rotate()
        except secrets.SecretError as exc:
            raise UsageError(str(exc)) from None
        derived = secrets.keys_derived()
    print(f"Re-encrypted {count} secret{'s' * (count != 1)} with the first key", end="")
    print(" (derived from SECRET_KEY)." if derived else " of GOCI_SECRET_KEYS.")
    return EXIT_OK


def cmd_secret_new_key(args: argparse.Namespace) -> int:
    from cryptography.fernet import Fernet  # noqa: PLC0415

    print(Fernet.generate_key().decode())
    return EXIT_OK


def cmd_up(args: argparse.Namespace) -> int:
    from goci.server import up  # noqa: PLC0415  (sets Django up and reports bad settings)

    return up(host=args.host, port=args.port, workers=args.workers)


UP_DESCRIPTION = """\
Serve Goci from this one process: the dashboard, the REST API and the live logs
(daphne), and a worker that runs the queued builds.

Without DATABASE_URL the data lives in GOCI_DATA_DIR (default: var/ beside the code):
the SQLite database, a generated secret key, the collected static files and the build
workspaces. Each start applies the database migrations first. On the first start, with
no admin yet, it asks for one on a terminal, or else creates the user `admin` and
prints its password once. Ctrl-C or SIGTERM stops it: running jobs get
GOCI_SHUTDOWN_GRACE seconds (default 30) to finish."""

UP_ENVIRONMENT = """\
environment:
  GOCI_DATA_DIR       where the embedded default keeps its data (default: var/)
  GOCI_HOST_STEPS     deny (default): a step without `image:` is refused, or runs in
                      GOCI_DEFAULT_IMAGE when that is set; allow: it runs on this machine
                      with this server's rights, for every user who can run builds
  GOCI_DEFAULT_IMAGE  the image for steps without one when GOCI_HOST_STEPS=deny
  DATABASE_URL        postgres://user:password@host:5432/name instead of SQLite
  REDIS_URL           redis://host:6379/0, for live logs from workers in other processes
  GOCI_PUBLIC_URL     the address people open (https://ci.example.com): the allowed
                      host, trusted origin and links; https turns on secure cookies
  SECRET_KEY          signs sessions (default: generated once into GOCI_DATA_DIR)
  GOCI_SECRET_KEYS    keys of the secrets at rest (`goci secret new-key`), first one
                      encrypts; default: a key derived from SECRET_KEY
More settings: docs/deploy.md."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="goci",
        description="Goci: run YAML pipelines on this machine, or serve them to a team.",
        epilog="`goci COMMAND --help` explains a command and its options.",
    )
    parser.add_argument("--version", action=VersionAction, help="print the version")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    file_help = f"the pipeline file (default: {' or else '.join(DEFAULT_FILES)}, here)"

    run = commands.add_parser(
        "run",
        help="run a pipeline here",
        description="Run a pipeline on this machine, in the directory of the pipeline file. "
        f"Without FILE, {DEFAULT_FILES[0]} is used, or else {DEFAULT_FILES[1]}.",
        epilog="Exit codes: 0 success, 1 a step failed, 2 invalid pipeline or usage, "
        "130 interrupted.",
    )
    run.add_argument("file", nargs="?", metavar="FILE", help=file_help)
    run.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="K=V",
        help="set a variable for every step (repeatable); overrides the pipeline's env",
    )
    run.add_argument(
        "--secret",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a secret for steps that ask for it with `from_secret: name` (repeatable); "
        "masked in the output. Visible to other users in `ps`: prefer --secret-file",
    )
    run.add_argument(
        "--secret-file",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a secret read from a file (one trailing newline dropped); repeatable",
    )
    run.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a value of the pipeline's `inputs:` (repeatable); steps get GOCI_INPUT_<NAME>; "
        "each is checked against its declaration, the others take their defaults",
    )
    run.add_argument(
        "--matrix",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="run only the matrix cells where NAME is VALUE (repeatable: several names must "
        "all match; several values of one name, any of them); default: every cell, one "
        "after another",
    )
    run.add_argument("--branch", help="branch for `when` (default: the checked-out git branch)")
    run.add_argument(
        "--event", default="manual", choices=EVENTS, help="event for `when` (default: manual)"
    )
    run.add_argument(
        "--jobs", type=positive_int, metavar="N", help="run at most N steps at once (default: all)"
    )
    run.add_argument("--timestamps", action="store_true", help="show when each line was printed")
    run.add_argument(
        "--log-cap",
        type=parse_size,
        default=DEFAULT_LOG_CAP,
        metavar="SIZE",
        help=f"keep at most SIZE of each step's log (default {format_size(DEFAULT_LOG_CAP)})",
    )
    run.set_defaults(handler=cmd_run)

    validate = commands.add_parser(
        "validate",
        help="check a pipeline file and print every error",
        description="Check a pipeline file; print every problem as file:line:column. "
        "Exit 0 if it is valid, 2 if not.",
    )
    validate.add_argument("file", nargs="?", metavar="FILE", help=file_help)
    validate.set_defaults(handler=cmd_validate)

    schema = commands.add_parser("schema", help="print the JSON Schema of the pipeline format")
    schema.set_defaults(handler=cmd_schema)

    version = commands.add_parser("version", help="print the versions of Goci, Python and Django")
    version.set_defaults(handler=cmd_version)

    worker = commands.add_parser(
        "worker",
        help="run queued builds (same as `python manage.py worker`)",
        description="Claim queued builds from the server's database and run them. Needs "
        "the server's settings (DATABASE_URL, REDIS_URL, SECRET_KEY); steps without "
        "`image:` follow GOCI_HOST_STEPS, as under `goci up`.",
    )
    worker.add_argument(
        "--concurrency",
        type=positive_int,
        default=1,
        metavar="N",
        help="run up to N jobs at once (default 1)",
    )
    worker.add_argument("--name", type=text_arg, help="this worker's name (default: host-pid)")
    worker.add_argument(
        "--labels",
        type=labels_arg,
        default="",
        metavar="A,B",
        help="its labels: it takes the jobs whose `runs_on` labels it all has "
        "(default none: only jobs that need no label)",
    )
    worker.add_argument("--once", action="store_true", help="run at most one job, then exit")
    worker.set_defaults(handler=cmd_worker)

    up = commands.add_parser(
        "up",
        help="serve Goci: web, API and an in-process worker, on the embedded default",
        description=UP_DESCRIPTION,
        epilog=UP_ENVIRONMENT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    up.add_argument(
        "--host",
        default="127.0.0.1",
        help="the address to listen on (default 127.0.0.1, this machine only; "
        "0.0.0.0 for every interface, then add the name to ALLOWED_HOSTS)",
    )
    up.add_argument(
        "--port", type=positive_int, default=8000, help="the port to listen on (default 8000)"
    )
    up.add_argument(
        "--workers",
        type=positive_int,
        default=2,
        metavar="N",
        help="how many builds the in-process worker runs at once (default 2)",
    )
    up.set_defaults(handler=cmd_up)

    user = commands.add_parser("user", help="manage the server's users")
    user_sub = user.add_subparsers(dest="user_command", required=True, metavar="COMMAND")
    user_add = user_sub.add_parser(
        "add",
        help="create a user who can sign in and get API tokens",
        description="Create a user. The password is generated and printed once, or read "
        "from stdin with --password-stdin (checked by the server's password rules).",
    )
    user_add.add_argument(
        "name", metavar="NAME", type=text_arg, help="the username (letters, digits, @.+-_)"
    )
    user_add.add_argument(
        "--admin", action="store_true", help="a superuser: may use the admin at /admin/"
    )
    user_add.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from stdin instead of generating one",
    )
    user_add.set_defaults(handler=cmd_user_add)
    user_list = user_sub.add_parser(
        "list", help="show every user: admin, active, projects, last sign-in"
    )
    user_list.set_defaults(handler=cmd_user_list)
    user_delete = user_sub.add_parser(
        "delete",
        help="delete a user, their memberships and API tokens",
        description="Delete a user with their memberships and API tokens; their builds "
        "stay. A user who is the only owner of a project is refused unless --force.",
    )
    user_delete.add_argument("name", metavar="NAME", type=text_arg, help="the username")
    user_delete.add_argument(
        "--force",
        action="store_true",
        help="also delete the projects this user alone owns, with their builds",
    )
    user_delete.set_defaults(handler=cmd_user_delete)

    token = commands.add_parser("token", help="manage API tokens")
    token_sub = token.add_subparsers(dest="token_command", required=True, metavar="COMMAND")
    token_create = token_sub.add_parser(
        "create",
        help="create a personal API token and print it once",
        description="Create a personal API token for a user and print it on stdout, once; "
        "only its hash is kept. Send it as `Authorization: Bearer <token>`.",
    )
    token_create.add_argument(
        "--user", required=True, type=text_arg, help="the user the token acts as"
    )
    token_create.add_argument(
        "--name", default="cli", type=text_arg, help="a name to recognise it by (default: cli)"
    )
    token_create.add_argument(
        "--scopes",
        default="read,run",
        type=text_arg,
        help="comma-separated, of read, run, admin (default: read,run; admin manages "
        "projects, members, secrets and tokens)",
    )
    token_create.add_argument(
        "--expires-in-days",
        type=int,
        metavar="N",
        help="the token stops working after N days (default: never)",
    )
    token_create.set_defaults(handler=cmd_token_create)
    token_list = token_sub.add_parser(
        "list",
        help="list a user's tokens that still work",
        description="List a user's personal API tokens that are neither revoked nor "
        "expired: id, name, prefix, scopes, expiry; never the secrets.",
    )
    token_list.add_argument("--user", required=True, type=text_arg, help="whose tokens")
    token_list.set_defaults(handler=cmd_token_list)
    token_revoke = token_sub.add_parser(
        "revoke",
        help="revoke a token, and the JWTs issued from it, at once",
        description="Revoke one of a user's personal API tokens by its id (`goci token "
        "list`); it and the JWTs issued from it stop working at once.",
    )
    token_revoke.add_argument("--user", required=True, type=text_arg, help="whose token")
    token_revoke.add_argument("id", metavar="ID", type=int, help="the token's id")
    token_revoke.set_defaults(handler=cmd_token_revoke)

    runner = commands.add_parser("runner", help="remote runners that reach the server over HTTP")
    runner_sub = runner.add_subparsers(dest="runner_command", required=True, metavar="COMMAND")
    runner_token = runner_sub.add_parser(
        "token", help="manage registration tokens (on the server, as its admin)"
    )
    runner_token_sub = runner_token.add_subparsers(
        dest="runner_token_command", required=True, metavar="COMMAND"
    )
    runner_token_create = runner_token_sub.add_parser(
        "create",
        help="create a registration token and print it once",
        description="Create a registration token for `goci runner register` and print it on "
        "stdout, once; only its hash is kept. Single-use (expiring after 24 hours unless "
        "--expires-in-hours says otherwise) unless --reusable.",
    )
    runner_token_create.add_argument(
        "--reusable",
        action="store_true",
        help="it registers any number of runners until revoked (default: one runner)",
    )
    runner_token_create.add_argument(
        "--expires-in-hours",
        type=int,
        metavar="N",
        help="it stops working after N hours (default: 24 for a single-use token, never "
        "for a reusable one)",
    )
    runner_token_create.set_defaults(handler=cmd_runner_token_create)
    runner_token_list = runner_token_sub.add_parser(
        "list", help="list registration tokens (never their secrets)"
    )
    runner_token_list.set_defaults(handler=cmd_runner_token_list)
    runner_token_revoke = runner_token_sub.add_parser(
        "revoke", help="revoke a registration token; the runners it registered keep working"
    )
    runner_token_revoke.add_argument("id", metavar="ID", type=int, help="the token's id")
    runner_token_revoke.set_defaults(handler=cmd_runner_token_revoke)
    config_help = "the runner's config file (default ~/.config/goci/runner.toml)"
    runner_register = runner_sub.add_parser(
        "register",
        help="register this machine as a runner of a server",
        description="Trade a registration token (from the server's admin) for this "
        "runner's own token, written with the server's URL to the config file, readable "
        "by its owner only. The runner needs nothing else: no database, Redis or SECRET_KEY.",
    )
    runner_register.add_argument("--server", required=True, help="the server's URL")
    runner_register.add_argument(
        "--token", required=True, type=text_arg, help="the registration token (goci_reg_…)"
    )
    runner_register.add_argument(
        "--name", type=text_arg, help="this runner's name (default: the host name)"
    )
    runner_register.add_argument(
        "--labels", type=labels_arg, default="", metavar="A,B", help="its labels (runs_on)"
    )
    runner_register.add_argument(
        "--capacity", type=positive_int, default=1, metavar="N", help="jobs at once (default 1)"
    )
    runner_register.add_argument("--config", metavar="PATH", help=config_help)
    runner_register.set_defaults(handler=cmd_runner_register)
    runner_run = runner_sub.add_parser(
        "run",
        help="take jobs from the server and run them",
        description="Long-poll the server for jobs and run up to `capacity` at once. "
        "Steps without image run on this machine only with GOCI_HOST_STEPS=allow (or "
        'host_steps = "allow" in the config). SIGTERM: take no more jobs, let running '
        "ones finish within --grace, then stop them (the server hands them on).",
    )
    runner_run.add_argument("--once", action="store_true", help="run one job, then exit")
    runner_run.add_argument(
        "--grace",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="on SIGTERM, how long running jobs may take to finish (default 60)",
    )
    runner_run.add_argument("--config", metavar="PATH", help=config_help)
    runner_run.set_defaults(handler=cmd_runner_run)
    runner_unregister = runner_sub.add_parser(
        "unregister", help="remove this runner from the server and delete its config"
    )
    runner_unregister.add_argument("--config", metavar="PATH", help=config_help)
    runner_unregister.set_defaults(handler=cmd_runner_unregister)

    secret = commands.add_parser(
        "secret",
        help="manage the secrets builds get",
        description="Secrets are encrypted with GOCI_SECRET_KEYS (or a key derived from "
        "SECRET_KEY) and never shown again once set.",
    )
    secret_sub = secret.add_subparsers(dest="secret_command", required=True, metavar="COMMAND")
    secret_set = secret_sub.add_parser(
        "set",
        help="create or change a secret; the value is read from stdin",
        description="Create or change a secret of a project (or a global one with "
        "--global); the value is read from stdin (one trailing newline dropped), at least "
        f"{MIN_SECRET} characters.",
    )
    secret_list = secret_sub.add_parser(
        "list", help="show a project's secrets (names and rules, never values)"
    )
    secret_delete = secret_sub.add_parser("delete", help="delete a secret")
    for sub, usage in (
        (secret_set, "PROJECT NAME"),
        (secret_list, "PROJECT"),
        (secret_delete, "PROJECT NAME"),
    ):
        sub.add_argument(
            "names", nargs="*", metavar=usage, type=text_arg, help="without PROJECT with --global"
        )
        sub.add_argument(
            "--global", dest="is_global", action="store_true", help="a secret of every project"
        )
    secret_set.add_argument(
        "--events",
        metavar="E1,E2",
        help=f"events whose builds get it, of {','.join(EVENTS)} "
        "(default for a new secret: all but pull_request)",
    )
    secret_set.add_argument(
        "--branches", metavar="GLOB,...", help="only builds of these branches (default: any)"
    )
    secret_set.set_defaults(handler=cmd_secret_set)
    secret_list.set_defaults(handler=cmd_secret_list)
    secret_delete.set_defaults(handler=cmd_secret_delete)
    rotate = secret_sub.add_parser(
        "rotate-key",
        help="re-encrypt every secret with the first key of GOCI_SECRET_KEYS",
        description="Re-encrypt every secret with the first key of GOCI_SECRET_KEYS. To "
        "rotate: put a new key (`goci secret new-key`) first, keep the old ones after it, "
        "run this, then remove the old ones.",
    )
    rotate.set_defaults(handler=cmd_secret_rotate_key)
    new_key = secret_sub.add_parser("new-key", help="print a new key for GOCI_SECRET_KEYS")
    new_key.set_defaults(handler=cmd_secret_new_key)

    docker_cmd = commands.add_parser("docker", help="manage what Goci created in Docker")
    docker_sub = docker_cmd.add_subparsers(dest="docker_command", required=True, metavar="COMMAND")
    prune = docker_sub.add_parser(
        "prune",
        help="remove containers and networks left by goci runs that are gone",
        description="Remove the containers and networks (label goci.owner) of goci runs "
        "whose process no longer exists. Running builds are left alone.",
    )
    prune.add_argument(
        "--all", action="store_true", help="remove everything Goci created, running or not"
    )
    prune.set_defaults(handler=cmd_docker_prune)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except KeyboardInterrupt:
        # Ctrl-C before any step started (while connecting, reading the file).
        print("goci: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except PipelineError as exc:
        print(exc, file=sys.stderr)
        n = len(exc.problems)
        print(f"goci: {n} problem{'s' if n != 1 else ''} in {args.file}", file=sys.stderr)
        return EXIT_INVALID
    except UsageError as exc:
        print(f"goci: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except BrokenPipeError:
        # The reader went away (`goci run | head`): the steps were stopped; say nothing more.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    return code


if __name__ == "__main__":
    sys.exit(main())
