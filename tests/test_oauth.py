"""Sign in with GitHub, GitLab and Gitea (issue #11), the whole flow: a real `goci up`
whose GOCI_OAUTH_* point at local fake forges (tests/oauth_provider.py), driven over
HTTP with a cookie-keeping session that follows every redirect, as a browser does.

The settings (which forges, password sign-in) are read when a server starts, so each
configuration is a server of its own; the tests of one server use distinct forge
accounts and usernames, so that their order does not matter.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
import requests

from tests.helpers import REPO
from tests.oauth_provider import Account, Email, FakeForge
from tests.test_up import Up, embedded_env, free_port, manage

TIMEOUT = 30
# A whole sign-in round trip (POST to the forge's login URL -> the signed-in dashboard)
# against the local forge takes some tens of milliseconds (bench/bench_oauth.py); this
# only catches something gone badly wrong, on a slow shared CI machine too.
ROUND_TRIP_LIMIT = 5.0
CSRF = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


class ForgeUp(Up):
    """`goci up` with extra environment (the forges, GOCI_PASSWORD_SIGNIN)."""

    def __init__(self, data_dir: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.out = data_dir.parent / f"up-{self.port}.out"
        self.err = data_dir.parent / f"up-{self.port}.err"
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "goci.cli",
                    "up",
                    "--port",
                    str(self.port),
                    "--workers",
                    "1",
                ],
                cwd=data_dir.parent,
                env={**embedded_env(data_dir), **env},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )

    def db(self, code: str) -> Any:
        """Run `code` in `manage.py shell` on the server's database; it sets `out`,
        which comes back decoded from JSON."""
        prelude = (
            "import json\n"
            "from django.contrib.auth.models import User\n"
            "from allauth.socialaccount.models import SocialAccount\n"
            "from goci.audit.models import AuditEvent\n"
            "out = None\n"
        )
        printed = manage(self.data_dir, prelude + code + "\nprint(json.dumps(out))")
        return json.loads(printed.splitlines()[-1])


@contextmanager
def goci_with(data_dir: Path, **env: str) -> Iterator[ForgeUp]:
    server = ForgeUp(data_dir, env)
    try:
        server.wait_ready()
        yield server
    finally:
        if server.proc.poll() is None:
            server.stop()
        server.proc.wait()


def sign_in_with(
    server: Up, forge: str, session: requests.Session | None = None, next_url: str = ""
) -> requests.Response:
    """Press "Sign in with <forge>" on the sign-in page; follows every redirect (the
    forge, the callback, the dashboard) and returns the last answer."""
    session = session or requests.Session()
    query = f"?{urlencode({'next': next_url})}" if next_url else ""
    page = session.get(f"{server.url}/login/{query}", timeout=TIMEOUT)
    assert page.status_code == 200, page.text
    form = re.search(
        rf'<form method="post" action="/accounts/{forge}/login/" class="field">(.*?)</form>',
        page.text,
        re.DOTALL,
    )
    assert form, f"no 'Sign in with {forge}' form on the sign-in page:\n{page.text}"
    fields = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', form.group(1)))
    return session.post(f"{server.url}/accounts/{forge}/login/", data=fields, timeout=TIMEOUT)


def signed_in_as(response: requests.Response) -> str | None:
    match = re.search(r"Signed in as <strong>([^<]+)</strong>", response.text)
    return match.group(1) if match else None


def csrf_of(session: requests.Session, url: str) -> str:
    match = CSRF.search(session.get(url, timeout=TIMEOUT).text)
    assert match, url
    return match.group(1)


def password_sign_in(server: Up, username: str, password: str) -> requests.Response:
    session = requests.Session()
    token = csrf_of(session, f"{server.url}/login/")
    return session.post(
        f"{server.url}/login/",
        data={"csrfmiddlewaretoken": token, "username": username, "password": password},
        timeout=TIMEOUT,
    )


def assert_goci_page(response: requests.Response) -> None:
    """One of Goci's own pages (base.html), with the way back to the sign-in page."""
    assert '<a class="brand" href="/">Goci</a>' in response.text, response.text
    assert 'href="/login/"' in response.text, response.text


