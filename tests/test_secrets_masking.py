"""The masker alone: which forms of a value it hides, and a value cut in two by the
64 KiB split of a long line, wherever the cut falls and however lines are batched."""

from __future__ import annotations

import base64
from urllib.parse import quote, quote_plus

import pytest

from runners.lines import MASK, MAX_LINE_BYTES, LineSplitter, Masker

VALUE = "pa$$/w0rd+with spaces&more"


@pytest.mark.parametrize("prefix", [b"", b"a", b"ab", b"abc"])
def test_base64_of_the_value_is_masked_at_every_alignment(prefix: bytes) -> None:
    mask = Masker([VALUE])
    encoded = base64.b64encode(prefix + VALUE.encode() + b"\n").decode()
    for text in (encoded, encoded.replace("+", "-").replace("/", "_").rstrip("=")):
        masked = mask.text(text)
        assert MASK in masked
        assert base64.b64encode(VALUE.encode()).decode()[4:20] not in masked


def test_url_encoded_forms_and_each_line_of_a_multi_line_value_are_masked() -> None:
    pem = "-----BEGIN KEY-----\nAAAABBBBCCCC\nDDDDEEEEFFFF\n-----END KEY-----"
    mask = Masker([VALUE, pem])

    assert mask.text(f"q={quote(VALUE, safe='')}&r={quote_plus(VALUE)}") == f"q={MASK}&r={MASK}"
    assert mask(pem.split("\n")) == [MASK] * 4


def test_values_of_one_or_two_characters_mask_nothing() -> None:
    assert Masker(["ab"]).text("ab cab") == "ab cab"


@pytest.mark.parametrize("at", [1, 5, len(VALUE) // 2, len(VALUE) - 1])
@pytest.mark.parametrize("batched", [True, False])
def test_a_value_cut_by_the_split_of_a_long_line_is_masked_on_both_sides(
    at: int, batched: bool
) -> None:
    line = b"x" * (MAX_LINE_BYTES - at) + VALUE.encode() + b" and more\n"
    pieces = LineSplitter().feed(line)
    assert len(pieces) == 2
    assert VALUE not in pieces[0]
    assert VALUE not in pieces[1]  # the cut falls inside the value
    mask = Masker([VALUE])

    if batched:
        first, out = mask.lines("step", 1, pieces)
    else:
        first, out = mask.lines("step", 1, pieces[:1])
        assert out == []  # held until the next line shows where the value ends
        first, out = mask.lines("step", 2, pieces[1:])

    assert first == 1
    assert out == ["x" * (MAX_LINE_BYTES - at) + MASK, " and more"]
    assert mask.release("step") is None


def test_a_held_piece_comes_out_when_its_stream_ends() -> None:
    mask = Masker([VALUE])
    piece = "y" * MAX_LINE_BYTES

    assert mask.lines("step", 7, [piece]) == (7, [])
    assert mask.release("step") == (7, [piece])
    assert mask.release("step") is None


def test_each_value_of_a_secret_that_holds_json_is_masked_alone_too() -> None:
    # A registry secret: the password alone gives it away (base64 of it too).
    secret = '{"username": "deployer", "password": "hunter2-registry", "n": 12}'  # noqa: S105
    mask = Masker([secret])

    assert mask.text(f"login {secret}") == f"login {MASK}"
    assert mask.text("password was hunter2-registry") == f"password was {MASK}"
    encoded = base64.b64encode(b"hunter2-registry").decode()
    assert mask.text(f"basic {encoded}") == f"basic {MASK}"
    assert mask.text("user deployer") == f"user {MASK}"
    # Not JSON, or a list: the value alone, as before.
    assert Masker(['{"broken": "hunter2-registry"']).text("hunter2-registry") == "hunter2-registry"
    assert Masker(['["hunter2-registry"]']).text("hunter2-registry") == "hunter2-registry"
