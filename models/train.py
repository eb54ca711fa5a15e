"""The training entrypoint: `convserve-train`, `python -m models.train`, or under torchrun.

    convserve-train                     # Fashion-MNIST, default recipe -> checkpoints/model.pt
    convserve-train --preset best       # the stronger, slower recipe
    convserve-train --dataset folder --data-dir photos/ --image-size 64
    torchrun --nproc-per-node 2 -m models.train   # data-parallel (DDP, gloo)

Each epoch trains on the training split minus a seeded validation split, logs one line and
keeps the checkpoint with the best validation accuracy. At the end the best checkpoint is
evaluated on the test split and metrics.json, curves.png and confusion.png are written beside
it. Ctrl-C (or SIGTERM) stops cleanly: the checkpoint on disk stays valid, and `--resume`
continues from the last completed epoch.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from models.checkpoint import (
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    save_atomic,
    save_checkpoint,
)
from models.cnn import CNN, CNNConfig
from models.data import DataError, Dataset, ImageSet, load_dataset, split_indices
from models.figures import write_network_figures
from models.report import Evaluation, plot_confusion, plot_curves, write_json
from models.transforms import Preprocessing

log = logging.getLogger("convserve.train")

DEFAULT_OUTPUT = Path("checkpoints/model.pt")
STATE_VERSION = 1
_EVAL_BATCH = 1000


@dataclass(frozen=True)
class Recipe:
    """Architecture and optimization of one preset; the CLI overrides epochs, batch and lr.

    `batch_size` is the global batch (split across DDP processes). `flip` mirrors images
    left-right at random and `shift` translates them by up to that many pixels. `bf16` runs the
    training forward pass under bfloat16 autocast on CPUs with native bf16 (AMX or
    AVX-512-BF16), about twice as fast there; elsewhere, and always for validation and test, fp32.
    """

    channels: tuple[int, ...] = (32, 64)
    convs_per_block: int = 1
    batch_norm: bool = False
    dropout: float = 0.0
    hidden: int = 0
    epochs: int = 6
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    label_smoothing: float = 0.0
    flip: bool = False
    shift: int = 0
    bf16: bool = False


PRESETS: dict[str, Recipe] = {
    "default": Recipe(),
    "best": Recipe(
        channels=(32, 64),
        convs_per_block=2,
        batch_norm=True,
        dropout=0.25,
        hidden=128,
        epochs=12,
        batch_size=128,
        lr=3e-3,
        weight_decay=5e-4,
        label_smoothing=0.1,
        flip=True,
        shift=2,
        bf16=True,
    ),
}


@dataclass(frozen=True)
class Settings:
    """Everything that defines a run; saved with the training state so --resume repeats it."""

    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    preset: str = "default"
    recipe: Recipe = field(default_factory=Recipe)
    seed: int = 0
    val_fraction: float = 0.1
    image_size: tuple[int, int] = (32, 32)
    mode: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (loadable with weights_only=True, writable as JSON)."""
        data = asdict(self)
        data["recipe"]["channels"] = list(self.recipe.channels)
        data["image_size"] = list(self.image_size)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Settings:
        """Inverse of to_dict."""
        recipe = dict(data["recipe"], channels=tuple(data["recipe"]["channels"]))
        return cls(**dict(data, recipe=Recipe(**recipe), image_size=tuple(data["image_size"])))


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Only the main process logs and writes files."""
        return self.rank == 0


@dataclass(frozen=True)
class Splits:
    """The training, validation and test images; `test_name` says where the test set came from."""

    train: ImageSet
    val: ImageSet
    test: ImageSet
    test_name: str


@dataclass
class Progress:
    """What survives an interruption: the epochs done, their log, the best so far."""

    epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_accuracy: float = -1.0
    train_seconds: float = 0.0


def main(argv: Sequence[str] | None = None) -> int:
    """Parses the command line, trains, and returns the exit status.

    0: trained and tested; 2: unusable data or resume state (the message says why);
    130: interrupted, with a valid checkpoint left at --output.
    """
    args = _parser().parse_args(argv)
    dist = _init_distributed()
    logging.basicConfig(
        level=logging.INFO if dist.is_main else logging.WARNING, format="%(message)s"
    )
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads or _default_threads(dist.local_world_size))
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        output = Path(args.output)
        state = _load_state(output) if args.resume else None
        settings = Settings.from_dict(state["settings"]) if state else _settings_from_args(args)
        return train(settings, output, dist, state)
    except (DataError, CheckpointError) as exc:
        log.error("convserve-train: %s", exc)
        return 2
    except KeyboardInterrupt:
        log.warning("interrupted before training started; nothing was written")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        torch.set_num_threads(previous_threads)
        if torch_dist.is_initialized():
            torch_dist.destroy_process_group()


def train(
    settings: Settings,
    output: Path,
    dist: Distributed = Distributed(),
    state: dict[str, Any] | None = None,
) -> int:
    """Trains per `settings` (continuing `state` when resuming); writes `output` and its reports.

    Returns 0 when every epoch ran and the test split was evaluated, 130 when interrupted
    (the checkpoint at `output` is then still a valid, loadable model).
    """
    run = _Run(settings, output, dist, state)
    try:
        for epoch in range(run.progress.epoch + 1, settings.recipe.epochs + 1):
            stats = run.train_epoch(epoch)
            if dist.is_main:
                run.end_epoch(stats)
    except KeyboardInterrupt:
        if dist.is_main:
            run.save_interrupted()
        return 130
    if dist.is_main:
        run.finish()
    return 0


def evaluate(
    model: nn.Module, data: ImageSet, preprocessing: Preprocessing
) -> tuple[float, torch.Tensor]:
    """Mean cross-entropy over `data` and the (N,) predicted class indices, in eval mode."""
    model.eval()
    loss_sum = 0.0
    predictions = [torch.zeros(0, dtype=torch.int64)]
    with torch.inference_mode():
        for pixels, labels in _batches(data, list(range(len(data))), _EVAL_BATCH):
            inputs = preprocessing.normalize(pixels).contiguous(memory_format=torch.channels_last)
            logits = model(inputs)
            loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
            predictions.append(logits.argmax(dim=1))
    return loss_sum / max(1, len(data)), torch.cat(predictions)


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


@dataclass(frozen=True)
class _EpochStats:
    epoch: int
    loss: float
    accuracy: float
    images: int
    seconds: float
    lr: float


class _Run:
    """One training run: its data, model, optimizer, schedule and progress so far."""

    def __init__(
        self,
        settings: Settings,
        output: Path,
        dist: Distributed,
        state: dict[str, Any] | None,
    ) -> None:
        self.started = time.perf_counter()
        self.settings, self.output, self.dist = settings, output, dist
        self.recipe = recipe = settings.recipe
        self.dataset = load_dataset(
            settings.dataset, settings.data_dir, settings.image_size, _mode(settings.mode)
        )
        self.splits = _make_splits(self.dataset, settings)
        torch.manual_seed(settings.seed)
        self.model = CNN(_model_config(recipe, self.dataset))
        self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay
        )
        self.bf16 = recipe.bf16 and _native_bf16()
        self.batch = max(1, recipe.batch_size // dist.world_size)
        self.sampler: DistributedSampler[int] = DistributedSampler(
            self.splits.train, num_replicas=dist.world_size, rank=dist.rank, seed=settings.seed
        )
        steps = math.ceil(len(self.sampler) / self.batch)
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer, max_lr=recipe.lr, total_steps=recipe.epochs * steps
        )
        self.progress = Progress()
        if state:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.progress = Progress(**state["progress"])
        self.trainable: nn.Module = (
            DistributedDataParallel(self.model) if dist.world_size > 1 else self.model
        )
        self.load_seconds = time.perf_counter() - self.started
        if dist.is_main:
            _log_start(self)

    def train_epoch(self, epoch: int) -> _EpochStats:
        """One pass over this rank's shard; loss and accuracy are summed over all ranks."""
        self.sampler.set_epoch(epoch)
        torch.manual_seed(hash((self.settings.seed, epoch, self.dist.rank)) % 2**63)
        indices = list(self.sampler)
        world = self.dist.world_size
        self.trainable.train()
        totals = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, images
        started = time.perf_counter()
        bar = tqdm(
            total=len(indices) * world,
            desc=f"epoch {epoch}/{self.recipe.epochs}",
            unit="img",
            leave=False,
            disable=None if self.dist.is_main else True,
        )
        with bar:
            for pixels, labels in _batches(self.splits.train, indices, self.batch):
                loss, correct = self._step(pixels, labels)
                totals += torch.tensor([loss * len(labels), correct, len(labels)])
                bar.update(len(labels) * world)
                bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        if world > 1:
            torch_dist.all_reduce(totals)
        loss_sum, correct, images = totals.tolist()
        seconds = time.perf_counter() - started
        lr = float(self.optimizer.param_groups[0]["lr"])
        return _EpochStats(epoch, loss_sum / images, correct / images, int(images), seconds, lr)

    def end_epoch(self, stats: _EpochStats) -> None:
        """Validates, logs the epoch line, keeps the best checkpoint, saves the resume state."""
        started = time.perf_counter()
        val_loss, predictions = evaluate(self.model, self.splits.val, self.dataset.preprocessing)
        val_accuracy = float((predictions == self.splits.val.labels).double().mean())
        progress = self.progress
        improved = val_accuracy > progress.best_val_accuracy
        progress.epoch = stats.epoch
        progress.train_seconds += stats.seconds
        progress.history.append(
            {
                "epoch": stats.epoch,
                "loss": stats.loss,
                "train_accuracy": stats.accuracy,
                "val_loss": val_loss,
                "val_accuracy": val_accuracy,
                "seconds": stats.seconds,
                "val_seconds": time.perf_counter() - started,
                "images_per_second": stats.images / stats.seconds,
                "lr": stats.lr,
            }
        )
        if improved:
            progress.best_epoch, progress.best_val_accuracy = stats.epoch, val_accuracy
            save_checkpoint(self.checkpoint(), self.output)
        self._save_state()
        log.info(
            "epoch %d/%d  loss %.4f  train %.4f  val %.4f%s  %.1f s  %.0f img/s",
            stats.epoch,
            self.recipe.epochs,
            stats.loss,
            stats.accuracy,
            val_accuracy,
            " (best, saved)" if improved else "",
            stats.seconds,
            stats.images / stats.seconds,
        )

    def checkpoint(self, **extra: Any) -> Checkpoint:
        """The current weights with the run's classes, preprocessing and training summary."""
        settings, progress, dataset = self.settings, self.progress, self.dataset
        training = {
            "name": f"{dataset.name.removeprefix('folder:')}-{settings.preset}",
            "dataset": dataset.name,
            "data_dir": settings.data_dir,
            "preset": settings.preset,
            "epochs": progress.epoch,
            "epochs_planned": self.recipe.epochs,
            "best_epoch": progress.best_epoch,
            "val_accuracy": progress.best_val_accuracy if progress.best_epoch else None,
            "test_accuracy": None,
            "test_split": self.splits.test_name,
            "train_images": len(self.splits.train),
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "seconds": round(progress.train_seconds, 3),
            "seed": settings.seed,
            "batch_size": self.recipe.batch_size,
            "lr": self.recipe.lr,
            "world_size": self.dist.world_size,
            "precision": "bf16" if self.bf16 else "fp32",
            "skipped_files": dataset.skipped,
            "torch": str(torch.__version__),
            **extra,
        }
        state_dict = {name: t.detach().clone() for name, t in self.model.state_dict().items()}
        return Checkpoint(
            self.model.config, state_dict, list(dataset.classes), dataset.preprocessing, training
        )

    def save_interrupted(self) -> None:
        """Keeps the best checkpoint; with none saved yet, saves the current weights instead."""
        if not self.progress.best_epoch:
            save_checkpoint(self.checkpoint(interrupted=True), self.output)
        log.warning(
            "interrupted after %d/%d epochs; %s is a valid checkpoint; continue with --resume",
            self.progress.epoch,
            self.recipe.epochs,
            self.output,
        )

    def finish(self) -> None:
        """Tests the best checkpoint, stamps the result into it and writes the reports."""
        best = load_checkpoint(self.output)
        model = best.build_model()
        test = self.splits.test
        test_started = time.perf_counter()
        _, predictions = evaluate(model, test, best.preprocessing)
        result = Evaluation.of(predictions, test.labels, best.classes)
        test_seconds = time.perf_counter() - test_started
        training = dict(
            best.training,
            epochs=self.progress.epoch,
            test_accuracy=result.accuracy,
            seconds=round(self.progress.train_seconds, 3),
        )
        save_checkpoint(replace(best, training=training), self.output)
        timings = {
            "load_seconds": self.load_seconds,
            "train_seconds": self.progress.train_seconds,
            "test_seconds": test_seconds,
            "total_seconds": time.perf_counter() - self.started,
            "mean_images_per_second": statistics.fmean(
                row["images_per_second"] for row in self.progress.history
            ),
            "single_image_forward_ms": forward_milliseconds(model, best.config.input_shape),
            "torch_threads": torch.get_num_threads(),
            "processes": self.dist.world_size,
        }
        self._write_reports(best, result, timings)
        _state_path(self.output).unlink(missing_ok=True)
        log.info("model:\n%s", model.summary().to_text())
        log.info(
            "test accuracy %.4f on %d %s images (best epoch %d); %.1f s in all; wrote %s and "
            "metrics.json, curves.png, confusion.png beside it",
            result.accuracy,
            result.images,
            self.splits.test_name,
            self.progress.best_epoch,
            timings["total_seconds"],
            self.output,
        )

    def _write_reports(
        self, best: Checkpoint, result: Evaluation, timings: dict[str, float]
    ) -> None:
        splits, folder = self.splits, self.output.parent
        metrics = {
            "name": best.training["name"],
            "dataset": self.dataset.name,
            "classes": best.classes,
            "settings": self.settings.to_dict(),
            "model": {
                "config": best.config.to_dict(),
                "parameters": best.build_model().summary().parameters,
            },
            "preprocessing": best.preprocessing.to_dict(),
            "images": {
                "train": len(splits.train),
                "val": len(splits.val),
                "test": len(splits.test),
            },
            "skipped_files": self.dataset.skipped,
            "test": {
                "split": splits.test_name,
                "accuracy": result.accuracy,
                "per_class_accuracy": result.per_class,
                "confusion_matrix": result.confusion,
            },
            "best_epoch": self.progress.best_epoch,
            "best_val_accuracy": self.progress.best_val_accuracy,
            "history": self.progress.history,
            "timings": timings,
            "torch": str(torch.__version__),
            "date": best.training["date"],
        }
        write_json(metrics, folder / "metrics.json")
        plot_curves(self.progress.history, folder / "curves.png")
        plot_confusion(result, best.classes, folder / "confusion.png")
        write_network_figures(best, splits.test.pixels[0], folder)

    def _step(self, pixels: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
        inputs = self.dataset.preprocessing.normalize(self._augment(pixels))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.trainable(inputs.contiguous(memory_format=torch.channels_last))
            loss = F.cross_entropy(logits, labels, label_smoothing=self.recipe.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return float(loss.detach()), int((logits.argmax(dim=1) == labels).sum())

    def _augment(self, pixels: torch.Tensor) -> torch.Tensor:
        """Random left-right flips and shifts of uint8 pixels; shifts pad with the background."""
        if self.recipe.flip:
            mirror = torch.rand(pixels.shape[0]) < 0.5
            pixels = torch.where(mirror.view(-1, 1, 1, 1), pixels.flip(-1), pixels)
        if self.recipe.shift:
            fill = self.dataset.preprocessing.background
            pixels = _random_shift(pixels, self.recipe.shift, fill)
        return pixels

    def _save_state(self) -> None:
        save_atomic(
            {
                "state_version": STATE_VERSION,
                "settings": self.settings.to_dict(),
                "progress": asdict(self.progress),
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
            },
            _state_path(self.output),
        )


def _batches(
    data: ImageSet, indices: list[int], batch: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    order = torch.tensor(indices, dtype=torch.int64)
    for start in range(0, len(order), batch):
        chunk = order[start : start + batch]
        yield data.pixels[chunk], data.labels[chunk]


def _random_shift(pixels: torch.Tensor, limit: int, fill: int) -> torch.Tensor:
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


def _make_splits(dataset: Dataset, settings: Settings) -> Splits:
    train, val = dataset.train, dataset.val
    if val is None:
        kept, held = split_indices(len(train), settings.val_fraction, settings.seed)
        train, val = train.subset(kept), train.subset(held)
    if dataset.test is not None:
        return Splits(train, val, dataset.test, "test")
    return Splits(train, val, val, "val")


def _model_config(recipe: Recipe, dataset: Dataset) -> CNNConfig:
    pre = dataset.preprocessing
    return CNNConfig(
        in_channels=pre.channels,
        height=pre.height,
        width=pre.width,
        num_classes=len(dataset.classes),
        channels=recipe.channels,
        convs_per_block=recipe.convs_per_block,
        batch_norm=recipe.batch_norm,
        dropout=recipe.dropout,
        hidden=recipe.hidden,
    )


def _log_start(run: _Run) -> None:
    dataset, splits, recipe = run.dataset, run.splits, run.recipe
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
        run.settings.preset,
        recipe.epochs,
        recipe.batch_size,
        recipe.lr,
        "bf16 autocast" if run.bf16 else "fp32",
        run.dist.world_size,
        torch.get_num_threads(),
    )
    log.info(
        "%s parameters; preprocessing %s",
        f"{run.model.summary().parameters:,}",
        dataset.preprocessing.to_dict(),
    )
    if run.progress.epoch:
        log.info(
            "resuming after epoch %d (best val %.4f at epoch %d)",
            run.progress.epoch,
            run.progress.best_val_accuracy,
            run.progress.best_epoch,
        )


def _state_path(output: Path) -> Path:
    """The training state beside the checkpoint: checkpoints/model.pt -> model.state.pt."""
    return output.with_name(f"{output.stem}.state.pt")


def _load_state(output: Path) -> dict[str, Any]:
    """The state saved by an interrupted run writing to `output` (weights_only loading)."""
    path = _state_path(output)
    if not path.is_file():
        raise CheckpointError(
            f"{path}: no training state to resume (the run finished, or never completed an epoch)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: unreadable training state: {exc}") from exc
    if not isinstance(state, dict) or state.get("state_version") != STATE_VERSION:
        raise CheckpointError(f"{path}: not a training state of version {STATE_VERSION}")
    return state


def _init_distributed() -> Distributed:
    """Joins the torchrun job (gloo) when WORLD_SIZE > 1, else a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    torch_dist.init_process_group("gloo")
    return Distributed(
        rank=torch_dist.get_rank(),
        world_size=torch_dist.get_world_size(),
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size))),
    )


def _native_bf16() -> bool:
    """True on CPUs with AMX or AVX-512-BF16, where bf16 autocast beats fp32."""
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def _default_threads(local_processes: int) -> int:
    """The CPUs that are not already busy, shared among this machine's training processes.

    Busy means the 1-minute load average: on a shared machine an intra-op thread that waits
    for a taken core stalls every step (measured here: 2 threads on 2 busy cores ran 4x slower
    than 1 thread).
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    total = cpus or 1
    idle = total - round(os.getloadavg()[0]) if hasattr(os, "getloadavg") else total
    return max(1, min(total, idle) // local_processes)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _mode(value: str | None) -> Literal["L", "RGB"] | None:
    if value in (None, "auto"):
        return None
    if value == "L":
        return "L"
    if value == "RGB":
        return "RGB"
    raise DataError(f"mode must be L, RGB or auto, got {value!r}")


def _settings_from_args(args: argparse.Namespace) -> Settings:
    recipe = PRESETS[args.preset]
    overrides = {
        name: getattr(args, name)
        for name in ("epochs", "batch_size", "lr")
        if getattr(args, name) is not None
    }
    if args.bf16 is not None:
        overrides["bf16"] = args.bf16
    if args.augment is False:
        overrides.update(flip=False, shift=0)
    if args.dataset == "mnist":
        overrides["flip"] = False  # a mirrored digit is not the same digit
    return Settings(
        dataset=args.dataset,
        data_dir=args.data_dir,
        preset=args.preset,
        recipe=replace(recipe, **overrides),
        seed=args.seed,
        val_fraction=args.val_fraction,
        image_size=args.image_size,
        mode=args.mode,
    )


def _image_size(text: str) -> tuple[int, int]:
    height, _, width = text.lower().partition("x")
    try:
        size = (int(height), int(width or height))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected N or HxW, got {text!r}") from exc
    if min(size) < 1:
        raise argparse.ArgumentTypeError(f"image size must be positive, got {text!r}")
    return size


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convserve-train",
        description="Train the convserve CNN and write a self-describing checkpoint.",
        epilog="Under `torchrun --nproc-per-node N -m models.train ...` it trains data-parallel "
        "(DDP, gloo); --batch-size stays the global batch.",
    )
    parser.add_argument(
        "--dataset",
        choices=("fashion-mnist", "mnist", "folder"),
        default="fashion-mnist",
        help="fashion-mnist / mnist: the four official IDX files; folder: DIR/<class>/*.png|jpg|"
        "jpeg|webp|bmp|gif, with DIR/train and DIR/val (and DIR/test) when present",
    )
    parser.add_argument(
        "--data-dir",
        help="where the dataset lives (fashion-mnist default: /usr/share/datasets/fashion-mnist, "
        "installed by Debian's dataset-fashion-mnist)",
    )
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="default",
        help="default: small and fast (what `make run` trains); best: slower, more accurate",
    )
    parser.add_argument("--epochs", type=int, help="override the preset's epochs")
    parser.add_argument("--batch-size", type=int, help="override the preset's global batch size")
    parser.add_argument("--lr", type=float, help="override the preset's peak learning rate")
    parser.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bfloat16 autocast for training where the CPU has native bf16 (default: the "
        "preset's choice; best uses it); validation and test always run in fp32",
    )
    parser.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="--no-augment turns off the preset's random flips and shifts",
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds init, split and shuffling")
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="share of the training images held out for validation when the "
        "dataset has no validation split (default 0.1)",
    )
    parser.add_argument(
        "--image-size",
        type=_image_size,
        default=(32, 32),
        help="folder datasets: model input N or HxW (default 32)",
    )
    parser.add_argument(
        "--mode",
        choices=("auto", "L", "RGB"),
        default="auto",
        help="folder datasets: L (grey) or RGB; auto picks L when every image is greyscale",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads per process (default: the CPUs not busy according to the 1-minute "
        "load average, divided among torchrun processes)",
    )
    parser.add_argument(
        "--output",
        default=str(DEFAULT_OUTPUT),
        help="checkpoint path; the reports go beside it (default %(default)s)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run that was writing --output, with its saved settings",
    )
    return parser


if __name__ == "__main__":
    sys.exit(main())
