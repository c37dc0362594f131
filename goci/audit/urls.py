"""The audit log's pages (namespace "audit")."""

from __future__ import annotations

from django.urls import path

from goci.audit import views

app_name = "audit"

urlpatterns = [
    path("audit/", views.events, name="audit"),
    path("audit/export.csv", views.export, name="audit-export"),
]
