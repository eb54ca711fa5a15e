"""What defines a training run: the presets (`Recipe`) and the whole run (`TrainConfig`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from models.cnn import CNNConfig


@dataclass(frozen=True)
class Recipe:
    """Architecture and optimization of one preset; the CLI overrides epochs, batch and lr.

    `model` is the network without its input and output sizes, which come from the dataset.
    `batch_size` is the global batch (split across DDP processes). `flip` mirrors images
    left-right at random and `shift` translates them by up to that many pixels. `photos` is the
    share of training images rendered as product photos and converted back each epoch (see
    models/photos.py), so the model learns the artefacts of the photo conversion. `bf16` runs
    the training forward pass under bfloat16 autocast on CPUs with native bf16 (AMX or
    AVX-512-BF16); elsewhere, and always for validation and test, fp32.
    """

    model: CNNConfig = field(default_factory=lambda: CNNConfig(channels=(32, 64)))
    epochs: int = 6
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    label_smoothing: float = 0.0
    flip: bool = False
    shift: int = 0
    photos: float = 0.0
    bf16: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (loadable with weights_only=True, writable as JSON)."""
        return dict(asdict(self), model=self.model.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        """Inverse of to_dict."""
        return cls(**dict(data, model=CNNConfig.from_dict(data["model"])))


PRESETS: dict[str, Recipe] = {
    "default": Recipe(label_smoothing=0.1, photos=0.25),
    "best": Recipe(
        model=CNNConfig(
            channels=(32, 64), convs_per_block=2, batch_norm=True, dropout=0.25, hidden=128
        ),
        epochs=12,
        batch_size=128,
        lr=3e-3,
        weight_decay=5e-4,
        label_smoothing=0.1,
        flip=True,
        shift=2,
        photos=0.25,
        bf16=True,
    ),
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run; saved with the training state so --resume repeats it.

    `photo` turns the product-photo conversion on or off in the checkpoint's preprocessing;
    None takes the dataset's default (on for Fashion-MNIST and MNIST, off for image folders).
    """

    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    preset: str = "default"
    recipe: Recipe = field(default_factory=Recipe)
    seed: int = 0
    val_fraction: float = 0.1
    image_size: tuple[int, int] = (32, 32)
    mode: str | None = None
    photo: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (loadable with weights_only=True, writable as JSON)."""
        return dict(asdict(self), recipe=self.recipe.to_dict(), image_size=list(self.image_size))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of to_dict."""
        return cls(
            **dict(
                data,
                recipe=Recipe.from_dict(data["recipe"]),
                image_size=tuple(data["image_size"]),
            )
        )

    def model_config(self, channels: int, height: int, width: int, num_classes: int) -> CNNConfig:
        """The recipe's network sized for the dataset's input and classes."""
        return replace(
            self.recipe.model,
            in_channels=channels,
            height=height,
            width=width,
            num_classes=num_classes,
        )
