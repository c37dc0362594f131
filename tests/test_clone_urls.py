"""Clone URLs are checked before any connection (builds/clone_urls.py): the syntax
for the settings form and the API, then the host's addresses, pinned for git. Every
refusal says why; none connects (a listening socket on the refused address sees
nothing)."""

from __future__ import annotations

import socket
import time

import pytest

from builds.clone_urls import (
    CloneTarget,
    CloneUrlRefused,
    check_clone_url,
    clone_url_problem,
    parse_clone_url,
    resolve_allowed,
)
from tests.git_server import Listener


@pytest.mark.parametrize(
    ("url", "scheme", "user", "host", "port"),
    [
        ("https://github.com/octo/shop.git", "https", "", "github.com", 443),
        ("https://GitLab.Example.com:8443/group/sub/shop", "https", "", "gitlab.example.com", 8443),
        ("ssh://git@git.example.com/octo/shop.git", "ssh", "git", "git.example.com", 22),
        ("ssh://git@git.example.com:2222/shop.git", "ssh", "git", "git.example.com", 2222),
        ("git@github.com:octo/shop.git", "ssh", "git", "github.com", 22),
        ("forge.internal:shop.git", "ssh", "", "forge.internal", 22),
        ("git@[2001:db8::1]:shop.git", "ssh", "git", "2001:db8::1", 22),
        ("https://[2001:db8::1]:3000/shop.git", "https", "", "2001:db8::1", 3000),
        ("https://192.0.2.10/shop.git", "https", "", "192.0.2.10", 443),
    ],
)
def test_these_urls_pass_the_syntax_check(
    url: str, scheme: str, user: str, host: str, port: int
) -> None:
    parsed = parse_clone_url(url)

    assert (parsed.scheme, parsed.user, parsed.host, parsed.port) == (scheme, user, host, port)
    assert clone_url_problem(url) is None


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("file:///srv/git/shop.git", "file:// reads the worker's own disk"),
        ("FILE:///etc/passwd", "file:// reads the worker's own disk"),
        ("ext::sh -c touch% /tmp/pwned", "ext:: runs any command"),
        ("fd::17", "makes git run a helper program"),
        ("/srv/git/shop.git", "is a local path"),
        ("./shop.git", "is a local path"),
        ("shop", "is a local path"),
        ("-u", "starts with '-'"),
        ("--upload-pack=touch /tmp/pwned", "starts with '-'"),
        ("-oProxyCommand=x:repo", "starts with '-'"),
        ("ssh://-oProxyCommand=touch%20x/repo", "not a valid host name"),
        ("-x@host:repo", "starts with '-'"),
        ("git@host:-u", "no repository path"),
        ("http://example.com/shop.git", "example.com is not listed in GOCI_CLONE_ALLOWED_HOSTS"),
        ("git://example.com/shop.git", "neither encrypted nor authenticated"),
        ("ftp://example.com/shop.git", "ftp:// is not supported"),
        ("https://user:secret@example.com/shop.git", "GOCI_CLONE_TOKEN"),
        ("https://ghp_token@example.com/shop.git", "GOCI_CLONE_TOKEN"),
        ("ssh://git:secret@example.com/shop.git", "GOCI_CLONE_TOKEN"),
        ("https://example.com/shop.git\x00", "control character"),
        ("https://example.com/shop.git\n--upload-pack=x", "control character"),
        ("https://example.com/\ud800", "not ASCII"),
        ("https://exämple.com/shop.git", "not ASCII"),
        ("https://example.com/my shop.git", "holds a space"),
        ("https://" + "a" * 10_000_000, "longer than 2048 characters"),
        ("https://example.com:99999999999999999999/x.git", "not a number from 1 to 65535"),
        ("https://example.com/", "names no repository path"),
        ("https://example.com/x.git?upload-pack=x", "no query"),
        ("http://2130706433/shop.git", "decimal, octal and hex forms"),
        ("https://0177.0.0.1/shop.git", "decimal, octal and hex forms"),
        ("https://0x7f.0.0.1/shop.git", "decimal, octal and hex forms"),
        ("https://127.1/shop.git", "decimal, octal and hex forms"),
        ("https://[fe80::1%25eth0]/shop.git", "zone"),
        ("https://[not-v6]/shop.git", "not an IPv6 address"),
        ("", "empty"),
    ],
)
def test_these_urls_are_refused_by_the_syntax_check_with_the_reason(url: str, reason: str) -> None:
    problem = clone_url_problem(url)

    assert problem is not None
    assert reason in problem
    assert "secret@" not in problem  # the URL's password is never repeated
    assert len(problem) < 400


def test_http_is_allowed_only_to_listed_hosts() -> None:
    assert clone_url_problem("http://git.internal/shop.git", ["git.internal"]) is None
    assert clone_url_problem("http://10.0.0.5:3000/shop.git", ["10.0.0.5"]) is None
    assert clone_url_problem("http://git.internal/shop.git", ["other.internal"]) is not None


