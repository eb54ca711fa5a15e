"""The predict routes answered in front of Flask (service/fast_predict.py) keep the contract.

A raw image body of known length is answered by FastPredict; the same image sent as multipart
is answered by the Flask route. Both must give the same document, headers, errors, metrics and
access-log line, against the real gunicorn server.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from werkzeug.test import EnvironBuilder

from bench.server import Server
from service import create_app
from service.config import Settings
from service.fast_predict import FastPredict
from tests.images import png
from tests.service.conftest import API_KEY
from tests.service.test_metrics import scrape

# Headers that differ between any two answers.
_PER_ANSWER = {"date", "x-request-id", "content-length"}


def fast(
    server: Server, path: str, body: bytes, headers: dict[str, str] | None = None, **kwargs: Any
) -> requests.Response:
    headers = {"Content-Type": "image/png", **(headers or {})}
    return server.post(path, data=body, headers=headers, **kwargs)


def routed(server: Server, path: str, body: bytes, **kwargs: Any) -> requests.Response:
    return server.post(path, files=[("file", ("image.png", body, "image/png"))], **kwargs)


def comparable(response: requests.Response) -> tuple[int, str, dict[str, str], Any]:
    """Status line, headers and body, without what differs between any two answers."""
    headers = {k.lower(): v for k, v in response.headers.items() if k.lower() not in _PER_ANSWER}
    body = response.json()
    if isinstance(body, dict):
        body.pop("request_id", None)
        body.pop("timing_ms", None)
    return response.status_code, response.reason, headers, body


@pytest.mark.parametrize("path", ["/v1/predict", "/v1/models/model/predict"])
@pytest.mark.parametrize("params", [None, {"top_k": 2}])
def test_answers_agree(server: Server, path: str, params: dict[str, int] | None) -> None:
    image = png()
    answered = fast(server, path, image, params=params)
    assert answered.status_code == 200, answered.text
    assert comparable(answered) == comparable(routed(server, path, image, params=params))
    assert answered.json()["timing_ms"]["total"] >= answered.json()["timing_ms"]["inference"] > 0


@pytest.mark.parametrize(
    ("path", "body", "params", "status"),
    [
        ("/v1/models/nope/predict", png(), None, 404),
        ("/v1/predict", png(), {"top_k": 0}, 400),
        ("/v1/predict", png(), {"topk": 3}, 400),
        ("/v1/predict", b"not an image at all", None, 422),
        ("/v1/predict", png((3000, 3000)), None, 200),
    ],
)
def test_errors_agree(
    server: Server, path: str, body: bytes, params: dict[str, Any] | None, status: int
) -> None:
    answered = fast(server, path, body, params=params)
    assert answered.status_code == status, answered.text
    assert comparable(answered) == comparable(routed(server, path, body, params=params))
    if status != 200:
        assert answered.headers["Content-Type"] == "application/problem+json"
        assert answered.json()["request_id"] == answered.headers["X-Request-ID"]


def test_api_key_refusals_agree(strict_server: Server) -> None:
    for path in ("/v1/predict", "/v1/models/model/predict"):
        refused = fast(strict_server, path, png())
        assert refused.status_code == 401
        assert refused.headers["WWW-Authenticate"] == 'Bearer realm="convserve"'
        assert comparable(refused) == comparable(routed(strict_server, path, png()))
    auth = {"Authorization": f"Bearer {API_KEY}"}
    answered = fast(
        strict_server, "/v1/predict", png(), headers={**auth, "Content-Type": "image/png"}
    )
    assert answered.status_code == 200, answered.text


def test_request_id_metrics_and_access_log(server: Server) -> None:
    def served() -> float:
        key = (
            ("endpoint", "/v1/models/<name>/predict"),
            ("method", "POST"),
            ("model", "model"),
            ("status", "200"),
        )
        return scrape(server).get("convserve_requests_total", {}).get(key, 0.0)

    before = served()
    headers = {"Content-Type": "image/png", "X-Request-ID": "fast-path-7"}
    answered = server.post("/v1/models/model/predict", data=png(), headers=headers)
    assert answered.headers["X-Request-ID"] == "fast-path-7"
    assert served() == before + 1
    lines = [
        json.loads(line) for line in server.log_tail(400).splitlines() if "fast-path-7" in line
    ]
    access = [line for line in lines if line.get("logger") == "convserve.access"]
    assert len(access) == 1
    assert access[0]["path"] == "/v1/models/model/predict"
    assert access[0]["status"] == 200 and access[0]["method"] == "POST"
    assert access[0]["duration_ms"] > 0 and access[0]["remote"] == "127.0.0.1"


@pytest.fixture(scope="module")
def app(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    """The app in this process, with the real engine and tiny model."""
    metrics_dir = tmp_path_factory.mktemp("metrics")
    built = create_app(
        Settings(model_path=tiny_checkpoint, reload_interval_s=0, metrics_dir=metrics_dir)
    )
    yield built
    built.extensions["convserve.engine"].stop()


@pytest.mark.parametrize(
    ("content_type", "overrides", "answered_here"),
    [
        ("image/png", {}, True),
        ("application/octet-stream", {}, True),
        ("IMAGE/PNG; q=1", {}, True),
        ("multipart/form-data; boundary=x", {}, False),
        ("application/json", {}, False),
        ("image/png", {"REQUEST_METHOD": "PUT"}, False),
        ("image/png", {"CONTENT_LENGTH": ""}, False),
        ("image/png", {"HTTP_TRANSFER_ENCODING": "chunked"}, False),
        ("image/png", {"CONTENT_LENGTH": "999999999"}, False),
        ("image/png", {"PATH_INFO": "/v1/predict/"}, False),
        ("image/png", {"PATH_INFO": "/v1/models/a/b/predict"}, False),
        ("image/png", {"PATH_INFO": "/v1/explain"}, False),
        ("image/png", {"PATH_INFO": "/v1/models/\xc3\xa9/predict"}, False),
    ],
)
def test_only_the_common_request_skips_flask(
    app: Flask, content_type: str, overrides: dict[str, Any], answered_here: bool
) -> None:
    """Flask's own wsgi_app is watched: only the common predict request must pass it by."""
    front = app.wsgi_app
    assert isinstance(front, FastPredict)
    flask_app = front._app
    reached_flask: list[str] = []

    def watched(environ: dict[str, Any], start_response: Any) -> Any:
        reached_flask.append(environ["PATH_INFO"])
        return flask_app(environ, start_response)

    environ = EnvironBuilder(
        path="/v1/predict", method="POST", data=png(value=0), content_type=content_type
    ).get_environ()
    environ.update(overrides)
    statuses: list[str] = []
    front._app = watched
    try:
        body = b"".join(app(environ, lambda status, *_: statuses.append(status)))  # type: ignore[arg-type]
    finally:
        front._app = flask_app
    assert bool(reached_flask) is not answered_here
    if answered_here:
        assert statuses == ["200 OK"], body
        assert json.loads(body)["predictions"][0]["preprocessing"] == "dataset"
