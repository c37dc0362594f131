"""The ASGI application daphne serves (`goci up`, or `daphne goci.asgi:application`):
HTTP through Django, WebSockets through Channels, static files through whitenoise."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from django.conf import settings
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "goci.settings")
# Django first: it sets up the apps, which Channels' auth and the consumers import.
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import OriginValidator  # noqa: E402
from django.http.request import split_domain_port, validate_host  # noqa: E402
from whitenoise.middleware import WhiteNoiseMiddleware  # noqa: E402

from builds.routing import websocket_urlpatterns  # noqa: E402

# As django-stubs types ASGIHandler.__call__.
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[Mapping[str, Any]]]
Send = Callable[[Mapping[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

CHUNK = 64 * 1024


class StaticFiles:
    """Answer requests for static files before Django does.

    WhiteNoiseMiddleware (in MIDDLEWARE) works under daphne too, but its response is a
    synchronous file iterator, which Django's ASGI handler reads whole in a thread (and
    warns about). Here whitenoise finds the same files with the same headers (caching,
    compressed variants, ranges, 304) and they are streamed in chunks.
    """

    def __init__(self, app: App) -> None:
        self.app = app
        self.whitenoise = WhiteNoiseMiddleware()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if self.whitenoise.autorefresh:  # DEBUG: look at the disk on each request
                static_file = self.whitenoise.find_file(path)
            else:
                static_file = self.whitenoise.files.get(path)
            if static_file is not None:
                await self.serve(static_file, scope, send)
                return
        await self.app(scope, receive, send)

    @staticmethod
    async def serve(static_file: Any, scope: Scope, send: Send) -> None:
        # whitenoise reads WSGI-style request headers (HTTP_IF_NONE_MATCH, HTTP_RANGE...).
        request_headers = {
            "HTTP_" + name.decode("latin-1").upper().replace("-", "_"): value.decode("latin-1")
            for name, value in scope["headers"]
        }
        response = static_file.get_response(scope["method"], request_headers)
        headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
        if settings.SECURE_CONTENT_TYPE_NOSNIFF:  # SecurityMiddleware is bypassed here
            headers.append((b"x-content-type-options", b"nosniff"))
        await send(
            {"type": "http.response.start", "status": int(response.status), "headers": headers}
        )
        if response.file is not None:
            # Blocking reads of small local files cost microseconds; not worth a thread.
            with response.file as f:
                while chunk := f.read(CHUNK):
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


def allowed_origins(scope: Scope) -> list[str]:
    """The one origin a socket may come from: GOCI_PUBLIC_URL, or else the page's own.

    Scheme, host and port all count (channels' AllowedHostsOriginValidator ignores the
    port, so any other service on the same host could open sockets with the user's
    cookies). The Host header is checked against ALLOWED_HOSTS, as Django checks it for
    HTTP, so a rebound DNS name cannot make itself "same origin".
    """
    if settings.GOCI_PUBLIC_URL:
        return [settings.GOCI_PUBLIC_URL]
    headers = dict(scope.get("headers", []))
    host = headers.get(b"host", b"").decode("latin-1")
    domain, _port = split_domain_port(host)
    if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
        return []
    scheme = scope.get("scheme", "ws")
    if settings.GOCI_BEHIND_PROXY and b"x-forwarded-proto" in headers:
        scheme = headers[b"x-forwarded-proto"].decode("latin-1").strip().lower()
    return [f"{'https' if scheme in ('wss', 'https') else 'http'}://{host}"]


class SameOriginValidator:
    """Refuses (before accept) a WebSocket whose Origin is not allowed_origins(scope)."""

    def __init__(self, app: App) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        validator = OriginValidator(self.app, allowed_origins(scope))
        await validator(scope, receive, send)


application = ProtocolTypeRouter(
    {
        "http": StaticFiles(django_asgi_app),
        "websocket": SameOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
