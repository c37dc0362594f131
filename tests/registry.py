"""A real image registry for the tests: Debian's docker-registry on 127.0.0.1, with
htpasswd (bcrypt) authentication. Docker talks plain HTTP to 127.0.0.0/8 registries.
Its HTTP API (/v2/) is read with the same credentials, to see what was pushed."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import need

USER = "pusher"
PASSWORD = "registry-pw-8d1f0c2e"  # noqa: S105  (a test value, searched for where it must not be)


@dataclass
class Registry:
    host: str  # 127.0.0.1:PORT, as image references name it
    user: str
    password: str

    def _get(self, path: str, accept: str = "") -> tuple[dict[str, str], bytes]:
        request = urllib.request.Request(f"http://{self.host}{path}")
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
        if accept:
            request.add_header("Accept", accept)
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310  (http://127.0.0.1)
            return dict(answer.headers), answer.read()

    def repositories(self) -> list[str]:
        _, body = self._get("/v2/_catalog")
        return list(json.loads(body)["repositories"])

    def tags(self, repository: str) -> list[str]:
        try:
            _, body = self._get(f"/v2/{repository}/tags/list")
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return []
            raise
        return sorted(json.loads(body)["tags"] or [])

    def digest(self, repository: str, tag: str) -> str:
        """The manifest's digest, as a pull of repository:tag would see it."""
        accept = ", ".join(
            (
                "application/vnd.docker.distribution.manifest.v2+json",
                "application/vnd.oci.image.manifest.v1+json",
            )
        )
        headers, _ = self._get(f"/v2/{repository}/manifests/{tag}", accept)
        return {k.lower(): v for k, v in headers.items()}["docker-content-digest"]

    def secret(self, **override: Any) -> str:
        """The value of a registry secret for these credentials."""
        return json.dumps({"username": self.user, "password": self.password, **override})


@contextmanager
def registry(root: Path, *, auth: bool = True) -> Iterator[Registry]:
    """A registry on a free port of 127.0.0.1, storing under `root`; with `auth`, it
    takes USER and PASSWORD only (htpasswd), else anyone."""
    binary = shutil.which("docker-registry")
    htpasswd = shutil.which("htpasswd")
    if binary is None or (auth and htpasswd is None):
        need("docker-registry and htpasswd (Debian: docker-registry, apache2-utils)")
    assert binary is not None
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    root.mkdir(parents=True, exist_ok=True)
    users = root / "htpasswd"
    if auth:
        assert htpasswd is not None
        made = subprocess.run(
            [htpasswd, "-Bbn", USER, PASSWORD], capture_output=True, text=True, check=True
        )
        users.write_text(made.stdout)
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\nlog: {level: error, accesslog: {disabled: true}}\n"
        f"storage: {{filesystem: {{rootdirectory: {root}/data}}, delete: {{enabled: true}}}}\n"
        f"http: {{addr: '127.0.0.1:{port}'}}\n"
        + (f"auth: {{htpasswd: {{realm: goci-test, path: {users}}}}}\n" if auth else "")
    )
    server = subprocess.Popen([binary, "serve", str(config)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as conn:
                if conn.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        else:
            raise RuntimeError("docker-registry did not start listening within 10 s")
        yield Registry(f"127.0.0.1:{port}", USER, PASSWORD)
    finally:
        server.terminate()
        server.wait(timeout=10)
