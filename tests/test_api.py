"""The REST API as a client uses it: tokens, projects, builds, logs, errors, docs."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import connection, connections
from django.http import HttpResponse
from django.test import AsyncClient, Client
from django.utils import timezone

from builds import api as api_module
from builds import logs as log_module
from builds import services
from builds.models import Build, Job, LogChunk, Membership, Project, Role, Status
from builds.pipeline import MAX_BYTES
from runners import queue
from tests.conftest import need
from tests.helpers import goci, make_project, make_token, make_user

PIPELINE = """\
steps:
  - name: Build
    run: make
  - name: Test
    run: make test
"""

BAD_PIPELINE = """\
steps:
  - name: Build
    runn: make
"""

BUILD_KEYS = {
    "id",
    "project",
    "number",
    "status",
    "trigger",
    "ref",
    "commit",
    "message",
    "author",
    "env",
    "inputs",
    "created_at",
    "started_at",
    "finished_at",
    "duration",
    "cancel_requested",
    "rerun_of",
    # What a forge's delivery told (issue #12).
    "superseded_by",
    "fork",
    "forge",
    "commit_author",
    "compare_url",
    "pr_number",
    "pr_title",
    "source_branch",
    "target_branch",
    "changed_files",
    "queue_reason",  # why a queued build waits (issue #13)
}
JOB_KEYS = {
    "id",
    "name",
    "matrix",
    "labels",
    "allow_failure",
    "status",
    "attempt",
    "worker",
    "error",
    "started_at",
    "finished_at",
    "steps",
}
STEP_KEYS = {
    "name",
    "position",
    "needs",
    "image",
    "image_id",
    "digests",
    "status",
    "exit_code",
    "error",
    "started_at",
    "finished_at",
    "duration",
}


@dataclass
class Api:
    """A client of the API with one user's token."""

    token: str
    client: Client = field(default_factory=Client)

    def get(self, url: str, **extra: Any) -> HttpResponse:
        return self.client.get(url, HTTP_AUTHORIZATION=f"Bearer {self.token}", **extra)

    def post(self, url: str, body: object = None, **extra: Any) -> HttpResponse:
        data = body if isinstance(body, (str, bytes)) else json.dumps(body or {})
        return self.client.post(
            url,
            data,
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {self.token}",
            **extra,
        )

    def text(self, url: str) -> str:
        response = self.get(url)
        assert response.status_code == 200, response.content
        assert response["Content-Type"] == "text/plain; charset=utf-8"
        return b"".join(response.streaming_content).decode()


@pytest.fixture
def owner(db: None) -> Any:
    return make_user("olivia")


@pytest.fixture
def project(owner: Any) -> Any:
    return make_project(owner, "shop")


@pytest.fixture
def api(owner: Any) -> Api:
    return Api(make_token(owner))


@pytest.fixture
def outsider_api(db: None) -> Api:
    return Api(make_token(make_user("oscar")))


def make_build(project: Any, pipeline: str = PIPELINE, **fields: Any) -> Build:
    build, _ = services.build_create(project=project, pipeline=pipeline, **fields)
    return build


def start(build: Build, *, attempt: int = 1) -> Job:
    """The build's job as a worker would hold it: running, at this attempt."""
    now = timezone.now()
    Job.objects.filter(build=build).update(
        status=Status.RUNNING, attempt=attempt, started_at=now, worker="w1"
    )
    Build.objects.filter(pk=build.pk).update(status=Status.RUNNING, started_at=now)
    return build.jobs.get()


def log(job: Job, step: str, first_line: int, *lines: str) -> None:
    queue.step_start(job_id=job.pk, attempt=job.attempt, name=step)
    queue.log_append(
        job_id=job.pk,
        attempt=job.attempt,
        step_id=job.steps.get(name=step).pk,
        first_line=first_line,
        lines=lines,
    )


def finish(job: Job, status: str = Status.SUCCESS) -> None:
    for step in job.steps.all():
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


# ---------------------------------------------------------------------------
# Tokens


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer nope", "Basic b2xpdmlhOnB3", "Token goci_x", "goci_x"],
)
def test_a_request_without_a_valid_token_is_401_json(
    project: Any, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"HTTP_AUTHORIZATION": authorization}
    for response in (
        Client().get("/api/projects", **headers),
        Client().get("/api/builds/1", **headers),
        Client().post("/api/builds", {}, content_type="application/json", **headers),
    ):
        assert response.status_code == 401
        assert response["WWW-Authenticate"].startswith("Bearer")
        assert "Authorization: Bearer <token>" in response.json()["detail"]


def test_the_token_of_an_inactive_user_is_401(owner: Any, api: Api) -> None:
    owner.is_active = False
    owner.save()

    assert api.get("/api/projects").status_code == 401


