"""Who may see what: every lookup of a project or a build by a user goes through here.

The API, the views and the consumers ask these functions and turn None into a 404 (or a
WebSocket close before accept), so that their rules cannot drift apart. A project the
user may not see and one that does not exist look the same: no 403 tells an outsider
that an id is taken.

Visibility today is membership of the project (any role); later issues give the roles
their meaning here, in one place.
"""

from __future__ import annotations

from django.contrib.auth.models import AnonymousUser, User
from django.db.models import QuerySet

from builds.models import Build, Project


def projects_for_user(user: User | AnonymousUser) -> QuerySet[Project]:
    """The projects the user is a member of."""
    if not user.is_authenticated or not user.is_active:
        return Project.objects.none()
    return Project.objects.filter(members=user)


def find_project_for_user(user: User | AnonymousUser, slug_or_id: str | int) -> Project | None:
    """The project with this slug (or, for a number, this id) if the user may see it.

    A slug is tried before an id, so a project whose slug is made of digits stays
    reachable by its slug; an int (a JSON number) is always an id.
    """
    projects = projects_for_user(user)
    if isinstance(slug_or_id, int):
        return projects.filter(pk=slug_or_id).first()
    project = projects.filter(slug=slug_or_id).first()
    if project is None and slug_or_id.isascii() and slug_or_id.isdigit():
        project = projects.filter(pk=int(slug_or_id)).first()
    return project


def builds_for_user(user: User | AnonymousUser) -> QuerySet[Build]:
    """The builds of the projects the user is a member of."""
    if not user.is_authenticated or not user.is_active:
        return Build.objects.none()
    return Build.objects.filter(project__members=user)


def find_build_for_user(user: User | AnonymousUser, build_id: int) -> Build | None:
    """The build with this id if the user may see it (project and author loaded)."""
    return builds_for_user(user).select_related("project", "author").filter(pk=build_id).first()
