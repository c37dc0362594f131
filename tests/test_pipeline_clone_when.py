"""`clone:` and `when: {path: ...}` (on a step and at the top of the pipeline): what the
parser accepts, what it refuses with file:line:column, the hints for other CI systems'
keys, the JSON schema, and the path patterns' semantics (doublestar's, as Woodpecker)."""

from __future__ import annotations

import fnmatch
import functools
import random
import re
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from builds.pipeline import (
    MAX_CLONE_DEPTH,
    MAX_GLOBS,
    PathFilter,
    PipelineError,
    Problem,
    When,
    json_schema,
    load,
)

CORPUS = Path(__file__).resolve().parent / "corpus" / "pipelines"


def problems(source: str) -> list[Problem]:
    with pytest.raises(PipelineError) as info:
        load(source, "p.yml")
    return info.value.problems


def only(source: str) -> Problem:
    found = problems(source)
    assert len(found) == 1, "\n".join(map(str, found))
    return found[0]


def where(problem: Problem) -> tuple[int, int, str]:
    return problem.line, problem.column, problem.path


def with_top(extra: str) -> str:
    """A valid one-step pipeline with pipeline keys `extra` before its steps."""
    return textwrap.dedent(extra) + "steps:\n  - run: make\n"


def step_when(value: str) -> str:
    return f"steps:\n  - run: make\n    when: {value}\n"


def matches(patterns: Any, files: list[str] | None) -> bool:
    """Whether `when: {path: patterns}` (a YAML value) holds for these changed files."""
    when = load(step_when(f"{{path: {patterns}}}")).steps[0].when
    assert when is not None
    return when.matches(branch="main", event="push", changed_files=files)


# -- clone


def test_without_clone_the_commit_alone_is_checked_out() -> None:
    pipeline = load(with_top(""))
    assert (pipeline.clone, pipeline.clone_depth) == (True, 1)


@pytest.mark.parametrize(
    ("value", "clone", "depth"),
    [
        ("true", True, 1),
        ("false", False, 1),
        ("FALSE", False, 1),
        ("{depth: 50}", True, 50),
        ("{depth: 0}", True, 0),
        ("{depth: 007}", True, 7),
        (f"{{depth: {MAX_CLONE_DEPTH}}}", True, MAX_CLONE_DEPTH),
        ("\n  depth: 3", True, 3),
    ],
)
def test_clone_forms(value: str, clone: bool, depth: int) -> None:
    pipeline = load(with_top(f"clone: {value}\n"))
    assert (pipeline.clone, pipeline.clone_depth) == (clone, depth)


HUGE = "9" * 100_000


@pytest.mark.parametrize(
    ("value", "column", "path", "message"),
    [
        ("yes", 8, "clone", "expected true, false or {depth: N}, found 'yes'"),
        ("", 7, "clone", "expected true, false or {depth: N}, found nothing"),
        ("[depth]", 8, "clone", "expected true, false or {depth: N}, found a list"),
        (
            "{}",
            8,
            "clone",
            "`clone` is empty: write `clone: {depth: N}`, or remove it for depth 1",
        ),
        (
            "{depth: -1}",
            16,
            "clone.depth",
            "the depth cannot be negative; 0 fetches the whole history",
        ),
        (
            "{depth: 1000001}",
            16,
            "clone.depth",
            "the depth may be at most 1000000 (0 fetches the whole history), found '1000001'",
        ),
        (
            f"{{depth: {HUGE}}}",
            16,
            "clone.depth",
            "the depth may be at most 1000000 (0 fetches the whole history), "
            "found a value of 100000 characters",
        ),
        (
            "{depth: 1.5}",
            16,
            "clone.depth",
            "expected a whole number from 0 to 1000000, found '1.5'",
        ),
        (
            "{depth: true}",
            16,
            "clone.depth",
            "expected a whole number from 0 to 1000000, found 'true'",
        ),
        ("{depth: ''}", 16, "clone.depth", "expected a whole number from 0 to 1000000, found ''"),
        (
            "{depth: [1]}",
            16,
            "clone.depth",
            "expected a whole number from 0 to 1000000, found a list",
        ),
        ("{dpeth: 5}", 9, "clone", "unknown key 'dpeth' (did you mean 'depth'?)"),
        ("{disable: true}", 9, "clone", "unknown key 'disable' (write `clone: false`)"),
        (
            "{fetch-depth: 0}",
            9,
            "clone",
            "unknown key 'fetch-depth' (Goci calls this 'depth'; 0 fetches the whole history)",
        ),
        ("{lfs: true}", 9, "clone", "unknown key 'lfs' (clone takes only 'depth')"),
    ],
)
def test_clone_problems(value: str, column: int, path: str, message: str) -> None:
    problem = only(with_top(f"clone: {value}\n"))
    assert where(problem) == (1, column, path)
    assert problem.message == message


