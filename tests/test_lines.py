"""Bytes to lines: chunk boundaries, bad UTF-8, long lines and the log cap."""

from __future__ import annotations

from runners.lines import MAX_LINE_BYTES, LineSplitter, StepLog, format_size


def feed_all(chunks: list[bytes]) -> list[str]:
    splitter = LineSplitter()
    lines = [line for chunk in chunks for line in splitter.feed(chunk)]
    return lines + splitter.flush()


def test_chunks_are_not_lines() -> None:
    assert feed_all([b"hel", b"lo\nwor", b"ld\n", b"tail"]) == ["hello", "world", "tail"]


def test_a_character_split_across_chunks_is_kept_whole() -> None:
    data = "café ☕\n".encode()
    assert feed_all([data[:4], data[4:6], data[6:]]) == ["café ☕"]


def test_invalid_utf8_becomes_replacement_characters() -> None:
    assert feed_all([b"ok \xff\xfe bad\n"]) == ["ok \ufffd\ufffd bad"]


def test_crlf_line_endings_are_stripped() -> None:
    assert feed_all([b"a\r\nb\r\n"]) == ["a", "b"]


def test_empty_lines_are_lines() -> None:
    assert feed_all([b"\n\nx\n"]) == ["", "", "x"]


def test_a_line_without_newline_longer_than_64_kib_is_split() -> None:
    splitter = LineSplitter()
    lines = []
    for _ in range(10 * 16):  # 10 MiB in 64 KiB chunks, no newline
        lines += splitter.feed(b"x" * 65536)
        assert len(splitter._tail) <= MAX_LINE_BYTES  # memory stays bounded
    lines += splitter.flush()
    assert len(lines) == 160
    assert all(len(line) == MAX_LINE_BYTES for line in lines)


def test_long_lines_are_split_on_character_boundaries() -> None:
    text = "é" * 40000 + "\n"  # 80000 bytes in one terminated line
    lines = feed_all([text.encode()])
    assert "".join(lines) == "é" * 40000
    assert all(len(line.encode()) <= MAX_LINE_BYTES for line in lines)
    assert "\ufffd" not in "".join(lines)


def test_step_log_numbers_lines_across_writes_and_attempts() -> None:
    got: list[tuple[int, list[str]]] = []
    log = StepLog(lambda first, lines: got.append((first, lines)))
    log.write(b"a\nb")
    log.write(b"\nc")
    log.end_attempt()
    log.write(b"d\n")
    assert got == [(1, ["a"]), (2, ["b"]), (3, ["c"]), (4, ["d"])]


def test_step_log_truncates_once_at_the_cap_and_keeps_counting() -> None:
    got: list[str] = []
    log = StepLog(lambda first, lines: got.extend(lines), cap=10)
    log.write(b"12345\n67890\nabc\n")
    log.write(b"more\n" * 100)
    log.end_attempt()
    assert got[:2] == ["12345", "6789"]
    assert len(got) == 3
    assert got[2].startswith("[goci] log truncated: this step printed more than 10 B")
    assert log.received == 16 + 500


def test_format_size() -> None:
    assert format_size(100 * 1024 * 1024) == "100 MiB"
    assert format_size(1536 * 1024) == "1.5 MiB"
    assert format_size(1 << 30) == "1 GiB"
    assert format_size(10) == "10 B"
