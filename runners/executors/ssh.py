"""Run an `ssh:` step's script on the host it names, over SSH (paramiko).

The worker or runner connects with the private key of the step's `key_secret`, held
in memory only (never a file, never a container, never the log), checks the host's
key against the lines of its `known_hosts_secret` and refuses an unknown or changed
one, then runs the script with `sh -e` there (sent on stdin into a temporary file
there, run with an empty stdin; its first lines export the step's plain `env` and
Goci's variables, never a secret), its stdout and stderr together as
the step's log, and ends the step with the script's exit code. Nothing of this
machine's SSH setup is used: no agent, no ~/.ssh key, no known_hosts file.

A cancel or a timeout closes the connection: the script's processes get EOF and
SIGPIPE there (a session without a terminal gets no hang-up signal).
"""

from __future__ import annotations

import io
import shlex
import socket
import time
from typing import Any

from builds.pipeline import Pipeline, SshScript
from runners.engine import StepOutcome, StepRun

READ_SIZE = 64 * 1024
# What runs there, under sh whatever the user's login shell: the script comes on stdin
# into a file of its own (an argument may hold 128 KiB, a script up to 1 MiB), and
# runs with `sh -e` and an empty stdin, as a CI step (a command reading stdin must not
# read the rest of the script); the file goes when it ends.
# Its stderr joins its stdout there: two streams over SSH would not keep their order.
_WRAPPER = (
    'f=$(mktemp) || exit 1; trap \'rm -f "$f"\' EXIT; cat > "$f"; sh -e "$f" < /dev/null 2>&1'
)

POLL = 0.1  # seconds between looks at a cancel while the script is silent


class SshProblem(Exception):
    """The script cannot run there: what to fix, for the step's error."""


class SshExecutor:
    """The executor of `ssh:` steps (runners/executors/__init__.py routes them here)."""

    def prepare(self, pipeline: Pipeline) -> None:
        pass

    def cleanup(self) -> None:
        pass

    def run_step(self, run: StepRun) -> StepOutcome:
        spec = run.step.ssh
        if spec is None:
            return StepOutcome(error=f"step '{run.step.name}' has no `ssh:`")
        import paramiko  # noqa: PLC0415  (~0.1 s: only for a step that uses it)

        deadline = None if run.timeout is None else time.monotonic() + run.timeout
        client = paramiko.SSHClient()
        try:
            try:
                _connect(paramiko, client, spec)
            except SshProblem as exc:
                return StepOutcome(error=str(exc))
            return _run(client, spec, run, deadline)
        finally:
            client.close()


class _UnknownHost(Exception):
    def __init__(self, key: Any) -> None:
        super().__init__()
        self.key = key


def _connect(paramiko: Any, client: Any, spec: SshScript) -> None:
    where = f"{spec.host}:{spec.port}"

    class Refuse(paramiko.MissingHostKeyPolicy):  # type: ignore[misc]
        def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
            raise _UnknownHost(key)

    pinned = _known_hosts(paramiko, spec.known_hosts or "")
    for name, keys in pinned.items():
        for key_type, key in keys.items():
            client.get_host_keys().add(name, key_type, key)
    client.set_missing_host_key_policy(Refuse())
    pkey = _private_key(paramiko, spec.key or "")
    try:
        client.connect(
            spec.host,
            port=spec.port,
            username=spec.user,
            pkey=pkey,
            timeout=spec.connect_timeout,
            banner_timeout=spec.connect_timeout,
            auth_timeout=spec.connect_timeout,
            channel_timeout=spec.connect_timeout,
            allow_agent=False,  # this machine's agent and keys are not the step's
            look_for_keys=False,
        )
    except _UnknownHost as exc:
        raise SshProblem(
            f"the host key of {where} ({exc.key.get_name()} "
            f"{exc.key.fingerprint}) is not in the known_hosts_secret "
            f"{spec.known_hosts_secret}: Goci does not trust a host it does not know "
            f"(add the line `ssh-keyscan -p {spec.port} {spec.host}` prints, once you "
            "have checked it)"
        ) from None
    except paramiko.BadHostKeyException as exc:
        raise SshProblem(
            f"the host key of {where} changed: it is {exc.key.get_name()} "
            f"{exc.key.fingerprint}, the known_hosts_secret {spec.known_hosts_secret} "
            f"pins {exc.expected_key.get_name()} {exc.expected_key.fingerprint}: "
            "refused (a new server, or someone in between)"
        ) from None
    except paramiko.AuthenticationException:
        raise SshProblem(
            f"{where} refused the key of key_secret {spec.key_secret} for user {spec.user!r}"
        ) from None
    except TimeoutError:
        raise SshProblem(
            f"could not connect to {where} within {spec.connect_timeout} s (connect_timeout)"
        ) from None
    except socket.gaierror as exc:
        raise SshProblem(f"could not connect to {where}: {exc.strerror}") from None
    except paramiko.SSHException as exc:
        raise SshProblem(f"could not connect to {where}: {exc}") from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
            reason = "; ".join(sorted({e.strerror or str(e) for e in exc.errors.values()}))
        raise SshProblem(f"could not connect to {where}: {reason}") from None


