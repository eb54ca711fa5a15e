"""Untrusted bytes -> validated image -> uint8 tensor, through models.transforms.

Cheap checks come first: the pixel count is read from the header before anything is decoded,
and only a fixed list of raster formats is ever handed to a decoder. Decoding then runs under a
CPU-time budget per image, so a file crafted to make a decoder spin (a progressive JPEG with
thousands of scans costs minutes for a few hundred kilobytes) is cut off with a 422.
"""

from __future__ import annotations

import io
import logging
import time
import warnings

import torch
from PIL import AvifImagePlugin, Image, ImageFile, ImageOps, UnidentifiedImageError

from models.transforms import Form, Preprocessing
from service.errors import Problem

log = logging.getLogger("convserve.imaging")

# Raster formats with magic numbers or well-bounded decoders. Vector and scriptable formats
# (EPS would run Ghostscript) are never opened.
ALLOWED_FORMATS = (
    "PNG",
    "JPEG",
    "GIF",
    "WEBP",
    "AVIF",
    "BMP",
    "DIB",
    "TIFF",
    "ICO",
    "PPM",
    "TGA",
)

# Bytes handed to a decoder between two checks of the time budget. With Pillow's default
# (64 KiB) one read of a malicious progressive JPEG runs for seconds at the default pixel limit;
# 4 KiB bounds that overrun to a few hundred milliseconds and costs at most a few per cent of
# CPU on large baseline JPEGs (nothing measurable on PNG, progressive JPEG or small files).
DECODE_READ_BLOCK = 4 * 1024
DEFAULT_DECODE_TIMEOUT_MS = 2000.0


class DecodeTimeout(Exception):
    """The image used up its CPU-time budget while being decoded."""


class _BudgetedBytes(io.BytesIO):
    """The upload as a file whose read() refuses to go on once the decode budget is spent.

    Pillow's decoders pull their input through read() in blocks, so a decoder that spins is
    stopped at its next read. The budget is this thread's CPU time, not the wall clock: a busy
    server never cuts off an ordinary image because other threads had the cores.
    """

    def __init__(self, data: bytes, budget_s: float) -> None:
        super().__init__(data)
        self.deadline = time.thread_time() + budget_s

    def read(self, size: int | None = -1, /) -> bytes:
        if time.thread_time() > self.deadline:
            raise DecodeTimeout
        return super().read(size)


def configure_decoders(max_pixels: int) -> None:
    """Sets Pillow's process-wide decoder settings for serving (called once by create_app).

    Pillow's own decompression-bomb guard follows `max_pixels`; its warning for images just
    over the limit is noise, since decode_image refuses them with 413. libavif decodes on one
    thread, the calling one, as every other decoder does: by default it starts a thread per
    core in every request thread, and its CPU time would escape the per-image budget.
    """
    Image.MAX_IMAGE_PIXELS = max_pixels
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    AvifImagePlugin.DEFAULT_MAX_THREADS = 1


def decode_image(
    data: bytes,
    preprocessing: Preprocessing,
    max_pixels: int,
    timeout_ms: float = DEFAULT_DECODE_TIMEOUT_MS,
) -> torch.Tensor:
    """Decodes one uploaded file into the model's uint8 (C, H, W) input (see decode_upload)."""
    return decode_upload(data, preprocessing, max_pixels, timeout_ms)[0]


def decode_upload(
    data: bytes,
    preprocessing: Preprocessing,
    max_pixels: int,
    timeout_ms: float = DEFAULT_DECODE_TIMEOUT_MS,
) -> tuple[torch.Tensor, Form]:
    """Decodes one uploaded file into the model's uint8 (C, H, W) input and says which form
    it came in: 'photo' when the checkpoint's photo conversion ran, 'dataset' otherwise.

    The first frame of an animation is used and JPEG/TIFF EXIF orientation is applied.
    Raises Problem 413 when the image has more than `max_pixels` pixels and Problem 422 when
    no allowed decoder can read the bytes or decoding needs more than `timeout_ms` of CPU time;
    never lets a decoder's own exception escape.
    """
    if not data:
        raise Problem(422, "undecodable-image", "An image part is empty.")
    source = _BudgetedBytes(data, timeout_ms / 1000.0)
    opened = _open(source, max_pixels, timeout_ms)
    stored_size = opened.size
    try:
        opened.decodermaxblock = DECODE_READ_BLOCK
        if opened.format in ("JPEG", "MPO"):  # MPO: multi-picture JPEG
            side = preprocessing.decode_side
            opened.draft(None, (side, side))
        opened.load()
        # A decoder that does its work in one call (AVIF decodes the whole frame in libavif)
        # reads nothing while it runs, so the budget is checked once more after it returns.
        if time.thread_time() > source.deadline:
            raise DecodeTimeout
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _too_many_pixels(opened.size, max_pixels) from exc
    except DecodeTimeout as exc:
        raise _timed_out(opened.format, stored_size, timeout_ms) from exc
    except Exception as exc:
        raise Problem(
            422, "undecodable-image", f"The {opened.format} image could not be decoded."
        ) from exc
    _check_pixels(opened.size, max_pixels)  # again: a frame chosen at load (ICO, TIFF)
    image = _apply_orientation(opened)
    try:
        return preprocessing.to_uint8_with_form(image)
    except Exception as exc:
        raise Problem(
            422, "undecodable-image", f"Images of mode {image.mode} cannot be converted."
        ) from exc


def _open(source: _BudgetedBytes, max_pixels: int, timeout_ms: float) -> ImageFile.ImageFile:
    try:
        image = Image.open(source, formats=ALLOWED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise Problem(
            413, "image-too-large", f"The image has more than {max_pixels:,} pixels."
        ) from exc
    except DecodeTimeout as exc:
        raise _timed_out(None, None, timeout_ms) from exc
    except UnidentifiedImageError as exc:
        raise Problem(
            422,
            "undecodable-image",
            f"The bytes are not an image in a supported format ({', '.join(ALLOWED_FORMATS)}).",
        ) from exc
    except Exception as exc:
        raise Problem(422, "undecodable-image", "The image header could not be read.") from exc
    width, height = image.size
    if width <= 0 or height <= 0:
        raise Problem(422, "undecodable-image", f"The image is {width}x{height} pixels.")
    _check_pixels(image.size, max_pixels)
    return image


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    """Raises Problem 413 when an image of `size` has more than `max_pixels` pixels."""
    if size[0] * size[1] > max_pixels:
        raise _too_many_pixels(size, max_pixels)


def _too_many_pixels(size: tuple[int, int], max_pixels: int) -> Problem:
    return Problem(
        413,
        "image-too-large",
        f"The image is {size[0]}x{size[1]} pixels; at most {max_pixels:,} pixels are accepted.",
    )


def _timed_out(fmt: str | None, size: tuple[int, int] | None, timeout_ms: float) -> Problem:
    what = f"{fmt} {size[0]}x{size[1]}" if fmt and size else "header"
    log.warning("image decode cut off after %.0f ms of CPU time (%s)", timeout_ms, what)
    return Problem(
        422,
        "decode-timeout",
        f"Decoding the image needed more than {timeout_ms:.0f} ms of CPU time; it was abandoned.",
    )


def _apply_orientation(image: Image.Image) -> Image.Image:
    """EXIF orientation 2-8 applied; an unreadable EXIF block leaves the image as stored.

    In place: the copy exif_transpose returns otherwise is a whole extra image per request.
    """
    try:
        ImageOps.exif_transpose(image, in_place=True)
    except Exception:
        log.debug("ignoring unreadable EXIF orientation", exc_info=True)
    return image