def test_clone_of_a_tag_is_refused_with_the_other_tags() -> None:
    problem = only(with_top("clone: !!python/object:os.system false\n"))
    assert where(problem) == (1, 8, "clone")
    assert problem.message.startswith("unsupported tag '!!python/object:os.system'")


def test_woodpecker_clone_step_gets_its_depth_back_as_a_hint() -> None:
    source = with_top("""
        clone:
          git:
            image: woodpeckerci/plugin-git
            settings:
              depth: 50
              lfs: false
    """)
    problem = only(source)
    assert where(problem) == (3, 3, "clone")
    assert problem.message == (
        "unknown key 'git' (Goci fetches the commit itself: write `clone: {depth: 50}`)"
    )


def test_drone_and_woodpecker_clone_steps_without_a_depth_get_a_hint() -> None:
    problem = only(with_top("clone:\n  git:\n    image: plugins/git:next\n"))
    assert problem.message == (
        "unknown key 'git' (Goci fetches the commit itself: write `clone: {depth: N}`)"
    )


@pytest.mark.parametrize(
    ("key", "hint"),
    [
        ("skip_clone", "write `clone: false`"),
        ("depth", "write `clone: {depth: N}`"),
        ("fetch-depth", "write `clone: {depth: N}`; 0 fetches the whole history"),
        ("trigger", "Goci calls this 'when'"),
    ],
)
def test_pipeline_keys_of_other_ci_systems_point_to_clone_and_when(key: str, hint: str) -> None:
    problem = only(with_top(f"{key}: x\n"))
    assert where(problem) == (1, 1, "")
    assert problem.message == f"unknown key {key!r} ({hint})"


def test_a_github_checkout_step_is_told_goci_checks_out_by_itself() -> None:
    found = problems("steps:\n  - uses: actions/checkout@v4\n    run: make\n")
    assert [(where(p), p.message) for p in found] == [
        (
            (2, 5, "steps[0]"),
            "unknown key 'uses' (Goci runs the script in 'run'; "
            "it checks the commit out itself (see 'clone'))",
        )
    ]


# -- when at the top of the pipeline


def test_when_at_the_top_is_read_like_a_steps_when() -> None:
    source = with_top("""
        when:
          branch: [main, release/*]
          event: push
          path: {include: ['src/**'], exclude: '**/*.md'}
    """)
    pipeline = load(source)
    assert pipeline.when == When(
        branch=("main", "release/*"),
        event=("push",),
        path=PathFilter(include=("src/**",), exclude=("**/*.md",)),
    )
    assert pipeline.steps[0].when is None  # the pipeline's when is not copied to steps


@pytest.mark.parametrize(
    ("value", "line", "column", "path", "message"),
    [
        (
            "{}",
            1,
            7,
            "when",
            "`when` has no conditions: give `branch`, `event` and/or `path`, or remove it",
        ),
        (
            "\n  - event: push\n",
            2,
            3,
            "when",
            "expected a mapping with `branch`, `event` and/or `path`, found a list "
            "(write one mapping; a condition takes a list of alternatives: `event: [push, tag]`)",
        ),
        (
            "{event: pull-request}",
            1,
            15,
            "when.event",
            "unknown event 'pull-request' (did you mean 'pull_request'?; "
            "events are push, pull_request, tag, manual, cron, api)",
        ),
        ("{path: []}", 1, 14, "when.path", "the list is empty, so it would never match; remove it"),
        (
            "{evaluate: 'x'}",
            1,
            8,
            "when",
            "unknown key 'evaluate' (when supports only 'branch', 'event' and 'path')",
        ),
    ],
)
def test_when_at_the_top_problems(
    value: str, line: int, column: int, path: str, message: str
) -> None:
    problem = only(with_top(f"when: {value}\n"))
    assert where(problem) == (line, column, path)
    assert problem.message == message


