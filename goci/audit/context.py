"""Where an audited action came from: who, from which address, through which door.

A middleware sets it for each request; the command line sets it with `from_cli()`.
`goci.audit.record` reads it, so that services need no request to record an event.
No Django import here at the top: goci/cli.py may import this before Django is set up.
"""

from __future__ import annotations

import contextlib
import getpass
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from django.http import HttpRequest

# The doors an action comes through (AuditEvent.Via's values).
UI = "ui"
API = "api"
CLI = "cli"
ADMIN = "admin"
WEBHOOK = "webhook"


@dataclass(frozen=True)
class Origin:
    via: str
    # The request itself, not its user: the API authenticates (sets request.auth) after
    # every middleware has run, so the actor is read when an event is recorded.
    request: HttpRequest | None = None
    user: Any = None  # a User, where no request says who (a webhook's sender, later)
    name: str = ""  # who acted when there is no user: the shell account of a command


_origin: ContextVar[Origin | None] = ContextVar("goci_audit_origin", default=None)


def current() -> Origin | None:
    return _origin.get()


@contextlib.contextmanager
def acting(origin: Origin) -> Iterator[None]:
    token = _origin.set(origin)
    try:
        yield
    finally:
        _origin.reset(token)


def from_cli(user: Any = None) -> contextlib.AbstractContextManager[None]:
    """Events recorded inside come `via` "cli", by `user` if given (a Django user),
    else by the shell account that ran the command."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container with an arbitrary uid)
        name = ""
    return acting(Origin(via=CLI, user=user, name=f"{name} (shell)" if name else "shell"))
