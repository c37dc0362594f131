"""static/logview.js in Chromium, against a fake server: the ANSI renderer and its
safety, the virtual window over huge logs, line links, find, timestamps, and the live
protocol driven through a fake WebSocket (tests/e2e/logview_fixture.html).

The fake server answers the JSON endpoint of builds/logs.py from generated lines, so a
log of a million lines costs nothing to set up. The Django side of that endpoint is
tested in tests/test_logs.py.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
FIXTURE = Path(__file__).with_name("logview_fixture.html")
STORED_AT = "2026-01-02T03:04:05+00:00"


def line_text(n: int, attempt: int = 1) -> str:
    prefix = "" if attempt == 1 else f"a{attempt} "
    if n % 1000 == 0:
        return f"{prefix}line {n} needle"
    if n % 10 == 0:
        return f"{prefix}\x1b[32mline {n}\x1b[0m"
    return f"{prefix}line {n}"


@dataclass
class FakeStep:
    name: str
    status: str
    totals: dict[int, int]  # attempt -> lines stored
    attempt: int = 1


@dataclass
class FakeSite:
    """What the fake server serves: the steps' logs, and the requests it got."""

    url: str = ""
    steps: dict[int, FakeStep] = field(default_factory=dict)
    build_status: str = "running"
    requests: list[dict[str, Any]] = field(default_factory=list)

    def reset(self, test_total: int = 0, build_total: int = 0) -> None:
        self.steps = {
            2: FakeStep("Build", "success", {1: build_total}),
            3: FakeStep("Test", "running", {1: test_total}),
        }
        self.build_status = "running"
        self.requests = []

    def lines_requests(self, position: int = 3) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["position"] == position]

    def answer(self, position: int, query: dict[str, str]) -> tuple[int, dict[str, Any]]:
        step = self.steps.get(position)
        if step is None:
            return 404, {"detail": "not found"}
        self.requests.append({"position": position, **query})
        attempt = int(query.get("attempt", step.attempt))
        total = step.totals.get(attempt, 0)
        body: dict[str, Any] = {
            "step": step.name,
            "attempt": attempt,
            "status": step.status,
            "build_status": self.build_status,
        }
        if "q" in query:
            needle = query["q"].lower()
            matches = [n for n in range(1, total + 1) if needle in line_text(n, attempt).lower()]
            return 200, {**body, "matches": matches[:1000], "more": len(matches) > 1000}
        limit = min(int(query.get("limit", 1000)), 5000)
        if "before" in query:
            before = int(query["before"])
            after = max(0, before - 1 - limit)
            limit = before - 1 - after
        else:
            after = int(query.get("after", 0))
        last = min(total, after + limit)
        lines = [[n, line_text(n, attempt), STORED_AT] for n in range(after + 1, last + 1)]
        return 200, {**body, "first": after + 1, "lines": lines, "total": total}


def make_handler(site: FakeSite) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            path = parts.path
            if path == "/fixture.html":
                self.send(200, FIXTURE.read_bytes(), "text/html; charset=utf-8")
            elif path in ("/static/logview.js", "/static/logview.css"):
                kind = "text/javascript" if path.endswith(".js") else "text/css"
                self.send(200, (REPO / path.lstrip("/")).read_bytes(), f"{kind}; charset=utf-8")
            elif path.startswith("/builds/1/steps/") and path.endswith("/lines"):
                position = int(path.split("/")[4])
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                status, body = site.answer(position, query)
                self.send(status, json.dumps(body).encode(), "application/json")
            else:
                self.send(404, b"not found", "text/plain")

    return Handler


@pytest.fixture(scope="session")
def site() -> Iterator[FakeSite]:
    site = FakeSite()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(site))
    site.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield site
    server.shutdown()
    server.server_close()


@pytest.fixture
def tab(browser: Any, site: FakeSite) -> Iterator[Any]:
    """A page of its own; `browser` is tests/e2e/conftest.py's (one Playwright per
    session: a second sync_playwright() in the same thread is refused)."""
    site.reset()
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


def open_fixture(tab: Any, site: FakeSite, fragment: str = "", **query: object) -> None:
    search = "&".join(f"{key}={value}" for key, value in query.items())
    tab.goto(f"{site.url}/fixture.html?{search}{fragment}")
    tab.wait_for_function("window.logview")
    tab.evaluate("window.logview")  # the module has loaded (and started)