@pytest.fixture(scope="module")
def forges() -> Iterator[dict[str, FakeForge]]:
    started = {kind: FakeForge(kind).start() for kind in ("github", "gitlab", "gitea")}
    yield started
    for forge in started.values():
        forge.stop()


@pytest.fixture(scope="module")
def server(
    forges: dict[str, FakeForge], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ForgeUp]:
    env = {k: v for forge in forges.values() for k, v in forge.env().items()}
    with goci_with(tmp_path_factory.mktemp("oauth") / "data", **env) as up:
        yield up


@pytest.fixture
def github(forges: dict[str, FakeForge]) -> FakeForge:
    forges["github"].clear()
    return forges["github"]


@pytest.fixture
def gitlab(forges: dict[str, FakeForge]) -> FakeForge:
    forges["gitlab"].clear()
    return forges["gitlab"]


@pytest.fixture
def gitea(forges: dict[str, FakeForge]) -> FakeForge:
    forges["gitea"].clear()
    return forges["gitea"]


# --- The sign-in page ------------------------------------------------------------------


def test_the_sign_in_page_has_the_password_form_and_one_button_per_forge(
    server: ForgeUp,
) -> None:
    page = requests.get(f"{server.url}/login/?next=/projects/", timeout=TIMEOUT)
    assert page.status_code == 200
    assert 'name="password"' in page.text
    for forge, name in (("github", "GitHub"), ("gitlab", "GitLab"), ("gitea", "Gitea")):
        form = re.search(
            rf'<form method="post" action="/accounts/{forge}/login/" class="field">(.*?)</form>',
            page.text,
            re.DOTALL,
        )
        assert form, forge
        assert 'name="csrfmiddlewaretoken"' in form.group(1)
        assert '<input type="hidden" name="next" value="/projects/">' in form.group(1)
        assert f"Sign in with {name}</button>" in form.group(1)


# --- GitHub: create, reuse, link ----------------------------------------------------------


def test_a_first_sign_in_creates_the_user_and_the_next_one_signs_them_in_again(
    server: ForgeUp, github: FakeForge
) -> None:
    github.account = Account(
        id=101,
        login="octocat",
        name="Mona Octocat",
        emails=[Email("mona@octo.example", verified=True, primary=True)],
    )
    started = time.monotonic()
    landed = sign_in_with(server, "github")
    took = time.monotonic() - started
    print(f"one GitHub sign-in round trip against the local forge: {took * 1000:.0f} ms")  # noqa: T201
    assert landed.status_code == 200, landed.text
    assert landed.url == f"{server.url}/"
    assert signed_in_as(landed) == "octocat"
    assert took < ROUND_TRIP_LIMIT

    # What Goci sent the forge: its client id and redirect URI, then the secret, the
    # code it was given and the same redirect URI, then the token.
    callback = f"{server.url}/accounts/github/login/callback/"
    (authorize,) = github.seen("authorize")
    assert authorize.query["client_id"] == github.client_id
    assert authorize.query["redirect_uri"] == callback
    assert authorize.query["response_type"] == "code"
    assert authorize.query["scope"] == "user:email"
    assert len(authorize.query["state"]) >= 12
    (token,) = github.seen("token")
    assert token.form["client_secret"] == github.secret
    assert token.form["client_id"] == github.client_id
    assert token.form["redirect_uri"] == callback
    assert token.form["grant_type"] == "authorization_code"
    assert token.form["code"]
    (user_call,) = github.seen("user")
    assert user_call.headers["authorization"].startswith("token ")
    assert len(github.seen("emails")) == 1

    again = sign_in_with(server, "github")
    assert signed_in_as(again) == "octocat"

    state = server.db(
        "u = User.objects.get(username='octocat')\n"
        "out = {'staff': u.is_staff, 'superuser': u.is_superuser, 'email': u.email,\n"
        " 'usable_password': u.has_usable_password(), 'first_name': u.first_name,\n"
        " 'memberships': u.membership_set.count(),\n"
        " 'accounts': list(SocialAccount.objects.filter(user=u).values_list('provider', 'uid')),\n"
        " 'users_named': User.objects.filter(username__startswith='octocat').count(),\n"
        " 'events': [[e.action, e.via, e.details] for e in\n"
        "   AuditEvent.objects.filter(actor=u).order_by('id')]}"
    )
    assert state == {
        "staff": False,
        "superuser": False,
        "email": "mona@octo.example",
        "usable_password": False,
        "first_name": "Mona",
        "memberships": 0,
        "accounts": [["github", "101"]],
        "users_named": 1,
        "events": [
            ["user.create", "ui", {"provider": "github", "forge_login": "octocat"}],
            ["signin.success", "ui", {"provider": "github"}],
            ["signin.success", "ui", {"provider": "github"}],
        ],
    }


