"""gunicorn configuration: `gunicorn -c python:service.gunicorn_conf 'service:create_app()'`.

Sized from Settings (workers x torch threads never exceed the cores). The master prepares the
prometheus-client multiprocess directory before any worker starts and tells prometheus-client
when a worker dies, so /metrics stays one coherent view across workers.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from gunicorn.glogging import Logger

from service.board import BOARD
from service.config import Settings
from service.worker import ServiceWorker

_settings = Settings()

# prometheus-client picks its storage when first imported, so this must be set before
# any worker imports it.
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(_settings.metrics_dir)

bind = _settings.bind
workers = _settings.workers
threads = _settings.threads
worker_class = ServiceWorker
timeout = _settings.worker_timeout_s
graceful_timeout = _settings.graceful_timeout_s
keepalive = 5
# The app writes its own JSON access log with request ids (see QuietAccessLogger).
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


class QuietAccessLogger(Logger):
    """gunicorn's logger without gunicorn's access log: the app logs each request itself.

    With a logconfig_dict set, gunicorn builds the access-log fields of every request even
    though no handler prints them.
    """

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        """Logs nothing."""


logger_class = QuietAccessLogger


def on_starting(server: Any) -> None:
    """Empties the metrics directory so counters start from zero with this server."""
    directory = _settings.metrics_dir
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)


def pre_fork(server: Any, worker: Any) -> None:
    """Gives the worker its slot on the connection board (service.worker) and the settings
    (its deadlines for reading requests) before the fork."""
    worker.board_slot = BOARD.claim()
    worker.settings = _settings


def child_exit(server: Any, worker: Any) -> None:
    """Drops the live-gauge samples and the board slot of a worker that exited."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
    BOARD.release(getattr(worker, "board_slot", None))


def worker_exit(server: Any, worker: Any) -> None:
    """Stops the engine's housekeeping thread as the worker exits (its requests are done)."""
    app = getattr(worker, "wsgi", None)
    engine = getattr(app, "extensions", {}).get("convserve.engine")
    if engine is not None:
        engine.stop()
