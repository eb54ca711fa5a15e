"""models.data: IDX files, image folders, splits."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.data import (
    FASHION_MNIST_CLASSES,
    DataError,
    load_dataset,
    load_fashion_mnist,
    load_image_folder,
    load_mnist,
    read_idx,
    split_indices,
)
from tests.datasets import IDX_NAMES, idx_bytes, make_idx_dir, make_image_folder, write_idx


@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_read_idx_plain_and_gzipped(tmp_path: Path, name: str) -> None:
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    tensor = read_idx(write_idx(tmp_path / name, array))
    assert tensor.dtype == torch.uint8
    assert torch.equal(tensor, torch.from_numpy(array))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x08\x03\x00\x00", "bad magic"),
        (bytes([0, 0, 0x0D, 1, 0, 0, 0, 1]) + b"\x00" * 4, "not unsigned bytes"),
        (bytes([0, 0, 0x08, 3, 0, 0]), "truncated IDX header"),
        (idx_bytes(np.zeros((2, 3, 3), np.uint8))[:-1], "announces"),
        (idx_bytes(np.zeros((2, 3, 3), np.uint8)) + b"\x00", "announces"),
    ],
)
def test_read_idx_rejects_malformed_files(tmp_path: Path, data: bytes, message: str) -> None:
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(data)
    with pytest.raises(DataError, match=message) as raised:
        read_idx(path)
    assert str(path) in str(raised.value)


@pytest.mark.parametrize("damage", ["truncate", "flip", "not-gzip"])
def test_read_idx_reports_a_corrupt_gzip(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "train-images-idx3-ubyte.gz"
    data = bytearray(gzip.compress(idx_bytes(np.arange(64, dtype=np.uint8).reshape(8, 8))))
    if damage == "truncate":
        data = data[:-6]
    elif damage == "flip":
        data[12:20] = b"\xff" * 8
    else:
        data = bytearray(idx_bytes(np.zeros((4, 4), np.uint8)))
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="cannot read IDX file") as raised:
        read_idx(path)
    assert str(path) in str(raised.value)


def test_fashion_mnist_from_tiny_idx_files(tiny_idx_dir: Path) -> None:
    dataset = load_fashion_mnist(tiny_idx_dir)
    assert dataset.classes == FASHION_MNIST_CLASSES
    assert dataset.train.pixels.shape == (120, 1, 28, 28)
    assert dataset.train.pixels.dtype == torch.uint8
    assert dataset.test is not None and len(dataset.test) == 40
    assert dataset.val is None
    assert dataset.train.labels.dtype == torch.int64
    assert sorted(dataset.train.labels.unique().tolist()) == list(range(10))
    pre = dataset.preprocessing
    assert (pre.mode, pre.height, pre.width, pre.background) == ("L", 28, 28, 0)
    expected = dataset.train.pixels.double().div(255)
    assert pre.mean[0] == pytest.approx(float(expected.mean()))
    assert pre.std[0] == pytest.approx(float(expected.std()))


def test_mnist_reads_plain_files_with_the_dotted_mirror_names(tmp_path: Path) -> None:
    make_idx_dir(tmp_path, gz=False)
    for images, labels in IDX_NAMES.values():
        for stem in (images, labels):
            (tmp_path / stem).rename(tmp_path / stem.replace("-idx", ".idx"))
    dataset = load_mnist(tmp_path)
    assert dataset.classes == tuple("0123456789")
    assert len(dataset.train) == 120


def test_missing_idx_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        load_fashion_mnist(tmp_path)


def test_idx_labels_beyond_the_classes_are_refused(tmp_path: Path) -> None:
    make_idx_dir(tmp_path, classes=11)
    with pytest.raises(DataError, match="label 10 but only 10 classes"):
        load_fashion_mnist(tmp_path)


def test_images_and_labels_must_pair_up(tmp_path: Path) -> None:
    make_idx_dir(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(3, np.uint8))
    with pytest.raises(DataError, match="do not pair up"):
        load_fashion_mnist(tmp_path)


def test_folder_without_splits(tiny_folder: Path) -> None:
    dataset = load_image_folder(tiny_folder, size=(32, 32))
    assert dataset.classes == ("blue", "green", "red")
    assert dataset.train.pixels.shape == (24, 3, 32, 32)
    assert dataset.val is None and dataset.test is None
    assert dataset.skipped == 0
    pre = dataset.preprocessing
    assert (pre.mode, pre.height, pre.width, pre.background) == ("RGB", 32, 32, 255)
    red = dataset.train.pixels[dataset.train.labels == 2].double().mean(dim=(0, 2, 3))
    assert red[0] > 150 and red[1] < 100 and red[2] < 100


def test_folder_with_train_val_test_subtrees(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "train", per_class=4)
    make_image_folder(tmp_path / "val", per_class=2, seed=1)
    make_image_folder(tmp_path / "test", per_class=3, seed=2, fmt="jpg")
    dataset = load_image_folder(tmp_path, size=(16, 16))
    assert (len(dataset.train), dataset.classes) == (12, ("blue", "green", "red"))
    assert dataset.val is not None and len(dataset.val) == 6
    assert dataset.test is not None and len(dataset.test) == 9


def test_unreadable_files_are_skipped_and_counted(tmp_path: Path) -> None:
    make_image_folder(tmp_path, per_class=3)
    (tmp_path / "red" / "empty.png").write_bytes(b"")
    (tmp_path / "red" / "text.jpg").write_text("not an image")
    good = (tmp_path / "green" / "0.png").read_bytes()
    (tmp_path / "green" / "truncated.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "blue" / "notes.txt").write_text("ignored: not an image suffix")
    dataset = load_image_folder(tmp_path)
    assert dataset.skipped == 3
    assert len(dataset.train) == 9


def test_a_folder_without_readable_images_is_an_error(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "x.png").write_bytes(b"junk")
    with pytest.raises(DataError, match="no readable images"):
        load_image_folder(tmp_path)


def test_a_folder_needs_two_classes(tmp_path: Path) -> None:
    (tmp_path / "only").mkdir()
    with pytest.raises(DataError, match="at least 2 class"):
        load_image_folder(tmp_path)


def test_greyscale_folders_become_l_models(tmp_path: Path) -> None:
    for index, name in enumerate(("dark", "light")):
        (tmp_path / name).mkdir()
        Image.new("L", (20, 20), 40 + 150 * index).save(tmp_path / name / "a.png")
        Image.new("I;16", (20, 20), 20000 + 40000 * index).save(tmp_path / name / "b.png")
    dataset = load_image_folder(tmp_path, size=(8, 8))
    assert dataset.preprocessing.mode == "L"
    assert dataset.train.pixels.shape == (4, 1, 8, 8)


def test_exif_orientation_and_first_gif_frame_are_applied(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    wide = Image.new("L", (8, 4), 0)
    wide.paste(255, (0, 0, 4, 4))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    wide.save(tmp_path / "a" / "rotated.jpg", exif=exif, quality=100)
    frames = [Image.new("L", (4, 4), 200), Image.new("L", (4, 4), 10)]
    frames[0].save(tmp_path / "b" / "anim.gif", save_all=True, append_images=frames[1:])
    dataset = load_image_folder(tmp_path, size=(8, 4), mode="L")
    rotated, animated = dataset.train.pixels[0, 0], dataset.train.pixels[1, 0]
    assert rotated.shape == (8, 4)  # displayed upright: 4 wide, 8 tall
    assert rotated[:4].float().mean() > 200 > 50 > rotated[4:].float().mean()
    assert animated.float().mean() > 150


def test_load_dataset_dispatches_and_checks(tiny_idx_dir: Path, tiny_folder: Path) -> None:
    assert load_dataset("fashion-mnist", tiny_idx_dir).name == "fashion-mnist"
    assert load_dataset("folder", tiny_folder, (8, 8), "L").preprocessing.mode == "L"
    with pytest.raises(DataError, match="needs a data directory"):
        load_dataset("mnist")
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset("cifar", tiny_folder)


def test_split_indices_is_a_seeded_partition() -> None:
    kept, held = split_indices(100, 0.1, seed=3)
    assert len(held) == 10 and len(kept) == 90
    assert sorted(torch.cat([kept, held]).tolist()) == list(range(100))
    again, _ = split_indices(100, 0.1, seed=3)
    other, _ = split_indices(100, 0.1, seed=4)
    assert torch.equal(kept, again) and not torch.equal(kept, other)
    assert [len(part) for part in split_indices(2, 0.0, seed=0)] == [1, 1]
    with pytest.raises(DataError):
        split_indices(1, 0.5, seed=0)
