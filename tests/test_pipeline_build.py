"""`build:` steps (issue #14): an image built from the workspace, validated here; every
rule with its good and its bad side, each problem with its place and words."""

from __future__ import annotations

import dataclasses
import re
import textwrap
from typing import Any

import pytest
import yaml

from builds.pipeline import (
    MAX_BUILD_ARGS,
    MAX_CACHE_FROM,
    MAX_TAGS,
    ImageBuild,
    Pipeline,
    PipelineError,
    Problem,
    check_build_path,
    check_image_reference,
    for_cell,
    json_schema,
    load,
    plan,
    secrets_wanted,
    with_secret_values,
)


def yml(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def problems(source: str) -> list[Problem]:
    with pytest.raises(PipelineError) as info:
        load(source, "p.yml")
    return info.value.problems


def found(source: str) -> list[tuple[int, int, str, str]]:
    return [(p.line, p.column, p.path, p.message) for p in problems(source)]


def with_build(lines: str, top: str = "") -> str:
    """A pipeline of one build step whose `build:` mapping is `lines`: its first key is
    on line 3 (after `top`'s lines), at column 7."""
    body = textwrap.indent(textwrap.dedent(lines), "      ")
    return top + "steps:\n  - build:\n" + body


def image_build(lines: str, top: str = "") -> ImageBuild:
    build = load(with_build(lines, top)).steps[0].build
    assert build is not None
    return build


EXAMPLE = yml("""
    matrix:
      SERVICE: [bot, api, frontend]
    steps:
      - name: image
        build:
          context: ${SERVICE}
          dockerfile: ${SERVICE}/Dockerfile
          tags:
            - registry.example.com/acme/${SERVICE}:latest
            - registry.example.com/acme/${SERVICE}:${GOCI_COMMIT_SHA}
          build_args: {VERSION: "${GOCI_COMMIT_SHA}"}
          push: true
          registry_secret: registry
          cache_from: registry.example.com/acme/${SERVICE}:latest
""")
WITHOUT_MATRIX = EXAMPLE.split("\n", 2)[2]

SHA = "${GOCI_COMMIT_SHA}"
REGISTRY = "REGISTRY"  # the name of a secret, as `registry_secret: registry` gives it


# -- the issue's example


def test_the_issue_example_validates_without_the_matrix() -> None:
    step = load(WITHOUT_MATRIX).steps[0]
    assert (step.name, step.run, step.image, step.shell) == ("image", "", None, "sh")
    assert step.build == ImageBuild(
        context="${SERVICE}",
        dockerfile="${SERVICE}/Dockerfile",
        tags=(
            "registry.example.com/acme/${SERVICE}:latest",
            f"registry.example.com/acme/${{SERVICE}}:{SHA}",
        ),
        build_args={"VERSION": SHA},
        push=True,
        registry_secret=REGISTRY,
        cache_from=("registry.example.com/acme/${SERVICE}:latest",),
    )


def test_the_issue_example_validates_with_the_matrix_and_each_cell_gets_its_values() -> None:
    pipeline = load(EXAMPLE)
    assert [cell["SERVICE"] for cell in pipeline.matrix] == ["bot", "api", "frontend"]
    for service in ("bot", "api", "frontend"):
        step = for_cell(pipeline, {"SERVICE": service}).steps[0]
        assert (step.run, step.image, step.env) == ("", None, {"SERVICE": service})
        assert step.build == ImageBuild(
            context=service,
            dockerfile=f"{service}/Dockerfile",
            tags=(
                f"registry.example.com/acme/{service}:latest",
                f"registry.example.com/acme/{service}:{SHA}",
            ),
            build_args={"VERSION": SHA},  # not a matrix variable: expanded at run time
            push=True,
            registry_secret=REGISTRY,
            cache_from=(f"registry.example.com/acme/{service}:latest",),
        )


# -- run or build


def test_build_as_a_string_is_the_context_as_in_compose() -> None:
    step = load("steps:\n  - build: some/dir\n").steps[0]
    assert step.build == ImageBuild(context="some/dir", dockerfile="some/dir/Dockerfile")


def test_a_build_has_defaults_for_every_key_but_one() -> None:
    assert load("steps:\n  - build: .\n").steps[0].build == ImageBuild(
        context=".",
        dockerfile="Dockerfile",
        tags=(),
        build_args={},
        push=False,
        registry_secret=None,
        cache_from=(),
    )
    assert image_build("tags: app\n") == ImageBuild(dockerfile="Dockerfile", tags=("app",))


def test_a_step_with_both_run_and_build_is_refused() -> None:
    assert found("steps:\n  - run: make\n    build: .\n") == [
        (
            3,
            5,
            "steps[0]",
            "a step either runs a script (`run`) or builds an image (`build`), not both: "
            "make them two steps",
        )
    ]


def test_a_step_with_neither_run_nor_build_says_both() -> None:
    (problem,) = problems("steps:\n  - name: x\n")
    assert (problem.line, problem.column, problem.path) == (2, 5, "steps[0]")
    assert problem.message.startswith("missing key 'run': the commands this step runs")
    assert problem.message == (
        "missing key 'run': the commands this step runs (or `build:`, an image to build, "
        "or `ssh:`, a script to run on another machine)"
    )


def test_image_shell_and_workdir_are_refused_on_a_build_step() -> None:
    source = "steps:\n  - build: .\n    image: docker:27\n    shell: bash\n    workdir: app\n"
    assert found(source) == [
        (3, 5, "steps[0].image", "a build step runs no container of its own: remove `image`"),
        (4, 5, "steps[0].shell", "a build step runs no container of its own: remove `shell`"),
        (5, 5, "steps[0].workdir", "a build step runs no container of its own: remove `workdir`"),
    ]


def test_the_pipeline_image_does_not_apply_to_build_steps() -> None:
    pipeline = load("image: golang:1.22\nsteps:\n  - build: .\n  - run: make\n")
    assert [step.image for step in pipeline.steps] == [None, "golang:1.22"]
    assert pipeline.steps[1].build is None


def test_every_other_step_key_works_on_a_build_step() -> None:
    pipeline = load(
        yml("""
        env: {LEVEL: info, TOKEN: {from_secret: token}}
        steps:
          - name: test
            run: make test
          - name: lint
            run: make lint
          - name: image
            build: .
            env: {PLAIN: "1", KEY: {from_secret: signing_key}}
            when: {event: push, branch: main}
            needs: [test, lint]
            parallel: true
            timeout: 20m
            retry: 2
            allow_failure: true
    """)
    )
    step = pipeline.steps[2]
    assert step.env == {"LEVEL": "info", "PLAIN": "1"}
    assert step.secret_env == {"TOKEN": "TOKEN", "KEY": "SIGNING_KEY"}
    assert step.when is not None
    assert (step.when.event, step.when.branch) == (("push",), ("main",))
    assert (step.needs, step.parallel, step.timeout, step.retry, step.allow_failure) == (
        ("test", "lint"),
        True,
        1200,
        2,
        True,
    )
    assert plan(pipeline)["image"] == ("test", "lint")


def test_problems_of_a_build_step_and_of_its_other_keys_come_together() -> None:
    source = with_build("context: ../x\ntags: App\n") + "    retry: 9\n"
    assert [(line, path) for line, _, path, _ in found(source)] == [
        (3, "steps[0].build.context"),
        (4, "steps[0].build.tags"),
        (5, "steps[0].retry"),
    ]


# -- the keys of build


@pytest.mark.parametrize(
    ("key", "hint"),
    [
        ("file", "Goci calls this 'dockerfile'"),
        ("Dockerfile", "Goci calls this 'dockerfile'"),
        ("args", "Goci calls this 'build_args'"),
        ("build-args", "Goci calls this 'build_args'"),
        ("build_arg", "Goci calls this 'build_args'"),
        ("cache-from", "Goci calls this 'cache_from'"),
        ("username", "put the credentials in a secret and name it in `registry_secret`"),
        ("password", "put the credentials in a secret and name it in `registry_secret`"),
        ("registry", "put the credentials in a secret and name it in `registry_secret`"),
        ("credentials", "put the credentials in a secret and name it in `registry_secret`"),
        (
            "platform",
            "not supported: the image is built for the platform of the runner that takes "
            "the job; choose it with `runs_on`",
        ),
        (
            "platforms",
            "not supported: the image is built for the platform of the runner that takes "
            "the job; choose it with `runs_on`",
        ),
        ("tag", "did you mean 'tags'?"),
        (
            "zzz",
            "build takes only context, dockerfile, tags, build_args, push, registry_secret, "
            "cache_from",
        ),
    ],
)
def test_unknown_keys_of_build_get_a_hint(key: str, hint: str) -> None:
    assert found(with_build(f"tags: app\n{key}: x\n")) == [
        (4, 7, "steps[0].build", f"unknown key {key!r} ({hint})")
    ]


def test_keys_of_build_written_on_the_step_say_to_move_them() -> None:
    under = "a key of `build:`, the image a step builds: write it under `build:`"
    assert found("steps:\n  - run: make\n    dockerfile: x\n") == [
        (3, 5, "steps[0]", f"unknown key 'dockerfile' ({under})")
    ]
    assert found("steps:\n  - build: .\n    push: true\n    tags: app\n") == [
        (3, 5, "steps[0]", f"unknown key 'push' ({under})"),
        (
            4,
            5,
            "steps[0]",
            "unknown key 'tags' (the names of the image this step builds: "
            "write `tags` under `build:`)",
        ),
    ]
    # On a step that runs a script, `tags` are still GitLab's runner tags.
    (problem,) = problems("steps:\n  - run: make\n    tags: [docker]\n")
    assert problem.message == (
        "unknown key 'tags' (labels apply to the whole pipeline: write `runs_on:` at its top)"
    )


@pytest.mark.parametrize(
    ("value", "column", "message"),
    [
        (
            "",
            11,
            "expected a directory (the build context) or a mapping with `context`, `tags`..., "
            "found nothing",
        ),
        (
            "[a, b]",
            12,
            "expected a directory (the build context) or a mapping with `context`, `tags`..., "
            "found a list",
        ),
        ("{}", 12, "`build` is empty: write `build: .` to build the workspace's Dockerfile"),
    ],
)
def test_build_is_a_directory_or_a_mapping(value: str, column: int, message: str) -> None:
    assert found(f"steps:\n  - build: {value}\n") == [(2, column, "steps[0].build", message)]


# -- context and dockerfile


@pytest.mark.parametrize(
    ("written", "context", "dockerfile"),
    [
        ("context: app", "app", "app/Dockerfile"),
        ("context: ./app/", "app", "app/Dockerfile"),
        ("context: a//b/./c", "a/b/c", "a/b/c/Dockerfile"),
        ("context: ./", ".", "Dockerfile"),
        ("context: a/..b", "a/..b", "a/..b/Dockerfile"),  # a name, not `..`
        ("dockerfile: ./docker/App.Dockerfile", ".", "docker/App.Dockerfile"),
        # The Dockerfile is relative to the workspace, not to the context.
        ("context: app\ndockerfile: docker/app.Dockerfile", "app", "docker/app.Dockerfile"),
    ],
)
def test_paths_are_relative_to_the_workspace_and_normalised(
    written: str, context: str, dockerfile: str
) -> None:
    build = image_build(written + "\n")
    assert (build.context, build.dockerfile) == (context, dockerfile)


LEAVES = "must stay inside the workspace: write a path relative to it, without '..', found"


@pytest.mark.parametrize("key", ["context", "dockerfile"])
@pytest.mark.parametrize("value", ["../..", "..", "a/../b", "app/..", "/src", "/", "C:/src"])
def test_paths_that_could_leave_the_workspace_are_refused(key: str, value: str) -> None:
    assert found(with_build(f"{key}: {value}\n")) == [
        (3, 9 + len(key), f"steps[0].build.{key}", f"`{key}` {LEAVES} {value!r}")
    ]


def test_the_string_form_is_checked_as_the_context() -> None:
    assert found("steps:\n  - build: ../..\n") == [
        (2, 12, "steps[0].build", f"`context` {LEAVES} '../..'")
    ]


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            "context",
            "'a\\b'",
            "a backslash is not allowed in `context`: separate directories with '/'",
        ),
        (
            "dockerfile",
            "'\\\\server\\x'",
            "a backslash is not allowed in `dockerfile`: separate directories with '/'",
        ),
        ("context", '"a\\0b"', "`context` has a control character: remove it"),
        ("dockerfile", '"a\\nb"', "`dockerfile` has a control character: remove it"),
        (
            "context",
            "''",
            "`context` is empty: write a directory of the workspace such as . or app",
        ),
        (
            "dockerfile",
            "' '",
            "`dockerfile` is empty: write a file of the workspace such as app/Dockerfile, "
            "or remove it",
        ),
        ("context", "[a]", "expected a path, found a list"),
    ],
)
def test_paths_must_be_plain_relative_paths(key: str, value: str, message: str) -> None:
    assert found(with_build(f"{key}: {value}\n")) == [
        (3, 9 + len(key), f"steps[0].build.{key}", message)
    ]