def _can_bind(host: str) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family) as sock:
            sock.bind((host, 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize(
    ("listen", "url", "reason"),
    [
        ("127.0.0.1", "https://127.0.0.1:{port}/r.git", "127.0.0.1 is a loopback address"),
        ("127.0.0.1", "https://localhost:{port}/r.git", "localhost resolves to 127.0.0.1, which"),
        ("127.0.0.1", "https://[::ffff:127.0.0.1]:{port}/r.git", "an IPv6 form of 127.0.0.1"),
        ("127.0.0.1", "ssh://git@127.0.0.1:{port}/r.git", "127.0.0.1 is a loopback address"),
        ("127.0.0.2", "https://127.0.0.2:{port}/r.git", "127.0.0.2 is a loopback address"),
        ("::1", "https://[::1]:{port}/r.git", "::1 is a loopback address"),
        ("127.0.0.1", "http://2130706433:{port}/r.git", "decimal, octal and hex forms"),
        ("127.0.0.1", "http://0x7f000001:{port}/r.git", "decimal, octal and hex forms"),
    ],
)
def test_internal_addresses_are_refused_and_nothing_connects(
    listen: str, url: str, reason: str
) -> None:
    if not _can_bind(listen):
        pytest.skip(f"this machine has no {listen} to listen on")
    listener = Listener(listen)
    try:
        with pytest.raises(CloneUrlRefused) as refused:
            check_clone_url(url.format(port=listener.port), [])
        time.sleep(0.2)  # a connection, had one been made, would be accepted by now
    finally:
        connected = listener.close()

    assert connected == []
    assert reason in str(refused.value)
    if "forms" not in reason:
        assert "GOCI_CLONE_ALLOWED_HOSTS" in str(refused.value)


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("169.254.169.254", "a cloud metadata address: Goci never connects there"),
        ("fd00:ec2::254", "a cloud metadata address: Goci never connects there"),
        ("::ffff:169.254.169.254", "an IPv6 form of 169.254.169.254, a cloud metadata address"),
        ("100.100.100.200", "a cloud metadata address"),
        ("10.1.2.3", "10.1.2.3 is a private address"),
        ("192.168.1.1", "a private address"),
        ("172.16.0.1", "a private address"),
        ("169.254.1.1", "a link-local address"),
        ("fe80::1", "a link-local address"),
        ("fc00::1", "a private address"),
        ("224.0.0.1", "a multicast address"),
        ("0.0.0.0", "the unspecified address"),  # noqa: S104  (an address to refuse)
        ("::", "the unspecified address"),
        ("240.0.0.1", "a reserved address"),
        ("100.64.0.1", "not a public address"),
        ("64:ff9b::7f00:1", "an IPv6 form of 127.0.0.1, a loopback address"),
        ("2002:7f00:1::1", "an IPv6 form of 127.0.0.1, a loopback address"),
    ],
)
def test_internal_addresses_are_refused_with_the_reason(host: str, reason: str) -> None:
    with pytest.raises(CloneUrlRefused) as refused:
        resolve_allowed(host, 443, [])

    assert reason in str(refused.value)


def test_a_listed_host_or_address_is_allowed_and_its_addresses_are_pinned() -> None:
    assert resolve_allowed("localhost", 80, ["localhost"])[0] in ("127.0.0.1", "::1")
    assert resolve_allowed("127.0.0.1", 80, ["127.0.0.1"]) == ["127.0.0.1"]
    # The address listed: a name that resolves to it is allowed as well.
    assert "127.0.0.1" in resolve_allowed("localhost", 80, ["127.0.0.1", "::1"])
    assert resolve_allowed("::ffff:127.0.0.1", 80, ["127.0.0.1"]) == ["::ffff:127.0.0.1"]
    assert resolve_allowed("10.1.2.3", 80, [" 10.1.2.3 "]) == ["10.1.2.3"]
    assert resolve_allowed("192.0.2.10", 443, ["[2001:db8::1]", "192.0.2.10"]) == ["192.0.2.10"]

    target = check_clone_url("http://127.0.0.1:3000/shop.git", ["127.0.0.1"])

    assert target == CloneTarget(
        url="http://127.0.0.1:3000/shop.git",
        scheme="http",
        user="",
        host="127.0.0.1",
        port=3000,
        addresses=("127.0.0.1",),
    )


def test_a_metadata_address_is_refused_even_when_listed() -> None:
    with pytest.raises(CloneUrlRefused, match="never connects there"):
        resolve_allowed("169.254.169.254", 80, ["169.254.169.254"])
    with pytest.raises(CloneUrlRefused, match="never connects there"):
        check_clone_url("https://[fd00:ec2::254]/x.git", ["fd00:ec2::254"])


def test_a_host_that_does_not_resolve_is_refused_with_the_reason() -> None:
    with pytest.raises(CloneUrlRefused, match=r"the host no-such-host\.invalid cannot be resolved"):
        check_clone_url("https://no-such-host.invalid/shop.git", [])
