"""Per-request plumbing: request ids, security headers, API key, request metrics, access log."""

from __future__ import annotations

import hmac
import logging
import time
import uuid

from flask import Flask, Response, g, request

from service import metrics
from service.config import Settings
from service.errors import Problem
from service.page import content_security_policy
from service.problems import REQUEST_ID

access_log = logging.getLogger("convserve.access")

_PROBES = frozenset({"/healthz", "/readyz", "/metrics"})


def init_request_hooks(app: Flask, settings: Settings) -> None:
    """Registers the before/after hooks that every request goes through."""
    protected = {"/v1/predict", "/v1/model", "/v1/models", "/v1/explain"}
    # Every route that names a model, in each protocol.
    protected_prefixes = ("/v1/models/", "/v2/models/", "/predictions/")
    if settings.metrics_need_api_key:
        protected.add("/metrics")
    expected = settings.api_key.get_secret_value().encode() if settings.api_key else None

    @app.before_request
    def _start() -> None:
        g.started = time.perf_counter()
        sent = request.headers.get("X-Request-ID", "")
        g.request_id = sent if REQUEST_ID.match(sent) else uuid.uuid4().hex
        g.measured = request.path not in _PROBES
        if g.measured:
            metrics.INFLIGHT.inc()
        if expected is not None and (
            request.path in protected or request.path.startswith(protected_prefixes)
        ):
            _check_api_key(expected)

    @app.after_request
    def _finish(response: Response) -> Response:
        response.headers["X-Request-ID"] = g.get("request_id", "")
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Cache-Control"] = "no-store"
        response.headers["Content-Security-Policy"] = content_security_policy(request.path)
        response.headers["Referrer-Policy"] = "no-referrer"
        if g.get("measured"):
            _observe(response)
        return response

    @app.teardown_request
    def _done(_exc: BaseException | None) -> None:
        if g.pop("measured", False):
            metrics.INFLIGHT.dec()


def _check_api_key(expected: bytes) -> None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
        raise Problem(
            401,
            "unauthorized",
            "This endpoint needs 'Authorization: Bearer <api key>'.",
            {"WWW-Authenticate": 'Bearer realm="convserve"'},
        )


def _observe(response: Response) -> None:
    seconds = time.perf_counter() - g.started
    endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
    model = g.get("model_name", "")  # set only for a model that exists: the label stays bounded
    metrics.REQUESTS.labels(endpoint, request.method, str(response.status_code), model).inc()
    metrics.REQUEST_DURATION.labels(endpoint).observe(seconds)
    access_log.info(
        "%s %s %d",
        request.method,
        request.path,
        response.status_code,
        extra={
            "method": request.method,
            "path": request.path,
            "status": response.status_code,
            "duration_ms": round(seconds * 1000, 3),
            "remote": request.remote_addr,
        },
    )
