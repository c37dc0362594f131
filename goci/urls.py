from __future__ import annotations

from django.contrib import admin
from django.urls import path, re_path
from django.views.generic import RedirectView

from builds import api

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", api.urls()),
    # After the API's own routes: every other /api/ URL answers in JSON too.
    re_path(r"^api/", api.not_found),
    # The dashboard arrives with issue #6; until then the admin is the site.
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
]
