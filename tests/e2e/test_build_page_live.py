"""The build page while a build runs, in Chromium against a real `goci up`: durations
that tick, exit codes and skip reasons that appear without a reload, a failed build
opened at its failure, the step list, and a phone-sized screen."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.conftest import Server, screenshot
from tests.e2e.test_browser import (  # noqa: F401  (admin_page: a fixture)
    admin_page,
    make_project,
    submit,
    wait_until,
)

pytestmark = pytest.mark.browser

FAILING = """\
steps:
  - name: slow
    run: sleep 4; echo slow done
  - name: fails
    needs: [slow]
    run: |
      for i in $(seq 300); do echo "fails line $i"; done
      exit 3
  - name: after
    needs: [fails]
    run: echo never
"""


def step(name: str) -> str:
    return f'section.step[data-step="{name}"]'


def is_open(page: Any, name: str) -> bool:
    return bool(page.eval_on_selector(f"{step(name)} details", "d => d.open"))


def wait_for_build(page: Any, statuses: str) -> None:
    wait_until(
        page, f"{statuses.split()!r}.includes(document.querySelector('#build').dataset.status)"
    )


def test_a_running_build_ticks_and_its_failure_shows_without_a_reload(
    admin_page: Any,  # noqa: F811
    server: Server,
) -> None:
    page = admin_page
    make_project(server, "live-page")
    build_id = submit(server, "live-page", FAILING)
    page.goto(f"/builds/{build_id}/")
    page.evaluate("window.notReloaded = true")
    # Step durations count on each second while the step runs, in its section and the list.
    running = f'{step("slow")} [data-step-duration="slow"][data-started-at]:not([data-finished-at])'
    page.wait_for_selector(running, timeout=15000)
    first = page.text_content(running)
    wait_until(page, f"document.querySelector({running!r}).textContent !== {first!r}", 3000)
    listed = '.step-list [data-step-duration="slow"]'
    assert page.text_content(listed) == page.text_content(running)
    header = "#build-header .duration[data-started-at]"
    assert page.text_content(header)
    # Then it fails: the exit code, the skip reason and the end of the failed log appear.
    wait_for_build(page, "failure")
    page.wait_for_selector(f'{step("fails")} [data-step-exit="fails"]:not([hidden])')
    assert page.text_content(f'{step("fails")} [data-step-exit="fails"]') == "exit 3"
    # (In a closed section: the step did not run.)
    reason = page.wait_for_selector('[data-step-error="after"]:not([hidden])', state="attached")
    assert reason.text_content() == "Skipped: 'fails' failed"
    assert page.get_attribute(f'{step("slow")} [data-step-duration="slow"]', "data-finished-at")
    # The failed step is open and at its end; the one that passed is closed.
    assert is_open(page, "fails")
    assert not is_open(page, "slow")
    assert not is_open(page, "after")
    wait_until(
        page,
        "[...document.querySelectorAll('section.step[data-step=\"fails\"] .line .text')]"
        ".some(e => e.textContent === 'fails line 300')",
    )
    log = f"{step('fails')} .logview-scroll"
    assert page.eval_on_selector(log, "s => s.scrollTop + s.clientHeight >= s.scrollHeight - 4")
    assert page.eval_on_selector(
        step("fails"), "s => { const r = s.getBoundingClientRect(); return r.top < innerHeight }"
    )
    assert page.evaluate("window.notReloaded") is True
    # The skipped step's log says why it is empty.
    page.click(f"{step('after')} summary")
    empty = page.text_content(f"{step('after')} .logview-empty")
    assert empty != "No output yet."
    assert "skipped" in empty
    # The step list: every step, its status and its duration, linking to its log.
    links = page.eval_on_selector_all(
        ".step-list a[data-step-link]",
        "els => els.map(a => [a.dataset.stepLink, a.getAttribute('href'),"
        " a.querySelector('.badge').className, a.querySelector('.duration').textContent])",
    )
    assert [(name, href) for name, href, _, _ in links] == [
        ("slow", "#s0"),
        ("fails", "#s1"),
        ("after", "#s2"),
    ]
    assert [badge.split()[-1] for _, _, badge, _ in links] == [
        "status-success",
        "status-failure",
        "status-skipped",
    ]
    assert links[0][3].endswith("s")
    assert links[2][3] == ""  # never started
    # A reload shows the same.
    page.reload()
    assert is_open(page, "fails")
    assert not is_open(page, "slow")
    assert page.text_content('[data-step-error="after"]') == "Skipped: 'fails' failed"
    assert page.text_content('[data-step-exit="fails"]') == "exit 3"


def test_the_build_page_fits_a_phone(admin_page: Any, server: Server) -> None:  # noqa: F811
    page = admin_page
    make_project(server, "phone-page")
    # A long step name, and a log line far wider than a phone.
    pipeline = (
        FAILING.replace("sleep 4; ", "")
        .replace("seq 300", "seq 40")
        .replace("name: after", "name: after-a-step-with-a-rather-long-name-that-goes-on")
        .replace("exit 3", f"echo {'x' * 300}; exit 3")
    )
    build_id = submit(server, "phone-page", pipeline)
    page.goto(f"/builds/{build_id}/")
    wait_for_build(page, "failure error")
    page.reload()
    page.wait_for_selector(f"{step('fails')} .line")
    screenshot(page, "build-page")
    page.set_viewport_size({"width": 375, "height": 812})
    page.reload()
    page.wait_for_selector(f"{step('fails')} .line")
    # No sideways scrolling of the page: only the log lines and the picture scroll.
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    screenshot(page, "build-page-phone")
