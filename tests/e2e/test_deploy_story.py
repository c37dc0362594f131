"""The users' "Auto Deploy" story, end to end (issue #15's "Done when"): a maintainer
presses Run with an input, the deploy script runs on a real sshd over SSH, the
Environments page shows the deployment, Slack- and Telegram-shaped servers on
127.0.0.1 receive the news, a Redeploy rolls back to the previous commit, and the
audit log has each step. Its own `goci up`, git server, sshd and recorder."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import screenshot, sign_in
from tests.git_server import git_server
from tests.http_recorder import Recorder, http_recorder
from tests.sshd import sshd
from tests.test_up import PASSWORD, Up, free_port, manage

pytestmark = pytest.mark.browser

BOT_TOKEN = "424242:AAstoryBotToken_x9-abcdefgh"  # noqa: S105
CHAT = "-100777"


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    """Slack's incoming webhook and Telegram's Bot API, as far as Goci uses them."""
    with http_recorder() as running:
        yield running


def pipeline(record: Path, port: int) -> str:
    return f"""\
inputs:
  version: {{type: string, default: latest, description: The image tag to deploy}}
steps:
  - name: deploy
    environment: {{name: production, url: 'https://app.example.com'}}
    ssh:
      host: 127.0.0.1
      port: {port}
      user: root
      key_secret: ssh_key
      known_hosts_secret: ssh_known_hosts
      script: |
        echo "pulling app:$GOCI_INPUT_VERSION"
        echo "$GOCI_COMMIT_SHA $GOCI_INPUT_VERSION" >> {record}
        echo "restarted"
"""


def setup(data_dir: Path, code: str) -> str:
    """manage() that says what went wrong."""
    try:
        return manage(data_dir, code)
    except subprocess.CalledProcessError as error:
        raise AssertionError(error.stderr) from None


def wait(condition: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def deploy_from_the_run_form(page: Any, version: str) -> str:
    page.goto("/projects/app/")
    page.wait_for_selector("form#run-ref input[name=input_version]", timeout=30000)
    if version == "v1":
        screenshot(page, "run-form")
    page.fill("form#run-ref input[name=input_version]", version)
    page.click("form#run-ref button[type=submit]")
    page.wait_for_url("**/builds/*/", timeout=30000)
    wait_for_status(page, "success")
    return str(page.url)


def wait_for_status(page: Any, status: str) -> None:
    deadline = time.monotonic() + 60
    while page.get_attribute("#build", "data-status") != status:
        assert time.monotonic() < deadline, page.get_attribute("#build", "data-status")
        time.sleep(0.2)


def test_auto_deploy_story(
    browser: Any, tmp_path: Path, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "story" / "data"
    data_dir.parent.mkdir()
    record = tmp_path / "deployed.log"
    (tmp_path / "git").mkdir()
    with sshd(tmp_path / "ssh") as host, git_server(tmp_path / "git") as forge:
        repo = forge.repo("app")
        first = repo.commit({".goci.yml": pipeline(record, host.port), "app.txt": "1\n"}, "v1")
        port = free_port()
        # The story's server: clones and notifications may reach 127.0.0.1, Telegram's
        # API is the recorder, and links in the news point at this server.
        monkeypatch.setenv("GOCI_CLONE_ALLOWED_HOSTS", "127.0.0.1")
        monkeypatch.setenv("GOCI_TELEGRAM_API", recorder.base)
        monkeypatch.setenv("GOCI_PUBLIC_URL", f"http://127.0.0.1:{port}")
        up = Up(data_dir, port)
        try:
            up.wait_ready()
            match = PASSWORD.search(up.output())
            assert match, up.output()
            setup(
                data_dir,
                "from django.contrib.auth.models import User\n"
                "from builds import services\n"
                "from builds.secrets import secret_set\n"
                "from builds.notifications import notification_target_create\n"
                "admin = User.objects.get(username='admin')\n"
                f"p = services.project_create(user=admin, slug='app', "
                f"repo_url={forge.url(repo)!r})\n"
                f"secret_set(project=p, name='SSH_KEY', value={host.key!r}, user=admin)\n"
                f"secret_set(project=p, name='SSH_KNOWN_HOSTS', value={host.known_hosts!r}, "
                "user=admin)\n"
                "notification_target_create(project=p, name='team', kind='slack', "
                f"credentials={{'url': {recorder.base + '/slack/T1/B2/x'!r}}}, "
                "when='never', deployments=True)\n"
                "notification_target_create(project=p, name='bot', kind='telegram', "
                f"credentials={{'token': {BOT_TOKEN!r}, 'chat_id': {CHAT!r}}}, "
                "when='always', deployments=True)\n",
            )
            context = browser.new_context(base_url=up.url, viewport={"width": 1280, "height": 900})
            page = context.new_page()
            sign_in(page, "admin", match.group(1))

            # A maintainer presses Run with an input; the script runs on the host.
            deploy_from_the_run_form(page, "v1")
            assert record.read_text() == f"{first} v1\n"
            assert "pulling app:v1" in page.text_content("section.step[data-step='deploy']")
            assert page.text_content("[data-inputs]") == "version=v1"
            second = repo.commit({"app.txt": "2\n"}, "v2")
            deploy_from_the_run_form(page, "v2")
            assert record.read_text().splitlines()[-1] == f"{second} v2"

            # The Environments page shows what is deployed now, and the history.
            page.goto("/projects/app/environments")
            production = page.locator("[data-environment=production]")
            assert second[:12] in production.locator("[data-current]").text_content()
            assert "https://app.example.com" in production.text_content()
            screenshot(page, "environments")

            # Redeploy the first deployment: a rollback to the previous commit.
            oldest = production.locator("tr[data-deployment]").last
            oldest.locator("button:has-text('Redeploy')").click()
            page.wait_for_url("**/builds/*/", timeout=30000)
            wait_for_status(page, "success")
            assert "rollback" in page.text_content("#build-header")
            assert record.read_text().splitlines()[-1] == f"{first} v1"
            screenshot(page, "rollback-build")
            page.goto("/projects/app/environments")
            current = page.locator("[data-environment=production] [data-current]")
            assert first[:12] in current.text_content()

            # Slack and Telegram heard about each deployment (and Telegram each build).
            wait(lambda: len(recorder.bodies("/slack/")) >= 3, "Slack's messages")
            wait(lambda: len(recorder.bodies(f"/bot{BOT_TOKEN}/")) >= 6, "Telegram's")
            slack = [body["text"] for body in recorder.bodies("/slack/")]
            assert all("production" in text for text in slack), slack
            telegram = recorder.bodies(f"/bot{BOT_TOKEN}/sendMessage")
            assert {body["chat_id"] for body in telegram} == {CHAT}
            # Each delivery is listed on the project, none with an error.
            page.goto("/projects/app/notifications")
            deliveries = page.text_content("body")
            assert BOT_TOKEN not in deliveries
            assert "sent" in deliveries
            screenshot(page, "notifications")

            # The audit log has each step.
            actions = manage(
                data_dir,
                "from goci.audit.models import AuditEvent\n"
                "print(','.join(AuditEvent.objects.order_by('id').values_list('action', "
                "flat=True)))",
            ).split(",")
            assert actions.count("build.run") == 3
            assert actions.count("deployment.create") == 3
            for action in ("project.create", "secret.set", "notification.create"):
                assert action in actions, actions
            context.close()
        finally:
            if up.proc.poll() is None:
                up.stop()
            up.proc.wait()