def render(tab: Any, text: str) -> dict[str, Any]:
    """renderLine(text) put into a div: its HTML, its text, its elements."""
    return tab.evaluate(
        """async (text) => {
            const { renderLine } = await window.logview;
            const div = document.createElement("div");
            div.appendChild(renderLine(text));
            document.body.appendChild(div);
            return {
                html: div.innerHTML,
                text: div.textContent,
                tags: [...div.querySelectorAll("*")].map((e) => e.tagName),
                spans: [...div.children].map((e) => [e.className, e.textContent, e.style.color]),
            };
        }""",
        text,
    )


# ---------------------------------------------------------------------------
# The renderer


def test_markup_in_a_log_line_stays_text_and_runs_nothing(tab: Any, site: FakeSite) -> None:
    open_fixture(tab, site, bare=1)
    attacks = [
        "<script>window.pwned = 1</script>",
        '<img src=x onerror="window.pwned = 2">',
        '\x1b[31m<img src=x onerror="window.pwned = 3">\x1b[0m<svg onload="window.pwned=4">',
        "\x1b]8;;javascript:window.pwned=5\x1b\\click\x1b]8;;\x1b\\",
        "&lt;b&gt; &amp; <!-- -->",
    ]
    for text in attacks:
        got = render(tab, text)
        assert set(got["tags"]) <= {"SPAN"}, got
    assert render(tab, attacks[0])["text"] == attacks[0]
    assert render(tab, attacks[2])["spans"] == [
        ["ansi-fg-1", '<img src=x onerror="window.pwned = 3">', ""]
    ]
    assert render(tab, attacks[3])["text"] == "click"
    assert render(tab, attacks[4])["text"] == attacks[4]
    tab.wait_for_timeout(200)
    assert tab.evaluate("window.pwned") is None
    assert tab.evaluate("document.querySelectorAll('img, svg').length") == 0


def test_colours_and_styles_become_classes(tab: Any, site: FakeSite) -> None:
    open_fixture(tab, site, bare=1)
    got = render(tab, "\x1b[1;31mbold red\x1b[22m red\x1b[0m plain \x1b[42;97mon green\x1b[49;39m")
    assert got["spans"] == [
        ["ansi-bold ansi-fg-1", "bold red", ""],
        ["ansi-fg-1", " red", ""],
        ["ansi-fg-15 ansi-bg-2", "on green", ""],
    ]
    assert got["text"] == "bold red red plain on green"
    got = render(tab, "\x1b[2;3;4mstyled\x1b[23;24mdim\x1b[m \x1b[93;104mbright")
    assert got["spans"] == [
        ["ansi-dim ansi-italic ansi-underline", "styled", ""],
        ["ansi-dim", "dim", ""],
        ["ansi-fg-11 ansi-bg-12", "bright", ""],
    ]
    got = render(tab, "\x1b[38;5;196mred256\x1b[38;5;9m nine \x1b[38;2;1;2;3m24bit")
    assert got["spans"] == [
        ["", "red256", "rgb(255, 0, 0)"],
        ["ansi-fg-9", " nine 24bit", ""],
    ]


def test_parse_sgr_keeps_to_the_whitelist(tab: Any, site: FakeSite) -> None:
    open_fixture(tab, site, bare=1)
    got = tab.evaluate(
        """async () => {
            const { parseSgr } = await window.logview;
            const red = parseSgr("1;31");
            return {
                red,
                reset: parseSgr("", red),
                unknown: parseSgr("5;7;8;9;53", red),  // blink, reverse, hidden...: ignored
                off: parseSgr("39;49;22", parseSgr("44", red)),
                bad: parseSgr("38;9;1", red),
            };
        }"""
    )
    default = {
        "bold": False,
        "dim": False,
        "italic": False,
        "underline": False,
        "fg": None,
        "bg": None,
    }
    assert got["red"] == {**default, "bold": True, "fg": 1}
    assert got["reset"] == default
    assert got["unknown"] == got["red"]
    assert got["off"] == default
    assert got["bad"] == got["red"]


