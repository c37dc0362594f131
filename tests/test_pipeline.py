"""The pipeline format: strict loading, every problem with its place, the DAG."""

from __future__ import annotations

import dataclasses
import json
import re
import textwrap
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from builds import pipeline as pipeline_module
from builds.pipeline import (
    EVENTS,
    MAX_BYTES,
    Pipeline,
    PipelineError,
    Problem,
    Step,
    When,
    json_schema,
    load,
    load_file,
    parse_duration,
    plan,
)

# -- helpers


def yml(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def problems(source: str | bytes) -> list[Problem]:
    with pytest.raises(PipelineError) as info:
        load(source, "p.yml")
    return info.value.problems


def only(source: str | bytes) -> Problem:
    found = problems(source)
    assert len(found) == 1, "\n".join(map(str, found))
    return found[0]


def at(problem: Problem) -> tuple[int, int, str]:
    return problem.line, problem.column, problem.path


def one_step(extra: str) -> str:
    """A valid one-step pipeline with `extra` (step keys) added to the step."""
    return "steps:\n  - run: make\n" + textwrap.indent(textwrap.dedent(extra), "    ")


SMALLEST = yml("""
    steps:
      - name: Install
        run: go mod tidy
      - name: Test
        run: go test ./...
      - name: Build
        run: go build -o app
""")

PARALLEL = yml("""
    steps:
      - name: Install
        run: npm ci
      - name: Test Backend
        run: go test ./backend
        parallel: true
      - name: Test Frontend
        run: npm test
        parallel: true
      - name: Package
        run: make dist
""")


# -- the examples of the format and the dependency rules


def test_smallest_example_runs_steps_one_after_another() -> None:
    pipeline = load(SMALLEST, ".goci.yml")
    assert [s.name for s in pipeline.steps] == ["Install", "Test", "Build"]
    assert pipeline.steps[1] == Step(name="Test", run="go test ./...", index=1)
    assert pipeline.filename == ".goci.yml"
    assert plan(pipeline) == {"Install": (), "Test": ("Install",), "Build": ("Test",)}


def test_parallel_group_starts_after_the_step_before_and_the_next_waits_for_all() -> None:
    assert plan(load(PARALLEL)) == {
        "Install": (),
        "Test Backend": ("Install",),
        "Test Frontend": ("Install",),
        "Package": ("Test Backend", "Test Frontend"),
    }


def test_two_parallel_groups_and_a_parallel_first_step() -> None:
    source = yml("""
        steps:
          - {name: a, run: x, parallel: true}
          - {name: b, run: x, parallel: true}
          - {name: c, run: x}
          - {name: d, run: x, parallel: true}
          - {name: e, run: x, parallel: true}
          - {name: f, run: x, parallel: true}
          - {name: g, run: x, parallel: false}
    """)
    assert plan(load(source)) == {
        "a": (),
        "b": (),
        "c": ("a", "b"),
        "d": ("c",),
        "e": ("c",),
        "f": ("c",),
        "g": ("d", "e", "f"),
    }


def test_a_lone_parallel_step_is_a_stage_of_its_own() -> None:
    source = "steps:\n  - {name: a, run: x}\n  - {name: b, run: x, parallel: true}\n"
    source += "  - {name: c, run: x}\n"
    assert plan(load(source)) == {"a": (), "b": ("a",), "c": ("b",)}


def test_diamond_from_needs() -> None:
    source = yml("""
        steps:
          - {name: Checkout, run: x}
          - {name: Lint, run: x, needs: [Checkout]}
          - {name: Test, run: x, needs: [Checkout]}
          - {name: Ship, run: x, needs: [Lint, Test]}
    """)
    assert plan(load(source)) == {
        "Checkout": (),
        "Lint": ("Checkout",),
        "Test": ("Checkout",),
        "Ship": ("Lint", "Test"),
    }


def test_needs_empty_list_means_no_dependencies_and_the_next_step_waits_for_it() -> None:
    source = yml("""
        steps:
          - {name: a, run: x}
          - {name: b, run: x, needs: []}
          - {name: c, run: x}
    """)
    pipeline = load(source)
    assert pipeline.steps[1].needs == ()
    assert pipeline.steps[0].needs is None
    assert plan(pipeline) == {"a": (), "b": (), "c": ("b",)}


def test_needs_as_one_string_is_a_list_of_one_and_may_point_forwards() -> None:
    source = yml("""
        steps:
          - {name: a, run: x, needs: c}
          - {name: b, run: x, needs: []}
          - {name: c, run: x, needs: [b, b]}
    """)
    assert plan(load(source)) == {"a": ("c",), "b": (), "c": ("b",)}


def test_plan_does_not_change_the_pipeline() -> None:
    pipeline = load(PARALLEL)
    before = dataclasses.replace(pipeline)
    plan(pipeline)
    assert pipeline == before


# -- what a valid file gives


def test_step_defaults() -> None:
    step = load("steps:\n  - run: make\n  - run: make test\n").steps[1]
    assert step == Step(name="step 2", run="make test", index=1)
    assert (step.shell, step.image, step.needs, step.retry, step.when) == (
        "sh",
        None,
        None,
        0,
        None,
    )


def test_every_key_is_read() -> None:
    source = yml("""
        name: Release
        image: golang:1.22
        timeout: 1h
        env: {A: pipeline, B: pipeline}
        steps:
          - name: Build
            run: |
              make
              make install
            shell: bash
            image: alpine:3
            parallel: true
            needs: []
            env: {B: step}
            workdir: ./src/app
            timeout: 1h30m
            retry: 3
            allow_failure: TRUE
            when: {branch: [main, release/*], event: push}
            environment: {name: staging, url: https://staging.example.com}
          - run: make check
    """)
    pipeline = load(source)
    assert (pipeline.name, pipeline.image, pipeline.timeout) == ("Release", "golang:1.22", 3600)
    assert pipeline.env == {"A": "pipeline", "B": "pipeline"}
    build, check = pipeline.steps
    assert dataclasses.asdict(build) == {
        "name": "Build",
        "run": "make\nmake install\n",
        "index": 0,
        "shell": "bash",
        "image": "alpine:3",
        "parallel": True,
        "needs": (),
        "env": {"A": "pipeline", "B": "step"},
        "secret_env": {},
        "workdir": "./src/app",
        "timeout": 5400,
        "retry": 3,
        "allow_failure": True,
        "when": {"branch": ("main", "release/*"), "event": ("push",), "path": None},
        "build": None,
        "ssh": None,
        "environment": {"name": "staging", "url": "https://staging.example.com"},
    }
    assert check.image == "golang:1.22"  # the pipeline's image is every step's default
    assert check.env == {"A": "pipeline", "B": "pipeline"}


def test_values_are_kept_as_written() -> None:
    source = yml("""
        name: 010
        steps:
          - name: 1.0
            run: yes
            env: {V: 010, F: yes, T: 12:30, N: ~, X: 1e3, H: 0x1F, D: 2024-01-01, E: , Q: ''}
    """)
    pipeline = load(source)
    step = pipeline.steps[0]
    assert (pipeline.name, step.name, step.run) == ("010", "1.0", "yes")
    assert step.env == {
        "V": "010",
        "F": "yes",
        "T": "12:30",
        "N": "~",
        "X": "1e3",
        "H": "0x1F",
        "D": "2024-01-01",
        "E": "",
        "Q": "",
    }


def test_the_key_on_is_a_string_not_a_boolean() -> None:
    step = load("steps:\n  - run: x\n    env: {on: 1, off: 0, yes: y}\n").steps[0]
    assert step.env == {"on": "1", "off": "0", "yes": "y"}


def test_core_tags_are_allowed_and_change_nothing() -> None:
    step = load("steps:\n  - run: !!str make\n    retry: !!int 2\n    env: !!map {A: !!str 010}\n")
    assert (step.steps[0].run, step.steps[0].retry, step.steps[0].env) == ("make", 2, {"A": "010"})


def test_booleans_accept_true_and_false_in_any_case() -> None:
    step = load(one_step("parallel: True\nallow_failure: FALSE\n")).steps[0]
    assert (step.parallel, step.allow_failure) == (True, False)


def test_merge_keys_share_settings_and_explicit_keys_win() -> None:
    source = yml("""
        steps:
          - &base
            name: A
            run: make a
            env: &env {X: '1', Y: '2'}
            retry: 2
          - <<: *base
            name: B
            env:
              <<: *env
              Y: '3'
          - <<: [{run: first, shell: bash}, {run: second, retry: 1}]
            name: C
    """)
    a, b, c = load(source).steps
    assert (b.name, b.run, b.retry, b.env) == ("B", "make a", 2, {"X": "1", "Y": "3"})
    assert a.env == {"X": "1", "Y": "2"}
    # in `<<: [*a, *b]` the earlier mapping wins, as in the YAML merge spec
    assert (c.run, c.shell, c.retry) == ("first", "bash", 1)


def test_a_later_anchor_may_reuse_a_name() -> None:
    source = "a: &x {run: one}\nsteps:\n  - *x\n  - &x {run: two}\n  - *x\n"
    assert [p.message for p in problems(source)] == ["unknown key 'a'"]
    source = "steps:\n  - &x {run: one}\n  - &x {run: two}\n  - *x\n"
    assert [s.run for s in load(source).steps] == ["one", "two", "two"]


def test_a_utf8_byte_order_mark_is_ignored() -> None:
    assert load(b"\xef\xbb\xbf" + SMALLEST.encode()).steps[0].name == "Install"
    assert load("\ufeff" + SMALLEST).steps[0].name == "Install"


# -- limits that protect the system


def test_file_over_1_mib_is_refused_before_parsing() -> None:
    data = b"steps: [" + b"[" * (MAX_BYTES - 8) + b"\n"
    assert len(data) == MAX_BYTES + 1
    problem = only(data)
    assert at(problem) == (1, 1, "")
    assert problem.message == (
        "the file is 1.0 MiB (1048577 bytes); a pipeline file may be at most 1 MiB (1048576 bytes)"
    )
    assert "1.3 MiB" in only(b" " * int(1.3 * MAX_BYTES)).message


def test_file_of_exactly_1_mib_is_read() -> None:
    data = SMALLEST.encode() + b"#" * (MAX_BYTES - len(SMALLEST))
    assert len(data) == MAX_BYTES
    assert len(load(data).steps) == 3


def test_load_file_checks_the_size_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "big.yml"
    with path.open("wb") as file:
        file.truncate(8 * 1024**3)  # sparse: reading it would take seconds and 8 GiB
    with pytest.raises(PipelineError) as info:
        load_file(path)
    assert str(info.value) == (
        f"{path}:1:1: the file is 8192.0 MiB (8589934592 bytes); "
        "a pipeline file may be at most 1 MiB (1048576 bytes)"
    )


def test_load_file_names_the_file_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".goci.yml").write_text(SMALLEST + "  - run: ''\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PipelineError) as info:
        load_file(".goci.yml")
    assert str(info.value) == (
        ".goci.yml:8:10: steps[3].run: `run` is empty: write the commands this step runs"
    )
    (tmp_path / "ok.yml").write_text(SMALLEST)
    assert load_file(tmp_path / "ok.yml").filename == str(tmp_path / "ok.yml")


def test_billion_laughs_is_refused_fast_without_expanding() -> None:
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in "bcdefghi":  # *i stands for 9**9 "lol"s, about a billion
        previous = chr(ord(level) - 1)
        lines.append(f"{level}: &{level} [" + ", ".join([f"*{previous}"] * 9) + "]")
    source = "\n".join(lines) + "\nsteps: [*i]\n"
    tracemalloc.start()
    started = time.perf_counter()
    try:
        problem = only(source)
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < 0.5
    assert peak < 2_000_000  # bytes: nothing was expanded
    # *f (in g's list) is the first alias that alone stands for more than the bound
    assert at(problem) == (7, 8, "")
    assert problem.message == (
        "YAML aliases expand to more than 100000 nodes (billion laughs?); "
        "'*f' alone stands for more than 100000 nodes"
    )


def test_aliases_within_the_bound_are_fine() -> None:
    source = "e: &e {A: '1'}\nsteps:\n" + "  - {run: x, env: *e}\n" * 500
    assert only(source).message == "unknown key 'e'"


def test_recursive_alias_is_refused() -> None:
    problem = only("steps: &s\n  - run: x\n    env: *s\n")
    assert at(problem) == (3, 10, "")
    assert problem.message == "recursive alias '*s': a node cannot contain itself"


def test_unknown_alias_is_refused() -> None:
    problem = only("steps:\n  - run: x\n    env: *missing\n")
    assert at(problem) == (3, 10, "")
    assert problem.message == "unknown alias '*missing': define '&missing' before using it"


def test_nesting_deeper_than_64_is_refused_where_it_happens() -> None:
    deepest_allowed = "x: " + "[" * 63 + "]" * 63 + "\n"  # the top mapping is level 1
    assert problems(deepest_allowed)[0].message == "unknown key 'x'"
    problem = only("x: " + "[" * 64 + "]" * 64 + "\n")
    assert at(problem) == (1, 67, "")
    assert problem.message == "the YAML is nested more than 64 levels deep"


def test_nesting_through_aliases_counts_too() -> None:
    source = "a: &a " + "[" * 40 + "]" * 40 + "\nb: " + "[" * 30 + "*a" + "]" * 30 + "\n"
    problem = only(source)
    assert at(problem) == (2, 34, "")
    assert problem.message == "YAML alias '*a' nests the document more than 64 levels deep"


def test_deep_nesting_is_refused_without_recursion_error() -> None:
    assert "nested more than 64" in only("[" * 100_000).message


def test_too_many_nodes_are_refused_while_reading() -> None:
    problem = only("x: [" + "1, " * 100_001 + "]\n")
    # node 100001 is item 99998 (the mapping, 'x' and the list come first)
    assert at(problem) == (1, 5 + 3 * 99_997, "")
    assert problem.message == "the YAML has more than 100000 nodes; a pipeline needs far fewer"


def test_500_steps_are_fine_and_501_are_refused() -> None:
    assert len(load("steps:\n" + "  - run: x\n" * 500).steps) == 500
    problem = only("steps:\n" + "  - run: x\n" * 501)
    assert at(problem) == (2, 3, "steps")
    assert problem.message == "too many steps (501); a pipeline may have at most 500"


def test_invalid_utf8_names_the_byte_offset_line_and_column() -> None:
    data = "steps:\n  - run: echo é\n".encode() + b"    name: caf\xe9\n"
    problem = only(data)
    assert data.index(b"\xe9") == 37  # the é on line 2 takes two bytes
    assert at(problem) == (3, 14, "")
    assert (
        problem.message == "not valid UTF-8 at byte 37 (line 3, column 14); save the file as UTF-8"
    )


def test_invalid_utf8_after_a_bom_counts_the_bom_bytes() -> None:
    assert only(b"\xef\xbb\xbfa: \xff").message.startswith(
        "not valid UTF-8 at byte 6 (line 1, column 4)"
    )


def test_a_lone_surrogate_in_text_is_invalid_utf8() -> None:
    assert only("steps: \ud800").message.startswith("not valid UTF-8 at byte 7 (line 1, column 8)")


def test_control_characters_are_refused() -> None:
    problem = only("steps:\n  - run: é\x07\n")
    assert at(problem) == (2, 11, "")  # columns count characters, not bytes
    assert problem.message == "the character U+0007 is not allowed in YAML; remove it"


def test_python_tags_are_refused_and_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    source = yml(f"""
        steps:
          - run: !!python/object/apply:os.system ["touch {marker}"]
          - !!python/name:os.system
          - run: x
            env: {{A: !reference [a, b]}}
    """)
    found = problems(source)
    assert not marker.exists()
    assert [(at(p), p.message) for p in found] == [
        (
            (2, 10, "steps[0].run"),
            "unsupported tag '!!python/object/apply:os.system': Goci reads plain YAML; "
            "remove the tag",
        ),
        (
            (3, 5, "steps[1]"),
            "unsupported tag '!!python/name:os.system': Goci reads plain YAML; remove the tag",
        ),
        (
            (5, 14, "steps[2].env.A"),
            "unsupported tag '!reference': Goci reads plain YAML; remove the tag",
        ),
    ]


def test_other_yaml_tags_are_refused_too() -> None:
    problem = only(one_step("env: {A: !!binary aGVsbG8=}"))
    assert at(problem) == (3, 14, "steps[0].env.A")
    assert problem.message == "unsupported tag '!!binary': Goci reads plain YAML; remove the tag"


# -- documents that are not a pipeline at all


@pytest.mark.parametrize("source", ["", "   \n\n", "# only a comment\n", "---\n", "--- # c\n...\n"])
def test_empty_file(source: str) -> None:
    problem = only(source)
    assert at(problem) == (1, 1, "")
    assert problem.message == "the file is empty: a pipeline needs `steps:`"


def test_several_documents_are_refused_and_the_first_is_still_checked() -> None:
    found = problems("steps:\n  - run: ''\n---\nsteps: []\n")
    assert [(at(p), p.message) for p in found] == [
        ((2, 10, "steps[0].run"), "`run` is empty: write the commands this step runs"),
        ((3, 1, ""), "expected one YAML document, found several (a second one starts here)"),
    ]


@pytest.mark.parametrize(
    ("source", "found"),
    [("- run: x\n", "a list"), ("make\n", "'make'"), ("'steps'\n", "'steps'")],
)
def test_top_level_must_be_a_mapping(source: str, found: str) -> None:
    problem = only(source)
    assert at(problem) == (1, 1, "")
    assert problem.message == f"the top level must be a mapping with `steps:`, found {found}"


def test_yaml_syntax_error_is_one_problem_at_its_place() -> None:
    problem = only("steps:\n  - run: a\n   name: b\n")
    assert at(problem) == (3, 4, "")
    assert problem.message.startswith("invalid YAML: ")


def test_yaml_syntax_error_in_a_value_explains_the_colon() -> None:
    problem = only("steps:\n  - run: echo a: b\n")
    assert at(problem) == (2, 16, "")
    assert "quote a value that contains ': '" in problem.message


def test_tab_indentation_is_explained() -> None:
    problem = only("steps:\n\t- run: a\n")
    assert at(problem) == (2, 1, "")
    assert problem.message == "invalid YAML: found a tab character; indent YAML with spaces"


def test_pyyaml_parser_is_used_when_libyaml_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline_module, "_parser", pipeline_module._PyParser)
    assert plan(load(PARALLEL))["Package"] == ("Test Backend", "Test Frontend")
    assert at(only("steps:\n  - run: a\n   name: b\n")) == (3, 4, "")
    assert only("steps:\n\t- run: a\n").message.endswith("indent YAML with spaces")
    assert only("---\n").message == "the file is empty: a pipeline needs `steps:`"
    assert "unsupported tag '!reference'" in only(one_step("env: !reference [a]")).message