def _run(client: Any, spec: SshScript, run: StepRun, deadline: float | None) -> StepOutcome:
    channel = client.get_transport().open_session(timeout=spec.connect_timeout)
    channel.set_combine_stderr(True)  # one stream: the order of both is kept
    channel.exec_command(f"sh -c {shlex.quote(_WRAPPER)}")
    script = exports(run) + spec.script
    channel.sendall(script.encode("utf-8", "surrogateescape"))
    channel.shutdown_write()
    channel.settimeout(POLL)
    while True:
        try:
            data = channel.recv(READ_SIZE)
        except TimeoutError:
            if run.cancel.is_set():
                return StepOutcome(canceled=True)
            if deadline is not None and time.monotonic() >= deadline:
                return StepOutcome(timed_out=True)
            continue
        if not data:
            break
        run.output(data)
    code = channel.recv_exit_status()
    if code < 0:
        return StepOutcome(error=f"the script on {spec.host} ended without an exit code")
    return StepOutcome(exit_code=code)


# Never sent to the host: a job token is this server's credential, not the host's.
NOT_EXPORTED = ("GOCI_JOB_TOKEN",)


def exports(run: StepRun) -> str:
    """`export NAME='value'` lines that open the script there: the step's plain `env`
    and Goci's variables (GOCI_INPUT_*, GOCI_COMMIT_SHA, ...), never a secret (a
    `from_secret` variable) nor the job token."""
    names = [
        name
        for name in run.env
        if (name in run.step.env or name.startswith("GOCI_"))
        and name not in run.step.secret_env
        and name not in NOT_EXPORTED
    ]
    return "".join(f"export {name}={shlex.quote(run.env[name])}\n" for name in sorted(names))


def _known_hosts(paramiko: Any, text: str) -> dict[str, dict[str, Any]]:
    """known_hosts lines (plain or hashed names), by host name, then key type."""
    pinned: dict[str, dict[str, Any]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            entry = paramiko.hostkeys.HostKeyEntry.from_line(line, number)
        except (paramiko.SSHException, ValueError) as exc:
            message = f"line {number} of the known_hosts_secret is not valid: {exc}"
            raise SshProblem(message) from None
        if entry is None or entry.key is None:
            raise SshProblem(
                f"line {number} of the known_hosts_secret is not a known_hosts line "
                "(HOST KEY-TYPE BASE64-KEY, as ssh-keyscan prints)"
            )
        for name in entry.hostnames:
            pinned.setdefault(name, {})[entry.key.get_name()] = entry.key
    if not pinned:
        raise SshProblem("the known_hosts_secret holds no host key")
    return pinned


def _private_key(paramiko: Any, text: str) -> Any:
    """The key_secret's private key, of whichever type it is (never a passphrase)."""
    for kind in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return kind.from_private_key(io.StringIO(text))
        except paramiko.PasswordRequiredException:
            raise SshProblem(
                "the key of key_secret has a passphrase: store a key without one "
                "(the secret is encrypted at rest)"
            ) from None
        except (paramiko.SSHException, ValueError, IndexError):
            continue
    raise SshProblem(
        "the key_secret is not a private key Goci can use (Ed25519, ECDSA or RSA, "
        "as ssh-keygen writes it)"
    )
