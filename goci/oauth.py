"""Sign in with GitHub, GitLab or Gitea.

django-allauth runs the OAuth2 flow (the redirect, the state, the token exchange, the
forge's user); this module holds Goci's rules around it:

- Only what a forge's sign-in needs is routed (`urlpatterns`), under /accounts/:
  allauth's password, sign-up and password-reset pages are not, and every allauth page
  that can be reached is one of Goci's templates (templates/socialaccount/).
- A first sign-in links to the one user whose User.email is an address the forge says
  is verified, else creates a user: never staff, member of no project, without a
  password, with a verified address only (`ForgeAdapter`).
- Password sign-in can be turned off (GOCI_PASSWORD_SIGNIN): `SignInView` and
  `admin_sign_in_off` refuse a password before anything checks it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

# allauth publishes no type information.
from allauth.account.models import EmailAddress  # type: ignore[import-untyped]
from allauth.core.exceptions import ImmediateHttpResponse  # type: ignore[import-untyped]
from allauth.socialaccount.adapter import (  # type: ignore[import-untyped]
    DefaultSocialAccountAdapter,
)
from allauth.socialaccount.models import SocialLogin  # type: ignore[import-untyped]
from allauth.socialaccount.providers.base.constants import (  # type: ignore[import-untyped]
    AuthError,
    AuthProcess,
)
from allauth.socialaccount.providers.gitea.views import (  # type: ignore[import-untyped]
    GiteaOAuth2Adapter,
)
from allauth.socialaccount.providers.oauth2.client import (  # type: ignore[import-untyped]
    OAuth2Error,
)
from django.conf import settings
from django.contrib.auth.models import User
from django.contrib.auth.views import LoginView
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import URLPattern, URLResolver, include, path, reverse
from django.views.decorators.http import require_safe

from goci import audit

logger = logging.getLogger(__name__)

NAMES = {"github": "GitHub", "gitlab": "GitLab", "gitea": "Gitea"}
# Where each forge's user answer keeps the login, the start of the Goci username.
LOGIN_FIELD = {"github": "login", "gitlab": "username", "gitea": "login"}
SIGN_IN_REFUSED = (
    "Password sign-in is turned off on this server: sign in with your forge account instead."
)
NOT_A_USERNAME = re.compile(r"[^\w.@+-]")  # what Django's username validator refuses


@dataclass(frozen=True)
class Forge:
    id: str
    name: str
    login_url: str  # POST here (with the CSRF token and `next`) to start signing in


def forges() -> list[Forge]:
    """The forges this server signs in with, in settings' order."""
    return [
        Forge(forge, NAMES[forge], reverse(f"{forge}_login"))
        for forge in settings.GOCI_OAUTH_FORGES
    ]


def sign_in_options(request: HttpRequest) -> dict[str, Any]:
    """A context processor: the sign-in page's forge buttons and whether it shows the
    password form, wherever that page is rendered (the throttle renders it too)."""
    return {"sign_in_forges": forges(), "password_sign_in": settings.GOCI_PASSWORD_SIGNIN}


def forge_of(request: HttpRequest) -> str | None:
    """The forge a request signs in through: allauth completes a sign-in on the forge's
    callback URL ("<forge>_callback"). None for anything else."""
    match = getattr(request, "resolver_match", None)
    name = (match.url_name or "") if match is not None else ""
    forge = name.removesuffix("_callback")
    return forge if name.endswith("_callback") and forge in settings.GOCI_OAUTH_FORGES else None


def urlpatterns() -> list[URLPattern | URLResolver]:
    """Mounted under /accounts/: each configured forge's login and callback, and the two
    pages allauth sends a failed sign-in to. Not allauth.urls: its password, sign-up and
    password-reset pages would be a way around GOCI_PASSWORD_SIGNIN and admin-made users.
    The two pages are Goci's views under allauth's names: allauth's own build links to
    its password pages, which are not routed."""
    return [
        path("social/login/cancelled/", login_cancelled, name="socialaccount_login_cancelled"),
        path("social/login/error/", login_error, name="socialaccount_login_error"),
        *[
            path("", include(f"allauth.socialaccount.providers.{forge}.urls"))
            for forge in settings.GOCI_OAUTH_FORGES
        ],
    ]


@require_safe
def login_cancelled(request: HttpRequest) -> HttpResponse:
    return render(request, "socialaccount/login_cancelled.html")


@require_safe
def login_error(request: HttpRequest) -> HttpResponse:
    return render(request, "socialaccount/authentication_error.html", status=401)


def password_refused(request: HttpRequest) -> HttpResponse:
    """The sign-in page saying passwords are off; nothing has looked at the password."""
    context = {"refused": SIGN_IN_REFUSED, "next": request.POST.get("next", "")}
    return render(request, "registration/login.html", context, status=403)