# -- keys


def test_duplicate_key_names_both_lines() -> None:
    problem = only("steps:\n  - name: a\n    run: one\n    run: two\n")
    assert at(problem) == (4, 5, "steps[0].run")
    assert problem.message == "duplicate key 'run' (first defined on line 3)"


def test_duplicate_keys_are_found_in_any_mapping() -> None:
    found = problems("x:\n  y: 1\n  y: 2\nsteps:\n  - run: a\n    env: {A: '1', A: '2'}\n")
    assert [(at(p), p.message) for p in found] == [
        ((1, 1, ""), "unknown key 'x'"),
        ((3, 3, "x.y"), "duplicate key 'y' (first defined on line 2)"),
        ((6, 19, "steps[0].env.A"), "duplicate key 'A' (first defined on line 6)"),
    ]


def test_a_key_overriding_a_merged_key_is_not_a_duplicate() -> None:
    step = load("steps:\n  - &a {run: one}\n  - <<: *a\n    run: two\n").steps[1]
    assert step.run == "two"


def test_merging_a_list_of_strings_is_an_error_at_the_merge_key() -> None:
    source = "l: &l [a, b]\nsteps:\n  - run: x\n    env:\n      <<: *l\n"
    found = problems(source)
    assert [(at(p), p.message) for p in found][1] == (
        (5, 7, "steps[0].env"),
        "'<<' merges mappings only, found 'a' (YAML merge keys cannot splice lists)",
    )


