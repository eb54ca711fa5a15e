"""POST /v1/explain and GET / against the real gunicorn server."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
from PIL import Image

from bench.server import REPO, Server
from service.page import API_POLICY, PAGE_POLICY
from tests.images import encode, png
from tests.service.conftest import API_KEY

SAMPLE = REPO / "service" / "static" / "samples" / "ankle-boot.png"


def _picture(url: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix)
    image = Image.open(io.BytesIO(base64.b64decode(url[len(prefix) :])))
    image.load()
    return image


def _explain(server: Server, data: bytes, query: str = "", **kwargs: Any) -> Any:
    headers = {"Content-Type": "image/png", **kwargs.pop("headers", {})}
    return server.post("/v1/explain" + query, data=data, headers=headers, **kwargs)


def test_maps_follow_the_model_layer_summary(server: Server) -> None:
    model = server.get("/v1/model").json()
    answer = _explain(server, SAMPLE.read_bytes()).json()
    summary = [
        row for row in model["architecture"]["layers"] if row["name"].startswith("features.")
    ]
    assert [(layer["name"], layer["kind"], layer["shape"]) for layer in answer["layers"]] == [
        (row["name"], row["kind"], row["output_shape"]) for row in summary
    ]
    for layer in answer["layers"]:
        channels, height, width = layer["shape"]
        assert len(layer["maps"]) == channels
        for picture in layer["maps"]:
            image = _picture(picture["image"])
            assert (image.mode, image.size) == ("L", (width, height))
            assert picture["min"] <= picture["max"]
        if layer["kind"] in ("ReLU", "MaxPool2d"):
            assert min(p["min"] for p in layer["maps"]) >= 0
    first = summary[0]
    kernels = answer["kernels"]
    assert kernels["layer"] == first["name"]
    assert kernels["shape"] == [first["output_shape"][0], model["input"]["channels"], 3, 3]
    assert len(kernels["maps"]) == first["output_shape"][0]
    assert _picture(kernels["maps"][0]["image"]).size == (3, 3)
    assert np.array(kernels["maps"][0]["values"]).shape == (model["input"]["channels"], 3, 3)
    size = (model["input"]["width"], model["input"]["height"])
    assert _picture(answer["input"]["image"]).size == size
    assert _picture(answer["gradcam"]["heatmap"]).size == size
    assert _picture(answer["gradcam"]["overlay"]).mode == "RGB"


def test_prediction_equals_the_predict_answer(server: Server) -> None:
    data = SAMPLE.read_bytes()
    predicted = server.post(
        "/v1/predict?top_k=3", data=data, headers={"Content-Type": "image/png"}
    ).json()
    explained = _explain(server, data, "?top_k=3").json()
    assert explained["prediction"] == predicted["predictions"][0]
    assert explained["model"] == predicted["model"]
    assert explained["gradcam"]["target"]["index"] == predicted["predictions"][0]["index"]
    assert set(explained["timing_ms"]) >= {"decode", "inference", "explain", "encode", "total"}


def test_target_by_label_or_index_and_bad_targets(server: Server) -> None:
    classes = server.get("/v1/model").json()["classes"]
    data = png()
    by_label = _explain(server, data, f"?target={classes[2]}")
    assert by_label.status_code == 200
    assert by_label.json()["gradcam"]["target"]["label"] == classes[2]
    by_index = _explain(server, data, "?target=4")
    assert by_index.json()["gradcam"]["target"] == {
        "label": classes[4],
        "index": 4,
        "score": by_index.json()["prediction"]["scores"][classes[4]],
    }
    for bad in ("?target=nope", f"?target={len(classes)}", "?target=-1", "?target=", "?k=1"):
        response = _explain(server, data, bad)
        assert response.status_code == 400, bad
        assert response.headers["Content-Type"] == "application/problem+json"
    assert _explain(server, data, "?target=nope").json()["type"].endswith("/bad-target")


def test_exactly_one_image_and_the_predict_limits(server: Server) -> None:
    two = [("file", ("a.png", png())), ("file", ("b.png", png(value=9)))]
    response = server.post("/v1/explain", files=two)
    assert response.status_code == 400
    assert response.json()["type"].endswith("/one-image")
    assert _explain(server, b"not an image").status_code == 422
    assert (
        server.post("/v1/explain", data=b"x", headers={"Content-Type": "text/plain"}).status_code
        == 415
    )
    as_json = {"images": [base64.b64encode(png()).decode()]}
    assert server.post("/v1/explain", json=as_json).status_code == 200
    assert server.get("/readyz").status_code == 200


def test_explain_needs_the_api_key(strict_server: Server) -> None:
    data = encode(Image.new("L", (28, 28), 30), "PNG")
    assert _explain(strict_server, data).status_code == 401
    wrong = _explain(strict_server, data, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    right = _explain(strict_server, data, headers={"Authorization": f"Bearer {API_KEY}"})
    assert right.status_code == 200
    assert strict_server.get("/").status_code == 200  # the page itself holds no secret


def test_page_and_static_files_carry_the_csp(server: Server) -> None:
    for path, content_type in (
        ("/", "text/html"),
        ("/static/app.js", "text/javascript"),
        ("/static/app.css", "text/css"),
        ("/static/samples/samples.json", "application/json"),
        ("/static/samples/ankle-boot.png", "image/png"),
    ):
        response = server.get(path)
        assert response.status_code == 200, path
        assert response.headers["Content-Type"].startswith(content_type), path
        assert response.headers["Content-Security-Policy"] == PAGE_POLICY
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    page = server.get("/").text
    assert '<script src="/static/app.js"' in page
    assert "style=" not in page and "onclick" not in page and "<script>" not in page
    answer = _explain(server, png())
    assert answer.headers["Content-Security-Policy"] == API_POLICY
    assert server.get("/static/missing.js").status_code == 404


def test_explain_duration_is_a_histogram(server: Server) -> None:
    assert _explain(server, png()).status_code == 200
    text = server.get("/metrics").text
    assert "convserve_explain_duration_seconds_bucket" in text
    count = next(
        line
        for line in text.splitlines()
        if line.startswith("convserve_explain_duration_seconds_count")
    )
    assert float(count.split()[-1]) >= 1
    assert 'endpoint="/v1/explain"' in text
