"""The benchmark's app factory: the product app plus one route that does no work.

`POST /bench/echo` reads the whole body and answers a constant JSON document through the same
gunicorn config, request hooks, metrics and access log as /v1/predict, so its throughput is
the HTTP limit of the stack. It exists only here, never in the product app.
"""

from __future__ import annotations

from flask import Flask, Response, request

from service import create_app as create_product_app
from service.api import json_response

ECHO_PATH = "/bench/echo"
_CONSTANT = {"status": "ok"}


def create_app() -> Flask:
    """service.create_app() with the echo route added."""
    app = create_product_app()
    app.add_url_rule(ECHO_PATH, "bench_echo", _echo, methods=["POST"])
    return app


def _echo() -> Response:
    request.get_data(cache=False)
    return json_response(_CONSTANT)
