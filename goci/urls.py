from __future__ import annotations

from django.conf import settings
from django.contrib import admin
from django.templatetags.static import static
from django.urls import include, path, re_path
from django.views.generic.base import RedirectView

from builds import api
from goci import oauth
from runners import api as runner_api

urlpatterns = [
    # With passwords off the admin's own sign-in form is not served: /login/ is the way in.
    *([] if settings.GOCI_PASSWORD_SIGNIN else [path("admin/login/", oauth.admin_sign_in_off)]),
    path("admin/", admin.site.urls),
    # Signing in with a forge (allauth, only the routes goci/oauth.py names).
    path("accounts/", include(oauth.urlpatterns())),
    # The remote runners' own API (runners/api.py), authenticated by runner tokens.
    path("api/runner/v1/", runner_api.urls()),
    path("api/", api.urls()),
    # After the API's own routes: every other /api/ URL answers in JSON too.
    re_path(r"^api/", api.not_found),
    # Browsers and feed readers ask for /favicon.ico whatever the page links. Not a
    # permanent redirect: the static file's URL may change (a hashed name).
    path("favicon.ico", RedirectView.as_view(url=static("favicon.svg"))),
    # Probes and Prometheus (goci/health.py): /healthz, /readyz, /metrics.
    path("", include("goci.health")),
    # A forge's webhook deliveries (builds/webhooks.py): no sign-in, no CSRF, a signature.
    path("hooks/", include("builds.webhooks")),
    path("", include("goci.audit.urls")),
    # The runners page and registration tokens (admins only).
    path("", include("runners.urls")),
    # The status badge (public, or with the project's badge token) and its rotation.
    path("", include("builds.badges")),
    path("", include("builds.urls")),
]
