"""Which URLs Goci may connect to: a project's clone URL (and, through
resolve_allowed, a forge's API for commit statuses), checked before any connection.

No Django here: the operator's list (GOCI_CLONE_ALLOWED_HOSTS) is passed in.

- clone_url_problem: the syntax alone, for the project settings form and the API:
  https, ssh and `user@host:path` only, http only to a listed host; never file://,
  a remote helper (`ext::`), a local path, an option, a control character, or a
  password in the URL.
- resolve_allowed: the host's addresses, refused if any is loopback, private,
  link-local, multicast, reserved, unspecified or otherwise not public, unless the
  operator lists the host (or that address). Cloud metadata addresses are refused
  even then. The caller connects to the addresses returned (git's
  http.curloptResolve, ssh's HostName), so DNS cannot answer differently between
  the check and the connection.
- check_clone_url: both.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

ALLOW_SETTING = "GOCI_CLONE_ALLOWED_HOSTS"
MAX_URL = 2048
DEFAULT_PORTS = {"https": 443, "http": 80, "ssh": 22}
# Where cloud instances read their credentials (AWS, GCP and Azure; AWS over IPv6;
# Alibaba). No git server or forge API lives there: not even the operator's list
# allows them.
METADATA = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200", "169.254.170.2")
)
NAT64 = ipaddress.ip_network("64:ff9b::/96")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# git's `<transport>::<address>` runs a remote helper: ext:: runs any command.
_HELPER = re.compile(r"[A-Za-z0-9][A-Za-z0-9+.-]*::")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_SCP = re.compile(r"(?:(?P<user>[^@/:\[\]]+)@)?(?P<host>\[[^\]/@]*\]|[^@/:\[\]]+):(?P<path>.*)")
_USER = re.compile(r"[A-Za-z0-9._~+][A-Za-z0-9._~+-]*")
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
# A last label of digits or 0x...: an IPv4 address, perhaps in a form (2130706433,
# 0177.0.0.1, 0x7f.1) that resolvers accept and curl may read differently.
_NUMERIC = re.compile(r"(?:^|\.)(?:0x[0-9a-f]*|[0-9]+)\.?$")
_NO_USERINFO = (
    "put the credential in the project's GOCI_CLONE_TOKEN secret (or an SSH key in "
    "GOCI_CLONE_SSH_KEY), never in the URL"
)
_SCHEMES_HINT = "use https://host/path, ssh://user@host/path or user@host:path"


class CloneUrlRefused(ValueError):
    """Goci will not connect there; the message says why and what to do instead."""


@dataclass(frozen=True)
class CloneUrl:
    """A clone URL that passed the syntax check."""

    url: str  # as given
    scheme: str  # https, http or ssh (user@host:path is ssh)
    user: str  # ssh's user ("" if none); never set for http(s)
    host: str  # lower case; an IPv6 address without brackets
    port: int
    scp: bool = False  # written user@host:path


@dataclass(frozen=True)
class CloneTarget(CloneUrl):
    """A clone URL checked and resolved: connect to these addresses only."""

    addresses: tuple[str, ...] = ()


def clone_url_problem(url: str, allowed_hosts: Sequence[str] = ()) -> str | None:
    """What is wrong with the syntax of a clone URL, or None. No lookup is made."""
    try:
        parse_clone_url(url, allowed_hosts)
    except CloneUrlRefused as exc:
        return str(exc)
    return None


def check_clone_url(url: str, allowed_hosts: Sequence[str]) -> CloneTarget:
    """The URL checked and its host resolved; CloneUrlRefused says why not."""
    parsed = parse_clone_url(url, allowed_hosts)
    addresses = resolve_allowed(parsed.host, parsed.port, allowed_hosts)
    return CloneTarget(**{**parsed.__dict__, "addresses": tuple(addresses)})


def parse_clone_url(url: str, allowed_hosts: Sequence[str] = ()) -> CloneUrl:
    """The parts of a clone URL, or CloneUrlRefused. The URL is never quoted back: it
    could hold a password."""
    if not isinstance(url, str) or not url:
        raise CloneUrlRefused("the clone URL is empty")
    if len(url) > MAX_URL:
        raise CloneUrlRefused(f"the clone URL is longer than {MAX_URL} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise CloneUrlRefused("the clone URL holds a control character (NUL, newline, tab...)")
    if not url.isascii():
        raise CloneUrlRefused(
            "the clone URL holds a character that is not ASCII: write a host name in its "
            "xn-- form and percent-encode the path"
        )
    if url.startswith("-"):
        raise CloneUrlRefused("the clone URL starts with '-', like an option of git")
    if _HELPER.match(url):
        raise CloneUrlRefused(
            "a '<transport>::' URL makes git run a helper program (ext:: runs any "
            f"command): {_SCHEMES_HINT}"
        )
    if " " in url:
        raise CloneUrlRefused("the clone URL holds a space: percent-encode it (%20)")
    scheme = _SCHEME.match(url)
    if scheme:
        return _parse_url(url, scheme.group(1).lower(), allowed_hosts)
    colon, slash = url.find(":"), url.find("/")
    if colon > 0 and (slash < 0 or colon < slash or url.startswith("[")):
        return _parse_scp(url)
    raise CloneUrlRefused(
        f"the clone URL is a local path: Goci clones from a server only ({_SCHEMES_HINT})"
    )


def _parse_url(url: str, scheme: str, allowed_hosts: Sequence[str]) -> CloneUrl:
    if scheme == "file":
        raise CloneUrlRefused(f"file:// reads the worker's own disk: {_SCHEMES_HINT}")
    if scheme == "git":
        raise CloneUrlRefused(f"git:// is neither encrypted nor authenticated: {_SCHEMES_HINT}")
    if scheme not in DEFAULT_PORTS:
        raise CloneUrlRefused(f"the scheme {scheme}:// is not supported: {_SCHEMES_HINT}")
    try:
        parts = urlsplit(url)
        parts.hostname  # noqa: B018  (raises on a bracketed host that is no IPv6 address)
    except ValueError:
        raise CloneUrlRefused("the host in [brackets] is not an IPv6 address") from None
    if parts.password is not None or (scheme != "ssh" and parts.username is not None):
        raise CloneUrlRefused(f"the clone URL holds a user name or password: {_NO_USERINFO}")
    user = parts.username or ""
    if user and not _USER.fullmatch(user):
        raise CloneUrlRefused("the user name in the clone URL is not a plain user name")
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError:
        raise CloneUrlRefused("the port in the clone URL is not a number from 1 to 65535") from None
    host = _check_host(parts.hostname or "", bracketed=parts.netloc.rpartition("@")[2][:1] == "[")
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise CloneUrlRefused("a clone URL has no query (?) or fragment (#)")
    if len(parts.path) < 2 or parts.path.startswith("/-"):
        raise CloneUrlRefused("the clone URL names no repository path after the host")
    if scheme == "http" and not host_listed(host, allowed_hosts):
        raise CloneUrlRefused(
            f"http:// sends the code and any token in clear text: {host} is not listed in "
            f"{ALLOW_SETTING}, the hosts an operator allows it for. Use https or ssh"
        )
    return CloneUrl(url=url, scheme=scheme, user=user, host=host, port=port)


def _parse_scp(url: str) -> CloneUrl:
    match = _SCP.fullmatch(url)
    if not match:
        raise CloneUrlRefused(f"the clone URL is not a URL git understands: {_SCHEMES_HINT}")
    user, raw_host, path = match.group("user") or "", match.group("host"), match.group("path")
    if user and not _USER.fullmatch(user):
        raise CloneUrlRefused("the user name in the clone URL is not a plain user name")
    if ":" in user or not path or path.startswith("-"):
        raise CloneUrlRefused("the clone URL names no repository path after 'host:'")
    bracketed = raw_host.startswith("[")
    host = _check_host(raw_host.strip("[]"), bracketed=bracketed)
    return CloneUrl(url=url, scheme="ssh", user=user, host=host, port=22, scp=True)


def _check_host(host: str, *, bracketed: bool = False) -> str:
    """The host in lower case (an IPv6 address without brackets), or CloneUrlRefused
    for what is neither a DNS name nor an IP address in its usual form."""
    host = host.lower()
    if not host:
        raise CloneUrlRefused("the clone URL names no host")
    if bracketed or ":" in host:
        try:
            address = ipaddress.IPv6Address(host)
        except ValueError:
            raise CloneUrlRefused("the host in [brackets] is not an IPv6 address") from None
        if address.scope_id:
            raise CloneUrlRefused("an IPv6 address with a %zone is not accepted")
        return host
    if _NUMERIC.search(host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise CloneUrlRefused(
                "the host is a number but not an IPv4 address in its usual form (decimal, "
                "octal and hex forms such as 2130706433 or 0177.0.0.1 are refused): "
                "write four decimal numbers, such as 192.0.2.10"
            ) from None
        return host
    name = host.removesuffix(".")
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in name.split(".")):
        raise CloneUrlRefused("the host is not a valid host name")
    return host


def _normal(entry: str) -> str:
    return entry.strip().lower().strip("[]").removesuffix(".")


def _address(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


def _unmapped(address: IPAddress | None) -> IPAddress | None:
    """::ffff:a.b.c.d is a.b.c.d (the socket connects there)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def host_listed(host: str, allowed_hosts: Sequence[str]) -> bool:
    """Whether the operator lists this host name or address."""
    wanted = _normal(host)
    address = _unmapped(_address(wanted))
    for entry in allowed_hosts:
        listed = _normal(entry)
        if listed == wanted:
            return True
        if address is not None and _unmapped(_address(listed)) == address:
            return True
    return False


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address that an IPv6 one leads to (mapped, NAT64, 6to4, Teredo)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    return None


