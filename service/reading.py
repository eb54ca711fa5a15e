"""Per-connection state of the worker's event loop: a request being read, an early-answered
connection being drained before its close.

`Reading` holds the bytes of one request until `RequestFraming` finds it complete, and knows
its deadlines: the head must arrive within a total time, the body at a minimum rate over each
window (a per-read timeout would let a client that sends a byte every few hundred milliseconds
hold the connection for ever). `Lingering` reads and discards what a client still sends after
an answer that did not need its body, so the client sees that answer instead of a reset
(nginx's lingering close).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any, NamedTuple

from gunicorn.workers.gthread import TConn

from service.config import Settings
from service.framing import Limits, RequestFraming, Verdict

# Largest read from a client at once. Large reads matter under load: each recv() gives up and
# takes back the GIL, which request threads busy on the CPU may hold for milliseconds.
_READ_BYTES = 1024 * 1024


class ServiceConn(TConn):
    """gthread's connection, with what the event loop learnt while reading its request."""

    def __init__(self, cfg: Any, sock: Any, client: Any, server: Any) -> None:
        super().__init__(cfg, sock, client, server)
        self.body_buffered = True  # False: only the head was read (the body is refused)
        self.chunked = False
        self.path = ""  # the request's path, for errors in its protocol's shape

    def adopt(self, framing: RequestFraming, complete: bool) -> None:
        """Takes what the event loop learnt of the request it hands to a thread."""
        self.body_buffered = complete
        self.chunked = framing.chunked
        self.path = framing.path


class Unfinished(NamedTuple):
    """A thread's answer to finish_request: the next request began arriving but is not
    complete; the event loop reads on from `data`."""

    data: bytes


@dataclass(frozen=True)
class Deadlines:
    """The clocks of the event loop, seconds and bytes per second (from Settings)."""

    header_s: float
    body_window_s: float
    body_min_rate: float
    linger_s: float
    linger_bytes: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Deadlines:
        """The deadlines configured in `settings`."""
        return cls(
            header_s=settings.client_header_timeout_s,
            body_window_s=settings.client_body_timeout_s,
            body_min_rate=settings.client_body_min_rate,
            linger_s=settings.lingering_close_s,
            linger_bytes=settings.lingering_close_bytes,
        )


class Reading:
    """One request arriving on a connection; `receive` after each readable event."""

    def __init__(self, limits: Limits, now: float, data: bytes = b"") -> None:
        self.data = bytearray(data)
        self.framing = RequestFraming(limits)
        self.started = now  # when the wait for this request's head began
        self.continue_sent = False
        self._window_start = now
        self._window_bytes = 0
        self._body_started = False

    def verdict(self, now: float) -> Verdict:
        """The framing's verdict on the bytes received so far; the body's first window opens
        when the head is complete."""
        verdict = self.framing.scan(self.data)
        if self.framing.in_body and not self._body_started:
            self._body_started = True
            self._window_start = now
            self._window_bytes = len(self.data) - self.framing.head_end
        return verdict

    def receive(self, sock: socket.socket, scratch: bytearray) -> bool:
        """Appends what arrived (non-blocking socket); False when the client closed or failed."""
        count = _recv(sock, scratch)
        if count is None:
            return True
        if not count:
            return False
        self.data += memoryview(scratch)[:count]
        if self.framing.in_body:
            self._window_bytes += count
        return True

    def overdue(self, now: float, deadlines: Deadlines) -> str | None:
        """Why the request missed its deadline ('idle', 'header_timeout', 'body_timeout'), or
        None. Each body window that passed at the minimum rate opens the next one."""
        if not self.framing.in_body:
            if now - self.started <= deadlines.header_s:
                return None
            return "header_timeout" if self.data else "idle"
        if now - self._window_start < deadlines.body_window_s:
            return None
        if self._window_bytes < deadlines.body_min_rate * deadlines.body_window_s:
            return "body_timeout"
        self._window_start, self._window_bytes = now, 0
        return None


class Lingering:
    """A connection that was answered and is read and discarded until it closes, `deadline`
    passes or `budget` bytes were thrown away."""

    def __init__(self, deadline: float, budget: int) -> None:
        self.deadline = deadline
        self.budget = budget

    def discard(self, sock: socket.socket, scratch: bytearray) -> bool:
        """Reads and drops what arrived; True when the connection can be closed now."""
        count = _recv(sock, scratch)
        if count is None:
            return False
        self.budget -= count
        return not count or self.budget <= 0


def _recv(sock: socket.socket, scratch: bytearray) -> int | None:
    """Bytes read into `scratch`; None when none are there yet, 0 when the client closed (or
    the connection failed)."""
    try:
        return sock.recv_into(scratch, _READ_BYTES)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return 0


def scratch_buffer() -> bytearray:
    """The buffer the event loop receives into (one per worker, used by its main thread)."""
    return bytearray(_READ_BYTES)
