"""The status badge, `GET /badge/{project-slug}.svg?branch=main`, and the rotation of
the token a private project's badge needs (docs/commit-status.md).

The badge shows the status of the last finished build of the branch: "build | passing",
"failing", "error", "canceled", or "unknown" before any. It is public for a public
project; any other needs `?token=<the project's badge token>`. An unknown project and
a missing or wrong token get the same 404, byte for byte: a badge URL tells nobody
whether a private project exists.
"""

from __future__ import annotations

import hashlib
import hmac
import unicodedata

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db.models import Q
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotModified
from django.shortcuts import redirect
from django.template.loader import render_to_string
from django.urls import path
from django.utils.http import parse_etags
from django.views.decorators.http import require_POST, require_safe

from builds import access, services
from builds.models import Build, Project, Status

# The SVG is an image, never a document: nothing in it may run or load.
BADGE_CSP = "default-src 'none'; sandbox"
# Forges' image proxies (GitHub's camo) cache what they may: they must ask each time,
# and the ETag makes asking cheap.
CACHE_CONTROL = "no-cache, max-age=0"
MAX_BRANCH = 255  # Build.ref's length
MAX_TOKEN = 200
LABEL = "build"
SHOWN = (Status.SUCCESS, Status.FAILURE, Status.ERROR, Status.CANCELED)
WORDS: dict[str, str] = {
    Status.SUCCESS: "passing",
    Status.FAILURE: "failing",
    Status.ERROR: "error",
    Status.CANCELED: "canceled",
}
# The dashboard's status colours (static/goci.css), white text on each passes WCAG AA.
COLOURS = {
    "passing": "#116329",
    "failing": "#a40e26",
    "error": "#8a4600",
    "canceled": "#424a53",
    "unknown": "#57606a",
    "not found": "#57606a",
}
LABEL_COLOUR = "#1f2328"
CHAR_WIDTH = 7  # pixels of an average character of 11 px Verdana; badges need no more
PADDING = 10

app_name = "badges"


def _clean(value: str, limit: int) -> bool:
    """No control character (NUL among them), no lone surrogate, not too long."""
    return len(value) <= limit and not any(
        unicodedata.category(char) in ("Cc", "Cs") for char in value
    )


@require_safe
def badge(request: HttpRequest, slug: str) -> HttpResponse:
    branch = request.GET.get("branch", "")
    token = request.GET.get("token", "")
    # Checked before the project is looked up: the answer is the same for every slug.
    if not (_clean(branch, MAX_BRANCH) and _clean(token, MAX_TOKEN)):
        return HttpResponse(
            "branch: a branch name (at most 255 characters, no control characters); "
            "token: the project's badge token\n",
            status=400,
            content_type="text/plain; charset=utf-8",
            headers={"Cache-Control": CACHE_CONTROL},
        )
    project = Project.objects.filter(slug=slug).first() if _is_slug(slug) else None
    if project is None or not _may_see(project, token):
        return _not_found()
    branch = branch or project.default_branch
    word = WORDS.get(last_status(project, branch) or "", "unknown")
    svg = render_badge(word, title=f"{project.slug} on {branch}: {LABEL} {word}")
    etag = f'"{hashlib.sha256(svg).hexdigest()[:32]}"'
    headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL}
    asked = {
        tag.removeprefix("W/") for tag in parse_etags(request.headers.get("If-None-Match", ""))
    }
    if etag in asked or "*" in asked:
        response: HttpResponse = HttpResponseNotModified(headers=headers)
    else:
        response = HttpResponse(svg, content_type="image/svg+xml; charset=utf-8", headers=headers)
    response["Content-Security-Policy"] = BADGE_CSP
    return response


def _is_slug(value: str) -> bool:
    return services.slug_problem(value) is None


def _may_see(project: Project, token: str) -> bool:
    if project.public:
        return True
    # A project made before badge tokens existed has none: no token opens it.
    return bool(project.badge_token) and hmac.compare_digest(
        token.encode(), project.badge_token.encode()
    )


def last_status(project: Project, branch: str) -> str | None:
    """The status of the newest finished build of the branch: its pushes, manual and
    API builds (ref refs/heads/<branch> or the bare name), not its pull requests'
    (whose code is not the branch's yet), nor builds canceled because a newer one
    superseded them (which say nothing of the branch)."""
    return (
        Build.objects.filter(project=project, status__in=SHOWN, pr_number__isnull=True)
        .filter(superseded_by__isnull=True)
        .filter(Q(ref=f"refs/heads/{branch}") | Q(ref=branch))
        .order_by("-id")
        .values_list("status", flat=True)
        .first()
    )


def render_badge(word: str, title: str) -> bytes:
    label_width = len(LABEL) * CHAR_WIDTH + PADDING
    word_width = len(word) * CHAR_WIDTH + PADDING
    context = {
        "label": LABEL,
        "word": word,
        "title": title,
        "colour": COLOURS[word],
        "label_colour": LABEL_COLOUR,
        "label_width": label_width,
        "word_width": word_width,
        "width": label_width + word_width,
        "label_x": label_width // 2,
        "word_x": label_width + word_width // 2,
    }
    # A Django template autoescapes &, <, >, " and ': every text is safe in XML.
    return render_to_string("builds/_badge.svg", context).encode()


def _not_found() -> HttpResponse:
    """One answer, whether the project does not exist or the token is missing or wrong."""
    response = HttpResponse(
        render_badge("not found", title=f"{LABEL}: not found"),
        status=404,
        content_type="image/svg+xml; charset=utf-8",
        headers={"Cache-Control": CACHE_CONTROL},
    )
    response["Content-Security-Policy"] = BADGE_CSP
    return response


@login_required
@require_POST
def badge_token_rotate(request: HttpRequest, slug: str) -> HttpResponse:
    """A new badge token for the project: badge URLs with the old one show "not found"."""
    try:
        project = access.find_project_for_user(request.user, slug, needed=access.MANAGE)
    except access.Denied as exc:
        raise PermissionDenied(str(exc)) from exc
    if project is None:
        raise Http404("no such project")
    services.badge_token_rotate(project=project)
    messages.success(
        request,
        "The badge has a new token: update the Markdown in your README; the old badge "
        "URL shows “not found” from now.",
    )
    return redirect("builds:project", slug=project.slug)


urlpatterns = [
    path("badge/<str:slug>.svg", badge, name="badge"),
    path("projects/<slug:slug>/badge/rotate", badge_token_rotate, name="badge-token-rotate"),
]
