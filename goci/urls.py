from __future__ import annotations

from django.contrib import admin
from django.urls import include, path, re_path

from builds import api

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", api.urls()),
    # After the API's own routes: every other /api/ URL answers in JSON too.
    re_path(r"^api/", api.not_found),
    path("", include("builds.urls")),
]
