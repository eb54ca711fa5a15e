"""Per-request plumbing: request ids, security headers, API key, request metrics, access log.

The Flask hooks here run around every request the app routes; service.fast_predict, which
answers the predict routes in front of Flask, calls the same functions, so both paths add the
same headers, count the same metrics and write the same access-log line.
"""

from __future__ import annotations

import hmac
import logging
import time
import uuid
from collections.abc import Callable

from flask import Flask, Response, g, request

from service import metrics
from service.config import Settings
from service.errors import Problem
from service.logs import REQUEST_ID
from service.page import content_security_policy
from service.problems import REQUEST_ID_PATTERN

access_log = logging.getLogger("convserve.access")

_PROBES = frozenset({"/healthz", "/readyz", "/metrics"})
# Every route that names a model, in each protocol.
_PROTECTED_PREFIXES = ("/v1/models/", "/v2/models/", "/predictions/")

# Checks a request's path and Authorization header; raises Problem 401 when they fail.
KeyCheck = Callable[[str, str], None]


def request_id_for(sent: str) -> str:
    """The id of a request: the client's X-Request-ID when it is valid, else a new one."""
    return sent if REQUEST_ID_PATTERN.match(sent) else uuid.uuid4().hex


def common_headers(path: str, request_id: str) -> list[tuple[str, str]]:
    """The headers every answer carries, after its own."""
    return [
        ("X-Request-ID", request_id),
        ("X-Content-Type-Options", "nosniff"),
        ("Cache-Control", "no-store"),
        ("Content-Security-Policy", content_security_policy(path)),
        ("Referrer-Policy", "no-referrer"),
    ]


def api_key_check(settings: Settings) -> KeyCheck:
    """The API-key check of the inference routes (and /metrics when configured to)."""
    protected = {"/v1/predict", "/v1/model", "/v1/models", "/v1/explain"}
    if settings.metrics_need_api_key:
        protected.add("/metrics")
    expected = settings.api_key.get_secret_value().encode() if settings.api_key else None

    def check(path: str, authorization: str) -> None:
        if expected is None or not (path in protected or path.startswith(_PROTECTED_PREFIXES)):
            return
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
            raise Problem(
                401,
                "unauthorized",
                "This endpoint needs 'Authorization: Bearer <api key>'.",
                {"WWW-Authenticate": 'Bearer realm="convserve"'},
            )

    return check


def record_request(
    endpoint: str,
    method: str,
    path: str,
    status: int,
    model: str,
    seconds: float,
    remote: str | None,
) -> None:
    """Counts one answered request in the metrics and writes its access-log line."""
    metrics.REQUESTS.labels(endpoint, method, str(status), model).inc()
    metrics.REQUEST_DURATION.labels(endpoint).observe(seconds)
    if access_log.isEnabledFor(logging.INFO):
        access_log.info(
            "%s %s %d",
            method,
            path,
            status,
            extra={
                "method": method,
                "path": path,
                "status": status,
                "duration_ms": round(seconds * 1000, 3),
                "remote": remote,
            },
        )


def init_request_hooks(app: Flask, settings: Settings) -> None:
    """Registers the before/after hooks that every request routed by Flask goes through."""
    check_api_key = api_key_check(settings)

    @app.before_request
    def _start() -> None:
        g.started = time.perf_counter()
        g.request_id_token = REQUEST_ID.set(request_id_for(request.headers.get("X-Request-ID", "")))
        g.measured = request.path not in _PROBES
        if g.measured:
            metrics.INFLIGHT.inc()
        check_api_key(request.path, request.headers.get("Authorization", ""))

    @app.after_request
    def _finish(response: Response) -> Response:
        for name, value in common_headers(request.path, REQUEST_ID.get()):
            response.headers[name] = value
        if g.get("measured"):
            rule = request.url_rule
            record_request(
                rule.rule if rule is not None else "unmatched",
                request.method,
                request.path,
                response.status_code,
                g.get("model_name", ""),  # set only for a model that exists: a bounded label
                time.perf_counter() - g.started,
                request.remote_addr,
            )
        return response

    @app.teardown_request
    def _done(_exc: BaseException | None) -> None:
        if g.pop("measured", False):
            metrics.INFLIGHT.dec()
        token = g.pop("request_id_token", None)
        if token is not None:
            REQUEST_ID.reset(token)