def test_check_build_path_is_there_for_the_text_expanded_at_run_time() -> None:
    assert check_build_path("./services/${X}/") == "services/${X}"
    assert check_build_path("docker/Dockerfile", "dockerfile") == "docker/Dockerfile"
    with pytest.raises(ValueError, match=re.escape(f"`context` {LEAVES} '../etc'")):
        check_build_path("../etc")


# -- tags


@pytest.mark.parametrize(
    "tag",
    [
        "app",
        "app:1.0",
        "acme/app:latest",
        "registry.example.com/acme/app:1.0",
        "registry.example.com:5000/a/b/c:v1.2-rc_3",
        "localhost/app",
        "localhost:5000/app:x",
        "127.0.0.1:5000/app",
        "a__b/c-d.e/f---g:T_9.x-y",
        "app:" + "t" * 128,
        "a/" + "b" * 253,  # 255 characters
        # `${NAME}` is expanded from the step's environment at run time.
        f"app:{SHA}",
        "${REGISTRY}/acme/app:v${VERSION}-${GOCI_COMMIT_SHA}",
    ],
)
def test_valid_tags(tag: str) -> None:
    assert image_build(f"tags: '{tag}'\n").tags == (tag,)


@pytest.mark.parametrize(
    ("tag", "message"),
    [
        (
            "app@sha256:" + "a" * 64,
            f"'app@sha256:{'a' * 64}' has a digest: a tag names the image this build "
            "makes, so write it as name:tag, without '@...'",
        ),
        ("Acme/App:V1", "image names are lower case: write 'acme/app:V1'"),
        (
            "registry.example.com/Acme/${SERVICE}",
            "image names are lower case: write 'registry.example.com/acme/${SERVICE}'",
        ),
        (
            "app:.hidden",
            "invalid tag '.hidden' in 'app:.hidden': use letters, digits, '_', '.' and '-', "
            "not starting with '.' or '-', at most 128 characters",
        ),
        (
            "app:" + "t" * 129,
            f"invalid tag {'t' * 129!r} in the name of 133 characters: use letters, digits, "
            "'_', '.' and '-', not starting with '.' or '-', at most 128 characters",
        ),
        ("acme//app", "'acme//app' has an empty name part: remove the extra '/'"),
        ("acme/app/", "'acme/app/' has an empty name part: remove the extra '/'"),
        (
            "-bad.example.com/app",
            "invalid registry '-bad.example.com' in '-bad.example.com/app': write a host name "
            "such as registry.example.com, with an optional :port",
        ),
        (
            "registry.example.com:port/app",
            "invalid registry 'registry.example.com:port' in 'registry.example.com:port/app': "
            "write a host name such as registry.example.com, with an optional :port",
        ),
        (
            "acme/app!:1",
            "invalid name part 'app!' in 'acme/app!:1': use lower-case letters and digits, "
            "separated by '.', '_', '__' or '-'",
        ),
        (
            "acme/-app",
            "invalid name part '-app' in 'acme/-app': use lower-case letters and digits, "
            "separated by '.', '_', '__' or '-'",
        ),
        ("a/" + "b" * 254, "an image name may be at most 255 characters, this one has 256"),
        (" ", "the image name is empty: write one such as registry.example.com/app:1.0"),
        (
            "app:$${X}",
            "invalid tag '$${X}' in 'app:$${X}': use letters, digits, '_', '.' and '-', "
            "not starting with '.' or '-', at most 128 characters",
        ),
    ],
)
def test_invalid_tags_say_what_to_write(tag: str, message: str) -> None:
    assert found(with_build(f"tags: ['{tag}']\n")) == [(3, 14, "steps[0].build.tags[0]", message)]