def metadata(address: IPAddress) -> bool:
    """A cloud metadata address, in any form."""
    if isinstance(address, ipaddress.IPv6Address) and address not in METADATA:
        return _embedded_ipv4(address) in METADATA
    return address in METADATA


def internal(address: IPAddress) -> str | None:
    """Why Goci does not connect to this address unless it is listed, or None."""
    if address in METADATA:
        return "a cloud metadata address"
    if isinstance(address, ipaddress.IPv6Address) and (v4 := _embedded_ipv4(address)):
        why = internal(v4)
        return f"an IPv6 form of {v4}, {why}" if why else None
    checks = (
        (address.is_loopback, "a loopback address"),
        (address.is_unspecified, "the unspecified address"),
        (address.is_link_local, "a link-local address"),
        (address.is_multicast, "a multicast address"),
        (address.is_reserved, "a reserved address"),
        (address.is_private, "a private address"),
        (not address.is_global, "not a public address"),
    )
    return next((why for bad, why in checks if bad), None)


def resolve_allowed(host: str, port: int, allowed_hosts: Sequence[str]) -> list[str]:
    """The addresses of `host` to connect to (pin them: connect to no other), or
    CloneUrlRefused if one of them is internal and neither the host nor that address
    is listed in `allowed_hosts`, or if it is a cloud metadata address."""
    name = _check_host(host.strip("[]"), bracketed=host.startswith("["))
    listed = host_listed(name, allowed_hosts)
    try:
        found = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise CloneUrlRefused(f"the host {name} cannot be resolved ({reason})") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in found))
    if not addresses:
        raise CloneUrlRefused(f"the host {name} has no address")
    for text in addresses:
        address = _address(text)
        if address is None:
            raise CloneUrlRefused(f"the host {name} resolves to {text}, not an IP address")
        why = internal(address)
        shown = name if name == text else f"{name} resolves to {text}, which"
        if metadata(address):
            raise CloneUrlRefused(f"{shown} is {why}: Goci never connects there")
        if why is not None and not (listed or host_listed(text, allowed_hosts)):
            raise CloneUrlRefused(
                f"{shown} is {why}: Goci connects to loopback, private, link-local and "
                f"other internal addresses only for hosts the operator lists in "
                f"{ALLOW_SETTING} (comma-separated host names or addresses)"
            )
    return addresses
