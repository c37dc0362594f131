"""A local OAuth2 provider that plays GitHub (Enterprise), GitLab or Gitea on
127.0.0.1, for the sign-in tests: the real forges cannot be reached from here.

One `FakeForge` per forge, each on a port of its own (GitHub and Gitea share their
OAuth paths). It approves every authorization at once (or, in "deny" or "error" mode,
redirects back with that error), checks the token request (client id and secret, a
code it issued for that redirect URI, once; PKCE when the client used it), and serves
the configured `Account` for the token it issued. Every request is recorded, so a test
can see what the client sent.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

# Each forge's paths: authorize, token, user, emails (None: the forge has none).
PATHS = {
    "github": (
        "/login/oauth/authorize",
        "/login/oauth/access_token",
        "/api/v3/user",
        "/api/v3/user/emails",
    ),
    "gitlab": ("/oauth/authorize", "/oauth/token", "/api/v4/user", None),
    "gitea": (
        "/login/oauth/authorize",
        "/login/oauth/access_token",
        "/api/v1/user",
        "/api/v1/user/emails",
    ),
}


@dataclass
class Email:
    email: str
    verified: bool = True
    primary: bool = True


@dataclass
class Account:
    """The forge's user. GitLab shows its first address as `email`, with
    `confirmed_at` set when that one is verified."""

    id: int
    login: str
    name: str = ""
    emails: list[Email] = field(default_factory=list)

    def profile(self, kind: str) -> dict[str, Any]:
        first = self.emails[0] if self.emails else None
        email = first.email if first else None
        if kind == "gitlab":
            return {
                "id": self.id,
                "username": self.login,
                "name": self.name,
                "email": email,
                "confirmed_at": "2024-01-01T00:00:00Z" if first and first.verified else None,
                "web_url": f"https://gitlab.example/{self.login}",
            }
        public = {"id": self.id, "login": self.login, "email": email}
        if kind == "gitea":
            return {
                **public,
                "full_name": self.name,
                "html_url": f"https://gitea.example/{self.login}",
            }
        return {**public, "name": self.name, "html_url": f"https://github.example/{self.login}"}

    def email_list(self) -> list[dict[str, Any]]:
        return [
            {"email": e.email, "verified": e.verified, "primary": e.primary} for e in self.emails
        ]


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    form: dict[str, str]
    headers: dict[str, str]  # names lower-cased


@dataclass
class Grant:
    client_id: str
    redirect_uri: str
    challenge: str


class FakeForge:
    def __init__(self, kind: str, client_id: str = "", secret: str = "") -> None:
        assert kind in PATHS, kind
        self.kind = kind
        self.client_id = client_id or f"goci-{kind}-client"
        self.secret = secret or secrets.token_urlsafe(24)
        self.account = Account(id=1, login="octo", emails=[Email("octo@example.com")])
        self.mode = "approve"  # or "deny" (error=access_denied), "error" (server_error)
        self.failing: set[str] = set()  # of "token", "user", "emails": those answer 500
        self.requests: list[Recorded] = []
        self._grants: dict[str, Grant] = {}
        self._tokens: dict[str, Account] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def env(self) -> dict[str, str]:
        """The GOCI_OAUTH_* variables a Goci server needs to sign in with this forge."""
        prefix = f"GOCI_OAUTH_{self.kind.upper()}_"
        return {
            f"{prefix}CLIENT_ID": self.client_id,
            f"{prefix}SECRET": self.secret,
            f"{prefix}URL": self.url,
        }

    def start(self) -> FakeForge:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def seen(self, endpoint: str) -> list[Recorded]:
        """The requests to one endpoint: "authorize", "token", "user" or "emails"."""
        wanted = PATHS[self.kind][("authorize", "token", "user", "emails").index(endpoint)]
        with self._lock:
            return [r for r in self.requests if r.path == wanted]

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()
        self.mode = "approve"
        self.failing = set()

    # The endpoints: each returns (status, headers, body).

    def answer(self, recorded: Recorded) -> tuple[int, dict[str, str], bytes]:
        authorize, token, user, emails = PATHS[self.kind]
        if recorded.path == authorize and recorded.method == "GET":
            return self._authorize(recorded.query)
        if recorded.path == token and recorded.method == "POST":
            return self._token(recorded)
        if recorded.path in (user, emails) and recorded.method == "GET":
            endpoint = "user" if recorded.path == user else "emails"
            if endpoint in self.failing:
                return 500, {"Content-Type": "text/plain"}, b"the forge is down"
            account = self._account(recorded)
            if account is None:
                return _json(401, {"message": "401 Unauthorized"})
            return _json(
                200, account.profile(self.kind) if endpoint == "user" else account.email_list()
            )
        return _json(404, {"message": "404 Not Found"})

    def _authorize(self, query: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        redirect_uri, state = query.get("redirect_uri", ""), query.get("state", "")
        if query.get("client_id") != self.client_id or not redirect_uri:
            return _json(400, {"error": "invalid_client"})
        back: dict[str, str] = {"state": state}
        if self.mode == "deny":
            back |= {"error": "access_denied", "error_description": "The user denied access."}
        elif self.mode == "error":
            back |= {"error": "server_error", "error_description": "Something broke."}
        else:
            code = secrets.token_urlsafe(16)
            challenge = query.get("code_challenge", "")
            with self._lock:
                self._grants[code] = Grant(self.client_id, redirect_uri, challenge)
            back["code"] = code
        return 302, {"Location": f"{redirect_uri}?{urlencode(back)}"}, b""

    def _token(self, recorded: Recorded) -> tuple[int, dict[str, str], bytes]:
        if "token" in self.failing:
            return 500, {"Content-Type": "text/plain"}, b"the forge is down"
        form = recorded.form
        with self._lock:
            grant = self._grants.pop(form.get("code", ""), None)
        if (
            form.get("client_id") != self.client_id
            or form.get("client_secret") != self.secret
            or form.get("grant_type") != "authorization_code"
        ):
            return _json(401, {"error": "invalid_client"})
        if grant is None or grant.redirect_uri != form.get("redirect_uri"):
            return _json(400, {"error": "invalid_grant"})
        if grant.challenge and _s256(form.get("code_verifier", "")) != grant.challenge:
            return _json(400, {"error": "invalid_grant", "error_description": "PKCE"})
        token = secrets.token_urlsafe(20)
        with self._lock:
            self._tokens[token] = self.account
        answer = {"access_token": token, "token_type": "bearer", "scope": "user:email"}
        if self.kind == "github" and "application/json" not in recorded.headers.get("accept", ""):
            # GitHub answers form-encoded unless asked for JSON.
            body = urlencode(answer).encode()
            return 200, {"Content-Type": "application/x-www-form-urlencoded"}, body
        return _json(200, answer)

    def _account(self, recorded: Recorded) -> Account | None:
        if self.kind == "gitlab":  # allauth sends GitLab's token as a query parameter
            token = recorded.query.get("access_token", "")
        else:
            kind, _, token = recorded.headers.get("authorization", "").partition(" ")
            if kind.lower() not in ("token", "bearer"):
                return None
        with self._lock:
            return self._tokens.get(token)


def _json(status: int, body: Any) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json"}, json.dumps(body).encode()


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _handler(forge: FakeForge) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode() if length else ""
            recorded = Recorded(
                method=self.command,
                path=parts.path,
                query=dict(parse_qsl(parts.query)),
                form=dict(parse_qsl(body)),
                headers={k.lower(): v for k, v in self.headers.items()},
            )
            with forge._lock:
                forge.requests.append(recorded)
            status, headers, payload = forge.answer(recorded)
            self.send_response(status)
            for name, value in {**headers, "Content-Length": str(len(payload))}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass  # recorded in forge.requests instead

    return Handler


@contextmanager
def fake_forge(kind: str) -> Iterator[FakeForge]:
    forge = FakeForge(kind).start()
    try:
        yield forge
    finally:
        forge.stop()
