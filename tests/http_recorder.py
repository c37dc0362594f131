"""An HTTP server on 127.0.0.1 that records every POST and answers as told: it plays
what cannot be reached from here (a forge's status API, Slack's incoming webhooks,
Telegram's Bot API, a team's webhook receiver)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar


@dataclass
class Call:
    method: str
    path: str
    headers: dict[str, str]
    raw: bytes
    at: float  # time.monotonic() when it came

    @property
    def body(self) -> Any:
        return json.loads(self.raw or b"{}")


@dataclass
class Recorder:
    """Every call, in order; each is answered with the next of `answers`, then with
    `default`, and a JSON body made by `reply(status, path)`."""

    server: ThreadingHTTPServer
    default: int = 200
    reply: Callable[[int, str], object] = lambda status, path: {"ok": status < 300}
    calls: list[Call] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def bodies(self, prefix: str) -> list[Any]:
        """The JSON bodies of the calls to paths that start with `prefix`."""
        return [call.body for call in self.calls if call.path.startswith(prefix)]


R = TypeVar("R", bound=Recorder)


@contextmanager
def http_recorder(
    default: int = 200,
    reply: Callable[[int, str], object] | None = None,
    kind: type[R] = Recorder,  # type: ignore[assignment]  # a subclass with helpers
) -> Iterator[R]:
    recorder: R

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            call = Call("POST", self.path, dict(self.headers.items()), raw, time.monotonic())
            recorder.calls.append(call)
            status = recorder.answers.pop(0) if recorder.answers else recorder.default
            answer = json.dumps(recorder.reply(status, self.path)).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    recorder = kind(server, default)
    if reply is not None:
        recorder.reply = reply
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield recorder
    finally:
        server.shutdown()
        server.server_close()
