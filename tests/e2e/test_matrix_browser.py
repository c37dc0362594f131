"""A matrix build's page in Chromium against a real `goci up`: a column per cell, and
each cell's lines arriving live in that cell's log (the worker publishes them by the
step's key, "SERVICE=bot / image")."""

from __future__ import annotations

import json
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

# Slow enough that the page is open while each cell's first step prints.
MATRIX = """\
matrix:
  SERVICE: [api, bot]
steps:
  - name: image
    run: for i in 1 2 3 4 5 6; do echo "$SERVICE image $i"; sleep 0.4; done
  - name: push
    needs: [image]
    run: echo "$SERVICE pushed"
"""
SERVICES = ("api", "bot")


def step(service: str, name: str) -> str:
    return f"section.step[data-step={json.dumps(f'SERVICE={service} / {name}')}]"


def shown(page: Any, service: str, name: str) -> list[str]:
    return list(
        page.eval_on_selector_all(
            f"{step(service, name)} .log .line .text", "els => els.map(e => e.textContent)"
        )
    )


def test_each_cells_lines_arrive_live_in_its_own_column(
    admin_page: Any,  # noqa: F811
    server: Server,
) -> None:
    page = admin_page
    make_project(server, "matrix-page")
    build_id = submit(server, "matrix-page", MATRIX)
    page.goto(f"/builds/{build_id}/")
    page.evaluate("window.notReloaded = true")
    cells = page.eval_on_selector_all(".cell .cell-name", "els => els.map(e => e.textContent)")
    assert cells == ["SERVICE=api", "SERVICE=bot"]
    for service in SERVICES:
        # A line of the cell's step is on screen while that step still runs: it came
        # over the socket, into this cell's log and no other.
        first = f"{step(service, 'image')} .log .line"
        page.wait_for_selector(first, timeout=30000)
        assert page.get_attribute(step(service, "image"), "data-status") == "running"
    wait_until(page, "document.querySelector('#build').dataset.status === 'success'", 30000)
    for service in SERVICES:
        wait_until(page, f"window.gociLog.lastLine('SERVICE={service} / push') === 1", 10000)
        # The count can come before the text (a page of lines fetched from the server).
        for name, count in (("image", 6), ("push", 1)):
            lines = json.dumps(f"{step(service, name)} .log .line .text")
            wait_until(page, f"document.querySelectorAll({lines}).length === {count}", 10000)
        assert shown(page, service, "image") == [f"{service} image {n}" for n in range(1, 7)]
        assert shown(page, service, "push") == [f"{service} pushed"]
        assert page.get_attribute(step(service, "push"), "data-status") == "success"
    # The cells' badges followed without a reload (swapped in by the header's poll).
    wait_until(
        page,
        "[...document.querySelectorAll('[data-job-status]')]"
        ".every(b => b.textContent === 'success')",
        10000,
    )
    assert page.evaluate("window.notReloaded") is True
    screenshot(page, "matrix-page")
    # Side by side where there is room, one under the other on a phone.
    tops = page.eval_on_selector_all(".cell", "els => els.map(e => e.getBoundingClientRect().top)")
    assert tops[0] == tops[1]
    page.set_viewport_size({"width": 375, "height": 812})
    tops = page.eval_on_selector_all(".cell", "els => els.map(e => e.getBoundingClientRect().top)")
    assert tops[0] < tops[1]
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    screenshot(page, "matrix-page-phone")


IMAGES = """\
matrix:
  SERVICE: [api, bot]
steps:
  - name: sources
    image: goci-test/busybox:latest
    run: |
      mkdir -p "$SERVICE"
      echo "the $SERVICE service" > "$SERVICE/main.txt"
      echo 'FROM goci-test/busybox:latest' > "$SERVICE/Dockerfile"
      echo 'COPY main.txt /srv/main.txt' >> "$SERVICE/Dockerfile"
      echo 'RUN sleep 1' >> "$SERVICE/Dockerfile"
  - name: image
    build:
      context: ${SERVICE}
      tags: ["goci-e2e/${SERVICE}:latest"]
"""


def test_a_matrix_of_image_builds_shows_each_image_id_live(
    admin_page: Any,  # noqa: F811
    server: Server,
    docker_client: Any,
) -> None:
    page = admin_page
    make_project(server, "images-page")
    build_id = submit(server, "images-page", IMAGES)
    page.goto(f"/builds/{build_id}/")
    page.evaluate("window.notReloaded = true")
    try:
        wait_until(page, "document.querySelector('#build').dataset.status === 'success'", 60000)
        for service in SERVICES:
            built = f"{step(service, 'image')} [data-step-built]"
            wait_until(page, f"!document.querySelector({json.dumps(built)}).hidden", 10000)
            image_id = docker_client.images.get(f"goci-e2e/{service}:latest").id
            assert page.text_content(f"{built} code") == image_id
            # The build's own output is the step's log.
            wait_until(
                page,
                f"window.gociLog.lastLine('SERVICE={service} / image') >= 5",
                10000,
            )
        wait_until(
            page,
            "[...document.querySelectorAll('[data-job-status]')]"
            ".every(b => b.textContent === 'success')",
            10000,
        )
        assert page.evaluate("window.notReloaded") is True
        screenshot(page, "image-builds")
    finally:
        for service in SERVICES:
            docker_client.images.remove(f"goci-e2e/{service}:latest", force=True)
