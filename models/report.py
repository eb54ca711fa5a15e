"""What a training run leaves beside its checkpoint: metrics.json, curves.png, confusion.png."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


@dataclass(frozen=True)
class Evaluation:
    """Accuracy of predictions against labels: overall, per class and as a confusion matrix.

    confusion[i][j] counts images of class i predicted as class j.
    """

    accuracy: float
    per_class: dict[str, float]
    confusion: list[list[int]]
    images: int

    @classmethod
    def of(
        cls, predictions: torch.Tensor, labels: torch.Tensor, classes: Sequence[str]
    ) -> Evaluation:
        """Compares (N,) predicted class indices with (N,) true ones."""
        count = len(classes)
        flat = labels.to(torch.int64) * count + predictions.to(torch.int64)
        confusion = torch.bincount(flat, minlength=count * count).view(count, count)
        support = confusion.sum(dim=1)
        correct = confusion.diagonal()
        per_class = {
            name: int(correct[i]) / int(support[i]) if support[i] else 0.0
            for i, name in enumerate(classes)
        }
        total = int(labels.numel())
        accuracy = float(correct.sum()) / total if total else 0.0
        return cls(accuracy, per_class, confusion.tolist(), total)


def write_json(data: dict[str, Any], path: Path) -> None:
    """Writes `data` as indented JSON, atomically (temporary file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2)
            handle.write("\n")
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def plot_curves(history: Sequence[dict[str, float]], path: Path) -> None:
    """curves.png: training/validation loss and accuracy per epoch."""
    epochs = [row["epoch"] for row in history]
    figure = Figure(figsize=(10, 4), layout="constrained")
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    loss_axes.plot(epochs, [row["loss"] for row in history], marker="o", label="train")
    loss_axes.plot(epochs, [row["val_loss"] for row in history], marker="o", label="validation")
    loss_axes.set(title="loss", xlabel="epoch", ylabel="cross-entropy")
    accuracy_axes.plot(
        epochs, [row["train_accuracy"] for row in history], marker="o", label="train"
    )
    accuracy_axes.plot(
        epochs, [row["val_accuracy"] for row in history], marker="o", label="validation"
    )
    accuracy_axes.set(title="accuracy", xlabel="epoch", ylabel="accuracy")
    for axes in (loss_axes, accuracy_axes):
        axes.grid(alpha=0.3)
        axes.legend()
    _save(figure, path)


def plot_confusion(evaluation: Evaluation, classes: Sequence[str], path: Path) -> None:
    """confusion.png: the confusion matrix, rows normalized to the share of each true class."""
    counts = torch.tensor(evaluation.confusion, dtype=torch.float64)
    shares = counts / counts.sum(dim=1, keepdim=True).clamp_min(1)
    size = max(5.0, 0.6 * len(classes) + 2)
    figure = Figure(figsize=(size + 1, size), layout="constrained")
    axes = figure.subplots()
    image = axes.imshow(shares.numpy(), cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axes, label="share of the true class")
    ticks = range(len(classes))
    axes.set_xticks(ticks, classes, rotation=45, ha="right")
    axes.set_yticks(ticks, classes)
    axes.set(
        xlabel="predicted",
        ylabel="true",
        title=f"test accuracy {evaluation.accuracy:.2%} ({evaluation.images} images)",
    )
    if len(classes) <= 20:
        for i in ticks:
            for j in ticks:
                value = int(counts[i, j])
                colour = "white" if shares[i, j] > 0.5 else "black"
                axes.text(j, i, str(value), ha="center", va="center", fontsize=7, color=colour)
    _save(figure, path)


def _save(figure: Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=100)