def test_other_escape_sequences_and_controls_vanish(tab: Any, site: FakeSite) -> None:
    open_fixture(tab, site, bare=1)
    text = (
        "a\x1b[2Kb\x1b[?25lc\x1b]0;window title\x07d\x1b]8;;http://x\x1b\\e\x1b(Bf"
        "\x1b=g\x00h\x08i\x7fj\x9b2Jk\x1bPdcs\x1b\\l\tm\x1b"
    )
    got = render(tab, text)
    assert got["text"] == "abcdefghijk" + "l\tm"
    assert got["tags"] == []
    # An unterminated sequence at the end of the line takes nothing else with it.
    assert render(tab, "ok\x1b[31")["text"] == "ok"
    assert render(tab, "ok\x1b]0;no end")["text"] == "ok"


def test_a_carriage_return_shows_what_follows_the_last_one(tab: Any, site: FakeSite) -> None:
    open_fixture(tab, site, bare=1)
    assert render(tab, "10%\r50%\r100% done")["text"] == "100% done"
    # Colours set before the \r still apply; a CRLF line end is not a rewrite.
    assert render(tab, "\x1b[32m10%\rdone")["spans"] == [["ansi-fg-2", "done", ""]]
    assert render(tab, "windows line\r")["text"] == "windows line"


def test_a_huge_line_is_cut_where_it_is_drawn(tab: Any, site: FakeSite) -> None:
    open_fixture(tab, site, bare=1)
    got = tab.evaluate(
        """async () => {
            const { renderLine, LINE_CHARS } = await window.logview;
            const div = document.createElement("div");
            div.appendChild(renderLine("x".repeat(LINE_CHARS + 5000)));
            return [div.firstChild.textContent.length, div.lastChild.textContent];
        }"""
    )
    assert got == [10000, " … 5,000 more characters"]


# ---------------------------------------------------------------------------
# The virtual window


def rows(tab: Any, position: int = 3) -> list[int]:
    return tab.evaluate(
        f"[...document.querySelectorAll('#s{position} .logview-row')].map((r) => r.n)"
    )


def visible_lines(tab: Any, position: int = 3) -> list[tuple[int, str]]:
    """The filled rows inside the scroll container's box, with their text."""
    shown = tab.evaluate(
        f"""() => {{
            const scroll = document.querySelector('#s{position} .logview-scroll');
            const box = scroll.getBoundingClientRect();
            return [...scroll.querySelectorAll('.logview-row')]
                .filter((r) => {{
                    const b = r.getBoundingClientRect();
                    return b.top >= box.top - 1 && b.bottom <= box.bottom + 1
                        && !r.classList.contains('logview-pending');
                }})
                .map((r) => [r.n, r.querySelector('.logview-text').textContent]);
        }}"""
    )
    return [(n, text) for n, text in shown]


def scroll_state(tab: Any) -> dict[str, float]:
    return tab.evaluate(
        """() => {
            const s = document.querySelector('#s3 .logview-scroll');
            return {top: s.scrollTop, height: s.scrollHeight, client: s.clientHeight};
        }"""
    )


def wait_for_line(tab: Any, n: int, position: int = 3, timeout: float = 5000) -> None:
    tab.wait_for_function(
        f"""() => [...document.querySelectorAll('#s{position} .logview-row:not(.logview-pending)')]
                .some((r) => r.n === {n})""",
        timeout=timeout,
    )


def test_a_100000_line_log_opens_at_its_end_quickly(tab: Any, site: FakeSite) -> None:
    site.reset(test_total=100_000)
    started = time.monotonic()
    open_fixture(tab, site, status="success", count=100_000)
    wait_for_line(tab, 100_000)
    elapsed = time.monotonic() - started
    assert elapsed < 3, f"the log took {elapsed:.1f}s to show its last line"
    shown = visible_lines(tab)
    assert shown[-1] == (100_000, "line 100000 needle")
    assert [n for n, _ in shown] == list(range(shown[0][0], 100_001))
    state = scroll_state(tab)
    assert state["top"] + state["client"] >= state["height"] - 2
    assert state["height"] == 100_000 * 20
    assert len(rows(tab)) < 200  # only lines near the viewport are in the DOM
    # The tail page is fetched first; nothing else of the log.
    requests = site.lines_requests()
    assert requests[0]["after"] == "99000"
    assert len(requests) <= 2
    # A finished build opens no socket, and the closed step fetched nothing.
    assert tab.evaluate("window.gociLog.state") == "finished"
    assert site.lines_requests(2) == []


