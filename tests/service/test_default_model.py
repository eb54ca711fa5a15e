"""The default model (what `make run` trains) labels real Fashion-MNIST test images correctly."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from bench.server import REPO, Server
from tests.images import encode

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


def test_default_model_labels_product_photos_of_test_images(default_server: Server) -> None:
    import numpy as np

    from models.data import load_fashion_mnist
    from models.photos import render_photo_jpeg

    test = load_fashion_mnist(DATASET, photo=False).test
    assert test is not None
    rng = np.random.default_rng(2017)
    count, correct = 200, 0
    photos = [render_photo_jpeg(test.pixels[i, 0].numpy(), rng) for i in range(count)]
    for start in range(0, count, 50):
        files = [("file", (f"{i}.jpg", data)) for i, data in enumerate(photos[start : start + 50])]
        response = default_server.post("/v1/predict", files=files)
        assert response.status_code == 200, response.text
        for offset, prediction in enumerate(response.json()["predictions"]):
            assert prediction["preprocessing"] == "photo"
            correct += prediction["index"] == int(test.labels[start + offset])
    assert correct / count >= 0.88, f"{correct}/{count} right"


def test_readme_samples_are_answered_with_their_labels(default_server: Server) -> None:
    import json

    index = json.loads((REPO / "samples" / "index.json").read_text())
    files = [
        ("file", (entry["file"], (REPO / "samples" / entry["file"]).read_bytes()))
        for entry in index
    ]
    response = default_server.post("/v1/predict", files=files)
    assert response.status_code == 200, response.text
    answers = response.json()["predictions"]
    forms = [answer["preprocessing"] for answer in answers]
    assert forms == [entry["form"] for entry in index]
    pairs = list(zip(answers, index, strict=True))
    wrong = [
        (entry["file"], answer["label"])
        for answer, entry in pairs
        if answer["label"] != entry["label"]
    ]
    assert len(wrong) <= 2, wrong  # the README lists the samples the default model gets wrong
    boot = REPO / "samples" / "9-ankle-boot-photo.jpg"  # the README's photo example
    answer = default_server.post(
        "/v1/predict", data=boot.read_bytes(), headers={"Content-Type": "image/jpeg"}
    ).json()["predictions"][0]
    assert answer["label"] == "Ankle boot"
