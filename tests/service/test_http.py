"""The HTTP contract of the README, against the real gunicorn server with two workers."""

from __future__ import annotations

import base64
import json
import re
import zlib
from typing import Any

import pytest
import requests
from PIL import Image, ImageOps

from bench.server import Server
from service.schemas import ModelInfo, PredictResponse, ProblemDetail
from tests.images import encode, gradient, png
from tests.service.conftest import API_KEY

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def predict_raw(server: Server, body: bytes, **kwargs: Any) -> requests.Response:
    return server.post("/v1/predict", data=body, headers={"Content-Type": "image/png"}, **kwargs)


def assert_problem(response: requests.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    ProblemDetail.model_validate(body)
    assert body["status"] == status
    assert body["request_id"] == response.headers["X-Request-ID"]
    assert not re.search(r"Traceback|\.py\b|/usr/|/tmp/|site-packages", body["detail"])
    return body


def distinct_images() -> list[bytes]:
    return [
        png(value=0),
        # A bright square on black (a flat white image is a blank photo: black once converted).
        encode(ImageOps.expand(Image.new("L", (14, 14), 255), border=7, fill=0), "PNG"),
        encode(gradient((28, 28)).transpose(Image.Transpose.FLIP_LEFT_RIGHT), "PNG"),
        encode(gradient((40, 30), "RGB"), "JPEG"),
    ]


def test_raw_png_answer_follows_the_schema(server: Server) -> None:
    response = predict_raw(server, png(), params={"top_k": 3})
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/json"
    body = PredictResponse.model_validate(response.json())
    (prediction,) = body.predictions
    assert len(prediction.top_k) == 3
    assert prediction.top_k[0].label == prediction.label
    assert [c.score for c in prediction.top_k] == sorted(
        (c.score for c in prediction.top_k), reverse=True
    )
    assert len(prediction.scores) == 10
    assert sum(prediction.scores.values()) == pytest.approx(1.0, abs=1e-5)
    assert (
        prediction.scores[prediction.label] == prediction.score == max(prediction.scores.values())
    )
    assert body.timing_ms.total >= body.timing_ms.inference > 0
    assert re.fullmatch(r"[0-9a-f]{12}", body.model.version)


def test_octet_stream_is_accepted(server: Server) -> None:
    response = server.post(
        "/v1/predict", data=png(), headers={"Content-Type": "application/octet-stream"}
    )
    assert response.status_code == 200


def single_scores(server: Server, image: bytes) -> dict[str, float]:
    response = server.post(
        "/v1/predict", data=image, headers={"Content-Type": "application/octet-stream"}
    )
    assert response.status_code == 200, response.text
    scores: dict[str, float] = response.json()["predictions"][0]["scores"]
    return scores


def assert_same_scores(batch: list[dict[str, Any]], singles: list[dict[str, float]]) -> None:
    assert len(batch) == len(singles)
    for prediction, expected in zip(batch, singles, strict=True):
        for label, score in expected.items():
            assert prediction["scores"][label] == pytest.approx(score, abs=1e-5)


def test_multipart_batch_keeps_order(server: Server) -> None:
    images = distinct_images()
    singles = [single_scores(server, image) for image in images]
    files = [("file", (f"{i}.img", image)) for i, image in enumerate(images)]
    response = server.post("/v1/predict", files=files)
    assert response.status_code == 200, response.text
    assert_same_scores(response.json()["predictions"], singles)
    assert singles[0] != singles[1]


def test_json_base64_batch_keeps_order(server: Server) -> None:
    images = distinct_images()
    singles = [single_scores(server, image) for image in images]
    encoded = [base64.b64encode(image).decode() for image in images]
    encoded[1] = "data:image/png;base64," + encoded[1]
    response = server.post("/v1/predict", json={"images": encoded})
    assert response.status_code == 200, response.text
    assert_same_scores(response.json()["predictions"], singles)


def test_request_id_is_echoed_or_made(server: Server) -> None:
    sent = server.get("/healthz", headers={"X-Request-ID": "client-42"})
    assert sent.headers["X-Request-ID"] == "client-42"
    made = server.get("/healthz")
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["X-Request-ID"])
    hostile = server.get("/healthz", headers={"X-Request-ID": "a b;" * 100})
    assert re.fullmatch(r"[0-9a-f]{32}", hostile.headers["X-Request-ID"])
    assert made.headers["X-Content-Type-Options"] == "nosniff"


def test_model_info(server: Server) -> None:
    response = server.get("/v1/model")
    assert response.status_code == 200
    info = ModelInfo.model_validate(response.json())
    assert len(info.classes) == 10
    assert (info.input.channels, info.input.height, info.input.width) == (1, 28, 28)
    assert info.architecture.parameters > 0
    assert info.version == server.get("/readyz").json()["model_version"]