def test_a_new_user_sees_no_project_until_added(server: ForgeUp, github: FakeForge) -> None:
    server.db(
        "from builds.models import Project\n"
        "owner = User.objects.create_user('proj-owner')\n"
        "Project.objects.create(slug='secret-plans', name='Secret plans')\n"
        "out = True"
    )
    github.account = Account(id=102, login="newcomer", emails=[Email("newcomer@example.com")])
    session = requests.Session()
    assert signed_in_as(sign_in_with(server, "github", session)) == "newcomer"
    projects = session.get(f"{server.url}/projects/", timeout=TIMEOUT)
    assert projects.status_code == 200
    assert "secret-plans" not in projects.text
    assert session.get(f"{server.url}/projects/secret-plans/", timeout=TIMEOUT).status_code == 404


def test_a_taken_username_gets_the_next_free_number(server: ForgeUp, github: FakeForge) -> None:
    server.db(
        "User.objects.create_user('hubber'); User.objects.create_user('Hubber-2'); out = True"
    )
    github.account = Account(id=103, login="hubber", emails=[Email("hubber@example.net")])
    assert signed_in_as(sign_in_with(server, "github")) == "hubber-3"


def test_a_verified_address_links_to_its_user_whose_password_keeps_working(
    server: ForgeUp, github: FakeForge
) -> None:
    server.db(
        "User.objects.create_user('alice', email='Alice@Example.COM', password='alice-pass-123')\n"
        "out = True"
    )
    github.account = Account(
        id=104,
        login="alice-on-github",
        emails=[
            Email("alice@elsewhere.example", verified=False, primary=True),
            Email("alice@example.com", verified=True, primary=False),
        ],
    )
    assert signed_in_as(sign_in_with(server, "github")) == "alice"
    # Connected: the next sign-in finds her by the GitHub account itself.
    assert signed_in_as(sign_in_with(server, "github")) == "alice"

    state = server.db(
        "u = User.objects.get(username='alice')\n"
        "out = {'usable_password': u.has_usable_password(), 'email': u.email,\n"
        " 'accounts': list(SocialAccount.objects.filter(user=u).values_list('provider', 'uid')),\n"
        " 'new_users': User.objects.filter(username__startswith='alice-on').count(),\n"
        " 'events': [[e.action, e.details] for e in AuditEvent.objects.filter(actor=u)\n"
        "   .order_by('id')]}"
    )
    assert state == {
        "usable_password": True,
        "email": "Alice@example.com",
        "accounts": [["github", "104"]],
        "new_users": 0,
        "events": [
            [
                "user.link",
                {
                    "provider": "github",
                    "email": "Alice@example.com",
                    "forge_login": "alice-on-github",
                },
            ],
            ["signin.success", {"provider": "github"}],
            ["signin.success", {"provider": "github"}],
        ],
    }
    by_password = password_sign_in(server, "alice", "alice-pass-123")
    assert signed_in_as(by_password) == "alice", by_password.text


def test_an_unverified_address_never_links_and_the_new_user_goes_without_it(
    server: ForgeUp, github: FakeForge
) -> None:
    server.db(
        "User.objects.create_user('bob', email='bob@example.com', password='bob-pass-123')\n"
        "out = True"
    )
    github.account = Account(
        id=105, login="bobby", emails=[Email("bob@example.com", verified=False, primary=True)]
    )
    assert signed_in_as(sign_in_with(server, "github")) == "bobby"
    state = server.db(
        "bob, bobby = User.objects.get(username='bob'), User.objects.get(username='bobby')\n"
        "out = {'bobby_email': bobby.email, 'bob_accounts': bob.socialaccount_set.count(),\n"
        " 'bob_usable_password': bob.has_usable_password()}"
    )
    assert state == {"bobby_email": "", "bob_accounts": 0, "bob_usable_password": True}
    assert signed_in_as(password_sign_in(server, "bob", "bob-pass-123")) == "bob"


