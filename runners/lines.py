"""Turn a step's byte stream into numbered log lines, with bounded memory.

Every executor feeds raw bytes (chunks are not lines) into a StepLog; the same rules
apply to all of them: invalid UTF-8 and NUL bytes become U+FFFD, lines over 64 KiB are
split, and after the per-step cap one marker line says the rest was dropped.
"""

from __future__ import annotations

from collections.abc import Callable

MAX_LINE_BYTES = 64 * 1024
DEFAULT_LOG_CAP = 100 * 1024 * 1024


def _decode(data: bytes | bytearray) -> str:
    """UTF-8 with U+FFFD for what is not text. NUL is valid UTF-8 but PostgreSQL text
    cannot hold it (a NUL once lost a whole log there), so it is replaced too."""
    return data.decode("utf-8", "replace").replace("\0", "\ufffd")


def _cut_at_char_boundary(data: bytes | bytearray, limit: int) -> int:
    """Largest cut <= limit that does not split a UTF-8 sequence (if one is there)."""
    cut = limit
    # Continuation bytes are 0b10xxxxxx; a sequence is at most 4 bytes long.
    while cut > limit - 3 and cut < len(data) and (data[cut] & 0xC0) == 0x80:
        cut -= 1
    return cut if cut > 0 else limit


def _split_long(line: str, limit: int) -> list[str]:
    data = line.encode("utf-8", "surrogatepass")
    pieces = []
    while len(data) > limit:
        cut = _cut_at_char_boundary(data, limit)
        pieces.append(_decode(data[:cut]))
        data = data[cut:]
    pieces.append(_decode(data))
    return pieces


class LineSplitter:
    """Bytes in, complete lines out. Holds at most one partial line (< max_line bytes)."""

    def __init__(self, max_line: int = MAX_LINE_BYTES) -> None:
        self.max_line = max_line
        self._tail = bytearray()

    def feed(self, data: bytes) -> list[str]:
        tail = self._tail
        tail += data
        lines: list[str] = []
        end = tail.rfind(b"\n")
        if end >= 0:
            complete = bytes(tail[:end])
            del tail[: end + 1]
            # A newline byte never occurs inside a UTF-8 sequence, so decoding whole
            # lines at once cannot split a character.
            text = _decode(complete)
            if "\r" in text:  # CRLF endings; a lone CR (progress bars) stays
                text = text.replace("\r\n", "\n").removesuffix("\r")
            lines = text.split("\n")
            if len(complete) > self.max_line:
                lines = [piece for line in lines for piece in self._fit(line)]
        while len(tail) > self.max_line:
            cut = _cut_at_char_boundary(tail, self.max_line)
            lines.append(_decode(tail[:cut]))
            del tail[:cut]
        return lines

    def _fit(self, line: str) -> list[str]:
        # Cheap test first: a line of n characters has at most 4n bytes.
        if len(line) * 4 <= self.max_line or len(line.encode("utf-8", "surrogatepass")) <= (
            self.max_line
        ):
            return [line]
        return _split_long(line, self.max_line)

    def flush(self) -> list[str]:
        """The unterminated last line, if any (the stream ended)."""
        if not self._tail:
            return []
        text = _decode(self._tail)
        self._tail.clear()
        return [text.removesuffix("\r")]


def format_size(size: int) -> str:
    """1073741824 -> '1 GiB', 1572864 -> '1.5 MiB'."""
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor:
            value = size / factor
            return f"{value:.0f} {unit}" if value.is_integer() else f"{value:.1f} {unit}"
    return f"{size} B"


class StepLog:
    """One step's log: numbering (1-based, continued across retries) and the cap.

    `emit(first_line_number, lines)` is called with every batch of complete lines.
    """

    def __init__(self, emit: Callable[[int, list[str]], None], cap: int = DEFAULT_LOG_CAP) -> None:
        self._emit = emit
        self.cap = cap
        self.received = 0  # bytes the step wrote, including what was dropped
        self.next_line = 1
        self.truncated = False
        self._splitter = LineSplitter()

    def write(self, data: bytes) -> None:
        self.received += len(data)
        if self.truncated:
            return  # keep draining the step so it runs on, but store nothing more
        if self.received > self.cap:
            keep = len(data) - (self.received - self.cap)
            lines = self._splitter.feed(data[:keep]) + self._splitter.flush()
            lines.append(
                f"[goci] log truncated: this step printed more than {format_size(self.cap)}; "
                "the rest of its output is dropped while it keeps running"
            )
            self.truncated = True
            self._send(lines)
            return
        lines = self._splitter.feed(data)
        if lines:
            self._send(lines)

    def end_attempt(self) -> None:
        """The stream ended: an unterminated last line is still a line."""
        if not self.truncated:
            self._send(self._splitter.flush())

    def _send(self, lines: list[str]) -> None:
        if lines:
            first = self.next_line
            self.next_line += len(lines)
            self._emit(first, lines)
