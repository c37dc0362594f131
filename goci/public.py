"""How Goci is reached from outside: its public address, and the client's address."""

from __future__ import annotations

import ipaddress

from django.conf import settings
from django.http import HttpRequest


def absolute_url(path: str, request: HttpRequest | None = None) -> str:
    """`path` (starting with "/") as a link people can open from anywhere.

    GOCI_PUBLIC_URL wins: behind a proxy the request's own host may be the proxy's
    upstream address (127.0.0.1:8000), which nobody else can open.
    """
    if settings.GOCI_PUBLIC_URL:
        return settings.GOCI_PUBLIC_URL + path
    if request is not None:
        return request.build_absolute_uri(path)
    return path


def client_address(request: HttpRequest) -> str | None:
    """The address a request came from, as the sign-in throttle counts it.

    Behind the proxy (GOCI_BEHIND_PROXY=true) it is the last X-Forwarded-For entry:
    the one our proxy appended. Entries before it are whatever the client sent, so
    trusting them would let anyone pick a fresh address for every guess.
    """
    remote = request.META.get("REMOTE_ADDR") or None
    if not settings.GOCI_BEHIND_PROXY:
        return remote
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")[-1].strip()
    try:
        return str(ipaddress.ip_address(forwarded))
    except ValueError:  # no header, or not an address: the proxy did not set it
        return remote
