"""Slow and malformed HTTP clients on raw sockets, for the slow-client tests (loopback only).

`trickle` drives many connections at once from one thread: each sends a head (or part of
one), then one byte every `interval_s`, until the server answers or closes, or a time bound
passes; it records how and when each connection ended.
"""

from __future__ import annotations

import select
import socket
import time
from dataclasses import dataclass


@dataclass
class Ended:
    """How one trickling connection ended: what the server sent, and when (seconds after the
    connection started); `closed` is False when the time bound passed first."""

    answer: bytes
    after_s: float
    closed: bool

    @property
    def status(self) -> int | None:
        """The status code of the answer; None when the server closed without one."""
        if not self.answer.startswith(b"HTTP/1.1 "):
            return None
        return int(self.answer[9:12])


def slow_header(port: int) -> bytes:
    """The start of a request whose head is then sent a byte at a time (it never ends)."""
    return f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Slow: ".encode()


def slow_body(port: int, length: int = 100_000) -> bytes:
    """A complete head announcing `length` body bytes, which then come a byte at a time."""
    return (
        f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: image/png\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def trickle(
    port: int, starts: list[bytes], interval_s: float, bound_s: float
) -> tuple[list[Ended], float]:
    """Opens one connection per entry of `starts`, sends it, then one byte (b"a") per
    `interval_s` on each until it ends or `bound_s` passes. Returns how each ended and the
    time.monotonic() at which all were open."""
    socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in starts]
    opened = time.monotonic()
    answers = {sock: bytearray() for sock in socks}
    ended: dict[socket.socket, Ended] = {}
    try:
        for sock, start in zip(socks, starts, strict=True):
            sock.sendall(start)
            sock.setblocking(False)
        next_byte = opened + interval_s
        while len(ended) < len(socks) and time.monotonic() < opened + bound_s:
            live = [sock for sock in socks if sock not in ended]
            wait = max(0.0, min(next_byte, opened + bound_s) - time.monotonic())
            readable, _, _ = select.select(live, [], [], wait)
            for sock in readable:
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    data = b""
                answers[sock] += data
                if not data or b"\r\n\r\n" in answers[sock]:
                    ended[sock] = Ended(bytes(answers[sock]), time.monotonic() - opened, True)
            if time.monotonic() >= next_byte:
                next_byte += interval_s
                for sock in live:
                    if sock not in ended:
                        try:
                            sock.send(b"a")
                        except OSError:
                            ended[sock] = Ended(
                                bytes(answers[sock]), time.monotonic() - opened, True
                            )
        bounded = [ended.get(sock, Ended(bytes(answers[sock]), bound_s, False)) for sock in socks]
    finally:
        for sock in socks:
            sock.close()
    return bounded, opened


def exchange(port: int, data: bytes, timeout_s: float = 10.0) -> bytes:
    """Sends `data` on a new connection; returns everything the server sent until it closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)