def test_tags_are_a_name_or_a_list_of_names() -> None:
    assert image_build("tags: app:1\n").tags == ("app:1",)
    assert image_build("tags: [app:1, app:latest]\n").tags == ("app:1", "app:latest")
    assert found(with_build("tags: {app: 1}\n")) == [
        (3, 13, "steps[0].build.tags", "expected a name or a list of names, found a mapping")
    ]
    assert found(with_build("tags: [[app]]\n")) == [
        (3, 14, "steps[0].build.tags[0]", "expected a name, found a list")
    ]
    assert found(with_build("tags: []\n")) == [
        (3, 13, "steps[0].build.tags", "the list is empty: name at least one tag, or remove `tags`")
    ]


def test_a_tag_may_be_given_once() -> None:
    assert found(with_build("tags:\n  - app:1\n  - app:2\n  - app:1\n")) == [
        (6, 11, "steps[0].build.tags[2]", "duplicate tag 'app:1' (first on line 4)")
    ]


def test_at_most_20_tags() -> None:
    names = [f"app:{number}" for number in range(MAX_TAGS + 1)]
    assert len(image_build(f"tags: [{', '.join(names[:MAX_TAGS])}]\n").tags) == MAX_TAGS
    assert found(with_build(f"tags: [{', '.join(names)}]\n")) == [
        (3, 13, "steps[0].build.tags", "too many tags (21); `tags` may have at most 20")
    ]


