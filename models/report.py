"""What a training run tells: its log lines, metrics.json, curves.png and the confusion matrices
(confusion.png, and confusion-photo.png for photo renderings of the test set)."""

from __future__ import annotations

import json
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from matplotlib.figure import Figure
from torch import nn
from tqdm import tqdm

from models.checkpoint import Checkpoint
from models.data import ImageSet
from models.figures import save_figure, write_network_figures
from models.photos import TEST_SEED, photo_round_trip
from models.transforms import Preprocessing

if TYPE_CHECKING:
    from models.train import Run

log = logging.getLogger("convserve.train")


@dataclass(frozen=True)
class EpochStats:
    """One epoch's training pass: mean loss and accuracy over the images seen, its pace."""

    epoch: int
    loss: float
    accuracy: float
    images: int
    seconds: float
    lr: float

    def row(self, val_loss: float, val_accuracy: float, val_seconds: float) -> dict[str, float]:
        """The epoch's line of the history in metrics.json."""
        return {
            "epoch": self.epoch,
            "loss": self.loss,
            "train_accuracy": self.accuracy,
            "val_loss": val_loss,
            "val_accuracy": val_accuracy,
            "seconds": self.seconds,
            "val_seconds": val_seconds,
            "images_per_second": self.images / self.seconds,
            "lr": self.lr,
        }


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


def log_start(run: Run) -> None:
    """What is about to be trained, on what, and how."""
    dataset, splits, recipe = run.dataset, run.splits, run.config.recipe
    log.info(
        "%s: %d train / %d val / %d %s images, %d classes%s; preset %s, %d epochs, batch %d, "
        "lr %g, %s, %d process(es) x %d torch threads",
        dataset.name,
        len(splits.train),
        len(splits.val),
        len(splits.test),
        splits.test_name,
        len(dataset.classes),
        f", {dataset.skipped} unreadable files skipped" if dataset.skipped else "",
        run.config.preset,
        recipe.epochs,
        recipe.batch_size,
        recipe.lr,
        "bf16 autocast" if run.bf16 else "fp32",
        run.dist.world_size,
        torch.get_num_threads(),
    )
    log.info(
        "%s parameters; preprocessing %s; %d training images also seen as photo renderings",
        f"{run.model.summary().parameters:,}",
        dataset.preprocessing.to_dict(),
        len(run.augment.photos),
    )
    if run.progress.epoch:
        log.info(
            "resuming after epoch %d (best val %.4f at epoch %d)",
            run.progress.epoch,
            run.progress.best_val_accuracy,
            run.progress.best_epoch,
        )


def epoch_bar(run: Run, epoch: int, shard: int) -> tqdm[Any]:
    """A progress bar over the epoch's images (all ranks), on the main process's terminal."""
    return tqdm(
        total=shard * run.dist.world_size,
        desc=f"epoch {epoch}/{run.config.recipe.epochs}",
        unit="img",
        leave=False,
        disable=None if run.dist.is_main else True,
    )


def log_epoch(stats: EpochStats, epochs: int, val_accuracy: float, improved: bool) -> None:
    """The epoch's line in the log."""
    log.info(
        "epoch %d/%d  loss %.4f  train %.4f  val %.4f%s  %.1f s  %.0f img/s",
        stats.epoch,
        epochs,
        stats.loss,
        stats.accuracy,
        val_accuracy,
        " (best, saved)" if improved else "",
        stats.seconds,
        stats.images / stats.seconds,
    )


def photo_test_set(test: ImageSet, preprocessing: Preprocessing) -> ImageSet:
    """The test images rendered as product photos (a fixed seed) and converted back."""
    workers = torch.get_num_threads()
    return ImageSet(photo_round_trip(test.pixels, preprocessing, TEST_SEED, workers), test.labels)


