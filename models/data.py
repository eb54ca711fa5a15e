"""Datasets as uint8 pixel tensors: IDX files (Fashion-MNIST, MNIST) and image-folder trees.

Every dataset ends up as `ImageSet`s of uint8 (N, C, H, W) pixels, the output of
`Preprocessing.to_uint8`; training normalizes them in batches with `Preprocessing.normalize`,
which is exactly what `Preprocessing.__call__` does to one uploaded image when serving.
"""

from __future__ import annotations

import gzip
import logging
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset as TorchDataset

from models.transforms import Mode, PhotoConversion, Preprocessing, compute_mean_std

log = logging.getLogger(__name__)

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
MNIST_CLASSES = tuple(str(digit) for digit in range(10))
# How each dataset was made from photos: Fashion-MNIST's objects fill the image's long side,
# MNIST's digits fill a 20x20 box centred in 28x28.
FASHION_MNIST_PHOTO = PhotoConversion()
MNIST_PHOTO = PhotoConversion(extent=20 / 28)
DEFAULT_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"})

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_UBYTE = 0x08
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
# Everything Pillow raises for a file it cannot decode (UnidentifiedImageError is an OSError).
_DECODE_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    struct.error,
    Image.DecompressionBombError,
)


class DataError(ValueError):
    """A dataset that cannot be used: missing files, malformed IDX data, no readable images."""


@dataclass(frozen=True)
class ImageSet(TorchDataset[tuple[torch.Tensor, torch.Tensor]]):
    """uint8 pixels (N, C, H, W) in 0-255 and their int64 class indices (N,)."""

    pixels: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.pixels.dtype != torch.uint8 or self.pixels.dim() != 4:
            raise DataError(
                f"pixels must be uint8 (N, C, H, W), got {self.pixels.dtype} "
                f"{tuple(self.pixels.shape)}"
            )
        if self.labels.shape != (self.pixels.shape[0],):
            raise DataError(
                f"{self.pixels.shape[0]} images but labels of shape {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(uint8 (C, H, W) pixels, label) of one image."""
        return self.pixels[index], self.labels[index]

    def subset(self, indices: torch.Tensor) -> ImageSet:
        """The images at `indices`, in that order."""
        return ImageSet(self.pixels[indices], self.labels[indices])


@dataclass(frozen=True)
class Dataset:
    """A labelled dataset ready for training.

    `val` and `test` are None when the source has no such split (training then carves a
    validation split from `train`). `preprocessing` is what the checkpoint will store: it turns
    one served image into exactly what the network saw in training. `skipped` counts
    unreadable files that were left out.
    """

    name: str
    classes: tuple[str, ...]
    preprocessing: Preprocessing
    train: ImageSet
    val: ImageSet | None = None
    test: ImageSet | None = None
    skipped: int = 0


def read_idx(path: str | Path) -> torch.Tensor:
    """Reads one IDX file (plain or gzipped) of unsigned bytes into a uint8 tensor of its shape.

    Raises DataError naming the file when the magic number, the type or the size is wrong.
    """
    source = Path(path)
    opener = gzip.open if source.suffix == ".gz" else open
    try:
        with opener(source, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{source}: cannot read IDX file: {exc}") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{source}: not an IDX file (bad magic number)")
    if data[2] != _IDX_UBYTE:
        raise DataError(f"{source}: IDX type 0x{data[2]:02x} is not unsigned bytes (0x08)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise DataError(f"{source}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(shape))
    if len(data) - header != expected:
        raise DataError(
            f"{source}: IDX header announces {shape} = {expected} bytes, found {len(data) - header}"
        )
    array = np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)
    return torch.from_numpy(array.copy())


def load_idx_split(directory: str | Path, split: str) -> ImageSet:
    """The 'train' or 't10k' IDX image/label pair from `directory` as an ImageSet (N, 1, H, W)."""
    images_stem, labels_stem = _IDX_FILES[split]
    images = read_idx(_find_idx(Path(directory), images_stem))
    labels = read_idx(_find_idx(Path(directory), labels_stem))
    if images.dim() != 3 or labels.dim() != 1 or images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{directory}: {split} images {tuple(images.shape)} and labels "
            f"{tuple(labels.shape)} do not pair up as (N, H, W) and (N,)"
        )
    return ImageSet(images.unsqueeze(1).contiguous(), labels.to(torch.int64))


