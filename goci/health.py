"""Probes and metrics (issue #13): /healthz, /readyz and /metrics.

/healthz says the process answers and touches nothing else, so a slow database never
gets a healthy process restarted. /readyz says whether this process can serve: the
database answers, every migration is applied, and the channel layer carries a message.
Both are public and name no address, user or error text. /metrics is for the operator's
Prometheus only: a GOCI_METRICS_TOKEN bearer, or a client address in GOCI_METRICS_ALLOW;
anyone else gets the same 404 as an unknown URL.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
from functools import lru_cache

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import DatabaseError, connection
from django.db.migrations.executor import MigrationExecutor
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from goci.metrics import REGISTRY
from goci.public import client_address

# A channel layer that has not carried one small message by then is not answering.
CHANNEL_TIMEOUT = 2.0

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


# Once every migration is applied it stays so for this process's life (code and its
# migrations ship together), so the migration graph is read until then, not every probe.
_migrations_applied = False


def _database_checks() -> dict[str, str]:
    global _migrations_applied  # noqa: PLW0603  (a process-wide memo, written once)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except DatabaseError:
        return {"database": "unreachable", "migrations": "unknown"}
    if not _migrations_applied:
        try:
            executor = MigrationExecutor(connection)
            plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
        except DatabaseError:
            return {"database": "ok", "migrations": "unknown"}
        if plan:
            return {"database": "ok", "migrations": f"{len(plan)} not applied"}
        _migrations_applied = True
    return {"database": "ok", "migrations": "ok"}


async def _channel_layer_check() -> str:
    layer = get_channel_layer()
    if layer is None:
        return "not configured"
    try:
        async with asyncio.timeout(CHANNEL_TIMEOUT):
            channel = await layer.new_channel()
            await layer.send(channel, {"type": "readyz.ping"})
            await layer.receive(channel)
    except TimeoutError:
        return f"no answer within {CHANNEL_TIMEOUT:g} s"
    except Exception:  # noqa: BLE001  (Redis's errors and kin: whatever it is, not ready)
        return "unreachable"
    return "ok"


@require_GET
async def readyz(request: HttpRequest) -> JsonResponse:
    checks = await sync_to_async(_database_checks)()
    checks["channel_layer"] = await _channel_layer_check()
    ready = all(answer == "ok" for answer in checks.values())
    return JsonResponse(
        {"status": "ok" if ready else "not ready", "checks": checks},
        status=200 if ready else 503,
    )


@lru_cache(maxsize=8)
def _networks(allow: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(item, strict=False) for item in allow)


def metrics_allowed(request: HttpRequest) -> bool:
    """A GOCI_METRICS_TOKEN bearer (compared in constant time), or a client address in
    GOCI_METRICS_ALLOW. Neither configured: nobody."""
    token: str = settings.GOCI_METRICS_TOKEN
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if token and scheme.lower() == "bearer":
        expected = token.encode()
        if hmac.compare_digest(given.strip().encode(errors="backslashreplace"), expected):
            return True
    allow: list[str] = settings.GOCI_METRICS_ALLOW
    address = client_address(request)
    if not allow or not address:
        return False
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # a dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d
    return any(ip in network for network in _networks(tuple(allow)))


@csrf_exempt  # a stranger's POST gets the unknown URL's 404, not a CSRF 403
def metrics(request: HttpRequest) -> HttpResponse:
    if not metrics_allowed(request):
        raise Http404
    if request.method not in ("GET", "HEAD"):
        return HttpResponse(status=405, headers={"Allow": "GET, HEAD"})
    return HttpResponse(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)


urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("metrics", metrics, name="metrics"),
]
