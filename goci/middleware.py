"""Goci's own layer around every request: the Content-Security-Policy header, and the
sign-in throttle's hooks into django-axes (settings.AXES_*)."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

# axes publishes no type information.
from axes.backends import AxesStandaloneBackend  # type: ignore[import-untyped]
from axes.handlers.database import AxesDatabaseHandler  # type: ignore[import-untyped]
from axes.helpers import get_client_username  # type: ignore[import-untyped]
from axes.models import AccessAttempt  # type: ignore[import-untyped]
from django.conf import settings
from django.contrib import admin
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import AuthenticationForm
from django.db.models import Max, Q
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils import timezone
from django.utils.deprecation import MiddlewareMixin

from goci.public import client_address

# No inline script, no eval: an injected <script> or on*= attribute never runs.
# connect-src 'self' covers the page's own ws:/wss: origin too (CSP level 3). Forms post
# to Goci only, but a forge's sign-in form is redirected to the forge (goci/oauth.py) and
# browsers check form-action on each redirect: the configured forges' origins are allowed.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'self'",
        " ".join(["form-action 'self'", *settings.GOCI_OAUTH_ORIGINS]),
        "object-src 'none'",
    ]
)


class ContentSecurityPolicy(MiddlewareMixin):
    """Django 5.2 has no CSP of its own (6.0 does); every response gets the one policy."""

    def process_response(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        return response


class SignInThrottle(AxesStandaloneBackend):  # type: ignore[misc]
    """Refuses a sign-in while its username or client address is locked out.

    Without a request (a `manage.py shell`, a command checking a password) there is no
    client to throttle, where axes' own backend would raise instead.
    """

    def authenticate(
        self,
        request: HttpRequest | None,
        username: str | None = None,
        password: str | None = None,
        **kwargs: Any,
    ) -> None:
        if request is None:
            return
        super().authenticate(request, username, password, **kwargs)


class SignInFailures(AxesDatabaseHandler):  # type: ignore[misc]
    """axes' database handler; a successful sign-in forgets that username's failures only.

    axes' own reset also deletes every failure from the client's address, so an attacker
    could clear the address's count by signing in to an account of their own.
    """

    def reset_user_attempts(
        self, request: HttpRequest, credentials: dict[str, Any] | None = None
    ) -> int:
        username = get_client_username(request, credentials)
        count: int = AccessAttempt.objects.filter(username=username).delete()[0]
        return count


def locked_until(username: str | None, address: str | None) -> datetime:
    """When the latest counted failure of this username or address stops counting."""
    cooloff: timedelta = settings.AXES_COOLOFF_TIME
    now = timezone.now()
    latest = (
        AccessAttempt.objects.filter(Q(username=username) | Q(ip_address=address))
        .filter(attempt_time__gte=now - cooloff)
        .aggregate(latest=Max("attempt_time"))["latest"]
    )
    return (latest or now) + cooloff


def signin_locked_out(request: HttpRequest, *args: Any) -> HttpResponse:
    """The sign-in page (or the admin's) saying when to try again, with status 429.

    axes calls this with (request, response, credentials), or (request, credentials)
    under ASGI, so nothing but the request is relied on.
    """
    username = get_client_username(request) or ""
    until = locked_until(username, getattr(request, "axes_ip_address", client_address(request)))
    # Round up: "after 10:45" must not be a minute when sign-in is still refused.
    until = until.replace(second=0, microsecond=0) + timedelta(minutes=1)
    minutes = max(1, math.ceil((until - timezone.now()).total_seconds() / 60))
    message = (
        "Too many failed sign-ins for this account or address. "
        f"Try again in {minutes} minute{'s' if minutes != 1 else ''} "
        f"(after {until:%H:%M} UTC)."
    )
    if request.path.startswith("/api/"):  # POST /api/auth/token: the API answers JSON
        return JsonResponse({"detail": message}, status=429)
    initial = {"username": username}
    next_url = request.POST.get("next", "")
    match = request.resolver_match
    if match is not None and match.view_name == "admin:login":
        context = {
            **admin.site.each_context(request),
            "title": "Log in",
            "app_path": request.get_full_path(),
            "form": AdminAuthenticationForm(request, initial=initial),
            "next": next_url,
            "lockout_message": message,
        }
        return render(request, "admin/login.html", context, status=429)
    context = {
        "form": AuthenticationForm(request, initial=initial),
        "next": next_url,
        "lockout_message": message,
    }
    return render(request, "registration/login.html", context, status=429)
