"""The signed-in user's own personal API tokens: list, create (the secret shown once)
and revoke, as `GET/POST/DELETE /api/tokens` and `goci token` do."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from builds import services
from builds.models import TOKEN_SCOPES, default_token_scopes

SCOPE_HELP = {
    "read": "read: every GET of the API",
    "run": "run: submit, cancel and rerun builds",
    "admin": "admin: change projects, members, secrets and tokens",
}


class TokenForm(forms.Form):
    name = forms.CharField(max_length=200, help_text="To recognise it by, e.g. laptop or ci.")
    scopes = forms.MultipleChoiceField(
        choices=[(scope, SCOPE_HELP[scope]) for scope in TOKEN_SCOPES],
        initial=default_token_scopes,
        widget=forms.CheckboxSelectMultiple,
        help_text="Scopes narrow what your roles allow; they never add to them.",
    )
    expires_in_days = forms.IntegerField(
        label="Expires in (days)",
        min_value=1,
        max_value=services.MAX_TOKEN_DAYS,
        required=False,
        help_text="Empty: it works until you revoke it.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("label_suffix", "")
        super().__init__(*args, **kwargs)


def _owner(request: HttpRequest) -> User:
    user: User = request.user  # type: ignore[assignment]  # login_required
    return user


@login_required
@require_http_methods(["GET", "POST"])
def tokens(request: HttpRequest) -> HttpResponse:
    form = TokenForm(request.POST if request.method == "POST" else None)
    created: str | None = None
    if form.is_valid():
        data = form.cleaned_data
        _, created = services.token_create(
            user=_owner(request),
            name=data["name"],
            scopes=data["scopes"],
            expires_in_days=data["expires_in_days"],
        )
        # Rendered, not redirected: the secret must not wait in the session (messages)
        # for the next page. Reloading asks to resend the form, which makes another.
        form = TokenForm()
    context = {
        "tokens": services.tokens_usable().filter(user=_owner(request)).order_by("-id"),
        "form": form,
        "created": created,
    }
    return render(request, "builds/token_list.html", context, status=201 if created else 200)


@login_required
@require_POST
def token_revoke(request: HttpRequest, token_id: int) -> HttpResponse:
    token = services.tokens_usable().filter(user=_owner(request), pk=token_id).first()
    if token is None:  # another user's token, too
        raise Http404("no such token")
    services.token_revoke(token=token)
    messages.success(request, f"Token {token.name} revoked.")
    return redirect("builds:tokens")