def test_an_address_two_users_share_links_to_neither(server: ForgeUp, github: FakeForge) -> None:
    server.db(
        "User.objects.create_user('twin-a', email='twins@example.com')\n"
        "User.objects.create_user('twin-b', email='TWINS@example.com')\n"
        "out = True"
    )
    github.account = Account(id=106, login="twin-c", emails=[Email("twins@example.com")])
    assert signed_in_as(sign_in_with(server, "github")) == "twin-c"
    email = server.db("out = User.objects.get(username='twin-c').email")
    assert email == ""


def test_a_deactivated_user_cannot_sign_in_with_their_forge(
    server: ForgeUp, github: FakeForge
) -> None:
    github.account = Account(id=107, login="leaver", emails=[Email("leaver@example.com")])
    assert signed_in_as(sign_in_with(server, "github")) == "leaver"
    server.db("User.objects.filter(username='leaver').update(is_active=False); out = True")
    refused = sign_in_with(server, "github")
    assert refused.status_code == 403
    assert signed_in_as(refused) is None
    assert "The Goci account leaver is deactivated" in refused.text
    assert_goci_page(refused)

    # Nor through their address: a deactivated user's address makes no new account.
    server.db(
        "User.objects.create_user('gone', email='gone@example.com', is_active=False); out = True"
    )
    github.account = Account(id=108, login="gone-again", emails=[Email("gone@example.com")])
    refused = sign_in_with(server, "github")
    assert refused.status_code == 403
    assert "The Goci account gone is deactivated" in refused.text
    assert server.db("out = User.objects.filter(username='gone-again').exists()") is False


def test_next_is_carried_through_the_forge_and_only_to_this_server(
    server: ForgeUp, github: FakeForge
) -> None:
    github.account = Account(id=109, login="traveller", emails=[Email("t@example.com")])
    landed = sign_in_with(server, "github", next_url="/projects/")
    assert landed.url == f"{server.url}/projects/"
    assert signed_in_as(landed) == "traveller"
    elsewhere = sign_in_with(server, "github", next_url="https://evil.example/")
    assert elsewhere.url == f"{server.url}/"


# --- GitLab and Gitea ------------------------------------------------------------------------


def test_gitlab_links_by_its_confirmed_address_and_otherwise_makes_a_user_without_one(
    server: ForgeUp, gitlab: FakeForge
) -> None:
    server.db(
        "User.objects.create_user('carol', email='carol@example.com', password='carol-pass-1')\n"
        "User.objects.create_user('dave', email='dave@example.com')\n"
        "out = True"
    )
    gitlab.account = Account(id=201, login="carol-gl", emails=[Email("carol@example.com")])
    assert signed_in_as(sign_in_with(server, "gitlab")) == "carol"
    callback = f"{server.url}/accounts/gitlab/login/callback/"
    (authorize,) = gitlab.seen("authorize")
    assert (authorize.query["redirect_uri"], authorize.query["scope"]) == (callback, "read_user")
    (token,) = gitlab.seen("token")
    assert (token.form["client_secret"], token.form["redirect_uri"]) == (gitlab.secret, callback)
    (user_call,) = gitlab.seen("user")
    assert user_call.query["access_token"]

    # Not confirmed (confirmed_at null): dave's address is not his to claim.
    gitlab.account = Account(
        id=202, login="dave-gl", emails=[Email("dave@example.com", verified=False)]
    )
    assert signed_in_as(sign_in_with(server, "gitlab")) == "dave-gl"
    state = server.db(
        "out = {'dave_gl_email': User.objects.get(username='dave-gl').email,\n"
        " 'carol_password': User.objects.get(username='carol').has_usable_password(),\n"
        " 'carol_accounts': list(SocialAccount.objects.filter(user__username='carol')\n"
        "   .values_list('provider', flat=True))}"
    )
    assert state == {"dave_gl_email": "", "carol_password": True, "carol_accounts": ["gitlab"]}


