"""The classic CNN: blocks of 3x3 convolution -> ReLU -> 2x2 max-pool, then a linear classifier."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class CNNConfig:
    """Everything needed to rebuild the network; stored in every checkpoint.

    `channels` lists the output channels of each conv block; each block halves height and width.
    `global_pool` averages the last feature map to 1x1 before the classifier (for larger inputs).
    `hidden` adds a fully-connected hidden layer of that width (0: none).
    """

    in_channels: int = 1
    height: int = 28
    width: int = 28
    num_classes: int = 10
    channels: tuple[int, ...] = (32, 64)
    convs_per_block: int = 1
    batch_norm: bool = False
    dropout: float = 0.0
    hidden: int = 0
    global_pool: bool = False

    def __post_init__(self) -> None:
        if self.in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {self.in_channels}")
        if not self.channels or any(c <= 0 for c in self.channels):
            raise ValueError(f"channels must be a non-empty list of positive ints: {self.channels}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {self.num_classes}")
        if self.convs_per_block < 1 or self.hidden < 0 or not 0.0 <= self.dropout < 1.0:
            raise ValueError("convs_per_block >= 1, hidden >= 0 and 0 <= dropout < 1 are required")
        shrink = 2 ** len(self.channels)
        if self.height < shrink or self.width < shrink:
            raise ValueError(
                f"{len(self.channels)} pooling blocks need an input of at least {shrink}x{shrink}, "
                f"got {self.height}x{self.width}"
            )

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one input image."""
        return (self.in_channels, self.height, self.width)

    def to_dict(self) -> dict[str, Any]:
        """Plain types only, so the checkpoint loads with weights_only=True."""
        data = asdict(self)
        data["channels"] = list(self.channels)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CNNConfig:
        """Inverse of to_dict; unknown keys raise TypeError, bad values ValueError."""
        values = dict(data)
        values["channels"] = tuple(values.get("channels", cls.channels))
        return cls(**values)


@dataclass(frozen=True)
class LayerSummary:
    """One row of the architecture summary."""

    name: str
    kind: str
    output_shape: tuple[int, ...]
    parameters: int


@dataclass(frozen=True)
class ModelSummary:
    """Layers with their output shape (batch excluded) and the total parameter count."""

    layers: list[LayerSummary] = field(default_factory=list)
    parameters: int = 0

    def to_text(self) -> str:
        """A fixed-width table for logs."""
        lines = [f"{'layer':<24}{'kind':<14}{'output':<18}{'params':>10}"]
        for layer in self.layers:
            shape = "x".join(str(d) for d in layer.output_shape)
            lines.append(f"{layer.name:<24}{layer.kind:<14}{shape:<18}{layer.parameters:>10,}")
        lines.append(f"total parameters: {self.parameters:,}")
        return "\n".join(lines)


class CNN(nn.Module):
    """conv blocks -> (global pool) -> flatten -> (hidden) -> linear, one logit per class."""

    def __init__(self, config: CNNConfig) -> None:
        super().__init__()
        self.config = config
        blocks: list[nn.Module] = []
        in_ch = config.in_channels
        for out_ch in config.channels:
            layers: list[nn.Module] = []
            for _ in range(config.convs_per_block):
                layers.append(
                    nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=not config.batch_norm)
                )
                if config.batch_norm:
                    layers.append(nn.BatchNorm2d(out_ch))
                layers.append(nn.ReLU(inplace=True))
                in_ch = out_ch
            layers.append(nn.MaxPool2d(2))
            blocks.append(nn.Sequential(*layers))
        self.features = nn.Sequential(*blocks)
        if config.global_pool:
            self.pool: nn.Module = nn.AdaptiveAvgPool2d(1)
            flat = in_ch
        else:
            self.pool = nn.Identity()
            shrink = 2 ** len(config.channels)
            flat = in_ch * (config.height // shrink) * (config.width // shrink)
        head: list[nn.Module] = [nn.Flatten()]
        if config.dropout:
            head.append(nn.Dropout(config.dropout))
        if config.hidden:
            head += [nn.Linear(flat, config.hidden), nn.ReLU(inplace=True)]
            if config.dropout:
                head.append(nn.Dropout(config.dropout))
            flat = config.hidden
        head.append(nn.Linear(flat, config.num_classes))
        self.classifier = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) normalized images -> (N, num_classes) logits."""
        return self.classifier(self.pool(self.features(x)))

    def summary(self) -> ModelSummary:
        """Runs one dummy image through the network and records every leaf layer."""
        rows: list[LayerSummary] = []
        hooks = []

        def record(name: str) -> Any:
            def hook(module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
                params = sum(p.numel() for p in module.parameters(recurse=False))
                rows.append(
                    LayerSummary(name, type(module).__name__, tuple(output.shape[1:]), params)
                )

            return hook

        for name, module in self.named_modules():
            if name and not list(module.children()):
                hooks.append(module.register_forward_hook(record(name)))
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                self(torch.zeros(1, *self.config.input_shape))
        finally:
            for handle in hooks:
                handle.remove()
            self.train(was_training)
        return ModelSummary(rows, sum(p.numel() for p in self.parameters()))
