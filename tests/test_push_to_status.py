"""The whole path of issue #12, end to end: a `git push` to a real git server (smart
HTTP through `git http-backend` on 127.0.0.1) runs its post-receive hook, which
delivers a signed Gitea push event to Goci's /hooks/; Goci queues a build of the
pushed commit, the worker checks that commit out and runs the pipeline read from it,
and the commit statuses reach the forge's API (recorded by the same server). A pull
request from a fork runs the same way, with no secret."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User

from builds import services
from builds.commit_status import StatusSender
from builds.forges import gitea
from builds.models import Build, LogChunk, Status, Step, WebhookDelivery
from builds.secrets import FORGE_TOKEN, secret_set
from tests.git_server import GitServer, Repo, git_server
from tests.queue_helpers import make_project, run_one

pytestmark = pytest.mark.django_db(transaction=True)

CORPUS = Path(__file__).resolve().parent / "corpus" / "webhooks" / "gitea"
FORGE_API_TOKEN = "forge-api-token-1234"  # noqa: S105  (a test value)
DEPLOY_KEY = "deploy-key-value-5678"

# The post-receive hook: for each pushed ref, a Gitea push delivery made from the
# corpus's real one, with the pushed commits and the files each changed, signed with
# the project's webhook secret and posted to Goci.
HOOK = """
import hashlib, hmac, json, os, subprocess, sys, urllib.request, uuid
payload = json.load(open(os.environ["CORPUS"]))
for line in sys.stdin:
    old, new, ref = line.split()
    def git(*args):
        return subprocess.run(["git", *args], capture_output=True, text=True).stdout
    span = new if set(old) == {"0"} else f"{old}..{new}"
    commits = []
    for sha in git("rev-list", "--reverse", span).split():
        files = git("diff-tree", "--no-commit-id", "--name-only", "-r", "--root", sha).split()
        commits.append({"id": sha, "message": git("log", "-1", "--format=%B", sha),
                        "author": {"name": "Pusher", "email": "p@example.com"},
                        "added": [], "removed": [], "modified": files})
    payload.update(ref=ref, before=old, after=new, commits=commits, total_commits=len(commits),
                   head_commit=commits[-1], compare_url=os.environ["URL"] + "/compare")
    payload["repository"]["clone_url"] = os.environ["CLONE_URL"]
    body = json.dumps(payload).encode()
    signature = hmac.new(os.environ["SECRET"].encode(), body, hashlib.sha256).hexdigest()
    request = urllib.request.Request(os.environ["URL"] + "/hooks/shop", data=body, headers={
        "Content-Type": "application/json", "X-Gitea-Event": "push",
        "X-Gitea-Delivery": str(uuid.uuid4()), "X-Gitea-Signature": signature})
    with urllib.request.urlopen(request) as answer:
        print("goci:", answer.status, answer.read().decode(), file=sys.stderr)