# -- push and the registry's secret


def test_push_pushes_tags_so_it_needs_some() -> None:
    assert image_build("tags: app\npush: true\n").push is True
    assert image_build("tags: app\npush: FALSE\n").push is False
    assert found(with_build("push: true\n")) == [
        (
            3,
            13,
            "steps[0].build.push",
            "`push: true` needs `tags`: name the image to push, e.g. registry.example.com/app:1.0",
        )
    ]
    assert found(with_build("tags: app\npush: yes\n")) == [
        (4, 13, "steps[0].build.push", "expected true or false, found 'yes'")
    ]


def test_registry_secret_names_a_secret_as_from_secret_does() -> None:
    assert image_build("registry_secret: registry\n").registry_secret == REGISTRY
    ghcr = image_build("registry_secret: GHCR_TOKEN\n").registry_secret
    assert ghcr == "GHCR_TOKEN"
    assert found(with_build("registry_secret: my-registry\n")) == [
        (
            3,
            24,
            "steps[0].build.registry_secret",
            "invalid secret name 'my-registry': use letters, digits and _, "
            "not starting with a digit",
        )
    ]
    assert found(with_build("registry_secret: {from_secret: registry}\n")) == [
        (3, 24, "steps[0].build.registry_secret", "expected a secret's name, found a mapping")
    ]