def test_a_key_must_be_a_plain_name() -> None:
    problem = problems("steps:\n  - run: x\n    ? [a, b]\n    : c\n")[0]
    assert at(problem) == (3, 7, "steps[0]")
    assert problem.message == "a key must be a name, found a list"


def test_unknown_key_suggests_the_closest_known_key() -> None:
    source = "steps:\n  - {run: a}\n  - {run: b}\n  - run: c\n    neds: [a]\nstesp: []\n"
    found = problems(source)
    assert [(at(p), p.message) for p in found] == [
        ((5, 5, "steps[2]"), "unknown key 'neds' (did you mean 'needs'?)"),
        ((6, 1, ""), "unknown key 'stesp' (did you mean 'steps'?)"),
    ]
    assert str(found[0]) == "p.yml:5:5: steps[2]: unknown key 'neds' (did you mean 'needs'?)"


def test_unknown_key_far_from_any_known_key_has_no_suggestion() -> None:
    assert only(one_step("zzz: 1")).message == "unknown key 'zzz'"


@pytest.mark.parametrize(
    ("key", "hint"),
    [
        ("depends_on", "Goci calls this 'needs'"),
        ("commands", "Goci calls this 'run', one script with a command per line"),
        ("script", "Goci calls this 'run', one script with a command per line"),
        ("variables", "Goci calls this 'env'"),
        ("container", "Goci calls this 'image'"),
        ("allow_failures", "Goci calls this 'allow_failure'"),
        ("failure", "for `failure: ignore` write `allow_failure: true`"),
        ("working_directory", "Goci calls this 'workdir'"),
        ("rules", "use 'when' with 'branch' and 'event'"),
    ],
)
def test_step_keys_from_other_ci_systems_get_a_hint(key: str, hint: str) -> None:
    problem = only(one_step(f"{key}: x"))
    assert at(problem) == (3, 5, "steps[0]")
    assert problem.message == f"unknown key {key!r} ({hint})"


