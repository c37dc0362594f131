"""`matrix:`: its cells, every problem with its place, `${NAME}` in each cell's pipeline,
and `goci run` running the cells (issue #14)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from builds import pipeline as pipeline_module
from builds.pipeline import (
    MAX_CELL_NAME,
    PathFilter,
    Pipeline,
    PipelineError,
    Problem,
    When,
    cell_may_fail,
    cell_name,
    for_cell,
    json_schema,
    load,
    matrix_variables,
    plan,
    secrets_wanted,
    select_cells,
)
from tests.helpers import REPO, goci, processes_matching, write_pipeline


def yml(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def problems(source: str) -> list[Problem]:
    with pytest.raises(PipelineError) as info:
        load(yml(source), "p.yml")
    return info.value.problems


def found(source: str) -> list[tuple[int, int, str, str]]:
    return [(p.line, p.column, p.path, p.message) for p in problems(source)]


def cells(source: str) -> list[dict[str, str]]:
    return [dict(cell) for cell in load(yml(source), "p.yml").matrix]


def cell_pipeline(source: str, **values: str) -> Pipeline:
    return for_cell(load(yml(source), "p.yml"), values)


STEP = "steps:\n  - run: make\n"


# -- the cells


def test_a_pipeline_without_matrix_has_no_cells() -> None:
    pipeline = load(STEP)
    assert pipeline.matrix == ()
    assert matrix_variables(pipeline) == ()
    assert select_cells(pipeline, []) == ()


def test_the_issue_example_makes_one_cell_per_value() -> None:
    pipeline = load(
        yml("""
        matrix:
          SERVICE: [bot, api, frontend]
        steps:
          - name: image
            image: registry.example.com/${SERVICE}:latest
            run: make
        """)
    )
    assert pipeline.matrix == ({"SERVICE": "bot"}, {"SERVICE": "api"}, {"SERVICE": "frontend"})
    assert [cell_name(cell) for cell in pipeline.matrix] == [
        "SERVICE=bot",
        "SERVICE=api",
        "SERVICE=frontend",
    ]
    images = [for_cell(pipeline, cell).steps[0].image for cell in pipeline.matrix]
    assert images == [
        "registry.example.com/bot:latest",
        "registry.example.com/api:latest",
        "registry.example.com/frontend:latest",
    ]


def test_axes_combine_in_file_order_with_the_last_varying_fastest() -> None:
    source = """
        matrix:
          OS: [linux, mac]
          GO: ["1.22", "1.23", "1.24"]
        steps: [{run: make}]
    """
    assert [(c["OS"], c["GO"]) for c in cells(source)] == [
        ("linux", "1.22"),
        ("linux", "1.23"),
        ("linux", "1.24"),
        ("mac", "1.22"),
        ("mac", "1.23"),
        ("mac", "1.24"),
    ]


def test_values_are_kept_as_written() -> None:
    source = """
        matrix:
          V: [1.10, 010, true, True, yes, 12:30, '', "a b", ~]
        steps: [{run: make}]
    """
    assert [c["V"] for c in cells(source)] == [
        "1.10", "010", "true", "True", "yes", "12:30", "", "a b", "~"
    ]  # fmt: skip


def test_exclude_removes_every_combination_that_has_all_its_values() -> None:
    source = """
        matrix:
          OS: [linux, mac, windows]
          GO: ["1.22", "1.23"]
          exclude:
            - {OS: mac, GO: "1.22"}
            - {OS: windows}
        steps: [{run: make}]
    """
    assert [cell_name(c) for c in cells(source)] == [
        "GO=1.22, OS=linux",
        "GO=1.23, OS=linux",
        "GO=1.23, OS=mac",
    ]


def test_include_works_as_github_actions_documents_it() -> None:
    # The example of GitHub's "Expanding or adding matrix configurations", and its result.
    source = """
        matrix:
          fruit: [apple, pear]
          animal: [cat, dog]
          include:
            - color: green
            - color: pink
              animal: cat
            - fruit: apple
              shape: circle
            - fruit: banana
            - fruit: banana
              animal: cat
        steps: [{run: make}]
    """
    assert cells(source) == [
        {"fruit": "apple", "animal": "cat", "color": "pink", "shape": "circle"},
        {"fruit": "apple", "animal": "dog", "color": "green", "shape": "circle"},
        {"fruit": "pear", "animal": "cat", "color": "pink"},
        {"fruit": "pear", "animal": "dog", "color": "green"},
        {"fruit": "banana"},
        {"fruit": "banana", "animal": "cat"},
    ]


def test_include_adds_back_what_exclude_removed() -> None:
    source = """
        matrix:
          OS: [linux, mac]
          exclude: [{OS: mac}]
          include: [{OS: mac, ARCH: arm64}]
        steps: [{run: make}]
    """
    assert cells(source) == [{"OS": "linux"}, {"OS": "mac", "ARCH": "arm64"}]


def test_include_alone_is_one_cell_per_entry_as_in_woodpecker() -> None:
    # Akkoma's .woodpecker/test.yml (tests/corpus), in Goci's form.
    source = """
        matrix:
          include:
            - ELIXIR_VERSION: 1.14
              OTP_VERSION: 25
              LINT: NO
            - ELIXIR_VERSION: 1.18
              OTP_VERSION: 27
              LINT: YES
        steps:
          - image: akkoma/ci-base:${ELIXIR_VERSION}-otp${OTP_VERSION}
            run: test "$LINT" = NO || mix format --check-formatted
    """
    pipeline = load(yml(source))
    assert [cell_name(c) for c in pipeline.matrix] == [
        "ELIXIR_VERSION=1.14, LINT=NO, OTP_VERSION=25",
        "ELIXIR_VERSION=1.18, LINT=YES, OTP_VERSION=27",
    ]
    assert for_cell(pipeline, pipeline.matrix[1]).steps[0].image == "akkoma/ci-base:1.18-otp27"


def test_anchors_and_merge_keys_work_in_a_matrix() -> None:
    source = """
        matrix:
          OS: &oses [linux, mac]
          include:
            - &extra {OS: linux, X: "1"}
            - <<: *extra
              OS: bsd
        steps: [{run: make}]
    """
    assert cells(source) == [{"OS": "linux", "X": "1"}, {"OS": "mac"}, {"OS": "bsd", "X": "1"}]


def test_256_cells_are_allowed() -> None:
    values = ", ".join(str(n) for n in range(16))
    source = f"matrix:\n  A: [{values}]\n  B: [{values}]\n{STEP}"
    assert len(load(source).matrix) == 256


# -- problems, each with its place


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            "matrix:\n  1OS: [a]\n",
            (
                2,
                3,
                "matrix.1OS",
                "invalid variable name '1OS': use letters, digits and _, not starting with a digit",
            ),
        ),
        (
            "matrix:\n  GOCI_OS: [a]\n",
            (2, 3, "matrix.GOCI_OS", "'GOCI_OS' is set by Goci; choose another name"),
        ),
        (
            "matrix:\n  CI: [a]\n",
            (2, 3, "matrix.CI", "'CI' is set by Goci; choose another name"),
        ),
        (
            "matrix:\n  OS: []\n",
            (2, 7, "matrix.OS", "the list is empty: give at least one value, or remove it"),
        ),
        (
            "matrix:\n  OS: linux\n",
            (
                2,
                7,
                "matrix.OS",
                "expected a list of values, found 'linux' (write [linux] for one value)",
            ),
        ),
        (
            "matrix:\n  OS:\n",
            (2, 6, "matrix.OS", "expected a list of values, found nothing"),
        ),
        (
            "matrix:\n  OS: {a: b}\n",
            (2, 7, "matrix.OS", "expected a list of values, found a mapping"),
        ),
        (
            "matrix:\n  OS: [linux, [a]]\n",
            (2, 15, "matrix.OS[1]", "expected a value (a string, number or boolean), found a list"),
        ),
        (
            "matrix:\n  OS: [linux, {a: b}]\n",
            (
                2,
                15,
                "matrix.OS[1]",
                "expected a value (a string, number or boolean), found a mapping",
            ),
        ),
        (
            "matrix:\n  OS:\n    - linux\n    -\n",
            (
                4,
                6,
                "matrix.OS[1]",
                "expected a value (a string, number or boolean), found "
                "nothing (write '' for no text)",
            ),
        ),
        (
            'matrix:\n  OS: ["a\\nb"]\n',
            (2, 8, "matrix.OS[0]", "a matrix value must fit on one line"),
        ),
        (
            "matrix:\n  OS: [linux, mac, linux]\n",
            (2, 20, "matrix.OS[2]", "duplicate value 'linux' (first on line 2)"),
        ),
        (
            "matrix:\n  OS: [!!binary aGk=]\n",
            (
                2,
                8,
                "matrix.OS[0]",
                "unsupported tag '!!binary': Goci reads plain YAML; remove the tag",
            ),
        ),
        (
            "matrix: [{OS: linux}]\n",
            (
                1,
                9,
                "matrix",
                "expected a mapping of NAME: [values], with optional `include` "
                "and `exclude`, found a list (write `include:` first)",
            ),
        ),
        (
            "matrix: linux\n",
            (
                1,
                9,
                "matrix",
                "expected a mapping of NAME: [values], with optional `include` "
                "and `exclude`, found 'linux'",
            ),
        ),
        (
            "matrix: {}\n",
            (1, 1, "matrix", "the matrix is empty: give a variable and its values, or remove it"),
        ),
        (
            "matrix:\n  includes:\n    - {OS: a}\n",
            (2, 3, "matrix", "unknown key 'includes' (did you mean 'include'?)"),
        ),
        (
            "matrix:\n  OS: [a]\n  include: {X: b}\n",
            (
                3,
                12,
                "matrix.include",
                "expected a list of mappings (`- NAME: value`), found a mapping",
            ),
        ),
        (
            "matrix:\n  OS: [a]\n  exclude: []\n",
            (3, 12, "matrix.exclude", "the list is empty: remove `exclude`"),
        ),
        (
            "matrix:\n  OS: [a]\n  include: [[X, b]]\n",
            (3, 13, "matrix.include[0]", "expected a mapping of NAME: value, found a list"),
        ),
        (
            "matrix:\n  OS: [a]\n  include: [{}]\n",
            (3, 13, "matrix.include[0]", "the mapping is empty: it adds nothing; remove it"),
        ),
        (
            "matrix:\n  OS: [a, b]\n  exclude: [{}]\n",
            (
                3,
                13,
                "matrix.exclude[0]",
                "the mapping is empty: it would remove every combination; remove it",
            ),
        ),
        (
            "matrix:\n  OS: [a]\n  include: [{X: [b]}]\n",
            (
                3,
                17,
                "matrix.include[0].X",
                "expected a value (a string, number or boolean), found a list",
            ),
        ),
        (
            "matrix:\n  OS: [a]\n  include: [{x-y: b}]\n",
            (
                3,
                14,
                "matrix.include[0].x-y",
                "invalid variable name 'x-y': use letters, digits and _, not starting with a digit",
            ),
        ),
        (
            "matrix:\n  OS: [linux, mac]\n  exclude: [{OSS: mac}]\n",
            (
                3,
                14,
                "matrix.exclude[0].OSS",
                "'OSS' is not an axis of the matrix (did you mean 'OS'?)",
            ),
        ),
        (
            "matrix:\n  OS: [linux, mac]\n  exclude: [{ARCH: x}]\n",
            (
                3,
                14,
                "matrix.exclude[0].ARCH",
                "'ARCH' is not an axis of the matrix (the axes are OS)",
            ),
        ),
        (
            "matrix:\n  OS: [linux, mac]\n  exclude: [{OS: macc}]\n",
            (3, 18, "matrix.exclude[0].OS", "'macc' is not a value of OS (did you mean 'mac'?)"),
        ),
        (
            "matrix:\n  OS: [linux, mac]\n  exclude: [{OS: bsd}]\n",
            (3, 18, "matrix.exclude[0].OS", "'bsd' is not a value of OS (linux, mac)"),
        ),
        (
            "matrix:\n  OS: [linux]\n  exclude: [{OS: linux}]\n",
            (1, 1, "matrix", "the matrix has no combination left: exclude removes every one"),
        ),
        (
            "matrix:\n  include:\n    - {A: '1'}\n    - {A: '2'}\n    - {A: '1'}\n",
            (
                5,
                7,
                "matrix.include[2]",
                "the same combination as matrix.include[0]; remove one of them",
            ),
        ),
        (
            "matrix:\n  A: ['1, B=2']\n  include:\n    - {A: '1', B: '2'}\n",
            (1, 1, "matrix", "two combinations have the same name 'A=1, B=2'; change a value"),
        ),
    ],
)
def test_a_wrong_matrix_is_reported_where_it_is(
    source: str, expected: tuple[int, int, str, str]
) -> None:
    assert found(source + STEP) == [expected]


def test_every_problem_of_a_matrix_is_reported_at_once() -> None:
    source = """
        matrix:
          1OS: [a]
          GO: []
          ARCH: [x, x]
        steps: [{run: make}]
    """
    assert [(line, path) for line, _, path, _ in found(source)] == [
        (2, "matrix.1OS"),
        (3, "matrix.GO"),
        (4, "matrix.ARCH[1]"),
    ]


def test_more_than_256_cells_is_an_error() -> None:
    values = ", ".join(str(n) for n in range(17))
    source = f"matrix:\n  A: [{values}]\n  B: [{values}]\n{STEP}"
    assert found(source) == [
        (
            1,
            1,
            "matrix",
            "the matrix makes 289 combinations; it may make at most 256 (exclude some, or "
            "split the pipeline)",
        )
    ]


def test_include_counts_towards_the_256_cells() -> None:
    values = ", ".join(str(n) for n in range(16))
    source = f"matrix:\n  A: [{values}]\n  B: [{values}]\n  include: [{{A: x}}]\n{STEP}"
    assert found(source)[0][3].startswith("the matrix makes 257 combinations;")


def test_exclude_can_bring_a_matrix_under_256_cells() -> None:
    values = ", ".join(str(n) for n in range(20))
    exclude = ", ".join(f"{{A: '{n}'}}" for n in range(10))
    source = f"matrix:\n  A: [{values}]\n  B: [{values}]\n  exclude: [{exclude}]\n{STEP}"
    assert len(load(source).matrix) == 200


def test_axes_beyond_4096_combinations_are_refused_before_they_are_expanded() -> None:
    # 2^40 combinations: expanding them first would never end.
    axes = "".join(f"  A{n}: [x, y]\n" for n in range(40))
    started = time.perf_counter()
    [(line, column, path, message)] = found(f"matrix:\n{axes}{STEP}")
    assert time.perf_counter() - started < 1
    assert (line, column, path) == (1, 1, "matrix")
    assert message.startswith("the axes make too many combinations (2 x 2 x 2 x ")
    assert message.endswith("a matrix may have at most 256, and at most 4096 before exclude")


def test_matrix_in_a_step_or_github_strategy_is_pointed_to_the_top() -> None:
    source = """
        strategy: {matrix: {OS: [a]}}
        steps:
          - run: make
            matrix: {OS: [a]}
    """
    assert found(source) == [
        (1, 1, "", "unknown key 'strategy' (write `matrix:` at the top of the pipeline)"),
        (
            4,
            5,
            "steps[0]",
            "unknown key 'matrix' (a matrix applies to the whole pipeline: write `matrix:` "
            "at its top)",
        ),
    ]


# -- `${NAME}` in each cell's pipeline

FULL = """
    matrix:
      SERVICE: [bot, api]
      include:
        - {SERVICE: api, PORT: "8080"}
    image: base/${SERVICE}
    env:
      TAG: ${SERVICE}-$${SERVICE}-${GOCI_COMMIT}-$SERVICE-${HOME}
      PORT_TEXT: port ${PORT}
    when:
      branch: [main, "${SERVICE}/*"]
    steps:
      - name: build
        run: echo "${SERVICE}"
        env: {STEP_TAG: "[${SERVICE}]"}
      - name: deploy
        image: deploy/${SERVICE}:${PORT}
        run: make deploy
        when:
          branch: release/${SERVICE}
          event: [push, tag]
          path:
            include: ["services/${SERVICE}/**"]
            exclude: ['**/${SERVICE}.md']
