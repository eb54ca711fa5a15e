"""Security promises: API key on every non-probe route, no leaks, nosniff, early 413."""

from __future__ import annotations

import base64
import inspect
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import requests
from flask import Flask
from PIL import Image

from bench.server import Server
from service import create_app, hooks
from service.config import Settings
from tests.images import png
from tests.reliability.checks import LEAK, assert_safe_answer
from tests.reliability.conftest import StartServer
from tests.service.conftest import API_KEY

AUTH = {"Authorization": f"Bearer {API_KEY}"}
# Routes anyone may call: the probes (each protocol's too), the API description and the
# (future) web page.
PUBLIC = {
    *("/healthz", "/readyz", "/metrics", "/openapi.json", "/", "/static/<path:filename>"),
    *("/v2", "/v2/health/live", "/v2/health/ready", "/ping"),
}
# A body each protocol's infer route accepts.
V2_BODY = orjson.dumps(
    {
        "inputs": [
            {
                "name": "image",
                "shape": [1],
                "datatype": "BYTES",
                "data": [base64.b64encode(png()).decode()],
            }
        ]
    }
)


@pytest.fixture
def app(tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Flask]:
    """The Flask app in-process, engine not started (for its route table and error handler)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    settings = Settings(model_path=tiny_checkpoint, api_key=API_KEY, reload_interval_s=0)
    yield create_app(settings, start_engine=False)


def protected_routes(app: Flask) -> list[tuple[str, str]]:
    """(method, path) of every route that is not public."""
    return [
        (method, rule.rule)
        for rule in app.url_map.iter_rules()
        if rule.rule not in PUBLIC
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"})
    ]


def test_every_non_probe_route_needs_the_key(app: Flask, strict_server: Server) -> None:
    protected = protected_routes(app)
    assert ("POST", "/v1/predict") in protected and ("GET", "/v1/model") in protected
    wrong = [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {API_KEY[:-1]}"},
        {"Authorization": f"Bearer {API_KEY}x"},
        {"Authorization": f"Basic {API_KEY}"},
        {"Authorization": API_KEY},
        {"X-API-Key": API_KEY},
    ]
    version = strict_server.get("/readyz").json()["model_version"]
    for method, rule in protected:
        path = rule.replace("<name>", "model").replace("<model_version>", version)
        body = V2_BODY if path.startswith("/v2/") else png()
        for headers in wrong:
            response = requests.request(
                method, strict_server.url + path, headers=headers, data=png(), timeout=10
            )
            assert response.status_code == 401, (method, path, headers)
            assert_safe_answer(response)
            assert API_KEY not in response.text
        content_type = "application/json" if path.startswith("/v2/") else "image/png"
        response = requests.request(
            method,
            strict_server.url + path,
            headers={**AUTH, "Content-Type": content_type},
            data=body,
            timeout=10,
        )
        assert response.status_code == 200, (method, path, response.text)


def test_probes_need_no_key(strict_server: Server) -> None:
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        response = strict_server.get(path)
        assert response.status_code == 200, path
        assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_metrics_can_need_the_key(tiny_checkpoint: Path, start_server: StartServer) -> None:
    running = start_server(
        tiny_checkpoint,
        CONVSERVE_API_KEY=API_KEY,
        CONVSERVE_METRICS_NEED_API_KEY="true",
        CONVSERVE_WORKERS="1",
    )
    assert running.get("/metrics").status_code == 401
    assert running.get("/metrics", headers=AUTH).status_code == 200
    assert running.get("/healthz").status_code == 200
    assert running.get("/readyz").status_code == 200


def test_the_key_is_compared_in_constant_time() -> None:
    assert "hmac.compare_digest" in inspect.getsource(hooks)


ERRORS = [
    ("GET", "/nothing/here", {}, b""),
    ("DELETE", "/v1/predict", {}, b""),
    ("POST", "/v1/predict", {"Content-Type": "application/json"}, b'{"images": [1'),
    ("POST", "/v1/predict", {"Content-Type": "application/json"}, b'{"images": ["@@"]}'),
    ("POST", "/v1/predict", {"Content-Type": "application/json"}, b'{"pictures": []}'),
    ("POST", "/v1/predict", {"Content-Type": "multipart/form-data; boundary=x"}, b"--x\r\nbad"),
    ("POST", "/v1/predict", {"Content-Type": "text/plain"}, b"hello"),
    ("POST", "/v1/predict", {"Content-Type": "image/png"}, b"\x89PNG\r\n\x1a\n" + b"\0" * 99),
    ("POST", "/v1/predict?top_k=%00", {"Content-Type": "image/png"}, png()),
    ("POST", "/v1/predict", {"Content-Type": "image/png"}, b"\0" * (10 * 1024 * 1024 + 1)),
]


@pytest.mark.parametrize(("method", "path", "headers", "body"), ERRORS)
def test_error_bodies_leak_nothing(
    server: Server, method: str, path: str, headers: dict[str, str], body: bytes
) -> None:
    response = requests.request(method, server.url + path, headers=headers, data=body, timeout=30)
    assert response.status_code >= 400
    assert_safe_answer(response)


def test_a_crash_answers_a_bare_500(app: Flask) -> None:
    """An unexpected exception: logged for operators, nothing of it shown to the client."""

    def explode() -> str:
        raise RuntimeError("secret at /srv/app/service/x.py line 3, Pillow 99.1.0")

    app.add_url_rule("/explode", view_func=explode)
    response = app.test_client().get("/explode")
    assert response.status_code == 500
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.json is not None and response.json["type"].endswith("/internal-error")
    assert not LEAK.search(response.get_data(as_text=True))
    assert "secret" not in response.get_data(as_text=True)


def _raw_exchange(server: Server, head: bytes, body: bytes = b"") -> tuple[bytes, float]:
    """Sends `head` (and `body`), returns what the server said within 5 s and how fast."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        started = time.monotonic()
        sock.sendall(head + body)
        answer = sock.recv(65536)
        return answer, time.monotonic() - started


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [("image/png", b" 413 "), ("multipart/form-data; boundary=x", b" 413 ")],
)
def test_a_1gb_body_is_refused_before_it_is_sent(
    server: Server, content_type: str, expected: bytes
) -> None:
    head = (
        "POST /v1/predict HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{server.port}\r\n"
        f"Content-Type: {content_type}\r\n"
        "Content-Length: 1073741824\r\n\r\n"
    ).encode()
    answer, seconds = _raw_exchange(server, head, b"\x89PNG")
    assert answer.startswith(b"HTTP/1.1") and expected in answer.split(b"\r\n", 1)[0], answer
    assert b"application/problem+json" in answer
    assert seconds < 2.0
    assert server.get("/readyz").status_code == 200


