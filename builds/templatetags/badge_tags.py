"""`{% badge_markdown project %}`: the status badge's Markdown for a README, on the
project page (builds/badges.py serves the badge)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from django import template
from django.urls import reverse

from builds import access
from builds.models import Project
from goci.public import absolute_url

register = template.Library()


@register.inclusion_tag("builds/_badge_markdown.html", takes_context=True)
def badge_markdown(context: template.Context, project: Project) -> dict[str, Any]:
    """A private project's badge needs its token, so only its maintainers see that
    Markdown (and may rotate the token); a public one's is for every member."""
    request = context.get("request")
    can_manage = access.has_role(getattr(project, "role", None), access.MANAGE)
    query = {"branch": project.default_branch}
    if not project.public:
        query["token"] = project.badge_token
    shown = project.public or (can_manage and bool(project.badge_token))
    badge = absolute_url(
        f"{reverse('badges:badge', args=[project.slug])}?{urlencode(query)}", request
    )
    page = absolute_url(reverse("builds:project", args=[project.slug]), request)
    return {
        "project": project,
        "can_manage": can_manage,
        "shown": shown,
        "badge_url": badge if shown else "",
        "markdown": f"[![build]({badge})]({page})" if shown else "",
    }
