"""Dataset images rendered as product photos: the inverse of `PhotoConversion`.

A rendering negates the image (a dark garment on a light background), enlarges it, tints the
garment and the background, places it off-centre with margins and stores it as a JPEG. Training
passes renderings back through the checkpoint's preprocessing so the model learns what the
conversion leaves behind; evaluation renders the test set with a fixed seed to measure how well
photos are answered.
"""

from __future__ import annotations

import io
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch
from PIL import Image

from models.transforms import Preprocessing

# Ranges the random renderings are drawn from.
SCALE = (2.0, 5.0)  # enlargement of the 28x28 image
MARGIN = (0.03, 0.5)  # each side's margin, as a share of the enlarged image
BACKGROUND = (185, 255)  # grey level of the background
TINT = 12  # per-channel colour deviation of the background
INK = (0.0, 0.6)  # garment colour per channel, as a share of the background's level
JPEG_QUALITY = (35, 95)
# The seed of the photo renderings of the test set that every training run reports.
TEST_SEED = 2017
# Images per rendering job; each job has its own seed, so the result is the same for any number
# of worker processes.
_CHUNK = 512


def render_photo(pixels: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """One (H, W) uint8 dataset image (bright object on black) as a decoded RGB product photo."""
    with Image.open(io.BytesIO(render_photo_jpeg(pixels, rng))) as decoded:
        return decoded.convert("RGB")


def render_photo_jpeg(
    pixels: np.ndarray, rng: np.random.Generator, scale: tuple[float, float] = SCALE
) -> bytes:
    """One (H, W) uint8 dataset image as the JPEG file of a product photo, enlarged `scale`."""
    height, width = pixels.shape
    factor = rng.uniform(*scale)
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    shape = Image.fromarray(pixels, "L").resize(size, Image.Resampling.BICUBIC)
    top, bottom = (int(m * size[1]) for m in rng.uniform(*MARGIN, size=2))
    left, right = (int(m * size[0]) for m in rng.uniform(*MARGIN, size=2))
    background = np.clip(rng.uniform(*BACKGROUND) + rng.uniform(-TINT, TINT, size=3), 0, 255)
    ink = rng.uniform(*INK, size=3) * background
    canvas_size = (left + size[0] + right, top + size[1] + bottom)
    photo = Image.new("RGB", canvas_size, _colour(background))
    # The dataset's grey level is how much of the garment covers the pixel.
    photo.paste(_colour(ink), (left, top, left + size[0], top + size[1]), mask=shape)
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", quality=int(rng.integers(*JPEG_QUALITY, endpoint=True)))
    return buffer.getvalue()


def photo_round_trip(
    pixels: torch.Tensor, preprocessing: Preprocessing, seed: int, workers: int = 1
) -> torch.Tensor:
    """uint8 (N, 1, H, W) dataset images rendered as photos and converted back, same shape.

    The renderings depend on `seed` and the images only, not on `workers` (the processes
    that share the work).
    """
    if pixels.dim() != 4 or pixels.shape[1] != 1 or pixels.dtype != torch.uint8:
        raise ValueError(f"expected uint8 (N, 1, H, W) pixels, got {tuple(pixels.shape)}")
    chunks = [
        (chunk[:, 0].numpy(), preprocessing, (seed, number))
        for number, chunk in enumerate(pixels.split(_CHUNK))
    ]
    if workers > 1 and len(chunks) > 1:
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(min(workers, len(chunks)), mp_context=context) as pool:
            converted = list(pool.map(_round_trip_chunk, chunks))
    else:
        converted = [_round_trip_chunk(chunk) for chunk in chunks]
    if not converted:
        return torch.empty_like(pixels)
    return torch.from_numpy(np.concatenate(converted))


def _round_trip_chunk(
    job: tuple[np.ndarray, Preprocessing, tuple[int, int]],
) -> np.ndarray:
    # Plain numpy out: a forked worker runs no torch kernels (OpenMP does not survive a fork).
    images, preprocessing, seed = job
    rng = np.random.default_rng(seed)
    return np.stack([preprocessing.to_uint8(render_photo(image, rng)).numpy() for image in images])


def _colour(values: np.ndarray) -> tuple[int, int, int]:
    red, green, blue = (round(float(v)) for v in values)
    return (red, green, blue)
