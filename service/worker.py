"""The gunicorn worker: gthread that drains cleanly on SIGTERM, shares connections fairly and
keeps a busy keep-alive connection on its thread.

gunicorn's workers all accept from one listening socket. A burst of new connections (a client
opening its keep-alive pool) wakes every worker, and the first one awake takes the whole burst:
with wrk's 32 connections, one of two workers held all 32 in 2 of 6 tries, and the server
answered a third of the requests it does when they are split. So every worker posts how many
connections it holds on a board in memory shared with the master, and a worker that holds more
than another worker steps back from accepting for a few milliseconds, leaving the next
connection to the less loaded one. Each pause is short and the worker accepts again after it,
so no connection waits on a worker that cannot take it.

gthread hands every kept-alive connection back to its event loop after each response, so each
request costs two hand-offs between threads (and a cold thread) before it is read. Measured with
wrk at concurrency 1 on the echo route: p50 1.12 ms and 1.14 ms of CPU per request that way,
0.53 ms and 0.56 ms when the thread that answered waits briefly for the connection's next request
and reads it itself. So a thread does that for up to KEEPALIVE_HOLD_S, but only while no other
connection is waiting for a thread: then it hands the connection back as before.
"""

from __future__ import annotations

import mmap
import select
import socket
import threading
import time
from typing import Any

from gunicorn.workers.gthread import ThreadWorker

# How long a worker that is ahead leaves new connections to the others, seconds.
ACCEPT_PAUSE_S = 0.005
# How long a thread waits for the next request on the keep-alive connection it just answered.
KEEPALIVE_HOLD_S = 0.002
_FREE = -1


class ConnectionBoard:
    """Connections held per worker slot, in an anonymous mapping shared across fork().

    The master claims a slot for each worker before forking it and frees it when the worker
    exits; the worker posts its count. Reads and writes of one aligned int need no lock.
    """

    def __init__(self, slots: int = 64) -> None:
        self._map = mmap.mmap(-1, 4 * slots)
        self._counts = memoryview(self._map).cast("i")
        for slot in range(slots):
            self._counts[slot] = _FREE

    def claim(self) -> int | None:
        """A free slot, now counting 0 connections (master only); None when all are taken."""
        for slot, count in enumerate(self._counts):
            if count == _FREE:
                self._counts[slot] = 0
                return slot
        return None

    def release(self, slot: int | None) -> None:
        """Frees the slot of an exited worker (master only)."""
        if slot is not None:
            self._counts[slot] = _FREE

    def post(self, slot: int, connections: int) -> None:
        """Records how many connections the worker in `slot` holds."""
        self._counts[slot] = connections

    def fewest_elsewhere(self, slot: int) -> int | None:
        """The smallest count among the other workers; None when there are none."""
        others = [c for s, c in enumerate(self._counts) if c != _FREE and s != slot]
        return min(others) if others else None


BOARD = ConnectionBoard()


class ServiceWorker(ThreadWorker):
    """gthread with fair accepting (see the module) and an immediate close on SIGTERM.

    Plain gthread only stops accepting on SIGTERM; the kernel keeps queueing new connections
    on the still-open socket and resets them when the drain ends. Closed at once (the master
    closes its copies too), new connections are refused while in-flight requests finish. The
    close happens in the main loop right after the signal (not in the signal handler, which
    could race an accept of the same socket), and only closes this process's copy, so on a HUP
    reload the new workers keep listening.
    """

    # Set by gunicorn_conf.pre_fork in the master; None leaves accepting as in plain gthread.
    board_slot: int | None = None
    _resume_accepting_at = 0.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Connections handed to the thread pool that no thread has picked up yet.
        self._waiting = 0
        self._waiting_lock = threading.Lock()

    def enqueue_req(self, conn: Any) -> None:
        """Hands the connection to the thread pool, counting it as waiting for a thread."""
        with self._waiting_lock:
            self._waiting += 1
        super().enqueue_req(conn)

    def handle(self, conn: Any) -> Any:
        """gthread's handling of one request, repeated while the connection's next request
        arrives within KEEPALIVE_HOLD_S and no other connection waits for a thread."""
        with self._waiting_lock:
            self._waiting -= 1
        keepalive = super().handle(conn)
        while keepalive is True and self._next_request_here(conn):
            keepalive = super().handle(conn)
        return keepalive

    def _next_request_here(self, conn: Any) -> bool:
        if not self.alive or conn.is_http2 or self._waiting:
            return False
        # Bytes already read past the last request (pipelining) do not make the socket readable.
        if not conn.parser.unreader.buf.getvalue():
            poller = select.poll()
            poller.register(conn.sock, select.POLLIN)
            if not poller.poll(KEEPALIVE_HOLD_S * 1000):
                return False
        # A connection that queued up meanwhile goes first.
        return self.alive and not self._waiting

    def _ahead(self) -> bool:
        """True while another worker holds fewer connections than this one."""
        if self.board_slot is None:
            return False
        fewest = BOARD.fewest_elsewhere(self.board_slot)
        return fewest is not None and self.nr_conns > fewest

    def _post(self) -> None:
        if self.board_slot is not None:
            BOARD.post(self.board_slot, self.nr_conns)

    def accept(self, listener: socket.socket) -> None:
        """Accepts one connection; a worker now ahead of another pauses accepting."""
        super().accept(listener)
        self._post()
        if self._ahead():
            self._resume_accepting_at = time.monotonic() + ACCEPT_PAUSE_S
            self.set_accept_enabled(False)

    def set_accept_enabled(self, enabled: bool) -> None:
        """Stops or starts accepting; stopping for good (shutdown) also closes the listeners.

        Starting is put off while the pause runs and the worker is still ahead.
        """
        if enabled and time.monotonic() < self._resume_accepting_at and self._ahead():
            return
        super().set_accept_enabled(enabled)
        if not enabled and not self.alive:
            for listener in self.sockets:
                listener.close()

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        """gthread's event wait, after posting the count; cut short to end a pause on time."""
        self._post()
        pause_left = self._resume_accepting_at - time.monotonic()
        if pause_left > 0 and not self._accepting:
            timeout = min(timeout, pause_left)
        super().wait_for_and_dispatch_events(timeout)
