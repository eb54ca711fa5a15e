"""Where one HTTP/1.1 request ends, found as its bytes arrive (no sockets, no gunicorn).

The worker's event loop reads a request into memory before any thread sees it (see
service/reading.py). `RequestFraming` tells it, after each read, whether the request is
complete: the head (request line and headers), then the body by its Content-Length or by its
chunked framing. It reads only what it needs for that and leaves every other check to
gunicorn's parser, which the thread runs on the complete request. Each call resumes where the
last one stopped, so a request that arrives a byte at a time costs linear time.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass


class Verdict(enum.Enum):
    """What the bytes received so far make of the request."""

    NEED_HEAD = "need-head"  # the request line and headers are not all here yet
    NEED_BODY = "need-body"  # the head is here, the body is not
    COMPLETE = "complete"  # the whole request is here: `end` says where it stops
    HEAD_ONLY = "head-only"  # hand the head over now: it is refused before its body is read
    REJECT = "reject"  # answer `problem` and close


@dataclass(frozen=True)
class Problem:
    """An answer the event loop sends itself: status, problem type slug, detail."""

    status: int
    kind: str
    detail: str


@dataclass(frozen=True)
class Limits:
    """Bounds on what is buffered: the head (bytes) and the body (decoded bytes)."""

    max_head_bytes: int
    max_body_bytes: int
    max_chunk_line_bytes: int = 8190


_HEAD_END = b"\r\n\r\n"
_CHUNK_SIZE = re.compile(rb"[0-9a-fA-F]+")
_EXPECT = re.compile(rb"\r\nexpect:[^\r]*", re.IGNORECASE)


class RequestFraming:
    """The framing of one request; `scan(data)` after each read, `data` holding every byte of
    the request received so far (and possibly the start of the next one)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.head_end = -1
        self.end = -1
        self.chunked = False
        self.expects_continue = False
        self.request_id = ""
        self.path = ""  # the request target's path, once its line has arrived
        self.problem: Problem | None = None
        self._verdict = Verdict.NEED_HEAD
        self._length = 0
        self._pos = 0  # where the next scan resumes
        self._chunk_left = -1  # chunked: data bytes of the current chunk still to come
        self._decoded = 0
        self._in_trailers = False

    @property
    def in_body(self) -> bool:
        """True once the head has arrived."""
        return self.head_end >= 0

    def scan(self, data: bytearray) -> Verdict:
        """The verdict on `data`; leading empty lines are removed from it first (RFC 9112 2.2)."""
        if self._verdict not in (Verdict.NEED_HEAD, Verdict.NEED_BODY):
            return self._verdict
        if self.head_end < 0:
            self._verdict = self._scan_head(data)
        if self._verdict is Verdict.NEED_BODY:
            self._verdict = self._scan_chunked(data) if self.chunked else self._scan_length(data)
        return self._verdict

    def _reject(self, status: int, kind: str, detail: str) -> Verdict:
        self.problem = Problem(status, kind, detail)
        return Verdict.REJECT

    def _scan_head(self, data: bytearray) -> Verdict:
        while data.startswith(b"\r\n"):
            del data[:2]
        if not self.path:
            self.path = _target_path(data)
        at = data.find(_HEAD_END, max(0, self._pos - 3))
        if at < 0:
            self._pos = len(data)
            if len(data) > self.limits.max_head_bytes:
                return self._reject(
                    431,
                    "headers-too-large",
                    f"The request line and headers exceed {self.limits.max_head_bytes:,} bytes.",
                )
            return Verdict.NEED_HEAD
        self.head_end = self._pos = at + 4
        return self._read_head(bytes(data[:at]))

    def _read_head(self, head: bytes) -> Verdict:
        """The body's framing from the head's Content-Length and Transfer-Encoding."""
        lines = head.split(b"\r\n")
        http11 = lines[0].endswith(b"HTTP/1.1")
        lengths: list[bytes] = []
        codings: list[bytes] = []
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                lengths.append(value.strip(b" \t"))
            elif name == b"transfer-encoding":
                codings += [c.strip(b" \t").lower() for c in value.split(b",")]
            elif name == b"expect":
                self.expects_continue = http11 and value.strip(b" \t").lower() == b"100-continue"
            elif name == b"x-request-id":
                self.request_id = value.strip(b" \t").decode("latin-1")
        if codings:
            # gunicorn refuses every other use of Transfer-Encoding in a request before it
            # reads the body, so those heads go to it as they are.
            if codings[-1] != b"chunked" or lengths:
                return Verdict.HEAD_ONLY
            self.chunked = True
            return Verdict.NEED_BODY
        if not lengths:
            self.end = self.head_end
            return Verdict.COMPLETE
        if len(lengths) > 1 or not lengths[0].isdigit():
            return Verdict.HEAD_ONLY  # refused by gunicorn's parser
        self._length = int(lengths[0])
        if self._length > self.limits.max_body_bytes:
            return Verdict.HEAD_ONLY  # refused with 413 by the app before it reads the body
        return Verdict.NEED_BODY

    def _scan_length(self, data: bytearray) -> Verdict:
        if len(data) < self.head_end + self._length:
            return Verdict.NEED_BODY
        self.end = self.head_end + self._length
        return Verdict.COMPLETE

    def _scan_chunked(self, data: bytearray) -> Verdict:
        """Walks chunk-size lines, chunk data and the trailer section, as gunicorn reads them."""
        while True:
            if self._in_trailers:
                return self._scan_trailers(data)
            if self._chunk_left >= 0:
                after = self._pos + self._chunk_left
                if len(data) < after + 2:
                    return Verdict.NEED_BODY
                if data[after : after + 2] != b"\r\n":
                    return self._malformed("a chunk is not followed by CRLF")
                self._pos, self._chunk_left = after + 2, -1
                continue
            line_end = data.find(b"\r\n", self._pos)
            if line_end < 0:
                if len(data) - self._pos > self.limits.max_chunk_line_bytes:
                    return self._malformed("a chunk-size line has no end")
                return Verdict.NEED_BODY
            size = self._chunk_size(bytes(data[self._pos : line_end]))
            if size is None:
                return self._malformed("a chunk size is not a hexadecimal number")
            self._pos = line_end + 2
            if size == 0:
                self._in_trailers = True
                continue
            self._decoded += size
            if self._decoded > self.limits.max_body_bytes:
                return self._reject(
                    413,
                    "body-too-large",
                    f"The body has more than {self.limits.max_body_bytes:,} bytes; at most "
                    f"{self.limits.max_body_bytes:,} are accepted.",
                )
            self._chunk_left = size

    def _scan_trailers(self, data: bytearray) -> Verdict:
        if data[self._pos : self._pos + 2] == b"\r\n":
            self.end = self._pos + 2
            return Verdict.COMPLETE
        at = data.find(_HEAD_END, self._pos)
        if at < 0:
            if len(data) - self._pos > self.limits.max_head_bytes:
                return self._malformed("the trailer section has no end")
            return Verdict.NEED_BODY
        self.end = at + 4
        return Verdict.COMPLETE

    def without_expect(self, data: bytearray) -> bytes:
        """`data` with the head's Expect header removed, for a request whose 100 Continue the
        event loop has sent (gunicorn would send another)."""
        head = _EXPECT.sub(b"", bytes(data[: self.head_end]))
        return head + bytes(data[self.head_end :])

    @staticmethod
    def _chunk_size(line: bytes) -> int | None:
        size, semicolon, extension = line.partition(b";")
        if semicolon:
            if b"\r" in extension:
                return None
            size = size.rstrip(b" \t")
        if not _CHUNK_SIZE.fullmatch(size):
            return None
        return int(size, 16)

    def _malformed(self, why: str) -> Verdict:
        return self._reject(400, "malformed-body", f"The chunked body is malformed: {why}.")


def _target_path(data: bytearray) -> str:
    """The path of the request line at the start of `data`; "" until the line is complete."""
    line_end = data.find(b"\r\n")
    if line_end < 0:
        return ""
    parts = bytes(data[:line_end]).split(b" ")
    target = parts[1] if len(parts) == 3 else b""
    return target.split(b"?", 1)[0].decode("latin-1")
