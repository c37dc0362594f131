"""The dashboard's pages: the build list, a project, a build, raw logs, cancel, rerun."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from builds.models import Build, Job, Project, Status, Step
from runners import queue
from runners.queue import job_claim
from runners.worker import Worker
from tests.helpers import make_project, make_user
from tests.queue_helpers import submit

pytestmark = pytest.mark.django_db

TWO_STEPS = """
steps:
  - {name: hello, run: echo hello}
  - {name: count, run: seq 3}
"""
# build and lint need nothing; test needs both; deploy needs test: three columns.
DIAMOND = """
steps:
  - {name: build, run: 'true', needs: []}
  - {name: lint, run: 'true', needs: []}
  - {name: test, run: 'true', needs: [build, lint]}
  - {name: deploy, run: 'true', needs: [test]}
"""
HTMX = {"HTTP_HX_REQUEST": "true"}
PASSWORD = "a long passphrase"  # noqa: S105  (a test user's)


@pytest.fixture
def ann() -> User:
    return make_user("ann")  # type: ignore[return-value]


@pytest.fixture
def project(ann: User) -> Project:
    return make_project(ann, "web")  # type: ignore[return-value]


@pytest.fixture
def owner(client: Client, ann: User) -> Client:
    client.force_login(ann)
    return client


@pytest.fixture
def outsider(project: Project) -> Client:
    other = Client()
    other.force_login(make_user("mallory"))  # type: ignore[arg-type]
    make_project(User.objects.get(username="mallory"), "mallory-own")
    return other


def html(response: Any) -> str:
    return response.content.decode()


def finish(build: Build, status: str = Status.SUCCESS) -> None:
    """Settle a build as a worker would have (claim, steps, job)."""
    job = job_claim(worker="w")
    assert job is not None
    assert job.build_id == build.pk
    for step in Step.objects.filter(job=job):
        queue.step_start(job_id=job.pk, attempt=job.attempt, name=step.name)
        queue.step_finish(
            job_id=job.pk,
            attempt=job.attempt,
            name=step.name,
            status=status,
            exit_code=0 if status == Status.SUCCESS else 1,
            error=None,
            started=True,
        )
    queue.job_finish(job_id=job.pk, attempt=job.attempt, status=status)
    build.refresh_from_db()


# ---------------------------------------------------------------------------
# Signing in and who may see what


def test_anonymous_is_sent_to_sign_in(client: Client, project: Project) -> None:
    build = submit(project, TWO_STEPS)
    for url in (
        "/",
        "/projects/web/",
        f"/builds/{build.pk}/",
        f"/builds/{build.pk}/log.txt",
        f"/builds/{build.pk}/steps/0/raw",
    ):
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith("/login/?next="), url
    for url in (f"/builds/{build.pk}/cancel", f"/builds/{build.pk}/rerun", "/projects/web/run"):
        assert client.post(url)["Location"].startswith("/login/?next="), url
    build.refresh_from_db()
    assert build.status == Status.QUEUED
    assert Build.objects.count() == 1


def test_sign_in_shows_who_is_signed_in_and_sign_out_is_a_post(client: Client) -> None:
    user = User.objects.create_user("ann", password=PASSWORD)
    assert client.get("/login/").status_code == 200
    response = client.post("/login/", {"username": "ann", "password": PASSWORD})
    assert response.status_code == 302
    assert response["Location"] == "/"
    page = html(client.get("/"))
    assert "Signed in as <strong>ann</strong>" in page
    assert 'action="/logout/"' in page
    assert client.get("/logout/").status_code == 405  # a link or a prefetch cannot sign out
    response = client.post("/logout/")
    assert response["Location"] == "/login/"
    assert client.get("/")["Location"].startswith("/login/")
    assert user.is_active


def test_a_wrong_password_is_refused_on_the_sign_in_page(client: Client) -> None:
    User.objects.create_user("ann", password=PASSWORD)
    response = client.post("/login/", {"username": "ann", "password": "nope"})
    assert response.status_code == 200
    assert "enter a correct username and password" in html(response)


def test_outsider_gets_404_for_every_page_and_action(outsider: Client, project: Project) -> None:
    build = submit(project, TWO_STEPS)
    for url in (
        "/projects/web/",
        f"/builds/{build.pk}/",
        f"/builds/{build.pk}/log.txt",
        f"/builds/{build.pk}/steps/0/raw",
    ):
        assert outsider.get(url).status_code == 404, url
    for url in (f"/builds/{build.pk}/cancel", f"/builds/{build.pk}/rerun", "/projects/web/run"):
        assert outsider.post(url, {"pipeline": TWO_STEPS}).status_code == 404, url
    build.refresh_from_db()
    assert (build.status, build.cancel_requested) == (Status.QUEUED, False)
    assert Build.objects.count() == 1
    # Missing looks the same as foreign.
    assert outsider.get("/builds/999999/").status_code == 404
    assert outsider.get("/projects/nope/").status_code == 404
    assert "web" not in html(outsider.get("/"))


# ---------------------------------------------------------------------------
# The dashboard


def test_dashboard_lists_the_users_builds_newest_first(
    owner: Client, project: Project, ann: User
) -> None:
    first = submit(project, TWO_STEPS, ref="refs/heads/main", commit="0123456789abcdef")
    finish(first, Status.FAILURE)
    second = submit(project, TWO_STEPS, ref="feature-x", author=ann, trigger="manual")
    other = make_project(make_user("bob"), "other")
    submit(other, TWO_STEPS)  # type: ignore[arg-type]
    page = html(owner.get("/"))
    rows = re.findall(r'href="/builds/(\d+)/">#(\d+)</a>', page)
    assert rows == [(str(second.pk), "2"), (str(first.pk), "1")]
    assert 'class="badge status-failure">failure</span>' in page
    assert 'class="badge status-queued">queued</span>' in page
    assert "<code>main</code>" in page  # the branch, not refs/heads/main
    assert "<code>feature-x</code>" in page
    assert ">0123456<" in page
    assert "manual" in page
    assert "by ann" in page
    assert " ago</time>" in page
    assert "other" not in page


def test_the_dashboard_filters_by_project_status_and_branch(owner: Client, ann: User) -> None:
    web = make_project(ann, "web")
    api = make_project(ann, "api")
    main = submit(web, TWO_STEPS, ref="refs/heads/main")  # type: ignore[arg-type]
    finish(main)
    feature = submit(web, TWO_STEPS, ref="feature")  # type: ignore[arg-type]
    on_api = submit(api, TWO_STEPS, ref="main")  # type: ignore[arg-type]

    def listed(**query: str) -> set[int]:
        page = html(owner.get("/", query))
        return {int(pk) for pk in re.findall(r'href="/builds/(\d+)/"', page)}

    assert listed() == {main.pk, feature.pk, on_api.pk}
    assert listed(project="web") == {main.pk, feature.pk}
    assert listed(status="queued") == {feature.pk, on_api.pk}
    assert listed(branch="main") == {main.pk, on_api.pk}
    assert listed(branch="refs/heads/main") == {main.pk, on_api.pk}
    assert listed(project="web", status="success", branch="main") == {main.pk}
    # The form keeps its state: the URL is the filter.
    page = html(owner.get("/", {"project": "api", "status": "queued", "branch": "main"}))
    assert '<option value="api" selected>' in page
    assert '<option value="queued" selected>' in page
    assert 'name="branch" value="main"' in page
    # Another user's project is not a choice: no builds, and why.
    make_project(make_user("bob"), "secret")
    page = html(owner.get("/", {"project": "secret"}))
    assert "Select a valid choice" in page
    assert "No builds match these filters." in page


def test_the_dashboard_shows_50_builds_a_page_and_pages_keep_the_filters(
    owner: Client, project: Project
) -> None:
    builds = [submit(project, TWO_STEPS, ref="main") for _ in range(55)]
    page = html(owner.get("/"))
    assert len(re.findall(r'class="build-link"', page)) == 50
    assert f'href="/builds/{builds[-1].pk}/"' in page
    assert "Page 1" in page
    assert 'href="/?page=2"' in page
    second = html(owner.get("/", {"page": 2}))
    assert len(re.findall(r'class="build-link"', second)) == 5
    assert f'href="/builds/{builds[0].pk}/"' in second
    filtered = html(owner.get("/", {"branch": "main"}))
    assert 'href="/?branch=main&amp;page=2"' in filtered
    # A page past the end, or not a number, shows a page rather than an error.
    assert owner.get("/", {"page": "99"}).status_code == 200
    assert owner.get("/", {"page": "x"}).status_code == 200


def test_an_htmx_request_gets_the_table_which_polls_while_a_build_runs(
    owner: Client, project: Project
) -> None:
    build = submit(project, TWO_STEPS)
    response = owner.get("/", {"status": "queued"}, **HTMX)
    fragment = html(response)
    assert fragment.lstrip().startswith('<div id="build-table"')
    assert "<html" not in fragment
    assert "<form" not in fragment  # not the filters: only the table
    assert 'hx-get="/?status=queued"' in fragment
    assert 'hx-trigger="every 3s"' in fragment
    assert "HX-Request" in response["Vary"]
    page = html(owner.get("/"))
    assert "<html" in page
    assert 'hx-trigger="every 3s"' in page
    finish(build)
    # Nothing runs: the fragment has no trigger, so the polling ends.
    assert "hx-trigger" not in html(owner.get("/", **HTMX))
    assert "hx-trigger" not in html(owner.get("/"))


def test_a_history_restore_gets_the_whole_page(owner: Client, project: Project) -> None:
    page = html(owner.get("/", HTTP_HX_REQUEST="true", HTTP_HX_HISTORY_RESTORE_REQUEST="true"))
    assert "<html" in page


@pytest.mark.parametrize("count", [5, 60])
def test_the_dashboard_costs_the_same_queries_for_5_or_60_builds(
    owner: Client, ann: User, count: int, django_assert_max_num_queries: Any
) -> None:
    for n in range(count):
        project = make_project(ann, f"p{n % 3}") if n < 3 else Project.objects.get(slug=f"p{n % 3}")
        submit(project, TWO_STEPS, author=ann, ref="main")  # type: ignore[arg-type]
    # Session, user, the filter's projects, the count, the page (with project and author).
    with django_assert_max_num_queries(5):
        assert owner.get("/").status_code == 200
    with django_assert_max_num_queries(4):  # the table alone: no project choices
        assert owner.get("/", **HTMX).status_code == 200
    with django_assert_max_num_queries(6):
        assert owner.get("/projects/p0/").status_code == 200


# ---------------------------------------------------------------------------
# A project page and its "Run pipeline" form


def test_the_project_page_shows_history_settings_and_the_run_form(
    owner: Client, project: Project
) -> None:
    build = submit(project, TWO_STEPS)
    submit(make_project(make_user("bob"), "other"), TWO_STEPS)  # type: ignore[arg-type]
    page = html(owner.get("/projects/web/"))
    assert f'href="/builds/{build.pk}/"' in page
    assert re.findall(r'class="build-link"', page) == ['class="build-link"']
    assert "Default branch</dt><dd><code>main</code>" in page
    assert "Pipeline file</dt><dd><code>.goci.yml</code>" in page
    assert 'action="/projects/web/run"' in page
    assert 'enctype="multipart/form-data"' in page
    assert 'name="ref" value="main"' in page  # the default branch, to change at will
    # The project page's table is its own fragment too.
    fragment = html(owner.get("/projects/web/", **HTMX))
    assert fragment.lstrip().startswith('<div id="build-table"')
    assert 'hx-get="/projects/web/"' in fragment


def test_an_invalid_pipeline_is_shown_again_with_every_problem_and_no_build(
    owner: Client, project: Project
) -> None:
    text = (
        "steps:\n  - name: a\n    run: x\n    needs: [nope]\n"
        "  - name: a\n    run: y\n    bogus: 1\n"
    )
    response = owner.post("/projects/web/run", {"pipeline": text, "ref": "dev"})
    assert response.status_code == 200
    page = html(response)
    assert "<html" in page
    problems = re.findall(r'<code class="where">(\d+:\d+)</code>', page)
    assert len(problems) >= 3, page
    assert "4:" in " ".join(problems)  # needs: [nope] is on line 4
    assert "nope" in page
    assert "bogus" in page
    assert 'aria-invalid="true"' in page
    assert ">\n" + text.replace("'", "&#x27;") + "</textarea>" in page  # the text is kept
    assert 'name="ref" value="dev"' in page
    assert not Build.objects.exists()


def test_an_invalid_pipeline_sent_by_htmx_gets_the_form_alone(
    owner: Client, project: Project
) -> None:
    response = owner.post("/projects/web/run", {"pipeline": "steps: 3\n"}, **HTMX)
    assert response.status_code == 200
    fragment = html(response)
    assert fragment.lstrip().startswith('<form id="run-form"')
    assert "<html" not in fragment
    assert re.search(r'<code class="where">1:\d+</code>', fragment)
    assert "steps: 3" in fragment


def test_a_valid_pipeline_queues_a_build_and_opens_its_page(
    owner: Client, project: Project, ann: User
) -> None:
    response = owner.post(
        "/projects/web/run", {"pipeline": TWO_STEPS, "ref": "main", "commit": "abc123"}
    )
    build = Build.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/builds/{build.pk}/"
    assert (build.status, build.trigger, build.ref, build.commit) == (
        Status.QUEUED,
        Build.Trigger.MANUAL,
        "main",
        "abc123",
    )
    assert build.author == ann
    assert build.pipeline == TWO_STEPS
    # htmx follows HX-Redirect with a full page load of the build.
    response = owner.post("/projects/web/run", {"pipeline": TWO_STEPS}, **HTMX)
    assert response.status_code == 200
    assert response["HX-Redirect"] == f"/builds/{Build.objects.first().pk}/"  # type: ignore[union-attr]
    assert Build.objects.count() == 2


def test_a_pipeline_file_can_be_uploaded_and_its_problems_shown_in_the_text(
    owner: Client, project: Project
) -> None:
    upload = SimpleUploadedFile(".goci.yml", TWO_STEPS.encode(), content_type="text/yaml")
    response = owner.post("/projects/web/run", {"pipeline_file": upload, "ref": "main"})
    assert response.status_code == 302
    assert Build.objects.get().pipeline == TWO_STEPS
    bad = SimpleUploadedFile(".goci.yml", b"steps:\n  - name: x\n", content_type="text/yaml")
    page = html(owner.post("/projects/web/run", {"pipeline_file": bad}))
    assert re.search(r'<code class="where">2:\d+</code>', page)
    assert ">\nsteps:\n  - name: x\n</textarea>" in page  # now in the textarea, to fix there
    binary = SimpleUploadedFile(".goci.yml", b"\xff\xfe\x00", content_type="text/yaml")
    assert "not UTF-8 text" in html(owner.post("/projects/web/run", {"pipeline_file": binary}))
    assert Build.objects.count() == 1


def test_the_run_form_needs_a_pipeline_pasted_or_uploaded_not_both(
    owner: Client, project: Project
) -> None:
    assert "Paste the pipeline" in html(owner.post("/projects/web/run", {"pipeline": "  "}))
    upload = SimpleUploadedFile(".goci.yml", TWO_STEPS.encode())
    both = html(owner.post("/projects/web/run", {"pipeline": TWO_STEPS, "pipeline_file": upload}))
    assert "not both" in both
    assert owner.get("/projects/web/run").status_code == 405
    assert not Build.objects.exists()


# ---------------------------------------------------------------------------
# A build page


def test_the_build_page_follows_the_markup_contract_of_logview_js(
    owner: Client, project: Project
) -> None:
    build = submit(project, TWO_STEPS, ref="main", commit="0123456789abcdef")
    job = job_claim(worker="w")
    assert job is not None
    hello = Step.objects.get(job=job, name="hello")
    queue.log_append(job_id=job.pk, attempt=1, step_id=hello.pk, first_line=1, lines=["a", "b"])
    queue.log_append(job_id=job.pk, attempt=1, step_id=hello.pk, first_line=3, lines=["c"])
    page = html(owner.get(f"/builds/{build.pk}/"))
    assert (
        f'<div id="build" data-build-id="{build.pk}" data-ws-url="/ws/builds/{build.pk}/" '
        'data-status="running">'
    ) in page
    sections = re.findall(r'<section class="step" [^>]*>', page)
    assert sections == [
        f'<section class="step" id="s{n}" data-step="{name}" data-position="{n}"\n'
        f'             data-status="queued" data-attempt="1">'
        for n, name in ((0, "hello"), (1, "count"))
    ]
    assert page.count("<details open>") == 2
    assert (
        f'<div class="log" data-lines-url="/builds/{build.pk}/steps/0/lines" data-line-count="3">'
    ) in page
    assert (
        f'<div class="log" data-lines-url="/builds/{build.pk}/steps/1/lines" data-line-count="0">'
    ) in page
    assert '<span class="badge status-queued" data-step-status="hello">queued</span>' in page
    assert f'href="/builds/{build.pk}/steps/0/raw">raw</a>' in page
    assert "<noscript>" in page
    assert re.search(r'<script type="module" src="/static/logview[^"]*\.js"></script>', page)
    assert re.search(r'<link rel="stylesheet" href="/static/logview[^"]*\.css">', page)
    assert "<code>main</code>" in page
    assert "0123456789ab" in page
    # No log line is rendered by the server: logview.js draws them.
    assert ">a<" not in page


def test_the_pipeline_picture_has_a_box_per_step_in_columns_by_depth(
    owner: Client, project: Project
) -> None:
    build = submit(project, DIAMOND)
    page = html(owner.get(f"/builds/{build.pk}/"))
    svg = page[page.index("<svg") : page.index("</svg>")]
    boxes = re.findall(r'<g class="dag-node" transform="translate\((\d+),(\d+)\)">', svg)
    names = re.findall(r'data-step-status="([^"]+)"', svg)
    assert names == ["build", "lint", "test", "deploy"]
    assert svg.count('class="dag-box"') == 4
    columns = [int(x) for x, _ in boxes]
    assert columns[0] == columns[1] < columns[2] < columns[3]  # build, lint | test | deploy
    assert boxes[0][1] != boxes[1][1]  # build and lint one above the other
    assert svg.count('class="dag-edge"') == 3  # build->test, lint->test, test->deploy
    assert svg.count('<span class="badge status-queued"') == 4
    assert 'href="#s2"' in svg


def test_cancel_shows_while_a_build_can_stop_and_rerun_once_it_has_ended(
    owner: Client, project: Project
) -> None:
    build = submit(project, TWO_STEPS)
    page = html(owner.get(f"/builds/{build.pk}/"))
    assert f'hx-post="/builds/{build.pk}/cancel"' in page
    assert "/rerun" not in page
    # The header follows an unfinished build: by polling, and at once on a live status.
    assert 'hx-trigger="every 3s, goci:build-status from:body"' in page
    finish(build, Status.FAILURE)
    page = html(owner.get(f"/builds/{build.pk}/"))
    assert "/cancel" not in page
    assert f'hx-post="/builds/{build.pk}/rerun"' in page
    assert "hx-trigger" not in page


def test_the_build_page_to_htmx_is_its_header(owner: Client, project: Project) -> None:
    build = submit(project, TWO_STEPS)
    fragment = html(owner.get(f"/builds/{build.pk}/", **HTMX))
    assert fragment.lstrip().startswith('<header id="build-header"')
    assert "dag" not in fragment


def test_cancel_stops_a_queued_build_and_answers_htmx_with_the_header(
    owner: Client, project: Project
) -> None:
    build = submit(project, TWO_STEPS)
    assert owner.get(f"/builds/{build.pk}/cancel").status_code == 405
    response = owner.post(f"/builds/{build.pk}/cancel", **HTMX)
    assert response.status_code == 200
    fragment = html(response)
    assert fragment.lstrip().startswith('<header id="build-header"')
    assert 'class="badge status-canceled" data-build-status="canceled">canceled<' in fragment
    assert "/cancel" not in fragment
    assert f'hx-post="/builds/{build.pk}/rerun"' in fragment
    build.refresh_from_db()
    assert build.status == Status.CANCELED
    # Without htmx: back to the build page. Cancelling again changes nothing.
    response = owner.post(f"/builds/{build.pk}/cancel")
    assert response["Location"] == f"/builds/{build.pk}/"


def test_cancel_of_a_running_build_asks_its_worker_and_says_so(
    owner: Client, project: Project
) -> None:
    build = submit(project, TWO_STEPS)
    job_claim(worker="w")
    fragment = html(owner.post(f"/builds/{build.pk}/cancel", **HTMX))
    assert "canceling…" in fragment
    assert "/cancel" not in fragment  # asked once
    build.refresh_from_db()
    assert (build.status, build.cancel_requested) == (Status.RUNNING, True)


def test_rerun_queues_a_new_build_and_opens_it(owner: Client, project: Project) -> None:
    build = submit(project, TWO_STEPS, ref="main")
    finish(build)
    assert owner.get(f"/builds/{build.pk}/rerun").status_code == 405
    response = owner.post(f"/builds/{build.pk}/rerun", **HTMX)
    rerun = Build.objects.latest("id")
    assert response["HX-Redirect"] == f"/builds/{rerun.pk}/"
    assert (rerun.rerun_of, rerun.trigger, rerun.ref, rerun.number) == (
        build,
        Build.Trigger.RERUN,
        "main",
        2,
    )
    response = owner.post(f"/builds/{build.pk}/rerun")
    assert response["Location"] == f"/builds/{Build.objects.latest('id').pk}/"


# ---------------------------------------------------------------------------
# Raw logs


def test_a_steps_raw_log_is_a_text_file_of_its_current_attempt(
    owner: Client, project: Project
) -> None:
    build = submit(project, TWO_STEPS)
    job = job_claim(worker="w")
    assert job is not None
    count = Step.objects.get(job=job, name="count")
    queue.log_append(job_id=job.pk, attempt=1, step_id=count.pk, first_line=1, lines=["old"])
    # The job was taken over: attempt 2 starts its lines from 1 again.
    Job.objects.filter(pk=job.pk).update(attempt=2)
    queue.log_append(job_id=job.pk, attempt=2, step_id=count.pk, first_line=1, lines=["1", "2"])
    queue.log_append(job_id=job.pk, attempt=2, step_id=count.pk, first_line=3, lines=["3"])
    response = owner.get(f"/builds/{build.pk}/steps/1/raw")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    assert response["Content-Disposition"] == 'attachment; filename="web-1-count.log"'
    assert b"".join(response.streaming_content) == b"1\n2\n3\n"
    assert owner.get(f"/builds/{build.pk}/steps/7/raw").status_code == 404


def test_the_whole_log_has_every_step_under_a_header(owner: Client, project: Project) -> None:
    build = submit(project, TWO_STEPS)
    job = job_claim(worker="w")
    assert job is not None
    for step, lines in (("hello", ["hello"]), ("count", ["1", "2"])):
        step_id = Step.objects.get(job=job, name=step).pk
        queue.log_append(job_id=job.pk, attempt=1, step_id=step_id, first_line=1, lines=lines)
    response = owner.get(f"/builds/{build.pk}/log.txt")
    assert response["Content-Disposition"] == 'attachment; filename="web-1.log"'
    text = b"".join(response.streaming_content).decode()
    assert text == "==> hello (queued)\nhello\n==> count (queued)\n1\n2\n"


@pytest.mark.django_db(transaction=True)
def test_a_build_run_by_the_worker_shows_its_results(
    owner: Client, project: Project, tmp_path: Path, settings: Any
) -> None:
    settings.GOCI_WORKSPACE_ROOT = tmp_path / "ws"
    response = owner.post("/projects/web/run", {"pipeline": TWO_STEPS, "ref": "main"})
    worker = Worker(name="w1")
    try:
        assert worker.run_one_job() is True
    finally:
        worker.close()
    page = html(owner.get(response["Location"]))
    assert 'data-status="success"' in page
    # The header, then each step in the step list, the graph and its log section.
    assert page.count('class="badge status-success"') == 1 + 2 + 2 + 2
    assert 'data-line-count="3"' in page  # count: seq 3
    assert 'data-line-count="1"' in page  # hello
    build = Build.objects.get()
    raw = b"".join(owner.get(f"/builds/{build.pk}/steps/1/raw").streaming_content)
    assert raw == b"1\n2\n3\n"


def test_a_snapshot_no_longer_valid_cannot_be_rerun_and_says_why(
    owner: Client, project: Project
) -> None:
    build = submit(project, TWO_STEPS)
    finish(build)
    Build.objects.filter(pk=build.pk).update(pipeline="steps: 3\n")  # as if Goci changed
    fragment = html(owner.post(f"/builds/{build.pk}/rerun", **HTMX))
    assert fragment.lstrip().startswith('<header id="build-header"')
    assert "This build cannot be run again" in fragment
    assert Build.objects.count() == 1