def test_pipeline_key_from_older_woodpecker_gets_a_hint() -> None:
    found = problems("pipeline:\n  build:\n    commands: [make]\n")
    assert [(at(p), p.message) for p in found] == [
        ((1, 1, ""), "unknown key 'pipeline' (Goci calls this 'steps', a list of steps)"),
        ((1, 1, ""), "missing key 'steps': a pipeline needs a list of steps to run"),
    ]


@pytest.mark.parametrize("key", ["services", "secrets", "artifacts", "cache", "jobs", "on", "if"])
def test_reserved_keys_are_not_supported_yet_at_both_levels(key: str) -> None:
    found = problems(f"{key}: x\nsteps:\n  - run: make\n    {key}: x\n")
    expected = f"{key!r} is not supported yet (reserved for a later version of the format)"
    assert [(at(p), p.message) for p in found] == [
        ((1, 1, ""), expected),
        ((4, 5, "steps[0]"), expected),
    ]


# -- steps


def test_missing_steps() -> None:
    problem = only("name: x\n")
    assert at(problem) == (1, 1, "")
    assert problem.message == "missing key 'steps': a pipeline needs a list of steps to run"


@pytest.mark.parametrize(
    ("source", "column", "message"),
    [
        ("steps: []\n", 8, "the list of steps is empty: a pipeline needs at least one step"),
        ("steps:\n", 7, "expected a list of steps, found nothing"),
        ("steps: make\n", 8, "expected a list of steps, found 'make'"),
    ],
)
def test_steps_must_be_a_non_empty_list(source: str, column: int, message: str) -> None:
    problem = only(source)
    assert at(problem) == (1, column, "steps")
    assert problem.message == message