# -- when: {path: ...}


@pytest.mark.parametrize(
    ("value", "include", "exclude"),
    [
        ("docs/**", ("docs/**",), ()),
        ("'*.md'", ("*.md",), ()),
        ("[src/**, go.mod]", ("src/**", "go.mod"), ()),
        ("{include: src/**}", ("src/**",), ()),
        ("{exclude: [docs/**, '*.md']}", (), ("docs/**", "*.md")),
        ("{include: ['**/*.go'], exclude: '**/*_test.go'}", ("**/*.go",), ("**/*_test.go",)),
        ("2024", ("2024",), ()),  # a name as written, not a number
    ],
)
def test_path_forms(value: str, include: tuple[str, ...], exclude: tuple[str, ...]) -> None:
    when = load(step_when(f"{{path: {value}}}")).steps[0].when
    assert when == When(path=PathFilter(include=include, exclude=exclude))


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("''", "the pattern is empty"),
        ("' '", "the pattern is empty"),
        ("/src/**", "paths are relative to the repository's top: write 'src/**'"),
        ("'!docs/**'", "'!' does not negate a pattern here: list it under 'exclude' instead"),
        (
            "'src\\\\*.go'",
            "a backslash is not allowed: separate directories with '/', "
            "and write [*], [?], [[] or [{] for a literal *, ?, [ or {",
        ),
        (
            "docs/",
            "a pattern matches files, not directories: write 'docs/**' for every file under it",
        ),
        ("a//b", "a directory level is empty ('//'); write one '/'"),
        ("./src/**", "'.' and '..' are not allowed: write the path from the repository's top"),
        ("src/../x", "'.' and '..' are not allowed: write the path from the repository's top"),
        (
            "'**.js'",
            "'**' must be a whole directory level, as in 'src/**/*.go'; within a name write '*'",
        ),
        (
            "'src/**.go'",
            "'**' must be a whole directory level, as in 'src/**/*.go'; within a name write '*'",
        ),
        ("'[ab'", "'[' is not closed within its directory level; write [[] for a literal ["),
        ("'[a/b]'", "'[' is not closed within its directory level; write [[] for a literal ["),
        ("'{a,b'", "'{' is not closed; write [{] for a literal {"),
        ("'[z-a].go'", "the range z-a is backwards; write a-z"),
        ("'" + "x" * 4097 + "'", "a pattern may be at most 4096 characters, this one has 4097"),
        (
            "'{a,b}{a,b}{a,b}{a,b}{a,b}{a,b}{a,b}{a,b}{a,b}{a,b}'",
            "the braces make more than 1000 patterns of this one",
        ),
    ],
)
def test_bad_patterns_are_refused_where_they_are(pattern: str, message: str) -> None:
    problem = only(step_when(f"{{path: {{exclude: [x, {pattern}]}}}}"))
    assert where(problem) == (3, 32, "steps[0].when.path.exclude[1]")
    assert problem.message == message


@pytest.mark.parametrize(
    ("value", "column", "path", "message"),
    [
        (
            "{path: }",
            18,
            "steps[0].when.path",
            "expected a pattern or a list of patterns, found nothing",
        ),
        ("{path: [[a]]}", 19, "steps[0].when.path[0]", "expected a pattern, found a list"),
        (
            "{path: {}}",
            18,
            "steps[0].when.path",
            "`path` has no patterns: give `include` and/or `exclude`",
        ),
        (
            "{path: {include: []}}",
            28,
            "steps[0].when.path.include",
            "the list is empty, so it would never match; remove it",
        ),
        (
            "{path: {on_empty: true}}",
            19,
            "steps[0].when.path",
            "unknown key 'on_empty' (path takes only 'include' and 'exclude')",
        ),
        (
            "{path: {includes: [a]}}",
            19,
            "steps[0].when.path",
            "unknown key 'includes' (did you mean 'include'?)",
        ),
        ("{paths: [a]}", 12, "steps[0].when", "unknown key 'paths' (Goci calls this 'path')"),
        (
            "{paths-ignore: [a]}",
            12,
            "steps[0].when",
            "unknown key 'paths-ignore' (write `path: {exclude: [...]}`)",
        ),
    ],
)
def test_path_problems(value: str, column: int, path: str, message: str) -> None:
    problem = only(step_when(value))
    assert where(problem) == (3, column, path)
    assert problem.message == message


