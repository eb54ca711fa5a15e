"""The default model (what `make run` trains) labels real Fashion-MNIST test images correctly."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.images import encode
from tests.server import REPO, Server

DEFAULT_CHECKPOINT = REPO / "checkpoints" / "model.pt"
DATASET = Path("/usr/share/datasets/fashion-mnist")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.environ.get("CI") and not (DEFAULT_CHECKPOINT.exists() and DATASET.exists()),
        reason="needs checkpoints/model.pt and dataset-fashion-mnist (make test provides both)",
    ),
]


@pytest.fixture(scope="module")
def default_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("default")
    running = Server(
        workdir, {"CONVSERVE_MODEL_PATH": str(DEFAULT_CHECKPOINT), "CONVSERVE_WORKERS": "1"}
    ).start()
    yield running
    running.stop()


def test_default_model_labels_fashion_mnist_test_images(default_server: Server) -> None:
    from models.data import load_fashion_mnist

    test = load_fashion_mnist(DATASET).test
    assert test is not None
    count = 200
    files = [
        ("file", (f"{i}.png", encode(Image.fromarray(test.pixels[i, 0].numpy(), "L"), "PNG")))
        for i in range(count)
    ]
    correct = 0
    for start in range(0, count, 50):
        response = default_server.post("/v1/predict", files=files[start : start + 50])
        assert response.status_code == 200, response.text
        for offset, prediction in enumerate(response.json()["predictions"]):
            correct += prediction["index"] == int(test.labels[start + offset])
    assert correct / count >= 0.88, f"{correct}/{count} right"
    shoe = default_server.post(
        "/v1/predict", data=files[0][1][1], headers={"Content-Type": "image/png"}
    ).json()["predictions"][0]
    assert shoe["label"] == "Ankle boot"  # the first test image of Fashion-MNIST
