"""The dashboard's URLs (namespace "builds"), and signing in and out."""

from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.urls import path

from builds import logs, views

app_name = "builds"

urlpatterns = [
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    # LogoutView answers POST only (Django 5): a link or a prefetch cannot sign you out.
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("", views.dashboard, name="dashboard"),
    path("projects/<slug:slug>/", views.project_detail, name="project"),
    path("projects/<slug:slug>/run", views.project_run, name="project-run"),
    path("builds/<int:build_id>/", views.build_detail, name="build"),
    path("builds/<int:build_id>/cancel", views.build_cancel, name="build-cancel"),
    path("builds/<int:build_id>/rerun", views.build_rerun, name="build-rerun"),
    path("builds/<int:build_id>/log.txt", views.build_raw, name="build-raw"),
    path("builds/<int:build_id>/steps/<int:position>/raw", views.step_raw, name="step-raw"),
    path("builds/<int:build_id>/steps/<int:position>/lines", logs.step_lines, name="step-lines"),
]
