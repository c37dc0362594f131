from __future__ import annotations

from django.contrib import admin
from django.templatetags.static import static
from django.urls import include, path, re_path
from django.views.generic.base import RedirectView

from builds import api

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", api.urls()),
    # After the API's own routes: every other /api/ URL answers in JSON too.
    re_path(r"^api/", api.not_found),
    # Browsers and feed readers ask for /favicon.ico whatever the page links. Not a
    # permanent redirect: the static file's URL may change (a hashed name).
    path("favicon.ico", RedirectView.as_view(url=static("favicon.svg"))),
    path("", include("goci.audit.urls")),
    path("", include("builds.urls")),
]
