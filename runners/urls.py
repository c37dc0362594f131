"""The runners page (namespace "runners"): admins only; anyone else gets a 404."""

from __future__ import annotations

from django.urls import path

from runners import views

app_name = "runners"

urlpatterns = [
    path("runners/", views.runners, name="runners"),
    path("runners/<int:runner_id>/<slug:action>", views.runner_action, name="runner-action"),
    path(
        "runners/tokens/<int:token_id>/revoke",
        views.registration_token_revoke,
        name="registration-token-revoke",
    ),
]