def test_steps_as_a_mapping_ask_for_a_list() -> None:
    problem = only("steps:\n  build:\n    run: make\n")
    assert at(problem) == (2, 3, "steps")
    assert problem.message == (
        "expected a list of steps, found a mapping (write each step as a list item: `- name: ...`)"
    )


def test_a_step_must_be_a_mapping_with_run() -> None:
    found = problems("steps:\n  - make\n  - name: x\n  - run: '  '\n  - run:\n")
    assert [(at(p), p.message) for p in found] == [
        ((2, 5, "steps[0]"), "expected a step (a mapping with `run:`), found 'make'"),
        (
            (3, 5, "steps[1]"),
            "missing key 'run': the commands this step runs (or `build:`, an image to build, "
            "or `ssh:`, a script to run on another machine)",
        ),
        ((4, 10, "steps[2].run"), "`run` is empty: write the commands this step runs"),
        ((5, 9, "steps[3].run"), "`run` is empty: write the commands this step runs"),
    ]


@pytest.mark.parametrize(
    ("value", "line", "column", "found"),
    [
        ("{a: b}", 3, 11, "a mapping"),
        ("[a, b]", 3, 11, "a list"),
        ("\n      a: b", 4, 7, "a mapping"),
    ],
)
def test_a_string_is_expected_where_a_string_is_written(
    value: str, line: int, column: int, found: str
) -> None:
    problem = only(f"steps:\n  - run: make\n    name: {value}\n")
    assert at(problem) == (line, column, "steps[0].name")
    assert problem.message == f"expected a string, found {found}"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("''", "the name is empty"),
        ('"a\\nb"', "a name must fit on one line"),
        ("x" * 101, "a name may be at most 100 characters, this one has 101"),
    ],
)
def test_step_name_rules(value: str, message: str) -> None:
    problem = only(one_step(f"name: {value}"))
    assert at(problem) == (3, 11, "steps[0].name")
    assert problem.message == message


def test_pipeline_name_and_image_must_not_be_empty() -> None:
    found = problems("name: ''\nimage: ''\nsteps:\n  - run: x\n    image: ' '\n")
    assert [(at(p), p.message) for p in found] == [
        ((1, 7, "name"), "the name is empty"),
        ((2, 8, "image"), "the image is empty: name one such as golang:1.22, or remove `image:`"),
        (
            (5, 12, "steps[0].image"),
            "the image is empty: name one such as golang:1.22, or remove `image:`",
        ),
    ]


@pytest.mark.parametrize("value", ["yes", "no", "1", "0", "on", "y", "'t'"])
def test_booleans_accept_only_true_or_false(value: str) -> None:
    problem = only(one_step(f"parallel: {value}"))
    assert at(problem) == (3, 15, "steps[0].parallel")
    assert problem.message == f"expected true or false, found {value.strip(chr(39))!r}"


def test_allow_failure_is_a_boolean_too() -> None:
    problem = only(one_step("allow_failure: [true]"))
    assert at(problem) == (3, 20, "steps[0].allow_failure")
    assert problem.message == "expected true or false, found a list"


