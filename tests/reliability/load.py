"""A small, bounded HTTP load generator for the reliability tests (loopback only).

Each client thread owns one keep-alive connection (http.client) and sends prepared requests;
like urllib3, it reconnects before reusing a connection the server has closed, so a failure
recorded here is a request that was really sent and got no answer. Every run stops by itself
after `duration_s` seconds or `total` requests, whichever comes first.
"""

from __future__ import annotations

import http.client
import itertools
import math
import select
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Call:
    """One prepared HTTP request."""

    method: str
    path: str
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    """What one request got; status None means the connection failed (error says how)."""

    call: Call
    sent_at: float  # seconds since the run started (the scheduled time in open-loop runs)
    latency_s: float
    status: int | None
    error: str | None = None
    retry_after: str | None = None
    body: bytes = b""


@dataclass
class LoadResult:
    """Every outcome of a run, with the wall time it took."""

    outcomes: list[Outcome]
    wall_s: float

    def statuses(self) -> dict[int | None, int]:
        """How many outcomes had each status (None: connection failures)."""
        counts: dict[int | None, int] = {}
        for outcome in self.outcomes:
            counts[outcome.status] = counts.get(outcome.status, 0) + 1
        return counts

    def ok(self) -> list[Outcome]:
        """The outcomes answered 200."""
        return [o for o in self.outcomes if o.status == 200]

    def failures(self) -> list[Outcome]:
        """Outcomes that are neither 200 nor 503 with Retry-After."""
        return [
            o
            for o in self.outcomes
            if not (o.status == 200 or (o.status == 503 and o.retry_after is not None))
        ]

    def throughput(self) -> float:
        """Answered requests per second."""
        answered = sum(1 for o in self.outcomes if o.status is not None)
        return answered / self.wall_s if self.wall_s > 0 else 0.0


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by the nearest-rank method; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


class _Client:
    def __init__(self, url: str, timeout: float) -> None:
        parts = urlsplit(url)
        assert parts.hostname in ("127.0.0.1", "localhost", "::1"), "load only on loopback"
        self.host = parts.hostname
        self.port = parts.port or 80
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None

    def send(self, call: Call) -> tuple[int, str | None, bytes]:
        conn = self._connection()
        try:
            conn.request(call.method, call.path, body=call.body, headers=call.headers)
            response = conn.getresponse()
            body = response.read()
        except BaseException:
            conn.close()
            self.conn = None
            raise
        if response.will_close:
            conn.close()
            self.conn = None
        return response.status, response.getheader("Retry-After"), body

    def _connection(self) -> http.client.HTTPConnection:
        if self.conn is not None and self.conn.sock is not None:
            readable, _, _ = select.select([self.conn.sock], [], [], 0)
            if readable:  # an idle keep-alive connection is readable only once closed
                self.conn.close()
                self.conn = None
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        return self.conn

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def run_load(
    url: str,
    calls: Sequence[Call],
    *,
    connections: int,
    duration_s: float,
    total: int | None = None,
    rate: float | None = None,
    timeout_s: float = 30.0,
    keep_body: Callable[[Call, int], bool] | None = None,
    stop: threading.Event | None = None,
    started: float | None = None,
) -> LoadResult:
    """Sends `calls` round-robin from `connections` threads until time, count or `stop` runs out.

    Closed loop when `rate` is None (each thread sends its next request when the last one is
    answered); open loop at `rate` requests/s otherwise, with latency measured from each
    request's scheduled time, so a client that falls behind still reports the wait.
    `started` (a time.monotonic() value, default now) is the zero of Outcome.sent_at.
    """
    counter = itertools.count()
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    stop = stop or threading.Event()
    started = time.monotonic() if started is None else started
    end = started + duration_s

    def worker() -> None:
        client = _Client(url, timeout_s)
        local: list[Outcome] = []
        try:
            while not stop.is_set():
                index = next(counter)
                if total is not None and index >= total:
                    break
                scheduled = started + index / rate if rate else time.monotonic()
                if scheduled >= end:
                    break
                delay = scheduled - time.monotonic()
                if delay > 0 and stop.wait(delay):
                    break
                call = calls[index % len(calls)]
                try:
                    status, retry_after, body = client.send(call)
                except (OSError, http.client.HTTPException) as exc:
                    local.append(
                        Outcome(
                            call,
                            scheduled - started,
                            time.monotonic() - scheduled,
                            None,
                            f"{type(exc).__name__}: {exc}",
                        )
                    )
                    stop.wait(0.01)  # a refused client retries soon, not in a busy loop
                    continue
                kept = body if keep_body is not None and keep_body(call, status) else b""
                local.append(
                    Outcome(
                        call,
                        scheduled - started,
                        time.monotonic() - scheduled,
                        status,
                        None,
                        retry_after,
                        kept,
                    )
                )
        finally:
            client.close()
            with lock:
                outcomes.extend(local)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(duration_s + timeout_s + 10)
    wall = time.monotonic() - started
    outcomes.sort(key=lambda o: o.sent_at)
    return LoadResult(outcomes, wall)


class BackgroundLoad:
    """run_load in a background thread: `with BackgroundLoad(...) as load: ...; load.result`."""

    def __init__(self, url: str, calls: Sequence[Call], **kwargs: object) -> None:
        self.stop = threading.Event()
        self.result: LoadResult | None = None
        self.started = time.monotonic()

        def target() -> None:
            self.result = run_load(
                url,
                calls,
                stop=self.stop,
                started=self.started,
                **kwargs,  # type: ignore[arg-type]
            )

        self._thread = threading.Thread(target=target, daemon=True)

    def __enter__(self) -> BackgroundLoad:
        self.started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._thread.join(120)

    def since_start(self) -> float:
        """Seconds since the load started (the clock of Outcome.sent_at)."""
        return time.monotonic() - self.started
