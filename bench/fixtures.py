"""What the benchmark sends and serves: the two scenarios' checkpoints and request bodies.

Scenario S: a 28x28 grayscale PNG to the default Fashion-MNIST model (checkpoints/model.pt when
it exists, else a freshly initialised model of the default architecture).
Scenario M: a 640x480 RGB JPEG to a 3x128x128 model with four conv blocks (32/64/128/256
channels) and global average pooling, freshly initialised. Accuracy is irrelevant for speed.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

from models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from models.cnn import CNN, CNNConfig
from models.data import DEFAULT_FASHION_MNIST_DIR as FASHION_MNIST_DIR
from models.data import FASHION_MNIST_CLASSES
from models.transforms import Preprocessing

DEFAULT_CHECKPOINT = Path("checkpoints/model.pt")
# The Fashion-MNIST training set's mean and std (what convserve-train computes).
_FASHION_MNIST_MEAN = (0.2860,)
_FASHION_MNIST_STD = (0.3530,)
MEDIUM_CONFIG = CNNConfig(
    in_channels=3, height=128, width=128, num_classes=10, channels=(32, 64, 128, 256),
    global_pool=True,
)  # fmt: skip


@dataclass(frozen=True)
class Scenario:
    """One model and the body every request of the scenario sends."""

    name: str
    description: str
    checkpoint: Path
    body: Path
    content_type: str
    model_origin: str


def prepare(workdir: Path) -> list[Scenario]:
    """Writes both scenarios' checkpoints and bodies under `workdir`; returns S then M."""
    workdir.mkdir(parents=True, exist_ok=True)
    return [_small(workdir), _medium(workdir)]


def _small(workdir: Path) -> Scenario:
    if DEFAULT_CHECKPOINT.exists():
        load_checkpoint(DEFAULT_CHECKPOINT)  # fails loudly on a bad file
        checkpoint, origin = DEFAULT_CHECKPOINT.resolve(), f"trained ({DEFAULT_CHECKPOINT})"
    else:
        checkpoint, origin = workdir / "small.pt", "freshly initialised (no checkpoints/model.pt)"
        preprocessing = Preprocessing(
            mode="L", mean=_FASHION_MNIST_MEAN, std=_FASHION_MNIST_STD, background=0
        )
        _save_fresh(CNNConfig(), preprocessing, list(FASHION_MNIST_CLASSES), "small", checkpoint)
    body = workdir / "small.png"
    body.write_bytes(_encode(_fashion_image(), "PNG", optimize=True))
    return Scenario(
        "S", "28x28 grayscale PNG, default Fashion-MNIST CNN", checkpoint, body, "image/png", origin
    )


def _medium(workdir: Path) -> Scenario:
    checkpoint = workdir / "medium.pt"
    preprocessing = Preprocessing(
        mode="RGB", height=128, width=128, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
    )
    classes = [f"class-{i}" for i in range(MEDIUM_CONFIG.num_classes)]
    _save_fresh(MEDIUM_CONFIG, preprocessing, classes, "medium", checkpoint)
    body = workdir / "medium.jpg"
    body.write_bytes(_encode(photo_like((640, 480)), "JPEG", quality=90))
    return Scenario(
        "M",
        "640x480 RGB JPEG, 3x128x128 CNN 32/64/128/256 + global average pool",
        checkpoint,
        body,
        "image/jpeg",
        "freshly initialised",
    )


def _save_fresh(
    config: CNNConfig, preprocessing: Preprocessing, classes: list[str], name: str, path: Path
) -> None:
    torch.manual_seed(0)
    model = CNN(config).eval()
    training = {"name": f"bench-{name}", "dataset": "none (benchmark, untrained)", "epochs": 0}
    save_checkpoint(Checkpoint(config, model.state_dict(), classes, preprocessing, training), path)


def _fashion_image() -> Image.Image:
    """The first Fashion-MNIST test image when the dataset is installed, else a drawn shoe."""
    images = FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz"
    if images.exists():
        from models.data import read_idx

        return Image.fromarray(read_idx(images)[0].numpy(), "L")
    image = Image.new("L", (28, 28), 0)
    draw = ImageDraw.Draw(image)
    draw.polygon([(3, 20), (12, 8), (18, 8), (25, 18), (25, 24), (3, 24)], fill=180)
    return image.filter(ImageFilter.GaussianBlur(0.7))


def photo_like(size: tuple[int, int]) -> Image.Image:
    """A deterministic image with smooth gradients, shapes and sensor-like noise.

    Compresses like a photograph (tens of KB as a quality-90 JPEG), unlike flat colour (tiny)
    or white noise (huge), so the decoder does realistic work.
    """
    width, height = size
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack(
        [
            120 + 80 * np.sin(x / 97.0) * np.cos(y / 61.0),
            110 + 70 * np.cos((x + y) / 143.0),
            100 + 90 * np.sin(y / 53.0 + x / 211.0),
        ],
        axis=-1,
    )
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(24):
        x0, y0 = int(rng.integers(0, width - 40)), int(rng.integers(0, height - 40))
        x1, y1 = x0 + int(rng.integers(20, 200)), y0 + int(rng.integers(20, 160))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        else:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
    image = image.filter(ImageFilter.GaussianBlur(1.5))
    noise = rng.normal(0, 6, (height, width, 3))
    noisy = np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(noisy, "RGB")


def _encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()