def test_openapi_document_describes_the_api(server: Server) -> None:
    document = server.get("/openapi.json").json()
    assert document["openapi"].startswith("3.")
    assert {"/v1/predict", "/v1/model", "/healthz", "/readyz", "/metrics"} <= set(document["paths"])
    body = document["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert {"image/*", "multipart/form-data", "application/json"} <= set(body)
    assert "PredictResponse" in document["components"]["schemas"]


def _zlib_png_bomb(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height, with a tiny compressed body."""
    import struct

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (width + 1) * 16)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")
    )


# (description, request kwargs, expected status) for every row of the README's error table.
ERROR_CASES: list[tuple[str, dict[str, Any], int]] = [
    ("empty raw body", {"data": b"", "headers": {"Content-Type": "image/png"}}, 400),
    ("no body at all", {}, 400),
    ("malformed JSON", {"data": b"{", "headers": {"Content-Type": "application/json"}}, 400),
    ("JSON without images", {"json": {"pictures": []}}, 400),
    ("JSON empty list", {"json": {"images": []}}, 400),
    ("JSON images not strings", {"json": {"images": [1, 2]}}, 400),
    ("bad base64", {"json": {"images": ["not base64!!"]}}, 400),
    (
        "multipart without files",
        {"files": {"field": (None, "value")}},
        400,
    ),
    (
        "multipart without boundary",
        {"data": b"xx", "headers": {"Content-Type": "multipart/form-data"}},
        400,
    ),
    (
        "top_k zero",
        {"params": {"top_k": "0"}, "data": png(), "headers": {"Content-Type": "image/png"}},
        400,
    ),
    (
        "top_k text",
        {"params": {"top_k": "abc"}, "data": png(), "headers": {"Content-Type": "image/png"}},
        400,
    ),
    (
        "misspelt top_k",
        {"params": {"topk": "3"}, "data": png(), "headers": {"Content-Type": "image/png"}},
        400,
    ),
    (
        "query parameter without a name",
        {"params": {"": "0.0"}, "data": png(), "headers": {"Content-Type": "image/png"}},
        400,
    ),
    ("text body", {"data": b"hello", "headers": {"Content-Type": "text/plain"}}, 415),
    ("html body", {"data": b"<p>", "headers": {"Content-Type": "text/html"}}, 415),
    (
        "not an image",
        {"data": b"GIF89a but not really", "headers": {"Content-Type": "image/gif"}},
        422,
    ),
    ("truncated png", {"data": png((64, 64))[:60], "headers": {"Content-Type": "image/png"}}, 422),
    (
        "truncated jpeg",
        {
            "data": encode(gradient((64, 64), "RGB"), "JPEG")[:300],
            "headers": {"Content-Type": "image/jpeg"},
        },
        422,
    ),
    (
        "EPS is never decoded",
        {
            "data": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n",
            "headers": {"Content-Type": "image/eps"},
        },
        422,
    ),
    (
        "pixel bomb",
        {"data": _zlib_png_bomb(20000, 20000), "headers": {"Content-Type": "image/png"}},
        413,
    ),
    (
        "body over the byte limit",
        {"data": b"\0" * (10 * 1024 * 1024 + 1), "headers": {"Content-Type": "image/png"}},
        413,
    ),
    (
        "too many images",
        {"json": {"images": [base64.b64encode(png()).decode()] * 65}},
        413,
    ),
]


@pytest.mark.parametrize(
    ("kwargs", "status"), [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES]
)
def test_error_table(server: Server, kwargs: dict[str, Any], status: int) -> None:
    response = server.post("/v1/predict", **kwargs)
    assert_problem(response, status)
    assert server.get("/readyz").status_code == 200


def test_unknown_route_and_method_are_problems(server: Server) -> None:
    assert_problem(server.get("/v1/nothing"), 404)
    response = server.get("/v1/predict")
    assert_problem(response, 405)
    assert "POST" in response.headers["Allow"]


def test_api_key_is_required_when_configured(strict_server: Server) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
        response = strict_server.post(
            "/v1/predict", data=png(), headers={"Content-Type": "image/png", **headers}
        )
        body = assert_problem(response, 401)
        assert API_KEY not in json.dumps(body)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert_problem(strict_server.get("/v1/model"), 401)
    ok = strict_server.post(
        "/v1/predict", data=png(), headers={"Content-Type": "image/png", **AUTH}
    )
    assert ok.status_code == 200
    for open_path in ("/healthz", "/readyz", "/metrics"):
        assert strict_server.get(open_path).status_code == 200


def test_configured_limits_give_413(strict_server: Server) -> None:
    headers = {"Content-Type": "image/png", **AUTH}
    big_body = strict_server.post("/v1/predict", data=b"\0" * 200_001, headers=headers)
    assert_problem(big_body, 413)
    many_pixels = strict_server.post("/v1/predict", data=png((600, 500)), headers=headers)
    assert_problem(many_pixels, 413)
    five = [("file", (f"{i}.png", png())) for i in range(5)]
    assert_problem(strict_server.post("/v1/predict", files=five, headers=AUTH), 413)


def test_full_queue_sheds_with_503_and_retry_after(strict_server: Server) -> None:
    # The strict server queues at most one image, so a two-image request cannot fit.
    two = [("file", (f"{i}.png", png())) for i in range(2)]
    response = strict_server.post("/v1/predict", files=two, headers=AUTH)
    assert_problem(response, 503)
    assert int(response.headers["Retry-After"]) >= 1
    assert strict_server.get("/readyz").status_code == 200
