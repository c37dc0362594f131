"""Projects and their members on the API: read, change, delete; add, change the role
of and remove members; owners stay owners unless an owner says otherwise."""

from __future__ import annotations

from typing import Any

import pytest

from builds import services
from builds.models import Build, Membership, Project, Role
from tests.helpers import api_call, make_project, make_token, make_user

PIPELINE = "steps:\n  - name: Build\n    run: make\n"


@pytest.fixture
def owner(db: None) -> Any:
    return make_user("olivia")


@pytest.fixture
def project(owner: Any) -> Any:
    return make_project(owner, "shop")


@pytest.fixture
def token(owner: Any) -> str:
    return make_token(owner)


def member(project: Any, name: str, role: str) -> str:
    """A new user with this role on the project; their token."""
    user = make_user(name)
    services.member_add(project=project, user=user, role=role)  # type: ignore[arg-type]
    return make_token(user)


def roles(project: Any) -> dict[str, str]:
    return dict(Membership.objects.filter(project=project).values_list("user__username", "role"))


# ---------------------------------------------------------------------------
# A project


def test_a_member_reads_the_project_with_their_role(project: Any) -> None:
    token = member(project, "vera", Role.VIEWER)

    response = api_call("get", "/api/projects/shop", token)

    assert response.status_code == 200
    body = response.json()
    assert (body["id"], body["slug"], body["name"], body["role"]) == (
        project.pk,
        "shop",
        "shop",
        "viewer",
    )
    assert body["default_branch"] == "main"
    assert body["pipeline_path"] == ".goci.yml"
    assert api_call("get", f"/api/projects/{project.pk}", token).json() == body


def test_creating_a_project_answers_with_you_as_its_owner(owner: Any, token: str) -> None:
    response = api_call("post", "/api/projects", token, {"slug": "shop"})

    assert response.status_code == 201
    assert response.json()["role"] == "owner"
    assert [p["role"] for p in api_call("get", "/api/projects", token).json()] == ["owner"]


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        ("get", "/api/projects/shop", None),
        ("patch", "/api/projects/shop", {"name": "x"}),
        ("delete", "/api/projects/shop", None),
        ("get", "/api/projects/shop/members", None),
        ("post", "/api/projects/shop/members", {"username": "oscar"}),
        ("patch", "/api/projects/shop/members/olivia", {"role": "viewer"}),
        ("delete", "/api/projects/shop/members/olivia", None),
    ],
)
def test_an_outsider_gets_the_404_of_a_missing_project(
    project: Any, method: str, url: str, body: object
) -> None:
    outsider = make_token(make_user("oscar"))

    foreign = api_call(method, url, outsider, body)
    Project.objects.all().delete()
    missing = api_call(method, url, outsider, body)

    assert foreign.status_code == missing.status_code == 404
    assert foreign.json() == missing.json() == {"detail": "project 'shop' not found"}


def test_a_maintainer_changes_the_settings_and_what_is_left_out_stays(project: Any) -> None:
    token = member(project, "mae", Role.MAINTAINER)

    response = api_call(
        "patch",
        "/api/projects/shop",
        token,
        {"name": "The Shop", "repo_url": "https://git.example/shop.git", "pipeline_path": "ci.yml"},
    )

    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["name"], body["repo_url"], body["pipeline_path"], body["default_branch"]) == (
        "The Shop",
        "https://git.example/shop.git",
        "ci.yml",
        "main",
    )
    assert body["role"] == "maintainer"
    project.refresh_from_db()
    assert (project.name, project.pipeline_path, project.default_branch) == (
        "The Shop",
        "ci.yml",
        "main",
    )


def test_an_empty_name_becomes_the_slug_again(project: Any, token: str) -> None:
    api_call("patch", "/api/projects/shop", token, {"name": "The Shop"})

    assert api_call("patch", "/api/projects/shop", token, {"name": ""}).json()["name"] == "shop"