def test_gitea_s_verified_addresses_come_from_its_emails_endpoint(
    server: ForgeUp, gitea: FakeForge
) -> None:
    server.db(
        "User.objects.create_user('erin', email='erin@example.com', password='erin-pass-12')\n"
        "User.objects.create_user('frank', email='frank@example.com')\n"
        "out = True"
    )
    gitea.account = Account(
        id=301,
        login="erin-tea",
        emails=[Email("erin@example.com", verified=True, primary=True)],
    )
    assert signed_in_as(sign_in_with(server, "gitea")) == "erin"
    (emails_call,) = gitea.seen("emails")
    assert emails_call.headers["authorization"].startswith("token ")
    (token,) = gitea.seen("token")
    assert token.form["client_secret"] == gitea.secret
    assert token.form["redirect_uri"] == f"{server.url}/accounts/gitea/login/callback/"

    gitea.account = Account(
        id=302,
        login="frank-tea",
        emails=[Email("frank@example.com", verified=False, primary=True)],
    )
    assert signed_in_as(sign_in_with(server, "gitea")) == "frank-tea"
    assert server.db("out = User.objects.get(username='frank-tea').email") == ""
    assert signed_in_as(password_sign_in(server, "erin", "erin-pass-12")) == "erin"


# --- What goes wrong ---------------------------------------------------------------------------


def test_a_cancelled_sign_in_says_so_and_changes_nothing(
    server: ForgeUp, github: FakeForge
) -> None:
    github.mode = "deny"
    github.account = Account(id=401, login="shy", emails=[Email("shy@example.com")])
    page = sign_in_with(server, "github")
    assert page.status_code == 200
    assert page.url == f"{server.url}/accounts/social/login/cancelled/"
    assert "Sign-in cancelled" in page.text
    assert signed_in_as(page) is None
    assert_goci_page(page)
    assert github.seen("token") == []
    assert server.db("out = User.objects.filter(username='shy').exists()") is False


def test_an_error_from_the_forge_is_shown_with_what_it_answered(
    server: ForgeUp, github: FakeForge
) -> None:
    github.mode = "error"
    page = sign_in_with(server, "github")
    assert page.status_code == 401
    assert "GitHub did not sign you in (it answered: server_error)" in page.text
    assert_goci_page(page)


@pytest.mark.parametrize(
    ("kind", "failing"), [("github", "token"), ("github", "user"), ("gitea", "emails")]
)
def test_a_forge_endpoint_that_fails_shows_a_page_not_a_500(
    server: ForgeUp, forges: dict[str, FakeForge], kind: str, failing: str
) -> None:
    forge = forges[kind]
    forge.clear()
    forge.failing = {failing}
    forge.account = Account(id=402, login=f"unlucky-{kind}", emails=[Email("u@example.com")])
    page = sign_in_with(server, kind)
    assert page.status_code == 401, page.text
    assert "Goci could not get your account from" in page.text
    assert signed_in_as(page) is None
    assert_goci_page(page)
    assert server.db(f"out = User.objects.filter(username='unlucky-{kind}').exists()") is False


def test_a_callback_whose_state_this_browser_did_not_get_is_refused(
    server: ForgeUp, github: FakeForge
) -> None:
    github.account = Account(id=403, login="forged", emails=[Email("forged@example.com")])
    session = requests.Session()
    token = csrf_of(session, f"{server.url}/login/")
    started = session.post(
        f"{server.url}/accounts/github/login/",
        data={"csrfmiddlewaretoken": token},
        allow_redirects=False,
        timeout=TIMEOUT,
    )
    assert started.status_code == 302
    at_forge = requests.get(started.headers["Location"], allow_redirects=False, timeout=TIMEOUT)
    callback = urlsplit(at_forge.headers["Location"])
    query = dict(parse_qsl(callback.query))
    callback_url = f"{server.url}{callback.path}"

    tampered = session.get(
        callback_url, params={**query, "state": "not-the-state"}, timeout=TIMEOUT
    )
    # Another browser (an attacker's link with their own code) has no state at all.
    elsewhere = requests.get(callback_url, params=query, timeout=TIMEOUT)
    for page in (tampered, elsewhere):
        assert page.status_code == 401
        assert "its state did not match" in page.text
        assert signed_in_as(page) is None
        assert_goci_page(page)
    assert github.seen("token") == []


