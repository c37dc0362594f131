"""`inputs:` of a pipeline and `environment:` of a step: what is read, what is refused
and how, and the values check_inputs makes of what a run gives."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from builds.pipeline import (
    DeployTarget,
    Input,
    InputsError,
    PipelineError,
    check_inputs,
    input_variable,
    json_schema,
    load,
)
from tests.helpers import goci

INPUTS = """\
inputs:
  version: {type: string, default: latest, description: The tag, required: true}
  level: {type: choice, options: [low, high], default: low}
  dry-run: {type: boolean, default: false}
  note:
steps:
  - run: echo
"""


def problems(text: str) -> list[str]:
    with pytest.raises(PipelineError) as caught:
        load(text)
    return [f"{p.path}: {p.message}" for p in caught.value.problems]


def test_inputs_are_read_with_their_declaration() -> None:
    assert load(INPUTS).inputs == (
        Input("version", "string", "latest", "The tag", required=True),
        Input("level", "choice", "low", options=("low", "high")),
        Input("dry-run", "boolean", "false"),
        Input("note"),
    )
    assert input_variable("dry-run") == "GOCI_INPUT_DRY_RUN"


@pytest.mark.parametrize(
    ("inputs", "expected"),
    [
        ("a: {type: chioce}", "inputs.a.type: unknown input type 'chioce'"),
        ("a: {type: choice}", "inputs.a: missing key 'options'"),
        ("a: {options: [x]}", "inputs.a: `options` are for `type: choice`"),
        ("a: {type: boolean, default: yes}", "inputs.a.default: a boolean's default"),
        ("a: {type: choice, options: [x], default: y}", "inputs.a.default: the default 'y'"),
        ("a: {colour: red}", "inputs.a: unknown key 'colour' (an input takes only type"),
        ("1a: {}", "inputs.1a: invalid input name '1a'"),
        ("{a: {}, A: {}}", "inputs.A: 'A' and 'a' would both be GOCI_INPUT_A"),
        ("[a, b]", "inputs: expected a mapping of NAME: {type, ...}, found a list"),
    ],
)
def test_a_wrong_declaration_is_named(inputs: str, expected: str) -> None:
    found = problems(f"inputs:\n  {inputs}\nsteps:\n  - run: x\n")
    assert any(problem.startswith(expected) for problem in found), found


def test_too_many_inputs_are_refused() -> None:
    many = "".join(f"  i{n}: {{}}\n" for n in range(51))
    assert problems(f"inputs:\n{many}steps:\n  - run: x\n") == [
        "inputs: too many inputs (51); a pipeline may have at most 50"
    ]


def test_check_inputs_fills_defaults_and_names_every_problem() -> None:
    pipeline = load(INPUTS)
    assert check_inputs(pipeline, {"version": "v1", "dry-run": True}) == {
        "version": "v1",
        "level": "low",
        "dry-run": "true",
        "note": "",
    }
    with pytest.raises(InputsError) as caught:
        check_inputs(
            pipeline,
            {"version": "", "level": "mid", "dry-run": 1, "note": "a\0b", "colour": "x"},
        )
    assert caught.value.problems == [
        ("colour", "unknown input (the pipeline declares version, level, dry-run, note)"),
        ("level", "'mid' is not one of low, high"),
        ("dry-run", "expected true or false"),
        ("note", "a value cannot hold a NUL character"),
    ]


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("\ud800", "not valid text (a lone surrogate)"),
        ("x" * 10_001, "at most 10000 characters, found 10001"),
        (10**30, "expected a string"),
        (["a"], "expected a string"),
    ],
)
def test_hostile_values_are_refused(value: Any, problem: str) -> None:
    with pytest.raises(InputsError) as caught:
        check_inputs(load(INPUTS), {"version": "v", "note": value})
    assert caught.value.problems == [("note", problem)]


def test_a_required_input_without_default_must_be_given() -> None:
    pipeline = load("inputs:\n  who: {required: true}\nsteps:\n  - run: x\n")
    with pytest.raises(InputsError) as caught:
        check_inputs(pipeline, {})
    assert caught.value.problems == [("who", "required: give a value")]


def test_environment_of_a_step() -> None:
    pipeline = load(
        "steps:\n"
        "  - name: a\n    environment: production\n    run: x\n"
        "  - name: b\n    environment: {name: production, url: 'https://app.example.com'}\n"
        "    run: x\n"
        "  - name: c\n    environment: {name: staging}\n    run: x\n"
    )
    assert [step.environment for step in pipeline.steps] == [
        DeployTarget("production"),
        DeployTarget("production", "https://app.example.com"),
        DeployTarget("staging"),
    ]
    assert pipeline.environments() == {"production": "https://app.example.com", "staging": ""}


@pytest.mark.parametrize(
    ("environment", "expected"),
    [
        # Drone's and GitLab's step `environment:` holds variables: Goci's is `env`.
        (
            "{FOO: bar}",
            "steps[0].environment: unknown key 'FOO' (`environment` names where the step "
            "deploys, {name, url}; the step's variables are `env`)",
        ),
        ("{url: 'https://x'}", "steps[0].environment: missing key 'name'"),
        ("'a b'", "steps[0].environment: invalid environment name 'a b'"),
        ("{name: p, url: 'ftp://x'}", "steps[0].environment.url: expected an http:// or"),
        ("[a]", "steps[0].environment: expected a name or {name, url}, found a list"),
    ],
)
def test_a_wrong_environment_is_named(environment: str, expected: str) -> None:
    found = problems(f"steps:\n  - run: x\n    environment: {environment}\n")
    assert any(problem.startswith(expected) for problem in found), found


def test_the_schema_describes_inputs_and_environment() -> None:
    schema: Any = json_schema()
    assert "inputs" in schema["properties"]
    assert set(schema["definitions"]["input"]["properties"]) == {
        "type",
        "default",
        "description",
        "required",
        "options",
    }
    assert schema["definitions"]["environment"]["required"] == ["name"]


def test_goci_run_takes_inputs_and_checks_them(tmp_path: Path) -> None:
    (tmp_path / ".goci.yml").write_text(
        "inputs:\n  version: {default: latest}\n  dry-run: {type: boolean, default: false}\n"
        'steps:\n  - run: echo "v=$GOCI_INPUT_VERSION dry=$GOCI_INPUT_DRY_RUN"\n'
    )
    given = goci("run", "--input", "version=v2", "--input", "dry-run=true", cwd=tmp_path)
    assert given.returncode == 0, given.stderr
    assert "v=v2 dry=true" in given.stdout
    defaults = goci("run", cwd=tmp_path)
    assert "v=latest dry=false" in defaults.stdout
    wrong = goci("run", "--input", "dry-run=maybe", "--input", "x=1", cwd=tmp_path)
    assert wrong.returncode == 2
    assert wrong.stderr.strip() == (
        "goci: --input x: unknown input (the pipeline declares version, dry-run); "
        "--input dry-run: expected true or false"
    )
