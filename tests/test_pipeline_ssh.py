"""`ssh:` steps (issue #15): a script run on another machine over SSH, validated here;
every rule with its good and its bad side, each problem with its place and words."""

from __future__ import annotations

import dataclasses
import textwrap
from typing import Any

import pytest
import yaml

from builds.pipeline import (
    MAX_HOST,
    MAX_SSH_USER,
    PipelineError,
    Problem,
    SshScript,
    for_cell,
    json_schema,
    load,
    plan,
    secrets_wanted,
    with_secret_values,
)
from tests.test_pipeline_build import schema_accepts


def yml(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def problems(source: str) -> list[Problem]:
    with pytest.raises(PipelineError) as info:
        load(source, "p.yml")
    return info.value.problems


def found(source: str) -> list[tuple[int, int, str, str]]:
    return [(p.line, p.column, p.path, p.message) for p in problems(source)]


REQUIRED = {
    "host": "203.0.113.5",
    "user": "deploy",
    "key_secret": "ssh_key",
    "known_hosts_secret": "ssh_known_hosts",
    "script": "make deploy",
}


def ssh_lines(**keys: str | None) -> str:
    """The lines of an `ssh:` mapping: the required keys with `keys` over them (None
    leaves one out, a new key comes last), each key at column 7."""
    values = {**REQUIRED, **keys}
    return "".join(f"      {key}: {value}\n" for key, value in values.items() if value is not None)


def with_ssh(**keys: str | None) -> str:
    """A pipeline of one ssh step (ssh_lines), its keys from line 3."""
    return "steps:\n  - ssh:\n" + ssh_lines(**keys)


RUN_AND_SSH = "steps:\n  - run: make\n    ssh:\n" + ssh_lines()


def value_at(source: str, key: str) -> tuple[int, int]:
    """(line, column) of the value of `key` under `ssh:` in a with_ssh() source."""
    lines = source.splitlines()
    line = next(n for n, text in enumerate(lines, 1) if text.startswith(f"      {key}:"))
    return line, 7 + len(key) + 2


def ssh_of(source: str) -> SshScript:
    ssh = load(source).steps[0].ssh
    assert ssh is not None
    return ssh


def only_problem(source: str, key: str) -> str:
    """The message of the one problem of `source`, checked to be at the value of `key`."""
    ((line, column, path, message),) = found(source)
    assert (line, column, path) == (*value_at(source, key), f"steps[0].ssh.{key}")
    return message


EXAMPLE = yml("""
    steps:
      - name: deploy
        ssh:
          host: 203.0.113.5
          user: deploy
          key_secret: ssh_key
          known_hosts_secret: ssh_known_hosts
          script: |
            cd /opt/app
            docker compose pull
            docker compose up -d
""")
SCRIPT = "cd /opt/app\ndocker compose pull\ndocker compose up -d\n"


# -- the issue's example


def test_the_issue_example_validates() -> None:
    step = load(EXAMPLE).steps[0]
    assert (step.name, step.run, step.image, step.build) == ("deploy", "", None, None)
    assert step.ssh == SshScript(
        host="203.0.113.5",
        user="deploy",
        script=SCRIPT,
        key_secret="SSH_KEY",  # noqa: S106  (a secret's name, not its value)
        known_hosts_secret="SSH_KNOWN_HOSTS",  # noqa: S106  (a secret's name, not its value)
        port=22,
        connect_timeout=15,
    )


def test_port_and_connect_timeout_are_read() -> None:
    ssh = ssh_of(with_ssh(port="2222", connect_timeout="1m30s"))
    assert (ssh.port, ssh.connect_timeout) == (2222, 90)


def test_a_step_that_runs_a_script_has_no_ssh() -> None:
    assert load("steps:\n  - run: make\n").steps[0].ssh is None


# -- run, build or ssh


def test_a_step_with_run_and_ssh_is_refused() -> None:
    assert found(RUN_AND_SSH) == [
        (
            3,
            5,
            "steps[0]",
            "a step either runs a script (`run`) or runs a script on another machine "
            "(`ssh`), not both: make them two steps",
        )
    ]


def test_a_step_with_build_and_ssh_is_refused() -> None:
    source = with_ssh() + "    build: .\n"
    assert found(source) == [
        (
            2,
            5,
            "steps[0]",
            "a step either builds an image (`build`) or runs a script on another machine "
            "(`ssh`), not both: make them two steps",
        )
    ]


def test_a_step_with_run_build_and_ssh_is_refused_once() -> None:
    source = with_ssh() + "    build: .\n    run: make\n"
    assert found(source) == [
        (
            2,
            5,
            "steps[0]",
            "a step either runs a script (`run`), builds an image (`build`) or runs a script "
            "on another machine (`ssh`), not all three: make them three steps",
        )
    ]


def test_a_step_with_none_of_them_names_all_three() -> None:
    assert found("steps:\n  - name: x\n") == [
        (
            2,
            5,
            "steps[0]",
            "missing key 'run': the commands this step runs (or `build:`, an image to build, "
            "or `ssh:`, a script to run on another machine)",
        )
    ]


def test_image_shell_and_workdir_are_refused_on_an_ssh_step() -> None:
    source = with_ssh() + "    image: alpine\n    shell: bash\n    workdir: app\n"
    here = "an ssh step runs its script on the host it names, in no container or shell here"
    assert found(source) == [
        (8, 5, "steps[0].image", f"{here}: remove `image`"),
        (9, 5, "steps[0].shell", f"{here}: remove `shell`"),
        (10, 5, "steps[0].workdir", f"{here}: remove `workdir`"),
    ]


def test_the_pipeline_image_does_not_apply_to_ssh_steps() -> None:
    pipeline = load("image: golang:1.22\n" + with_ssh() + "  - run: make\n")
    assert [step.image for step in pipeline.steps] == [None, "golang:1.22"]


def test_every_other_step_key_works_on_an_ssh_step() -> None:
    pipeline = load(
        yml("""
        env: {LEVEL: info, TOKEN: {from_secret: token}}
        steps:
          - name: test
            run: make test
          - name: image
            build: .
          - name: deploy
            ssh: {host: example.com, user: deploy, key_secret: k, known_hosts_secret: h,
                  script: make}
            env: {PLAIN: "1", KEY: {from_secret: other}}
            when: {event: push, branch: main}
            needs: [test, image]
            parallel: true
            timeout: 20m
            retry: 2
            allow_failure: true
    """)
    )
    step = pipeline.steps[2]
    assert step.env == {"LEVEL": "info", "PLAIN": "1"}
    assert step.secret_env == {"TOKEN": "TOKEN", "KEY": "OTHER"}
    assert step.when is not None
    assert (step.when.event, step.when.branch) == (("push",), ("main",))
    assert (step.needs, step.parallel, step.timeout, step.retry, step.allow_failure) == (
        ("test", "image"),
        True,
        1200,
        2,
        True,
    )
    assert plan(pipeline)["deploy"] == ("test", "image")


def test_problems_of_ssh_and_of_the_step_s_other_keys_come_together() -> None:
    source = with_ssh(host="a b", port="0") + "    retry: 9\n"
    assert [(line, path) for line, _, path, _ in found(source)] == [
        (3, "steps[0].ssh.host"),
        (8, "steps[0].ssh.port"),
        (9, "steps[0].retry"),
    ]


# -- the mapping and its keys


@pytest.mark.parametrize(
    ("value", "column", "message"),
    [
        (
            "",
            9,
            "expected a mapping with `host`, `user`, `key_secret`, `known_hosts_secret` and "
            "`script`, found nothing",
        ),
        (
            "deploy@example.com",
            10,
            "expected a mapping with `host`, `user`, `key_secret`, `known_hosts_secret` and "
            "`script`, found 'deploy@example.com'",
        ),
        (
            "[a, b]",
            10,
            "expected a mapping with `host`, `user`, `key_secret`, `known_hosts_secret` and "
            "`script`, found a list",
        ),
        (
            "{}",
            10,
            "`ssh` is empty: write `host`, `user`, `key_secret`, `known_hosts_secret` and `script`",
        ),
    ],
)
def test_ssh_is_a_mapping(value: str, column: int, message: str) -> None:
    assert found(f"steps:\n  - ssh: {value}\n") == [(2, column, "steps[0].ssh", message)]


MISSING = {
    "host": "missing key 'host': the host name or IP address of the machine that runs the script",
    "user": "missing key 'user': the user to log in as on the host",
    "key_secret": "missing key 'key_secret': the secret holding the private key to log in with",
    "known_hosts_secret": "missing key 'known_hosts_secret': the secret holding the host's "
    "key, as known_hosts lines (ssh-keyscan HOST); Goci never trusts a host it does not know",
    "script": "missing key 'script': the commands to run on the host",
}


@pytest.mark.parametrize("key", list(MISSING))
def test_each_required_key_missing_is_named(key: str) -> None:
    assert found(with_ssh(**{key: None})) == [(3, 7, "steps[0].ssh", MISSING[key])]


def test_every_missing_key_is_named_at_once() -> None:
    assert found("steps:\n  - ssh: {port: 22}\n") == [
        (2, 10, "steps[0].ssh", message) for message in MISSING.values()
    ]


KEY_HINT = "put the private key in a secret and name it in `key_secret`"
KNOWN_HOSTS_HINT = "put the known_hosts lines in a secret and name it in `known_hosts_secret`"


@pytest.mark.parametrize(
    ("key", "hint"),
    [
        ("hostname", "Goci calls this 'host'"),
        ("server", "Goci calls this 'host'"),
        ("address", "Goci calls this 'host'"),
        ("username", "Goci calls this 'user'"),
        ("login", "Goci calls this 'user'"),
        ("key", KEY_HINT),
        ("private_key", KEY_HINT),
        ("password", KEY_HINT),
        ("identity_file", KEY_HINT),
        ("known_hosts", KNOWN_HOSTS_HINT),
        ("fingerprint", KNOWN_HOSTS_HINT),
        ("host_key", KNOWN_HOSTS_HINT),
        ("command", "Goci calls this 'script'"),
        ("commands", "Goci calls this 'script'"),
        ("run", "Goci calls this 'script'"),
        (
            "timeout",
            "the step's `timeout:` limits the whole step; `connect_timeout:` the connection",
        ),
        ("prot", "did you mean 'port'?"),
        ("connect-timeout", "did you mean 'connect_timeout'?"),
        (
            "zzz",
            "ssh takes only host, port, user, key_secret, known_hosts_secret, script, "
            "connect_timeout",
        ),
        # Reserved at the step's level, an unknown key here.
        (
            "services",
            "ssh takes only host, port, user, key_secret, known_hosts_secret, script, "
            "connect_timeout",
        ),
    ],
)
def test_unknown_keys_of_ssh_get_a_hint(key: str, hint: str) -> None:
    assert found(with_ssh(**{key: "x"})) == [
        (8, 7, "steps[0].ssh", f"unknown key {key!r} ({hint})")
    ]


UNDER = "a key of `ssh:`, the script a step runs on another machine: write it under `ssh:`"


@pytest.mark.parametrize(
    "key", ["host", "port", "user", "key_secret", "known_hosts_secret", "script", "connect_timeout"]
)
def test_keys_of_ssh_written_beside_it_say_to_move_them(key: str) -> None:
    assert found(with_ssh() + f"    {key}: x\n") == [
        (8, 5, "steps[0]", f"unknown key {key!r} ({UNDER})")
    ]


def test_on_a_step_that_runs_a_script_only_unambiguous_ssh_keys_say_so() -> None:
    assert found("steps:\n  - run: make\n    host: x\n    known_hosts_secret: y\n") == [
        (3, 5, "steps[0]", f"unknown key 'host' ({UNDER})"),
        (4, 5, "steps[0]", f"unknown key 'known_hosts_secret' ({UNDER})"),
    ]
    # `script` is GitLab's `run` there, and `user` a container's user elsewhere.
    assert [p.message for p in problems("steps:\n  - run: make\n    script: x\n    user: y\n")] == [
        "unknown key 'script' (Goci calls this 'run', one script with a command per line)",
        "unknown key 'user'",
    ]


# -- host


@pytest.mark.parametrize(
    "host",
    [
        "example.com",
        "deploy-1.eu.example.com",
        "localhost",
        "EXAMPLE.com",  # kept as written
        "203.0.113.5",
        "::1",
        "2001:db8::5",
        "2001:DB8:0:0:0:0:0:5",
        "::ffff:192.0.2.1",
        "4.example",
        "a" * 63 + "." + "b" * 63,
        ".".join(["a" * 63] * 4)[:MAX_HOST],
    ],
)
def test_a_host_is_a_name_or_an_address(host: str) -> None:
    assert ssh_of(with_ssh(host=f"'{host}'")).host == host


@pytest.mark.parametrize(
    ("written", "message"),
    [
        ("''", "`host` is empty: write the host name or IP address of the machine"),
        ("'  '", "`host` is empty: write the host name or IP address of the machine"),
        ("'a b'", "a host has no spaces or control characters, found 'a b'"),
        ('"a\\tb"', "a host has no spaces or control characters, found 'a\\tb'"),
        ('"a\\x7fb"', "a host has no spaces or control characters, found 'a\\x7fb'"),
        (
            "a" * (MAX_HOST + 1),
            f"a host may be at most {MAX_HOST} characters, this one has {MAX_HOST + 1}",
        ),
        (
            "deploy@203.0.113.5",
            "write the user in `user:` and the host alone: `user: deploy`, `host: 203.0.113.5`",
        ),
        (
            "example.com:2222",
            "write the port in `port:`: `host: example.com`, `port: 2222`",
        ),
        (
            "'[2001:db8::5]:2222'",
            "write the port in `port:` and the address without brackets: "
            "`host: 2001:db8::5`, `port: 2222`",
        ),
        ("'[::1]'", "write an IPv6 address without brackets: `host: ::1`"),
        (
            "'1:2:3:4:5:6:7:8:9'",
            "invalid IPv6 address '1:2:3:4:5:6:7:8:9': write one such as 2001:db8::5, "
            "without brackets",
        ),
        (
            "'fe80::1%eth0'",
            "invalid IPv6 address 'fe80::1%eth0': write one such as 2001:db8::5, without brackets",
        ),
        (
            "'gg::1'",
            "invalid IPv6 address 'gg::1': write one such as 2001:db8::5, without brackets",
        ),
        (
            "my_host",
            "invalid host 'my_host': write a host name (letters, digits, '-' and '.') "
            "or an IP address",
        ),
        (
            "'${HOST}'",  # used as written: nothing is replaced in `ssh:`
            "invalid host '${HOST}': write a host name (letters, digits, '-' and '.') "
            "or an IP address",
        ),
        (
            "é.example",
            "invalid host 'é.example': write a host name (letters, digits, '-' and '.') "
            "or an IP address",
        ),
        (
            "999.0.113.5",
            "invalid IPv4 address '999.0.113.5': write four numbers from 0 to 255, "
            "such as 203.0.113.5",
        ),
        (
            "'1.2.3'",
            "invalid IPv4 address '1.2.3': write four numbers from 0 to 255, such as 203.0.113.5",
        ),
        (
            "'010.0.0.1'",
            "invalid IPv4 address '010.0.0.1': write four numbers from 0 to 255, "
            "such as 203.0.113.5",
        ),
        ("a..example", "invalid host name 'a..example': a part between dots is empty"),
        ("example.com.", "invalid host name 'example.com.': a part between dots is empty"),
        ("'.example'", "invalid host name '.example': a part between dots is empty"),
        (
            "a" * 64 + ".example",
            f"invalid host name 'a{'a' * 63}.example': a part between dots may be at most "
            "63 characters",
        ),
        (
            "-oProxyCommand.example",
            "invalid host name '-oProxyCommand.example': a part between dots cannot start "
            "or end with '-'",
        ),
        (
            "a-.example",
            "invalid host name 'a-.example': a part between dots cannot start or end with '-'",
        ),
        ("[a, b]", "expected a host name or IP address, found a list"),
    ],
)
def test_a_host_that_is_neither_is_refused(written: str, message: str) -> None:
    assert only_problem(with_ssh(host=written), "host") == message


def test_a_long_host_is_cut_in_the_message() -> None:
    message = only_problem(with_ssh(host="a_" * 60), "host")
    assert message == (
        f"invalid host '{'a_' * 38}a...': write a host name (letters, digits, '-' "
        "and '.') or an IP address"
    )


# -- port


@pytest.mark.parametrize(("written", "port"), [("1", 1), ("22", 22), ("022", 22), ("65535", 65535)])
def test_a_port_is_from_1_to_65535(written: str, port: int) -> None:
    assert ssh_of(with_ssh(port=written)).port == port


@pytest.mark.parametrize(
    ("written", "message"),
    [
        ("0", "a port is a number from 1 to 65535, found '0'"),
        ("65536", "a port is a number from 1 to 65535, found '65536'"),
        (
            "99999999999999999999",
            "a port is a number from 1 to 65535, found '99999999999999999999'",
        ),
        ("-1", "expected a port number from 1 to 65535, found '-1'"),
        ("22.0", "expected a port number from 1 to 65535, found '22.0'"),
        ("true", "expected a port number from 1 to 65535, found 'true'"),
        ("ssh", "expected a port number from 1 to 65535, found 'ssh'"),
        ("''", "expected a port number from 1 to 65535, found ''"),
        ("[22]", "expected a port number from 1 to 65535, found a list"),
    ],
)
def test_any_other_port_is_refused(written: str, message: str) -> None:
    assert only_problem(with_ssh(port=written), "port") == message


# -- user


@pytest.mark.parametrize("user", ["deploy", "root", "1000", "d.e_p-l$oy", "u" * MAX_SSH_USER])
def test_a_user_is_one_word(user: str) -> None:
    assert ssh_of(with_ssh(user=f"'{user}'")).user == user


@pytest.mark.parametrize(
    ("written", "message"),
    [
        ("''", "`user` is empty: write the user to log in as on the host"),
        ("' '", "`user` is empty: write the user to log in as on the host"),
        ("'de ploy'", "a user has no spaces or control characters, found 'de ploy'"),
        ('"de\\nploy"', "a user has no spaces or control characters, found 'de\\nploy'"),
        (
            "u" * (MAX_SSH_USER + 1),
            f"a user may be at most {MAX_SSH_USER} characters, this one has {MAX_SSH_USER + 1}",
        ),
        ("-oProxyCommand=x", "a user cannot start with '-', found '-oProxyCommand=x'"),
        ("{name: deploy}", "expected a user name, found a mapping"),
    ],
)
def test_any_other_user_is_refused(written: str, message: str) -> None:
    assert only_problem(with_ssh(user=written), "user") == message


# -- key_secret and known_hosts_secret


def test_secret_names_are_upper_cased_as_everywhere() -> None:
    ssh = ssh_of(with_ssh(key_secret="Deploy_Key", known_hosts_secret="PROD_HOSTS"))  # noqa: S106  (secrets' names, not values)
    assert (ssh.key_secret, ssh.known_hosts_secret) == ("DEPLOY_KEY", "PROD_HOSTS")


@pytest.mark.parametrize("key", ["key_secret", "known_hosts_secret"])
@pytest.mark.parametrize(
    ("written", "message"),
    [
        (
            "my-key",
            "invalid secret name 'my-key': use letters, digits and _, not starting with a digit",
        ),
        (
            "1KEY",
            "invalid secret name '1KEY': use letters, digits and _, not starting with a digit",
        ),
        ("''", "invalid secret name '': use letters, digits and _, not starting with a digit"),
        ("{from_secret: k}", "expected a secret's name, found a mapping"),
    ],
)
def test_a_secret_name_is_a_secret_name(key: str, written: str, message: str) -> None:
    assert only_problem(with_ssh(**{key: written}), key) == message


def test_the_key_and_the_host_s_key_are_two_secrets() -> None:
    source = with_ssh(key_secret="deploy", known_hosts_secret="DEPLOY")  # noqa: S106  (secrets' names, not values)
    assert only_problem(source, "known_hosts_secret") == (
        "`known_hosts_secret` names DEPLOY, the secret of `key_secret`: the host's key and "
        "the private key to log in with are two secrets"
    )


# -- script


@pytest.mark.parametrize(
    ("written", "script"),
    [
        ("make deploy", "make deploy"),
        ("|\n        set -x\n        ./deploy.sh $ENV\n", "set -x\n./deploy.sh $ENV\n"),
        ("'echo ${OS}'", "echo ${OS}"),  # as written: the host's shell expands it
        ("42", "42"),  # the text as written, as `run`
    ],
)
def test_a_script_is_one_string_kept_as_written(written: str, script: str) -> None:
    assert ssh_of(with_ssh(script=written)).script == script


@pytest.mark.parametrize(
    ("written", "message"),
    [
        ("''", "`script` is empty: write the commands to run on the host"),
        ("'  '", "`script` is empty: write the commands to run on the host"),
        ('"cd /\\0rm x"', "`script` has a NUL character (\\0): remove it"),
        (
            "[cd /opt/app, make]",
            "expected the script, one string (write `script: |` and a command per line), "
            "found a list",
        ),
    ],
)
def test_a_script_that_is_not_one_is_refused(written: str, message: str) -> None:
    assert only_problem(with_ssh(script=written), "script") == message


def test_an_empty_block_script_is_refused_where_it_starts() -> None:
    ((line, column, path, message),) = found(with_ssh(script="|"))
    assert (line, path, message) == (
        7,
        "steps[0].ssh.script",
        "`script` is empty: write the commands to run on the host",
    )
    assert column == 15


# -- connect_timeout


@pytest.mark.parametrize(
    ("written", "seconds"), [("1s", 1), ("10s", 10), ("2m", 120), ("9m60s", 600), ("10m", 600)]
)
def test_connect_timeout_is_a_duration_of_1s_to_10m(written: str, seconds: int) -> None:
    assert ssh_of(with_ssh(connect_timeout=written)).connect_timeout == seconds


@pytest.mark.parametrize(
    ("written", "message"),
    [
        ("10m1s", "connect_timeout may be at most 10m, found '10m1s'"),
        ("1h", "connect_timeout may be at most 10m, found '1h'"),
        ("10", "the duration '10' has no unit; write 10s, 10m or 10h"),
        ("0s", "the duration '0s' is zero; write e.g. 90s, 10m, 1h or 1h30m"),
        ("soon", "invalid duration 'soon'; write e.g. 90s, 10m, 1h or 1h30m"),
        ("[10s]", "expected a duration, found a list"),
    ],
)
def test_any_other_connect_timeout_is_refused(written: str, message: str) -> None:
    assert only_problem(with_ssh(connect_timeout=written), "connect_timeout") == message


# -- the matrix: nothing is replaced in `ssh:`


def test_a_matrix_cell_keeps_ssh_as_written_and_substitutes_the_rest() -> None:
    source = yml("""
        matrix:
          SITE: [eu, us]
        steps:
          - name: deploy
            ssh:
              host: example.com
              user: deploy
              key_secret: key
              known_hosts_secret: hosts
              script: echo ${SITE} $${SITE}
            env: {WHERE: "${SITE}"}
    """)
    pipeline = load(source)
    written = pipeline.steps[0].ssh
    assert written is not None
    assert written.script == "echo ${SITE} $${SITE}"
    step = for_cell(pipeline, {"SITE": "eu"}).steps[0]
    assert step.ssh == written
    assert (step.env, step.image, step.run) == ({"SITE": "eu", "WHERE": "eu"}, None, "")


# -- secrets


def test_secrets_wanted_includes_both_secrets_when_the_step_may_run() -> None:
    pipeline = load(
        yml("""
        steps:
          - run: make
            env: {A: {from_secret: a}}
          - name: deploy
            ssh: {host: example.com, user: deploy, key_secret: key, known_hosts_secret: hosts,
                  script: make}
            env: {B: {from_secret: b}}
            when: {event: push}
    """)
    )
    both = [("step 1", "A"), ("deploy", "B"), ("deploy", "KEY"), ("deploy", "HOSTS")]
    assert secrets_wanted(pipeline) == both
    assert secrets_wanted(pipeline, event="push", judge=True) == both
    assert secrets_wanted(pipeline, event="pull_request", judge=True) == [("step 1", "A")]


def test_with_secret_values_gives_an_ssh_step_its_key_and_known_hosts() -> None:
    pipeline = load(with_ssh() + "    env: {K: {from_secret: k}}\n  - run: make\n")
    private_key = "-----BEGIN OPENSSH PRIVATE KEY-----\nhunter2\n-----END OPENSSH PRIVATE KEY-----"
    known_hosts = "203.0.113.5 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHunter"
    values = {"SSH_KEY": private_key, "SSH_KNOWN_HOSTS": known_hosts, "K": "v", "OTHER": "x"}
    deploy, other = with_secret_values(pipeline, values).steps
    assert deploy.ssh is not None
    assert (deploy.ssh.key, deploy.ssh.known_hosts) == (private_key, known_hosts)
    assert deploy.env == {"K": "v"}  # the step's env; the host never gets it
    assert (other.ssh, other.env) == (None, {})
    # Never shown, and not part of what the step is.
    assert "hunter2" not in repr(deploy)
    assert "Hunter" not in repr(deploy)
    assert deploy.ssh == pipeline.steps[0].ssh


def test_with_secret_values_leaves_what_has_no_value_none() -> None:
    pipeline = load(with_ssh())
    ssh = with_secret_values(pipeline, {"SSH_KEY": "key"}).steps[0].ssh
    assert ssh is not None
    assert (ssh.key, ssh.known_hosts) == ("key", None)
    ssh = with_secret_values(pipeline, {}).steps[0].ssh  # a fork's build
    assert ssh is not None
    assert (ssh.key, ssh.known_hosts) == (None, None)


# -- the JSON schema


def test_the_schema_describes_ssh_from_the_same_table() -> None:
    schema: Any = json_schema()  # JSON: nested dicts of any shape
    step = schema["definitions"]["step"]
    ssh = schema["definitions"]["ssh"]
    assert step["properties"]["ssh"] == {
        "description": step["properties"]["ssh"]["description"],
        "$ref": "#/definitions/ssh",
    }
    assert step["oneOf"] == [
        {"required": ["run"]},
        {"required": ["build"]},
        {"required": ["ssh"]},
    ]
    fields = {f.name for f in dataclasses.fields(SshScript)} - {"key", "known_hosts"}
    assert set(ssh["properties"]) == fields
    assert ssh["required"] == ["host", "user", "key_secret", "known_hosts_secret", "script"]
    assert ssh["additionalProperties"] is False
    for key, value in ssh["properties"].items():
        assert value["description"], key
    assert ssh["properties"]["port"] | {"description": ""} == {
        "description": "",
        "type": "integer",
        "minimum": 1,
        "maximum": 65535,
    }
    assert ssh["properties"]["host"]["maxLength"] == MAX_HOST
    assert ssh["properties"]["user"]["maxLength"] == MAX_SSH_USER
    assert ssh["properties"]["key_secret"]["type"] == "string"


def test_the_schema_accepts_the_issue_example_and_what_the_validator_accepts() -> None:
    schema: Any = json_schema()
    for source in (
        EXAMPLE,
        with_ssh(port="2222", connect_timeout="30s"),
        with_ssh(host="'::1'", user="'1000'"),
        with_ssh() + "    env: {A: b}\n    when: {event: push}\n    timeout: 5m\n",
    ):
        load(source)
        assert schema_accepts(schema, yaml.safe_load(source)), source


@pytest.mark.parametrize(
    "source",
    [
        RUN_AND_SSH,
        with_ssh() + "    build: .\n",
        with_ssh(known_hosts_secret=None),
        with_ssh(hostname="x"),
        with_ssh(host="-oProxyCommand=x"),
        with_ssh(host="deploy@example.com"),
        with_ssh(port="ssh"),  # schema_accepts checks no minimum; the limits are asserted above
        with_ssh(port="true"),
        with_ssh(user="''"),
        with_ssh(key_secret="my-key"),  # noqa: S106  (a secret's name, not its value)
        with_ssh(script="''"),
        with_ssh(connect_timeout="10"),
        "steps:\n  - ssh: {}\n",
        "steps:\n  - ssh: example.com\n",
    ],
)
def test_the_schema_refuses_what_the_validator_refuses(source: str) -> None:
    with pytest.raises(PipelineError):
        load(source)
    assert not schema_accepts(json_schema(), yaml.safe_load(source))
