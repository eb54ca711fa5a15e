"""Error bodies: the problem+json (RFC 9457) document, the protocols' own shapes, and whole
HTTP answers carrying them.

The app renders errors through service.errors; the worker's event loop, which answers some
requests before any thread or Flask sees them, writes the whole answer with `raw_answer`. Both
pick the shape by path with `shape_for`, so a /v2 client gets `{"error": ...}` whoever answers.
Nothing here imports Flask, so gunicorn's master can load the worker cheaply.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

import orjson

PROBLEM_CONTENT_TYPE = "application/problem+json"
_TYPE_BASE = "https://convserve.dev/problems/"
# An X-Request-ID a client sent is echoed only when it matches this; otherwise one is made.
REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")


def problem_document(status: int, kind: str, detail: str, request_id: str) -> dict[str, Any]:
    """The problem+json body: type (from `kind`), title, status, detail and request id."""
    return {
        "type": _TYPE_BASE + kind,
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "request_id": request_id,
    }


# (status, kind, detail) -> (status, body, content type) of one protocol's error answer; a
# protocol may answer a status of its own (the v2 protocol has no 422: it answers 400).
ErrorShape = Callable[[int, str, str], tuple[int, bytes, str]]


def v2_error(status: int, _kind: str, detail: str) -> tuple[int, bytes, str]:
    """The Open Inference Protocol's error: `{"error": detail}`, 400 for any bad request."""
    status = 400 if status in (415, 422) else status
    return status, orjson.dumps({"error": detail}), "application/json"


_TORCHSERVE_TYPES = {404: "ModelNotFoundException", 503: "ServiceUnavailableException"}


def torchserve_error(status: int, _kind: str, detail: str) -> tuple[int, bytes, str]:
    """TorchServe's error: `{"code", "type", "message"}`, the type named like its exceptions."""
    kind = _TORCHSERVE_TYPES.get(status)
    kind = kind or HTTPStatus(status).phrase.title().replace(" ", "") + "Exception"
    return (
        status,
        orjson.dumps({"code": status, "type": kind, "message": detail}),
        "application/json",
    )


# Path prefixes whose protocol has its own error shape; every other path answers problem+json.
PROTOCOL_SHAPES: tuple[tuple[tuple[str, ...], ErrorShape], ...] = (
    (("/v2",), v2_error),
    (("/predictions/", "/ping"), torchserve_error),
)


def shape_for(path: str) -> ErrorShape | None:
    """The error shape of the protocol `path` belongs to; None for problem+json."""
    for prefixes, shape in PROTOCOL_SHAPES:
        if path.startswith(prefixes):
            return shape
    return None


def error_payload(
    status: int, kind: str, detail: str, path: str, request_id: str
) -> tuple[int, bytes, str]:
    """(status, body, content type) of an error answered on `path`: the shape of the protocol
    the path belongs to, else problem+json carrying `request_id`."""
    shape = shape_for(path)
    if shape is not None:
        return shape(status, kind, detail)
    body = orjson.dumps(problem_document(status, kind, detail, request_id))
    return status, body, PROBLEM_CONTENT_TYPE


def raw_answer(status: int, kind: str, detail: str, request_id: str = "", path: str = "") -> bytes:
    """A complete HTTP/1.1 error answer that closes the connection: problem+json, or the error
    shape of the protocol `path` belongs to.

    It carries the headers the app puts on every answer; `request_id` is echoed when the
    client sent a valid one, else a new id is made.
    """
    request_id = request_id if REQUEST_ID_PATTERN.match(request_id) else uuid.uuid4().hex
    status, body, content_type = error_payload(status, kind, detail, path, request_id)
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        f"Date: {formatdate(usegmt=True)}\r\n"
        "Connection: close\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"X-Request-ID: {request_id}\r\n"
        "X-Content-Type-Options: nosniff\r\n"
        "Cache-Control: no-store\r\n\r\n"
    )
    return head.encode("latin-1") + body


# The problem type and detail for each status gunicorn answers a request it cannot parse with.
PARSE_ERRORS: dict[int, tuple[str, str]] = {
    400: ("malformed-request", "The request is not valid HTTP/1.1."),
    403: ("forbidden", "The request is refused."),
    414: ("uri-too-long", "The request line is too long."),
    417: ("expectation-failed", "Only 'Expect: 100-continue' is supported."),
    431: ("headers-too-large", "The request has too many headers, or one that is too long."),
    501: ("not-implemented", "The request uses a transfer coding that is not supported."),
}