@pytest.mark.parametrize("value", ["0", "5", "05"])
def test_retry_from_0_to_5(value: str) -> None:
    assert load(one_step(f"retry: {value}")).steps[0].retry == int(value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("6", "retry may be at most 5, found 6"),
        ("99999999999999999999", "retry may be at most 5, found 99999999999999999999"),
        ("-1", "expected a whole number from 0 to 5, found '-1'"),
        ("1.5", "expected a whole number from 0 to 5, found '1.5'"),
        ("0x3", "expected a whole number from 0 to 5, found '0x3'"),
        ("three", "expected a whole number from 0 to 5, found 'three'"),
    ],
)
def test_retry_out_of_range_or_not_a_number(value: str, message: str) -> None:
    problem = only(one_step(f"retry: {value}"))
    assert at(problem) == (3, 12, "steps[0].retry")
    assert problem.message == message


@pytest.mark.parametrize("value", ["sh", "bash", "/bin/zsh", "pwsh"])
def test_shell_is_one_word(value: str) -> None:
    assert load(one_step(f"shell: {value}")).steps[0].shell == value


def test_shell_with_spaces_is_refused() -> None:
    problem = only(one_step("shell: bash -x"))
    assert at(problem) == (3, 12, "steps[0].shell")
    assert problem.message == "the shell must be one word such as 'sh' or 'bash', found 'bash -x'"


@pytest.mark.parametrize("value", ["src", "./src/app", "a/../b", "a/b/../..", ".", "a//b/"])
def test_workdir_inside_the_workspace(value: str) -> None:
    assert load(one_step(f"workdir: {value}")).steps[0].workdir == value


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("/src", "workdir must be relative to the workspace, found '/src'"),
        ("'C:\\src'", "workdir must be relative to the workspace, found 'C:\\\\src'"),
        ("..", "workdir '..' leaves the workspace"),
        ("a/../../b", "workdir 'a/../../b' leaves the workspace"),
        ("./../x", "workdir './../x' leaves the workspace"),
        ("''", "workdir is empty; remove it to run in the workspace itself"),
    ],
)
def test_workdir_must_not_escape_the_workspace(value: str, message: str) -> None:
    problem = only(one_step(f"workdir: {value}"))
    assert at(problem) == (3, 14, "steps[0].workdir")
    assert problem.message == message


def test_env_must_be_a_mapping_of_names_to_strings() -> None:
    source = (
        one_step("env:\n  - A=1\n") + "  - run: x\n    env: {A: {from_secret: token}, B: [1]}\n"
    )
    found = problems(source)
    assert [(at(p), p.message) for p in found] == [
        ((4, 7, "steps[0].env"), "expected a mapping of NAME: value, found a list"),
        ((6, 39, "steps[1].env.B"), "expected a string or {from_secret: name}, found a list"),
    ]


@pytest.mark.parametrize("name", ["1A", "A-B", "A B", "É", "''"])
def test_env_names_are_shell_names(name: str) -> None:
    problem = only(f"env:\n  {name}: x\nsteps:\n  - run: x\n")
    assert at(problem) == (2, 3, f"env.{name.strip(chr(39))}")
    assert problem.message == (
        f"invalid variable name {name.strip(chr(39))!r}: "
        "use letters, digits and _, not starting with a digit"
    )


@pytest.mark.parametrize("name", ["CI", "GOCI", "GOCI_WORKSPACE", "GOCI_ANYTHING"])
def test_env_names_set_by_goci_are_reserved(name: str) -> None:
    problem = only(one_step(f"env: {{{name}: x}}"))
    assert at(problem) == (3, 11, f"steps[0].env.{name}")
    assert problem.message == f"{name!r} is set by Goci; choose another name"


def test_env_names_close_to_reserved_ones_are_fine() -> None:
    step = load(one_step("env: {ci: x, GOCIX: y, MY_GOCI_X: z, _: w}")).steps[0]
    assert step.env == {"ci": "x", "GOCIX": "y", "MY_GOCI_X": "z", "_": "w"}


