"""POST /v1/explain in-process: thread safety beside predictions, the concurrency limit, PNGs."""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flask import Flask
from PIL import Image
from werkzeug.test import TestResponse

from service import create_app
from service.config import Settings
from service.pictures import png_bytes, scaled_maps
from tests.images import encode

EXPLAIN_THREADS = 3
PREDICT_THREADS = 2
ROUNDS = 6


def _images(count: int) -> list[bytes]:
    """Distinct 28x28 grey PNGs (random blobs, one seed each)."""
    images = []
    for seed in range(count):
        generator = np.random.default_rng(seed)
        pixels = (generator.random((28, 28)) ** 3 * 255).astype(np.uint8)
        images.append(encode(Image.fromarray(pixels, "L"), "PNG"))
    return images


def _decode(url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))


@pytest.fixture
def app(tiny_checkpoint: Path, tmp_path: Path) -> Iterator[Flask]:
    settings = Settings(
        model_path=tiny_checkpoint,
        reload_interval_s=0,
        max_concurrent_explains=EXPLAIN_THREADS,
        metrics_dir=tmp_path / "metrics",
    )
    built = create_app(settings)
    yield built
    built.extensions["convserve.engine"].stop()


def _json(response: TestResponse) -> dict[str, Any]:
    body = response.get_json()
    assert isinstance(body, dict), response
    return body


def _summary(response: TestResponse) -> dict[str, Any]:
    answer = _json(response)
    return {
        "scores": answer["prediction"]["scores"],
        "target": answer["gradcam"]["target"]["index"],
        "ranges": [(m["min"], m["max"]) for layer in answer["layers"] for m in layer["maps"]],
        "heatmap": _decode(answer["gradcam"]["heatmap"]).astype(int),
    }


def _assert_same(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got["target"] == want["target"]
    assert got["scores"] == pytest.approx(want["scores"], abs=1e-5)
    assert np.allclose(got["ranges"], want["ranges"], atol=1e-4)
    assert np.abs(got["heatmap"] - want["heatmap"]).max() <= 1


def test_threaded_explains_beside_predicts_never_mix_requests(app: Flask) -> None:
    images = _images(6)
    client = app.test_client()
    explained = [
        _summary(client.post("/v1/explain", data=image, content_type="image/png"))
        for image in images
    ]
    # The images are told apart by their maps, so a mixed-up answer cannot pass as right.
    assert len({tuple(np.round(e["ranges"][0], 4)) for e in explained}) == len(images)
    predicted = _json(
        client.post("/v1/predict", data={"file": [(io.BytesIO(i), "x.png") for i in images]})
    )["predictions"]
    failures: list[str] = []

    def explainer(offset: int) -> None:
        own = app.test_client()
        for round_ in range(ROUNDS):
            index = (offset + round_) % len(images)
            response = own.post("/v1/explain", data=images[index], content_type="image/png")
            try:
                assert response.status_code == 200, response.json
                _assert_same(_summary(response), explained[index])
            except AssertionError as exc:
                failures.append(f"explain image {index}: {exc}")

    def predictor(offset: int) -> None:
        own = app.test_client()
        for round_ in range(ROUNDS * 2):
            order = [(offset + round_ + k) % len(images) for k in range(3)]
            files = [(io.BytesIO(images[i]), f"{i}.png") for i in order]
            response = own.post("/v1/predict", data={"file": files})
            for index, answer in zip(order, _json(response)["predictions"], strict=True):
                if answer["scores"] != pytest.approx(predicted[index]["scores"], abs=1e-5):
                    failures.append(f"predict image {index}: {answer['label']}")

    threads = [threading.Thread(target=explainer, args=(i,)) for i in range(EXPLAIN_THREADS)]
    threads += [threading.Thread(target=predictor, args=(i,)) for i in range(PREDICT_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []
    module = app.extensions["convserve.engine"].model.module
    assert all(parameter.grad is None for parameter in module.parameters())
    assert not module.training


def test_explains_beyond_the_worker_limit_get_503_with_retry_after(app: Flask) -> None:
    client = app.test_client()
    image = _images(1)[0]
    slots: threading.BoundedSemaphore = app.extensions["convserve.explain_slots"]
    for _ in range(EXPLAIN_THREADS):
        assert slots.acquire(blocking=False)
    try:
        refused = client.post("/v1/explain", data=image, content_type="image/png")
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == "1"
        assert _json(refused)["type"].endswith("/too-many-explains")
        assert client.post("/v1/predict", data=image, content_type="image/png").status_code == 200
    finally:
        for _ in range(EXPLAIN_THREADS):
            slots.release()
    assert client.post("/v1/explain", data=image, content_type="image/png").status_code == 200


def test_png_bytes_decode_to_the_same_pixels() -> None:
    generator = np.random.default_rng(3)
    grey = generator.integers(0, 256, (5, 7), dtype=np.uint8)
    colour = generator.integers(0, 256, (4, 3, 3), dtype=np.uint8)
    for array, mode in ((grey, "L"), (colour, "RGB")):
        image = Image.open(io.BytesIO(png_bytes(array)))
        assert image.mode == mode
        assert np.array_equal(np.asarray(image), array)
    with pytest.raises(ValueError, match="uint8"):
        png_bytes(grey.astype(np.float32))


def test_maps_are_scaled_on_their_own_and_flat_ones_are_black() -> None:
    maps = torch.stack([torch.arange(12.0).view(3, 4) - 5, torch.full((3, 4), 0.25)])
    ramp, flat = scaled_maps(maps)
    assert (ramp.low, ramp.high) == (-5.0, 6.0)
    assert _decode(ramp.image).min() == 0 and _decode(ramp.image).max() == 255
    assert (flat.low, flat.high) == (0.25, 0.25)
    assert _decode(flat.image).max() == 0


def test_colour_models_get_colour_kernels_and_input(
    tiny_rgb_checkpoint: Path, tmp_path: Path
) -> None:
    settings = Settings(
        model_path=tiny_rgb_checkpoint, reload_interval_s=0, metrics_dir=tmp_path / "metrics"
    )
    built = create_app(settings)
    try:
        client = built.test_client()
        image = encode(Image.new("RGB", (40, 36), (200, 30, 90)), "PNG")
        answer = _json(
            client.post("/v1/explain?target=green", data=image, content_type="image/png")
        )
        summary = _json(client.get("/v1/model"))["architecture"]["layers"]
    finally:
        built.extensions["convserve.engine"].stop()
    assert answer["kernels"]["shape"][1] == 3
    assert _decode(answer["kernels"]["maps"][0]["image"]).shape == (3, 3, 3)
    assert _decode(answer["input"]["image"]).shape == (32, 32, 3)
    assert answer["gradcam"]["target"]["label"] == "green"
    assert [layer["shape"] for layer in answer["layers"]] == [
        row["output_shape"] for row in summary if row["name"].startswith("features.")
    ]