def test_a_token_is_all_it_takes_no_csrf_cookie(owner: Any) -> None:
    strict = Api(make_token(owner), Client(enforce_csrf_checks=True))

    response = strict.post("/api/projects", {"slug": "shop"})

    assert response.status_code == 201, response.content


# ---------------------------------------------------------------------------
# Projects


def test_creating_a_project_makes_you_its_owner(owner: Any, api: Api) -> None:
    response = api.post(
        "/api/projects",
        {"slug": "shop", "name": "The Shop", "repo_url": "https://git.example/shop.git"},
    )

    assert response.status_code == 201
    body = response.json()
    assert body["slug"] == "shop"
    assert body["name"] == "The Shop"
    assert body["repo_url"] == "https://git.example/shop.git"
    assert body["default_branch"] == "main"
    assert Membership.objects.get(project_id=body["id"]).role == Role.OWNER
    assert Membership.objects.get(project_id=body["id"]).user == owner


def test_a_project_name_defaults_to_its_slug(api: Api) -> None:
    assert api.post("/api/projects", {"slug": "shop"}).json()["name"] == "shop"


def test_a_taken_slug_is_409(project: Any, outsider_api: Api) -> None:
    response = outsider_api.post("/api/projects", {"slug": "shop"})

    assert response.status_code == 409
    assert response.json() == {"detail": "a project with the slug 'shop' already exists"}
    assert Project.objects.count() == 1


@pytest.mark.parametrize("slug", ["", "has space", "x" * 101, "ünï", "a/b", "42"])
def test_an_invalid_slug_is_422(api: Api, slug: str) -> None:
    response = api.post("/api/projects", {"slug": slug})

    assert response.status_code == 422
    body = response.json()
    assert "slug" in body["detail"]
    assert body["errors"][0]["path"] == "slug"
    assert Project.objects.count() == 0


def test_projects_lists_only_yours(project: Any, api: Api, outsider_api: Api) -> None:
    make_project(make_user("someone"), "other")

    assert [p["slug"] for p in api.get("/api/projects").json()] == ["shop"]
    assert outsider_api.get("/api/projects").json() == []


# ---------------------------------------------------------------------------
# Submitting a build


def test_submitting_a_pipeline_queues_a_build(project: Any, api: Api) -> None:
    response = api.post(
        "/api/builds",
        {
            "project": "shop",
            "pipeline": PIPELINE,
            "ref": "refs/heads/main",
            "commit": "a" * 40,
            "message": "Fix the tests",
            "env": {"DEPLOY": "no"},
        },
    )

    assert response.status_code == 201, response.content
    body = response.json()
    assert set(body) == {*BUILD_KEYS, "jobs"}
    assert body["project"] == "shop"
    assert body["number"] == 1
    assert body["status"] == "queued"
    assert body["trigger"] == "api"
    assert body["author"] == "olivia"
    assert (body["ref"], body["commit"], body["message"]) == (
        "refs/heads/main",
        "a" * 40,
        "Fix the tests",
    )
    assert body["env"] == {"DEPLOY": "no"}
    assert body["duration"] is None
    assert body["rerun_of"] is None
    [job] = body["jobs"]
    assert set(job) == JOB_KEYS
    assert [set(step) for step in job["steps"]] == [STEP_KEYS, STEP_KEYS]
    assert [(s["name"], s["position"], s["needs"]) for s in job["steps"]] == [
        ("Build", 0, []),
        ("Test", 1, ["Build"]),
    ]
    assert Build.objects.get().pipeline == PIPELINE
    # The same JSON as reading the build back.
    assert api.get(f"/api/builds/{body['id']}").json() == body


def test_a_project_may_be_named_by_its_id(project: Any, api: Api) -> None:
    response = api.post("/api/builds", {"project": project.pk, "pipeline": PIPELINE})

    assert response.status_code == 201
    assert response.json()["project"] == "shop"


def test_a_retry_with_the_same_idempotency_key_returns_the_first_build(
    project: Any, api: Api
) -> None:
    submit = {"project": "shop", "pipeline": PIPELINE}

    first = api.post("/api/builds", submit, HTTP_IDEMPOTENCY_KEY="deploy-42")
    retry = api.post("/api/builds", submit, HTTP_IDEMPOTENCY_KEY="deploy-42")
    other = api.post("/api/builds", submit, HTTP_IDEMPOTENCY_KEY="deploy-43")
    plain = api.post("/api/builds", submit)

    assert (first.status_code, retry.status_code) == (201, 200)
    assert retry.json() == first.json()
    assert (other.status_code, plain.status_code) == (201, 201)
    assert len({first.json()["id"], other.json()["id"], plain.json()["id"]}) == 3
    assert Build.objects.count() == 3


