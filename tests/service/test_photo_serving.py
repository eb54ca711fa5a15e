"""Photos through the real server: the stored conversion answers them, the answer says so."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.server import Server
from models.checkpoint import load_checkpoint, save_checkpoint
from models.data import DEFAULT_FASHION_MNIST_DIR, load_fashion_mnist
from models.photos import render_photo_jpeg
from models.train import main as train_main
from tests.datasets import IDX_NAMES, write_idx
from tests.images import encode

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not DEFAULT_FASHION_MNIST_DIR.is_dir(), reason="dataset-fashion-mnist absent"
    ),
]
TRAIN_IMAGES = 3000
PHOTOS = 200


@pytest.fixture(scope="module")
def small_fashion_mnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 3,000 training and 200 test images of Fashion-MNIST as IDX files."""
    dataset = load_fashion_mnist(photo=False)
    assert dataset.test is not None
    folder = tmp_path_factory.mktemp("small-fashion-mnist")
    for split, images, count in (
        ("train", dataset.train, TRAIN_IMAGES),
        ("test", dataset.test, PHOTOS),
    ):
        images_name, labels_name = IDX_NAMES[split]
        write_idx(folder / images_name, images.pixels[:count, 0].numpy())
        write_idx(folder / labels_name, images.labels[:count].numpy().astype(np.uint8))
    return folder


@pytest.fixture(scope="module")
def checkpoints(
    small_fashion_mnist: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """A tiny model trained with the photo conversion, and the same weights without it."""
    folder = tmp_path_factory.mktemp("photo-checkpoints")
    converted = folder / "converted" / "model.pt"
    args = ["--data-dir", str(small_fashion_mnist), "--epochs", "3", "--output", str(converted)]
    assert train_main(args) == 0
    trained = load_checkpoint(converted)
    unconverted = folder / "unconverted" / "model.pt"
    plain = replace(trained, preprocessing=replace(trained.preprocessing, photo=None))
    save_checkpoint(plain, unconverted)
    return {"converted": converted, "unconverted": unconverted}


@pytest.fixture(scope="module")
def photos() -> list[tuple[bytes, int]]:
    """200 test images rendered as product-photo JPEGs (a fixed seed), with their labels."""
    test = load_fashion_mnist(photo=False).test
    assert test is not None
    rng = np.random.default_rng(13)
    return [
        (render_photo_jpeg(test.pixels[i, 0].numpy(), rng), int(test.labels[i]))
        for i in range(PHOTOS)
    ]


def _served_accuracy(
    checkpoint: Path, photos: list[tuple[bytes, int]], workdir: Path
) -> tuple[float, set[str], dict[str, object]]:
    """Top-1 accuracy on `photos`, the forms answered (a dataset PNG too), /v1/model's
    preprocessing."""
    test = load_fashion_mnist(photo=False).test
    assert test is not None
    png = encode(Image.fromarray(test.pixels[0, 0].numpy(), "L"), "PNG")
    server = Server(workdir, {"CONVSERVE_MODEL_PATH": str(checkpoint), "CONVSERVE_WORKERS": "1"})
    server.start()
    try:
        answer = server.post("/v1/predict", data=png, headers={"Content-Type": "image/png"})
        assert answer.json()["predictions"][0]["preprocessing"] == "dataset"
        correct, forms = 0, set()
        for start in range(0, len(photos), 50):
            chunk = photos[start : start + 50]
            files = [("file", (f"{i}.jpg", data)) for i, (data, _) in enumerate(chunk)]
            response = server.post("/v1/predict", files=files)
            assert response.status_code == 200, response.text
            for prediction, (_, label) in zip(response.json()["predictions"], chunk, strict=True):
                correct += prediction["index"] == label
                forms.add(prediction["preprocessing"])
        described = server.get("/v1/model").json()["preprocessing"]
    finally:
        server.stop()
    return correct / len(photos), forms, described


def test_served_photos_are_answered_far_better_with_the_conversion(
    checkpoints: dict[str, Path],
    photos: list[tuple[bytes, int]],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    workdir = tmp_path_factory.mktemp("photo-servers")
    converted, forms, described = _served_accuracy(checkpoints["converted"], photos, workdir)
    unconverted, plain_forms, plain = _served_accuracy(checkpoints["unconverted"], photos, workdir)
    assert forms == {"photo"} and plain_forms == {"dataset"}
    assert described["photo_conversion"]["name"] == "product-photo"  # type: ignore[index]
    assert plain["photo_conversion"] is None
    # Chance is 10%; the unconverted path stays near it, the converted one is far above.
    assert converted >= unconverted + 0.3, (converted, unconverted)