def test_connecting_a_forge_instead_of_signing_in_is_refused(
    server: ForgeUp, github: FakeForge
) -> None:
    github.account = Account(id=404, login="connector", emails=[Email("c@example.com")])
    session = requests.Session()
    token = csrf_of(session, f"{server.url}/login/")
    page = session.post(
        f"{server.url}/accounts/github/login/",
        data={"csrfmiddlewaretoken": token, "process": "connect"},
        timeout=TIMEOUT,
    )
    assert page.status_code == 400
    assert "connecting accounts is not offered" in page.text
    assert_goci_page(page)


# --- Every page of the flow is Goci's, and only those are routed ---------------------------


def test_starting_with_a_get_shows_goci_s_page_whose_button_signs_in(
    server: ForgeUp, github: FakeForge
) -> None:
    github.account = Account(id=405, login="getter", emails=[Email("getter@example.com")])
    session = requests.Session()
    page = session.get(f"{server.url}/accounts/github/login/?next=/projects/", timeout=TIMEOUT)
    assert page.status_code == 200
    assert_goci_page(page)
    assert "Continue to GitHub</button>" in page.text
    assert github.seen("authorize") == []  # a GET starts nothing
    fields = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', page.text))
    landed = session.post(page.url, data=fields, timeout=TIMEOUT)
    assert landed.url == f"{server.url}/projects/"
    assert signed_in_as(landed) == "getter"


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/accounts/social/login/cancelled/", 200),
        ("/accounts/social/login/error/", 401),
        ("/accounts/github/login/callback/", 401),
        ("/accounts/gitlab/login/callback/", 401),
        ("/accounts/gitea/login/callback/", 401),
    ],
)
def test_allauth_pages_a_stranger_can_open_are_goci_s(
    server: ForgeUp, path: str, status: int
) -> None:
    page = requests.get(f"{server.url}{path}", timeout=TIMEOUT)
    assert page.status_code == status
    assert_goci_page(page)


@pytest.mark.parametrize(
    "path",
    [
        "/accounts/",
        "/accounts/login/",
        "/accounts/signup/",
        "/accounts/password/reset/",
        "/accounts/email/",
        "/accounts/social/",
        "/accounts/social/signup/",
        "/accounts/social/connections/",
    ],
)
def test_allauth_s_own_account_pages_are_not_routed(server: ForgeUp, path: str) -> None:
    assert requests.get(f"{server.url}{path}", timeout=TIMEOUT).status_code == 404


# --- Password sign-in off ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def no_passwords(
    forges: dict[str, FakeForge], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ForgeUp]:
    env = {**forges["github"].env(), "GOCI_PASSWORD_SIGNIN": "off"}
    with goci_with(tmp_path_factory.mktemp("oauth-off") / "data", **env) as up:
        up.db(
            "User.objects.create_user('pat', password='pat-pass-123')\n"
            "User.objects.create_superuser('root', password='root-pass-123')\n"
            "out = True"
        )
        yield up


@pytest.fixture(scope="module")
def no_signup(
    forges: dict[str, FakeForge], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ForgeUp]:
    env = {**forges["github"].env(), "GOCI_OAUTH_SIGNUP": "off"}
    with goci_with(tmp_path_factory.mktemp("oauth-no-signup") / "data", **env) as up:
        up.db(
            "User.objects.create_user('carol', email='carol@example.com', password='c-pass-123')\n"
            "out = True"
        )
        yield up


def test_with_sign_up_off_a_stranger_is_refused_and_a_known_user_signs_in(
    no_signup: ForgeUp, github: FakeForge
) -> None:
    """GOCI_OAUTH_SIGNUP=off: on a public forge, an account holder Goci does not know
    gets no account; a user it has signs in through a verified address."""
    github.account = Account(
        id=301,
        login="stranger",
        emails=[Email("stranger@example.com", verified=True, primary=True)],
    )
    refused = sign_in_with(no_signup, "github")
    assert refused.status_code == 403
    assert_goci_page(refused)
    assert "only the people it already knows" in refused.text
    assert signed_in_as(refused) is None
    github.account = Account(
        id=302, login="carol-gh", emails=[Email("carol@example.com", verified=True, primary=True)]
    )
    assert signed_in_as(sign_in_with(no_signup, "github")) == "carol"
    users = no_signup.db("out = sorted(User.objects.values_list('username', flat=True))")
    assert users == ["admin", "carol"]  # goci up made the admin; no stranger