def test_an_idempotency_key_over_200_characters_is_422(project: Any, api: Api) -> None:
    response = api.post(
        "/api/builds", {"project": "shop", "pipeline": PIPELINE}, HTTP_IDEMPOTENCY_KEY="k" * 201
    )

    assert response.status_code == 422
    assert response.json()["errors"][0]["location"] == "header"
    assert Build.objects.count() == 0


def test_an_invalid_pipeline_is_422_with_what_goci_validate_prints(
    project: Any, api: Api, tmp_path: Path
) -> None:
    response = api.post("/api/builds", {"project": "shop", "pipeline": BAD_PIPELINE})

    assert response.status_code == 422
    body = response.json()
    assert body["errors"] == [
        {
            "path": "steps[0]",
            "line": 2,
            "column": 5,
            "message": (
                "missing key 'run': the commands this step runs (or `build:`, an image to build, "
                "or `ssh:`, a script to run on another machine)"
            ),
        },
        {
            "path": "steps[0]",
            "line": 3,
            "column": 5,
            "message": "unknown key 'runn' (did you mean 'run'?)",
        },
    ]
    (tmp_path / ".goci.yml").write_text(BAD_PIPELINE)
    validate = goci("validate", ".goci.yml", cwd=tmp_path)
    problems = [line for line in validate.stderr.splitlines() if line.startswith(".goci.yml:")]
    assert len(problems) == 2
    for problem in problems:
        assert problem in body["detail"]
    assert Build.objects.count() == 0
    assert Job.objects.count() == 0


def test_a_bad_env_is_422_with_its_message(project: Any, api: Api) -> None:
    response = api.post(
        "/api/builds", {"project": "shop", "pipeline": PIPELINE, "env": {"GOCI_TOKEN": "x"}}
    )

    assert response.status_code == 422
    assert response.json() == {
        "detail": "env: GOCI_TOKEN is set by Goci; choose another name",
        "errors": [{"message": "env: GOCI_TOKEN is set by Goci; choose another name"}],
    }
    assert Build.objects.count() == 0


def test_a_matrix_pipeline_queues_a_job_per_cell(project: Any, api: Api) -> None:
    matrix = (
        "matrix: {SERVICE: [bot, api]}\n"
        "steps: [{name: one, image: 'reg.example/${SERVICE}:1', run: echo $SERVICE}]\n"
    )
    response = api.post("/api/builds", {"project": "shop", "pipeline": matrix})

    assert response.status_code == 201, response.content
    jobs = response.json()["jobs"]
    assert [(j["name"], j["matrix"], j["status"]) for j in jobs] == [
        ("SERVICE=bot", {"SERVICE": "bot"}, "queued"),
        ("SERVICE=api", {"SERVICE": "api"}, "queued"),
    ]
    assert [[s["image"] for s in j["steps"]] for j in jobs] == [
        ["reg.example/bot:1"],
        ["reg.example/api:1"],
    ]


def test_a_matrix_of_too_many_steps_in_all_is_422(project: Any, api: Api) -> None:
    steps = "".join(f"  - {{name: s{n}, run: 'true'}}\n" for n in range(30))
    matrix = "matrix: {A: [" + ", ".join(str(n) for n in range(200)) + "]}\nsteps:\n" + steps
    response = api.post("/api/builds", {"project": "shop", "pipeline": matrix})

    assert response.status_code == 422
    assert response.json()["detail"].startswith("the matrix makes 200 jobs of 30 steps, 6000")
    assert Build.objects.count() == 0


def test_an_unknown_or_foreign_project_is_404_and_the_two_look_alike(
    project: Any, outsider_api: Api
) -> None:
    foreign = outsider_api.post("/api/builds", {"project": "shop", "pipeline": PIPELINE})
    foreign_id = outsider_api.post("/api/builds", {"project": project.pk, "pipeline": PIPELINE})
    project_id = project.pk
    project.delete()
    missing = outsider_api.post("/api/builds", {"project": "shop", "pipeline": PIPELINE})
    missing_id = outsider_api.post("/api/builds", {"project": project_id, "pipeline": PIPELINE})

    assert foreign.status_code == missing.status_code == 404
    assert foreign.json() == missing.json() == {"detail": "project 'shop' not found"}
    assert foreign_id.json() == missing_id.json() == {"detail": f"project {project_id} not found"}
    assert Build.objects.count() == 0


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("{", "not valid JSON"),
        ("[1, 2]", "must be a JSON object, not an array"),
        ('"steps"', "must be a JSON object, not a string"),
        ("", "the request body is empty"),
        (b'{"project": "\xff"}', "not valid JSON: 'utf-8' codec can't decode"),
    ],
)
def test_a_body_that_is_no_json_object_is_422(
    project: Any, api: Api, body: str | bytes, problem: str
) -> None:
    response = api.post("/api/builds", body)

    assert response.status_code == 422
    assert response["Content-Type"] == "application/json"
    assert problem in response.json()["detail"]
    assert response.json()["errors"]