# -- cache_from


def test_cache_from_is_an_image_or_a_list_and_may_pin_a_digest() -> None:
    digest = "sha256:" + "0" * 64
    assert image_build("cache_from: acme/app:latest\n").cache_from == ("acme/app:latest",)
    assert image_build(f"cache_from: [acme/app:latest, 'acme/app@{digest}']\n").cache_from == (
        "acme/app:latest",
        f"acme/app@{digest}",
    )
    assert found(with_build("cache_from: ['acme/app@sha256:abc']\n")) == [
        (
            3,
            20,
            "steps[0].build.cache_from[0]",
            "invalid digest 'sha256:abc': write @sha256: and 64 hexadecimal digits",
        )
    ]
    assert found(with_build("cache_from: Acme/App\n")) == [
        (3, 19, "steps[0].build.cache_from", "image names are lower case: write 'acme/app'")
    ]


def test_at_most_20_images_in_cache_from() -> None:
    names = [f"app:{number}" for number in range(MAX_CACHE_FROM + 1)]
    assert len(image_build(f"cache_from: [{', '.join(names[:MAX_CACHE_FROM])}]\n").cache_from) == 20
    assert found(with_build(f"cache_from: [{', '.join(names)}]\n")) == [
        (
            3,
            19,
            "steps[0].build.cache_from",
            "too many images (21); `cache_from` may have at most 20",
        )
    ]
    assert found(with_build("cache_from: []\n")) == [
        (
            3,
            19,
            "steps[0].build.cache_from",
            "the list is empty: name at least one image, or remove `cache_from`",
        )
    ]


# -- build_args


def test_build_args_are_kept_as_written() -> None:
    lines = "build_args:\n  A: 010\n  B: yes\n  C: 1.10\n  D: ''\n  E:\n  CI: 'true'\n"
    args = image_build(lines).build_args
    assert args == {"A": "010", "B": "yes", "C": "1.10", "D": "", "E": "", "CI": "true"}


def test_build_args_problems() -> None:
    assert found(with_build("build_args: [A=1]\n")) == [
        (3, 19, "steps[0].build.build_args", "expected a mapping of NAME: value, found a list")
    ]
    assert found(with_build("build_args: {1A: x, B: [x]}\n")) == [
        (
            3,
            20,
            "steps[0].build.build_args.1A",
            "invalid build arg name '1A': use letters, digits and _, not starting with a digit",
        ),
        (
            3,
            30,
            "steps[0].build.build_args.B",
            "expected a value (a string, number or boolean), found a list",
        ),
    ]