def test_with_passwords_off_the_page_has_only_the_forge_buttons(no_passwords: ForgeUp) -> None:
    page = requests.get(f"{no_passwords.url}/login/", timeout=TIMEOUT)
    assert page.status_code == 200
    assert 'name="password"' not in page.text
    assert 'name="username"' not in page.text
    assert "Sign in with GitHub</button>" in page.text
    assert "Sign in with GitLab" not in page.text


def test_with_passwords_off_a_posted_password_is_refused_without_being_checked(
    no_passwords: ForgeUp,
) -> None:
    # More wrong passwords than the throttle allows: none of them is counted, since
    # none is checked, and the right one is refused the same way.
    for password in [*(f"wrong-{n}" for n in range(11)), "pat-pass-123"]:
        refused = password_sign_in(no_passwords, "pat", password)
        assert refused.status_code == 403
        assert "Password sign-in is turned off on this server" in refused.text
        assert signed_in_as(refused) is None
    state = no_passwords.db(
        "from axes.models import AccessAttempt\n"
        "out = {'attempts': AccessAttempt.objects.count(),\n"
        " 'signins': list(AuditEvent.objects.filter(action__startswith='signin')\n"
        "   .values_list('action', flat=True))}"
    )
    assert state == {"attempts": 0, "signins": []}


def test_with_passwords_off_the_admin_s_sign_in_sends_superusers_to_the_page(
    no_passwords: ForgeUp,
) -> None:
    session = requests.Session()
    admin = session.get(f"{no_passwords.url}/admin/", timeout=TIMEOUT)
    assert admin.url == f"{no_passwords.url}/login/?next=%2Fadmin%2F"
    assert 'name="password"' not in admin.text
    token = CSRF.search(admin.text)
    assert token
    refused = session.post(
        f"{no_passwords.url}/admin/login/",
        data={
            "csrfmiddlewaretoken": token.group(1),
            "username": "root",
            "password": "root-pass-123",
        },
        timeout=TIMEOUT,
    )
    assert refused.status_code == 403
    assert "Password sign-in is turned off" in refused.text
    assert session.get(f"{no_passwords.url}/admin/", timeout=TIMEOUT).url.startswith(
        f"{no_passwords.url}/login/"
    )


def test_with_passwords_off_the_api_takes_a_personal_token_but_no_password(
    no_passwords: ForgeUp,
) -> None:
    url = f"{no_passwords.url}/api/auth/token"
    refused = requests.post(
        url, json={"username": "pat", "password": "pat-pass-123"}, timeout=TIMEOUT
    )
    assert refused.status_code == 403
    assert refused.headers["Content-Type"].startswith("application/json")
    assert refused.json()["detail"].startswith("password sign-in is off on this server")
    personal = no_passwords.db(
        "from builds.services import token_create\n"
        "out = token_create(user=User.objects.get(username='pat'), name='ci',\n"
        "                   scopes=['read'])[1]"
    )
    exchanged = requests.post(url, json={"token": personal}, timeout=TIMEOUT)
    assert exchanged.status_code == 200, exchanged.text
    assert exchanged.json()["scopes"] == ["read"]


def test_with_passwords_off_a_forge_still_signs_in(
    no_passwords: ForgeUp, github: FakeForge
) -> None:
    github.account = Account(id=501, login="forge-only", emails=[Email("fo@example.com")])
    landed = sign_in_with(no_passwords, "github")
    assert landed.url == f"{no_passwords.url}/"
    assert signed_in_as(landed) == "forge-only"


def test_with_passwords_off_a_superuser_reaches_the_admin_through_their_forge(
    no_passwords: ForgeUp, github: FakeForge
) -> None:
    # As docs/deploy.md tells the operator: a superuser without a password, with the
    # address their forge has verified.
    subprocess.run(
        [
            *(sys.executable, str(REPO / "manage.py"), "createsuperuser", "--noinput"),
            *("--username", "boss", "--email", "boss@example.com"),
        ],
        env=embedded_env(no_passwords.data_dir),
        capture_output=True,
        timeout=60,
        check=True,
    )
    github.account = Account(id=502, login="the-boss", emails=[Email("boss@example.com")])
    session = requests.Session()
    admin = sign_in_with(no_passwords, "github", session, next_url="/admin/")
    assert admin.url == f"{no_passwords.url}/admin/"
    assert "Goci administration" in admin.text
    assert signed_in_as(session.get(f"{no_passwords.url}/", timeout=TIMEOUT)) == "boss"