def test_malformed_json_says_where(project: Any, api: Api) -> None:
    response = api.post("/api/builds", '{"project": "shop",\n "pipeline": }')

    assert response.status_code == 422
    [error] = response.json()["errors"]
    assert (error["line"], error["column"]) == (2, 14)


def test_missing_fields_and_wrong_types_are_422_listing_each(project: Any, api: Api) -> None:
    missing = api.post("/api/builds", {"ref": "main"})
    wrong = api.post(
        "/api/builds", {"project": "shop", "pipeline": 42, "env": {"A": 1}, "ref": ["x"]}
    )

    assert missing.status_code == wrong.status_code == 422
    assert {(e["path"], e["type"]) for e in missing.json()["errors"]} == {("project", "missing")}
    assert "body project: Field required" in missing.json()["detail"]
    assert {e["path"] for e in wrong.json()["errors"]} == {"pipeline", "env.A", "ref"}
    assert Build.objects.count() == 0


def test_no_pipeline_needs_a_commit_of_the_projects_repository(project: Any, api: Api) -> None:
    """The pipeline may be left out only when the worker can read it from the repository
    at the build's commit."""
    for body in ({"project": "shop"}, {"project": "shop", "pipeline": "", "commit": "a" * 40}):
        answer = api.post("/api/builds", body)
        assert answer.status_code == 422, answer.content
        assert answer.json()["detail"] == (
            "no pipeline: give one, or a commit of a project with a repository to read it from"
        )
    assert Build.objects.count() == 0
    project.repo_url = "https://git.example/shop.git"
    project.save()

    answer = api.post("/api/builds", {"project": "shop", "commit": "a" * 40})

    assert answer.status_code == 201, answer.content
    build = Build.objects.get()
    assert (build.pipeline, build.checkout) == ("", True)
    assert [step["name"] for step in answer.json()["jobs"][0]["steps"]] == ["clone"]


def test_a_body_over_the_limit_is_413(project: Any, api: Api) -> None:
    too_big = json.dumps({"project": "shop", "pipeline": "#" * (api_module.MAX_BODY + 1)})
    huge = json.dumps({"project": "shop", "pipeline": "#" * (3 * 1024 * 1024)})

    for body in (too_big, huge):
        response = api.post("/api/builds", body)
        assert response.status_code == 413
        assert "at most" in response.json()["detail"]
    assert Build.objects.count() == 0


def test_what_django_refuses_to_read_is_413_too(project: Any, api: Api, settings: Any) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000

    response = api.post("/api/builds", {"project": "shop", "pipeline": "#" * 2000})

    assert response.status_code == 413


def test_a_pipeline_over_1_mib_in_a_body_under_the_limit_is_422(project: Any, api: Api) -> None:
    pipeline = PIPELINE + "#" * (MAX_BYTES - len(PIPELINE) + 1)

    response = api.post("/api/builds", {"project": "shop", "pipeline": pipeline})

    assert response.status_code == 422
    assert "at most 1 MiB" in response.json()["errors"][0]["message"]


def test_a_pipeline_of_1_mib_is_accepted(project: Any, api: Api) -> None:
    pipeline = PIPELINE + "#" * (MAX_BYTES - len(PIPELINE) - 1) + "\n"

    response = api.post("/api/builds", {"project": "shop", "pipeline": pipeline})

    assert response.status_code == 201


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_ten_concurrent_retries_with_one_key_make_one_build() -> None:
    if connection.vendor != "postgresql":
        need("PostgreSQL: set DATABASE_URL=postgres://postgres@127.0.0.1:5432/goci")
    owner = make_user("olivia")
    token = make_token(owner)
    make_project(owner, "shop")
    barrier = threading.Barrier(10)
    results: list[tuple[int, int]] = []
    errors: list[BaseException] = []

    def submit() -> None:
        try:
            client = Api(token)
            barrier.wait(timeout=10)
            response = client.post(
                "/api/builds",
                {"project": "shop", "pipeline": PIPELINE},
                HTTP_IDEMPOTENCY_KEY="deploy-42",
            )
            results.append((response.status_code, response.json()["id"]))
        except BaseException as exc:  # noqa: BLE001  (reported by the main thread)
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=submit) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert errors == []
    build = Build.objects.get()
    assert sorted(status for status, _ in results) == [200] * 9 + [201]
    assert {build_id for _, build_id in results} == {build.pk}
    assert build.jobs.count() == 1


# ---------------------------------------------------------------------------
# Listing builds