"""


def test_a_cell_has_its_values_substituted_in_images_env_and_when() -> None:
    pipeline = cell_pipeline(FULL, SERVICE="bot")
    build, deploy = pipeline.steps
    assert pipeline.image == build.image == "base/bot"
    assert deploy.image == "deploy/bot:"  # PORT: only api's cell has it
    assert pipeline.env == {
        "TAG": "bot-${SERVICE}-${GOCI_COMMIT}-$SERVICE-${HOME}",
        "PORT_TEXT": "port ",
        "SERVICE": "bot",
    }
    assert build.env["STEP_TAG"] == "[bot]"
    assert pipeline.when == When(branch=("main", "bot/*"))
    assert deploy.when == When(
        branch=("release/bot",),
        event=("push", "tag"),
        path=PathFilter(include=("services/bot/**",), exclude=("**/bot.md",)),
    )
    assert build.run == 'echo "${SERVICE}"'  # the shell's, from the environment
    assert pipeline.matrix == ()


def test_a_cell_gets_its_own_values_and_variables() -> None:
    pipeline = cell_pipeline(FULL, SERVICE="api", PORT="8080")
    build, deploy = pipeline.steps
    assert deploy.image == "deploy/api:8080"
    assert build.env["PORT"] == deploy.env["PORT"] == "8080"
    assert build.env["TAG"] == "api-${SERVICE}-${GOCI_COMMIT}-$SERVICE-${HOME}"
    assert deploy.when is not None
    assert deploy.when.matches(branch="release/api", event="push", changed_files=["services/api/a"])
    assert not deploy.when.matches(
        branch="release/api", event="push", changed_files=["services/api/api.md"]
    )


def test_the_cells_have_the_same_steps_and_plan() -> None:
    pipeline = load(yml(FULL))
    for cell in pipeline.matrix:
        one = for_cell(pipeline, cell)
        assert plan(one) == plan(pipeline)
        assert [(s.name, s.run, s.index) for s in one.steps] == [
            (s.name, s.run, s.index) for s in pipeline.steps
        ]


def test_a_value_is_text_and_is_not_substituted_again() -> None:
    source = """
        matrix:
          A: ['x: [y]', '${B}', '"quoted"', '$${A}']
          B: [b]
        env: {V: "${A}"}
        image: img
        steps: [{run: make}]
    """
    pipeline = load(yml(source))
    env = [for_cell(pipeline, cell).env for cell in pipeline.matrix]
    assert [e["V"] for e in env] == ["x: [y]", "${B}", '"quoted"', "$${A}"]
    assert all(set(e) == {"V", "A", "B"} for e in env)


def test_matrix_values_win_over_the_env_of_the_pipeline_and_of_steps() -> None:
    source = """
        matrix:
          SERVICE: [bot]
          TOKEN: [plain]
        env: {SERVICE: from-pipeline, TOKEN: {from_secret: token}, OTHER: kept}
        steps:
          - run: make
            env: {SERVICE: from-step, KEY: {from_secret: key}}
    """
    pipeline = cell_pipeline(source, SERVICE="bot", TOKEN="plain")  # noqa: S106  (no secret)
    [step] = pipeline.steps
    assert step.env == {"OTHER": "kept", "SERVICE": "bot", "TOKEN": "plain"}
    assert step.secret_env == {"KEY": "KEY"}
    assert pipeline.secret_env == {}
    assert secrets_wanted(pipeline) == [("step 1", "KEY")]


def test_a_pipeline_without_matrix_is_left_as_written() -> None:
    # No matrix: `${NAME}` is nobody's, and `$$` stays for the shell.
    pipeline = load(
        yml("""
        image: img:${TAG}
        env: {A: "${X}$${Y}"}
        steps: [{run: make}]
    """)
    )
    assert pipeline.image == "img:${TAG}"
    assert pipeline.env == {"A": "${X}$${Y}"}


def test_for_cell_refuses_values_that_are_not_a_cell() -> None:
    pipeline = load(yml(FULL))
    with pytest.raises(ValueError, match="'SERVICE=api' is not a cell of the pipeline's matrix"):
        for_cell(pipeline, {"SERVICE": "api"})  # its cell also has PORT
    with pytest.raises(ValueError, match="not a cell"):
        for_cell(load(STEP), {})


# -- problems that only a cell's values show


def test_an_image_that_becomes_empty_in_a_cell_is_reported_naming_the_cell() -> None:
    source = """
        matrix:
          IMAGE: [alpine, '']
          X: [a, b]
        steps:
          - run: make
            image: ${IMAGE}
    """
    assert found(source) == [
        (
            6,
            12,
            "steps[0].image",
            "in matrix cell IMAGE=, X=a (and 1 more): the image is empty: name one such as "
            "golang:1.22, or remove `image:`",
        )
    ]


def test_an_unknown_event_or_a_bad_pattern_in_a_cell_is_reported() -> None:
    source = """
        matrix:
          EVENT: [push, pushh]
          DIR: [src, /abs]
        steps:
          - run: make
            when:
              event: ${EVENT}
              path: ${DIR}/**
    """
    assert found(source) == [
        (
            7,
            14,
            "steps[0].when.event",
            "in matrix cell DIR=src, EVENT=pushh (and 1 more): unknown event 'pushh' (did you "
            "mean 'push'?; events are push, pull_request, tag, manual, cron, api)",
        ),
        (
            8,
            13,
            "steps[0].when.path",
            "in matrix cell DIR=/abs, EVENT=push (and 1 more): paths are relative to the "
            "repository's top: write 'abs/**'",
        ),
    ]


def test_values_that_make_too_many_path_patterns_are_reported() -> None:
    many = "{" + ",".join(f"d{n}" for n in range(600)) + "}"
    source = f"""
        matrix:
          DIRS: [src, '{many}']
        steps:
          - run: make
            when: {{path: ['${{DIRS}}/**', '${{DIRS}}/*.go']}}
    """
    [(line, column, path, message)] = found(source)
    assert (line, column, path) == (5, 19, "steps[0].when.path[0]")
    assert message.startswith("in matrix cell DIRS={d0,d1,")
    assert message.endswith(
        ": too many path patterns: a pipeline may have at most 1000, counting each use and "
        "each {a,b} alternative"
    )


def test_an_image_naming_no_matrix_variable_is_an_error() -> None:
    source = """
        matrix:
          SERVICE: [bot]
        steps:
          - run: make
            image: registry/${SERVCE}
    """
    assert found(source) == [
        (5, 12, "steps[0].image", "${SERVCE} is not a variable of the matrix (did you mean "
         "'SERVICE'?)"),
    ]  # fmt: skip


def test_githubs_matrix_syntax_is_pointed_to_gocis() -> None:
    source = """
        matrix:
          OS: [linux]
        env: {TARGET: "${{ matrix.OS }}"}
        steps:
          - run: echo ${{ matrix.OS }}
    """
    assert found(source) == [
        (3, 15, "env.TARGET", "GitHub's `${{ matrix.OS }}` is not Goci's syntax: write ${OS}"),
        (
            5,
            10,
            "steps[0].run",
            "GitHub's `${{ matrix.OS }}` is not Goci's syntax: write $OS, an environment "
            "variable of the step",
        ),
    ]


def test_too_many_substitutions_are_refused() -> None:
    values = ", ".join(str(n) for n in range(256))
    env = "".join(f"      V{n}: ${{A}}\n" for n in range(2000))
    source = f"matrix:\n  A: [{values}]\nsteps:\n  - run: make\n    env:\n{env}"
    assert found(source) == [
        (
            1,
            1,
            "matrix",
            "2000 strings use the matrix's variables, in each of its 256 combinations: more "
            "than 500000 substitutions",
        )
    ]


def test_a_big_matrix_pipeline_loads_and_expands_quickly() -> None:
    values = ", ".join(f"v{n}" for n in range(16))
    lines = [f"matrix:\n  A: [{values}]\n  B: [{values}]\nsteps:"]
    lines += [
        f"  - {{name: s{n}, image: 'img/${{A}}:${{B}}-{n}', run: make, env: {{V: '${{A}}'}}}}"
        for n in range(500)
    ]
    started = time.perf_counter()
    pipeline = load("\n".join(lines) + "\n")
    loaded = time.perf_counter()
    last = [for_cell(pipeline, cell) for cell in pipeline.matrix][-1]
    expanded = time.perf_counter()
    assert last.steps[499].image == "img/v15:v15-499"
    assert loaded - started < 2
    assert expanded - loaded < 10  # 128,000 steps in all


# -- names, selection, schema


def test_cell_names_sort_the_variables_and_stay_short_and_distinct() -> None:
    assert cell_name({"OS": "linux", "GO": "1.22"}) == "GO=1.22, OS=linux"
    assert cell_name({"GO": "1.22", "OS": "linux"}) == "GO=1.22, OS=linux"
    long_a, long_b = {"A": "x" * 200 + "a"}, {"A": "x" * 200 + "b"}
    assert len(cell_name(long_a)) == MAX_CELL_NAME
    assert cell_name(long_a).startswith("A=xxx")
    assert cell_name(long_a) != cell_name(long_b)
    assert cell_name(long_a) == cell_name(dict(long_a))


def test_select_cells_matches_every_name_and_any_value_of_one() -> None:
    source = """
        matrix:
          OS: [linux, mac]
          GO: ["1.22", "1.23"]
        steps: [{run: make}]
    """
    pipeline = load(yml(source))
    assert select_cells(pipeline, []) == pipeline.matrix
    assert [cell_name(c) for c in select_cells(pipeline, [("OS", "mac")])] == [
        "GO=1.22, OS=mac",
        "GO=1.23, OS=mac",
    ]
    picked = select_cells(pipeline, [("OS", "mac"), ("GO", "1.23"), ("GO", "1.22")])
    assert [cell_name(c) for c in picked] == ["GO=1.22, OS=mac", "GO=1.23, OS=mac"]
    picked = select_cells(pipeline, [("OS", "mac"), ("GO", "1.23")])
    assert [cell_name(c) for c in picked] == ["GO=1.23, OS=mac"]


@pytest.mark.parametrize(
    ("picks", "message"),
    [
        (
            [("OS", "bsd")],
            "no cell of the matrix has OS=bsd; its cells are:\n  OS=linux\n  OS=mac",
        ),
        ([("OSS", "mac")], "'OSS' is not a variable of the matrix (did you mean 'OS'?); its "
         "variables are OS"),
    ],
)  # fmt: skip
def test_select_cells_says_why_nothing_matches(picks: list[tuple[str, str]], message: str) -> None:
    pipeline = load(yml("matrix: {OS: [linux, mac]}\n" + STEP))
    with pytest.raises(ValueError, match="matrix") as info:
        select_cells(pipeline, picks)
    assert str(info.value) == message
    with pytest.raises(ValueError, match=r"^the pipeline has no matrix$"):
        select_cells(load(STEP), [("OS", "mac")])


def test_json_schema_describes_the_matrix() -> None:
    schema: Any = json_schema()  # JSON: nested dicts of any shape
    assert schema["properties"]["matrix"]["description"]
    matrix = schema["definitions"]["matrix"]
    assert set(matrix["properties"]) == {"include", "exclude", "allow_failure"}
    assert matrix["additionalProperties"]["type"] == "array"
    assert matrix["additionalProperties"]["minItems"] == 1
    row = matrix["properties"]["include"]["items"]
    assert row["type"] == "object"
    assert row["additionalProperties"]["type"] == ["string", "number", "boolean"]
    assert row["propertyNames"]["pattern"] == pipeline_module._ENV_NAME


def test_matrix_is_no_longer_reserved() -> None:
    assert "matrix" not in pipeline_module.RESERVED_KEYS


# -- `goci run`

RUN = """\
matrix:
  SERVICE: [bot, api, frontend]
  include:
    - {SERVICE: api, PORT: "8080"}
env:
  LABEL: svc-${SERVICE}
steps:
  - name: show
    run: echo "service=$SERVICE label=$LABEL port=${PORT:-none}" >> ran.log
  - name: check
    run: test "$SERVICE" != "$FAIL_ON"
"""


def ran(directory: Path) -> list[str]:
    log = directory / "ran.log"
    return log.read_text().splitlines() if log.exists() else []


def test_goci_run_runs_every_cell_with_its_values(tmp_path: Path) -> None:
    write_pipeline(tmp_path, RUN)
    done = goci("run", cwd=tmp_path, env={"FAIL_ON": "none"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert ran(tmp_path) == [
        "service=bot label=svc-bot port=none",
        "service=api label=svc-api port=8080",
        "service=frontend label=svc-frontend port=none",
    ]
    out = done.stdout.splitlines()
    headers = [line for line in out if line.startswith("===")]
    assert headers == [
        "=== matrix cell 1 of 3: SERVICE=bot ===",
        "=== matrix cell 2 of 3: PORT=8080, SERVICE=api ===",
        "=== matrix cell 3 of 3: SERVICE=frontend ===",
    ]
    table = out[out.index("CELL                    STATUS") :]
    assert table == [
        "CELL                    STATUS",
        "SERVICE=bot             ✔ success",
        "PORT=8080, SERVICE=api  ✔ success",
        "SERVICE=frontend        ✔ success",
        "matrix ✔ success: 3 cells (3 success)",
    ]


def test_goci_run_runs_every_cell_and_exits_1_if_one_failed(tmp_path: Path) -> None:
    write_pipeline(tmp_path, RUN)
    done = goci("run", cwd=tmp_path, env={"FAIL_ON": "bot"})
    assert done.returncode == 1
    assert len(ran(tmp_path)) == 3  # the cells after the failed one ran too
    assert "SERVICE=bot             ✘ failure" in done.stdout
    assert "SERVICE=frontend        ✔ success" in done.stdout
    assert "matrix ✘ failure: 3 cells (1 failure, 2 success)" in done.stdout


def test_goci_run_matrix_picks_the_cells_to_run(tmp_path: Path) -> None:
    write_pipeline(tmp_path, RUN)
    done = goci("run", "--matrix", "SERVICE=api", cwd=tmp_path, env={"FAIL_ON": "bot"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert ran(tmp_path) == ["service=api label=svc-api port=8080"]
    assert "=== matrix cell 1 of 1: PORT=8080, SERVICE=api ===" in done.stdout
    assert "CELL" not in done.stdout  # one cell: its own summary is enough

    (tmp_path / "ran.log").unlink()
    done = goci(
        "run", "--matrix", "SERVICE=frontend", "--matrix", "SERVICE=bot", cwd=tmp_path,
        env={"FAIL_ON": "bot"},
    )  # fmt: skip
    assert done.returncode == 1
    assert ran(tmp_path) == [
        "service=bot label=svc-bot port=none",
        "service=frontend label=svc-frontend port=none",
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--matrix", "SERVICE=web"],
            "goci: --matrix: no cell of the matrix has SERVICE=web; its cells are:\n"
            "  SERVICE=bot\n  PORT=8080, SERVICE=api\n  SERVICE=frontend\n",
        ),
        (
            ["--matrix", "SERVICE=api", "--matrix", "PORT=9090"],
            "goci: --matrix: no cell of the matrix has SERVICE=api PORT=9090; its cells are:\n"
            "  SERVICE=bot\n  PORT=8080, SERVICE=api\n  SERVICE=frontend\n",
        ),
        (
            ["--matrix", "SERVICES=api"],
            "goci: --matrix: 'SERVICES' is not a variable of the matrix (did you mean "
            "'SERVICE'?); its variables are SERVICE, PORT\n",
        ),
        (
            ["--matrix", "api"],
            "goci: --matrix 'api': expected NAME=VALUE, NAME a variable of the matrix\n",
        ),
        (
            ["--env", "SERVICE=api"],
            "goci: --env SERVICE: a variable of the matrix; pick cells with --matrix\n",
        ),
    ],
)
def test_goci_run_matrix_usage_errors_exit_2_before_anything_runs(
    tmp_path: Path, args: list[str], message: str
) -> None:
    write_pipeline(tmp_path, RUN)
    done = goci("run", *args, cwd=tmp_path)
    assert (done.returncode, done.stderr, done.stdout) == (2, message, "")
    assert ran(tmp_path) == []


def test_goci_run_matrix_on_a_pipeline_without_matrix_is_a_usage_error(tmp_path: Path) -> None:
    write_pipeline(tmp_path, "steps: [{run: touch ran.log}]\n")
    done = goci("run", "--matrix", "A=b", cwd=tmp_path)
    assert (done.returncode, done.stderr) == (2, "goci: --matrix: the pipeline has no matrix\n")
    assert not (tmp_path / "ran.log").exists()


def test_goci_run_without_matrix_prints_no_cell_header(tmp_path: Path) -> None:
    write_pipeline(tmp_path, "steps: [{run: echo hi}]\n")
    done = goci("run", cwd=tmp_path)
    assert done.returncode == 0
    assert "===" not in done.stdout
    assert "CELL" not in done.stdout


def test_goci_run_of_a_wrong_matrix_prints_every_problem(tmp_path: Path) -> None:
    write_pipeline(tmp_path, "matrix:\n  OS: []\n  GO: x\nsteps: [{run: touch ran.log}]\n")
    done = goci("run", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        ".goci.yml:2:7: matrix.OS: the list is empty: give at least one value, or remove it",
        ".goci.yml:3:7: matrix.GO: expected a list of values, found 'x' (write [x] for one value)",
        "goci: 2 problems in .goci.yml",
    ]
    assert not (tmp_path / "ran.log").exists()


def test_goci_run_matrix_asks_every_cell_for_its_secrets_before_running(tmp_path: Path) -> None:
    # Cell SERVICE=a sets TOKEN itself (the matrix wins over the secret); b needs it.
    write_pipeline(
        tmp_path,
        """\
matrix:
  SERVICE: [a, b]
  include: [{SERVICE: a, TOKEN: plain}]
steps:
  - run: echo "$SERVICE $TOKEN" >> ran.log
    env: {TOKEN: {from_secret: token}}
""",
    )
    done = goci("run", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("goci: step 'step 1' asks for secret TOKEN")
    assert ran(tmp_path) == []  # not even cell a, which needs no secret
    done = goci("run", "--secret", "TOKEN=s3cr3t-value", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert ran(tmp_path) == ["a plain", "b s3cr3t-value"]


def test_interrupting_a_matrix_stops_it_and_runs_no_other_cell(tmp_path: Path) -> None:
    marker = "8765431"
    write_pipeline(
        tmp_path,
        f"""\
matrix:
  N: ['1', '2', '3']
steps:
  - run: echo "$N" >> ran.log; sleep {marker}
""",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "goci.cli", "run"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    deadline = time.monotonic() + 10
    while not processes_matching(f"sleep {marker}") and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 130
    assert err == "goci: interrupted; every step was stopped; 2 matrix cells not run\n"
    assert "=== matrix cell 2 of 3" not in out
    assert ran(tmp_path) == ["1"]
    assert processes_matching(f"sleep {marker}") == []


# -- allow_failure: cells that may fail without failing the build -----------------------

MAY_FAIL = """
matrix:
  PY: ["3.11", "3.12", "3.13-dev"]
  OS: [linux, mac]
  allow_failure:
    - {PY: 3.13-dev}
    - {PY: "3.12", OS: mac}
steps:
  - run: make
"""


def test_allow_failure_names_the_cells_that_may_fail() -> None:
    parsed = load(yml(MAY_FAIL), "p.yml")

    may_fail = [cell_name(cell) for cell in parsed.matrix if cell_may_fail(parsed, cell)]

    assert may_fail == ["OS=mac, PY=3.12", "OS=linux, PY=3.13-dev", "OS=mac, PY=3.13-dev"]
    assert for_cell(parsed, parsed.matrix[0]).matrix_may_fail == ()


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ("[{PYTHON: 3.11}]", "'PYTHON' is not a variable of the matrix (PY)"),
        ("[{PY: '3.9'}]", "it matches no combination of the matrix: fix or remove it"),
        ("[{}]", "the mapping is empty: it would let every combination fail; remove it"),
        ("{PY: '3.11'}", "expected a list of mappings (`- NAME: value`), found a mapping"),
    ],
)
def test_a_wrong_allow_failure_entry_is_named_with_its_position(entries: str, message: str) -> None:
    source = f"matrix:\n  PY: ['3.11', '3.12']\n  allow_failure: {entries}\n{STEP}"

    assert [p.message for p in problems(source)] == [message]
    assert problems(source)[0].line == 3


def test_goci_run_exits_0_when_only_a_cell_allowed_to_fail_failed(tmp_path: Path) -> None:
    write_pipeline(
        tmp_path,
        RUN.replace("  include:", "  allow_failure:\n    - {SERVICE: bot}\n  include:", 1),
    )
    done = goci("run", cwd=tmp_path, env={"FAIL_ON": "bot"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SERVICE=bot             ✘ failure (allowed to fail)" in done.stdout

    done = goci("run", cwd=tmp_path, env={"FAIL_ON": "api"})
    assert done.returncode == 1