def load_idx_dataset(
    directory: str | Path,
    classes: Iterable[str],
    name: str,
    background: int = 0,
    photo: PhotoConversion | None = None,
) -> Dataset:
    """An IDX dataset (train + test) whose preprocessing is L mode at the images' own size.

    mean/std come from the training images. `background` is the grey level transparent
    uploads are composited onto (0: bright objects on black, as in (Fashion-)MNIST); `photo`
    the conversion that brings product photos into the dataset's form (None: none).
    """
    train = load_idx_split(directory, "train")
    test = load_idx_split(directory, "test")
    names = tuple(classes)
    _check_labels(Path(directory), train.labels, len(names))
    _check_labels(Path(directory), test.labels, len(names))
    if test.pixels.shape[1:] != train.pixels.shape[1:]:
        raise DataError(f"{directory}: train and test images differ in size")
    mean, std = compute_mean_std(train.pixels)
    _, height, width = train.pixels.shape[1:]
    preprocessing = Preprocessing(
        mode="L",
        height=height,
        width=width,
        mean=tuple(mean),
        std=tuple(std),
        background=background,
        photo=photo,
    )
    train = ImageSet(preprocessing.as_served(train.pixels), train.labels)
    test = ImageSet(preprocessing.as_served(test.pixels), test.labels)
    return Dataset(name, names, preprocessing, train, test=test)


def load_fashion_mnist(
    directory: str | Path = DEFAULT_FASHION_MNIST_DIR, photo: bool = True
) -> Dataset:
    """Fashion-MNIST (60,000 train + 10,000 test, 28x28 L) from its four official IDX files.

    With `photo` the preprocessing converts product photos the way the dataset was made.
    """
    conversion = FASHION_MNIST_PHOTO if photo else None
    return load_idx_dataset(directory, FASHION_MNIST_CLASSES, "fashion-mnist", photo=conversion)


def load_mnist(directory: str | Path, photo: bool = True) -> Dataset:
    """MNIST digits from its four official IDX files, read exactly like Fashion-MNIST."""
    return load_idx_dataset(directory, MNIST_CLASSES, "mnist", photo=MNIST_PHOTO if photo else None)


def load_image_folder(
    root: str | Path,
    size: tuple[int, int] = (32, 32),
    mode: Mode | None = None,
    background: int = 255,
    photo: PhotoConversion | None = None,
) -> Dataset:
    """An image-folder tree ROOT/<class>/*.(png|jpg|jpeg|webp|bmp|gif), decoded once.

    With ROOT/train/ and ROOT/val/ (and optionally ROOT/test/) the splits are taken as they
    are; otherwise everything is `train` and training carves the validation split. `size` is
    (height, width); `mode` None picks L when every file is greyscale, else RGB. Each image goes
    through `Preprocessing.to_uint8` (EXIF orientation applied first, the first frame of an
    animation); unreadable files are skipped, counted and logged, never fatal. `photo` is the
    conversion applied to every file first (None: none).
    """
    base = Path(root)
    split_roots = {name: base / name for name in ("train", "val", "test") if (base / name).is_dir()}
    trees = split_roots if "train" in split_roots else {"train": base}
    classes = _class_names(trees["train"])
    files = {split: _list_images(tree, classes) for split, tree in trees.items()}
    chosen: Mode = mode or _guess_mode(path for listing in files.values() for path, _ in listing)
    height, width = size
    preprocessing = Preprocessing(
        mode=chosen,
        height=height,
        width=width,
        mean=(0.5,) * (1 if chosen == "L" else 3),
        std=(0.5,) * (1 if chosen == "L" else 3),
        background=background,
        photo=photo,
    )
    decoded = {split: _decode_all(listing, preprocessing) for split, listing in files.items()}
    sets = {split: image_set for split, (image_set, _) in decoded.items()}
    skipped = sum(count for _, count in decoded.values())
    if len(sets["train"]) == 0:
        raise DataError(f"{trees['train']}: no readable images ({skipped} unreadable)")
    mean, std = compute_mean_std(sets["train"].pixels)
    preprocessing = replace(preprocessing, mean=tuple(mean), std=tuple(std))
    return Dataset(
        f"folder:{base.name}",
        classes,
        preprocessing,
        sets["train"],
        val=sets.get("val"),
        test=sets.get("test"),
        skipped=skipped,
    )