def test_builds_are_listed_newest_first_50_a_page(project: Any, api: Api) -> None:
    ids = [make_build(project).pk for _ in range(55)]

    first = api.get("/api/builds").json()
    second = api.get("/api/builds?page=2").json()
    beyond = api.get("/api/builds?page=3").json()

    assert (first["page"], first["pages"], first["count"]) == (1, 2, 55)
    assert [b["id"] for b in first["items"]] == ids[::-1][:50]
    assert [b["id"] for b in second["items"]] == ids[::-1][50:]
    assert set(first["items"][0]) == BUILD_KEYS
    assert beyond == {"items": [], "page": 3, "pages": 2, "count": 55}


def test_an_empty_list_has_one_empty_page(api: Api) -> None:
    assert api.get("/api/builds").json() == {"items": [], "page": 1, "pages": 1, "count": 0}


def test_builds_filter_by_project_status_and_ref(owner: Any, project: Any, api: Api) -> None:
    other = make_project(owner, "other")
    main = make_build(project, ref="refs/heads/main")
    make_build(project, ref="refs/heads/dev")
    elsewhere = make_build(other, ref="refs/heads/main")
    services.build_cancel(build=main)

    def ids(query: str) -> list[int]:
        response = api.get(f"/api/builds?{query}")
        assert response.status_code == 200, response.content
        return [b["id"] for b in response.json()["items"]]

    assert len(ids("project=shop")) == 2
    assert ids(f"project={other.pk}") == [elsewhere.pk]
    assert ids("ref=refs/heads/main") == [elsewhere.pk, main.pk]
    assert ids("status=canceled") == [main.pk]
    assert ids("project=shop&status=queued&ref=refs/heads/main") == []
    assert ids("project=other&ref=refs/heads/main&status=queued") == [elsewhere.pk]


def test_a_bad_status_filter_is_422_listing_the_valid_ones(api: Api) -> None:
    response = api.get("/api/builds?status=done")

    assert response.status_code == 422
    detail = response.json()["detail"]
    for status in ("queued", "running", "success", "failure", "error", "canceled"):
        assert f"'{status}'" in detail


@pytest.mark.parametrize("page", ["0", "-1", "two"])
def test_a_bad_page_is_422(api: Api, page: str) -> None:
    response = api.get(f"/api/builds?page={page}")

    assert response.status_code == 422
    assert response.json()["errors"][0]["path"] == "page"


def test_an_outsider_lists_no_builds_and_cannot_filter_by_a_foreign_project(
    project: Any, outsider_api: Api
) -> None:
    make_build(project)

    assert outsider_api.get("/api/builds").json()["count"] == 0
    foreign = outsider_api.get("/api/builds?project=shop")
    assert foreign.status_code == 404
    assert foreign.json() == {"detail": "project 'shop' not found"}


def test_listing_takes_the_same_few_queries_for_1_or_50_builds(
    owner: Any, project: Any, api: Api, django_assert_max_num_queries: Any
) -> None:
    make_build(project, author=owner)
    # The token (look-up and last use), the count, the page with projects and authors.
    # +2 when a build of the page is queued: the queue snapshot (runners, queue).
    with django_assert_max_num_queries(6) as one:
        assert len(api.get("/api/builds").json()["items"]) == 1
    for _ in range(60):
        make_build(project, author=make_user(f"u{Build.objects.count()}"))
    with django_assert_max_num_queries(6) as fifty:
        assert len(api.get("/api/builds").json()["items"]) == 50
    with django_assert_max_num_queries(7):  # and the project of the filter
        assert len(api.get("/api/builds?project=shop").json()["items"]) == 50

    assert len(one) == len(fifty)


def test_listing_projects_takes_the_same_queries_for_1_or_20(
    owner: Any, api: Api, django_assert_max_num_queries: Any
) -> None:
    make_project(owner, "first")
    with django_assert_max_num_queries(3) as one:
        assert len(api.get("/api/projects").json()) == 1
    for n in range(19):
        make_project(owner, f"p{n}")
    with django_assert_max_num_queries(3) as twenty:
        assert len(api.get("/api/projects").json()) == 20

    assert len(one) == len(twenty)


# ---------------------------------------------------------------------------
# One build


def test_a_build_shows_its_jobs_and_steps_as_they_ran(owner: Any, project: Any, api: Api) -> None:
    build = make_build(project, author=owner)
    job = start(build)
    log(job, "Build", 1, "compiling")
    finish(job, Status.FAILURE)

    body = api.get(f"/api/builds/{build.pk}").json()

    assert body["status"] == "failure"
    assert body["finished_at"] is not None
    assert isinstance(body["duration"], float)
    [job_json] = body["jobs"]
    assert (job_json["status"], job_json["attempt"], job_json["worker"]) == ("failure", 1, "w1")
    build_step = job_json["steps"][0]
    assert (build_step["status"], build_step["exit_code"]) == ("failure", 1)
    assert build_step["started_at"] is not None
    assert isinstance(build_step["duration"], float)


