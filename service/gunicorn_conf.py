"""gunicorn configuration: `gunicorn -c python:service.gunicorn_conf 'service:create_app()'`.

Sized from Settings (workers x torch threads never exceed the cores). The master prepares the
prometheus-client multiprocess directory before any worker starts and tells prometheus-client
when a worker dies, so /metrics stays one coherent view across workers.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from gunicorn.workers.gthread import ThreadWorker

from service.config import Settings

_settings = Settings()

# prometheus-client picks its storage when first imported, so this must be set before
# any worker imports it.
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(_settings.metrics_dir)

bind = _settings.bind
workers = _settings.workers
threads = _settings.threads


class DrainingThreadWorker(ThreadWorker):
    """gthread, but a SIGTERM closes the listening sockets at once, not after the drain.

    Plain gthread only stops accepting; the kernel keeps queueing new connections on the
    still-open socket and resets them when the drain ends. Closed at once (the master closes
    its copies too), new connections are refused while in-flight requests finish. The close
    happens in the main loop right after the signal (not in the signal handler, which could
    race an accept of the same socket), and only closes this process's copy, so on a HUP
    reload the new workers keep listening.
    """

    def set_accept_enabled(self, enabled: bool) -> None:
        """Stops or starts accepting; stopping for good (shutdown) also closes the listeners."""
        super().set_accept_enabled(enabled)
        if not enabled and not self.alive:
            for listener in self.sockets:
                listener.close()


worker_class = DrainingThreadWorker
timeout = _settings.worker_timeout_s
graceful_timeout = _settings.graceful_timeout_s
keepalive = 5
# The app writes its own JSON access log with request ids.
accesslog = None
errorlog = "-"
loglevel = _settings.log_level
# Connections gunicorn accepts but has not answered yet are bounded by the threads; the rest
# wait in the kernel backlog.
backlog = 2048
logconfig_dict: dict[str, Any] = (
    {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "service.logs.JsonFormatter"}},
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {"gunicorn.error": {"handlers": ["console"], "level": loglevel.upper()}},
        "root": {"handlers": [], "level": "WARNING"},
    }
    if _settings.log_format == "json"
    else {}
)


def on_starting(server: Any) -> None:
    """Empties the metrics directory so counters start from zero with this server."""
    directory = _settings.metrics_dir
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)


def child_exit(server: Any, worker: Any) -> None:
    """Drops the live-gauge samples of a worker that exited (killed, restarted or stopped)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def worker_exit(server: Any, worker: Any) -> None:
    """Lets the worker's engine finish queued forward passes before the process ends."""
    app = getattr(worker, "wsgi", None)
    engine = getattr(app, "extensions", {}).get("convserve.engine")
    if engine is not None:
        engine.stop()