def test_scrolling_fetches_the_pages_scrolled_to_and_memory_stays_bounded(
    tab: Any, site: FakeSite
) -> None:
    site.reset(test_total=100_000)
    open_fixture(tab, site, status="success", count=100_000)
    wait_for_line(tab, 100_000)
    for target in range(1, 100_000, 2000):
        tab.evaluate(
            f"document.querySelector('#s3 .logview-scroll').scrollTop = {(target - 1) * 20}"
        )
        wait_for_line(tab, target)
    shown = visible_lines(tab)
    assert shown[0][0] == 98_001
    assert shown[0][1] == "line 98001"
    assert tab.evaluate("window.gociLog.loadedLines('Test')") <= 40_000
    tab.evaluate("document.querySelector('#s3 .logview-scroll').scrollTop = 0")
    wait_for_line(tab, 1)
    assert visible_lines(tab)[:2] == [(1, "line 1"), (2, "line 2")]


def test_a_million_line_log_opens_fast_and_scrolls_anywhere(tab: Any, site: FakeSite) -> None:
    site.reset(test_total=1_000_000)
    started = time.monotonic()
    open_fixture(tab, site, status="success", count=1_000_000)
    wait_for_line(tab, 1_000_000)
    assert time.monotonic() - started < 3
    assert visible_lines(tab)[-1] == (1_000_000, "line 1000000 needle")
    # Past 16 million pixels the scroll position maps onto the lines proportionally.
    assert scroll_state(tab)["height"] == 16_000_000
    tab.evaluate(
        """() => {
            const s = document.querySelector('#s3 .logview-scroll');
            s.scrollTop = (s.scrollHeight - s.clientHeight) / 2;
        }"""
    )
    tab.wait_for_function(
        """() => [...document.querySelectorAll('#s3 .logview-row:not(.logview-pending)')]
                .some((r) => r.n > 499000 && r.n < 501000)"""
    )
    shown = visible_lines(tab)
    assert 499_000 < shown[0][0] < 501_000
    assert all(text == f"line {n}" or str(n) in text for n, text in shown)
    assert [n for n, _ in shown] == list(range(shown[0][0], shown[0][0] + len(shown)))


def test_a_line_named_in_the_url_is_shown_and_highlighted(tab: Any, site: FakeSite) -> None:
    site.reset(test_total=100_000)
    open_fixture(tab, site, "#s3-L1200", status="success", count=100_000)
    wait_for_line(tab, 1200)
    target = tab.evaluate(
        """() => {
            const row = document.querySelector('#s3 .logview-target');
            const link = document.getElementById('s3-L1200');
            const box = row.getBoundingClientRect();
            const scroll = row.closest('.logview-scroll').getBoundingClientRect();
            // Centred, with lines of context above it (not at the top, as the
            // browser's own scrolling to the fragment would put it).
            const middle = (scroll.top + scroll.bottom) / 2;
            return {n: row.n, href: link.getAttribute('href'),
                    onScreen: box.top >= 0 && box.bottom <= innerHeight,
                    centred: Math.abs((box.top + box.bottom) / 2 - middle) <= 20};
        }"""
    )
    assert target == {"n": 1200, "href": "#s3-L1200", "onScreen": True, "centred": True}
    assert tab.evaluate("document.querySelectorAll('.logview-target').length") == 1
    # Clicking another line's number moves the highlight and the URL, not the view.
    top = scroll_state(tab)["top"]
    tab.click("#s3-L1205")
    assert tab.evaluate("location.hash") == "#s3-L1205"
    assert tab.evaluate("document.querySelector('.logview-target').n") == 1205
    assert scroll_state(tab)["top"] == top


def test_a_line_in_a_closed_step_opens_it(tab: Any, site: FakeSite) -> None:
    site.reset(test_total=10, build_total=300)
    open_fixture(tab, site, "#s2-L150", status="success", count=10, build_count=300)
    wait_for_line(tab, 150, position=2)
    assert tab.evaluate("document.querySelector('#s2 details').open") is True
    assert tab.evaluate("document.querySelector('#s2 .logview-target').n") == 150


