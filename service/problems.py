"""The problem+json (RFC 9457) document, and whole HTTP answers carrying one.

The app renders the document through service.errors; the worker's event loop, which answers
some requests before any thread or Flask sees them, writes the whole answer with
`raw_answer`. Neither imports Flask, so gunicorn's master can load the worker cheaply.
"""

from __future__ import annotations

import re
import uuid
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

import orjson

PROBLEM_CONTENT_TYPE = "application/problem+json"
_TYPE_BASE = "https://convserve.dev/problems/"
# An X-Request-ID a client sent is echoed only when it matches this; otherwise one is made.
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")


def problem_document(status: int, kind: str, detail: str, request_id: str) -> dict[str, Any]:
    """The problem+json body: type (from `kind`), title, status, detail and request id."""
    return {
        "type": _TYPE_BASE + kind,
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "request_id": request_id,
    }


def raw_answer(status: int, kind: str, detail: str, request_id: str = "") -> bytes:
    """A complete HTTP/1.1 answer with a problem+json body that closes the connection.

    It carries the headers the app puts on every answer; `request_id` is echoed when the
    client sent a valid one, else a new id is made.
    """
    request_id = request_id if REQUEST_ID.match(request_id) else uuid.uuid4().hex
    body = orjson.dumps(problem_document(status, kind, detail, request_id))
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        f"Date: {formatdate(usegmt=True)}\r\n"
        "Connection: close\r\n"
        f"Content-Type: {PROBLEM_CONTENT_TYPE}\r\n"
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