def test_reading_a_build_takes_the_same_queries_for_2_or_40_steps(
    project: Any, api: Api, django_assert_max_num_queries: Any
) -> None:
    small = make_build(project)
    big = make_build(
        project, pipeline="steps:\n" + "".join(f"  - name: s{n}\n    run: x\n" for n in range(40))
    )
    # The token (look-up and last use), the build with project and author, jobs, steps.
    with django_assert_max_num_queries(7) as two:
        assert len(api.get(f"/api/builds/{small.pk}").json()["jobs"][0]["steps"]) == 2
    with django_assert_max_num_queries(7) as forty:
        assert len(api.get(f"/api/builds/{big.pk}").json()["jobs"][0]["steps"]) == 40

    assert len(two) == len(forty)


URLS = [
    ("get", "/api/builds/{id}"),
    ("get", "/api/builds/{id}/logs"),
    ("get", "/api/builds/{id}/logs?step=Build&after=1"),
    ("get", "/api/builds/{id}/logs?follow=1"),
    ("post", "/api/builds/{id}/cancel"),
    ("post", "/api/builds/{id}/rerun"),
]


@pytest.mark.parametrize(("method", "url"), URLS)
def test_an_outsider_gets_the_404_of_a_missing_build(
    project: Any, outsider_api: Api, method: str, url: str
) -> None:
    build = make_build(project)
    url = url.format(id=build.pk)

    foreign = getattr(outsider_api, method)(url)
    Build.objects.filter(pk=build.pk).delete()
    missing = getattr(outsider_api, method)(url)

    assert foreign.status_code == missing.status_code == 404
    assert foreign.content == missing.content
    assert foreign.json() == {"detail": f"build {build.pk} not found"}
    assert Build.objects.count() == 0  # nothing was rerun


def test_an_outsider_cannot_cancel(project: Any, outsider_api: Api) -> None:
    build = make_build(project)

    assert outsider_api.post(f"/api/builds/{build.pk}/cancel").status_code == 404
    build.refresh_from_db()
    assert (build.status, build.cancel_requested) == ("queued", False)


def test_other_urls_under_api_are_json_too(api: Api) -> None:
    unknown = api.get("/api/nothing/here")
    not_a_number = api.get("/api/builds/abc")
    wrong_method = api.client.delete("/api/builds", HTTP_AUTHORIZATION=f"Bearer {api.token}")

    assert unknown.status_code == not_a_number.status_code == 404
    assert unknown.json()["detail"] == "no such API endpoint: GET /api/nothing/here"
    assert wrong_method.status_code == 405
    assert set(wrong_method["Allow"].split(", ")) == {"GET", "POST"}
    assert "DELETE is not allowed" in wrong_method.json()["detail"]


# ---------------------------------------------------------------------------
# Cancel and rerun


def test_cancelling_a_queued_build_ends_it_and_again_changes_nothing(
    project: Any, api: Api
) -> None:
    build = make_build(project)

    first = api.post(f"/api/builds/{build.pk}/cancel")
    again = api.post(f"/api/builds/{build.pk}/cancel")

    assert first.status_code == again.status_code == 200
    body = first.json()
    assert (body["status"], body["cancel_requested"]) == ("canceled", True)
    assert body["jobs"][0]["status"] == "canceled"
    assert [s["status"] for s in body["jobs"][0]["steps"]] == ["canceled", "canceled"]
    assert again.json() == body


def test_cancelling_a_running_build_asks_its_worker_to_stop(project: Any, api: Api) -> None:
    build = make_build(project)
    start(build)

    body = api.post(f"/api/builds/{build.pk}/cancel").json()

    assert (body["status"], body["cancel_requested"]) == ("running", True)


def test_a_rerun_is_a_new_build_of_the_same_snapshot(owner: Any, project: Any, api: Api) -> None:
    build = make_build(project, ref="refs/heads/main", commit="c" * 40, env={"A": "1"})
    finish(start(build))

    response = api.post(f"/api/builds/{build.pk}/rerun")

    assert response.status_code == 201
    body = response.json()
    assert body["id"] != build.pk
    assert (body["number"], body["rerun_of"], body["trigger"]) == (2, build.pk, "rerun")
    assert (body["ref"], body["commit"], body["env"]) == ("refs/heads/main", "c" * 40, {"A": "1"})
    assert (body["status"], body["author"]) == ("queued", "olivia")
    assert Build.objects.get(pk=body["id"]).pipeline == PIPELINE


# ---------------------------------------------------------------------------
# Logs


def test_the_log_shows_every_step_under_a_header_in_order(project: Any, api: Api) -> None:
    build = make_build(project)
    job = start(build)
    log(job, "Build", 1, "compiling", "linking")
    log(job, "Build", 3, "done")

    text = api.text(f"/api/builds/{build.pk}/logs")

    assert text == "==> Build (running)\ncompiling\nlinking\ndone\n==> Test (queued)\n"


