"""THE preprocessing: the one path from a PIL image to a normalized tensor, training and serving.

Its parameters live in the checkpoint, so serving never guesses how training saw the pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

Mode = Literal["L", "RGB"]

_RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_HIGH_DEPTH_MODES = {"I", "F", "I;16", "I;16L", "I;16B", "I;16N"}


@dataclass(frozen=True)
class Preprocessing:
    """mode -> resize to (height, width) -> 0-1 -> (x - mean) / std, one mean/std per channel.

    `background` (0-255 grey level) is what transparent pixels are composited onto: it should
    match what the training images have behind their objects (black for Fashion-MNIST).
    """

    mode: Mode = "L"
    height: int = 28
    width: int = 28
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    resample: str = "bilinear"
    background: int = 255

    def __post_init__(self) -> None:
        channels = self.channels
        if self.mode not in ("L", "RGB"):
            raise ValueError(f"mode must be 'L' or 'RGB', got {self.mode!r}")
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(f"mode {self.mode} needs {channels} mean and std values")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std values must be positive, got {self.std}")
        if self.resample not in _RESAMPLING:
            raise ValueError(f"resample must be one of {sorted(_RESAMPLING)}")
        if self.height <= 0 or self.width <= 0 or not 0 <= self.background <= 255:
            raise ValueError("height and width must be positive and background within 0-255")

    @property
    def channels(self) -> int:
        """1 for L, 3 for RGB."""
        return 1 if self.mode == "L" else 3

    def to_dict(self) -> dict[str, Any]:
        """Plain types only, so the checkpoint loads with weights_only=True."""
        return {
            "mode": self.mode,
            "height": self.height,
            "width": self.width,
            "mean": list(self.mean),
            "std": list(self.std),
            "resample": self.resample,
            "background": self.background,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        """Inverse of to_dict."""
        values = dict(data)
        values["mean"] = tuple(float(v) for v in values["mean"])
        values["std"] = tuple(float(v) for v in values["std"])
        return cls(**values)

    def prepare(self, image: Image.Image) -> Image.Image:
        """Any PIL mode and size -> this mode at (height, width)."""
        image = to_mode(image, self.mode, self.background)
        if image.size != (self.width, self.height):
            image = image.resize((self.width, self.height), _RESAMPLING[self.resample])
        return image

    def to_uint8(self, image: Image.Image) -> torch.Tensor:
        """Any PIL image -> (C, H, W) uint8 tensor, before normalization."""
        array = np.asarray(self.prepare(image), dtype=np.uint8)
        tensor = torch.from_numpy(array.copy())
        return tensor.unsqueeze(0) if self.mode == "L" else tensor.permute(2, 0, 1).contiguous()

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (..., C, H, W) in 0-255 -> float32 (x / 255 - mean) / std."""
        shape = (-1, 1, 1)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(shape)
        std = torch.tensor(self.std, dtype=torch.float32).view(shape)
        return (pixels.to(torch.float32).div_(255.0) - mean).div_(std)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """Any PIL image -> (C, H, W) float32 normalized tensor."""
        return self.normalize(self.to_uint8(image))


def to_mode(image: Image.Image, mode: Mode, background: int = 255) -> Image.Image:
    """Converts every PIL mode to L or RGB without surprises.

    High-bit-depth greyscale (I;16, I, F) is scaled to 8 bits instead of clipped, transparency
    (RGBA, LA, PA, palette with a transparent index) is composited onto `background`, and
    CMYK/YCbCr/LAB/HSV go through RGB.
    """
    if image.mode == mode:
        return image
    if image.mode in _HIGH_DEPTH_MODES:
        image = _high_depth_to_l(image)
    elif image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif image.mode == "1":
        image = image.convert("L")
    if image.mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (background, background, background, 255))
        image = Image.alpha_composite(canvas, rgba).convert("RGB")
    return image if image.mode == mode else image.convert(mode)


def _high_depth_to_l(image: Image.Image) -> Image.Image:
    """16/32-bit integer images are read as 16-bit data; float images as 0-1 when they fit."""
    array = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        peak = float(array.max()) if array.size else 0.0
        scale = 255.0 if peak <= 1.0 else 1.0
    else:
        scale = 255.0 / 65535.0
    scaled = np.clip(np.rint(array * scale), 0, 255).astype(np.uint8)
    return Image.fromarray(scaled, mode="L")


def compute_mean_std(
    pixels: Sequence[torch.Tensor] | torch.Tensor,
) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 (N, C, H, W) pixels, in the 0-1 scale."""
    stacked = pixels if isinstance(pixels, torch.Tensor) else torch.stack(list(pixels))
    values = stacked.to(torch.float64).div(255.0).transpose(0, 1).reshape(stacked.shape[1], -1)
    return values.mean(dim=1).tolist(), values.std(dim=1).clamp_min(1e-6).tolist()