def test_find_jumps_from_match_to_match(tab: Any, site: FakeSite) -> None:
    site.reset(test_total=5000)
    open_fixture(tab, site, status="success", count=5000)
    wait_for_line(tab, 5000)
    tab.evaluate("document.querySelector('#s3 .logview-scroll').scrollTop = 0")
    tab.fill("#s3 .logview-find", "NEEDLE")
    tab.press("#s3 .logview-find", "Enter")
    tab.wait_for_function("document.querySelector('#s3 .logview-count').textContent === '1 of 5'")
    wait_for_line(tab, 1000)
    assert tab.evaluate("document.querySelector('#s3 .logview-found').n") == 1000
    assert tab.evaluate("document.querySelector('#s3 .logview-found mark').textContent") == "needle"
    tab.press("#s3 .logview-find", "Enter")
    tab.wait_for_function("document.querySelector('#s3 .logview-count').textContent === '2 of 5'")
    wait_for_line(tab, 2000)
    assert any(n == 2000 for n, _ in visible_lines(tab))
    tab.press("#s3 .logview-find", "Shift+Enter")
    tab.press("#s3 .logview-find", "Shift+Enter")
    tab.wait_for_function("document.querySelector('#s3 .logview-count').textContent === '5 of 5'")
    assert tab.evaluate("document.querySelector('#s3 .logview-found').n") == 5000
    tab.fill("#s3 .logview-find", "nothing like this")
    tab.press("#s3 .logview-find", "Enter")
    tab.wait_for_function(
        "document.querySelector('#s3 .logview-count').textContent === 'no matches'"
    )
    assert site.lines_requests()[-1]["q"] == "nothing like this"


def test_timestamps_are_shown_on_demand_and_remembered(tab: Any, site: FakeSite) -> None:
    site.reset(test_total=50)
    open_fixture(tab, site, status="success", count=50)
    wait_for_line(tab, 50)
    time_of_50 = "document.getElementById('s3-L50').nextElementSibling"
    assert tab.evaluate(f"getComputedStyle({time_of_50}).display") == "none"
    tab.check(".logview-times-toggle input")
    assert tab.evaluate(f"getComputedStyle({time_of_50}).display") != "none"
    assert tab.evaluate(f"{time_of_50}.dateTime") == STORED_AT
    assert tab.evaluate(f"{time_of_50}.textContent").count(":") == 2
    tab.reload()
    wait_for_line(tab, 50)
    assert tab.evaluate(f"getComputedStyle({time_of_50}).display") != "none"
    assert tab.is_checked(".logview-times-toggle input")


# ---------------------------------------------------------------------------
# Live: the protocol, through a fake WebSocket


def lines_message(first: int, count: int, attempt: int = 1, step: str = "Test") -> str:
    lines = [line_text(n, attempt) for n in range(first, first + count)]
    return json.dumps(
        {"type": "lines", "step": step, "attempt": attempt, "first": first, "lines": lines}
    )


def server_send(tab: Any, message: str | dict[str, Any]) -> None:
    text = message if isinstance(message, str) else json.dumps(message)
    tab.evaluate(f"FakeWebSocket.last.serverSend({text})")


def sockets(tab: Any) -> list[dict[str, Any]]:
    return tab.evaluate("FakeWebSocket.instances.map((s) => ({url: s.url, sent: s.sent}))")


def open_live(tab: Any, site: FakeSite, count: int = 100, **query: object) -> None:
    site.reset(test_total=count, build_total=3)
    query = {"ws": "fake", **query}
    open_fixture(tab, site, status="running", count=count, build_count=3, **query)
    if query["ws"] == "fake":
        tab.wait_for_function("FakeWebSocket.instances.length && FakeWebSocket.last.sent.length")


def test_the_socket_resumes_from_the_last_line_held(tab: Any, site: FakeSite) -> None:
    open_live(tab, site, count=100)
    (socket,) = sockets(tab)
    assert socket["url"] == f"{site.url.replace('http', 'ws')}/ws/builds/1/"
    assert socket["sent"] == [{"type": "resume", "attempt": 1, "steps": {"Build": 3, "Test": 100}}]
    assert tab.evaluate("window.gociLog.state") == "connecting"
    server_send(tab, {"type": "caught_up"})
    assert tab.evaluate("window.gociLog.state") == "live"
    assert tab.evaluate("document.querySelector('.logview-status').textContent").startswith("Live")


