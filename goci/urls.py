from __future__ import annotations

from django.contrib import admin
from django.urls import path
from django.views.generic import RedirectView

urlpatterns = [
    path("admin/", admin.site.urls),
    # The dashboard arrives with issue #6; until then the admin is the site.
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
]
