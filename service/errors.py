"""Errors: one exception type, rendered as problem+json (RFC 9457) or in a protocol's own shape.

A protocol mounted under a path prefix (/v2, TorchServe's routes) has its error shape in
service.problems.PROTOCOL_SHAPES; every error answered under that prefix, ours or werkzeug's
(404, 405, 413...) or the API key's 401, then leaves in that shape.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from flask import Flask, Response, has_request_context, request
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

from service.logs import REQUEST_ID
from service.problems import error_payload

log = logging.getLogger("convserve.errors")


class Problem(Exception):
    """A request that cannot be answered; `kind` names the problem type (a URI slug)."""

    def __init__(
        self,
        status: int,
        kind: str,
        detail: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.detail = detail
        self.headers = headers or {}


def crash_problem() -> Problem:
    """Logs the exception being handled and returns the 500 that answers it."""
    log.exception("unhandled error")
    return Problem(500, "internal-error", "The server failed to answer this request.")


def validation_summary(exc: ValidationError, limit: int = 5) -> str:
    """The first `limit` problems of a pydantic validation, as "field.path: message; ..."."""
    return "; ".join(
        f"{'.'.join(str(p) for p in error['loc']) or 'body'}: {error['msg']}"
        for error in exc.errors(include_url=False)[:limit]
    )


def problem_response(
    status: int, kind: str, detail: str, headers: dict[str, str] | None = None
) -> Response:
    """The error response in the shape of the path's protocol (problem+json by default)."""
    path = request.path if has_request_context() else ""
    status, body, content_type = error_payload(status, kind, detail, path, REQUEST_ID.get())
    response = Response(body, status=status, content_type=content_type)
    response.headers.update(headers or {})
    return response


def register_error_handlers(app: Flask) -> None:
    """Every error leaves as problem+json: ours, werkzeug's (404, 405, 413...) and crashes."""

    @app.errorhandler(Problem)
    def _problem(exc: Problem) -> Response:
        return problem_response(exc.status, exc.kind, exc.detail, exc.headers)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        status = exc.code or 500
        kind = HTTPStatus(status).phrase.lower().replace(" ", "-")
        headers = {k: v for k, v in exc.get_headers() if k.lower() in ("allow", "retry-after")}
        return problem_response(status, kind, exc.description or HTTPStatus(status).phrase, headers)

    @app.errorhandler(Exception)
    def _crash(exc: Exception) -> Response:
        crash = crash_problem()
        return problem_response(crash.status, crash.kind, crash.detail)
