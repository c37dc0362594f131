"""`goci user add`, `goci user list` and `goci user delete`, as an operator types them.

Most run `goci.cli.main` in this process on the test database (what the command does is
the same; a process per call would cost a Django start-up each); one runs the real
command in a subprocess with the password on a pipe, from a fresh data directory.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from builds import services
from builds.models import Membership, Project, Role
from goci.cli import main
from tests.helpers import REPO, make_project, make_token, make_user
from tests.test_up import embedded_env

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple"  # noqa: S105  (the test users')
GENERATED = re.compile(r"^Created the user 'alice' with the password: (\S+)$", re.MULTILINE)


def goci_cli(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    *args: str,
    stdin: str | bytes = "",
) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of `goci ARGS` with `stdin` on its standard input."""
    capsys.readouterr()
    raw = stdin.encode() if isinstance(stdin, str) else stdin
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(raw)))
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def signs_in(username: str, password: str) -> bool:
    client = Client()
    client.post("/login/", {"username": username, "password": password})
    return "_auth_user_id" in client.session


def user(name: str) -> Any:
    return get_user_model().objects.get(username=name)


def test_add_prints_a_generated_password_once_and_it_signs_in(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, err = goci_cli(capsys, monkeypatch, "user", "add", "alice")
    assert code == 0, err
    match = GENERATED.search(out)
    assert match, out
    assert "It is shown only this once" in err
    assert signs_in("alice", match.group(1))
    alice = user("alice")
    assert (alice.is_superuser, alice.is_staff, alice.is_active) == (False, False, True)


def test_add_admin_with_a_password_from_stdin_makes_a_superuser_who_gets_a_token(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, err = goci_cli(
        capsys, monkeypatch, "user", "add", "root", "--admin", "--password-stdin",
        stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert (code, out) == (0, "Created the admin 'root'.\n"), err
    assert PASSWORD not in out + err
    root = user("root")
    assert (root.is_superuser, root.is_staff) == (True, True)
    assert signs_in("root", PASSWORD)  # the newline of `echo` is not part of it
    code, out, err = goci_cli(capsys, monkeypatch, "token", "create", "--user", "root")
    assert code == 0, err
    assert services.token_user(out.strip()) == root


def test_a_taken_name_is_refused(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    make_user("alice")
    code, out, err = goci_cli(capsys, monkeypatch, "user", "add", "alice")
    assert (code, out) == (2, "")
    assert "goci: the name 'alice' is taken (`goci user list` shows every user)" in err
    assert get_user_model().objects.count() == 1


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("bad name", "Enter a valid username. This value may contain only letters"),
        ("", "This field cannot be blank."),
        ("x" * 151, "Ensure this value has at most 150 characters (it has 151)."),
    ],
)
def test_an_invalid_username_is_refused_with_the_rule(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, name: str, problem: str
) -> None:
    code, out, err = goci_cli(capsys, monkeypatch, "user", "add", name)
    assert (code, out) == (2, "")
    assert f"goci: {name!r} cannot be a username: {problem}" in err
    assert not get_user_model().objects.exists()


def test_a_weak_password_from_stdin_is_refused_with_every_problem(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, err = goci_cli(
        capsys, monkeypatch, "user", "add", "alice", "--password-stdin", stdin="12345\n"
    )
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        "goci: the password is refused; choose another:",
        "  - This password is too short. It must contain at least 8 characters.",
        "  - This password is too common.",
        "  - This password is entirely numeric.",
    ]
    assert not get_user_model().objects.exists()


def test_a_password_like_the_username_is_refused(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = goci_cli(
        capsys, monkeypatch, "user", "add", "margaretha", "--password-stdin", stdin="margaretha1"
    )
    assert code == 2
    assert "  - The password is too similar to the username." in err


@pytest.mark.parametrize("stdin", ["", "\n"])
def test_an_empty_password_from_stdin_is_refused(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, stdin: str
) -> None:
    code, _, err = goci_cli(
        capsys, monkeypatch, "user", "add", "alice", "--password-stdin", stdin=stdin
    )
    assert code == 2
    assert "goci: the password on stdin is empty" in err
    assert not get_user_model().objects.exists()


def test_list_shows_admin_active_projects_and_last_login(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    users = get_user_model()
    users.objects.create_superuser("root", password=PASSWORD)
    ann = make_user("ann")
    make_project(ann, "shop")
    make_project(ann, "web")
    bob = make_user("bob")
    bob.last_login = datetime(2026, 11, 30, 9, 5, tzinfo=UTC)  # type: ignore[attr-defined]
    bob.is_active = False  # type: ignore[attr-defined]
    bob.save()  # type: ignore[attr-defined]
    code, out, err = goci_cli(capsys, monkeypatch, "user", "list")
    assert code == 0, err
    assert out.splitlines() == [
        "USERNAME  ADMIN  ACTIVE  PROJECTS  LAST LOGIN",
        "ann       no     yes     2         never",
        "bob       no     no      0         2026-11-30 09:05 UTC",
        "root      yes    yes     0         never",
    ]


def test_list_without_users_says_how_to_add_one(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, _ = goci_cli(capsys, monkeypatch, "user", "list")
    assert (code, out) == (0, "No users yet: create one with `goci user add NAME`.\n")


def test_delete_removes_the_user_their_memberships_and_tokens(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ann, bob = make_user("ann"), make_user("bob")
    shop = make_project(ann, "shop")
    services.member_add(project=shop, user=bob, role=Role.OWNER)  # type: ignore[arg-type]
    token = make_token(bob)
    code, out, err = goci_cli(capsys, monkeypatch, "user", "delete", "bob")
    assert (code, out) == (0, "Deleted the user 'bob'.\n"), err
    assert not get_user_model().objects.filter(username="bob").exists()
    assert services.token_user(token) is None
    assert list(Membership.objects.values_list("user__username", "role")) == [("ann", "owner")]


def test_delete_of_an_unknown_user_is_refused(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    make_user("ann")
    code, out, err = goci_cli(capsys, monkeypatch, "user", "delete", "nobody")
    assert (code, out) == (2, "")
    assert "goci: no user 'nobody' (`goci user list` shows every user)" in err
    assert get_user_model().objects.count() == 1


def test_delete_refuses_the_only_owner_of_a_project_unless_forced(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ann, bob = make_user("ann"), make_user("bob")
    make_project(ann, "shop")
    make_project(ann, "web")
    shared = make_project(ann, "shared")
    services.member_add(project=shared, user=bob, role=Role.OWNER)  # type: ignore[arg-type]
    code, out, err = goci_cli(capsys, monkeypatch, "user", "delete", "ann")
    assert (code, out) == (2, "")
    assert (
        "goci: ann is the only owner of shop, web: make someone else an owner first "
        "(the project's members page), or pass --force to delete these projects, with "
        "their builds, as well"
    ) in err
    assert get_user_model().objects.filter(username="ann").exists()
    assert Project.objects.count() == 3

    code, out, err = goci_cli(capsys, monkeypatch, "user", "delete", "ann", "--force")
    assert (code, out) == (0, "Deleted the user 'ann' and the projects shop, web.\n"), err
    assert list(Project.objects.values_list("slug", flat=True)) == ["shared"]
    assert not get_user_model().objects.filter(username="ann").exists()


def test_a_user_added_from_a_pipe_on_a_fresh_data_directory_gets_a_token(
    tmp_path: Path,
) -> None:
    env = embedded_env(tmp_path / "data")

    def goci(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "goci.cli", *args],
            input=stdin, env=env, cwd=REPO, capture_output=True, text=True, timeout=60,
            check=False,
        )  # fmt: skip

    done = goci("user", "add", "alice", "--password-stdin", stdin=PASSWORD)
    assert done.returncode == 2
    assert "goci: cannot use the database: no such table: auth_user" in done.stderr
    assert "the first `goci up`, or with `python manage.py migrate`" in done.stderr

    migrate = [sys.executable, str(REPO / "manage.py"), "migrate", "-v0"]
    subprocess.run(migrate, env=env, check=True, timeout=120)
    done = goci("user", "add", "alice", "--password-stdin", stdin=f"{PASSWORD}\n")
    assert (done.returncode, done.stdout) == (0, "Created the user 'alice'.\n"), done.stderr
    done = goci("token", "create", "--user", "alice")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("goci_")
    done = goci("user", "list")
    assert done.stdout.splitlines()[1].split() == ["alice", "no", "yes", "0", "never"]


def test_names_and_passwords_that_are_not_utf8_are_refused_clearly(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Bytes that are not UTF-8 reach Python's argv as lone surrogates.
    name = b"al\xffice".decode(errors="surrogateescape")
    with pytest.raises(SystemExit) as exited:
        goci_cli(capsys, monkeypatch, "user", "add", name)
    assert exited.value.code == 2
    assert "b'al\\xffice' is not UTF-8 text" in capsys.readouterr().err
    code, _, err = goci_cli(
        capsys, monkeypatch, "user", "add", "alice", "--password-stdin", stdin=b"pass\xffword 42"
    )
    assert (code, err) == (2, "goci: the password on stdin is not UTF-8 text\n")
    assert not get_user_model().objects.filter(username="alice").exists()