class SignInView(LoginView):
    """/login/: Django's sign-in page, whose password form GOCI_PASSWORD_SIGNIN turns off."""

    redirect_authenticated_user = True

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not settings.GOCI_PASSWORD_SIGNIN:
            return password_refused(request)
        return super().post(request, *args, **kwargs)


def admin_sign_in_off(request: HttpRequest) -> HttpResponse:
    """/admin/login/ while passwords are off: the admin's own form would check one, so
    superusers sign in on /login/ like everyone else, and come back to the admin."""
    if request.method == "POST":
        return password_refused(request)
    back = request.GET.get("next") or reverse("admin:index")
    return HttpResponseRedirect(f"{reverse('builds:login')}?{urlencode({'next': back})}")


def problem(request: HttpRequest, forge: str, reason: str, status: int) -> HttpResponse:
    context = {"forge": forge, "reason": reason}
    return render(request, "socialaccount/authentication_error.html", context, status=status)


def unique_username(login: str) -> str:
    """The forge's login as a Goci username, with -2, -3 ... when it is taken (in any
    letter case, so that "Alice" never stands beside "alice")."""
    base = NOT_A_USERNAME.sub("", login)[:140] or "user"
    candidate, number = base, 1
    while User.objects.filter(username__iexact=candidate).exists():
        number += 1
        candidate = f"{base}-{number}"
    return candidate


