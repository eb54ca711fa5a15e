"""Fixtures shared by the models and service tests: tiny datasets and tiny trained checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.train import main as train_main
from tests.datasets import make_idx_dir, make_image_folder


@pytest.fixture(scope="session")
def tiny_idx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Gzipped IDX files shaped like Fashion-MNIST: 120 train + 40 test 28x28 images, 10 classes."""
    return make_idx_dir(tmp_path_factory.mktemp("tiny-idx"))


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An image folder ROOT/{red,green,blue}/*.png, 8 RGB 36x40 images per class."""
    return make_image_folder(tmp_path_factory.mktemp("tiny-folder"))


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_idx_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real checkpoint for 1x28x28 inputs and the 10 Fashion-MNIST classes.

    Trained by `convserve-train` for 2 epochs on tiny generated data (about a second), so it
    has the real format, preprocessing (L, background 0) and training summary.
    """
    output = tmp_path_factory.mktemp("tiny-checkpoint") / "model.pt"
    args = ["--data-dir", str(tiny_idx_dir), "--epochs", "2", "--output", str(output)]
    assert train_main(args) == 0
    return output


@pytest.fixture(scope="session")
def tiny_rgb_checkpoint(tiny_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real checkpoint for 3x32x32 RGB inputs and 3 classes (blue, green, red), from a folder."""
    output = tmp_path_factory.mktemp("tiny-rgb-checkpoint") / "model.pt"
    args = [
        *("--dataset", "folder", "--data-dir", str(tiny_folder), "--image-size", "32"),
        *("--mode", "RGB", "--epochs", "2", "--batch-size", "8", "--output", str(output)),
    ]
    assert train_main(args) == 0
    return output