def load_dataset(
    kind: str,
    directory: str | Path | None = None,
    size: tuple[int, int] = (32, 32),
    mode: Mode | None = None,
    photo: bool | None = None,
) -> Dataset:
    """Loads 'fashion-mnist' (default directory DEFAULT_FASHION_MNIST_DIR), 'mnist' or 'folder'.

    `size` and `mode` apply to folders only; IDX datasets keep their own 28x28 L images.
    `photo` turns the product-photo conversion on or off; None: on for the IDX datasets, off
    for folders.
    """
    if kind == "fashion-mnist":
        return load_fashion_mnist(directory or DEFAULT_FASHION_MNIST_DIR, photo is not False)
    if directory is None:
        raise DataError(f"dataset {kind!r} needs a data directory")
    if kind == "mnist":
        return load_mnist(directory, photo is not False)
    if kind == "folder":
        conversion = PhotoConversion() if photo else None
        return load_image_folder(directory, size=size, mode=mode, photo=conversion)
    raise DataError(f"unknown dataset kind {kind!r} (fashion-mnist, mnist or folder)")


def split_indices(count: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random partition of range(count) into (kept, held_out), both sorted.

    held_out has round(count * fraction) indices, at least 1 and at most count - 1.
    """
    if count < 2:
        raise DataError(f"cannot split {count} images into train and validation")
    held = min(max(round(count * fraction), 1), count - 1)
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    return order[held:].sort().values, order[:held].sort().values


def _find_idx(directory: Path, stem: str) -> Path:
    # Official names, gzipped or not, plus the "train-images.idx3-ubyte" spelling of some mirrors.
    dotted = stem.replace("-idx", ".idx")
    for name in (stem, f"{stem}.gz", dotted, f"{dotted}.gz"):
        if (directory / name).is_file():
            return directory / name
    raise DataError(f"{directory}: missing {stem}[.gz] (the official IDX file names)")


def _check_labels(source: Path, labels: torch.Tensor, num_classes: int) -> None:
    if labels.numel() and int(labels.max()) >= num_classes:
        raise DataError(f"{source}: label {int(labels.max())} but only {num_classes} classes")


def _class_names(tree: Path) -> tuple[str, ...]:
    if not tree.is_dir():
        raise DataError(f"{tree}: not a directory")
    names = tuple(
        sorted(p.name for p in tree.iterdir() if p.is_dir() and not p.name.startswith("."))
    )
    if len(names) < 2:
        raise DataError(f"{tree}: need at least 2 class subdirectories, found {len(names)}")
    return names


def _list_images(tree: Path, classes: tuple[str, ...]) -> list[tuple[Path, int]]:
    """Image files under tree/<class>/ (recursively), sorted, with their class index."""
    listing: list[tuple[Path, int]] = []
    for index, name in enumerate(classes):
        folder = tree / name
        if not folder.is_dir():
            continue
        paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        listing += [(path, index) for path in paths if path.is_file()]
    return listing


def _guess_mode(paths: Iterable[Path]) -> Mode:
    """L when every readable file is greyscale, else RGB (only headers are read)."""
    for path in paths:
        try:
            with Image.open(path) as image:
                if image.mode not in _GREY_MODES:
                    return "RGB"
        except _DECODE_ERRORS:
            continue
    return "L"


def _decode_all(
    listing: list[tuple[Path, int]], preprocessing: Preprocessing
) -> tuple[ImageSet, int]:
    """Decodes every file to uint8 through the serving path; returns the set and the skip count."""
    pixels: list[torch.Tensor] = []
    labels: list[int] = []
    for path, label in listing:
        tensor = _decode(path, preprocessing)
        if tensor is not None:
            pixels.append(tensor)
            labels.append(label)
    shape = (0, preprocessing.channels, preprocessing.height, preprocessing.width)
    stacked = torch.stack(pixels) if pixels else torch.zeros(shape, dtype=torch.uint8)
    return ImageSet(stacked, torch.tensor(labels, dtype=torch.int64)), len(listing) - len(pixels)


def _decode(path: Path, preprocessing: Preprocessing) -> torch.Tensor | None:
    try:
        with Image.open(path) as image:
            return preprocessing.to_uint8(ImageOps.exif_transpose(image))
    except _DECODE_ERRORS as exc:
        log.warning("skipping unreadable image %s: %s", path, exc)
        return None