# -- durations


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("10m", 600), ("1h", 3600), ("1h30m", 5400), ("2h5m10s", 7510), ("0h1s", 1)],
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("90", "the duration '90' has no unit; write 90s, 90m or 90h"),
        ("0s", "the duration '0s' is zero; write e.g. 90s, 10m, 1h or 1h30m"),
        ("0h0m", "the duration '0h0m' is zero; write e.g. 90s, 10m, 1h or 1h30m"),
        ("-5m", "the duration '-5m' is negative; write e.g. 90s, 10m, 1h or 1h30m"),
        ("", "the duration is empty; write e.g. 90s, 10m, 1h or 1h30m"),
        ("1.5h", "invalid duration '1.5h'; write e.g. 90s, 10m, 1h or 1h30m"),
        ("10 m", "invalid duration '10 m'; write e.g. 90s, 10m, 1h or 1h30m"),
        ("30m1h", "invalid duration '30m1h'; write e.g. 90s, 10m, 1h or 1h30m"),
        ("10M", "invalid duration '10M'; write e.g. 90s, 10m, 1h or 1h30m"),
        ("1d", "invalid duration '1d'; write e.g. 90s, 10m, 1h or 1h30m"),
        ("10m\n", "invalid duration '10m\\n'; write e.g. 90s, 10m, 1h or 1h30m"),
    ],
)
def test_parse_duration_refuses_with_a_clear_message(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_duration(text)


def test_parse_duration_refuses_huge_numbers_without_crashing() -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration("9" * 5000 + "s")


def test_bad_timeouts_are_reported_with_the_duration_message() -> None:
    found = problems(
        "timeout: 90\nsteps:\n  - run: x\n    timeout: {m: 1}\n  - run: y\n    timeout: 0m\n"
    )
    assert [(at(p), p.message) for p in found] == [
        ((1, 10, "timeout"), "the duration '90' has no unit; write 90s, 90m or 90h"),
        ((4, 14, "steps[0].timeout"), "expected a duration, found a mapping"),
        (
            (6, 14, "steps[1].timeout"),
            "the duration '0m' is zero; write e.g. 90s, 10m, 1h or 1h30m",
        ),
    ]


# -- when


def test_when_with_one_name_or_a_list() -> None:
    step = load(one_step("when: {branch: main, event: [push, tag]}")).steps[0]
    assert step.when == When(branch=("main",), event=("push", "tag"))
    assert step.when.matches(branch="main", event="tag")
    assert not step.when.matches(branch="dev", event="push")


def test_when_event_must_be_known() -> None:
    problem = only(one_step("when:\n  event: [push, pull-request]\n"))
    assert at(problem) == (4, 21, "steps[0].when.event[1]")
    assert problem.message == (
        "unknown event 'pull-request' (did you mean 'pull_request'?; "
        "events are push, pull_request, tag, manual, cron, api)"
    )


@pytest.mark.parametrize(
    ("value", "column", "path", "message"),
    [
        (
            "{}",
            11,
            "when",
            "`when` has no conditions: give `branch`, `event` and/or `path`, or remove it",
        ),
        ("", 10, "when", "expected a mapping with `branch`, `event` and/or `path`, found nothing"),
        (
            "[{event: push}]",
            11,
            "when",
            "expected a mapping with `branch`, `event` and/or `path`, found a list "
            "(write one mapping; a condition takes a list of alternatives: `event: [push, tag]`)",
        ),
        (
            "{branch: []}",
            20,
            "when.branch",
            "the list is empty, so it would never match; remove it",
        ),
        ("{branch: }", 20, "when.branch", "expected a name or a list of names, found nothing"),
        ("{branch: [[main]]}", 21, "when.branch[0]", "expected a name, found a list"),
        (
            "{paht: docs/*}",
            12,
            "when",
            "unknown key 'paht' (did you mean 'path'?)",
        ),
        (
            "{status: failure}",
            12,
            "when",
            "unknown key 'status' (when supports only 'branch', 'event' and 'path')",
        ),
        ("{evnt: push}", 12, "when", "unknown key 'evnt' (did you mean 'event'?)"),
    ],
)
def test_when_problems(value: str, column: int, path: str, message: str) -> None:
    problem = only(one_step(f"when: {value}"))
    assert at(problem) == (3, column, f"steps[0].{path}")
    assert problem.message == message


# -- the DAG


def test_duplicate_step_name_points_at_the_first_one() -> None:
    source = "steps:\n  - run: a\n  - name: Test\n    run: b\n  - name: Test\n    run: c\n"
    problem = only(source)
    assert at(problem) == (5, 11, "steps[2].name")
    assert problem.message == "duplicate step name 'Test' (first used by steps[1] on line 3)"


def test_default_names_count_for_uniqueness() -> None:
    problem = only("steps:\n  - run: a\n  - run: b\n  - name: step 2\n    run: c\n")
    assert at(problem) == (4, 11, "steps[2].name")
    assert problem.message == "duplicate step name 'step 2' (first used by steps[1] on line 3)"


def test_needs_naming_an_unknown_step_suggests_the_closest() -> None:
    source = "steps:\n  - name: Build\n    run: a\n  - run: b\n    needs: [Build, Buld, zzz]\n"
    found = problems(source)
    assert [(at(p), p.message) for p in found] == [
        ((5, 20, "steps[1].needs[1]"), "unknown step 'Buld' in needs (did you mean 'Build'?)"),
        ((5, 26, "steps[1].needs[2]"), "unknown step 'zzz' in needs"),
    ]


def test_a_step_cannot_need_itself() -> None:
    problem = only("steps:\n  - name: a\n    run: x\n    needs: a\n")
    assert at(problem) == (4, 12, "steps[0].needs")
    assert problem.message == "a step cannot need itself"


def test_needs_must_be_names() -> None:
    problem = only(one_step("needs: {a: b}"))
    assert at(problem) == (3, 12, "steps[0].needs")
    assert problem.message == "expected a name or a list of names, found a mapping"


def test_cycle_through_explicit_needs_is_reported_at_its_first_step() -> None:
    source = yml("""
        steps:
          - {name: A, run: x, needs: [B]}
          - {name: B, run: x, needs: [A]}
    """)
    problem = only(source)
    assert at(problem) == (2, 5, "steps[0]")
    assert problem.message == "cycle: A -> B -> A"


def test_cycle_mixing_a_forward_need_and_implicit_order() -> None:
    source = yml("""
        steps:
          - {name: Setup, run: x}
          - {name: Test, run: x, needs: Deploy}
          - {name: Deploy, run: x}
    """)
    problem = only(source)
    assert at(problem) == (3, 5, "steps[1]")
    assert problem.message == "cycle: Test -> Deploy -> Test"


def test_each_cycle_is_one_problem() -> None:
    source = yml("""
        steps:
          - {name: a, run: x, needs: [b]}
          - {name: b, run: x, needs: [a]}
          - {name: c, run: x, needs: [d]}
          - {name: d, run: x, needs: [e]}
          - {name: e, run: x, needs: [c]}
          - {name: f, run: x, needs: []}
    """)
    assert [p.message for p in problems(source)] == [
        "cycle: a -> b -> a",
        "cycle: c -> d -> e -> c",
    ]


# -- many problems at once


def test_several_problems_are_reported_at_once_in_file_order() -> None:
    source = yml("""
        timeout: soon
        steps:
          - name: Build
            run: make
            retry: 9
          - name: Test
            run: make test
            parallel: yes
            needs: [Biuld]
          - name: Ship
            commands: [make ship]
            env: {GOCI_TOKEN: x}
    """)
    found = problems(source)
    assert [str(p) for p in found] == [
        "p.yml:1:10: timeout: invalid duration 'soon'; write e.g. 90s, 10m, 1h or 1h30m",
        "p.yml:5:12: steps[0].retry: retry may be at most 5, found 9",
        "p.yml:8:15: steps[1].parallel: expected true or false, found 'yes'",
        "p.yml:9:13: steps[1].needs[0]: unknown step 'Biuld' in needs (did you mean 'Build'?)",
        "p.yml:10:5: steps[2]: missing key 'run': the commands this step runs "
        "(or `build:`, an image to build, or `ssh:`, a script to run on another machine)",
        "p.yml:11:5: steps[2]: unknown key 'commands' "
        "(Goci calls this 'run', one script with a command per line)",
        "p.yml:12:11: steps[2].env.GOCI_TOKEN: 'GOCI_TOKEN' is set by Goci; choose another name",
    ]
    assert str(PipelineError(found)) == "\n".join(str(p) for p in found)


def test_a_step_with_a_wrong_name_does_not_cause_unknown_step_noise() -> None:
    source = "steps:\n  - name: [Build]\n    run: a\n  - run: b\n    needs: Build\n"
    assert [p.message for p in problems(source)] == ["expected a string, found a list"]


# -- the JSON schema


def test_json_schema_is_draft_07_and_serialisable() -> None:
    schema: Any = json_schema()  # JSON: nested dicts of any shape
    assert json.loads(json.dumps(schema)) == schema
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["steps"]


def test_json_schema_keys_are_the_keys_the_validator_knows() -> None:
    schema: Any = json_schema()  # JSON: nested dicts of any shape
    properties = schema["properties"]
    step = schema["definitions"]["step"]
    when = schema["definitions"]["when"]
    # secret_env: what env: {X: {from_secret: y}} becomes, not a key of its own;
    # clone_depth: what clone: {depth: N} becomes; matrix_may_fail: what
    # matrix: {allow_failure: [...]} becomes.
    step_fields = {f.name for f in dataclasses.fields(Step)} - {"index", "secret_env"}
    pipeline_fields = {f.name for f in dataclasses.fields(Pipeline)} - {
        "filename",
        "secret_env",
        "clone_depth",
        "matrix_may_fail",
    }
    assert set(step["properties"]) == step_fields
    assert set(properties) == pipeline_fields
    assert set(when["properties"]) == {f.name for f in dataclasses.fields(When)}
    for table in (properties, step["properties"], when["properties"]):
        for key, value in table.items():
            assert value["description"], key
    assert step["additionalProperties"] is False
    assert when["additionalProperties"] is False
    assert step["oneOf"] == [
        {"required": ["run"]},
        {"required": ["build"]},
        {"required": ["ssh"]},
    ]


def test_every_key_in_the_schema_is_accepted_by_the_validator() -> None:
    schema: Any = json_schema()  # JSON: nested dicts of any shape
    step_keys = schema["definitions"]["step"]["properties"]
    valid = {
        "name": "x",
        "run": "x",
        "shell": "bash",
        "image": "alpine",
        "parallel": "true",
        "needs": "[]",
        "env": "{A: b}",
        "workdir": "src",
        "timeout": "1m",
        "retry": "1",
        "allow_failure": "false",
        "when": "{event: push}",
        "environment": "{name: production, url: 'https://app.example.com'}",
    }
    # `build` and `ssh` replace `run`, `shell`, `image` and `workdir`:
    # tests/test_pipeline_build.py and tests/test_pipeline_ssh.py.
    assert set(valid) | {"build", "ssh"} == set(step_keys)
    source = "steps:\n  - " + "\n    ".join(f"{k}: {v}" for k, v in valid.items()) + "\n"
    assert load(source).steps[0].name == "x"
    for key in ("name", "image", "env", "timeout"):
        load(f"{key}: {valid[key]}\nsteps:\n  - run: x\n")


def test_json_schema_limits_match_the_validator() -> None:
    schema: Any = json_schema()  # JSON: nested dicts of any shape
    properties = schema["properties"]
    step = schema["definitions"]["step"]["properties"]
    when = schema["definitions"]["when"]["properties"]
    steps = properties["steps"]
    assert (steps["minItems"], steps["maxItems"]) == (1, 500)
    assert (step["retry"]["minimum"], step["retry"]["maximum"]) == (0, 5)
    assert when["event"]["anyOf"][0]["enum"] == list(EVENTS)
    assert step["needs"]["anyOf"][1]["type"] == "array"  # a name or a list of names
    pattern = re.compile(step["timeout"]["pattern"])
    for text in ("90s", "10m", "1h", "1h30m", "2h5m10s"):
        assert pattern.search(text), text
    for text in ("90", "1.5h", "30m1h", "-5m"):
        assert not pattern.search(text), text


def test_json_schema_can_be_changed_by_the_caller_without_harm() -> None:
    first: Any = json_schema()
    first["definitions"]["step"]["properties"]["run"]["type"] = "nonsense"
    assert json_schema() != first
