"""The dashboard in a real browser: run a pipeline, watch it live, reconnect, stay safe."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.e2e.conftest import Server, screenshot, sign_in

pytestmark = pytest.mark.browser

ADMIN = "admin"


def make_project(server: Server, slug: str, owner: str = ADMIN) -> None:
    server.shell(
        "from django.contrib.auth.models import User; from builds import services; "
        f"services.project_create(user=User.objects.get(username={owner!r}), slug={slug!r})"
    )


def submit(server: Server, slug: str, pipeline: str) -> int:
    code = (
        "from builds import services; from builds.models import Project; "
        f"b, _ = services.build_create(project=Project.objects.get(slug={slug!r}), "
        f"pipeline={pipeline!r}); print(b.pk)"
    )
    return int(server.shell(code))


def wait_until(page: Any, expression: str, timeout: float = 30000) -> None:
    """Wait until a JavaScript expression is true on the page (`timeout` in ms).

    Not page.wait_for_function: it compiles the expression with eval inside the page,
    which the Content-Security-Policy refuses; page.evaluate goes through DevTools."""
    deadline = time.monotonic() + timeout / 1000
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, (
            f"still false after {timeout / 1000:.0f} s: {expression}"
        )
        time.sleep(0.05)


def cancel_from_the_page(page: Any) -> None:
    """Press the header's Cancel and wait until the page says the build is canceled."""
    page.click('#build-header [hx-post$="/cancel"] button, #build-header button:has-text("Cancel")')
    wait_until(
        page, "document.querySelector('#build').dataset.status === 'canceled'", timeout=10000
    )


def build_status(page: Any) -> str:
    return str(page.get_attribute("#build", "data-status"))


def shown_lines(page: Any, step: str) -> list[str]:
    """The text of every rendered line of a step, in order."""
    return list(
        page.eval_on_selector_all(
            f'section.step[data-step="{step}"] .log .line .text',
            "els => els.map(e => e.textContent)",
        )
    )


def wait_for_lines(page: Any, step: str, count: int, timeout: float = 10000) -> None:
    """Wait until a step shows `count` lines with their text. The line count can come
    first (the page's data-line-count, or a live message) and the text after it, when
    the page of lines it asked the server for arrives."""
    wait_until(
        page,
        f"document.querySelectorAll('section.step[data-step=\"{step}\"] .log .line .text')"
        f".length === {count}",
        timeout=timeout,
    )


@pytest.fixture
def admin_page(page: Any, server: Server) -> Any:
    sign_in(page, ADMIN, server.admin_password)
    return page


def test_run_a_pipeline_from_the_project_page_and_watch_it_live(
    admin_page: Any, server: Server
) -> None:
    page = admin_page
    make_project(server, "live")
    page.goto("/projects/live/")
    pipeline = (
        "steps:\n"
        "  - name: slow\n"
        "    run: |\n"
        "      for i in $(seq 10); do printf '\\033[32mline %s\\033[0m\\n' $i; sleep 0.2; done\n"
    )
    page.fill("textarea[name=pipeline]", pipeline)
    page.click("form#run-form button[type=submit]")
    page.wait_for_url("**/builds/*/")
    # A line is on screen while the step is still running (the page learns the step's
    # status at the end of its catch-up, a moment after the lines: wait for both)...
    slow = "document.querySelector('section.step[data-step=\"slow\"]')"
    wait_until(
        page,
        f"{slow} && {slow}.dataset.status === 'running' && !!{slow}.querySelector('.log .line')",
        timeout=15000,
    )
    # ...then the status turns to success without a reload.
    wait_until(page, "document.querySelector('#build').dataset.status === 'success'", timeout=20000)
    assert shown_lines(page, "slow") == [f"line {i}" for i in range(1, 11)]
    assert page.locator('section.step[data-step="slow"] .log .ansi-fg-2').count() >= 1
    # The header follows too: Cancel gives way to Rerun without a reload.
    page.wait_for_selector('#build-header [hx-post$="/rerun"]', timeout=10000)
    assert page.locator('#build-header [hx-post$="/cancel"]').count() == 0
    screenshot(page, "build-page")
    page.goto("/")
    screenshot(page, "dashboard")


def test_a_forced_disconnect_resumes_with_every_line_exactly_once(
    admin_page: Any, server: Server
) -> None:
    page = admin_page
    make_project(server, "flaky-net")
    build = submit(
        server,
        "flaky-net",
        "steps:\n  - name: talk\n    run: for i in $(seq 40); do echo n$i; sleep 0.1; done\n",
    )
    page.goto(f"/builds/{build}/")
    wait_until(page, "window.gociLog && window.gociLog.lastLine('talk') >= 5", timeout=15000)
    page.evaluate("window.gociLog.forceDisconnect()")
    wait_until(page, "document.querySelector('#build').dataset.status === 'success'", timeout=30000)
    wait_until(page, "window.gociLog.lastLine('talk') === 40", timeout=10000)
    wait_for_lines(page, "talk", 40)
    assert shown_lines(page, "talk") == [f"n{i}" for i in range(1, 41)]