def test_every_bad_pattern_is_reported_at_once() -> None:
    found = problems(step_when("{path: [/a, ok/**, 'b/', '{c']}"))
    assert [p.path for p in found] == [
        "steps[0].when.path[0]",
        "steps[0].when.path[2]",
        "steps[0].when.path[3]",
    ]


def test_at_most_max_globs_path_patterns_counting_uses_and_braces() -> None:
    # An alias used by many steps counts at every use: matching costs that much.
    patterns = ", ".join(f"p{i}/**" for i in range(MAX_GLOBS // 4))
    steps = "".join("  - {run: x, when: {path: *p}}\n" for _ in range(3))
    fine = f"x-paths: &p [{patterns}]\nsteps:\n{steps}"
    assert problems(fine)[0].message == "unknown key 'x-paths'"  # and nothing about patterns
    too_many = (
        f"x-paths: &p [{patterns}, '{{a,b}}']\nsteps:\n{steps}  - {{run: x, when: {{path: *p}}}}\n"
    )
    found = [p for p in problems(too_many) if "too many" in p.message]
    assert [p.message for p in found] == [
        f"too many path patterns: a pipeline may have at most {MAX_GLOBS}, "
        "counting each use and each {a,b} alternative"
    ]


def test_hostile_pattern_text_is_refused_or_kept_never_a_crash() -> None:
    # NUL and a lone surrogate through YAML escapes; a raw NUL is refused by the reader.
    for value in ('"a\\0b"', '"\\ud800/**"', '"\\uffff"'):
        try:
            when = load(step_when(f"{{path: {value}}}")).steps[0].when
        except PipelineError as error:
            problems_found = error.problems
        else:
            problems_found = []
            assert when is not None
            when.matches(branch=None, event=None, changed_files=["a/b", "\ud800/x"])
        assert all(p.line >= 1 for p in problems_found)
    assert only(step_when("{path: 'a\x00'}")).message.startswith("the character U+0000")


# -- what a path condition means


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("src/**", "src/a/b.go", True),
        ("src/**", "src", True),  # `**` may stand for no level at all
        ("src/**", "srcx/a", False),
        ("src/*", "src/a/b.go", False),  # `*` stays within one level
        ("*.md", "README.md", True),
        ("*.md", "docs/guide.md", False),  # the whole path is matched, as Woodpecker does
        ("**/*.md", "README.md", True),
        ("**/*.md", "docs/a/guide.md", True),
        ("a/**/b", "a/b", True),
        ("a/**/b", "a/x/y/b", True),
        ("a/**/b", "a/x/y/bc", False),
        ("**/test/**", "pkg/test/x.go", True),
        ("**/test/**", "pkg/tests/x.go", False),
        ("?.go", "a.go", True),
        ("?.go", "ab.go", False),
        ("?", "/", False),
        ("[abc].go", "b.go", True),
        ("[!a].go", "a.go", False),
        ("[^a].go", "b.go", True),
        ("[a-c]*", "cat", True),
        ("*.{md,txt}", "notes.txt", True),
        ("{src,lib}/**/*.go", "lib/x/y.go", True),
        ("{src,lib}/**/*.go", "cmd/y.go", False),
        ("[{]a,b}", "{a,b}", True),
        (".github/**", ".github/workflows/ci.yml", True),
        ("*", ".env", True),  # dot files are files like any other
        ("Makefile", "makefile", False),  # case matters, as in git
        ("a.go", "a/go", False),  # a dot is a dot
        ("*a*a*a*a*a*a*a*a*a*a*b", "a" * 200, False),
    ],
)
def test_patterns_match_whole_paths_with_doublestar_rules(
    pattern: str, path: str, expected: bool
) -> None:
    assert PathFilter(include=(pattern,)).matches([path]) is expected


