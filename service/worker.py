"""The gunicorn worker: gthread that drains cleanly on SIGTERM and shares connections fairly.

gunicorn's workers all accept from one listening socket. A burst of new connections (a client
opening its keep-alive pool) wakes every worker, and the first one awake takes the whole burst:
with wrk's 32 connections, one of two workers held all 32 in 2 of 6 tries, and the server
answered a third of the requests it does when they are split. Here a worker that holds as many
connections as it has threads ("full") steps back from accepting for a few milliseconds, so a
worker with room takes the next connection; when every worker is full they still accept, one
connection per pause, so no client is ever starved.
"""

from __future__ import annotations

import socket
import time

from gunicorn.workers.gthread import ThreadWorker

# How long a full worker leaves new connections to the others, seconds.
ACCEPT_PAUSE_S = 0.005


class ServiceWorker(ThreadWorker):
    """gthread with fair accepting (see the module) and an immediate close on SIGTERM.

    Plain gthread only stops accepting on SIGTERM; the kernel keeps queueing new connections
    on the still-open socket and resets them when the drain ends. Closed at once (the master
    closes its copies too), new connections are refused while in-flight requests finish. The
    close happens in the main loop right after the signal (not in the signal handler, which
    could race an accept of the same socket), and only closes this process's copy, so on a HUP
    reload the new workers keep listening.
    """

    _resume_accepting_at = 0.0

    @property
    def full(self) -> bool:
        """True while this worker holds at least as many connections as it has threads."""
        return bool(self.nr_conns >= self.cfg.threads)

    def accept(self, listener: socket.socket) -> None:
        """Accepts one connection; a worker that is now full pauses accepting."""
        super().accept(listener)
        if self.full:
            self._resume_accepting_at = time.monotonic() + ACCEPT_PAUSE_S
            self.set_accept_enabled(False)

    def set_accept_enabled(self, enabled: bool) -> None:
        """Stops or starts accepting; stopping for good (shutdown) also closes the listeners.

        Starting is put off while the worker is full and its pause has not yet run out.
        """
        if enabled and self.full and time.monotonic() < self._resume_accepting_at:
            return
        super().set_accept_enabled(enabled)
        if not enabled and not self.alive:
            for listener in self.sockets:
                listener.close()

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        """gthread's event wait, cut short so that a paused worker resumes accepting on time."""
        pause_left = self._resume_accepting_at - time.monotonic()
        if pause_left > 0 and not self._accepting:
            timeout = min(timeout, pause_left)
        super().wait_for_and_dispatch_events(timeout)
