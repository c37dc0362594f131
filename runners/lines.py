"""Turn a step's byte stream into numbered log lines, with bounded memory.

Every executor feeds raw bytes (chunks are not lines) into a StepLog; the same rules
apply to all of them: invalid UTF-8 and NUL bytes become U+FFFD, lines over 64 KiB are
split, and after the per-step cap one marker line says the rest was dropped. The
Masker, shared by the worker's log sink and `goci run`, hides secrets in those lines.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterable, Sequence
from urllib.parse import quote, quote_plus

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


# -- masking secrets ----------------------------------------------------------------

MASK = "********"
# Shorter values are refused when a secret is set: "abc" is in too many log lines.
MIN_SECRET = 4
BASE64_WRAP = 76  # `base64` and PEM write their output in lines of this many characters
_URLSAFE = str.maketrans("+/", "-_")


def secret_forms(value: str) -> set[str]:
    """The texts that give `value` away in a log: itself, each of its lines, its
    base64 (standard and URL-safe, padded or not, and the part that is the same
    wherever it starts in a longer encoded text) and its URL encodings."""
    data = value.encode("utf-8", "surrogatepass")
    exact = base64.b64encode(data).decode()
    encoded = {exact, exact.rstrip("=")}
    for shift in range(3):
        # `echo "$TOKEN" | base64` encodes more than the value, and the value need not
        # start on a 3-byte boundary: keep only the characters made of its bytes alone.
        text = base64.b64encode(b"\0" * shift + data).decode().rstrip("=")
        end = len(text) - (1 if (shift + len(data)) % 3 else 0)
        core = text[(shift * 4 + 2) // 3 : end]
        encoded.add(core)
        # Wrapped output: each whole line of it, when the encoding starts at the value.
        if shift == 0 and len(core) > BASE64_WRAP:
            encoded |= {core[i : i + BASE64_WRAP] for i in range(0, len(core), BASE64_WRAP)}
    forms = {value, *(line.removesuffix("\r") for line in value.split("\n"))}
    forms |= encoded | {form.translate(_URLSAFE) for form in encoded}
    forms |= {quote(value, safe=""), quote_plus(value, safe="")}
    # A secret that holds a JSON object (a registry's {"username": ..., "password": ...},
    # a service account's key) gives each of its values away alone too.
    for part in _json_strings(value):
        forms |= secret_forms(part)
    # The value itself is always masked; shorter derived forms would hide too much.
    return {form for form in forms if len(form) >= MIN_SECRET or form == value}


def _json_strings(value: str) -> list[str]:
    """The string values, long enough to mask, of a secret that is a JSON object."""
    if not value.lstrip().startswith("{"):
        return []
    import json  # noqa: PLC0415  (only for such a secret: `goci run` starts without it)

    try:
        data = json.loads(value)
    except ValueError:
        return []
    if not isinstance(data, dict):
        return []
    return [v for v in data.values() if isinstance(v, str) and len(v) >= MIN_SECRET and v != value]


def _fills_piece(line: str) -> bool:
    """Whether the line may be a piece of a longer one: LineSplitter cuts those at
    MAX_LINE_BYTES (or up to 3 bytes before, not to split a character)."""
    least = MAX_LINE_BYTES - 3
    return len(line) * 4 >= least and len(line.encode("utf-8", "surrogatepass")) >= least


# A reporter's batches (the worker's LogSink, the remote runner's HttpReporter): sent
# at the latest FLUSH_SECONDS after the oldest news, or as soon as FLUSH_LINES lines or
# FLUSH_BYTES characters wait.
FLUSH_LINES = 2000
FLUSH_BYTES = 256 * 1024
FLUSH_SECONDS = 0.1


class PendingLines:
    """The log lines of a job's steps not sent or stored yet: each step's run of
    consecutive lines from its first line number, and how many lines and characters
    wait."""

    def __init__(self) -> None:
        self.steps: dict[str, tuple[int, list[str]]] = {}  # step -> (first line, lines)
        self.lines = self.size = 0

    def add(self, step: str, first_line: int, lines: list[str]) -> None:
        if step in self.steps:
            self.steps[step][1].extend(lines)
        else:
            self.steps[step] = (first_line, lines)
        self.lines += len(lines)
        self.size += sum(map(len, lines))

    def full(self) -> bool:
        return self.lines >= FLUSH_LINES or self.size >= FLUSH_BYTES

    def take(self) -> list[tuple[str, int, list[str]]]:
        """(step, first line, lines) of everything waiting, which no longer waits."""
        taken = [(step, first, lines) for step, (first, lines) in self.steps.items()]
        self.steps = {}
        self.lines = self.size = 0
        return taken


class Masker:
    """Replaces every form of every secret value (secret_forms) by MASK in log lines,
    the longest first, so that a secret that contains another is masked whole.

    Lines come whole, except the pieces of a line over MAX_LINE_BYTES, and a secret
    may be cut in two between pieces: `lines()` holds back a line that fills a piece
    until the next line of its stream comes (or `release()`), then masks what spans
    the cut."""

    def __init__(self, secrets: Iterable[str]) -> None:
        forms: set[str] = set()
        for value in secrets:
            # Values of 1-2 characters would mask half of every log.
            if len(value) >= MIN_SECRET - 1:
                forms |= secret_forms(value)
        ordered = sorted(forms, key=len, reverse=True)
        self.forms = ordered
        # An alternation tries its branches in order: the longest form wins where
        # several start.
        self.pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None
        self.longest = len(ordered[0]) if ordered else 0
        self.held: dict[str, tuple[int, str]] = {}  # stream -> (line number, raw piece)

    def __bool__(self) -> bool:
        return self.pattern is not None

    def text(self, text: str) -> str:
        if self.pattern is None or not self._found(text):
            return text
        return self.pattern.sub(MASK, text)

    def _found(self, text: str) -> bool:
        # Substring searches run at memory speed, the regex at a fraction of it (the
        # alternation is tried at every position): ask the regex only where a form is.
        return any(form in text for form in self.forms)

    def __call__(self, lines: Sequence[str]) -> list[str]:
        """Each line masked on its own (no pieces held)."""
        return [self.text(line) for line in lines]

    def lines(self, stream: str, first: int, lines: Sequence[str]) -> tuple[int, list[str]]:
        """The next lines of a stream, masked, and the number of the first of them: a
        held piece may come first, and a last piece may be held back (then fewer lines
        come out than went in)."""
        if self.pattern is None or not lines:
            return first, list(lines)
        if (
            stream not in self.held
            and max(map(len, lines)) * 4 < MAX_LINE_BYTES - 3  # no piece (_fills_piece)
            and not self._found("\n".join(lines))
        ):
            return first, list(lines)  # the common case: a batch without any secret
        out: list[str] = []
        held = self.held.pop(stream, None)
        pending = None
        if held is not None:
            first, pending = held
        for line in lines:
            rest = line
            if pending is not None:
                done, rest = self._across(pending, line)
                out.append(done)
            if _fills_piece(line):
                pending = rest
            else:
                out.append(self.text(rest))
                pending = None
        if pending is not None:
            self.held[stream] = (first + len(out), pending)
        return first, out

    def release(self, stream: str) -> tuple[int, list[str]] | None:
        """The held piece of a stream that ended, masked."""
        held = self.held.pop(stream, None)
        if held is None:
            return None
        return held[0], [self.text(held[1])]

    def _across(self, before: str, after: str) -> tuple[str, str]:
        """`before` masked, and `after` without the end of a secret that began in
        `before` (that secret is masked at the end of `before`)."""
        assert self.pattern is not None
        reach = self.longest - 1
        tail = before[-reach:] if reach else ""
        window = tail + after[:reach]
        for start in range(len(tail)):
            match = self.pattern.match(window, start)
            if match is not None and match.end() > len(tail):
                cut = len(before) - len(tail) + start
                return self.text(before[:cut]) + MASK, after[match.end() - len(tail) :]
        return self.text(before), after