def test_the_log_is_of_the_current_attempt_only(project: Any, api: Api) -> None:
    build = make_build(project)
    job = start(build, attempt=2)
    step = job.steps.get(name="Build")
    LogChunk.objects.create(step=step, attempt=1, first_line=1, line_count=2, text="old\nlost")
    LogChunk.objects.create(step=step, attempt=2, first_line=2, line_count=1, text="second")
    LogChunk.objects.create(step=step, attempt=2, first_line=1, line_count=1, text="first")

    text = api.text(f"/api/builds/{build.pk}/logs")

    assert text == "==> Build (queued)\nfirst\nsecond\n==> Test (queued)\n"


def test_a_step_and_after_give_that_steps_lines_after_n(project: Any, api: Api) -> None:
    build = make_build(project)
    job = start(build)
    log(job, "Build", 1, "one", "two")
    log(job, "Build", 3, "three", "four", "five")
    log(job, "Test", 1, "other step")
    url = f"/api/builds/{build.pk}/logs?step=Build"

    assert api.text(url) == "one\ntwo\nthree\nfour\nfive\n"
    assert api.text(url + "&after=2") == "three\nfour\nfive\n"
    assert api.text(url + "&after=3") == "four\nfive\n"
    assert api.text(url + "&after=1") == "two\nthree\nfour\nfive\n"
    assert api.text(url + "&after=5") == ""
    assert api.text(url + "&after=99") == ""


def test_an_unknown_step_is_404_json(project: Any, api: Api) -> None:
    build = make_build(project)

    response = api.get(f"/api/builds/{build.pk}/logs?step=Deploy")

    assert response.status_code == 404
    assert response.json() == {"detail": f"step 'Deploy' of build {build.pk} not found"}


def test_after_without_a_step_is_422(project: Any, api: Api) -> None:
    build = make_build(project)

    response = api.get(f"/api/builds/{build.pk}/logs?after=3")

    assert response.status_code == 422
    assert "step=" in response.json()["detail"]