def test_an_unauthenticated_1gb_body_is_refused_at_once(strict_server: Server) -> None:
    head = (
        "POST /v1/predict HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{strict_server.port}\r\n"
        "Content-Type: image/png\r\nContent-Length: 1073741824\r\n\r\n"
    ).encode()
    answer, seconds = _raw_exchange(strict_server, head)
    assert b" 401 " in answer.split(b"\r\n", 1)[0], answer
    assert seconds < 2.0


@pytest.mark.parametrize(
    "content_type", ["image/png", "application/json", "multipart/form-data; boundary=x"]
)
def test_a_chunked_body_past_the_limit_is_a_413(strict_server: Server, content_type: str) -> None:
    """No Content-Length to check up front: reading stops at the limit (200,000 bytes here)."""

    def chunks() -> Iterator[bytes]:
        yield b"--x\r\nContent-Disposition: form-data; name=file; filename=a.png\r\n\r\n"
        for _ in range(100):  # 6.4 MB offered, far past the limit
            yield b"\0" * 65536

    response = requests.post(
        strict_server.url + "/v1/predict",
        data=chunks(),
        headers={**AUTH, "Content-Type": content_type},
        timeout=30,
    )
    assert response.status_code == 413
    assert_safe_answer(response)
    assert strict_server.get("/readyz").status_code == 200


@pytest.mark.parametrize(("size", "status"), [(200_000, 422), (200_001, 413)])
def test_a_chunked_body_at_the_limit(strict_server: Server, size: int, status: int) -> None:
    response = requests.post(
        strict_server.url + "/v1/predict",
        data=iter([b"\0" * (size // 2), b"\0" * (size - size // 2)]),
        headers={**AUTH, "Content-Type": "image/png"},
        timeout=30,
    )
    assert response.status_code == status


def test_a_chunked_image_is_served(strict_server: Server) -> None:
    data = png()
    response = requests.post(
        strict_server.url + "/v1/predict",
        data=iter([data[:10], data[10:]]),
        headers={**AUTH, "Content-Type": "image/png"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
