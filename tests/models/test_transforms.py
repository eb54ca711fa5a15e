"""models.transforms: the training path gives the same tensors as the serving path; to_mode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.data import DEFAULT_FASHION_MNIST_DIR, load_fashion_mnist, load_image_folder
from models.transforms import PhotoConversion, Preprocessing, to_mode


def _serve(preprocessing: Preprocessing, path: Path) -> torch.Tensor:
    with Image.open(path) as image:
        return preprocessing(image)


def test_idx_training_tensors_equal_the_serving_path(tiny_idx_dir: Path) -> None:
    dataset = load_fashion_mnist(tiny_idx_dir)
    pre = dataset.preprocessing
    trained = pre.normalize(dataset.train.pixels)
    served = torch.stack(
        [pre(Image.fromarray(image[0].numpy(), mode="L")) for image in dataset.train.pixels]
    )
    assert trained.dtype == served.dtype == torch.float32
    assert torch.equal(trained, served)


def test_batched_normalize_equals_one_image_at_a_time(tiny_idx_dir: Path) -> None:
    dataset = load_fashion_mnist(tiny_idx_dir)
    pre = dataset.preprocessing
    batch = pre.normalize(dataset.train.pixels[:16])
    singles = torch.stack([pre.normalize(pixels) for pixels in dataset.train.pixels[:16]])
    assert torch.equal(batch, singles)


def test_folder_training_tensors_equal_serving_the_files(tiny_folder: Path) -> None:
    dataset = load_image_folder(tiny_folder, size=(32, 32))
    pre = dataset.preprocessing
    files = sorted(tiny_folder.glob("*/*.png"))  # the loader's order: class, then name
    served = torch.stack([_serve(pre, path) for path in files])
    assert torch.equal(pre.normalize(dataset.train.pixels), served)


@pytest.mark.skipif(not DEFAULT_FASHION_MNIST_DIR.is_dir(), reason="dataset-fashion-mnist absent")
def test_real_fashion_mnist_test_images_match_the_serving_path(tmp_path: Path) -> None:
    dataset = load_fashion_mnist()
    assert dataset.test is not None
    pre = dataset.preprocessing
    pixels = dataset.test.pixels[:64]
    for index, image in enumerate(pixels):  # uploaded as PNG files, as a client would
        Image.fromarray(image[0].numpy(), mode="L").save(tmp_path / f"{index}.png")
    served = torch.stack([_serve(pre, tmp_path / f"{i}.png") for i in range(len(pixels))])
    assert torch.equal(pre.normalize(pixels), served)


def _rgba_pixel(image: Image.Image) -> tuple[int, ...]:
    value = image.getpixel((0, 0))
    return value if isinstance(value, tuple) else (int(value or 0),)


def _palette_image(transparent: bool) -> Image.Image:
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.putpixel((0, 0), 0)
    image.putpixel((1, 0), 1)
    if transparent:
        image.info["transparency"] = 0  # red is the transparent index
    return image


@pytest.mark.parametrize(
    ("image", "mode", "background", "expected"),
    [
        (_palette_image(transparent=False), "RGB", 255, [(255, 0, 0), (0, 0, 255)]),
        (_palette_image(transparent=True), "RGB", 255, [(255, 255, 255), (0, 0, 255)]),
        (_palette_image(transparent=True), "L", 0, [(0,), (29,)]),
        (Image.new("RGBA", (2, 1), (255, 0, 0, 0)), "RGB", 10, [(10, 10, 10)] * 2),
        (Image.new("RGBA", (2, 1), (255, 0, 0, 255)), "L", 0, [(76,)] * 2),
        (Image.new("RGBA", (2, 1), (0, 0, 0, 128)), "L", 255, [(127,)] * 2),
        (Image.new("LA", (2, 1), (200, 0)), "L", 0, [(0,)] * 2),
        (Image.new("LA", (2, 1), (200, 255)), "RGB", 0, [(200, 200, 200)] * 2),
        (Image.new("CMYK", (2, 1), (0, 0, 0, 0)), "RGB", 0, [(255, 255, 255)] * 2),
        (Image.new("CMYK", (2, 1), (0, 255, 255, 0)), "RGB", 0, [(255, 0, 0)] * 2),
        (Image.new("I;16", (2, 1), 65535), "L", 0, [(255,)] * 2),
        (Image.new("I;16", (2, 1), 32896), "RGB", 0, [(128, 128, 128)] * 2),
        (Image.new("I", (2, 1), 65535), "L", 0, [(255,)] * 2),
        (Image.new("I", (2, 1), 257 * 100), "L", 0, [(100,)] * 2),
        (Image.new("F", (2, 1), 1.0), "L", 0, [(255,)] * 2),
        (Image.new("F", (2, 1), 0.5), "L", 0, [(128,)] * 2),
        (Image.new("F", (2, 1), 200.0), "L", 0, [(200,)] * 2),
        (Image.new("1", (2, 1), 1), "L", 0, [(255,)] * 2),
        (Image.new("1", (2, 1), 0), "RGB", 0, [(0, 0, 0)] * 2),
    ],
    ids=lambda value: value.mode if isinstance(value, Image.Image) else None,
)
def test_to_mode_converts_every_mode(
    image: Image.Image, mode: str, background: int, expected: list[tuple[int, ...]]
) -> None:
    converted = to_mode(image, "L" if mode == "L" else "RGB", background)
    assert converted.mode == mode
    pixels = [_rgba_pixel(converted.crop((x, 0, x + 1, 1))) for x in range(2)]
    assert pixels == expected


def test_pa_mode_is_composited_on_the_background() -> None:
    image = _palette_image(transparent=False).convert("PA")
    alpha = Image.new("L", (2, 1), 0)
    alpha.putpixel((1, 0), 255)
    image.putalpha(alpha)
    assert image.mode == "PA"
    converted = to_mode(image, "RGB", background=255)
    assert [converted.getpixel((x, 0)) for x in range(2)] == [(255, 255, 255), (0, 0, 255)]


def test_an_image_already_in_the_mode_is_returned_as_is() -> None:
    image = Image.new("L", (3, 3), 7)
    assert to_mode(image, "L") is image


def test_prepare_resizes_to_the_model_input() -> None:
    pre = Preprocessing(mode="RGB", height=8, width=6, mean=(0.5,) * 3, std=(0.5,) * 3)
    tensor = pre.to_uint8(Image.new("LA", (40, 30), (90, 255)))
    assert tensor.shape == (3, 8, 6) and tensor.dtype == torch.uint8
    assert tensor.unique().tolist() == [90]
    normalized = pre(Image.new("L", (4, 4), 255))
    assert torch.allclose(normalized, torch.ones(3, 8, 6))


def test_preprocessing_round_trips_through_a_dict() -> None:
    pre = Preprocessing(mode="L", height=28, width=28, mean=(0.28,), std=(0.35,), background=0)
    assert Preprocessing.from_dict(pre.to_dict()) == pre


def test_normalize_is_the_documented_formula() -> None:
    pre = Preprocessing(mean=(0.25,), std=(0.5,))
    pixels = torch.tensor(np.array([[[0, 51, 255]]], dtype=np.uint8))
    expected = (torch.tensor([[[0.0, 0.2, 1.0]]]) - 0.25) / 0.5
    assert torch.allclose(pre.normalize(pixels), expected)


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_form_reads_the_corners_as_the_array_check_does(mode: str) -> None:
    """PhotoConversion.form reads four pixels; in_dataset_form (training) reads arrays."""
    conversion = PhotoConversion()
    rng = np.random.default_rng(7)
    channels = 1 if mode == "L" else 3
    levels = np.array([0, 5, 12, 13, 14, 40, 200], dtype=np.uint8)  # around 5% of 255
    for _ in range(300):
        pixels = rng.integers(0, 256, (28, 28, channels), dtype=np.uint8)
        for y, x in ((0, 0), (0, -1), (-1, 0), (-1, -1)):
            pixels[y, x] = rng.choice(levels, channels)
        image = Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode)
        expected = conversion.in_dataset_form(pixels.astype(np.float32))
        assert conversion.form(image, (28, 28)) == ("dataset" if expected else "photo")
