"""service.imaging: every mode, orientation and animation handled; every failure a 413 or 422."""

from __future__ import annotations

import io
import time
from typing import Any

import numpy as np
import PIL
import pytest
import torch
from PIL import AvifImagePlugin, Image, ImageCms, features

from models.transforms import Preprocessing
from service.errors import Problem
from service.imaging import configure_decoders, decode_image
from tests.images import encode, gradient, png

GREY = Preprocessing(mode="L", height=28, width=28, mean=(0.5,), std=(0.5,), background=0)
COLOUR = Preprocessing(
    mode="RGB", height=16, width=16, mean=(0.5,) * 3, std=(0.25,) * 3, background=255
)
LIMIT = 1_000_000


def decode(data: bytes, pre: Preprocessing = GREY) -> torch.Tensor:
    return decode_image(data, pre, LIMIT)


def flat(mode: str, value: object, size: tuple[int, int] = (28, 28)) -> Image.Image:
    return Image.new(mode, size, value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("image", "fmt", "expected"),
    [
        (flat("L", 200), "PNG", 200),
        (flat("1", 1), "PNG", 255),
        (flat("I;16", 65535), "PNG", 255),
        (flat("I;16", 32896), "TIFF", 128),
        (flat("I", 65535), "TIFF", 255),
        (flat("F", 1.0), "TIFF", 255),
        (flat("F", 0.5), "TIFF", 128),
        (flat("RGB", (200, 200, 200)), "PNG", 200),
        (flat("CMYK", (0, 0, 0, 0)), "TIFF", 255),
        (flat("CMYK", (0, 0, 0, 255)), "JPEG", 0),
        (flat("RGBA", (255, 255, 255, 0)), "PNG", 0),
        (flat("RGBA", (255, 255, 255, 255)), "PNG", 255),
        (flat("LA", (255, 0)), "PNG", 0),
        (flat("LA", (90, 255)), "PNG", 90),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_modes_convert_to_the_expected_grey(image: Image.Image, fmt: str, expected: int) -> None:
    pixels = decode(encode(image, fmt))
    assert pixels.dtype == torch.uint8 and pixels.shape == (1, 28, 28)
    assert abs(int(pixels.float().mean().round()) - expected) <= 2


def test_palette_with_transparency_is_composited() -> None:
    image = Image.new("P", (28, 28), 0)
    image.putpalette([255, 255, 255, 0, 0, 0] + [0] * 762)
    image.info["transparency"] = 0
    pixels = decode(encode(image, "PNG", transparency=0))
    assert int(pixels.max()) == 0  # transparent white over the black background


def test_palette_alpha_composites_on_the_colour_background() -> None:
    # No file format stores PA, but Pillow produces it in memory; the transform must cope.
    pa = flat("RGBA", (0, 0, 0, 0), (16, 16)).convert("PA")
    pixels = COLOUR.to_uint8(pa)
    assert pixels.shape == (3, 16, 16)
    assert int(pixels.min()) == 255


def test_16_bit_png_keeps_its_range() -> None:
    ramp = np.linspace(0, 65535, 28 * 28).reshape(28, 28).astype(np.uint16)
    pixels = decode(encode(Image.fromarray(ramp), "PNG"))
    assert int(pixels.min()) == 0 and int(pixels.max()) >= 250


def test_rgb_model_gets_three_channels_from_grey() -> None:
    pixels = decode(png((40, 30)), COLOUR)
    assert pixels.shape == (3, 16, 16)
    assert torch.equal(pixels[0], pixels[1]) and torch.equal(pixels[1], pixels[2])


def oriented(orientation: int, fmt: str, **params: Any) -> bytes:
    """A bright top-left quadrant stored so that EXIF `orientation` must be undone to see it."""
    upright = np.zeros((32, 48, 3), dtype=np.uint8)
    upright[:16, :24] = 255
    stored = Image.fromarray(upright)
    undo = {
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_90,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_270,
    }
    if orientation in undo:
        stored = stored.transpose(undo[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(stored, fmt, exif=exif, **params)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["JPEG", "AVIF"])
def test_exif_orientation_is_applied(orientation: int, fmt: str) -> None:
    pixels = decode(oriented(orientation, fmt, quality=95))[0].float()
    assert pixels[:14, :14].mean() > 200, f"{fmt} orientation {orientation} not applied"
    assert pixels[14:, 14:].mean() < 50


def test_animated_gif_uses_the_first_frame() -> None:
    frames = [flat("L", 255), flat("L", 0), flat("L", 0)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=50)
    assert int(decode(buffer.getvalue()).float().mean()) == 255


@pytest.mark.parametrize(
    "fmt", ["PNG", "JPEG", "GIF", "WEBP", "AVIF", "BMP", "TIFF", "ICO", "PPM", "TGA"]
)
def test_every_allowed_format_decodes(fmt: str) -> None:
    image = gradient((28, 28), "RGB" if fmt == "JPEG" else "L")
    assert decode(encode(image, fmt)).shape == (1, 28, 28)


def test_jpeg_draft_decoding_matches_full_decoding_closely() -> None:
    big = gradient((640, 480), "RGB")
    reduced = decode(encode(big, "JPEG", quality=95)).float()
    full = GREY.to_uint8(Image.open(io.BytesIO(encode(big, "JPEG", quality=95)))).float()
    assert (reduced - full).abs().mean() < 3


def test_1xn_and_nx1_images_decode() -> None:
    assert decode(png((1, 300))).shape == (1, 28, 28)
    assert decode(png((300, 1))).shape == (1, 28, 28)


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"", 422),
        (b"\x00" * 100, 422),
        (b"not an image at all", 422),
        (png((64, 64))[:70], 422),
        (encode(gradient((64, 64), "RGB"), "JPEG")[:200], 422),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", 422),
        (png((1001, 1000), value=0), 413),
    ],
    ids=["empty", "zeros", "text", "truncated-png", "truncated-jpeg", "eps", "too-many-pixels"],
)
def test_failures_are_problems(data: bytes, status: int) -> None:
    with pytest.raises(Problem) as caught:
        decode(data)
    assert caught.value.status == status