def test_a_build_arg_cannot_come_from_a_secret() -> None:
    assert found(with_build("build_args: {TOKEN: {from_secret: token}}\n")) == [
        (
            3,
            27,
            "steps[0].build.build_args.TOKEN",
            "a build arg cannot come from a secret: build args stay in the image's history, "
            "where anyone who pulls the image reads them; remove it",
        )
    ]


def test_at_most_100_build_args() -> None:
    args = [f"A{number}: x" for number in range(MAX_BUILD_ARGS + 1)]
    assert len(image_build(f"build_args: {{{', '.join(args[:100])}}}\n").build_args) == 100
    assert found(with_build(f"build_args: {{{', '.join(args)}}}\n")) == [
        (
            3,
            19,
            "steps[0].build.build_args",
            "too many build args (101); a build may have at most 100",
        )
    ]


# -- ${NAME}: the matrix's now, the rest at run time

MATRIX = "matrix:\n  SERVICE: [bot, api]\n"


def test_a_name_that_is_not_the_matrix_s_is_left_for_run_time() -> None:
    # Unlike `image:`, where it is an error.
    build = image_build("context: ${DIR}\ntags: app:${TAG}\nbuild_args: {V: '${V}'}\n", MATRIX)
    assert (build.context, build.tags, build.build_args) == (
        "${DIR}",
        ("app:${TAG}",),
        {"V": "${V}"},
    )
    pipeline = load(with_build("context: ${DIR}\n", MATRIX))
    assert for_cell(pipeline, {"SERVICE": "bot"}).steps[0].build == ImageBuild(
        context="${DIR}", dockerfile="${DIR}/Dockerfile"
    )


def test_each_cell_is_checked_with_its_values() -> None:
    top = "matrix:\n  SERVICE: [bot, '..', Api]\n"
    assert found(with_build("context: ${SERVICE}\ntags: acme/${SERVICE}\n", top)) == [
        (5, 16, "steps[0].build.context", f"in matrix cell SERVICE=..: `context` {LEAVES} '..'"),
        (
            6,
            13,
            "steps[0].build.tags",
            "in matrix cell SERVICE=..: invalid name part '..' in 'acme/..': "
            "use lower-case letters and digits, separated by '.', '_', '__' or '-'",
        ),
        (
            6,
            13,
            "steps[0].build.tags",
            "in matrix cell SERVICE=Api: image names are lower case: write 'acme/api'",
        ),
    ]


def test_a_value_a_cell_lacks_leaves_its_path_empty_in_that_cell() -> None:
    top = "matrix:\n  include:\n    - {DIR: app}\n    - {OTHER: x}\n"
    assert found(with_build("context: ${DIR}\n", top)) == [
        (
            7,
            16,
            "steps[0].build.context",
            "in matrix cell OTHER=x: `context` is empty: write a directory of the workspace "
            "such as . or app",
        )
    ]


def test_a_cell_s_paths_are_normalised_after_substitution() -> None:
    pipeline = load(with_build("context: ${DIR}/app\n", "matrix:\n  DIR: ['.', a/./b]\n"))
    builds = [for_cell(pipeline, cell).steps[0].build for cell in pipeline.matrix]
    assert [(b.context, b.dockerfile) for b in builds if b] == [
        ("app", "app/Dockerfile"),
        ("a/b/app", "a/b/app/Dockerfile"),
    ]


def test_every_field_of_build_is_substituted_and_the_escape_is_left_for_run_time() -> None:
    lines = """
        context: ${SERVICE}
        dockerfile: docker/${SERVICE}.Dockerfile
        tags: ["acme/${SERVICE}:1", "acme/${SERVICE}:${TAG}"]
        build_args: {NAME: "${SERVICE}", TEXT: "$${SERVICE}"}
        cache_from: acme/${SERVICE}:1
        registry_secret: registry
    """
    build = for_cell(load(with_build(lines, MATRIX)), {"SERVICE": "api"}).steps[0].build
    assert build == ImageBuild(
        context="api",
        dockerfile="docker/api.Dockerfile",
        tags=("acme/api:1", "acme/api:${TAG}"),
        # `$${SERVICE}` is expanded at run time, to the text `${SERVICE}`.
        build_args={"NAME": "api", "TEXT": "$${SERVICE}"},
        registry_secret=REGISTRY,
        cache_from=("acme/api:1",),
    )


