"""The error a request that cannot be accepted raises (services.InvalidRequest), in a
module of its own so that builds/deployments.py, which services imports, can refine it."""

from __future__ import annotations


class InvalidRequest(ValueError):
    """A request that cannot be accepted as it is; the message says what to fix."""
