"""The notifications page of a project (maintainers): its targets, a form to add one,
delete, and the last deliveries with their state and last error. Credentials are
write-only: the page says which are set, never shows one, not even back in a form
with a problem. builds/notifications.py changes the targets."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from builds import access, notifications, services
from builds.forms import WriteOnlyTextarea, _Form
from builds.models import NotificationTarget, Project
from builds.views import _denied_as_403, _project_or_404, _sentence

Kind = NotificationTarget.Kind
When = NotificationTarget.When

WHEN_HELP: dict[str, str] = {
    When.ALWAYS: "every build (canceled ones too)",
    When.FAILURES: "failed builds only",
    When.CHANGES: "failed builds, and the first success after one (fixed)",
    When.NEVER: "no builds (deployments only, if ticked)",
}


class WriteOnlyInput(forms.TextInput):
    """A credential is never sent back to the browser."""

    def format_value(self, value: Any) -> None:
        return None


def _credential(label: str, help_text: str, *, area: bool = False) -> forms.CharField:
    attrs = {"autocomplete": "off", "spellcheck": "false"}
    widget = WriteOnlyTextarea(attrs={"rows": 2, **attrs}) if area else WriteOnlyInput(attrs)
    return forms.CharField(
        label=label,
        max_length=notifications.MAX_CREDENTIAL,
        required=False,
        strip=True,
        widget=widget,
        help_text=help_text,
    )


class TargetForm(_Form):
    """A new target; the fields of its kind are checked by notification_target_create."""

    name = forms.CharField(max_length=notifications.MAX_NAME, help_text="e.g. team chat")
    kind = forms.ChoiceField(choices=Kind.choices)
    when = forms.ChoiceField(
        label="Builds",
        choices=[(value, f"{value}: {WHEN_HELP[value]}") for value in When.values],
        initial=When.CHANGES,
    )
    deployments = forms.BooleanField(
        label="Deployments", required=False, initial=True, help_text="Also each deployment."
    )
    enabled = forms.BooleanField(required=False, initial=True)
    url = forms.CharField(
        label="Webhook URL",
        max_length=2000,
        required=False,
        help_text="webhook: where the JSON is posted (shown; put no secret in it).",
    )
    secret = _credential(
        "Webhook secret",
        "webhook: the key of the X-Goci-Signature HMAC (at least "
        f"{notifications.MIN_WEBHOOK_SECRET} characters); never shown again.",
    )
    slack_url = _credential(
        "Slack webhook URL", "slack: the incoming webhook's URL; never shown again.", area=True
    )
    telegram_token = _credential(
        "Telegram bot token", "telegram: the bot's token from BotFather; never shown again."
    )
    telegram_chat_id = _credential(
        "Telegram chat id", "telegram: the chat's number (-100...) or a channel's @name."
    )
    addresses = forms.CharField(
        label="Email addresses",
        required=False,
        max_length=notifications.MAX_ADDRESSES * 256,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text=f"email: one per line (at most {notifications.MAX_ADDRESSES}).",
    )

    def target_fields(self) -> dict[str, Any]:
        """What notification_target_create takes, from the cleaned data."""
        data = self.cleaned_data
        kind = data["kind"]
        given = {
            "secret": data["secret"],
            "url": data["slack_url"],
            "token": data["telegram_token"],
            "chat_id": data["telegram_chat_id"],
        }
        # Only the kind's own: a field of another kind filled in by mistake is ignored.
        credentials = {
            name: value
            for name, value in given.items()
            if name in notifications.CREDENTIALS[kind] and value
        }
        addresses = [line.strip() for line in data["addresses"].splitlines() if line.strip()]
        return {
            "name": data["name"],
            "kind": kind,
            "url": data["url"] if kind == Kind.WEBHOOK else "",
            "addresses": addresses if kind == Kind.EMAIL else [],
            "credentials": credentials,
            "when": data["when"],
            "deployments": data["deployments"],
            "enabled": data["enabled"],
        }


def _page(request: HttpRequest, project: Project, form: TargetForm) -> HttpResponse:
    targets = [
        (target, notifications.credentials_set(target))
        for target in NotificationTarget.objects.filter(project=project)
    ]
    deliveries = [
        (row, notifications.delivery_state(row)) for row in notifications.recent_deliveries(project)
    ]
    context = {
        "project": project,
        "targets": targets,
        "deliveries": deliveries,
        "form": form,
        "max_deliveries": notifications.MAX_DELIVERIES,
    }
    return render(request, "builds/notifications.html", context)


@login_required
@require_http_methods(["GET", "POST"])
@_denied_as_403
def project_notifications(request: HttpRequest, slug: str) -> HttpResponse:
    """Maintainers see the targets and deliveries and add targets."""
    project = _project_or_404(request, slug, access.MANAGE)
    if request.method == "GET":
        return _page(request, project, TargetForm())
    form = TargetForm(request.POST)
    if form.is_valid():
        try:
            target = notifications.notification_target_create(
                project=project, **form.target_fields()
            )
        except (services.InvalidRequest, services.Conflict) as exc:
            form.add_error(None, _sentence(exc))
        else:
            messages.success(request, f"Notification target {target.name} added.")
            return redirect("builds:project-notifications", slug=project.slug)
    return _page(request, project, form)


@login_required
@require_POST
@_denied_as_403
def notification_target_delete(request: HttpRequest, slug: str, target_id: int) -> HttpResponse:
    project = _project_or_404(request, slug, access.MANAGE)
    target = NotificationTarget.objects.filter(project=project, pk=target_id).first()
    if target is None:
        raise Http404("no such notification target")
    target.project = project
    notifications.notification_target_delete(target=target)
    messages.success(request, f"Notification target {target.name} deleted.")
    return redirect("builds:project-notifications", slug=project.slug)