def test_following_a_finished_build_returns_at_once(
    project: Any, api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(log_module, "POLL_SECONDS", 60)  # a single wait would show
    build = make_build(project)
    job = start(build)
    log(job, "Build", 1, "built")
    finish(job)

    began = time.monotonic()
    text = api.text(f"/api/builds/{build.pk}/logs?follow=1")

    assert time.monotonic() - began < 5
    assert text == "==> Build (success)\nbuilt\n==> Test (success)\n"


def test_following_sends_new_lines_until_the_build_ends(
    project: Any, api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(log_module, "POLL_SECONDS", 0.01)
    build = make_build(project)
    job = start(build)
    log(job, "Build", 1, "one")

    response = api.get(f"/api/builds/{build.pk}/logs?follow=1")
    blocks = iter(response.streaming_content)

    assert next(blocks) == b"==> Build (running)\none\n==> Test (queued)\n"
    log(job, "Build", 2, "two", "three")
    assert next(blocks) == b"==> Build (running)\ntwo\nthree\n"
    log(job, "Build", 4, "four")
    assert next(blocks) == b"four\n"
    log(job, "Test", 1, "testing")
    finish(job)
    # The last pass reads the steps after they finished.
    assert b"".join(blocks) == b"==> Test (success)\ntesting\n"


def test_following_one_step_from_a_line(
    project: Any, api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(log_module, "POLL_SECONDS", 0.01)
    build = make_build(project)
    job = start(build)
    log(job, "Build", 1, "one", "two")

    response = api.get(f"/api/builds/{build.pk}/logs?step=Build&after=1&follow=true")
    blocks = iter(response.streaming_content)

    assert next(blocks) == b"two\n"
    log(job, "Test", 1, "not this step")
    log(job, "Build", 3, "three")
    assert next(blocks) == b"three\n"
    finish(job)
    assert b"".join(blocks) == b""


def test_a_job_taken_over_by_a_new_attempt_starts_its_lines_again(
    project: Any, api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(log_module, "POLL_SECONDS", 0.01)
    build = make_build(project)
    job = start(build)
    log(job, "Build", 1, "first try")

    blocks = iter(api.get(f"/api/builds/{build.pk}/logs?follow=1").streaming_content)
    assert next(blocks) == b"==> Build (running)\nfirst try\n==> Test (queued)\n"
    # The reaper gave the job to attempt 2 (the worker of attempt 1 was lost).
    Job.objects.filter(pk=job.pk).update(attempt=2)
    job.refresh_from_db()
    log(job, "Build", 1, "second try")
    assert next(blocks) == b"==> Build (running)\nsecond try\n"
    finish(job)
    assert b"".join(blocks) == b""


def test_a_huge_log_is_streamed_in_bounded_blocks(project: Any, api: Api) -> None:
    build = make_build(project)
    job = start(build)
    step = job.steps.get(name="Build")
    line = "x" * 79
    LogChunk.objects.bulk_create(
        LogChunk(
            step=step,
            attempt=1,
            first_line=n * 100 + 1,
            line_count=100,
            text="\n".join([line] * 100),
        )
        for n in range(500)
    )

    response = api.get(f"/api/builds/{build.pk}/logs")
    sizes = [len(block) for block in response.streaming_content]

    assert response.streaming
    assert sum(sizes) == len("==> Build (queued)\n==> Test (queued)\n") + 500 * 100 * 80
    assert len(sizes) > 50
    assert max(sizes) <= log_module.BLOCK_CHARS + 100 * 80


@pytest.mark.django_db(transaction=True)
async def test_under_asgi_a_followed_log_streams_as_it_grows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Under ASGI Django reads a sync iterator to its end before it sends anything: the
    # log must come as an async iterator there, or following would never return.
    monkeypatch.setattr(log_module, "POLL_SECONDS", 0.01)

    def setup() -> tuple[str, Job]:
        owner = make_user("olivia")
        build = make_build(make_project(owner, "shop"))
        job = start(build)
        log(job, "Build", 1, "one")
        return make_token(owner), job

    token, job = await sync_to_async(setup)()
    try:
        response = await AsyncClient().get(
            f"/api/builds/{job.build_id}/logs?follow=1",
            headers={"Authorization": f"Bearer {token}"},
        )

        assert response.status_code == 200
        assert response.is_async
        blocks = aiter(response.streaming_content)
        assert await anext(blocks) == b"==> Build (running)\none\n==> Test (queued)\n"
        await sync_to_async(log)(job, "Build", 2, "two")
        assert await anext(blocks) == b"==> Build (running)\ntwo\n"
        await sync_to_async(finish)(job)
        assert [block async for block in blocks] == []
    finally:
        # The view and the setup ran on asgiref's thread: its connection must not
        # outlive the test (PostgreSQL would refuse to drop the test database).
        await sync_to_async(connections.close_all)()


# ---------------------------------------------------------------------------
# Schema and docs


def test_the_openapi_schema_lists_every_endpoint(db: None) -> None:
    response = Client().get("/api/openapi.json")

    assert response.status_code == 200
    schema = json.loads(response.content)
    assert schema["openapi"].startswith("3.")
    assert set(schema["paths"]) == {
        "/api/projects",
        "/api/projects/{slug}",
        "/api/projects/{slug}/members",
        "/api/projects/{slug}/members/{username}",
        "/api/builds",
        "/api/builds/{build_id}",
        "/api/builds/{build_id}/logs",
        "/api/builds/{build_id}/cancel",
        "/api/builds/{build_id}/rerun",
        "/api/projects/{slug}/secrets",
        "/api/projects/{slug}/secrets/{name}",
        "/api/audit",
        "/api/tokens",
        "/api/tokens/{token_id}",
        "/api/auth/token",
        "/api/runners/registration-tokens",
        "/api/runners/registration-tokens/{token_id}",
        "/api/projects/{slug}/run",
        "/api/projects/{slug}/environments",
        "/api/projects/{slug}/environments/{name}",
        "/api/projects/{slug}/environments/{name}/deployments",
        "/api/projects/{slug}/deployments/{deployment_id}/approve",
        "/api/projects/{slug}/deployments/{deployment_id}/reject",
        "/api/projects/{slug}/deployments/{deployment_id}/redeploy",
        "/api/projects/{slug}/schedules",
        "/api/projects/{slug}/schedules/{schedule_id}",
        "/api/projects/{slug}/notifications",
        "/api/projects/{slug}/notifications/{target_id}",
        "/api/projects/{slug}/notifications/deliveries",
    }
    assert set(schema["paths"]["/api/builds"]) == {"get", "post"}
    assert set(schema["paths"]["/api/projects/{slug}"]) == {"get", "patch", "delete"}
    assert set(schema["paths"]["/api/projects/{slug}/members/{username}"]) == {"patch", "delete"}
    assert schema["components"]["securitySchemes"]["BearerToken"]["scheme"] == "bearer"
    logs = schema["paths"]["/api/builds/{build_id}/logs"]["get"]["responses"]["200"]
    assert "text/plain" in logs["content"]


def test_the_docs_page_needs_no_cdn(db: None) -> None:
    response = Client().get("/api/docs")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    html = response.content.decode()
    assert "/static/ninja/swagger-ui-bundle.js" in html
    assert "/api/openapi.json" in html
    for cdn in ("cdn.jsdelivr", "unpkg", "cdnjs", "https://"):
        assert cdn not in html
    script = Client().get("/static/ninja/swagger-ui-bundle.js")
    assert script.status_code == 200
    script.close()