@pytest.mark.parametrize(
    ("body", "path", "words"),
    [
        ({"slug": "other"}, "slug", "Extra inputs are not permitted"),
        ({"nmae": "typo"}, "nmae", "Extra inputs are not permitted"),
        ({"name": None}, "name", "valid string"),
        ({"default_branch": ""}, "default_branch", "at least 1 character"),
        ({"pipeline_path": "x" * 201}, "pipeline_path", "at most 200 characters"),
        ({"repo_url": 5}, "repo_url", "valid string"),
    ],
)
def test_a_bad_setting_is_422_naming_it_and_nothing_changes(
    project: Any, token: str, body: dict[str, Any], path: str, words: str
) -> None:
    response = api_call("patch", "/api/projects/shop", token, body)

    assert response.status_code == 422
    [error] = response.json()["errors"]
    assert error["path"] == path
    assert words in error["message"]
    assert Project.objects.filter(slug="shop", name="shop", default_branch="main").exists()


def test_the_owner_deletes_the_project_with_its_builds(project: Any, token: str) -> None:
    services.build_create(project=project, pipeline=PIPELINE)

    response = api_call("delete", "/api/projects/shop", token)

    assert response.status_code == 204
    assert response.content == b""
    assert Project.objects.count() == Build.objects.count() == Membership.objects.count() == 0
    assert api_call("get", "/api/projects/shop", token).status_code == 404


def test_a_maintainer_may_not_delete_and_is_told_who_may(project: Any) -> None:
    token = member(project, "mae", Role.MAINTAINER)

    response = api_call("delete", "/api/projects/shop", token)

    assert response.status_code == 403
    assert response.json() == {
        "detail": "this needs the owner role (or higher) on project 'shop'; you are a maintainer"
    }
    assert Project.objects.filter(slug="shop").exists()


# ---------------------------------------------------------------------------
# Members


def test_members_are_listed_by_username_with_their_roles(project: Any) -> None:
    member(project, "zed", Role.MAINTAINER)
    token = member(project, "vera", Role.VIEWER)

    response = api_call("get", "/api/projects/shop/members", token)

    assert response.status_code == 200
    assert response.json() == [
        {"username": "olivia", "role": "owner"},
        {"username": "vera", "role": "viewer"},
        {"username": "zed", "role": "maintainer"},
    ]


def test_listing_members_takes_the_same_queries_for_2_or_20(
    project: Any, token: str, django_assert_max_num_queries: Any
) -> None:
    member(project, "m0", Role.VIEWER)
    # The token (look-up and last use), the project, the members with their users.
    with django_assert_max_num_queries(4) as two:
        assert len(api_call("get", "/api/projects/shop/members", token).json()) == 2
    for n in range(1, 19):
        member(project, f"m{n}", Role.VIEWER)
    with django_assert_max_num_queries(4) as twenty:
        assert len(api_call("get", "/api/projects/shop/members", token).json()) == 20

    assert len(two) == len(twenty)


def test_a_new_member_is_a_developer_unless_a_role_is_given(project: Any, token: str) -> None:
    make_user("dev")
    make_user("vera")

    dev = api_call("post", "/api/projects/shop/members", token, {"username": "dev"})
    vera = api_call(
        "post", "/api/projects/shop/members", token, {"username": "vera", "role": "viewer"}
    )

    assert (dev.status_code, vera.status_code) == (201, 201)
    assert dev.json() == {"username": "dev", "role": "developer"}
    assert vera.json() == {"username": "vera", "role": "viewer"}
    assert roles(project) == {"olivia": "owner", "dev": "developer", "vera": "viewer"}


def test_adding_a_member_twice_is_409(project: Any, token: str) -> None:
    member(project, "dev", Role.DEVELOPER)

    response = api_call(
        "post", "/api/projects/shop/members", token, {"username": "dev", "role": "maintainer"}
    )

    assert response.status_code == 409
    assert response.json() == {"detail": "dev is already a member of shop; change their role"}
    assert roles(project)["dev"] == "developer"


def test_an_unknown_username_is_422_naming_the_field(project: Any, token: str) -> None:
    response = api_call("post", "/api/projects/shop/members", token, {"username": "nobody"})

    assert response.status_code == 422
    body = response.json()
    assert body["detail"].startswith("invalid request: body username: there is no user 'nobody'")
    assert [(e["location"], e["path"]) for e in body["errors"]] == [("body", "username")]
    assert roles(project) == {"olivia": "owner"}


def test_an_unknown_role_is_422_listing_the_roles(project: Any, token: str) -> None:
    make_user("dev")

    response = api_call(
        "post", "/api/projects/shop/members", token, {"username": "dev", "role": "admin"}
    )

    assert response.status_code == 422
    detail = response.json()["detail"]
    for role in ("viewer", "developer", "maintainer", "owner"):
        assert f"'{role}'" in detail