def test_log_lines_never_become_elements(admin_page: Any, server: Server) -> None:
    page = admin_page
    make_project(server, "xss")
    evil = [
        "<script>window.pwned = 1</script>",
        '<img src=x onerror="window.pwned = 2">',
        "\\033]0;title\\007after-osc",
        "\\033[2Jcleared\\033[Hhome",
    ]
    script = "".join(f"printf '%s\\n' {json.dumps(line)}\n" for line in evil[:2])
    script += "".join(f"printf '{line}\\n'\n" for line in evil[2:])
    pipeline = "steps:\n  - name: evil\n    run: |\n" + "".join(
        f"      {line}\n" for line in script.splitlines()
    )
    build = submit(server, "xss", pipeline)
    page.goto(f"/builds/{build}/")
    wait_until(page, "document.querySelector('#build').dataset.status === 'success'", timeout=20000)
    wait_until(page, "window.gociLog.lastLine('evil') === 4", timeout=10000)
    wait_for_lines(page, "evil", 4)
    log = page.locator('section.step[data-step="evil"] .log')
    assert log.locator("script, img").count() == 0
    assert page.evaluate("window.pwned") is None
    lines = shown_lines(page, "evil")
    assert lines[:2] == evil[:2]
    assert lines[2:] == ["after-osc", "clearedhome"]


def test_a_100000_line_log_opens_and_scrolls_to_the_end(admin_page: Any, server: Server) -> None:
    page = admin_page
    make_project(server, "big")
    build = submit(server, "big", "steps:\n  - name: loud\n    run: seq 100000\n")
    deadline = time.monotonic() + 60
    while (
        server.shell(
            f"from builds.models import Build; print(Build.objects.get(pk={build}).status)"
        )
        != "success"
    ):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    began = time.monotonic()
    page.goto(f"/builds/{build}/")
    wait_until(
        page,
        "[...document.querySelectorAll('section.step[data-step=\"loud\"] .log .line .text')]"
        ".some(e => e.textContent === '100000')",
        timeout=15000,
    )
    opened = time.monotonic() - began
    # Only what is near the viewport is in the page.
    assert len(shown_lines(page, "loud")) < 2000
    page.locator('section.step[data-step="loud"] .log').evaluate("el => el.scrollTop = 0")
    wait_until(
        page,
        "[...document.querySelectorAll('section.step[data-step=\"loud\"] .log .line .text')]"
        ".some(e => e.textContent === '1')",
        timeout=15000,
    )
    print(f"100,000-line log: last line shown {opened:.2f} s after navigation")  # noqa: T201


def test_another_user_gets_404_for_the_page_the_raw_log_and_the_socket(
    page: Any, server: Server
) -> None:
    make_project(server, "private")
    build = submit(server, "private", "steps:\n  - name: s\n    run: echo secret\n")
    sign_in(page, "mallory", "mallory-pass-123")
    assert page.goto(f"/builds/{build}/").status == 404
    assert page.goto(f"/builds/{build}/steps/0/raw").status == 404
    assert page.goto(f"/builds/{build}/log.txt").status == 404
    page.goto("/")
    code = page.evaluate(
        """url => new Promise(resolve => {
            const ws = new WebSocket(url);
            ws.onopen = () => resolve('opened');
            ws.onclose = event => resolve(event.code);
        })""",
        f"{server.url.replace('http', 'ws')}/ws/builds/{build}/",
    )
    assert code != "opened"


def test_cancel_a_running_build_then_rerun_it_from_the_page(
    admin_page: Any, server: Server
) -> None:
    page = admin_page
    make_project(server, "stoppable")
    build = submit(server, "stoppable", "steps:\n  - name: long\n    run: echo go; sleep 60\n")
    page.goto(f"/builds/{build}/")
    wait_until(page, "window.gociLog && window.gociLog.lastLine('long') >= 1", timeout=15000)
    cancel_from_the_page(page)
    assert page.get_attribute('section.step[data-step="long"]', "data-status") == "canceled"
    page.wait_for_selector('#build-header [hx-post$="/rerun"]', timeout=10000)
    page.click('#build-header [hx-post$="/rerun"] button, #build-header button:has-text("Rerun")')
    page.wait_for_url(lambda url: url.rstrip("/").endswith(str(build)) is False, timeout=10000)
    assert page.locator("h1").first.inner_text().startswith("Build #2")
    # The rerun sleeps for a minute on the server's one worker: stop it, so that the
    # next tests' builds do not queue behind it.
    page.wait_for_selector('#build-header [hx-post$="/cancel"]', timeout=10000)
    cancel_from_the_page(page)  # queued or running: the page shows it either way


def test_a_build_canceled_while_queued_shows_it_without_a_reload(
    admin_page: Any, server: Server
) -> None:
    """No worker ran it, so none says it ended: the page learns it from its header."""
    page = admin_page
    make_project(server, "queued-cancel")
    busy = submit(server, "queued-cancel", "steps:\n  - name: busy\n    run: sleep 60\n")
    waiting = submit(server, "queued-cancel", "steps:\n  - name: later\n    run: 'true'\n")
    page.goto(f"/builds/{busy}/")
    wait_until(page, "document.querySelector('#build').dataset.status === 'running'", 15000)
    page.goto(f"/builds/{waiting}/")
    assert page.get_attribute("#build", "data-status") == "queued"
    cancel_from_the_page(page)
    page.goto(f"/builds/{busy}/")  # and free the server's one worker for the next tests
    cancel_from_the_page(page)
