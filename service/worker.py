"""The gunicorn worker: gthread that reads each request in its event loop before a thread sees
it, drains cleanly on SIGTERM, shares connections fairly and keeps a busy keep-alive connection
on its thread.

A thread only ever gets a complete request. Plain gthread hands a connection to a thread as soon
as it is readable, and the thread then blocks until the whole request has arrived: a few dozen
clients sending a byte at a time held every thread and stopped the service. Here the event loop
reads the request line, the headers and (up to the upload limit) the body into memory without
blocking (service/reading.py, service/framing.py), with deadlines like nginx's
client_header_timeout and client_body_timeout and a bound on how many connections may be in
that state. A request that misses its deadline gets a 408 (a connection that sent nothing is
just closed); malformed framing gets a 400, an oversized head or chunked body a 431/413; each
as problem+json, or in the error shape of the path's protocol (service.problems). A request
that arrives whole in one read goes to a thread at once. A connection closed after an answer
that did not read the body (an early 413 or 401) is first drained for a bounded time and byte
count, so a client that writes its whole body before reading sees the answer.

Accepting is fair between workers (service/board.py).

gthread hands every kept-alive connection back to its event loop after each response, so each
request costs two hand-offs between threads (and a cold thread) before it is read. So the thread
that answered waits up to KEEPALIVE_HOLD_S for the connection's next request and serves it
itself, but only while no other connection is waiting for a thread, and only when that request
arrives complete; otherwise it hands the connection back.

This reaches into gthread's internals: service/gthread_fence.py checks at import that they are
still there.
"""

from __future__ import annotations

import contextlib
import errno
import select
import socket
import threading
import time
from functools import partial
from selectors import EVENT_READ
from typing import Any

from gunicorn.http import RequestParser
from gunicorn.http.errors import NoMoreData
from gunicorn.workers.gthread import ThreadWorker

from service.board import BOARD
from service.config import Settings
from service.framing import Limits, Verdict
from service.gthread_fence import check_gunicorn
from service.problems import PARSE_ERRORS, raw_answer
from service.reading import Deadlines, Lingering, Reading, ServiceConn, Unfinished, scratch_buffer

# How long a worker that is ahead leaves new connections to the others, seconds.
ACCEPT_PAUSE_S = 0.005
# How long a thread waits for the next request on the keep-alive connection it just answered.
KEEPALIVE_HOLD_S = 0.002
# How often the event loop looks for connections past their deadline, seconds.
SWEEP_S = 0.1
# How long a stopping worker keeps a connection that has not sent a byte yet, or a lingering
# one, seconds.
STOP_IDLE_S = 2.0


check_gunicorn()


class _StatusOnly:
    """Stands in for the client socket to learn which status gunicorn's handle_error chose."""

    status = 500

    def gettimeout(self) -> float:
        return 0.0

    def sendall(self, data: bytes) -> None:
        self.status = int(data.split(b" ", 2)[1])