def test_a_maintainer_changes_and_removes_members_below_owner(project: Any) -> None:
    token = member(project, "mae", Role.MAINTAINER)
    member(project, "dev", Role.DEVELOPER)
    member(project, "vera", Role.VIEWER)

    promoted = api_call("patch", "/api/projects/shop/members/vera", token, {"role": "maintainer"})
    removed = api_call("delete", "/api/projects/shop/members/dev", token)

    assert promoted.status_code == 200
    assert promoted.json() == {"username": "vera", "role": "maintainer"}
    assert removed.status_code == 204
    assert roles(project) == {"olivia": "owner", "mae": "maintainer", "vera": "maintainer"}


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        ("post", "/api/projects/shop/members", {"username": "newbie", "role": "owner"}),
        ("patch", "/api/projects/shop/members/dev", {"role": "owner"}),
        ("patch", "/api/projects/shop/members/olivia", {"role": "developer"}),
        ("delete", "/api/projects/shop/members/olivia", None),
    ],
)
def test_only_an_owner_makes_changes_or_removes_an_owner(
    project: Any, method: str, url: str, body: object
) -> None:
    token = member(project, "mae", Role.MAINTAINER)
    member(project, "dev", Role.DEVELOPER)
    make_user("newbie")
    before = roles(project)

    response = api_call(method, url, token, body)

    assert response.status_code == 403
    assert response.json() == {
        "detail": "this needs the owner role (or higher) on project 'shop'; you are a maintainer"
    }
    assert roles(project) == before


def test_making_a_member_an_owner_transfers_the_project(project: Any, token: str) -> None:
    member(project, "tim", Role.DEVELOPER)

    made = api_call("patch", "/api/projects/shop/members/tim", token, {"role": "owner"})
    stepped_down = api_call(
        "patch", "/api/projects/shop/members/olivia", token, {"role": "maintainer"}
    )

    assert (made.status_code, stepped_down.status_code) == (200, 200)
    assert roles(project) == {"olivia": "maintainer", "tim": "owner"}
    # olivia is a maintainer now: owners are tim's to change.
    again = api_call("patch", "/api/projects/shop/members/olivia", token, {"role": "owner"})
    assert again.status_code == 403


@pytest.mark.parametrize(
    ("method", "body", "words"),
    [
        ("patch", {"role": "maintainer"}, "make someone else an owner first"),
        ("delete", None, "make someone else an owner first, or delete it"),
    ],
)
def test_the_last_owner_cannot_step_down_or_leave(
    project: Any, token: str, method: str, body: object, words: str
) -> None:
    response = api_call(method, "/api/projects/shop/members/olivia", token, body)

    assert response.status_code == 422
    assert response.json()["detail"] == f"a project needs an owner: {words}"
    assert roles(project) == {"olivia": "owner"}


def test_one_of_two_owners_may_leave(project: Any, token: str) -> None:
    member(project, "otto", Role.OWNER)

    response = api_call("delete", "/api/projects/shop/members/olivia", token)

    assert response.status_code == 204
    assert roles(project) == {"otto": "owner"}
    assert api_call("get", "/api/projects/shop", token).status_code == 404


@pytest.mark.parametrize("method", ["patch", "delete"])
def test_a_user_who_is_not_a_member_is_404(project: Any, token: str, method: str) -> None:
    make_user("oscar")

    response = api_call(method, "/api/projects/shop/members/oscar", token, {"role": "viewer"})

    assert response.status_code == 404
    assert response.json() == {"detail": "member 'oscar' of project 'shop' not found"}


def test_a_removed_member_loses_the_project_at_once(project: Any, token: str) -> None:
    dev = member(project, "dev", Role.DEVELOPER)
    build, _ = services.build_create(project=project, pipeline=PIPELINE)
    assert api_call("get", f"/api/builds/{build.pk}", dev).status_code == 200

    assert api_call("delete", "/api/projects/shop/members/dev", token).status_code == 204

    assert api_call("get", f"/api/builds/{build.pk}", dev).status_code == 404
    assert api_call("get", "/api/projects/shop", dev).status_code == 404
    assert api_call("get", "/api/projects", dev).json() == []
