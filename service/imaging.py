"""Untrusted bytes -> validated image -> uint8 tensor, through models.transforms.

Cheap checks come first: the pixel count is read from the header before anything is decoded,
and only a fixed list of raster formats is ever handed to a decoder.
"""

from __future__ import annotations

import io
import logging
import warnings

import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from models.transforms import Preprocessing
from service.errors import Problem

log = logging.getLogger("convserve.imaging")

# Raster formats with magic numbers or well-bounded decoders. Vector and scriptable formats
# (EPS would run Ghostscript) are never opened.
ALLOWED_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "DIB", "TIFF", "ICO", "PPM", "TGA")


def decode_image(data: bytes, preprocessing: Preprocessing, max_pixels: int) -> torch.Tensor:
    """Decodes one uploaded file into the model's uint8 (C, H, W) input.

    The first frame of an animation is used and JPEG/TIFF EXIF orientation is applied.
    Raises Problem 413 when the image has more than `max_pixels` pixels and Problem 422 when
    no allowed decoder can read the bytes; never lets a decoder's own exception escape.
    """
    if not data:
        raise Problem(422, "undecodable-image", "An image part is empty.")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = _open(data, max_pixels)
        try:
            if image.format in ("JPEG", "MPO"):  # MPO: multi-picture JPEG
                side = max(preprocessing.width, preprocessing.height)
                image.draft(None, (side, side))
            image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _too_many_pixels(image.size, max_pixels) from exc
        except Exception as exc:
            raise Problem(
                422, "undecodable-image", f"The {image.format} image could not be decoded."
            ) from exc
    image = _apply_orientation(image)
    try:
        return preprocessing.to_uint8(image)
    except Exception as exc:
        raise Problem(
            422, "undecodable-image", f"Images of mode {image.mode} cannot be converted."
        ) from exc


def _open(data: bytes, max_pixels: int) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise Problem(
            413, "image-too-large", f"The image has more than {max_pixels:,} pixels."
        ) from exc
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
    if width * height > max_pixels:
        raise _too_many_pixels(image.size, max_pixels)
    return image


def _too_many_pixels(size: tuple[int, int], max_pixels: int) -> Problem:
    return Problem(
        413,
        "image-too-large",
        f"The image is {size[0]}x{size[1]} pixels; at most {max_pixels:,} pixels are accepted.",
    )


def _apply_orientation(image: Image.Image) -> Image.Image:
    """EXIF orientation 2-8 applied; an unreadable EXIF block leaves the image as stored."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:
        log.debug("ignoring unreadable EXIF orientation", exc_info=True)
        return image
