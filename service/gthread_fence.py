"""The fence around service.worker's use of gunicorn's gthread internals.

service/worker.py overrides gthread methods and reads attributes that gthread sets; both move
between gunicorn releases (on 23.x `accept` has another signature, on 24.x `conn.is_http2` does
not exist). `check_gunicorn` runs when the worker is imported and fails with the gunicorn
version and the names that moved, instead of a worker that misbehaves. pyproject.toml declares
the gunicorn range the worker was tested with.
"""

from __future__ import annotations

import inspect
from types import ModuleType

import gunicorn
from gunicorn import util
from gunicorn.http.parser import Parser
from gunicorn.http.unreader import Unreader
from gunicorn.workers.base import Worker
from gunicorn.workers.gthread import TConn, ThreadWorker

# What service.worker overrides, calls or reads in gunicorn: methods and functions (with their
# parameters), and the attributes each class's __init__ sets.
_OVERRIDDEN: dict[type | ModuleType, dict[str, tuple[str, ...]]] = {
    ThreadWorker: {
        "accept": ("self", "listener"),
        "enqueue_req": ("self", "conn"),
        "handle": ("self", "conn"),
        "handle_request": ("self", "req", "conn"),
        "finish_request": ("self", "conn", "fs"),
        "on_client_socket_readable": ("self", "conn", "client"),
        "murder_pending": ("self",),
        "set_accept_enabled": ("self", "enabled"),
        "wait_for_and_dispatch_events": ("self", "timeout"),
        "init_process": ("self",),
        "check_config": ("cfg", "log"),
    },
    Worker: {"handle_error": ("self", "req", "client", "addr", "exc")},
    TConn: {"__init__": ("self", "cfg", "sock", "client", "server"), "init": ("self",)},
    Unreader: {"unread": ("self", "data"), "take_buffered": ("self",)},
    Parser: {"__init__": ("self", "cfg", "source", "source_addr")},
    # handle_error's answer is written by this; the worker reads its status line.
    util: {"write_error": ("sock", "status_int", "reason", "mesg")},
}
_ATTRIBUTES: dict[type, tuple[str, ...]] = {
    ThreadWorker: (
        "nr_conns",
        "_accepting",
        "poller",
        "keepalived_conns",
        "worker_connections",
        "method_queue",
    ),
    TConn: ("parser", "sock", "client", "initialized", "is_http2"),
    Unreader: ("buf",),
}


def missing_gthread_names() -> list[str]:
    """The gunicorn names this worker relies on that the installed gunicorn lacks or changed."""
    missing = []
    for owner, methods in _OVERRIDDEN.items():
        for name, parameters in methods.items():
            method = getattr(owner, name, None)
            if method is None or tuple(inspect.signature(method).parameters) != parameters:
                missing.append(f"{owner.__name__}.{name}{parameters}")
    for owner, attributes in _ATTRIBUTES.items():
        assigned = vars(owner)["__init__"].__code__.co_names
        missing += [f"{owner.__name__}.{name}" for name in attributes if name not in assigned]
    return missing


def check_gunicorn() -> None:
    """Raises ImportError naming the gunicorn version when a name the worker relies on moved."""
    missing = missing_gthread_names()
    if missing:
        raise ImportError(
            f"service.worker relies on gunicorn gthread internals that gunicorn "
            f"{gunicorn.__version__} does not have: {', '.join(missing)}. Install the gunicorn "
            "version pyproject.toml declares."
        )
