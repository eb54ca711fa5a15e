"""Property tests of service.imaging.decode_image on hostile and unusual input.

The one property: decoding any bytes either succeeds with the model's input shape or raises a
Problem with a documented status (413 too many pixels, 422 undecodable or too slow); no other
exception ever escapes. Valid unusual images (1xN, 16-bit, CMYK, palette with transparency,
animated, any EXIF orientation) must succeed.
"""

from __future__ import annotations

import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from models.transforms import Preprocessing
from service.errors import Problem
from service.imaging import decode_image
from tests.images import encode, gradient
from tests.reliability import hostile

GREY = Preprocessing(mode="L", height=28, width=28, mean=(0.5,), std=(0.5,), background=0)
COLOUR = Preprocessing(
    mode="RGB", height=16, width=16, mean=(0.5,) * 3, std=(0.25,) * 3, background=255
)
LIMIT = 1_000_000
SAMPLES = hostile.samples()
# Pillow warns about the corrupt files these tests feed it on purpose.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
PROPERTY = settings(
    max_examples=300,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def outcome(data: bytes, pre: Preprocessing = GREY, limit: int = LIMIT) -> int:
    """200 with a well-formed tensor, or the status of the documented Problem raised."""
    try:
        pixels = decode_image(data, pre, limit)
    except Problem as problem:
        assert problem.status in (413, 422), problem
        assert problem.detail
        return problem.status
    assert pixels.dtype == torch.uint8
    assert tuple(pixels.shape) == (len(pre.mean), pre.height, pre.width)
    return 200


@PROPERTY
@given(st.binary(max_size=2048))
def test_random_bytes(data: bytes) -> None:
    outcome(data)


MAGICS = [
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",
    b"GIF89a",
    b"GIF87a",
    b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    b"RIFF\x00\x00\x00\x00WEBPVP8X",
    b"II*\x00",
    b"MM\x00*",
    b"BM",
    b"\x00\x00\x01\x00",
    b"P6\n",
    b"P5\n",
]


@PROPERTY
@given(st.sampled_from(MAGICS), st.binary(max_size=1024))
def test_random_bytes_behind_a_real_magic_number(magic: bytes, tail: bytes) -> None:
    outcome(magic + tail)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_prefix_of_a_real_file(name: str) -> None:
    data = SAMPLES[name]
    assert outcome(data) == 200
    assert outcome(data, COLOUR) == 200
    statuses = {outcome(data[:length]) for length in range(len(data))}
    assert statuses <= {200, 422}


@PROPERTY
@given(
    st.sampled_from(sorted(SAMPLES)),
    st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=8),
)
def test_flipped_bytes_in_real_files(name: str, flips: list[tuple[int, int]]) -> None:
    data = bytearray(SAMPLES[name])
    for position, value in flips:
        data[position % len(data)] = value
    outcome(bytes(data))


@st.composite
def forged_sizes(draw: st.DrawFn) -> tuple[str, int, int]:
    fmt = draw(st.sampled_from(sorted(hostile.FORGERS)))
    top = hostile.FORGERS[fmt][2]
    side = st.one_of(st.sampled_from([0, 1, 2, top, top - 1]), st.integers(0, top))
    return fmt, draw(side), draw(side)


@PROPERTY
@given(forged_sizes())
def test_headers_claiming_any_size(forged: tuple[str, int, int]) -> None:
    fmt, width, height = forged
    make, forge, _ = hostile.FORGERS[fmt]
    status = outcome(forge(make(), width, height))
    if width * height > LIMIT:
        assert status in (413, 422)
    if width == 0 or height == 0:
        assert status == 422


def test_huge_and_empty_headers_get_their_status() -> None:
    for fmt, (make, forge, top) in hostile.FORGERS.items():
        assert outcome(forge(make(), 5000, 5000)) == 413, fmt
        assert outcome(forge(make(), top, top)) in (413, 422), fmt
        assert outcome(forge(make(), 0, 16)) == 422, fmt
        assert outcome(forge(make(), 16, 0)) == 422, fmt


WRITABLE = {
    "PNG": ("1", "L", "LA", "P", "RGB", "RGBA", "I;16"),
    "JPEG": ("L", "RGB", "CMYK"),
    "GIF": ("L", "P", "RGB"),
    "WEBP": ("RGB", "RGBA"),
    "TIFF": ("1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"),
    "BMP": ("1", "L", "P", "RGB"),
    "ICO": ("RGB", "RGBA"),
    "PPM": ("1", "L", "RGB", "I;16"),
    "TGA": ("L", "LA", "P", "RGB", "RGBA"),
}


@st.composite
def valid_images(draw: st.DrawFn) -> tuple[str, str, tuple[int, int]]:
    fmt = draw(st.sampled_from(sorted(WRITABLE)))
    mode = draw(st.sampled_from(WRITABLE[fmt]))
    biggest = 256 if fmt == "ICO" else 600
    side = st.one_of(st.just(1), st.integers(1, 64), st.integers(1, biggest))
    return fmt, mode, (draw(side), draw(side))


@PROPERTY
@given(valid_images())
def test_every_valid_image_decodes(image: tuple[str, str, tuple[int, int]]) -> None:
    fmt, mode, size = image
    data = encode(gradient(size, "L").convert(mode), fmt)
    assert outcome(data) == 200
    assert outcome(data, COLOUR) == 200


@pytest.mark.parametrize("side", [1, 2, 3, 1000])
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP", "TIFF", "BMP"])
def test_1xn_and_nx1(fmt: str, side: int) -> None:
    for size in ((1, side), (side, 1)):
        assert outcome(encode(gradient(size, "RGB"), fmt)) == 200, size


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP"])
def test_animated_files_use_their_first_frame(fmt: str) -> None:
    pixels = decode_image(hostile.animated(fmt), GREY, LIMIT)
    assert int(pixels.min()) >= 250  # the first frame is white, the others black


@pytest.mark.parametrize("orientation", [*range(1, 9), 0, 9, 255, 65535])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
def test_any_exif_orientation(fmt: str, orientation: int) -> None:
    assert outcome(hostile.with_orientation(fmt, orientation)) == 200


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency(fmt: str) -> None:
    assert outcome(hostile.palette_with_transparency(fmt)) == 200
    assert outcome(hostile.palette_with_transparency(fmt), COLOUR) == 200


def test_a_spinning_decoder_is_cut_off_within_its_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    data = hostile.spinning_jpeg()
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40_000_000)
    cpu, wall = time.thread_time(), time.monotonic()
    with pytest.raises(Problem) as caught:
        decode_image(data, GREY, 40_000_000, timeout_ms=300)
    cpu, wall = time.thread_time() - cpu, time.monotonic() - wall
    assert caught.value.status == 422
    assert caught.value.kind == "decode-timeout"
    # Unbounded, this file keeps libjpeg busy for minutes; the budget plus one 4 KiB read.
    assert cpu < 1.0, f"cut off after {cpu:.2f} s of CPU ({wall:.2f} s wall)"


def test_the_budget_does_not_cut_off_ordinary_images() -> None:
    data = encode(hostile.noise((2000, 1500)), "JPEG", quality=95, progressive=True)
    assert decode_image(data, GREY, 40_000_000, timeout_ms=2000).shape == (1, 28, 28)
