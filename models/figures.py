"""What a training run draws of the trained network: first-layer kernels and one image's maps."""

from __future__ import annotations

from pathlib import Path

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from models.checkpoint import Checkpoint
from models.explain import explain

# Channels drawn per layer in feature-maps.png (the first ones; the API returns them all).
MAPS_PER_LAYER = 8


def write_network_figures(checkpoint: Checkpoint, pixels: torch.Tensor, folder: Path) -> None:
    """Writes kernels.png (the first convolution's kernels) and feature-maps.png (uint8
    (C, H, W) `pixels` and the first channels of every conv-block layer's output for it)."""
    model = checkpoint.build_model().eval()
    inputs = checkpoint.preprocessing.normalize(pixels).unsqueeze(0)
    explanation = explain(model, inputs)
    _plot_kernels(explanation.kernels, explanation.kernel_layer, folder / "kernels.png")
    label = checkpoint.classes[int(explanation.logits.argmax())]
    figure = Figure(
        figsize=(1.2 * (MAPS_PER_LAYER + 1), 1.3 * len(explanation.layers)), layout="constrained"
    )
    grid = figure.subplots(len(explanation.layers), MAPS_PER_LAYER + 1, squeeze=False)
    grid[0][0].imshow(_displayable(pixels), cmap="gray")
    grid[0][0].set_title(f"input: {label}", fontsize=7)
    for row, layer in zip(grid, explanation.layers, strict=True):
        for axes in row:
            axes.set_axis_off()
        row[1].set_title(f"{layer.name} {layer.kind}", fontsize=7, loc="left")
        for axes, channel in zip(row[1:], layer.maps, strict=False):
            axes.imshow(channel.numpy(), cmap="gray")
    save_figure(figure, folder / "feature-maps.png")


def _plot_kernels(kernels: torch.Tensor, layer: str, path: Path) -> None:
    columns = 8
    rows = -(-len(kernels) // columns)
    figure = Figure(figsize=(columns * 0.9, rows * 0.9 + 0.4), layout="constrained")
    figure.suptitle(f"{layer}: {len(kernels)} learned kernels (each scaled on its own)")
    grid = figure.subplots(rows, columns, squeeze=False)
    for index, axes in enumerate(grid.flat):
        axes.set_axis_off()
        if index < len(kernels):
            kernel = kernels[index]
            picture = kernel[0] if len(kernel) == 1 else _unit_range(kernel[:3]).permute(1, 2, 0)
            axes.imshow(picture.numpy(), cmap="gray")
    save_figure(figure, path)


def _displayable(pixels: torch.Tensor) -> object:
    return pixels[0].numpy() if len(pixels) == 1 else pixels.permute(1, 2, 0).numpy()


def _unit_range(tensor: torch.Tensor) -> torch.Tensor:
    low, high = tensor.min(), tensor.max()
    return (tensor - low) / (high - low).clamp_min(1e-12)


def save_figure(figure: Figure, path: Path) -> None:
    """Writes `figure` as a PNG at `path` (its folder made when missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=100)