@pytest.mark.parametrize(
    ("value", "files", "expected"),
    [
        ("docs/**", ["src/a.go", "docs/b.md"], True),  # one changed file is enough
        ("docs/**", ["src/a.go"], False),
        ("{exclude: docs/**}", ["docs/a.md", "docs/b.md"], False),  # only excluded files
        ("{exclude: docs/**}", ["docs/a.md", "go.mod"], True),
        ("{include: src/**, exclude: '**/*_test.go'}", ["src/a_test.go"], False),
        ("{include: src/**, exclude: '**/*_test.go'}", ["src/a_test.go", "src/a.go"], True),
        # Per file: included and not excluded. docs/a.md is excluded and go.mod is not
        # included, so nothing counts (Woodpecker would run: it checks each part apart).
        ("{include: 'docs/**', exclude: '**/*.md'}", ["docs/a.md", "go.mod"], False),
        ("docs/**", [], False),  # an empty push changes nothing
        ("{exclude: docs/**}", [], False),
        ("docs/**", None, True),  # unknown changed files: the condition holds
        ("{exclude: '**'}", None, True),
    ],
)
def test_include_and_exclude(value: str, files: list[str] | None, expected: bool) -> None:
    assert matches(value, files) is expected


def test_mismatch_says_why_in_words() -> None:
    when = When(branch=("main",), path=PathFilter(include=("docs/**",)))
    assert when.mismatch(branch="dev", event="push", changed_files=["docs/a"]) == (
        "does not match branch dev, event push"
    )
    assert when.mismatch(branch="main", event=None, changed_files=["a", "b"]) == (
        "path matches none of the 2 changed files"
    )
    assert when.mismatch(branch="main", event=None, changed_files=["a"]) == (
        "path matches none of the 1 changed file"
    )
    assert when.mismatch(branch="main", event=None, changed_files=[]) == "path: no file changed"
    assert when.mismatch(branch="main", event=None, changed_files=["docs/a"]) is None
    assert when.mismatch(branch="main", event=None) is None  # changed files unknown


def test_matches_keeps_its_old_call_working() -> None:
    when = When(branch=("main",), path=PathFilter(include=("docs/**",)))
    assert when.matches(branch="main", event="push")  # no changed files: unknown


def doublestar(pattern: str, path: str) -> bool:
    """A plain reference: a level at a time, `**` any number of levels, fnmatch within a
    level (`[^` as `[!`), braces expanded first. Slow and obviously right."""
    brace = re.search(r"\{([^{}]*)\}", pattern)
    if brace is not None:
        return any(
            doublestar(pattern[: brace.start()] + alt + pattern[brace.end() :], path)
            for alt in brace.group(1).split(",")
        )
    levels = pattern.replace("[^", "[!").split("/")
    parts = path.split("/")

    @functools.cache
    def at(i: int, j: int) -> bool:
        if i == len(levels):
            return j == len(parts)
        if levels[i] == "**":
            return at(i + 1, j) or (j < len(parts) and at(i, j + 1))
        return j < len(parts) and fnmatch.fnmatchcase(parts[j], levels[i]) and at(i + 1, j + 1)

    return at(0, 0)


def test_matching_agrees_with_a_plain_reference_on_random_patterns() -> None:
    rng = random.Random(12)  # noqa: S311  (a fixed sequence of cases, not a secret)
    levels = ["**", "*", "a", "b", "?", "a*", "*b", "*a*", "[ab]", "[!a]", "[^b]"]
    levels += ["a?b", "*.go", "[a-c]*", "{a,b}", "{*.go,x}", "x"]
    names = ["a", "b", "ab", "ba", "aab", "x", "m.go", "a.go", "c", "abc", "axb"]
    for _ in range(2000):
        pattern = "/".join(rng.choice(levels) for _ in range(rng.randint(1, 5)))
        path = "/".join(rng.choice(names) for _ in range(rng.randint(1, 6)))
        expected = doublestar(pattern, path)
        assert PathFilter(include=(pattern,)).matches([path]) is expected, (pattern, path)


