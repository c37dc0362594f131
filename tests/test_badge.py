"""The status badge: GET /badge/{slug}.svg?branch=..., public for a public project and
with the badge token otherwise; the same 404 for an unknown project and a wrong token;
the project page's Markdown, and the token's rotation."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from builds import services
from builds.badges import BADGE_CSP, COLOURS
from builds.models import Build, Project, Role, Status
from tests.helpers import make_project, make_user

pytestmark = pytest.mark.django_db

PIPELINE = "steps: [{run: 'true'}]"
SVG = "{http://www.w3.org/2000/svg}"


def finished(project: Any, status: str, ref: str = "refs/heads/main", **fields: Any) -> Build:
    """A build of the project that ended with `status` (the worker's part skipped)."""
    build, _ = services.build_create(
        project=project, pipeline=PIPELINE, ref=ref, trigger=Build.Trigger.PUSH, **fields
    )
    Build.objects.filter(pk=build.pk).update(status=status, finished_at=timezone.now())
    return build


@pytest.fixture
def owner() -> Any:
    return make_user("owner")


@pytest.fixture
def public(owner: Any) -> Project:
    project = make_project(owner, "open")
    services.project_update(project=project, public=True)  # type: ignore[arg-type]
    return project  # type: ignore[return-value]


@pytest.fixture
def private(owner: Any) -> Project:
    return make_project(owner, "secretive")  # type: ignore[return-value]


def get(url: str, **headers: Any) -> Any:
    return Client().get(url, **headers)


def parsed(response: Any) -> ET.Element:
    """The SVG as XML: it must be well-formed."""
    return ET.fromstring(response.content)  # noqa: S314  (our own answer, under test)


def words(response: Any) -> tuple[str, str]:
    """The badge's two texts."""
    root = parsed(response)
    texts = [node.text for node in root.iter(f"{SVG}text")]
    assert len(texts) == 2
    return texts[0] or "", texts[1] or ""


def fill_of(response: Any) -> str:
    root = parsed(response)
    rects = list(root.iter(f"{SVG}rect"))
    return rects[-1].get("fill") or ""


def test_a_public_projects_badge_needs_no_token_and_says_passing(public: Project) -> None:
    finished(public, Status.SUCCESS)
    response = get("/badge/open.svg?branch=main")
    assert response.status_code == 200
    assert response["Content-Type"] == "image/svg+xml; charset=utf-8"
    assert words(response) == ("build", "passing")
    assert response["Cache-Control"] == "no-cache, max-age=0"
    assert re.fullmatch(r'"[0-9a-f]{32}"', response["ETag"])
    assert response["Content-Security-Policy"] == BADGE_CSP
    assert b"<script" not in response.content.lower()


def test_a_private_badge_needs_its_token(private: Project) -> None:
    finished(private, Status.FAILURE)
    assert get("/badge/secretive.svg").status_code == 404
    good = get(f"/badge/secretive.svg?token={private.badge_token}")
    assert good.status_code == 200
    assert words(good) == ("build", "failing")


def test_a_wrong_token_answers_exactly_as_an_unknown_project(private: Project) -> None:
    finished(private, Status.SUCCESS)
    answers = [
        get("/badge/secretive.svg?token=wrong"),
        get("/badge/secretive.svg"),
        get(f"/badge/secretive.svg?token={private.badge_token[:-1]}"),
        get("/badge/no-such-project.svg"),
        get(f"/badge/no-such-project.svg?token={private.badge_token}"),
        get("/badge/%3Cnot%20a%20slug%3E.svg"),
    ]
    first = answers[0]
    assert first.status_code == 404
    for answer in answers:
        assert answer.status_code == 404
        assert answer.content == first.content
        assert sorted(answer.items()) == sorted(first.items())
    assert words(first) == ("build", "not found")


def test_a_project_without_a_badge_token_shows_no_badge(private: Project) -> None:
    """Projects made before badge tokens have an empty one: an empty token opens
    nothing."""
    Project.objects.filter(pk=private.pk).update(badge_token="")
    finished(private, Status.SUCCESS)
    assert get("/badge/secretive.svg?token=").status_code == 404
    assert get("/badge/secretive.svg").status_code == 404


def test_the_branch_is_chosen_by_the_query_and_defaults_to_the_projects(
    public: Project,
) -> None:
    finished(public, Status.FAILURE, ref="refs/heads/main")
    finished(public, Status.SUCCESS, ref="main")  # a manual build names the branch bare
    finished(public, Status.ERROR, ref="refs/heads/dev")
    assert words(get("/badge/open.svg"))[1] == "passing"
    assert words(get("/badge/open.svg?branch=dev"))[1] == "error"
    assert words(get("/badge/open.svg?branch=elsewhere"))[1] == "unknown"
    services.project_update(project=public, default_branch="dev")
    assert words(get("/badge/open.svg"))[1] == "error"


def test_only_the_branchs_own_finished_builds_count(public: Project) -> None:
    finished(public, Status.SUCCESS)
    # Not finished yet: the badge keeps the last result.
    services.build_create(project=public, pipeline=PIPELINE, ref="refs/heads/main")
    # A pull request into main is not main's code yet.
    finished(public, Status.FAILURE, origin={"pr_number": 7, "target_branch": "main"})
    # Canceled because a newer build superseded it: says nothing of the branch.
    newer = finished(public, Status.SUCCESS, ref="refs/heads/other")
    stale = finished(public, Status.CANCELED)
    Build.objects.filter(pk=stale.pk).update(superseded_by=newer)
    # A tag's build is not the branch's.
    finished(public, Status.ERROR, ref="refs/tags/main")
    assert words(get("/badge/open.svg"))[1] == "passing"
    finished(public, Status.CANCELED)  # canceled by hand: shown
    assert words(get("/badge/open.svg"))[1] == "canceled"


@pytest.mark.parametrize(
    ("status", "word"),
    [
        (Status.SUCCESS, "passing"),
        (Status.FAILURE, "failing"),
        (Status.ERROR, "error"),
        (Status.CANCELED, "canceled"),
        (None, "unknown"),
    ],
)
def test_each_status_has_its_word_and_the_dashboards_colour(
    public: Project, status: str | None, word: str
) -> None:
    if status is not None:
        finished(public, status)
    response = get("/badge/open.svg")
    assert words(response) == ("build", word)
    assert fill_of(response) == COLOURS[word]
    css = (Path(__file__).parents[1] / "static/goci.css").read_text()
    if status is not None:
        assert f"--{status}: {COLOURS[word]};" in css


def test_an_unchanged_badge_answers_304_to_its_etag(public: Project) -> None:
    finished(public, Status.SUCCESS)
    first = get("/badge/open.svg")
    etag = first["ETag"]
    again = get("/badge/open.svg", HTTP_IF_NONE_MATCH=etag)
    assert again.status_code == 304
    assert again.content == b""
    assert again["ETag"] == etag
    assert again["Cache-Control"] == "no-cache, max-age=0"
    weak = get("/badge/open.svg", HTTP_IF_NONE_MATCH=f'"other", W/{etag}')
    assert weak.status_code == 304
    finished(public, Status.FAILURE)
    changed = get("/badge/open.svg", HTTP_IF_NONE_MATCH=etag)
    assert changed.status_code == 200
    assert changed["ETag"] != etag
    assert words(changed)[1] == "failing"


def test_odd_branch_names_are_escaped_in_the_svg(public: Project) -> None:
    branch = "<script>alert('x')</script>&\"]]>"
    finished(public, Status.SUCCESS, ref=f"refs/heads/{branch}")
    response = Client().get("/badge/open.svg", {"branch": branch})
    assert response.status_code == 200
    assert b"<script" not in response.content
    root = parsed(response)
    title = root.find(f"{SVG}title")
    assert title is not None
    assert title.text == f"open on {branch}: build passing"
    assert words(response)[1] == "passing"


@pytest.mark.parametrize(
    "query",
    [
        "branch=%00",
        "branch=main%00",
        "token=%00",
        "branch=%01x",
        "branch=" + "b" * 10_000_000,
        "token=" + "t" * 10_000_000,
        "branch=%ED%A0%80",  # a lone surrogate, as UTF-8 bytes
        "branch=%F0%9F%98",  # a cut UTF-8 sequence
        "branch=" + "9" * 400,
        "&".join(f"f{n}=1" for n in range(5000)),
    ],
    ids=lambda q: q[:30],
)
def test_hostile_query_strings_are_4xx_never_500(private: Project, query: str) -> None:
    for slug in ("secretive", "no-such-project"):
        response = get(f"/badge/{slug}.svg?{query}&token={private.badge_token}")
        assert 400 <= response.status_code < 500 or response.status_code == 200, query
        assert response.status_code != 500


@pytest.mark.parametrize(
    "slug", ["%00", "a%00b", "%ED%A0%80", "x" * 10_000_000, "9" * 400, "..", "%2F"]
)
def test_hostile_slugs_are_the_same_404(slug: str) -> None:
    unknown = get("/badge/no-such-project.svg")
    response = get(f"/badge/{slug}.svg")
    assert response.status_code == 404
    if "%2F" not in slug:  # a slash is not in the route at all: Django's own 404
        assert response.content == unknown.content


def test_the_project_page_offers_the_markdown_with_the_token_to_maintainers(
    owner: Any, private: Project, settings: Any
) -> None:
    viewer = make_user("viewer")
    services.member_add(project=private, user=viewer, role=Role.VIEWER)  # type: ignore[arg-type]
    client = Client()
    client.force_login(owner)
    page = client.get("/projects/secretive/").content.decode()
    markdown = (
        f"[![build](http://testserver/badge/secretive.svg?branch=main&amp;token="
        f"{private.badge_token})](http://testserver/projects/secretive/)"
    )
    assert markdown in page
    assert "Rotate badge token" in page
    settings.GOCI_PUBLIC_URL = "https://ci.example.com"
    page = client.get("/projects/secretive/").content.decode()
    assert "[![build](https://ci.example.com/badge/secretive.svg?branch=main&amp;token=" in page
    client.force_login(viewer)
    page = client.get("/projects/secretive/").content.decode()
    assert private.badge_token not in page
    assert "Rotate badge token" not in page
    assert "its maintainers can give you the badge" in page


def test_a_public_projects_markdown_has_no_token_and_is_for_every_member(
    owner: Any, public: Project
) -> None:
    viewer = make_user("viewer")
    services.member_add(project=public, user=viewer, role=Role.VIEWER)  # type: ignore[arg-type]
    client = Client()
    client.force_login(viewer)
    page = client.get("/projects/open/").content.decode()
    assert (
        "[![build](http://testserver/badge/open.svg?branch=main)](http://testserver/projects/open/)"
        in page
    )
    assert public.badge_token not in page


def test_rotating_the_token_retires_the_old_badge_url(owner: Any, private: Project) -> None:
    finished(private, Status.SUCCESS)
    old = private.badge_token
    maintainer = make_user("maintainer")
    services.member_add(project=private, user=maintainer, role=Role.MAINTAINER)  # type: ignore[arg-type]
    client = Client()
    client.force_login(maintainer)
    response = client.post("/projects/secretive/badge/rotate", follow=True)
    assert response.status_code == 200
    private.refresh_from_db()
    assert private.badge_token not in ("", old)
    assert get(f"/badge/secretive.svg?token={old}").status_code == 404
    assert get(f"/badge/secretive.svg?token={private.badge_token}").status_code == 200
    page = response.content.decode()
    assert "The badge has a new token" in page
    assert private.badge_token in page  # the new Markdown


def test_only_maintainers_rotate_and_strangers_learn_nothing(owner: Any, private: Project) -> None:
    developer = make_user("developer")
    services.member_add(project=private, user=developer, role=Role.DEVELOPER)  # type: ignore[arg-type]
    old = private.badge_token
    client = Client()
    client.force_login(developer)
    assert client.post("/projects/secretive/badge/rotate").status_code == 403
    client.force_login(make_user("outsider"))
    assert client.post("/projects/secretive/badge/rotate").status_code == 404
    assert client.post("/projects/nothing-here/badge/rotate").status_code == 404
    assert Client().post("/projects/secretive/badge/rotate").status_code == 302  # sign in
    assert client.get("/projects/secretive/badge/rotate").status_code == 405
    private.refresh_from_db()
    assert private.badge_token == old
