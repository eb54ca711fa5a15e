"""Builds test images in memory, in any mode and format Pillow writes."""

from __future__ import annotations

import io
from typing import Any

from PIL import Image


def encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    """The file bytes of `image` saved as `fmt`."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def gradient(size: tuple[int, int] = (28, 28), mode: str = "L") -> Image.Image:
    """A left-to-right grey ramp (distinct per column), converted to `mode`."""
    width, height = size
    ramp = Image.linear_gradient("L").rotate(90).resize((width, height))
    return ramp.convert(mode)


def png(size: tuple[int, int] = (28, 28), mode: str = "L", value: int | None = None) -> bytes:
    """A PNG: a flat image of grey level `value`, or a gradient when `value` is None."""
    image = gradient(size, mode) if value is None else Image.new(mode, size, value)
    return encode(image, "PNG")
