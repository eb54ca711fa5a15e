"""Connections held per gunicorn worker, posted on a board in memory shared with the master.

gunicorn's workers all accept from one listening socket. A burst of new connections (a client
opening its keep-alive pool) wakes every worker, and the first one awake takes the whole burst:
with wrk's 32 connections, one of two workers held all 32 in 2 of 6 tries, and the server
answered a third of the requests it does when they are split. So every worker posts how many
connections it holds on a board in memory shared with the master, and a worker that holds more
than another worker steps back from accepting for a few milliseconds, leaving the next
connection to the less loaded one. Each pause is short and the worker accepts again after it,
so no connection waits on a worker that cannot take it.
"""

from __future__ import annotations

import mmap

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
