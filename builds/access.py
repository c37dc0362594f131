"""Who may see and do what: every lookup of a project or a build by a user goes
through here, and so does every role check.

The API, the views, the consumers and the admin ask these functions and turn None into
a 404 (or a WebSocket close before accept), so that their rules cannot drift apart. A
project the user may not see and one that does not exist look the same: no 403 tells
an outsider that an id is taken. A member whose role is too low gets `Denied` (a 403
that names the role needed): they already know the project exists.

The four roles, each with everything of the ones before it:
- viewer: read builds and logs;
- developer: also run, cancel and rerun builds;
- maintainer: also change the project's settings and members;
- owner: also delete or transfer the project (and make or unmake owners).
"""

from __future__ import annotations

from django.contrib.auth.models import AnonymousUser, User
from django.db.models import F, QuerySet

from builds.models import Build, Membership, Project, Role

RANK = {Role.VIEWER: 0, Role.DEVELOPER: 1, Role.MAINTAINER: 2, Role.OWNER: 3}

# What each role may do, for the messages of Denied (and the docs).
READ = Role.VIEWER
RUN = Role.DEVELOPER
MANAGE = Role.MAINTAINER
OWN = Role.OWNER


class Denied(Exception):
    """A member of the project whose role is too low for what they asked (403)."""

    def __init__(self, project: Project, needed: Role, role: str | None) -> None:
        self.project = project
        self.needed = Role(needed)
        self.role = role
        super().__init__(
            f"this needs the {self.needed.label.lower()} role (or higher) on project "
            f"'{project.slug}'; you are {_article(role)}"
        )


def _article(role: str | None) -> str:
    if role is None:
        return "not a member"
    return f"{'an' if role[0] in 'aeiou' else 'a'} {role}"


def has_role(role: str | None, needed: Role) -> bool:
    """Whether a member with `role` may do what needs `needed`."""
    return role is not None and RANK[Role(role)] >= RANK[needed]


def require(project: Project, needed: Role) -> None:
    """Raise Denied unless the project's user (as looked up here) holds `needed`.

    `project` must come from this module, which annotates it with the user's role."""
    role = getattr(project, "role", None)
    if not has_role(role, needed):
        raise Denied(project, needed, role)


def projects_for_user(user: User | AnonymousUser) -> QuerySet[Project]:
    """The projects the user is a member of, each with `role`: the user's role on it."""
    if not user.is_authenticated or not user.is_active:
        return Project.objects.none()
    # One filter() call on the membership: the annotation reads the same joined row.
    return Project.objects.filter(membership__user=user).annotate(role=F("membership__role"))


def find_project_for_user(
    user: User | AnonymousUser, slug_or_id: str | int, needed: Role | None = None
) -> Project | None:
    """The project with this slug (or, for a number, this id) if the user may see it,
    with `role` set; with `needed`, Denied if the user's role is lower.

    A slug is tried before an id, so a project whose slug is made of digits stays
    reachable by its slug; an int (a JSON number) is always an id.
    """
    projects = projects_for_user(user)
    if isinstance(slug_or_id, int):
        project = projects.filter(pk=slug_or_id).first()
    else:
        project = projects.filter(slug=slug_or_id).first()
        if project is None and slug_or_id.isascii() and slug_or_id.isdigit():
            project = projects.filter(pk=int(slug_or_id)).first()
    if project is not None and needed is not None:
        require(project, needed)
    return project


def builds_for_user(user: User | AnonymousUser) -> QuerySet[Build]:
    """The builds of the projects the user is a member of."""
    if not user.is_authenticated or not user.is_active:
        return Build.objects.none()
    return Build.objects.filter(project__membership__user=user)


def find_build_for_user(
    user: User | AnonymousUser, build_id: int, needed: Role | None = None
) -> Build | None:
    """The build with this id if the user may see it (project and author loaded; the
    project carries `role`); with `needed`, Denied if the user's role is lower."""
    build = (
        builds_for_user(user)
        .annotate(role=F("project__membership__role"))
        .select_related("project", "author")
        .filter(pk=build_id)
        .first()
    )
    if build is None:
        return None
    build.project.role = build.role  # type: ignore[attr-defined]
    if needed is not None:
        require(build.project, needed)
    return build


def role_on(user: User | AnonymousUser, project: Project) -> str | None:
    """The user's role on the project, read now (None: not a member any more)."""
    if not user.is_authenticated or not user.is_active:
        return None
    return (
        Membership.objects.filter(project=project, user=user).values_list("role", flat=True).first()
    )


def require_member_change(project: Project, *roles: str | None) -> None:
    """Maintainers manage members; only owners make, change or remove an owner.
    `roles`: the member's role now (if any) and the role asked for (if any)."""
    require(project, OWN if Role.OWNER in roles else MANAGE)


def find_member(project: Project, username: str) -> Membership | None:
    """The membership of `username` in a project the caller may see (their own role on
    it checked by the caller), with the user and the project loaded."""
    return (
        Membership.objects.select_related("user", "project")
        .filter(project=project, user__username=username)
        .first()
    )
