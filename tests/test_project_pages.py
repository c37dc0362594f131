"""The pages that make a fresh dashboard usable: the projects list, "New project", a
project's settings (and its danger zone) and its members, and the empty dashboard that
says what to do next."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from builds import services
from builds.models import Build, Membership, Project, Role, Status
from runners import queue
from runners.queue import job_claim
from tests.helpers import make_project, make_user
from tests.queue_helpers import submit

pytestmark = pytest.mark.django_db

PIPELINE = "steps:\n  - {name: hello, run: echo hello}\n"
HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def ann() -> User:
    return make_user("ann")  # type: ignore[return-value]


@pytest.fixture
def web(ann: User) -> Project:
    return make_project(ann, "web")  # type: ignore[return-value]


def login(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def member(project: Project, name: str, role: str) -> User:
    user = make_user(name)
    services.member_add(project=project, user=user, role=role)  # type: ignore[arg-type]
    return user  # type: ignore[return-value]


def html(response: Any) -> str:
    return response.content.decode()


def roles(project: Project) -> dict[str, str]:
    return dict(Membership.objects.filter(project=project).values_list("user__username", "role"))


def finish(build: Build, status: str) -> None:
    job = job_claim(worker="w")
    assert job is not None
    queue.job_finish(job_id=job.pk, attempt=job.attempt, status=status)


# ---------------------------------------------------------------------------
# The projects page


def test_the_projects_page_lists_my_projects_with_their_last_build_and_my_role(
    ann: User, web: Project
) -> None:
    finish(submit(web, PIPELINE), Status.SUCCESS)
    last = submit(web, PIPELINE)
    finish(last, Status.FAILURE)
    api = make_project(make_user("bob"), "api")
    services.member_add(project=api, user=ann, role=Role.VIEWER)  # type: ignore[arg-type]
    make_project(make_user("carl"), "secret")
    page = html(login(ann).get("/projects/"))
    rows = re.findall(r'<a class="build-link" href="/projects/([\w-]+)/">', page)
    assert rows == ["api", "web"]  # mine only, by slug
    web_row = page[page.index('href="/projects/web/"') :]
    assert web_row.index('class="badge status-failure">failure<') < web_row.index("</tr>")
    assert f'href="/builds/{last.pk}/">#2</a>' in web_row
    assert " ago</time>" in web_row
    assert ">owner</span>" in web_row
    api_row = page[page.index('href="/projects/api/"') :]
    assert "no builds yet" in api_row[: api_row.index("</tr>")]
    assert ">viewer</span>" in api_row
    assert 'href="/projects/new"' in page
    assert "secret" not in page


@pytest.mark.parametrize("count", [2, 12])
def test_the_projects_page_costs_the_same_queries_for_2_or_12_projects(
    ann: User, count: int, django_assert_num_queries: Any
) -> None:
    for n in range(count):
        project = make_project(ann, f"p{n}")
        finish(submit(project, PIPELINE), Status.SUCCESS)  # type: ignore[arg-type]
    client = login(ann)
    # Session, user, and the projects with their last build in one query.
    with django_assert_num_queries(3):
        page = html(client.get("/projects/"))
    assert page.count('class="badge status-success"') == count


def test_the_nav_links_to_the_projects(ann: User) -> None:
    assert '<a href="/projects/">Projects</a>' in html(login(ann).get("/"))


# ---------------------------------------------------------------------------
# The empty dashboard says what to do next


def test_a_dashboard_without_projects_says_to_create_the_first_one(ann: User) -> None:
    page = html(login(ann).get("/"))
    assert '<a class="button primary" href="/projects/new">Create your first project</a>' in page
    assert "POST /api/builds" in page
    assert page.count('class="card next-steps"') == 1


def test_a_dashboard_with_projects_but_no_builds_says_how_to_run_one(
    ann: User, web: Project
) -> None:
    client = login(ann)
    page = html(client.get("/"))
    assert "Run your first build" in page
    assert 'href="/projects/web/">web</a>' in page
    assert "curl -X POST http://testserver/api/builds" in page
    assert '"project": "web"' in page
    assert "goci token create --user ann" in page
    assert "Create your first project" not in page
    submit(web, PIPELINE)
    assert "next-steps" not in html(client.get("/"))
    # Filters that match nothing are not a fresh dashboard.
    assert "next-steps" not in html(client.get("/", {"status": "failure"}))


def test_a_project_without_builds_says_how_to_run_one(ann: User, web: Project) -> None:
    page = html(login(ann).get("/projects/web/"))
    assert "No builds yet" in page
    assert 'href="#run-title"' in page
    assert '<code>"project": "web"</code>' in page


# ---------------------------------------------------------------------------
# New project


def test_a_new_project_makes_me_its_owner_and_opens_its_page(ann: User) -> None:
    client = login(ann)
    page = html(client.get("/projects/new"))
    for name in ("slug", "name", "repo_url", "default_branch"):
        assert f'name="{name}"' in page
    assert 'name="csrfmiddlewaretoken"' in page
    assert 'action="/projects/new"' in page
    response = client.post(
        "/projects/new",
        {
            "slug": "shop",
            "name": "The shop",
            "repo_url": "git@git.example.com:shop.git",
            "default_branch": "trunk",
        },
    )
    assert response.status_code == 302
    assert response["Location"] == "/projects/shop/"
    project = Project.objects.get(slug="shop")
    assert (project.name, project.repo_url, project.default_branch) == (
        "The shop",
        "git@git.example.com:shop.git",
        "trunk",
    )
    assert roles(project) == {"ann": Role.OWNER}
    page = html(client.get("/projects/shop/"))
    assert "Project shop created: you are its owner." in page
    assert 'name="ref" value="trunk"' in page
    # A name is optional: it defaults to the slug.
    client.post("/projects/new", {"slug": "bare", "default_branch": "main"})
    assert Project.objects.get(slug="bare").name == "bare"


@pytest.mark.parametrize(
    ("slug", "problem"),
    [
        ("", "This field is required."),
        ("has space", "A slug is 1 to 100 letters, digits, &#x27;-&#x27; or &#x27;_&#x27;"),
        ("ünï", "A slug is 1 to 100 letters"),
        ("a/b", "A slug is 1 to 100 letters"),
        ("x" * 101, "Ensure this value has at most 100 characters (it has 101)."),
        ("12345", "A slug needs a letter, &#x27;-&#x27; or &#x27;_&#x27; so that it cannot"),
        ("web", "This slug is taken: choose another one."),
    ],
)
def test_a_new_project_with_a_bad_or_taken_slug_says_why_beside_the_slug(
    ann: User, web: Project, slug: str, problem: str
) -> None:
    response = login(ann).post(
        "/projects/new", {"slug": slug, "name": "N", "default_branch": "main"}
    )
    assert response.status_code == 200
    page = html(response)
    errors = re.search(r'<ul class="errorlist" id="id_slug_error">(.*?)</ul>', page, re.S)
    assert errors, page
    assert problem in errors.group(1)
    assert 'aria-invalid="true"' in page
    assert 'value="N"' in page  # what was typed is kept
    assert Project.objects.count() == 1


def test_a_new_project_needs_a_default_branch(ann: User) -> None:
    page = html(login(ann).post("/projects/new", {"slug": "shop", "default_branch": ""}))
    assert re.search(r'id="id_default_branch_error">\s*<li>This field is required', page)
    assert not Project.objects.exists()


# ---------------------------------------------------------------------------
# Settings


def test_a_maintainer_edits_the_settings(ann: User, web: Project) -> None:
    mona = member(web, "mona", Role.MAINTAINER)
    client = login(mona)
    page = html(client.get("/projects/web/settings"))
    assert 'name="default_branch" value="main"' in page
    assert 'name="pipeline_path" value=".goci.yml"' in page
    assert "Danger zone" not in page  # an owner's
    response = client.post(
        "/projects/web/settings",
        {
            "name": "Web site",
            "repo_url": "https://git.example.com/web.git",
            "default_branch": "develop",
            "pipeline_path": "ci/pipeline.yml",
        },
    )
    assert response["Location"] == "/projects/web/settings"
    web.refresh_from_db()
    assert (web.name, web.repo_url, web.default_branch, web.pipeline_path) == (
        "Web site",
        "https://git.example.com/web.git",
        "develop",
        "ci/pipeline.yml",
    )
    assert web.slug == "web"  # the slug is not a setting
    assert "Settings saved." in html(client.get("/projects/web/settings"))
    assert 'name="ref" value="develop"' in html(client.get("/projects/web/"))


def test_settings_with_a_problem_are_shown_again_with_it(ann: User, web: Project) -> None:
    response = login(ann).post(
        "/projects/web/settings",
        {"name": "Renamed", "default_branch": "", "pipeline_path": "x" * 201},
    )
    assert response.status_code == 200
    page = html(response)
    assert re.search(r'id="id_default_branch_error">\s*<li>This field is required', page)
    assert "at most 200 characters" in page
    assert 'value="Renamed"' in page
    web.refresh_from_db()
    assert web.name == "web"


def test_deleting_a_project_needs_its_slug_typed(ann: User, web: Project) -> None:
    submit(web, PIPELINE)
    client = login(ann)
    page = html(client.get("/projects/web/settings"))
    assert "Danger zone" in page
    assert 'action="/projects/web/delete"' in page
    response = client.post("/projects/web/delete", {"confirm": "WEB"})
    assert response.status_code == 200
    assert "Type web exactly to delete this project; nothing was deleted." in html(response)
    assert Project.objects.filter(slug="web").exists()
    response = client.post("/projects/web/delete", {"confirm": "web"})
    assert response["Location"] == "/projects/"
    assert not Project.objects.exists()
    assert not Build.objects.exists()
    assert "Project web was deleted with all its builds." in html(client.get("/projects/"))
    assert client.get("/projects/web/").status_code == 404


def test_an_owner_transfers_the_project_to_a_member(ann: User, web: Project) -> None:
    member(web, "dora", Role.DEVELOPER)
    member(web, "olga", Role.OWNER)
    client = login(ann)
    page = html(client.get("/projects/web/settings"))
    choices = re.findall(r'<option value="(\w*)"', page[page.index('name="username"') :])
    assert choices == ["", "dora"]  # not the owners
    make_user("eve")  # not a member: a forged choice is refused
    page = html(client.post("/projects/web/transfer", {"username": "eve"}))
    assert "Select a valid choice. eve is not one of the available choices." in page
    response = client.post("/projects/web/transfer", {"username": "dora"})
    assert response["Location"] == "/projects/web/members"
    assert roles(web) == {"ann": Role.OWNER, "dora": Role.OWNER, "olga": Role.OWNER}
    assert "dora is now an owner of web." in html(client.get("/projects/web/members"))
    assert "Every member is an owner already." in html(client.get("/projects/web/settings"))


# ---------------------------------------------------------------------------
# Members


def test_every_member_sees_the_members_but_only_maintainers_get_the_controls(
    ann: User, web: Project
) -> None:
    vic = member(web, "vic", Role.VIEWER)
    mona = member(web, "mona", Role.MAINTAINER)
    page = html(login(vic).get("/projects/web/members"))
    assert re.findall(r'<span class="role role-(\w+)">', page) == ["owner", "maintainer", "viewer"]
    assert "<form" not in page[page.index('id="members"') :]
    assert "Your role here is viewer: ask a maintainer or an owner" in page
    page = html(login(mona).get("/projects/web/members"))
    # A maintainer changes and removes others, but not an owner, and is not offered it.
    assert 'action="/projects/web/members/vic"' in page
    assert 'action="/projects/web/members/vic/remove"' in page
    assert 'action="/projects/web/members/ann"' not in page
    assert '<option value="owner"' not in page
    assert 'action="/projects/web/members"' in page
    page = html(login(ann).get("/projects/web/members"))
    assert 'action="/projects/web/members/ann"' in page
    assert '<option value="owner"' in page


def test_a_maintainer_adds_a_member_by_username_with_a_role(ann: User, web: Project) -> None:
    make_user("bob")
    client = login(ann)
    response = client.post("/projects/web/members", {"username": "bob", "role": "viewer"})
    assert response["Location"] == "/projects/web/members"
    assert roles(web)["bob"] == Role.VIEWER
    assert "bob is now a viewer." in html(client.get("/projects/web/members"))
    # Twice: says so beside the name.
    page = html(client.post("/projects/web/members", {"username": "bob", "role": "developer"}))
    assert "Bob is already a member of web; change their role." in page
    assert roles(web)["bob"] == Role.VIEWER


def test_adding_an_unknown_user_says_there_is_no_such_user(ann: User, web: Project) -> None:
    response = login(ann).post("/projects/web/members", {"username": "nobody", "role": "viewer"})
    assert response.status_code == 200
    page = html(response)
    assert "There is no user named &#x27;nobody&#x27;" in page
    assert "goci user add NAME" in page
    assert 'value="nobody"' in page
    assert roles(web) == {"ann": Role.OWNER}


def test_members_change_by_htmx_answer_with_the_list_alone(ann: User, web: Project) -> None:
    member(web, "dora", Role.DEVELOPER)
    make_user("bob")
    client = login(ann)
    fragment = html(client.post("/projects/web/members/dora", {"role": "maintainer"}, **HTMX))
    assert fragment.lstrip().startswith('<section id="members"')
    assert "<html" not in fragment
    assert "dora is now a maintainer." in fragment
    assert 'hx-post="/projects/web/members/dora"' in fragment
    fragment = html(
        client.post("/projects/web/members", {"username": "bob", "role": "viewer"}, **HTMX)
    )
    assert "bob is now a viewer." in fragment
    fragment = html(client.post("/projects/web/members/bob/remove", **HTMX))
    assert "bob is no longer a member of web." in fragment
    assert roles(web) == {"ann": Role.OWNER, "dora": Role.MAINTAINER}
    # Nothing left over for the next page: htmx showed it.
    assert "is now" not in html(client.get("/projects/web/members"))


def test_changing_a_role_and_removing_a_member_without_javascript(ann: User, web: Project) -> None:
    member(web, "dora", Role.DEVELOPER)
    client = login(ann)
    response = client.post("/projects/web/members/dora", {"role": "viewer"})
    assert response["Location"] == "/projects/web/members"
    assert roles(web)["dora"] == Role.VIEWER
    response = client.post("/projects/web/members/dora/remove")
    assert response["Location"] == "/projects/web/members"
    assert "dora" not in roles(web)
    assert client.post("/projects/web/members/dora/remove").status_code == 404
    assert client.post("/projects/web/members/dora", {"role": "viewer"}).status_code == 404
    assert client.get("/projects/web/members/dora").status_code == 405
    page = html(client.post("/projects/web/members/ann", {"role": "chief"}))
    assert "Role of ann: choose a role." in page


def test_the_last_owner_stays_and_the_page_says_why(ann: User, web: Project) -> None:
    client = login(ann)
    for url, data, why in (
        ("/projects/web/members/ann", {"role": "maintainer"}, "ann stays an owner."),
        ("/projects/web/members/ann/remove", {}, "Cannot remove ann."),
    ):
        response = client.post(url, data)
        assert response.status_code == 200
        page = html(response)
        assert f"{why} A project needs an owner: make someone else an owner first" in page
        assert '<div class="form-errors" role="alert">' in page
    assert roles(web) == {"ann": Role.OWNER}
    # With a second owner, the first may step down.
    member(web, "olga", Role.OWNER)
    client.post("/projects/web/members/ann", {"role": "maintainer"})
    assert roles(web)["ann"] == Role.MAINTAINER


def test_only_owners_make_change_or_remove_owners(ann: User, web: Project) -> None:
    mona = member(web, "mona", Role.MAINTAINER)
    member(web, "dora", Role.DEVELOPER)
    make_user("bob")
    client = login(mona)
    for url, data in (
        ("/projects/web/members", {"username": "bob", "role": "owner"}),
        ("/projects/web/members/dora", {"role": "owner"}),
        ("/projects/web/members/ann", {"role": "viewer"}),
        ("/projects/web/members/ann/remove", {}),
    ):
        response = client.post(url, data)
        assert response.status_code == 403, url
        assert "needs the owner role" in html(response), url
    assert roles(web) == {"ann": Role.OWNER, "mona": Role.MAINTAINER, "dora": Role.DEVELOPER}
    # An owner may.
    login(ann).post("/projects/web/members/dora", {"role": "owner"})
    assert roles(web)["dora"] == Role.OWNER


def test_a_maintainer_who_leaves_goes_back_to_the_projects(ann: User, web: Project) -> None:
    mona = member(web, "mona", Role.MAINTAINER)
    client = login(mona)
    response = client.post("/projects/web/members/mona/remove")
    assert response["Location"] == "/projects/"
    assert "mona is no longer a member of web." in html(client.get("/projects/"))
    mona_again = member(Project.objects.get(slug="web"), "mona2", Role.MAINTAINER)
    response = login(mona_again).post("/projects/web/members/mona2/remove", **HTMX)
    assert response["HX-Redirect"] == "/projects/"


def test_a_maintainer_who_steps_down_sees_the_list_read_only(ann: User, web: Project) -> None:
    mona = member(web, "mona", Role.MAINTAINER)
    fragment = html(login(mona).post("/projects/web/members/mona", {"role": "viewer"}, **HTMX))
    assert "mona is now a viewer." in fragment
    assert "<form" not in fragment


# ---------------------------------------------------------------------------
# The project page shows what the role allows


@pytest.mark.parametrize(
    ("role", "run", "settings"),
    [
        (Role.VIEWER, False, False),
        (Role.DEVELOPER, True, False),
        (Role.MAINTAINER, True, True),
        (Role.OWNER, True, True),
    ],
)
def test_the_project_page_shows_only_what_the_role_allows(
    ann: User, web: Project, role: str, run: bool, settings: bool
) -> None:
    user = member(web, "someone", role)
    build = submit(web, PIPELINE)
    page = html(login(user).get("/projects/web/"))
    assert ('action="/projects/web/run"' in page) is run
    assert ('href="/projects/web/settings"' in page) is settings
    assert 'href="/projects/web/members"' in page
    assert f"Your role</dt><dd>{role}</dd>" in page
    if not run:
        assert "developers and up run builds" in page
    assert f'href="/builds/{build.pk}/"' in page
    # The queued build's Cancel button, only for those who may cancel.
    build_page = html(login(user).get(f"/builds/{build.pk}/"))
    assert (f'action="/builds/{build.pk}/cancel"' in build_page) is run