# --- Settings: the environment, and what is refused at start-up ------------------------------


def settings_with(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    code = (
        "import json, goci.settings as s; print(json.dumps({'providers': "
        "s.SOCIALACCOUNT_PROVIDERS, 'forges': s.GOCI_OAUTH_FORGES, "
        "'password': s.GOCI_PASSWORD_SIGNIN}))"
    )
    base = {
        k: v
        for k, v in embedded_env(tmp_path / "data").items()
        if not k.startswith(("GOCI_OAUTH_", "GOCI_PASSWORD_SIGNIN"))
    }
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**base, **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_forge_is_on_when_its_client_id_and_secret_are_set(tmp_path: Path) -> None:
    secret_file = tmp_path / "gitea-secret"
    secret_file.write_text("tea-secret\n")
    done = settings_with(
        tmp_path,
        {
            "GOCI_OAUTH_GITHUB_CLIENT_ID": "gh-id",
            "GOCI_OAUTH_GITHUB_SECRET": "gh-secret",
            "GOCI_OAUTH_GITEA_CLIENT_ID": "tea-id",
            "GOCI_OAUTH_GITEA_SECRET_FILE": str(secret_file),
            "GOCI_OAUTH_GITEA_URL": "https://git.example.com/gitea/",
            "GOCI_OAUTH_GITLAB_URL": "https://gitlab.example.com",  # no id or secret: off
            "GOCI_PASSWORD_SIGNIN": "no",
        },
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "providers": {
            "github": {"APPS": [{"client_id": "gh-id", "secret": "gh-secret", "key": ""}]},
            "gitea": {
                "APPS": [{"client_id": "tea-id", "secret": "tea-secret", "key": ""}],
                "GITEA_URL": "https://git.example.com/gitea",
            },
        },
        "forges": ["github", "gitea"],
        "password": False,
    }
    assert json.loads(settings_with(tmp_path, {}).stdout) == {
        "providers": {},
        "forges": [],
        "password": True,
    }


@pytest.mark.parametrize(
    ("env", "said"),
    [
        (
            {"GOCI_OAUTH_GITHUB_CLIENT_ID": "id"},
            "GOCI_OAUTH_GITHUB_SECRET is not set: signing in with github needs both",
        ),
        (
            {"GOCI_OAUTH_GITLAB_SECRET": "secret"},
            "GOCI_OAUTH_GITLAB_CLIENT_ID is not set",
        ),
        ({"GOCI_OAUTH_GITEA_URL": "ftp://gitea.example.com"}, "GOCI_OAUTH_GITEA_URL must be"),
        ({"GOCI_OAUTH_GITLAB_URL": "gitlab.example.com"}, "GOCI_OAUTH_GITLAB_URL must be"),
        ({"GOCI_OAUTH_GITHUB_URL": "https://ghe.example.com:x"}, "GOCI_OAUTH_GITHUB_URL must"),
        ({"GOCI_PASSWORD_SIGNIN": "maybe"}, "GOCI_PASSWORD_SIGNIN must be on or off"),
        ({"GOCI_PASSWORD_SIGNIN": "off"}, "nobody could sign in"),
    ],
)
def test_a_half_configured_forge_is_a_start_up_error_naming_the_variable(
    tmp_path: Path, env: dict[str, str], said: str
) -> None:
    done = settings_with(tmp_path, env)
    assert done.returncode != 0
    assert said in done.stderr, done.stderr


def test_goci_up_refuses_to_start_with_a_forge_half_configured(tmp_path: Path) -> None:
    server = ForgeUp(tmp_path / "data", {"GOCI_OAUTH_GITHUB_CLIENT_ID": "id"})
    assert server.proc.wait(timeout=60) == 1
    assert "GOCI_OAUTH_GITHUB_SECRET is not set" in server.output()
