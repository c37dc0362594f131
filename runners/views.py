"""The runners page: every worker and remote runner with its state, labels, jobs and
last contact; pause, drain, resume and revoke; registration tokens (create, shown
once; revoke). For admins (superusers) only: anyone else gets the 404 of a page that
does not exist. Every change goes through runners.services, which audits it."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from runners import services
from runners.models import RegistrationToken, Runner

ACTIONS = {
    "pause": Runner.State.PAUSED,
    "drain": Runner.State.DRAINING,
    "resume": Runner.State.ACTIVE,
}


class RegistrationTokenForm(forms.Form):
    reusable = forms.BooleanField(
        required=False,
        help_text="Unticked: it registers one runner, then stops working.",
    )
    expires_in_hours = forms.IntegerField(
        label="Expires in (hours)",
        min_value=1,
        max_value=services.MAX_EXPIRY_HOURS,
        required=False,
        help_text=f"Empty: {services.DEFAULT_SINGLE_USE_HOURS} hours for a single-use "
        "token; a reusable one works until revoked.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("label_suffix", "")
        super().__init__(*args, **kwargs)


def _admin(request: HttpRequest) -> User:
    if not services.is_admin(request.user):
        raise Http404("no such page")
    user: User = request.user  # type: ignore[assignment]
    return user


@login_required
@require_http_methods(["GET", "POST"])
def runners(request: HttpRequest) -> HttpResponse:
    user = _admin(request)
    form = RegistrationTokenForm(request.POST if request.method == "POST" else None)
    created: str | None = None
    if form.is_valid():
        _, created = services.registration_token_create(
            user=user,
            single_use=not form.cleaned_data["reusable"],
            expires_in_hours=form.cleaned_data["expires_in_hours"],
        )
        # Rendered, not redirected: the secret must not wait in the session.
        form = RegistrationTokenForm()
    rows = [(runner, services.runner_condition(runner)) for runner in services.runners_listed()]
    context = {
        "rows": rows,
        "tokens": RegistrationToken.objects.select_related("created_by").order_by("-id")[:100],
        "form": form,
        "created": created,
    }
    return render(request, "runners/runner_list.html", context, status=201 if created else 200)


@login_required
@require_POST
def runner_action(request: HttpRequest, runner_id: int, action: str) -> HttpResponse:
    _admin(request)
    runner = Runner.objects.filter(pk=runner_id).first()
    if runner is None or (action not in ACTIONS and action != "revoke"):
        raise Http404("no such runner")
    if action == "revoke":
        services.runner_revoke(runner=runner)
        messages.success(request, f"Runner {runner.name} revoked: its token no longer works.")
    else:
        services.runner_set_state(runner=runner, state=ACTIONS[action])
        messages.success(request, f"Runner {runner.name}: {action}.")
    return redirect("runners:runners")


@login_required
@require_POST
def registration_token_revoke(request: HttpRequest, token_id: int) -> HttpResponse:
    _admin(request)
    token = RegistrationToken.objects.filter(pk=token_id).first()
    if token is None:
        raise Http404("no such registration token")
    services.registration_token_revoke(token=token)
    messages.success(request, f"Registration token {token.prefix}… revoked.")
    return redirect("runners:runners")