def test_no_pattern_makes_matching_slow() -> None:
    stars = "*a" * 40 + "*b"
    patterns = (f"**/{stars}/**/{stars}/**/x/**/{stars}", "**/" + "a/**/" * 30 + "b")
    path = "/".join(["a" * 300] * 40)
    began = time.perf_counter()
    assert not PathFilter(include=patterns).matches([path] * 100)
    assert time.perf_counter() - began < 1


# -- the JSON schema


def test_schema_describes_clone_when_and_path_from_the_same_tables() -> None:
    schema: Any = json_schema()  # JSON: nested dicts of any shape
    definitions = schema["definitions"]
    assert set(schema["properties"]) >= {"clone", "when"}
    assert schema["properties"]["when"]["allOf"] == [{"$ref": "#/definitions/when"}]
    clone = schema["properties"]["clone"]["anyOf"]
    assert clone == [{"type": "boolean"}, {"$ref": "#/definitions/clone"}]
    depth = definitions["clone"]["properties"]["depth"]
    assert (depth["type"], depth["minimum"], depth["maximum"]) == ("integer", 0, MAX_CLONE_DEPTH)
    assert definitions["clone"]["additionalProperties"] is False
    assert set(definitions["when"]["properties"]) == {"branch", "event", "path"}
    assert set(definitions["path"]["properties"]) == {"include", "exclude"}
    assert definitions["path"]["additionalProperties"] is False
    path = definitions["when"]["properties"]["path"]["anyOf"]
    assert path[-1] == {"$ref": "#/definitions/path"}
    glob = re.compile(path[0]["pattern"])
    assert [bool(glob.search(text)) for text in ("src/**", "*.md", "/src", "!docs/**")] == [
        True,
        True,
        False,
        False,
    ]


def test_every_form_the_schema_offers_is_accepted_by_the_validator() -> None:
    for value in ("true", "false", "{depth: 0}", f"{{depth: {MAX_CLONE_DEPTH}}}"):
        load(with_top(f"clone: {value}\n"))
    for value in ("src/**", "[a, b]", "{include: a}", "{exclude: [b]}", "{include: a, exclude: b}"):
        load(with_top(f"when: {{path: {value}}}\n"))
        load(step_when(f"{{path: {value}}}"))


# -- real files of other CI systems


def corpus_problems(name: str) -> list[Problem]:
    assert CORPUS.is_dir(), f"the test corpus is missing: {CORPUS}"
    with pytest.raises(PipelineError) as info:
        load((CORPUS / name).read_bytes(), name)
    return info.value.problems


def test_drone_clone_depth_is_goci_clone_depth() -> None:
    found = corpus_problems("drone/meltwater__drone-cache__.drone.yml")
    assert not [p for p in found if p.path.startswith("clone") or "'clone'" in p.message]


def test_woodpecker_clone_steps_in_the_corpus_get_the_hint() -> None:
    name = "woodpecker/superseriousbusiness__gotosocial__.woodpecker__snapshot.yml"
    found = [(where(p), p.message) for p in corpus_problems(name) if p.path == "clone"]
    assert found == [
        (
            (9, 3, "clone"),
            "unknown key 'git' (Goci fetches the commit itself: write `clone: {depth: N}`)",
        )
    ]


def test_woodpecker_top_level_when_is_read_and_its_list_form_explained() -> None:
    names = sorted(p.relative_to(CORPUS).as_posix() for p in CORPUS.rglob("*.yml"))
    assert names
    lists = 0
    for name in names:
        for problem in corpus_problems(name):
            assert "put 'when' on the steps" not in problem.message
            if problem.path == "when":
                assert problem.message.startswith(
                    "expected a mapping with `branch`, `event` and/or `path`, found a list"
                )
                lists += 1
    assert lists >= 20
    # A top-level when written as one mapping is valid Goci.
    found = corpus_problems("woodpecker/woodpecker-ci__plugin-git__.woodpecker__release.yml")
    assert not [p for p in found if p.path.startswith("when")]
