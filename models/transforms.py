"""THE preprocessing: the one path from a PIL image to a normalized tensor, training and serving.

Its parameters live in the checkpoint, so serving never guesses how training saw the pixels.
An optional first step, `PhotoConversion`, brings a product photo into the dataset's own form
the way Fashion-MNIST's authors made the dataset from photos (Xiao, Rasul and Vollgraf 2017,
section 2); images already in that form pass through untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

Mode = Literal["L", "RGB"]
Form = Literal["dataset", "photo"]

_RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_HIGH_DEPTH_MODES = {"I", "F", "I;16", "I;16L", "I;16B", "I;16N"}


@dataclass(frozen=True)
class PhotoConversion:
    """The dataset's own conversion of a product photo: trim, fit, centre, negate.

    1. The background is the median colour of the four corner pixels.
    2. Trim: rows and columns whose every pixel is within `tolerance` (a share of the maximum
       intensity) of the background are cut from the edges.
    3. Negate when the background is light, so the object is bright on black as in the dataset;
       on a dark background only the background level is subtracted.
    4. Fit: the object's long edge is resized to `extent` of the input's size (Fashion-MNIST
       fills it; MNIST digits fill 20 of 28 pixels), keeping the aspect ratio.
    5. Centre it on a black canvas of the input's size and stretch it so its brightest pixel is
       white, as in the dataset.

    An image that already has the input's size and a dark corner background is in dataset form
    and passes through untouched. Larger photos are first reduced to `work_scale` times the
    input's long side, which bounds the cost of the steps above.
    """

    tolerance: float = 0.05
    extent: float = 1.0
    work_scale: int = 8
    name: str = "product-photo"

    def __post_init__(self) -> None:
        if not 0.0 < self.tolerance < 1.0 or not 0.0 < self.extent <= 1.0 or self.work_scale < 1:
            raise ValueError("0 < tolerance < 1, 0 < extent <= 1 and work_scale >= 1 are required")

    def to_dict(self) -> dict[str, Any]:
        """Plain types only, so the checkpoint loads with weights_only=True."""
        return {
            "name": self.name,
            "tolerance": self.tolerance,
            "extent": self.extent,
            "work_scale": self.work_scale,
        }

    def describe(self) -> dict[str, Any]:
        """to_dict, with the steps in words and when they run (for /v1/model)."""
        percent = f"{self.tolerance:.0%}"
        return {
            **self.to_dict(),
            "applies_to": "images not already in dataset form (the model's input size with a "
            f"dark corner background, within {percent} of black)",
            "steps": [
                "background: the median colour of the four corner pixels",
                f"trim the edges within {percent} of the maximum intensity of the background",
                "negate when the background is light, else subtract the background level",
                f"fit the long edge to {self.extent:.0%} of the input, keeping the aspect ratio",
                "centre on a black canvas of the input's size, brightest pixel stretched to 255",
            ],
        }

    def form(self, image: Image.Image, size: tuple[int, int]) -> Form:
        """'dataset' when `image` (L or RGB) already has `size` (width, height) and a dark
        corner background; 'photo' otherwise."""
        if image.size != size:
            return "photo"
        # The four corners read one by one: the whole image as an array costs far more.
        right, bottom = size[0] - 1, size[1] - 1
        corners = [image.getpixel(xy) for xy in ((0, 0), (right, 0), (0, bottom), (right, bottom))]
        channels = zip(*corners, strict=True) if isinstance(corners[0], tuple) else [corners]
        dark = max(_median_of_four(channel) for channel in channels) <= self.tolerance * 255.0
        return "dataset" if dark else "photo"

    def in_dataset_form(self, pixels: np.ndarray) -> np.ndarray:
        """For (..., H, W, C) pixels of the input's size: whether the corner background is
        dark, i.e. whether the conversion leaves the image as it is."""
        background = _corner_background(pixels)
        dark: np.ndarray = background.max(axis=-1) <= self.tolerance * 255.0
        return dark

    def apply(self, image: Image.Image, size: tuple[int, int], resample: str) -> Image.Image:
        """Steps 1-5 on an L or RGB photo; the result has `size` (width, height)."""
        side = self.work_scale * max(size)
        if max(image.size) > side:
            image = image.copy()
            image.thumbnail((side, side), Image.Resampling.BILINEAR, reducing_gap=2.0)
        pixels = _array(image)
        background = _corner_background(pixels)
        foreground = np.abs(pixels - background).max(axis=-1) > self.tolerance * 255.0
        rows, cols = np.flatnonzero(foreground.any(axis=1)), np.flatnonzero(foreground.any(axis=0))
        if rows.size and cols.size:
            pixels = pixels[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        light = float(np.mean(background)) > 127.5
        contrast = np.clip(background - pixels if light else pixels - background, 0.0, 255.0)
        obj = _image(contrast, image.mode)
        width, height = size
        scale = self.extent * min(width / obj.width, height / obj.height)
        fitted = (max(1, round(obj.width * scale)), max(1, round(obj.height * scale)))
        obj = obj.resize(fitted, _RESAMPLING[resample])
        canvas = Image.new(image.mode, size)
        # An odd leftover pixel goes before the object, as in Fashion-MNIST.
        canvas.paste(obj, ((width - fitted[0] + 1) // 2, (height - fitted[1] + 1) // 2))
        result = _array(canvas)
        peak = float(result.max())
        return _image(result * (255.0 / peak), image.mode) if peak > 0 else canvas

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PhotoConversion:
        """Inverse of to_dict."""
        return cls(**data)


@dataclass(frozen=True)
class Preprocessing:
    """(photo conversion) -> mode -> resize to (height, width) -> 0-1 -> (x - mean) / std.

    `background` (0-255 grey level) is what transparent pixels are composited onto: it should
    match what the training images have behind their objects (black for Fashion-MNIST).
    `photo`, when set, brings product photos into the dataset's form first (PhotoConversion).
    """

    mode: Mode = "L"
    height: int = 28
    width: int = 28
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    resample: str = "bilinear"
    background: int = 255
    photo: PhotoConversion | None = None

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

    @property
    def decode_side(self) -> int:
        """The smallest long side a decoder may reduce an image to before preprocessing."""
        side = max(self.width, self.height)
        return side * self.photo.work_scale if self.photo else side

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
            "photo": self.photo.to_dict() if self.photo else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        """Inverse of to_dict; a checkpoint without `photo` has no photo conversion."""
        values = dict(data)
        values["mean"] = tuple(float(v) for v in values["mean"])
        values["std"] = tuple(float(v) for v in values["std"])
        photo = values.get("photo")
        values["photo"] = PhotoConversion.from_dict(photo) if photo else None
        return cls(**values)

    def describe(self) -> dict[str, Any]:
        """The steps an uploaded image goes through, in order, and the photo conversion."""
        steps = [
            f"convert to {self.mode} (transparency composited onto grey level {self.background})",
            f"resize to {self.height}x{self.width} ({self.resample})",
            "scale to 0-1, then subtract mean and divide by std per channel",
        ]
        if self.photo:
            steps[1:1] = [f"photo conversion '{self.photo.name}' unless in dataset form"]
        return {"steps": steps, "photo_conversion": self.photo.describe() if self.photo else None}

    def prepare(self, image: Image.Image) -> tuple[Image.Image, Form]:
        """Any PIL mode and size -> this mode at (height, width), and which form it came in."""
        image = to_mode(image, self.mode, self.background)
        size = (self.width, self.height)
        form: Form = self.photo.form(image, size) if self.photo else "dataset"
        if self.photo and form == "photo":
            return self.photo.apply(image, size, self.resample), form
        if image.size != size:
            image = image.resize(size, _RESAMPLING[self.resample])
        return image, form

    def to_uint8(self, image: Image.Image) -> torch.Tensor:
        """Any PIL image -> (C, H, W) uint8 tensor, before normalization."""
        return self.to_uint8_with_form(image)[0]

    def to_uint8_with_form(self, image: Image.Image) -> tuple[torch.Tensor, Form]:
        """to_uint8, and whether the image came in dataset or photo form."""
        prepared, form = self.prepare(image)
        tensor = torch.from_numpy(np.asarray(prepared, dtype=np.uint8).copy())
        pixels = tensor.unsqueeze(0) if self.mode == "L" else tensor.permute(2, 0, 1).contiguous()
        return pixels, form

    def as_served(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) images of the input's size as serving turns them into tensors.

        Images in dataset form stay as they are; the few others (a light corner, say) are
        converted like an uploaded photo, so that training sees what serving would.
        """
        if self.photo is None or len(pixels) == 0:
            return pixels
        corners = pixels[:, :, [[0, 0], [-1, -1]], [[0, -1], [0, -1]]].permute(0, 2, 3, 1)
        converted = pixels.clone()
        for index in np.flatnonzero(~self.photo.in_dataset_form(corners.numpy())):
            image = pixels[index].permute(1, 2, 0).numpy()
            converted[index] = self.to_uint8(_image(image.astype(np.float32), self.mode))
        return converted

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


def _array(image: Image.Image) -> np.ndarray:
    """An L or RGB image as float32 (H, W, C)."""
    pixels = np.asarray(image, dtype=np.float32)
    return pixels[..., None] if pixels.ndim == 2 else pixels


def _image(pixels: np.ndarray, mode: str) -> Image.Image:
    """(H, W, C) float pixels, rounded and clipped to 0-255, as an image of `mode`."""
    array = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    return Image.fromarray(array[..., 0] if mode == "L" else array, mode)


def _median_of_four(values: Sequence[Any]) -> float:
    """The median of four numbers (the mean of the middle two), as np.median computes it."""
    ordered = sorted(values)
    return (float(ordered[1]) + float(ordered[2])) / 2.0


def _corner_background(pixels: np.ndarray) -> np.ndarray:
    """The median of the four corner pixels of (..., H, W, C) images: (..., C)."""
    corners = np.stack(
        [pixels[..., 0, 0, :], pixels[..., 0, -1, :], pixels[..., -1, 0, :], pixels[..., -1, -1, :]]
    )
    return np.asarray(np.median(corners, axis=0), dtype=np.float32)
