"""The request body -> the list of uploaded files, for each accepted body type.

Raw image bytes, multipart/form-data file parts (order kept) or a JSON base64 batch; every
malformed body is a 400, a body of another type a 415, too many images a 413.
"""

from __future__ import annotations

import base64
import binascii

import orjson
from flask import Request
from pydantic import ValidationError

from service.config import Settings
from service.errors import Problem, validation_summary
from service.schemas import PredictJSONRequest


def read_uploads(request: Request, settings: Settings) -> list[bytes]:
    """The uploaded image files, in the order the client sent them."""
    _check_length(request, settings)
    mimetype = request.mimetype
    if mimetype == "multipart/form-data":
        files = _multipart(request)
    elif mimetype == "application/json":
        files = _json(_body(request, settings), settings)
    elif mimetype.startswith("image/") or mimetype == "application/octet-stream":
        body = _body(request, settings)
        if not body:
            raise Problem(400, "body-missing", "The request has no body; send an image.")
        files = [body]
    elif not mimetype and not request.get_data(cache=False):
        raise Problem(400, "body-missing", "The request has no body; send an image.")
    else:
        raise Problem(
            415,
            "unsupported-media-type",
            f"Content-Type {mimetype or '(none)'} is not accepted; send image/*, "
            "application/octet-stream, multipart/form-data or application/json.",
        )
    _check_count(len(files), settings)
    return files


def read_body(request: Request, settings: Settings) -> bytes:
    """The whole request body, whatever its type; 413 past the byte limit."""
    _check_length(request, settings)
    return _body(request, settings)


def _check_length(request: Request, settings: Settings) -> None:
    if request.content_length is not None and request.content_length > settings.max_upload_bytes:
        raise Problem(
            413,
            "body-too-large",
            f"The body has {request.content_length:,} bytes; at most "
            f"{settings.max_upload_bytes:,} are accepted.",
        )


def _body(request: Request, settings: Settings) -> bytes:
    """The whole body; a chunked one that goes on past the limit is a 413, not cut short."""
    body = request.get_data(cache=False)
    if (
        request.content_length is None
        and len(body) >= settings.max_upload_bytes
        and request.environ["wsgi.input"].read(1)
    ):
        raise Problem(
            413,
            "body-too-large",
            f"The body has more than {settings.max_upload_bytes:,} bytes; at most "
            f"{settings.max_upload_bytes:,} are accepted.",
        )
    return body


def _multipart(request: Request) -> list[bytes]:
    parts = [storage for _, storage in request.files.items(multi=True)]
    if not parts:
        raise Problem(
            400, "malformed-body", "The multipart body has no file parts (or is malformed)."
        )
    return [part.stream.read() for part in parts]


def _json(body: bytes, settings: Settings) -> list[bytes]:
    if not body:
        raise Problem(400, "body-missing", "The request has no body.")
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Problem(400, "malformed-body", f"The body is not valid JSON: {exc}") from exc
    if isinstance(document, dict) and isinstance(document.get("images"), list):
        _check_count(len(document["images"]), settings)
    try:
        parsed = PredictJSONRequest.model_validate(document)
    except ValidationError as exc:
        problems = validation_summary(exc)
        raise Problem(
            400, "malformed-body", f'Expected {{"images": [base64, ...]}}: {problems}'
        ) from exc
    return [_b64decode(index, text) for index, text in enumerate(parsed.images)]


def _b64decode(index: int, text: str) -> bytes:
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise Problem(400, "malformed-body", f"images[{index}] is not valid base64.") from exc


def _check_count(count: int, settings: Settings) -> None:
    if count > settings.max_images_per_request:
        raise Problem(
            413,
            "too-many-images",
            f"{count} images sent; at most {settings.max_images_per_request} per request.",
        )
