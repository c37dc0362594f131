"""Who sees what: builds.access, the one place every lookup of a project or build goes
through (the API, and later the pages and the live-log consumer)."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import AnonymousUser

from builds import access, services
from builds.models import Build, Membership, Project, Role
from tests.helpers import make_project, make_user

PIPELINE = "steps:\n  - name: Build\n    run: make\n"

pytestmark = pytest.mark.django_db


def make_build(project: Any) -> Build:
    build, _ = services.build_create(project=project, pipeline=PIPELINE)
    return build


@pytest.fixture
def owner() -> Any:
    return make_user("olivia")


@pytest.fixture
def outsider() -> Any:
    return make_user("oscar")


@pytest.fixture
def project(owner: Any) -> Project:
    return make_project(owner, "shop")


def test_members_see_their_projects_and_builds(owner: Any, project: Project) -> None:
    other = make_project(make_user("someone"), "other")
    mine, theirs = make_build(project), make_build(other)

    assert list(access.projects_for_user(owner)) == [project]
    assert list(access.builds_for_user(owner)) == [mine]
    assert access.find_build_for_user(owner, mine.pk) == mine
    assert access.find_build_for_user(owner, theirs.pk) is None


@pytest.mark.parametrize("role", list(Role))
def test_every_role_of_member_sees_the_project(role: Role, project: Project) -> None:
    member = make_user(f"m-{role}")
    Membership.objects.create(project=project, user=member, role=role)
    build = make_build(project)

    assert access.find_project_for_user(member, "shop") == project
    assert access.find_build_for_user(member, build.pk) == build


def test_an_outsider_sees_nothing(outsider: Any, project: Project) -> None:
    build = make_build(project)

    assert list(access.projects_for_user(outsider)) == []
    assert list(access.builds_for_user(outsider)) == []
    assert access.find_project_for_user(outsider, "shop") is None
    assert access.find_project_for_user(outsider, project.pk) is None
    assert access.find_build_for_user(outsider, build.pk) is None


def test_anonymous_and_inactive_users_see_nothing(owner: Any, project: Project) -> None:
    build = make_build(project)
    owner.is_active = False
    owner.save()

    for user in (AnonymousUser(), owner):
        assert list(access.projects_for_user(user)) == []
        assert list(access.builds_for_user(user)) == []
        assert access.find_build_for_user(user, build.pk) is None


def test_a_project_is_found_by_slug_or_by_id(owner: Any, project: Project) -> None:
    assert access.find_project_for_user(owner, "shop") == project
    assert access.find_project_for_user(owner, project.pk) == project
    assert access.find_project_for_user(owner, str(project.pk)) == project
    assert access.find_project_for_user(owner, "nope") is None


def test_a_slug_of_digits_wins_over_an_id_but_a_number_is_always_an_id(owner: Any) -> None:
    first = make_project(owner, "first")
    # The API and the pages refuse such a slug now; the admin, or an older Goci, may
    # have made one, and it stays reachable by its slug.
    digits = Project.objects.create(slug=str(first.pk), name="digits")
    Membership.objects.create(project=digits, user=owner, role=Role.OWNER)

    assert access.find_project_for_user(owner, str(first.pk)) == digits
    assert access.find_project_for_user(owner, first.pk) == first


def test_missing_and_absurd_ids_are_none(owner: Any, project: Project) -> None:
    for missing in (0, -1, 10**6, 2**63, 10**30):
        assert access.find_build_for_user(owner, missing) is None
        assert access.find_project_for_user(owner, missing) is None


def test_a_found_build_brings_its_project_and_author(
    owner: Any, project: Project, django_assert_num_queries: Any
) -> None:
    build, _ = services.build_create(project=project, pipeline=PIPELINE, author=owner)

    with django_assert_num_queries(1):
        found = access.find_build_for_user(owner, build.pk)
        assert found is not None
        assert (found.project.slug, found.author.username) == ("shop", "olivia")