"""

PIPELINE = """
steps:
  - name: show
    env: {DEPLOY_KEY: {from_secret: deploy_key}}
    run: |
      echo "HEAD is $(git rev-parse HEAD)"
      cat hello.txt
      echo "event $GOCI_EVENT, deploy key: ${DEPLOY_KEY:-none}"
  - name: docs
    when: {path: docs/**}
    run: echo "docs changed"
"""


@pytest.fixture
def forge(tmp_path: Path, settings: Any) -> Any:
    settings.GOCI_CLONE_ALLOWED_HOSTS = ["127.0.0.1"]
    settings.GOCI_WORKSPACE_ROOT = tmp_path / "ws"
    with git_server(tmp_path / "git") as server:
        yield server


def _project(server: GitServer, live_url: str, settings: Any) -> tuple[Repo, Any]:
    settings.GOCI_PUBLIC_URL = live_url
    repo = Repo.create(server.root / "acme", "shop")
    project = make_project("shop")
    services.project_update(project=project, repo_url=f"{server.base}/acme/shop.git")
    owner = User.objects.get(username="ann")
    secret_set(project=project, name=FORGE_TOKEN, value=FORGE_API_TOKEN, user=owner)
    # A secret the project has: a fork's pull request must not see it.
    secret_set(
        project=project,
        name="DEPLOY_KEY",
        value=DEPLOY_KEY,
        user=owner,
        events=["push", "pull_request"],
    )
    project.refresh_from_db()
    return repo, project


def _log(build: Build) -> str:
    chunks = LogChunk.objects.filter(step__job__build=build)
    return "\n".join(chunks.order_by("step__position", "first_line").values_list("text", flat=True))


def _statuses(server: GitServer, sha: str) -> list[dict[str, Any]]:
    path = f"/api/v1/repos/acme/shop/statuses/{sha}"
    return [json.loads(r.body) for r in server.seen() if r.path == path]


def test_a_push_to_a_real_git_server_builds_the_pushed_commit_and_reports_back(
    forge: GitServer, live_server: Any, settings: Any, tmp_path: Path
) -> None:
    repo, project = _project(forge, live_server.url, settings)
    hook = tmp_path / "hook.py"
    hook.write_text(HOOK)
    repo.on_push(
        [sys.executable, str(hook)],
        env={
            "CORPUS": str(CORPUS / "push-branch.json"),
            "URL": live_server.url,
            "SECRET": services.webhook_secret(project),
            "CLONE_URL": project.repo_url,
        },
    )
    repo.commit({".goci.yml": PIPELINE, "hello.txt": "hello from the first commit\n"}, "first")
    first_build = Build.objects.get()
    # The first build ran no step yet when the second push arrives: it is superseded.
    second = repo.commit({"hello.txt": "hello from the second commit\n"}, "second")
    third = repo.commit({"docs/guide.md": "# Guide\n"}, "third: the docs")
    builds = list(Build.objects.order_by("id"))
    assert [b.commit for b in builds][1:] == [second, third]
    first_build.refresh_from_db()
    assert first_build.status == Status.CANCELED
    assert first_build.superseded_by_id == builds[1].pk
    second_build = builds[1]
    second_build.refresh_from_db()
    assert second_build.superseded_by_id == builds[2].pk

    build = builds[2]
    assert (build.trigger, build.ref, build.forge) == ("push", "refs/heads/main", "gitea")
    assert build.message.strip() == "third: the docs"
    assert build.changed_files == ["docs/guide.md"]
    assert build.pipeline == ""  # read from the repository by the worker
    delivery = WebhookDelivery.objects.filter(build=build).get()
    assert delivery.outcome == "build"

    StatusSender().send_due()  # what a sender beside the server sends meanwhile
    run_one(build)

    log = _log(build)
    assert build.status == Status.SUCCESS, log
    assert f"HEAD is {third}" in log
    assert "hello from the second commit" in log  # the commit's files, at that commit
    assert "event push, deploy key: ********" in log  # a push gets the secret, masked
    assert "docs changed" in log  # when: {path: docs/**} matched the pushed file
    assert build.pipeline.strip() == PIPELINE.strip()  # the snapshot, from the commit
    steps = dict(Step.objects.filter(job__build=build).values_list("name", "status"))
    assert steps == {"clone": "success", "show": "success", "docs": "success"}

    StatusSender().send_due()
    sent = _statuses(forge, third)
    assert [s["state"] for s in sent] == ["pending", "success"]
    assert {s["context"] for s in sent} == {"goci/shop"}
    assert sent[-1]["target_url"] == f"{live_server.url}/builds/{build.pk}/"
    calls = [r for r in forge.seen() if r.path.startswith("/api/")]
    assert all(r.headers["authorization"] == f"token {FORGE_API_TOKEN}" for r in calls)
    # The superseded builds said so to the forge: their pending became an error.
    assert [s["state"] for s in _statuses(forge, second)][-1] == "error"


def test_a_pull_request_from_a_fork_runs_its_head_without_any_secret(
    forge: GitServer, live_server: Any, settings: Any
) -> None:
    repo, project = _project(forge, live_url=live_server.url, settings=settings)
    base = repo.commit({".goci.yml": PIPELINE, "hello.txt": "base\n"}, "base")
    head = repo.commit(
        {"hello.txt": "from the fork\n"}, "fork's change", branch="feature", ref="refs/pull/7/head"
    )
    assert open_pull_request(live_server.url, project, base, head, fork=True) == 201
    build = Build.objects.get()
    assert (build.fork, build.pr_number, build.commit) == (True, 7, head)

    run_one(build)

    log = _log(build)
    assert build.status == Status.SUCCESS, log
    assert f"HEAD is {head}" in log
    assert "from the fork" in log
    assert "event pull_request, deploy key: none" in log  # no secret in a fork's build
    assert DEPLOY_KEY not in log
    assert build.changed_files == ["hello.txt"]
    assert "docs changed" not in log  # the PR changed no docs: that step was skipped
    assert _statuses(forge, head) == []  # the pending was never sent: the end came first
    StatusSender().send_due()
    assert [s["state"] for s in _statuses(forge, head)] == ["success"]


def open_pull_request(url: str, project: Any, base: str, head: str, *, fork: bool) -> int:
    """Gitea's delivery of pull request 7 (branch feature into main), from a fork or
    not, signed and posted to Goci at `url`; the answer's status."""
    payload = json.loads((CORPUS / "pull_request-opened.json").read_text())
    payload["number"] = payload["pull_request"]["number"] = 7
    pull = payload["pull_request"]
    pull["head"].update(sha=head, ref="feature", repo_id=999 if fork else pull["base"]["repo_id"])
    pull["base"].update(sha=base, ref="main")
    body = json.dumps(payload).encode()
    headers = {
        "X-Gitea-Event": "pull_request",
        "X-Gitea-Delivery": f"pr-7-{head}",
        "X-Gitea-Signature": gitea.sign(body, services.webhook_secret(project)),
    }
    return live_server_post(url, body, headers)


def live_server_post(url: str, body: bytes, headers: dict[str, str]) -> int:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(  # noqa: S310  (the test's own http:// server)
        url + "/hooks/shop", data=body, headers={"Content-Type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(request) as answer:  # noqa: S310
            return int(answer.status)
    except urllib.error.HTTPError as error:
        raise AssertionError(f"{error.code}: {error.read().decode()}") from None
