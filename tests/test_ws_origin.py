"""The WebSocket origin check of goci.asgi: scheme, host and port must all match the page
the socket belongs to (GOCI_PUBLIC_URL, or else the Host the socket was opened on)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.test import Client

from goci.asgi import application
from tests.queue_helpers import make_project, submit

# Consumers read the database from other threads: their writes must be committed.
pytestmark = pytest.mark.django_db(transaction=True)
TIMEOUT = 5


@pytest.fixture(autouse=True)
async def fresh_layer() -> AsyncIterator[None]:
    yield
    await get_channel_layer().flush()


@pytest.fixture
def build() -> tuple[int, str]:
    """A build and the session cookie of its owner."""
    build = submit(make_project("web", user="ann"), "steps: [{name: a, run: 'true'}]")
    client = Client()
    client.force_login(User.objects.get(username="ann"))
    return build.pk, client.cookies["sessionid"].value


async def connects(build: tuple[int, str], host: str, origin: str, **extra: str) -> bool:
    build_id, session = build
    headers = [
        (b"host", host.encode()),
        (b"origin", origin.encode()),
        (b"cookie", f"sessionid={session}".encode()),
        *((name.encode(), value.encode()) for name, value in extra.items()),
    ]
    ws = WebsocketCommunicator(application, f"/ws/builds/{build_id}/", headers=headers)
    connected, _ = await ws.connect(timeout=TIMEOUT)
    if connected:
        await ws.disconnect()
    return bool(connected)


async def test_the_page_s_own_origin_is_accepted(build: tuple[int, str]) -> None:
    assert await connects(build, "localhost:8000", "http://localhost:8000")


async def test_another_port_on_the_same_host_is_refused(build: tuple[int, str]) -> None:
    assert not await connects(build, "localhost:8000", "http://localhost:9000")
    assert not await connects(build, "localhost:8000", "http://localhost")


async def test_another_scheme_is_refused(build: tuple[int, str]) -> None:
    assert not await connects(build, "localhost:8000", "https://localhost:8000")


async def test_a_host_outside_allowed_hosts_is_refused_even_when_origin_matches_it(
    build: tuple[int, str],
) -> None:
    # DNS rebinding: evil.example resolving to the server makes Host and Origin agree.
    assert not await connects(build, "evil.example:8000", "http://evil.example:8000")


async def test_no_origin_is_refused(build: tuple[int, str]) -> None:
    build_id, session = build
    headers = [(b"host", b"localhost:8000"), (b"cookie", f"sessionid={session}".encode())]
    ws = WebsocketCommunicator(application, f"/ws/builds/{build_id}/", headers=headers)
    connected, _ = await ws.connect(timeout=TIMEOUT)
    assert not connected


async def test_with_a_public_url_only_its_exact_origin_is_accepted(
    build: tuple[int, str], settings: Any
) -> None:
    settings.GOCI_PUBLIC_URL = "https://ci.example.com"
    # The proxy may pass its upstream address as Host; the browser's Origin is public.
    assert await connects(build, "127.0.0.1:8000", "https://ci.example.com")
    assert await connects(build, "127.0.0.1:8000", "https://ci.example.com:443")
    assert not await connects(build, "127.0.0.1:8000", "https://ci.example.com:8443")
    assert not await connects(build, "127.0.0.1:8000", "http://ci.example.com")
    assert not await connects(build, "127.0.0.1:8000", "http://127.0.0.1:8000")


async def test_behind_the_proxy_its_forwarded_scheme_counts(
    build: tuple[int, str], settings: Any
) -> None:
    settings.GOCI_BEHIND_PROXY = True
    assert await connects(build, "localhost", "https://localhost", **{"x-forwarded-proto": "https"})
    assert not await connects(
        build, "localhost", "http://localhost", **{"x-forwarded-proto": "https"}
    )
    settings.GOCI_BEHIND_PROXY = False
    assert not await connects(
        build, "localhost", "https://localhost", **{"x-forwarded-proto": "https"}
    )