def test_github_matrix_syntax_in_build_says_what_to_write() -> None:
    assert found(with_build("context: ${{ matrix.SERVICE }}\n", MATRIX)) == [
        (
            5,
            16,
            "steps[0].build.context",
            "GitHub's `${{ matrix.SERVICE }}` is not Goci's syntax: write ${SERVICE}",
        )
    ]


def test_check_image_reference_checks_the_text_expanded_at_run_time() -> None:
    # A branch name such as feature/x is no tag: the executor checks again after expanding.
    assert check_image_reference("acme/app:main") == "acme/app:main"
    with pytest.raises(ValueError, match="invalid name part 'app:feature'"):
        check_image_reference("acme/app:feature/x")
    with pytest.raises(ValueError, match=re.escape("invalid tag '${X}'")):
        check_image_reference("acme/app:${X}")
    assert check_image_reference("acme/app:${X}", variables=True) == "acme/app:${X}"
    digest = "acme/app@sha256:" + "f" * 64
    assert check_image_reference(digest, digest=True) == digest


# -- secrets


def test_secrets_wanted_includes_the_registry_secret_when_the_step_may_run() -> None:
    pipeline = load(
        yml("""
        steps:
          - run: make
            env: {A: {from_secret: a}}
          - name: image
            build: {tags: app, push: true, registry_secret: registry}
            env: {B: {from_secret: b}}
            when: {event: push}
    """)
    )
    assert secrets_wanted(pipeline) == [("step 1", "A"), ("image", "B"), ("image", "REGISTRY")]
    assert secrets_wanted(pipeline, event="push", judge=True) == [
        ("step 1", "A"),
        ("image", "B"),
        ("image", "REGISTRY"),
    ]
    assert secrets_wanted(pipeline, event="pull_request", judge=True) == [("step 1", "A")]


def test_with_secret_values_gives_a_build_its_credentials_and_nothing_else() -> None:
    pipeline = load(
        yml("""
        steps:
          - build: {tags: app, registry_secret: registry}
          - build: {tags: app}
          - run: make
    """)
    )
    credentials = '{"username": "bot", "password": "hunter2"}'
    steps = with_secret_values(pipeline, {"REGISTRY": credentials, "OTHER": "x"}).steps
    assert [step.build.credentials if step.build else None for step in steps] == [
        credentials,
        None,
        None,
    ]
    assert all(step.env == {} for step in steps)
    # Never shown, and not part of what a build is.
    assert "hunter2" not in repr(steps[0])
    assert steps[0] == pipeline.steps[0]
    # A fork's build (no values): the step runs without credentials.
    build = with_secret_values(pipeline, {}).steps[0].build
    assert build is not None
    assert build.credentials is None


def test_with_secret_values_keeps_a_build_step_s_env_secrets_too() -> None:
    pipeline = load(with_build("registry_secret: registry\n") + "    env: {K: {from_secret: k}}\n")
    step = with_secret_values(pipeline, {"K": "v", "REGISTRY": "token"}).steps[0]
    assert step.env == {"K": "v"}
    assert step.build is not None
    assert step.build.credentials == "token"


# -- the JSON schema


