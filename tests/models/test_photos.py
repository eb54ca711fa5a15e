"""The product-photo conversion: a no-op on dataset-form images, the inverse of a rendering."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.data import DEFAULT_FASHION_MNIST_DIR, load_dataset, load_fashion_mnist
from models.photos import photo_round_trip, render_photo
from models.transforms import PhotoConversion, Preprocessing

needs_fashion_mnist = pytest.mark.skipif(
    not DEFAULT_FASHION_MNIST_DIR.is_dir(), reason="dataset-fashion-mnist absent"
)
GREY = Preprocessing(mode="L", mean=(0.5,), std=(0.5,), background=0, photo=PhotoConversion())


def test_dataset_form_images_pass_untouched(tiny_idx_dir: Path) -> None:
    dataset = load_fashion_mnist(tiny_idx_dir)
    pre = dataset.preprocessing
    assert pre.photo is not None
    for pixels in dataset.train.pixels:
        converted, form = pre.to_uint8_with_form(Image.fromarray(pixels[0].numpy(), "L"))
        assert form == "dataset"
        assert torch.equal(converted, pixels)


@needs_fashion_mnist
def test_the_whole_fashion_mnist_test_set_is_in_dataset_form() -> None:
    plain = load_fashion_mnist(photo=False).test
    served = load_fashion_mnist().test
    assert plain is not None and served is not None
    changed = (plain.pixels != served.pixels).flatten(1).any(dim=1)
    # A handful of images have a light corner (a garment touching it) and are converted.
    assert int(changed.sum()) <= 10


def test_a_dark_object_on_a_light_background_is_trimmed_negated_fitted_and_centred() -> None:
    photo = Image.new("RGB", (300, 200), (235, 240, 230))
    photo.paste((20, 30, 90), (40, 60, 100, 180))  # 60 wide, 120 tall, off-centre
    converted, form = GREY.to_uint8_with_form(photo)
    assert form == "photo"
    image = converted[0]
    bright = (image > 128).nonzero()
    rows, cols = bright[:, 0], bright[:, 1]
    assert (int(rows.min()), int(rows.max())) == (0, 27)  # the long edge fills the input
    assert int(cols.max() - cols.min() + 1) == 14  # aspect ratio kept: 28 * 60 / 120
    assert abs((int(cols.min()) + int(cols.max())) / 2 - 13.5) <= 0.5  # centred
    assert int(image.max()) == 255 and int(image[:, :5].max()) == 0  # black background


def test_a_light_object_on_a_dark_background_is_not_negated() -> None:
    photo = Image.new("L", (90, 90), 20)
    photo.paste(200, (30, 10, 60, 80))
    image = GREY.to_uint8(photo)[0]
    assert int(image[14, 14]) == 255 and int(image[14, 0]) == 0


@needs_fashion_mnist
def test_a_photo_rendering_converts_back_close_to_the_original() -> None:
    dataset = load_fashion_mnist()
    assert dataset.test is not None
    originals = dataset.test.pixels[:200]
    converted = photo_round_trip(originals, dataset.preprocessing, seed=3)
    error = (converted.float() - originals.float()).abs().mean(dim=(1, 2, 3))
    rng = np.random.default_rng(3)
    resized_only = replace(dataset.preprocessing, photo=None)
    unconverted = torch.stack(
        [resized_only.to_uint8(render_photo(image[0].numpy(), rng)) for image in originals]
    )
    baseline = (unconverted.float() - originals.float()).abs().mean(dim=(1, 2, 3))
    # Grey levels 0-255; what remains is JPEG noise, resampling and a pixel of trim.
    assert float(error.median()) < 25, float(error.median())
    assert float(baseline.median()) > 4 * float(error.median())


def test_renderings_do_not_depend_on_the_number_of_workers(tiny_idx_dir: Path) -> None:
    dataset = load_fashion_mnist(tiny_idx_dir)
    pixels = dataset.train.pixels.repeat(5, 1, 1, 1)  # 600 images: two jobs
    one = photo_round_trip(pixels, dataset.preprocessing, seed=1, workers=1)
    two = photo_round_trip(pixels, dataset.preprocessing, seed=1, workers=2)
    assert torch.equal(one, two) and one.shape == pixels.shape


def test_the_conversion_is_stored_and_old_checkpoints_have_none() -> None:
    data = GREY.to_dict()
    assert data["photo"]["name"] == "product-photo"
    assert Preprocessing.from_dict(data) == GREY
    old = {key: value for key, value in data.items() if key != "photo"}
    assert Preprocessing.from_dict(old).photo is None
    described = GREY.describe()
    assert described["photo_conversion"]["tolerance"] == 0.05
    assert any("photo conversion" in step for step in described["steps"])


def test_folders_convert_photos_only_when_asked(tiny_folder: Path, tiny_idx_dir: Path) -> None:
    assert load_dataset("folder", tiny_folder).preprocessing.photo is None
    assert load_dataset("folder", tiny_folder, photo=True).preprocessing.photo is not None
    assert load_dataset("fashion-mnist", tiny_idx_dir).preprocessing.photo is not None
    assert load_dataset("fashion-mnist", tiny_idx_dir, photo=False).preprocessing.photo is None