def test_live_lines_are_appended_once_and_followed(tab: Any, site: FakeSite) -> None:
    open_live(tab, site, count=100)
    wait_for_line(tab, 100)
    site.steps[3].totals[1] = 130
    server_send(tab, lines_message(91, 30))  # 91..100 are held already
    wait_for_line(tab, 120)
    assert tab.evaluate("window.gociLog.lastLine('Test')") == 120
    assert tab.evaluate("window.gociLog.lineCount('Test')") == 120
    assert visible_lines(tab)[-1] == (120, "line 120")
    assert tab.evaluate("document.querySelectorAll('#s3 [id=s3-L100]').length") == 1
    server_send(tab, lines_message(121, 10))
    wait_for_line(tab, 130)
    state = scroll_state(tab)
    assert state["top"] + state["client"] >= state["height"] - 2  # still at the bottom
    # Markup arriving live is text too.
    server_send(
        tab,
        {
            "type": "lines",
            "step": "Test",
            "attempt": 1,
            "first": 131,
            "lines": ["<img src=x onerror=window.pwned=1>"],
        },
    )
    wait_for_line(tab, 131)
    assert visible_lines(tab)[-1] == (131, "<img src=x onerror=window.pwned=1>")
    assert tab.evaluate("document.querySelectorAll('#build img').length") == 0
    assert tab.evaluate("window.pwned") is None


def test_a_gap_in_live_lines_is_fetched_before_appending(tab: Any, site: FakeSite) -> None:
    open_live(tab, site, count=100)
    wait_for_line(tab, 100)
    site.requests.clear()
    site.steps[3].totals[1] = 160
    server_send(tab, lines_message(151, 10))  # 101..150 were lost
    wait_for_line(tab, 160)
    assert site.lines_requests()[0] == {
        "position": 3,
        "after": "100",
        "limit": "50",
        "attempt": "1",
    }
    lines = dict(visible_lines(tab))
    assert all(n in lines for n in range(145, 161))
    assert tab.evaluate("window.gociLog.text('Test', 125)") == "line 125"
    assert tab.evaluate("window.gociLog.lastLine('Test')") == 160


def test_scrolling_up_stops_following_and_the_button_resumes_it(tab: Any, site: FakeSite) -> None:
    open_live(tab, site, count=500)
    wait_for_line(tab, 500)
    assert tab.is_hidden("#s3 .logview-follow")
    tab.hover("#s3 .logview-scroll")
    tab.mouse.wheel(0, -600)
    tab.wait_for_function("!document.querySelector('#s3 .logview-follow').hidden")
    top = scroll_state(tab)["top"]
    site.steps[3].totals[1] = 600
    server_send(tab, lines_message(501, 100))
    tab.wait_for_function("window.gociLog.lastLine('Test') === 600")
    assert scroll_state(tab)["top"] == top  # not dragged down while reading
    tab.click("#s3 .logview-follow")
    wait_for_line(tab, 600)
    assert tab.is_hidden("#s3 .logview-follow")
    server_send(tab, lines_message(601, 5))
    wait_for_line(tab, 605)
    state = scroll_state(tab)
    assert state["top"] + state["client"] >= state["height"] - 2


def test_a_new_attempt_starts_the_log_again(tab: Any, site: FakeSite) -> None:
    open_live(tab, site, count=100)
    wait_for_line(tab, 100)
    site.steps[3].totals[2] = 3
    server_send(tab, lines_message(1, 3, attempt=2))
    tab.wait_for_function("window.gociLog.lineCount('Test') === 3")
    wait_for_line(tab, 3)
    assert visible_lines(tab) == [(1, "a2 line 1"), (2, "a2 line 2"), (3, "a2 line 3")]
    assert tab.evaluate("document.getElementById('s3').dataset.attempt") == "2"
    # A late message of the attempt given up changes nothing.
    server_send(tab, lines_message(101, 5, attempt=1))
    tab.wait_for_timeout(100)
    assert tab.evaluate("window.gociLog.lineCount('Test')") == 3
    # A reconnection resumes with the new attempt.
    tab.evaluate("window.gociLog.forceDisconnect()")
    tab.wait_for_function("FakeWebSocket.instances.length === 2 && FakeWebSocket.last.sent.length")
    assert sockets(tab)[-1]["sent"][0]["attempt"] == 2