class ForgeAdapter(DefaultSocialAccountAdapter):  # type: ignore[misc]
    """Goci's rules for allauth's sign-in (settings.SOCIALACCOUNT_ADAPTER).

    allauth calls, for a forge account it has not seen before: `authenticate_by_email`
    (which user, if any, it signs in), then `pre_social_login`, then `save_user` when
    the sign-in makes a new user. For a forge account it knows, only `pre_social_login`.
    """

    def authenticate_by_email(self, sociallogin: SocialLogin) -> tuple[User, str] | None:
        """The one user whose User.email is an address the forge says is verified. An
        unverified address never decides: anyone can add any address to a forge
        account. Two users with the address: neither (the sign-in makes a new user)."""
        for email in self._mark_verified(sociallogin):
            users = list(User.objects.filter(email__iexact=email)[:2])
            if len(users) == 1:
                return users[0], email
        return None

    def pre_social_login(self, request: HttpRequest, sociallogin: SocialLogin) -> None:
        forge = NAMES.get(sociallogin.account.provider, sociallogin.account.provider)
        if sociallogin.state.get("process", AuthProcess.LOGIN) != AuthProcess.LOGIN:
            # allauth's "connect" would send the user to its connections page, which
            # Goci does not have; signing in is all a forge is for here.
            reason = f"Goci only signs in with {forge}; connecting accounts is not offered."
            raise ImmediateHttpResponse(problem(request, forge, reason, 400))
        user = sociallogin.user
        if not sociallogin.is_existing:
            if not settings.GOCI_OAUTH_SIGNUP:
                reason = (
                    f"This Goci server signs in with {forge} only the people it already "
                    "knows: ask an administrator to make your account, with the address "
                    f"your {forge} account has verified."
                )
                raise ImmediateHttpResponse(problem(request, forge, reason, 403))
            self._keep_one_address(sociallogin)
            return
        if not user.is_active:
            reason = f"The Goci account {user.get_username()} is deactivated: ask an administrator."
            raise ImmediateHttpResponse(problem(request, forge, reason, 403))
        if sociallogin.account.pk is None:  # found by its verified address just now
            self._link(sociallogin)

    def save_user(self, request: HttpRequest, sociallogin: SocialLogin, form: Any = None) -> User:
        """A new user (allauth has already given them no usable password): named after
        their forge login, never staff or superuser, member of no project."""
        user: User = sociallogin.user
        provider = sociallogin.account.provider
        login = str(sociallogin.account.extra_data.get(LOGIN_FIELD[provider]) or "")
        user.username = unique_username(login)
        user.is_staff = user.is_superuser = False
        with transaction.atomic():
            super().save_user(request, sociallogin, form)
            audit.record(
                "user.create",
                obj=user,
                actor=user,
                details={"provider": provider, "forge_login": audit.text(login, 150)},
            )
        return user

    def on_authentication_error(
        self,
        request: HttpRequest,
        provider: Any,
        error: str | None = None,
        exception: BaseException | None = None,
        extra_context: dict[str, Any] | None = None,
    ) -> None:
        """Goci's page for a sign-in that failed, saying what happened; the reason
        itself (a forge's answer may be long and technical) goes to the server's log."""
        forge = str(provider.name)
        if error == AuthError.CANCELLED:
            return  # allauth redirects to the cancelled page (templates/socialaccount/)
        answered = request.GET.get("error", "")
        if exception is not None:
            logger.warning("signing in with %s failed: %r", forge, exception)
            reason = (
                f"Goci could not get your account from {forge}: asking it for the "
                "access token or for your profile failed. Try again; if it keeps failing, "
                "tell the administrator (the server's log says why)."
            )
        elif answered:
            logger.warning("%s refused a sign-in: %s", forge, answered[:200])
            reason = f"{forge} did not sign you in (it answered: {answered[:100]})."
        else:
            reason = (
                "This sign-in was not started from this browser, or it took too long "
                "(its state did not match). Start again from the sign-in page."
            )
        raise ImmediateHttpResponse(problem(request, forge, reason, 401))

    def _mark_verified(self, sociallogin: SocialLogin) -> list[str]:
        """Sets each of the forge's addresses' `verified` flag from what the forge says,
        and returns the verified ones, primary first.

        GitHub: allauth read /user/emails with its flags. GitLab: /api/v4/user's
        `email` is verified once `confirmed_at` is set. Gitea: /api/v1/user/emails."""
        provider = sociallogin.account.provider
        addresses: list[EmailAddress] = sociallogin.email_addresses
        if provider == "gitlab":
            data = sociallogin.account.extra_data
            confirmed = str(data.get("email") or "") if data.get("confirmed_at") else ""
            verified = {confirmed.lower(): True} if _is_email(confirmed) else {}
        elif provider == "gitea":
            verified = self._gitea_verified(sociallogin)
        else:
            verified = {a.email.lower(): bool(a.primary) for a in addresses if a.verified}
        for address in addresses:
            address.verified = address.email.lower() in verified
        known = {address.email.lower() for address in addresses}
        for email, primary in verified.items():
            if email not in known:
                addresses.append(EmailAddress(email=email, verified=True, primary=primary))
        addresses.sort(key=lambda a: (a.verified, a.primary), reverse=True)
        return [address.email for address in addresses if address.verified]

    def _gitea_verified(self, sociallogin: SocialLogin) -> dict[str, bool]:
        """Gitea's verified addresses (lower-cased) and whether each is the primary one.
        A failure raises, and allauth shows the error page: guessing "none" would make
        a second user for someone who already has one."""
        url = f"{GiteaOAuth2Adapter.api_url}/user/emails"
        headers = {"Authorization": f"token {sociallogin.token.token}"}
        with self.get_requests_session() as session:
            answer = session.get(url, headers=headers)
            answer.raise_for_status()
            emails = answer.json()
        if not isinstance(emails, list):
            raise OAuth2Error(f"Gitea's {url} answered no list: {str(emails)[:200]!r}")
        verified: dict[str, bool] = {}
        for entry in emails:
            if isinstance(entry, dict) and entry.get("verified") is True:
                email = str(entry.get("email") or "")
                if _is_email(email):
                    verified[email.lower()] = bool(entry.get("primary"))
        return verified

    def _keep_one_address(self, sociallogin: SocialLogin) -> None:
        """A new user gets a verified address that no user has, or none: User.email is
        what later sign-ins link by, so it must never hold an address nobody verified
        (its owner's forge sign-in would then land in this account) nor one that would
        make two users match."""
        kept = next(
            (
                address.email
                for address in sociallogin.email_addresses
                if address.verified
                and not User.objects.filter(email__iexact=address.email).exists()
            ),
            "",
        )
        sociallogin.email_addresses = (
            [EmailAddress(email=kept.lower(), verified=True, primary=True)] if kept else []
        )
        sociallogin.user.email = kept

    def _link(self, sociallogin: SocialLogin) -> None:
        """Records that the user's address is verified (their forge says so, and an
        admin gave them that address). allauth otherwise takes a link by email to an
        account whose address it never saw verified as a takeover, and wipes the
        password the admin set ("wipe_password")."""
        user: User = sociallogin.user
        provider = sociallogin.account.provider
        with transaction.atomic():
            EmailAddress.objects.update_or_create(
                user=user, email=user.email.lower(), defaults={"verified": True}
            )
            audit.record(
                "user.link",
                obj=user,
                actor=user,
                details={
                    "provider": provider,
                    "email": user.email,
                    "forge_login": audit.text(
                        str(sociallogin.account.extra_data.get(LOGIN_FIELD[provider]) or ""),
                        150,
                    ),
                },
            )


def _is_email(value: str) -> bool:
    try:
        validate_email(value)
    except ValidationError:
        return False
    return True
