"""Builds tiny datasets on disk: IDX files shaped like (Fashion-)MNIST and image-folder trees."""

from __future__ import annotations

import gzip
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

IDX_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array: magic (0, 0, 0x08, ndim), big-endian dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Writes `array` as an IDX file, gzipped when `path` ends in .gz."""
    data = idx_bytes(array)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(data, mtime=0))
    else:
        path.write_bytes(data)
    return path


def pattern_images(labels: np.ndarray, size: int = 28, seed: int = 0) -> np.ndarray:
    """(N, size, size) uint8 images a CNN learns in seconds: a bright bar whose row is the label.

    Objects are bright on a dark, noisy background, like Fashion-MNIST (dark enough to be in
    the dataset's form for the photo conversion).
    """
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 12, size=(len(labels), size, size), dtype=np.uint8)
    classes = int(labels.max()) + 1 if len(labels) else 1
    for i, label in enumerate(labels):
        row = 2 + int(label) * (size - 4) // classes
        images[i, row : row + 2, 3:-3] = rng.integers(180, 256, dtype=np.uint8)
    return images


def make_idx_dir(
    directory: Path,
    train_per_class: int = 12,
    test_per_class: int = 4,
    classes: int = 10,
    gz: bool = True,
    seed: int = 0,
) -> Path:
    """Writes the four official IDX files of a tiny (Fashion-)MNIST-shaped dataset."""
    directory.mkdir(parents=True, exist_ok=True)
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = np.tile(np.arange(classes, dtype=np.uint8), per_class)
        images_name, labels_name = IDX_NAMES[split]
        suffix = ".gz" if gz else ""
        write_idx(directory / f"{images_name}{suffix}", pattern_images(labels, seed=seed))
        write_idx(directory / f"{labels_name}{suffix}", labels)
    return directory


COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (40, 50, 230)}


def make_image_folder(
    root: Path,
    per_class: int = 8,
    size: tuple[int, int] = (40, 36),
    classes: Sequence[str] = tuple(COLOURS),
    fmt: str = "png",
    seed: int = 0,
) -> Path:
    """ROOT/<class>/<n>.<fmt>: noisy images tinted by their class colour (or grey levels)."""
    rng = np.random.default_rng(seed)
    width, height = size
    for index, name in enumerate(classes):
        colour = np.array(COLOURS.get(name, (60 * index,) * 3), dtype=np.int16)
        (root / name).mkdir(parents=True, exist_ok=True)
        for n in range(per_class):
            noise = rng.integers(-30, 30, size=(height, width, 3), dtype=np.int16)
            pixels = np.clip(colour + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels, "RGB").save(root / name / f"{n}.{fmt}")
    return root


FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def fashion_mnist_test_images(count: int, directory: Path = FASHION_MNIST_DIR) -> np.ndarray:
    """The first `count` real Fashion-MNIST test images, (count, 28, 28) uint8, from the IDX file.

    Raises FileNotFoundError when Debian's dataset-fashion-mnist is not installed.
    """
    with gzip.open(directory / f"{IDX_NAMES['test'][0]}.gz") as file:
        header = file.read(16)
        _, total, rows, cols = struct.unpack(">4I", header)
        data = file.read(min(count, total) * rows * cols)
    return np.frombuffer(data, dtype=np.uint8).reshape(-1, rows, cols)
