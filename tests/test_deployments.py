"""Manual runs with inputs, environments, deployments, protection, approval, one
deployment of an environment at a time, and rollback (docs/deployments.md)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection, connections
from django.test import Client

from builds import deployments, services
from builds.models import Build, Deployment, Environment, Project, Role, Status
from goci.audit.models import AuditEvent
from runners.queue import job_claim
from tests.git_server import GitServer, git_server
from tests.helpers import api_call, make_token
from tests.queue_helpers import log_lines, make_project, run_one

pytestmark = pytest.mark.django_db(transaction=True)

DEPLOY = """\
inputs:
  version: {type: string, default: latest, description: The image tag to deploy}
  level: {type: choice, options: [low, high], default: low}
  dry-run: {type: boolean, default: false}
steps:
  - name: test
    run: echo testing
  - name: deploy
    environment: {name: production, url: https://app.example.com}
    run: echo "deploying $GOCI_INPUT_VERSION level=$GOCI_INPUT_LEVEL dry=$GOCI_INPUT_DRY_RUN"
"""


@pytest.fixture(autouse=True)
def workspaces(tmp_path: Path, settings: Any) -> None:
    settings.GOCI_WORKSPACE_ROOT = tmp_path / "ws"
    settings.GOCI_CLONE_ALLOWED_HOSTS = ["127.0.0.1"]


def stored(slug: str = "shop", pipeline: str = DEPLOY) -> Project:
    project = make_project(slug)
    Project.objects.filter(pk=project.pk).update(pipeline=pipeline)
    project.refresh_from_db()
    return project


def member(project: Project, name: str, role: str) -> User:
    user = User.objects.create_user(username=name)
    services.member_add(project=project, user=user, role=role)
    return user


def owner(project: Project) -> User:
    return User.objects.get(username="ann")


def lines(build: Build, step: str) -> list[str]:
    from builds.models import Step

    return [text for _, text in log_lines(Step.objects.get(job__build=build, name=step))]


# -- inputs ---------------------------------------------------------------------------


def test_run_with_inputs_gives_steps_goci_input_variables() -> None:
    project = stored()
    token = make_token(owner(project))
    answer = api_call(
        "post",
        "/api/projects/shop/run",
        token,
        {"inputs": {"version": "v1.2.3", "level": "high", "dry-run": True}},
    )
    assert answer.status_code == 201, answer.content
    body = answer.json()
    assert body["trigger"] == "manual"
    assert body["inputs"] == {"version": "v1.2.3", "level": "high", "dry-run": "true"}
    build = Build.objects.get(pk=body["id"])
    assert build.inputs == {"version": "v1.2.3", "level": "high", "dry-run": "true"}
    build = run_one(build)
    assert build.status == Status.SUCCESS
    assert lines(build, "deploy") == ["deploying v1.2.3 level=high dry=true"]


def test_defaults_fill_what_is_not_given() -> None:
    project = stored()
    answer = api_call("post", "/api/projects/shop/run", make_token(owner(project)), {})
    assert answer.status_code == 201, answer.content
    build = run_one(Build.objects.get(pk=answer.json()["id"]))
    assert lines(build, "deploy") == ["deploying latest level=low dry=false"]


def test_every_wrong_input_is_named_and_nothing_is_queued() -> None:
    project = stored(pipeline=DEPLOY.replace("inputs:\n", "inputs:\n  who: {required: true}\n"))
    answer = api_call(
        "post",
        "/api/projects/shop/run",
        make_token(owner(project)),
        {"inputs": {"level": "extreme", "dry-run": "maybe", "versoin": "v2"}},
    )
    assert answer.status_code == 422
    errors = {error["input"]: error["message"] for error in answer.json()["errors"]}
    assert errors == {
        "versoin": "unknown input (did you mean 'version'?; the pipeline declares who, "
        "version, level, dry-run)",
        "level": "'extreme' is not one of low, high",
        "dry-run": "expected true or false",
        "who": "required: give a value",
    }
    assert not Build.objects.exists()


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"inputs": {"version": "a\x00b"}}, 422),
        ({"inputs": {"version": "\ud800"}}, 422),
        ({"inputs": {"version": 10**30}}, 422),
        ({"inputs": {"version": "x" * 10_000_000}}, 413),
        ({"ref": "\x00"}, 422),
        ({"ref": "x" * 10_000_000}, 413),
        ({"inputs": {"\x00": "a"}}, 422),
        ({"inputs": "nope"}, 422),
        ({"colour": "red"}, 422),
    ],
)
def test_hostile_run_requests_are_4xx_json(body: dict[str, Any], status: int) -> None:
    project = stored()
    answer = api_call("post", "/api/projects/shop/run", make_token(owner(project)), body)
    assert answer.status_code in (status, 422, 413), answer.content
    assert answer.status_code < 500
    assert answer["Content-Type"].startswith("application/json")
    assert not Build.objects.exists()


def test_a_project_without_repository_or_pipeline_says_so() -> None:
    project = make_project("empty")
    answer = api_call("post", "/api/projects/empty/run", make_token(owner(project)), {})
    assert answer.status_code == 422
    assert "neither a repository nor a stored pipeline" in answer.json()["detail"]


def test_a_stored_pipeline_is_checked_when_it_is_set() -> None:
    project = make_project("shop")
    token = make_token(owner(project))
    bad = api_call("patch", "/api/projects/shop", token, {"pipeline": "steps: nope\n"})
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["path"] == "steps"
    good = api_call("patch", "/api/projects/shop", token, {"pipeline": DEPLOY})
    assert good.status_code == 200
    assert good.json()["pipeline"] == DEPLOY
    # The audit log names which pipeline it is, not its (up to 1 MiB) text.
    update = AuditEvent.objects.filter(action="project.update").latest("id")
    assert update.details["pipeline"].startswith("sha256:")
    assert update.details["pipeline"].endswith(f"({len(DEPLOY)} characters)")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[GitServer]:
    (tmp_path / "git").mkdir()
    with git_server(tmp_path / "git") as running:
        yield running


def test_run_reads_the_pipeline_at_the_ref_and_builds_its_commit(server: GitServer) -> None:
    repo = server.repo("shop")
    main = repo.commit({".goci.yml": DEPLOY, "v.txt": "main\n"}, "main")
    release = repo.commit(
        {".goci.yml": DEPLOY.replace("default: latest", "default: from-release")},
        "release",
        branch="release",
    )
    repo.commit({}, "tagged", branch="release", ref="refs/tags/v1.0")
    tag = repo.commits[-1]
    project = make_project("shop")
    Project.objects.filter(pk=project.pk).update(repo_url=server.url(repo))
    token = make_token(owner(project))

    on_main = api_call("post", "/api/projects/shop/run", token, {"ref": "main"}).json()
    assert (on_main["ref"], on_main["commit"]) == ("refs/heads/main", main)
    on_release = api_call("post", "/api/projects/shop/run", token, {"ref": "release"}).json()
    assert on_release["commit"] == release
    assert "from-release" in Build.objects.get(pk=on_release["id"]).pipeline
    on_tag = api_call("post", "/api/projects/shop/run", token, {"ref": "v1.0"}).json()
    assert (on_tag["ref"], on_tag["commit"]) == ("refs/tags/v1.0", tag)
    default = api_call("post", "/api/projects/shop/run", token, {}).json()
    assert default["commit"] == main

    missing = api_call("post", "/api/projects/shop/run", token, {"ref": "nope"})
    assert missing.status_code == 422
    assert "no branch or tag named 'nope'" in missing.json()["detail"]

    # One deployment of production at a time, the oldest first: only this one, then.
    for other in Build.objects.exclude(pk=on_release["id"]):
        services.build_cancel(build=other)
    build = run_one(Build.objects.get(pk=on_release["id"]))
    assert build.status == Status.SUCCESS
    assert lines(build, "deploy") == ["deploying from-release level=low dry=false"]


def test_the_run_form_offers_branches_and_the_inputs_and_runs(server: GitServer) -> None:
    repo = server.repo("shop")
    repo.commit({".goci.yml": DEPLOY}, "main")
    repo.commit({}, "other", branch="feature")
    project = make_project("shop")
    Project.objects.filter(pk=project.pk).update(repo_url=server.url(repo))
    client = Client()
    client.force_login(owner(project))
    form = client.get("/projects/shop/run-ref")
    assert form.status_code == 200
    page = form.content.decode()
    for text in ('value="main"', 'value="feature"', 'name="input_version"', "input_dry-run"):
        assert text in page, text
    assert "The image tag to deploy" in page
    bad = client.post("/projects/shop/run-ref", {"ref": "main", "input_level": "extreme"})
    assert bad.status_code == 200
    assert "Select a valid choice" in bad.content.decode()
    ran = client.post("/projects/shop/run-ref", {"ref": "main", "input_version": "v9"})
    assert ran.status_code == 302
    build = Build.objects.get()
    assert ran["Location"] == f"/builds/{build.pk}/"
    assert build.inputs["version"] == "v9"
    assert build.trigger == "manual"


# -- environments and deployments -----------------------------------------------------


def test_a_deployment_is_recorded_and_listed() -> None:
    project = stored()
    token = make_token(owner(project))
    build = Build.objects.get(pk=api_call("post", "/api/projects/shop/run", token, {}).json()["id"])
    deployment = Deployment.objects.get()
    assert (deployment.environment.name, deployment.state) == ("production", "queued")
    run_one(build)
    deployment.refresh_from_db()
    assert deployment.state == "success"
    assert deployment.url == "https://app.example.com"
    environments = api_call("get", "/api/projects/shop/environments", token).json()
    assert [e["name"] for e in environments] == ["production"]
    assert environments[0]["current"]["build"] == build.number
    assert environments[0]["current"]["author"] == "ann"
    history = api_call("get", "/api/projects/shop/environments/production/deployments", token)
    assert [d["state"] for d in history.json()] == ["success"]
    missing = api_call("get", "/api/projects/shop/environments/staging/deployments", token)
    assert missing.status_code == 404
    page = Client()
    page.force_login(owner(project))
    html = page.get("/projects/shop/environments").content.decode()
    assert "https://app.example.com" in html
    assert "Redeploy" in html


def test_a_failed_deploy_step_is_a_failed_deployment_and_a_skipped_one_skipped() -> None:
    project = stored(
        pipeline="steps:\n  - name: deploy\n    environment: prod\n    run: exit 3\n"
        "  - name: other\n    environment: qa\n    when: {event: cron}\n    run: echo\n"
    )
    build = services.run_pipeline(
        project=project, ref="", inputs={}, trigger="manual", author=owner(project)
    )
    run_one(build)
    states = dict(Deployment.objects.values_list("environment__name", "state"))
    assert states == {"prod": "failure", "qa": "skipped"}


def test_protected_environments_take_maintainers_and_approvals() -> None:
    project = stored()
    ann = owner(project)
    dev = member(project, "dev", Role.DEVELOPER)
    boss = member(project, "boss", Role.MAINTAINER)
    environment = Environment.objects.create(project=project, name="production", protected=True)

    refused = api_call("post", "/api/projects/shop/run", make_token(dev), {})
    assert refused.status_code == 403
    assert "only maintainers may deploy" in refused.json()["detail"]
    assert not Build.objects.exists()

    deployments.environment_update(environment=environment, approval=True)
    answer = api_call("post", "/api/projects/shop/run", make_token(ann), {})
    build = Build.objects.get(pk=answer.json()["id"])
    deployment = Deployment.objects.get()
    assert deployment.state == "waiting"
    detail = api_call("get", f"/api/builds/{build.pk}", make_token(ann)).json()
    assert detail["queue_reason"] == "waiting for approval to deploy to production"
    assert job_claim(worker="w") is None  # held

    same = api_call(
        "post", f"/api/projects/shop/deployments/{deployment.pk}/approve", make_token(ann)
    )
    assert same.status_code == 403
    assert "second person" in same.json()["detail"]
    by_dev = api_call(
        "post", f"/api/projects/shop/deployments/{deployment.pk}/approve", make_token(dev)
    )
    assert by_dev.status_code == 403
    ok = api_call(
        "post", f"/api/projects/shop/deployments/{deployment.pk}/approve", make_token(boss)
    )
    assert ok.status_code == 200, ok.content
    assert ok.json()["approved_by"] == "boss"
    again = api_call(
        "post", f"/api/projects/shop/deployments/{deployment.pk}/approve", make_token(boss)
    )
    assert again.status_code == 409
    assert run_one(build).status == Status.SUCCESS
    actions = list(
        AuditEvent.objects.filter(action__startswith="deployment.")
        .order_by("id")
        .values_list("action", "actor_name")
    )
    assert actions == [("deployment.create", "ann"), ("deployment.approve", "boss")]


def test_a_rejected_deployment_cancels_its_build() -> None:
    project = stored()
    boss = member(project, "boss", Role.MAINTAINER)
    Environment.objects.create(project=project, name="production", protected=True, approval=True)
    build = services.run_pipeline(
        project=project, ref="", inputs={}, trigger="manual", author=owner(project)
    )
    deployment = Deployment.objects.get()
    client = Client()
    client.force_login(boss)
    page = client.get(f"/builds/{build.pk}/").content.decode()
    assert "Approve" in page
    assert "Reject" in page
    client.post(f"/projects/shop/deployments/{deployment.pk}/reject", {"next": "build"})
    build.refresh_from_db()
    deployment.refresh_from_db()
    assert (build.status, deployment.state) == ("canceled", "rejected")


def test_one_deployment_of_an_environment_runs_at_a_time() -> None:
    project = stored()
    first = services.run_pipeline(
        project=project, ref="", inputs={}, trigger="manual", author=owner(project)
    )
    second = services.run_pipeline(
        project=project, ref="", inputs={}, trigger="manual", author=owner(project)
    )
    taken = job_claim(worker="w1")
    assert taken is not None
    assert taken.build_id == first.pk
    assert job_claim(worker="w2") is None  # the second waits for the first
    detail = api_call("get", f"/api/builds/{second.pk}", make_token(owner(project))).json()
    assert detail["queue_reason"] == (
        f"waiting for the deployment of #{first.number} to production to finish"
    )
    services.build_cancel(build=first)
    from runners.queue import job_finish

    job_finish(job_id=taken.pk, attempt=taken.attempt, status="canceled")
    again = job_claim(worker="w2")
    assert again is not None
    assert again.build_id == second.pk


@pytest.mark.skipif(connection.vendor != "postgresql", reason="needs concurrent connections")
def test_racing_workers_start_one_deployment_of_an_environment() -> None:
    project = stored()
    for _ in range(6):
        services.run_pipeline(
            project=project, ref="", inputs={}, trigger="manual", author=owner(project)
        )
    barrier = threading.Barrier(6)
    claimed: list[int] = []

    def claim(name: str) -> None:
        try:
            barrier.wait()
            job = job_claim(worker=name)
            if job is not None:
                claimed.append(job.build_id)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=claim, args=(f"w{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(claimed) == 1
    assert Deployment.objects.filter(state="running").count() == 1


def test_redeploy_runs_the_earlier_deployment_again_as_a_rollback() -> None:
    project = stored()
    token = make_token(owner(project))
    first = Build.objects.get(
        pk=api_call("post", "/api/projects/shop/run", token, {"inputs": {"version": "v1"}}).json()[
            "id"
        ]
    )
    run_one(first)
    Project.objects.filter(pk=project.pk).update(pipeline=DEPLOY.replace("deploying", "new"))
    second = services.run_pipeline(
        project=project, ref="", inputs={"version": "v2"}, trigger="manual", author=owner(project)
    )
    run_one(second)
    old = Deployment.objects.get(build=first)
    answer = api_call("post", f"/api/projects/shop/deployments/{old.pk}/redeploy", token)
    assert answer.status_code == 201, answer.content
    rollback = Build.objects.get(pk=answer.json()["id"])
    assert rollback.trigger == "rollback"
    assert rollback.pipeline == first.pipeline
    assert rollback.inputs == first.inputs
    run_one(rollback)
    assert lines(rollback, "deploy") == ["deploying v1 level=low dry=false"]
    newest = Deployment.objects.get(build=rollback)
    assert (newest.rollback_of_id, newest.state) == (old.pk, "success")
    current = api_call("get", "/api/projects/shop/environments", token).json()[0]["current"]
    assert (current["build"], current["trigger"]) == (rollback.number, "rollback")
    failed = Deployment.objects.filter(state="running")
    assert not failed.exists()
    not_success = api_call(
        "post", f"/api/projects/shop/deployments/{newest.pk + 99}/redeploy", token
    )
    assert not_success.status_code == 404


def test_another_projects_deployment_is_a_404() -> None:
    project = stored()
    run_one(
        services.run_pipeline(
            project=project, ref="", inputs={}, trigger="manual", author=owner(project)
        )
    )
    deployment = Deployment.objects.get()
    stranger = User.objects.create_user(username="eve")
    make_project("evil", user="eve")
    token = make_token(stranger)
    for path in (
        f"/api/projects/evil/deployments/{deployment.pk}/redeploy",
        f"/api/projects/evil/deployments/{deployment.pk}/approve",
        f"/api/projects/shop/deployments/{deployment.pk}/redeploy",
    ):
        assert api_call("post", path, token).status_code == 404, path
    assert api_call("get", "/api/projects/shop/environments", token).status_code == 404


def test_a_push_whose_pipeline_deploys_is_recorded_when_its_pipeline_is_read(
    server: GitServer,
) -> None:
    repo = server.repo("shop")
    pipeline = "steps:\n  - name: ship\n    environment: staging\n    run: echo shipped\n"
    commit = repo.commit({".goci.yml": pipeline}, "one")
    project = make_project("shop")
    Project.objects.filter(pk=project.pk).update(repo_url=server.url(repo))
    project.refresh_from_db()
    build, _ = services.build_create(
        project=project, pipeline="", commit=commit, ref="refs/heads/main", trigger="push"
    )
    assert not Deployment.objects.exists()  # its pipeline is not known yet
    build = run_one(build)
    assert build.status == Status.SUCCESS
    deployment = Deployment.objects.get()
    assert (deployment.environment.name, deployment.state, deployment.commit) == (
        "staging",
        "success",
        commit,
    )


def test_a_push_to_a_protected_environment_waits_for_approval_then_deploys(
    server: GitServer,
) -> None:
    repo = server.repo("shop")
    pipeline = "steps:\n  - name: ship\n    environment: production\n    run: echo shipped\n"
    commit = repo.commit({".goci.yml": pipeline}, "one")
    project = make_project("shop")
    Project.objects.filter(pk=project.pk).update(repo_url=server.url(repo))
    Environment.objects.create(project=project, name="production", protected=True)
    project.refresh_from_db()
    build, _ = services.build_create(
        project=project, pipeline="", commit=commit, ref="refs/heads/main", trigger="push"
    )
    build = run_one(build)  # reads the pipeline, finds it must wait, hands the job back
    assert build.status == Status.RUNNING  # started, and queued again
    job = build.jobs.get()
    assert (job.status, job.attempt) == (Status.QUEUED, 2)
    assert lines(build, "clone")[-1] == (
        "[goci] waiting for approval to deploy to production: back to the queue until then"
    )
    deployment = Deployment.objects.get()
    assert deployment.state == "waiting"
    assert job_claim(worker="w") is None
    boss = member(project, "boss", Role.MAINTAINER)
    deployments.approve(deployment=deployment, user=boss)
    build = run_one(build)
    assert build.status == Status.SUCCESS
    deployment.refresh_from_db()
    assert (deployment.state, deployment.commit) == ("success", commit)
    assert lines(build, "ship") == ["shipped"]


def test_a_push_waits_for_the_deployment_that_runs_then_deploys(server: GitServer) -> None:
    repo = server.repo("shop")
    pipeline = "steps:\n  - name: ship\n    environment: production\n    run: echo shipped\n"
    commit = repo.commit({".goci.yml": pipeline}, "one")
    project = stored(pipeline=pipeline)
    first = services.run_pipeline(
        project=project, ref="", inputs={}, trigger="manual", author=owner(project)
    )
    running = job_claim(worker="w1")  # the first deployment runs
    assert running is not None
    assert running.build_id == first.pk
    Project.objects.filter(pk=project.pk).update(repo_url=server.url(repo))
    project.refresh_from_db()
    push, _ = services.build_create(
        project=project, pipeline="", commit=commit, ref="refs/heads/main", trigger="push"
    )
    push = run_one(push)
    assert lines(push, "clone")[-1] == (
        f"[goci] waiting for the deployment of #{first.number} to production to finish: "
        "back to the queue until then"
    )
    assert push.jobs.get().status == Status.QUEUED
    from runners.queue import job_finish

    services.build_cancel(build=first)
    job_finish(job_id=running.pk, attempt=running.attempt, status="canceled")
    assert run_one(push).status == Status.SUCCESS


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("patch", "/api/projects/shop/environments/a%00b", {"protected": True}),
        ("patch", "/api/projects/shop/environments/%ED%A0%80", {"protected": True}),
        ("patch", "/api/projects/shop/environments/" + "x" * 5000, {"protected": True}),
        ("patch", "/api/projects/shop/environments/prod", {"protected": "x" * 10_000_000}),
        ("patch", "/api/projects/shop/environments/prod", {"protected": 10**30}),
        ("patch", "/api/projects/shop/environments/prod", {"colour": "red"}),
        ("get", "/api/projects/shop/environments/a%00b/deployments", None),
        ("post", f"/api/projects/shop/deployments/{10**30}/approve", None),
        ("post", f"/api/projects/shop/deployments/{10**30}/redeploy", None),
    ],
)
def test_hostile_environment_and_deployment_requests_are_4xx_json(
    method: str, path: str, body: Any
) -> None:
    project = stored()
    answer = api_call(method, path, make_token(owner(project)), body)
    assert 400 <= answer.status_code < 500, answer.content[:300]
    assert answer["Content-Type"].startswith("application/json")
    assert not Environment.objects.exists()


def test_a_developer_is_told_on_the_pages_that_only_maintainers_deploy_there() -> None:
    project = stored()
    dev = member(project, "dev", Role.DEVELOPER)
    build = services.run_pipeline(
        project=project, ref="", inputs={}, trigger="manual", author=owner(project)
    )
    Environment.objects.filter(name="production").update(protected=True)
    client = Client()
    client.force_login(dev)
    rerun = client.post(f"/builds/{build.pk}/rerun", follow=True)
    assert rerun.status_code == 200
    assert "production is a protected environment" in rerun.content.decode()
    pasted = client.post("/projects/shop/run", {"pipeline": DEPLOY})
    assert pasted.status_code == 200
    assert "only maintainers may deploy to it" in pasted.content.decode()
    assert Build.objects.count() == 1
