"""Real pipeline files of other CI systems (shared/corpus): never a crash, clear errors.

None of them is a Goci pipeline, so each must fail with a PipelineError; the
interesting part is which problems it reports. See corpus/pipelines/README.md.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from builds.pipeline import PipelineError, Problem, load

# Copied byte-for-byte from the team's shared corpus (sources in its README files), so
# that a clean clone tests against it wherever it runs.
CORPUS = Path(__file__).resolve().parent / "corpus"
PIPELINES = CORPUS / "pipelines"
FILES = sorted(p.relative_to(PIPELINES).as_posix() for p in PIPELINES.rglob("*.yml"))


def pipelines() -> Path:
    assert PIPELINES.is_dir(), f"the test corpus is missing: {PIPELINES}"
    return PIPELINES


def problems_of(name: str) -> list[Problem]:
    data = (pipelines() / name).read_bytes()
    with pytest.raises(PipelineError) as info:
        load(data, name)
    return info.value.problems


@pytest.mark.parametrize("name", FILES or ["<corpus missing>"])
def test_every_file_fails_cleanly_and_quickly(name: str) -> None:
    data = (pipelines() / name).read_bytes()
    started = time.perf_counter()
    with pytest.raises(PipelineError) as info:
        load(data, name)
    assert time.perf_counter() - started < 1
    for problem in info.value.problems:
        assert problem.filename == name
        assert problem.line >= 1
        assert problem.column >= 1
        assert problem.message


def test_the_corpus_has_the_files_its_readme_lists() -> None:
    pipelines()
    assert len(FILES) == 59


@pytest.mark.parametrize(
    ("name", "path", "key", "line", "first_line"),
    [
        ("drone/go-vikunja__vikunja__.drone.yml", "trigger", "trigger", 102, 6),
        ("gitlab-ci/BDX-town__Akkoma__.gitlab-ci.yml", "docker-release.script", "script", 406, 405),
        ("gitlab-ci/BDX-town__Akkoma__.gitlab-ci.yml", "docker-adhoc.script", "script", 429, 428),
        (
            "gitlab-ci/GNOME__libxml2__.gitlab-ci.yml",
            "cmake:linux:gcc:shared",
            "cmake:linux:gcc:shared",
            310,
            145,
        ),
    ],
)
def test_duplicate_keys_named_in_the_readme_are_reported_with_both_lines(
    name: str, path: str, key: str, line: int, first_line: int
) -> None:
    found = [p for p in problems_of(name) if p.message.startswith("duplicate key")]
    assert (line, path, f"duplicate key {key!r} (first defined on line {first_line})") in [
        (p.line, p.path, p.message) for p in found
    ]


def test_the_duplicate_keys_are_the_only_ones_in_the_corpus() -> None:
    duplicates = {
        (name, p.line)
        for name in FILES
        for p in problems_of(name)
        if p.message.startswith("duplicate key") and not name.startswith("nonstandard/")
    }
    assert duplicates == {
        ("drone/go-vikunja__vikunja__.drone.yml", 102),
        ("gitlab-ci/BDX-town__Akkoma__.gitlab-ci.yml", 406),
        ("gitlab-ci/BDX-town__Akkoma__.gitlab-ci.yml", 429),
        ("gitlab-ci/GNOME__libxml2__.gitlab-ci.yml", 310),
    }


def test_multi_document_drone_file_reports_the_second_document() -> None:
    found = problems_of("drone/go-vikunja__vikunja__.drone.yml")
    several = [p for p in found if p.message.startswith("expected one YAML document")]
    assert [(p.line, p.column) for p in several] == [(514, 1)]


def test_gitlab_reference_tag_is_an_unsupported_tag() -> None:
    name = "nonstandard/CalcProgrammer1__OpenRGB__.gitlab-ci.yml"
    tags = [p for p in problems_of(name) if p.message.startswith("unsupported tag '!reference'")]
    assert (tags[0].line, tags[0].column, tags[0].path) == (31, 5, ".upstream_rules.rules[1]")
    assert len(tags) == (pipelines() / name).read_bytes().count(b"!reference")  # every use


def test_a_reused_anchor_name_is_accepted_as_yaml_allows() -> None:
    found = problems_of("nonstandard/BDX-town__Akkoma__.gitlab-ci.yml")
    assert not [p for p in found if "anchor" in p.message or "alias" in p.message]


@pytest.mark.parametrize(
    "name", [n for n in FILES if n.startswith("nonstandard/woodpecker")] or ["<corpus missing>"]
)
def test_woodpecker_sequence_merge_is_explained(name: str) -> None:
    merges = [p for p in problems_of(name) if p.message.startswith("'<<'")]
    assert merges
    for problem in merges:
        assert problem.message.endswith("(YAML merge keys cannot splice lists)")


@pytest.mark.parametrize(
    "name", [n for n in FILES if n.startswith("github-actions/")] or ["<corpus missing>"]
)
def test_github_on_key_is_not_supported_yet_rather_than_a_boolean(name: str) -> None:
    found = problems_of(name)
    on = [p for p in found if p.message.startswith("'on'")]
    assert len(on) == 1
    assert on[0].message == "'on' is not supported yet (reserved for a later version of the format)"
    assert on[0].column == 1
    assert not [p for p in found if "True" in p.message or "true or false" in p.message]


def woodpecker_files_with_steps_as_a_mapping() -> list[str]:
    if not PIPELINES.is_dir():
        return ["<corpus missing>"]
    # PyYAML's safe_load only picks the files; Goci's loader is what is tested.
    return [
        name
        for name in FILES
        if name.startswith("woodpecker/")
        and isinstance(yaml.safe_load((PIPELINES / name).read_bytes()).get("steps"), dict)
    ]


@pytest.mark.parametrize("name", woodpecker_files_with_steps_as_a_mapping())
def test_woodpecker_steps_as_a_mapping_ask_for_a_list(name: str) -> None:
    found = [p for p in problems_of(name) if p.path == "steps"]
    assert [p.message for p in found] == [
        "expected a list of steps, found a mapping (write each step as a list item: `- name: ...`)"
    ]


def test_there_are_woodpecker_files_with_steps_as_a_mapping() -> None:
    pipelines()
    assert len(woodpecker_files_with_steps_as_a_mapping()) >= 10


def test_woodpecker_keys_get_goci_names() -> None:
    found = problems_of("woodpecker/woodpecker-ci__woodpecker__.woodpecker__links.yml")
    messages = {p.message for p in found}
    assert "unknown key 'depends_on' (Goci calls this 'needs')" in messages
    assert "unknown key 'failure' (for `failure: ignore` write `allow_failure: true`)" in messages
