"""The dashboard's URLs (namespace "builds"), and signing in and out."""

from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.urls import path, register_converter

from builds import deploy_pages, logs, notification_pages, schedule_pages, token_pages, views
from goci import oauth


class UsernameConverter:
    """What Django lets a username hold (letters, digits and @.+-_): anything else, a
    NUL for one, is a 404 here rather than a query the database refuses."""

    regex = r"[\w.@+-]+"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(UsernameConverter, "username")

app_name = "builds"

urlpatterns = [
    # Django's LoginView, which refuses passwords when GOCI_PASSWORD_SIGNIN is off.
    path("login/", oauth.SignInView.as_view(), name="login"),
    # LogoutView answers POST only (Django 5): a link or a prefetch cannot sign you out.
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("", views.dashboard, name="dashboard"),
    path("projects/", views.projects, name="projects"),
    path("projects/new", views.project_new, name="project-new"),
    path("projects/<slug:slug>/", views.project_detail, name="project"),
    path("projects/<slug:slug>/run", views.project_run, name="project-run"),
    path("projects/<slug:slug>/run-ref", deploy_pages.project_run_ref, name="project-run-ref"),
    path(
        "projects/<slug:slug>/environments",
        deploy_pages.project_environments,
        name="project-environments",
    ),
    path(
        "projects/<slug:slug>/environments/<str:name>/protect",
        deploy_pages.environment_protect,
        name="environment-protect",
    ),
    path(
        "projects/<slug:slug>/deployments/<int:deployment_id>/redeploy",
        deploy_pages.deployment_redeploy,
        name="deployment-redeploy",
    ),
    path(
        "projects/<slug:slug>/deployments/<int:deployment_id>/approve",
        deploy_pages.deployment_decide,
        {"decision": "approve"},
        name="deployment-approve",
    ),
    path(
        "projects/<slug:slug>/deployments/<int:deployment_id>/reject",
        deploy_pages.deployment_decide,
        {"decision": "reject"},
        name="deployment-reject",
    ),
    path("projects/<slug:slug>/settings", views.project_settings, name="project-settings"),
    path(
        "projects/<slug:slug>/webhook/rotate",
        views.project_webhook_rotate,
        name="project-webhook-rotate",
    ),
    path("projects/<slug:slug>/deliveries", views.project_deliveries, name="project-deliveries"),
    path(
        "projects/<slug:slug>/deliveries/<int:delivery_id>/redeliver",
        views.delivery_redeliver,
        name="project-delivery-redeliver",
    ),
    path("projects/<slug:slug>/secrets", views.project_secret_set, name="project-secrets"),
    path(
        "projects/<slug:slug>/secrets/<str:name>/delete",
        views.project_secret_delete,
        name="project-secret-delete",
    ),
    path(
        "projects/<slug:slug>/notifications",
        notification_pages.project_notifications,
        name="project-notifications",
    ),
    path(
        "projects/<slug:slug>/notifications/<int:target_id>/delete",
        notification_pages.notification_target_delete,
        name="project-notification-delete",
    ),
    path("projects/<slug:slug>/delete", views.project_delete, name="project-delete"),
    path("projects/<slug:slug>/transfer", views.project_transfer, name="project-transfer"),
    path("projects/<slug:slug>/members", views.project_members, name="project-members"),
    path(
        "projects/<slug:slug>/members/<username:username>",
        views.member_change,
        name="project-member",
    ),
    path(
        "projects/<slug:slug>/members/<username:username>/remove",
        views.member_remove,
        name="project-member-remove",
    ),
    path(
        "projects/<slug:slug>/schedules",
        schedule_pages.project_schedules,
        name="project-schedules",
    ),
    path(
        "projects/<slug:slug>/schedules/<int:schedule_id>/toggle",
        schedule_pages.schedule_toggle,
        name="project-schedule-toggle",
    ),
    path(
        "projects/<slug:slug>/schedules/<int:schedule_id>/delete",
        schedule_pages.schedule_delete,
        name="project-schedule-delete",
    ),
    path("account/tokens", token_pages.tokens, name="tokens"),
    path("account/tokens/<int:token_id>/revoke", token_pages.token_revoke, name="token-revoke"),
    path("builds/<int:build_id>/", views.build_detail, name="build"),
    path("builds/<int:build_id>/cancel", views.build_cancel, name="build-cancel"),
    path("builds/<int:build_id>/rerun", views.build_rerun, name="build-rerun"),
    path("builds/<int:build_id>/log.txt", views.build_raw, name="build-raw"),
    path("builds/<int:build_id>/steps/<int:position>/raw", views.step_raw, name="step-raw"),
    path("builds/<int:build_id>/steps/<int:position>/lines", logs.step_lines, name="step-lines"),
]