def write_reports(
    run: Run, best: Checkpoint, tested: dict[str, Evaluation], test_seconds: float
) -> None:
    """metrics.json, curves.png, confusion.png, kernels.png and feature-maps.png beside the
    checkpoint, and the final log."""
    splits, progress, folder = run.splits, run.progress, run.output.parent
    model = best.build_model()
    summary = model.summary()
    timings = {
        "load_seconds": run.load_seconds,
        "train_seconds": progress.train_seconds,
        "test_seconds": test_seconds,
        "total_seconds": time.perf_counter() - run.started,
        "mean_images_per_second": statistics.fmean(
            row["images_per_second"] for row in progress.history
        ),
        "single_image_forward_ms": forward_milliseconds(model, best.config.input_shape),
        "torch_threads": torch.get_num_threads(),
        "processes": run.dist.world_size,
    }
    metrics = {
        "name": best.training["name"],
        "dataset": run.dataset.name,
        "classes": best.classes,
        "settings": run.config.to_dict(),
        "model": {"config": best.config.to_dict(), "parameters": summary.parameters},
        "preprocessing": best.preprocessing.to_dict(),
        "images": {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)},
        "photo_renderings": len(run.augment.photos),
        "skipped_files": run.dataset.skipped,
        "test": _test_entry(tested["dataset"], splits.test_name),
        "photo_test": (
            dict(_test_entry(tested["photo"], splits.test_name), seed=TEST_SEED)
            if "photo" in tested
            else None
        ),
        "best_epoch": progress.best_epoch,
        "best_val_accuracy": progress.best_val_accuracy,
        "history": progress.history,
        "timings": timings,
        "torch": str(torch.__version__),
        "date": best.training["date"],
    }
    write_json(metrics, folder / "metrics.json")
    plot_curves(progress.history, folder / "curves.png")
    plot_confusion(tested["dataset"], best.classes, folder / "confusion.png")
    if "photo" in tested:
        plot_confusion(tested["photo"], best.classes, folder / "confusion-photo.png", "photo")
    write_network_figures(best, splits.test.pixels[0], folder)
    log.info("model:\n%s", summary.to_text())
    for form, result in tested.items():
        per_class = "  ".join(f"{name} {share:.3f}" for name, share in result.per_class.items())
        log.info("%s form, per class: %s", form, per_class)
    photo = tested.get("photo")
    log.info(
        "test accuracy %.4f on %d %s images%s (best epoch %d); %.1f s in all; wrote %s and "
        "metrics.json, curves.png, confusion*.png, kernels.png, feature-maps.png beside it",
        tested["dataset"].accuracy,
        tested["dataset"].images,
        splits.test_name,
        f", {photo.accuracy:.4f} on photo renderings of them" if photo else "",
        progress.best_epoch,
        timings["total_seconds"],
        run.output,
    )


def forward_milliseconds(model: nn.Module, input_shape: Sequence[int], repeats: int = 200) -> float:
    """Median wall time of one single-image forward pass in eval mode, in milliseconds."""
    model.eval()
    image = torch.zeros(1, *input_shape)
    timings = []
    with torch.inference_mode():
        for _ in range(10):
            model(image)
        for _ in range(repeats):
            begin = time.perf_counter()
            model(image)
            timings.append(time.perf_counter() - begin)
    return statistics.median(timings) * 1000.0


def _test_entry(result: Evaluation, split: str) -> dict[str, Any]:
    return {
        "split": split,
        "accuracy": result.accuracy,
        "per_class_accuracy": result.per_class,
        "confusion_matrix": result.confusion,
    }


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
    save_figure(figure, path)


def plot_confusion(
    evaluation: Evaluation, classes: Sequence[str], path: Path, form: str = "dataset"
) -> None:
    """The confusion matrix of the test images in `form` ('dataset' or 'photo'), rows
    normalized to the share of each true class."""
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
        title=f"{form} form: test accuracy {evaluation.accuracy:.2%} ({evaluation.images} images)",
    )
    if len(classes) <= 20:
        for i in ticks:
            for j in ticks:
                value = int(counts[i, j])
                colour = "white" if shares[i, j] > 0.5 else "black"
                axes.text(j, i, str(value), ha="center", va="center", fontsize=7, color=colour)
    save_figure(figure, path)