class ServiceWorker(ThreadWorker):
    """gthread that reads requests in its event loop (see the module), accepts fairly and
    closes its listening socket at once on SIGTERM.

    Plain gthread only stops accepting on SIGTERM; the kernel keeps queueing new connections
    on the still-open socket and resets them when the drain ends. Closed at once (the master
    closes its copies too), new connections are refused while in-flight requests finish. The
    close happens in the main loop right after the signal (not in the signal handler, which
    could race an accept of the same socket), and only closes this process's copy, so on a HUP
    reload the new workers keep listening.
    """

    # Set by gunicorn_conf.pre_fork in the master; None leaves accepting as in plain gthread.
    board_slot: int | None = None
    # Set by gunicorn_conf.pre_fork; a worker started without it reads the environment.
    settings: Settings | None = None
    _resume_accepting_at = 0.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Connections handed to the thread pool that no thread has picked up yet.
        self._waiting = 0
        self._waiting_lock = threading.Lock()
        # The path of the request each thread is answering, for handle_error's answer shape.
        self._answering = threading.local()
        self._reading: dict[ServiceConn, Reading] = {}
        self._lingering: dict[ServiceConn, Lingering] = {}
        self._next_sweep = 0.0
        self._stopping_since: float | None = None

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        """gthread's checks; TLS and HTTP/2 are refused (terminate them in front, e.g. nginx)."""
        super().check_config(cfg, log)
        if cfg.is_ssl or "h2" in cfg.http_protocols:
            raise RuntimeError("ServiceWorker serves plain HTTP/1.1; terminate TLS/HTTP/2 ahead.")

    def init_process(self) -> None:
        """Sets up the event loop's reading (after the fork), then runs gthread's."""
        from service.metrics import REQUEST_READ_ERRORS  # after the fork: multiprocess files

        settings = self.settings or Settings()
        cfg = self.cfg
        field = cfg.limit_request_field_size or 8190
        self._limits = Limits(
            max_head_bytes=(cfg.limit_request_line or 8190)
            + (cfg.limit_request_fields or 100) * (field + 2)
            + 4,
            max_body_bytes=settings.max_upload_bytes,
            max_chunk_line_bytes=field,
        )
        self._deadlines = Deadlines.from_settings(settings)
        self._max_reading = settings.max_reading_connections
        self._read_errors = REQUEST_READ_ERRORS
        self._scratch = scratch_buffer()
        super().init_process()

    # --- the event loop: accepting and reading ---------------------------------------------

    def accept(self, listener: socket.socket) -> None:
        """Accepts one connection and starts reading its request; pauses accepting while this
        worker is ahead of another or holds max_reading_connections unfinished requests."""
        try:
            sock, client = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn = ServiceConn(self.cfg, sock, client, listener.getsockname())
        conn.init()  # the HTTP/1.1 parser (check_config rules out TLS and HTTP/2)
        conn.sock.setblocking(False)
        self._read(conn, Reading(self._limits, time.monotonic()))
        self._post()
        if self._ahead():
            self._resume_accepting_at = time.monotonic() + ACCEPT_PAUSE_S
        if self._ahead() or len(self._reading) >= self._max_reading:
            self.set_accept_enabled(False)

    def on_client_socket_readable(self, conn: Any, client: Any) -> None:
        """A kept-alive connection's next request began: read it here, not in a thread."""
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._read(conn, Reading(self._limits, time.monotonic()))

    def _read(self, conn: ServiceConn, reading: Reading, receive: bool = True) -> None:
        """Reads what arrived (unless `receive` is False: `reading` holds bytes already) and
        acts on the verdict: hand the request to a thread, answer it, or wait for more."""
        if receive and not reading.receive(conn.sock, self._scratch):
            self._drop(conn)
            return
        verdict = reading.verdict(time.monotonic())
        if verdict in (Verdict.NEED_HEAD, Verdict.NEED_BODY):
            if reading.framing.expects_continue and not reading.continue_sent:
                reading.continue_sent = True
                self._send(conn, b"HTTP/1.1 100 Continue\r\n\r\n")
            if conn not in self._reading:
                self._reading[conn] = reading
                self.poller.register(conn.sock, EVENT_READ, partial(self._on_readable, conn))
            return
        if verdict is Verdict.REJECT:
            problem = reading.framing.problem
            assert problem is not None
            reason = "malformed" if problem.status == 400 else "too_large"
            self._answer_early(conn, reading, reason, problem.status, problem.kind, problem.detail)
            return
        self._stop_reading(conn)
        conn.adopt(reading.framing, verdict is Verdict.COMPLETE)
        if reading.continue_sent:
            conn.parser.unreader.unread(reading.framing.without_expect(reading.data))
        else:
            conn.parser.unreader.unread(bytes(reading.data))
        conn.sock.setblocking(True)
        self.enqueue_req(conn)

    def _on_readable(self, conn: ServiceConn, _sock: Any) -> None:
        self._read(conn, self._reading[conn])

    def _stop_reading(self, conn: ServiceConn) -> None:
        if self._reading.pop(conn, None) is not None:
            self.poller.unregister(conn.sock)

    def _send(self, conn: ServiceConn, data: bytes) -> None:
        """Writes a short answer on a non-blocking socket whose send buffer is empty."""
        with contextlib.suppress(OSError):  # the client is gone; the close that follows cleans up
            conn.sock.send(data)

    def _answer_early(
        self, conn: ServiceConn, reading: Reading, reason: str, status: int, kind: str, detail: str
    ) -> None:
        """Answers a request the loop refuses (in its protocol's error shape), counts it, and
        lingers."""
        self._stop_reading(conn)
        self._read_errors.labels(reason).inc()
        framing = reading.framing
        self._send(conn, raw_answer(status, kind, detail, framing.request_id, framing.path))
        self._linger(conn)

    # --- closing: lingering and dropping ---------------------------------------------------

    def _linger(self, conn: ServiceConn) -> None:
        """Half-closes, then discards what the client still sends until it closes (bounded)."""
        conn.sock.setblocking(False)
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._drop(conn)
            return
        deadlines = self._deadlines
        deadline = time.monotonic() + deadlines.linger_s
        self._lingering[conn] = Lingering(deadline, deadlines.linger_bytes)
        self.poller.register(conn.sock, EVENT_READ, partial(self._on_lingering, conn))

    def _on_lingering(self, conn: ServiceConn, _sock: Any) -> None:
        if self._lingering[conn].discard(conn.sock, self._scratch):
            self._drop(conn)

    def _drop(self, conn: ServiceConn) -> None:
        """Closes a connection the event loop holds (reading or lingering)."""
        self._stop_reading(conn)
        if self._lingering.pop(conn, None) is not None:
            self.poller.unregister(conn.sock)
        self.nr_conns -= 1
        conn.close()

    def murder_pending(self) -> None:
        """gthread's sweep of deferred connections, then ours: unfinished requests past their
        deadline and lingering connections past theirs (at most every SWEEP_S)."""
        super().murder_pending()
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_S
        if not self.alive and self._stopping_since is None:
            self._stopping_since = now
        stopped = self._stopping_since is not None and now - self._stopping_since > STOP_IDLE_S
        for conn, reading in list(self._reading.items()):
            reason = reading.overdue(now, self._deadlines)
            if reason is None and stopped and not reading.data:
                reason = "idle"
            if reason == "idle":
                self._read_errors.labels(reason).inc()
                self._drop(conn)
            elif reason is not None:
                self._answer_early(
                    conn,
                    reading,
                    reason,
                    408,
                    "request-timeout",
                    "The request did not arrive in time: its head within "
                    f"{self._deadlines.header_s:g} s, its body at "
                    f"{self._deadlines.body_min_rate:g} bytes/s or faster.",
                )
        for conn, lingering in list(self._lingering.items()):
            if now > lingering.deadline or stopped:
                self._drop(conn)

    # --- hand-offs between the event loop and the threads ----------------------------------

    def finish_request(self, conn: Any, fs: Any) -> None:
        """After a thread: a kept-alive connection goes back to the poller (as in gthread),
        a started next request is read on here, and a closing connection lingers."""
        try:
            result = fs.result() if not fs.cancelled() else False
        except Exception:
            result = False
        if isinstance(result, Unfinished):
            conn.sock.setblocking(False)
            self._read(conn, Reading(self._limits, time.monotonic(), result.data), receive=False)
        elif result is True and conn.parser.unreader.buf.getvalue():
            # A pipelined request (or its start) was read with the previous one.
            conn.sock.setblocking(False)
            data = conn.parser.unreader.take_buffered()
            self._read(conn, Reading(self._limits, time.monotonic(), data), receive=False)
        elif result is True:
            super().finish_request(conn, fs)
        else:
            self._linger(conn)

    def enqueue_req(self, conn: Any) -> None:
        """Hands the connection to the thread pool, counting it as waiting for a thread."""
        with self._waiting_lock:
            self._waiting += 1
        super().enqueue_req(conn)

    # --- in a thread -----------------------------------------------------------------------

    def handle(self, conn: Any) -> Any:
        """Serves the complete request the event loop read, then (while no other connection
        waits for a thread) the connection's next ones that arrive complete within
        KEEPALIVE_HOLD_S."""
        with self._waiting_lock:
            self._waiting -= 1
        keepalive = self._serve(conn)
        while keepalive is True:
            following = self._next_request_here(conn)
            if following is not True:
                return keepalive if following is None else following
            keepalive = self._serve(conn)
        return keepalive

    def _serve(self, conn: ServiceConn) -> Any:
        """gthread's handling of one request, after gunicorn's own parser has accepted a
        chunked body (a malformed one would otherwise fail inside the app as a 500)."""
        self._answering.path = conn.path
        if conn.chunked:
            conn.chunked = False
            try:
                request = next(RequestParser(self.cfg, [conn.parser.unreader.buf.getvalue()], None))
                while request.body.read(1 << 20):
                    pass
            except (NoMoreData, StopIteration):
                pass  # the framing found the end; gunicorn's reader will too
            except Exception as exc:
                self.handle_error(None, conn.sock, conn.client, exc)
                return False
        return super().handle(conn)

    def _next_request_here(self, conn: ServiceConn) -> bool | Unfinished | None:
        """True when the connection's next request is here complete (buffered for the parser);
        None when none came in time or another connection waits (keep it alive in the loop);
        False when the client closed; Unfinished when it began but the loop must read on."""
        if not self.alive or conn.is_http2 or self._waiting:
            return None
        data = conn.parser.unreader.take_buffered()
        if not data:
            poller = select.poll()
            poller.register(conn.sock, select.POLLIN)
            if not poller.poll(KEEPALIVE_HOLD_S * 1000):
                return None
            try:
                data = conn.sock.recv(65536, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return None
            except OSError:
                return False
            if not data:
                return False
        reading = Reading(self._limits, time.monotonic(), data)
        verdict = reading.verdict(time.monotonic())
        # A connection that queued up meanwhile goes first.
        if not self.alive or self._waiting or verdict not in (Verdict.COMPLETE, Verdict.HEAD_ONLY):
            return Unfinished(data)
        conn.adopt(reading.framing, verdict is Verdict.COMPLETE)
        conn.parser.unreader.unread(data)
        return True

    def handle_request(self, req: Any, conn: Any) -> Any:
        """gthread's; a request whose body was not read (refused before it) closes after its
        answer, and finish_request lingers on it."""
        if not conn.body_buffered:
            req.force_close()
        return super().handle_request(req, conn)

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        """gunicorn's handling of a request it could not parse (its status and log line), with
        an answer in the path's error shape (problem+json by default) instead of its HTML page."""
        chosen = _StatusOnly()
        super().handle_error(req, chosen, addr, exc)
        kind, detail = PARSE_ERRORS.get(
            chosen.status, ("internal-error", "The server failed to answer this request.")
        )
        request_id = ""
        for name, value in getattr(req, "headers", None) or ():
            if name == "X-REQUEST-ID":
                request_id = value
        path = str(getattr(req, "path", None) or getattr(self._answering, "path", ""))
        try:
            client.sendall(raw_answer(chosen.status, kind, detail, request_id, path))
        except OSError:
            self.log.debug("Failed to send error message.")

    # --- fair accepting and the SIGTERM close ----------------------------------------------

    def _ahead(self) -> bool:
        """True while another worker holds fewer connections than this one."""
        if self.board_slot is None:
            return False
        fewest = BOARD.fewest_elsewhere(self.board_slot)
        return fewest is not None and self.nr_conns > fewest

    def _post(self) -> None:
        if self.board_slot is not None:
            BOARD.post(self.board_slot, self.nr_conns)

    def set_accept_enabled(self, enabled: bool) -> None:
        """Stops or starts accepting; stopping for good (shutdown) also closes the listeners.

        Starting is put off while the fairness pause runs and the worker is still ahead, and
        while max_reading_connections requests are still arriving.
        """
        if enabled and (
            (time.monotonic() < self._resume_accepting_at and self._ahead())
            or len(self._reading) >= self._max_reading
        ):
            return
        super().set_accept_enabled(enabled)
        if not enabled and not self.alive:
            for listener in self.sockets:
                listener.close()

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        """gthread's event wait, after posting the count; cut short to end a pause on time and
        to keep the deadlines of unfinished requests and lingering connections."""
        self._post()
        pause_left = self._resume_accepting_at - time.monotonic()
        if pause_left > 0 and not self._accepting:
            timeout = min(timeout, pause_left)
        if self._reading or self._lingering:
            timeout = min(timeout, SWEEP_S)
        super().wait_for_and_dispatch_events(timeout)