def test_step_and_build_statuses_update_every_badge(tab: Any, site: FakeSite) -> None:
    open_live(tab, site, count=10)
    server_send(tab, {"type": "step", "step": "Test", "status": "failure", "exit_code": 2})
    badges = tab.evaluate(
        """[...document.querySelectorAll('[data-step-status="Test"]')]
            .map((e) => [e.tagName.toLowerCase(), e.textContent, e.getAttribute('class')])"""
    )
    assert badges == [
        ["text", "failure", "status-failure"],
        ["span", "failure", "badge status-failure"],
    ]
    assert tab.evaluate("document.getElementById('s3').dataset.status") == "failure"
    assert tab.evaluate("document.getElementById('s3').dataset.exitCode") == "2"
    site.requests.clear()
    server_send(tab, {"type": "build", "status": "failure"})
    assert tab.evaluate("document.getElementById('build').dataset.status") == "failure"
    assert (
        tab.evaluate("document.querySelector('[data-build-status]').className")
        == "badge status-failure"
    )
    assert tab.evaluate("window.gociLog.state") == "finished"
    # Once finished: a last look at the database for anything the socket dropped, no reconnecting.
    tab.wait_for_function("FakeWebSocket.last.readyState === 3")
    tab.wait_for_timeout(800)
    assert len(sockets(tab)) == 1
    assert {r["position"] for r in site.requests} == {2, 3}


def test_a_dropped_connection_reconnects_with_backoff(tab: Any, site: FakeSite) -> None:
    open_live(tab, site, count=10, ws="refuse")
    tab.wait_for_function("FakeWebSocket.instances.length >= 3", timeout=5000)
    assert tab.evaluate("window.gociLog.state") == "reconnecting"
    assert tab.evaluate("document.querySelector('.logview-state').textContent") == "Reconnecting…"
    tab.evaluate("window.acceptSockets = true")
    tab.wait_for_function("FakeWebSocket.last.readyState === 1", timeout=8000)
    site.steps[3].totals[1] = 12
    server_send(tab, lines_message(11, 2))
    server_send(tab, {"type": "caught_up"})
    assert tab.evaluate("window.gociLog.state") == "live"
    tab.evaluate("window.gociLog.forceDisconnect()")
    assert tab.evaluate("window.gociLog.state") == "reconnecting"
    tab.wait_for_function("FakeWebSocket.last.sent.length && FakeWebSocket.last.readyState === 1")
    assert sockets(tab)[-1]["sent"][0]["steps"] == {"Build": 3, "Test": 12}


def test_backoff_doubles_from_half_a_second(tab: Any, site: FakeSite) -> None:
    open_live(tab, site, count=10, ws="refuse")
    tab.wait_for_function("FakeWebSocket.instances.length >= 4", timeout=10000)
    made = tab.evaluate("FakeWebSocket.instances.map((s) => s.created)")
    gaps = [(b - a) / 1000 for a, b in itertools.pairwise(made)]
    # 0.5 s, 1 s, 2 s, each within the ±20% jitter.
    assert 0.38 <= gaps[0] <= 0.7, gaps
    assert 0.78 <= gaps[1] <= 1.3, gaps
    assert 1.58 <= gaps[2] <= 2.5, gaps


def test_4404_says_the_build_is_not_available_and_stops(tab: Any, site: FakeSite) -> None:
    open_live(tab, site, count=10)
    tab.evaluate("FakeWebSocket.last.serverClose(4404)")
    assert tab.evaluate("window.gociLog.state") == "unavailable"
    assert (
        tab.evaluate("document.querySelector('.logview-state').textContent")
        == "This build is not available"
    )
    tab.wait_for_timeout(1200)
    assert len(sockets(tab)) == 1


def test_paused_live_updates_poll_the_database_until_reconnected(tab: Any, site: FakeSite) -> None:
    open_live(tab, site, count=10)
    wait_for_line(tab, 10)
    server_send(tab, {"type": "paused"})
    assert (
        tab.evaluate("document.querySelector('.logview-state').textContent")
        == "Live updates paused"
    )
    site.steps[3].totals[1] = 25
    site.steps[3].status = "success"
    tab.wait_for_function("window.gociLog.lastLine('Test') === 25", timeout=5000)
    wait_for_line(tab, 25)
    assert tab.evaluate("document.getElementById('s3').dataset.status") == "success"
    # A close with 4503 pauses too, and the reconnection that follows ends the polling.
    tab.evaluate("FakeWebSocket.last.serverClose(4503)")
    assert tab.evaluate("window.gociLog.state") == "paused"
    tab.wait_for_function("FakeWebSocket.instances.length === 2 && FakeWebSocket.last.sent.length")
    assert sockets(tab)[-1]["sent"][0]["steps"]["Test"] == 25
    server_send(tab, {"type": "caught_up"})
    assert tab.evaluate("window.gociLog.state") == "live"
    polled = len(site.requests)
    tab.wait_for_timeout(2500)
    assert len(site.requests) == polled
    # Polling sees the build finish.
    server_send(tab, {"type": "paused"})
    site.build_status = "success"
    tab.wait_for_function("window.gociLog.state === 'finished'", timeout=5000)


