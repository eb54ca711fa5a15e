"""Tensors -> small PNG data URLs: feature maps scaled per map, heat maps in colour."""

from __future__ import annotations

import base64
import struct
import zlib
from dataclasses import dataclass

import numpy as np
import torch

_DATA_URL_PREFIX = "data:image/png;base64,"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# zlib level 1: on maps this small it packs almost as tight as the default level, much faster.
_ZLIB_LEVEL = 1
# Weight of the heat colour over the input in the Grad-CAM overlay.
_OVERLAY_ALPHA = 0.55


@dataclass(frozen=True)
class Picture:
    """One map as a PNG data URL and the value range its 0-255 grey levels stand for."""

    image: str
    low: float
    high: float


def png_bytes(pixels: np.ndarray) -> bytes:
    """A uint8 (H, W) grey or (H, W, 3) colour array as an 8-bit PNG file.

    Written directly (one IDAT chunk, no row filters) rather than through Pillow, whose
    per-image overhead dominates at these sizes: an explain encodes a few hundred maps.
    """
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3):
        raise ValueError(f"expected uint8 (H, W) or (H, W, 3), got {pixels.dtype} {pixels.shape}")
    height, width = pixels.shape[:2]
    colour_type = 0 if pixels.ndim == 2 else 2
    rows = pixels.reshape(height, -1)
    raw = np.zeros((height, rows.shape[1] + 1), dtype=np.uint8)  # column 0: filter "none"
    raw[:, 1:] = rows
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return (
        _PNG_SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw.tobytes(), _ZLIB_LEVEL))
        + _chunk(b"IEND", b"")
    )


def png_data_url(pixels: np.ndarray) -> str:
    """A uint8 (H, W) grey or (H, W, 3) colour array as a `data:image/png;base64,` URL."""
    return _DATA_URL_PREFIX + base64.b64encode(png_bytes(pixels)).decode("ascii")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def scaled_maps(maps: torch.Tensor) -> list[Picture]:
    """Each (H, W) map of a (C, H, W) tensor min-max scaled to 0-255 on its own.

    A flat map (a dead channel) comes out black, with equal low and high.
    """
    grey, low, high = _scaled(maps)
    return [Picture(png_data_url(grey[c]), low[c], high[c]) for c in range(len(grey))]


def scaled_kernels(kernels: torch.Tensor) -> list[Picture]:
    """Each (in, kh, kw) kernel of an (out, in, kh, kw) conv weight as one picture, scaled on
    its own: grey for one input channel, colour (red, green, blue) for three."""
    grey, low, high = _scaled(kernels)
    pictures = grey[:, 0] if grey.shape[1] == 1 else grey[:, :3].transpose(0, 2, 3, 1)
    return [Picture(png_data_url(pictures[k]), low[k], high[k]) for k in range(len(grey))]


def _scaled(stack: torch.Tensor) -> tuple[np.ndarray, list[float], list[float]]:
    """Each item of `stack` (first dimension) min-max scaled to uint8 0-255, and the ranges."""
    flat = stack.detach().float().flatten(1)
    low = flat.min(dim=1).values
    high = flat.max(dim=1).values
    span = (high - low).clamp_min(torch.finfo(torch.float32).tiny)
    grey = ((flat - low[:, None]) / span[:, None] * 255.0).round().clamp(0, 255)
    return grey.to(torch.uint8).view(stack.shape).numpy(), low.tolist(), high.tolist()


def heat_colours(heat: torch.Tensor) -> np.ndarray:
    """(H, W) values in 0-1 -> uint8 (H, W, 3): black through red and yellow to white."""
    t = heat.detach().float().clamp(0, 1)
    rgb = torch.stack([(3 * t).clamp(0, 1), (3 * t - 1).clamp(0, 1), (3 * t - 2).clamp(0, 1)], -1)
    return (rgb * 255).round().to(torch.uint8).numpy()


def heat_overlay(heat: torch.Tensor, pixels: torch.Tensor) -> np.ndarray:
    """The heat colours laid over uint8 (C, H, W) input pixels, as a uint8 (H, W, 3) array."""
    base = pixels.detach().to(torch.float32)
    base = base.expand(3, -1, -1) if base.shape[0] == 1 else base[:3]
    colours = torch.from_numpy(heat_colours(heat)).float()
    mixed = (1 - _OVERLAY_ALPHA) * base.permute(1, 2, 0) + _OVERLAY_ALPHA * colours
    return mixed.round().clamp(0, 255).to(torch.uint8).numpy()


def input_picture(pixels: torch.Tensor) -> str:
    """uint8 (C, H, W) model input pixels (after resizing, before normalisation) as a data URL."""
    array = pixels[0].numpy() if pixels.shape[0] == 1 else pixels.permute(1, 2, 0).numpy()
    return png_data_url(array)
