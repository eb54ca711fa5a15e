"""Training-time augmentation of uint8 pixel batches: flips, shifts and photo renderings."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.data import ImageSet
from models.photos import photo_round_trip
from models.recipe import Recipe
from models.transforms import Preprocessing


class Augmenter:
    """What the recipe asks for, applied to each training batch.

    Photo renderings are costly, so `photos` of the training images are rendered once per run
    (and passed back through the preprocessing); each epoch then shows every such image in its
    photo form half of the time. Renderings need a photo conversion in the preprocessing and
    greyscale images; otherwise there are none.
    """

    def __init__(
        self,
        recipe: Recipe,
        preprocessing: Preprocessing,
        train: ImageSet,
        seed: int,
        workers: int = 1,
    ) -> None:
        self.recipe, self.preprocessing = recipe, preprocessing
        renders = preprocessing.photo is not None and preprocessing.mode == "L"
        count = round(len(train) * recipe.photos) if renders else 0
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
        chosen = order[:count].sort().values
        # photo_index[i]: row of training image i in self.photos, or -1 when it has none.
        self.photo_index = torch.full((len(train),), -1, dtype=torch.int64)
        self.photo_index[chosen] = torch.arange(count)
        self.photos = (
            photo_round_trip(train.pixels[chosen], preprocessing, seed, workers)
            if count
            else train.pixels[:0]
        )

    def __call__(self, pixels: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """The uint8 batch of training images `indices`, augmented (a new tensor)."""
        rows = self.photo_index[indices]
        swap = (rows >= 0) & (torch.rand(len(rows)) < 0.5)
        if bool(swap.any()):
            pixels = pixels.clone()
            pixels[swap] = self.photos[rows[swap]]
        if self.recipe.flip:
            mirror = torch.rand(pixels.shape[0]) < 0.5
            pixels = torch.where(mirror.view(-1, 1, 1, 1), pixels.flip(-1), pixels)
        if self.recipe.shift:
            pixels = random_shift(pixels, self.recipe.shift, self.preprocessing.background)
        return pixels


def random_shift(pixels: torch.Tensor, limit: int, fill: int) -> torch.Tensor:
    """Each image moved by its own random (dy, dx) in [-limit, limit]; uncovered pixels = fill."""
    n, channels, height, width = pixels.shape
    padded = F.pad(pixels, (limit, limit, limit, limit), value=fill)
    dy = torch.randint(0, 2 * limit + 1, (n, 1, 1, 1))
    dx = torch.randint(0, 2 * limit + 1, (n, 1, 1, 1))
    rows = dy + torch.arange(height).view(1, 1, -1, 1)
    cols = dx + torch.arange(width).view(1, 1, 1, -1)
    return padded[
        torch.arange(n).view(-1, 1, 1, 1), torch.arange(channels).view(1, -1, 1, 1), rows, cols
    ]