def test_messages_are_acknowledged_as_they_arrive(tab: Any, site: FakeSite) -> None:
    open_live(tab, site, count=10)
    # Three in one go: one ack for the three.
    batch = [json.loads(lines_message(11 + i, 1)) for i in range(3)]
    tab.evaluate(f"for (const m of {json.dumps(batch)}) FakeWebSocket.last.serverSend(m)")
    tab.wait_for_function("FakeWebSocket.last.sent.length === 2")
    server_send(tab, {"type": "caught_up"})
    tab.wait_for_function("FakeWebSocket.last.sent.length === 3")
    assert sockets(tab)[-1]["sent"][1:] == [
        {"type": "ack", "received": 3},
        {"type": "ack", "received": 4},
    ]


def test_a_socket_closed_for_reading_too_slowly_resumes_from_the_last_line(
    tab: Any, site: FakeSite
) -> None:
    open_live(tab, site, count=10)
    site.steps[3].totals[1] = 14
    server_send(tab, lines_message(11, 4))
    wait_for_line(tab, 14)
    tab.evaluate("FakeWebSocket.last.serverClose(4429)")
    assert tab.evaluate("window.gociLog.state") == "reconnecting"
    tab.wait_for_function("FakeWebSocket.instances.length === 2 && FakeWebSocket.last.sent.length")
    assert sockets(tab)[-1]["sent"][0]["steps"] == {"Build": 3, "Test": 14}


def test_a_step_message_shows_its_duration_exit_code_and_skip_reason(
    tab: Any, site: FakeSite
) -> None:
    open_live(tab, site, count=0)
    started = tab.evaluate("new Date(Date.now() - 65_000).toISOString()")
    server_send(tab, {"type": "step", "step": "Test", "status": "running", "started_at": started})
    duration = "document.querySelector('[data-step-duration=Test]').textContent"
    assert tab.evaluate(duration) == "1m 05s"
    tab.wait_for_function(f"{duration} === '1m 06s'", timeout=2500)  # it ticks
    server_send(
        tab,
        {
            "type": "step",
            "step": "Test",
            "status": "failure",
            "exit_code": 2,
            "error": None,
            "started_at": started,
            "finished_at": tab.evaluate("new Date().toISOString()"),
            "duration": 70.4,
        },
    )
    assert tab.evaluate(duration) == "1m 10s"
    tab.wait_for_timeout(1200)
    assert tab.evaluate(duration) == "1m 10s"  # finished: it stops
    exit_code = "document.querySelector('[data-step-exit=Test]')"
    assert tab.evaluate(f"[{exit_code}.hidden, {exit_code}.textContent]") == [False, "exit 2"]
    server_send(
        tab,
        {
            "type": "step",
            "step": "Test",
            "status": "skipped",
            "exit_code": None,
            "error": "'Build' failed",
            "started_at": None,
            "finished_at": None,
            "duration": None,
        },
    )
    reason = "document.querySelector('[data-step-error=Test]')"
    assert tab.evaluate(f"[{reason}.hidden, {reason}.textContent]") == [
        False,
        "Skipped: 'Build' failed",
    ]
    assert tab.evaluate(f"{exit_code}.hidden") is True
    assert tab.evaluate(duration) == ""
    assert (
        tab.evaluate("document.querySelector('#s3 .logview-empty').textContent")
        == "No output: this step was skipped."
    )
    # A step that ended in error before it printed anything will print nothing more.
    server_send(tab, {"type": "step", "step": "Test", "status": "error", "error": "no image"})
    assert tab.evaluate("document.querySelector('#s3 .logview-empty').textContent") == "No output."


def test_durations_read_as_the_server_writes_them(tab: Any, site: FakeSite) -> None:
    open_fixture(tab, site, bare=1)
    shown = tab.evaluate(
        """async () => {
            const { formatDuration } = await window.logview;
            return [0, 0.5, 1, 59.9, 61, 3599, 3600, 7325].map(formatDuration);
        }"""
    )
    assert shown == ["<1s", "<1s", "1s", "59s", "1m 01s", "59m 59s", "1h 00m", "2h 02m"]