def schema_accepts(schema: Any, value: Any, root: Any = None) -> bool:
    """Whether `value` is valid against `schema`, for the draft-07 keywords json_schema()
    uses (no validator library is a dependency of Goci)."""
    root = schema if root is None else root
    if "$ref" in schema:
        target = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        return schema_accepts(target, value, root)
    kinds = {
        "object": dict,
        "array": list,
        "string": str,
        "boolean": bool,
        "null": type(None),
        "number": (int, float),
        "integer": int,
    }
    checks: list[bool] = []
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        checks.append(
            any(
                isinstance(value, kinds[kind])
                and not (isinstance(value, bool) and kind in ("number", "integer"))
                for kind in types
            )
        )
    if "enum" in schema:
        checks.append(value in schema["enum"])
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            results = [schema_accepts(sub, value, root) for sub in schema[key]]
            count = sum(results)
            checks.append({"anyOf": count >= 1, "oneOf": count == 1, "allOf": all(results)}[key])
    if "not" in schema:
        checks.append(not schema_accepts(schema["not"], value, root))
    if isinstance(value, str):
        checks.append(len(value) >= schema.get("minLength", 0))
        checks.append(len(value) <= schema.get("maxLength", len(value)))
        if "pattern" in schema:
            checks.append(re.search(schema["pattern"], value) is not None)
    if isinstance(value, list):
        checks.append(schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", len(value)))
        if "items" in schema:
            checks.extend(schema_accepts(schema["items"], item, root) for item in value)
    if isinstance(value, dict):
        checks.append(
            schema.get("minProperties", 0) <= len(value) <= schema.get("maxProperties", len(value))
        )
        checks.extend(name in value for name in schema.get("required", ()))
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            if "propertyNames" in schema:
                checks.append(schema_accepts(schema["propertyNames"], name, root))
            if name in properties:
                checks.append(schema_accepts(properties[name], item, root))
            elif extra is False:
                checks.append(False)
            elif isinstance(extra, dict):
                checks.append(schema_accepts(extra, item, root))
    return all(checks)


def test_the_schema_describes_build_from_the_same_table() -> None:
    schema: Any = json_schema()  # JSON: nested dicts of any shape
    step = schema["definitions"]["step"]
    build = schema["definitions"]["build"]
    assert step["properties"]["build"]["description"]
    assert "required" not in step
    assert {"required": ["build"]} in step["oneOf"]
    fields = {f.name for f in dataclasses.fields(ImageBuild)} - {"credentials"}
    assert set(build["properties"]) == fields
    assert build["additionalProperties"] is False
    for key, value in build["properties"].items():
        assert value["description"], key
    assert build["properties"]["tags"]["anyOf"][1]["maxItems"] == MAX_TAGS
    assert build["properties"]["cache_from"]["anyOf"][1]["maxItems"] == MAX_CACHE_FROM
    assert build["properties"]["build_args"]["maxProperties"] == MAX_BUILD_ARGS


def test_the_schema_accepts_the_issue_example_and_what_the_validator_accepts() -> None:
    schema: Any = json_schema()
    for source in (
        EXAMPLE,
        WITHOUT_MATRIX,
        "steps:\n  - build: some/dir\n",
        "steps:\n  - run: make\n  - build: {context: app, tags: [a:1, a:2]}\n",
    ):
        load(source)
        assert schema_accepts(schema, yaml.safe_load(source)), source


@pytest.mark.parametrize(
    "source",
    [
        "steps:\n  - run: make\n    build: .\n",
        "steps:\n  - name: x\n",
        "steps:\n  - build: {}\n",
        "steps:\n  - build: {platform: linux/arm64}\n",
        "steps:\n  - build: {context: ../..}\n",
        "steps:\n  - build: /src\n",
        "steps:\n  - build: {dockerfile: 'a\\b'}\n",
        "steps:\n  - build: {push: 'yes'}\n",
        "steps:\n  - build: {tags: []}\n",
        "steps:\n  - build: {build_args: {1A: x}}\n",
        "steps:\n  - build: {registry_secret: my-registry}\n",
    ],
)
def test_the_schema_refuses_what_the_validator_refuses(source: str) -> None:
    with pytest.raises(PipelineError):
        load(source)
    assert not schema_accepts(json_schema(), yaml.safe_load(source))


def test_the_schema_s_path_pattern_agrees_with_the_validator() -> None:
    schema: Any = json_schema()
    pattern = re.compile(schema["definitions"]["build_path"]["pattern"])
    for path in (
        ".",
        "app",
        "./a/b/",
        "a/..b",
        "..a",
        "${DIR}",
        "..",
        "../a",
        "a/..",
        "a/../b",
        "/a",
    ):
        try:
            check_build_path(path)
            accepted = True
        except ValueError:
            accepted = False
        assert bool(pattern.search(path)) is accepted, path


def test_every_key_of_build_in_the_schema_is_accepted_by_the_validator() -> None:
    schema: Any = json_schema()
    valid = {
        "context": "app",
        "dockerfile": "app/Dockerfile",
        "tags": "[app:1]",
        "build_args": "{A: b}",
        "push": "true",
        "registry_secret": "registry",
        "cache_from": "app:1",
    }
    assert set(valid) == set(schema["definitions"]["build"]["properties"])
    source = with_build("".join(f"{key}: {value}\n" for key, value in valid.items()))
    assert isinstance(load(source), Pipeline)
    assert schema_accepts(schema, yaml.safe_load(source))