def test_decompression_bomb_is_refused_before_decoding() -> None:
    header_only = png((2000, 2000), value=0)
    with pytest.raises(Problem) as caught:
        decode_image(header_only, GREY, max_pixels=100)
    assert caught.value.status == 413
    assert "2000x2000" in caught.value.detail


def test_avif_with_an_icc_profile_matches_the_png() -> None:
    image = gradient((64, 48), "RGB")
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    from_avif = decode(encode(image, "AVIF", quality=95, icc_profile=srgb)).float()
    from_png = decode(encode(image, "PNG")).float()
    assert (from_avif - from_png).abs().mean() < 3


def test_avif_over_the_pixel_limit_is_refused_before_decoding() -> None:
    big = encode(Image.new("RGB", (1200, 900), (90, 90, 90)), "AVIF", quality=30)
    with pytest.raises(Problem) as caught:
        decode(big)
    assert caught.value.status == 413 and "1200x900" in caught.value.detail


def test_configure_decoders_keeps_libavif_on_the_calling_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A fence around Pillow's AVIF plugin: the module global it reads must still exist.
    assert features.check("avif"), "this Pillow build cannot decode AVIF"
    assert hasattr(AvifImagePlugin, "DEFAULT_MAX_THREADS"), (
        f"Pillow {PIL.__version__} no longer has AvifImagePlugin.DEFAULT_MAX_THREADS"
    )
    # Process-wide settings: restored after the test.
    monkeypatch.setattr(AvifImagePlugin, "DEFAULT_MAX_THREADS", 0)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    configure_decoders(LIMIT)
    assert AvifImagePlugin.DEFAULT_MAX_THREADS == 1


def test_an_avif_decode_over_the_cpu_budget_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # libavif reads the whole file when the image is opened, then decodes in one call that
    # reads nothing: the budget must still turn an over-budget decode into a 422.
    monkeypatch.setattr(AvifImagePlugin, "DEFAULT_MAX_THREADS", 1)
    noise = np.random.default_rng(0).integers(0, 256, (1500, 1500, 3), dtype=np.uint8)
    photo = encode(Image.fromarray(noise), "AVIF", quality=70, speed=10)
    started = time.thread_time()
    decode_image(photo, GREY, 10_000_000)
    needed_ms = (time.thread_time() - started) * 1000
    assert needed_ms > 20, f"the decode took only {needed_ms:.1f} ms of CPU; use a larger image"
    with pytest.raises(Problem) as caught:
        decode_image(photo, GREY, 10_000_000, timeout_ms=needed_ms / 4)
    assert caught.value.status == 422 and caught.value.kind == "decode-timeout"
