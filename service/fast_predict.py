"""The predict routes' common request, answered in front of Flask: a raw image body of known
length to POST /v1/predict or /v1/models/{name}/predict.

Those requests are nearly all the traffic, and for a small model Flask's routing, request
context and response object cost about as much CPU as the model itself (bench/results.md).
This WSGI middleware answers them with the functions the Flask route uses
(`service.api.predict_answer`, `service.hooks`), so the document, the headers, the errors, the
metrics and the access-log line are the same whichever path answers. Everything else (other
routes, multipart and JSON bodies, chunked or empty bodies, bodies over the limit) goes on to
the Flask app unchanged.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

import orjson
from werkzeug.datastructures import MultiDict
from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.wrappers import Request

from service import metrics
from service.api import predict_answer, top_k_from
from service.config import Settings
from service.engine import Engine
from service.errors import Problem, crash_problem
from service.hooks import api_key_check, common_headers, record_request, request_id_for
from service.inference import find_model
from service.logs import REQUEST_ID
from service.problems import error_payload

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

_NAMED_PREDICT = re.compile(r"/v1/models/([^/]+)/predict")
# As werkzeug writes them (Flask's status lines), e.g. "404 NOT FOUND".
_STATUS_LINES = {code: f"{code} {phrase.upper()}" for code, phrase in HTTP_STATUS_CODES.items()}


class FastPredict:
    """WSGI middleware around the Flask app's `wsgi_app`; see the module docstring."""

    def __init__(self, app: WSGIApplication, engine: Engine, settings: Settings) -> None:
        self._app = app
        self._engine = engine
        self._settings = settings
        self._check_api_key = api_key_check(settings)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """Answers a predict request with a raw image body; passes any other one on."""
        route = self._route(environ)
        if route is None:
            return self._app(environ, start_response)
        return self._answer(environ, start_response, *route)

    def _route(self, environ: WSGIEnvironment) -> tuple[str, str | None] | None:
        """(the Flask rule, the model name) of a request answered here; None for the others."""
        if environ["REQUEST_METHOD"] != "POST" or "HTTP_TRANSFER_ENCODING" in environ:
            return None
        mimetype = environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower()
        if not (mimetype.startswith("image/") or mimetype == "application/octet-stream"):
            return None
        length = environ.get("CONTENT_LENGTH", "")
        if not (length.isascii() and length.isdigit()):
            return None
        if not 0 < int(length) <= self._settings.max_upload_bytes:
            return None
        path = environ.get("PATH_INFO", "")
        if not path.isascii():  # werkzeug decodes such a path again (as UTF-8): Flask's job
            return None
        if path == "/v1/predict":
            return "/v1/predict", None
        named = _NAMED_PREDICT.fullmatch(path)
        return ("/v1/models/<name>/predict", named.group(1)) if named else None

    def _answer(
        self,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        rule: str,
        name: str | None,
    ) -> Iterable[bytes]:
        """The checks, in the Flask route's order (API key, top_k, model), then the answer."""
        started = time.perf_counter()
        path = environ["PATH_INFO"]
        request_id = request_id_for(environ.get("HTTP_X_REQUEST_ID", ""))
        token = REQUEST_ID.set(request_id)
        metrics.INFLIGHT.inc()
        model = ""  # the metrics' model label: only the name of a model that exists
        own_headers: dict[str, str] = {}  # a Problem's (Retry-After, WWW-Authenticate)
        try:
            try:
                self._check_api_key(path, environ.get("HTTP_AUTHORIZATION", ""))
                top_k = self._top_k(environ)
                served = find_model(self._engine, name)
                model = served.name
                length = int(environ["CONTENT_LENGTH"])
                document = predict_answer(
                    served,
                    lambda: [environ["wsgi.input"].read(length)],
                    top_k,
                    self._settings,
                    started,
                )
                status, body, content_type = 200, orjson.dumps(document), "application/json"
            except Exception as exc:
                problem = exc if isinstance(exc, Problem) else crash_problem()
                status, body, content_type = error_payload(
                    problem.status, problem.kind, problem.detail, path, request_id
                )
                own_headers = problem.headers
            headers = [
                ("Content-Type", content_type),
                ("Content-Length", str(len(body))),
                *own_headers.items(),
                *common_headers(path, request_id),
            ]
            start_response(_STATUS_LINES[status], headers)
            seconds = time.perf_counter() - started
            remote = environ.get("REMOTE_ADDR")
            record_request(rule, "POST", path, status, model, seconds, remote)
            return [body]
        finally:
            metrics.INFLIGHT.dec()
            REQUEST_ID.reset(token)

    @staticmethod
    def _top_k(environ: WSGIEnvironment) -> int:
        query = environ.get("QUERY_STRING", "").encode("latin-1")
        args: MultiDict[str, str] = Request(environ).args if query else MultiDict()
        return top_k_from(query, args)
