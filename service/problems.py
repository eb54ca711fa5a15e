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
