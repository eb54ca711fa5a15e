"""The training entrypoint: `convserve-train`, `python -m models.train`, or under torchrun.

    convserve-train                     # Fashion-MNIST, default recipe -> checkpoints/model.pt
    convserve-train --preset best       # the stronger, slower recipe
    convserve-train --dataset folder --data-dir photos/ --image-size 64
    torchrun --nproc-per-node 2 -m models.train   # data-parallel (DDP, gloo)

The loop reads top to bottom in `train`: data, model, optimizer, then per epoch one pass over
the training split, validation, and the checkpoint kept when validation improved. At the end
the best checkpoint is tested (on the dataset's images and on photo renderings of them) and
metrics.json, curves.png and the confusion matrices are written beside it. Ctrl-C (or SIGTERM) stops
cleanly: the checkpoint on disk stays valid, and `--resume` continues from the last completed
epoch. Beside this file: the command line (cli.py), the presets (recipe.py), the resume state
(resume.py), the augmentation (augment.py) and the reports (report.py).
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from models import cli, report
from models.augment import Augmenter
from models.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from models.cnn import CNN
from models.data import DataError, Dataset, ImageSet, load_dataset, split_indices
from models.recipe import TrainConfig
from models.resume import Progress, load_state, restore, save_state, state_path
from models.transforms import Preprocessing

log = logging.getLogger("convserve.train")

_EVAL_BATCH = 1000


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
class Run:
    """One training run in progress: what `train` builds once and every epoch uses."""

    config: TrainConfig
    output: Path
    dist: Distributed
    dataset: Dataset
    splits: Splits
    model: CNN
    trainable: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    sampler: DistributedSampler[int]
    augment: Augmenter
    batch: int
    bf16: bool
    progress: Progress
    started: float = field(default_factory=time.perf_counter)
    load_seconds: float = 0.0


def main(argv: Sequence[str] | None = None) -> int:
    """Parses the command line, trains, and returns the exit status.

    0: trained and tested; 2: unusable data or resume state (the message says why);
    130: interrupted, with a valid checkpoint left at --output.
    """
    args = cli.parse_args(argv)
    dist = _init_distributed()
    logging.basicConfig(
        level=logging.INFO if dist.is_main else logging.WARNING, format="%(message)s"
    )
    previous_threads = torch.get_num_threads()
    choice = cli.choose_threads(args.threads, dist.local_world_size)
    torch.set_num_threads(choice.threads)
    log.info("torch threads: %d per process (%s)", choice.threads, choice.reason)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        output = Path(args.output)
        state = load_state(output) if args.resume else None
        config = TrainConfig.from_dict(state["config"]) if state else cli.config_from_args(args)
        return train(config, output, dist, state)
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
    config: TrainConfig,
    output: Path,
    dist: Distributed = Distributed(),
    state: dict[str, Any] | None = None,
) -> int:
    """Trains per `config` (continuing `state` when resuming); writes `output` and its reports.

    Returns 0 when every epoch ran and the test split was evaluated, 130 when interrupted
    (the checkpoint at `output` is then still a valid, loadable model).
    """
    started = time.perf_counter()
    recipe = config.recipe
    # Data: uint8 pixels in memory; the preprocessing is what the checkpoint will store.
    dataset = load_dataset(
        config.dataset, config.data_dir, config.image_size, _mode(config.mode), config.photo
    )
    splits = _make_splits(dataset, config)
    pre = dataset.preprocessing
    # Model, optimizer and learning-rate schedule.
    torch.manual_seed(config.seed)
    model = CNN(config.model_config(pre.channels, pre.height, pre.width, len(dataset.classes)))
    model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay
    )
    sampler: DistributedSampler[int] = DistributedSampler(
        splits.train, num_replicas=dist.world_size, rank=dist.rank, seed=config.seed
    )
    batch = max(1, recipe.batch_size // dist.world_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=recipe.lr,
        total_steps=recipe.epochs * math.ceil(len(sampler) / batch),
    )
    progress = restore(state, model, optimizer, scheduler) if state else Progress()
    run = Run(
        config=config,
        output=output,
        dist=dist,
        dataset=dataset,
        splits=splits,
        model=model,
        trainable=DistributedDataParallel(model) if dist.world_size > 1 else model,
        optimizer=optimizer,
        scheduler=scheduler,
        sampler=sampler,
        augment=Augmenter(recipe, pre, splits.train, config.seed, torch.get_num_threads()),
        batch=batch,
        bf16=recipe.bf16 and _native_bf16(),
        progress=progress,
        started=started,
        load_seconds=time.perf_counter() - started,
    )
    if dist.is_main:
        report.log_start(run)
    # The loop: train an epoch, validate, keep the best checkpoint, save the resume state.
    try:
        for epoch in range(progress.epoch + 1, recipe.epochs + 1):
            stats = train_epoch(run, epoch)
            if dist.is_main:
                _end_epoch(run, stats)
    except KeyboardInterrupt:
        if dist.is_main:
            _save_interrupted(run)
        return 130
    if dist.is_main:
        _finish(run)
    return 0


def train_epoch(run: Run, epoch: int) -> report.EpochStats:
    """One pass over this rank's shard; loss and accuracy are summed over all ranks."""
    run.sampler.set_epoch(epoch)
    torch.manual_seed(hash((run.config.seed, epoch, run.dist.rank)) % 2**63)
    indices = torch.tensor(list(run.sampler), dtype=torch.int64)
    recipe, pre = run.config.recipe, run.dataset.preprocessing
    run.trainable.train()
    totals = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, images
    started = time.perf_counter()
    with report.epoch_bar(run, epoch, len(indices)) as bar:
        for chunk in indices.split(run.batch):
            pixels = run.augment(run.splits.train.pixels[chunk], chunk)
            labels = run.splits.train.labels[chunk]
            inputs = pre.normalize(pixels).contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=run.bf16):
                logits = run.trainable(inputs)
                loss = F.cross_entropy(logits, labels, label_smoothing=recipe.label_smoothing)
            run.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            run.optimizer.step()
            run.scheduler.step()
            correct = int((logits.argmax(dim=1) == labels).sum())
            totals += torch.tensor([float(loss.detach()) * len(labels), correct, len(labels)])
            bar.update(len(labels) * run.dist.world_size)
    if run.dist.world_size > 1:
        torch_dist.all_reduce(totals)
    loss_sum, correct, images = totals.tolist()
    seconds = time.perf_counter() - started
    lr = float(run.optimizer.param_groups[0]["lr"])
    return report.EpochStats(epoch, loss_sum / images, correct / images, int(images), seconds, lr)


def evaluate(
    model: nn.Module, data: ImageSet, preprocessing: Preprocessing
) -> tuple[float, torch.Tensor]:
    """Mean cross-entropy over `data` and the (N,) predicted class indices, in eval mode."""
    model.eval()
    loss_sum = 0.0
    predictions = [torch.zeros(0, dtype=torch.int64)]
    with torch.inference_mode():
        for pixels, labels in _batches(data, _EVAL_BATCH):
            inputs = preprocessing.normalize(pixels).contiguous(memory_format=torch.channels_last)
            logits = model(inputs)
            loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
            predictions.append(logits.argmax(dim=1))
    return loss_sum / max(1, len(data)), torch.cat(predictions)


def _end_epoch(run: Run, stats: report.EpochStats) -> None:
    """Validates, keeps the best checkpoint, saves the resume state, logs the epoch line."""
    started = time.perf_counter()
    val_loss, predictions = evaluate(run.model, run.splits.val, run.dataset.preprocessing)
    val_accuracy = float((predictions == run.splits.val.labels).double().mean())
    progress = run.progress
    improved = val_accuracy > progress.best_val_accuracy
    progress.epoch = stats.epoch
    progress.train_seconds += stats.seconds
    progress.history.append(
        stats.row(val_loss, val_accuracy, val_seconds=time.perf_counter() - started)
    )
    if improved:
        progress.best_epoch, progress.best_val_accuracy = stats.epoch, val_accuracy
        save_checkpoint(_checkpoint(run), run.output)
    save_state(run.output, run.config, progress, run.model, run.optimizer, run.scheduler)
    report.log_epoch(stats, run.config.recipe.epochs, val_accuracy, improved)


def _finish(run: Run) -> None:
    """Tests the best checkpoint, stamps the result into it and writes the reports."""
    best = load_checkpoint(run.output)
    model = best.build_model()
    test_started = time.perf_counter()
    _, predictions = evaluate(model, run.splits.test, best.preprocessing)
    tested = {"dataset": report.Evaluation.of(predictions, run.splits.test.labels, best.classes)}
    if best.preprocessing.photo is not None and best.preprocessing.mode == "L":
        photos = report.photo_test_set(run.splits.test, best.preprocessing)
        _, predictions = evaluate(model, photos, best.preprocessing)
        tested["photo"] = report.Evaluation.of(predictions, photos.labels, best.classes)
    test_seconds = time.perf_counter() - test_started
    training = dict(
        best.training,
        epochs=run.progress.epoch,
        test_accuracy=tested["dataset"].accuracy,
        photo_test_accuracy=tested["photo"].accuracy if "photo" in tested else None,
        seconds=round(run.progress.train_seconds, 3),
    )
    best = replace(best, training=training)
    save_checkpoint(best, run.output)
    state_path(run.output).unlink(missing_ok=True)
    report.write_reports(run, best, tested, test_seconds)


def _checkpoint(run: Run, **extra: Any) -> Checkpoint:
    """The current weights with the run's classes, preprocessing and training summary."""
    config, progress, dataset, recipe = run.config, run.progress, run.dataset, run.config.recipe
    training = {
        "name": f"{dataset.name.removeprefix('folder:')}-{config.preset}",
        "dataset": dataset.name,
        "data_dir": config.data_dir,
        "preset": config.preset,
        "epochs": progress.epoch,
        "epochs_planned": recipe.epochs,
        "best_epoch": progress.best_epoch,
        "val_accuracy": progress.best_val_accuracy if progress.best_epoch else None,
        "test_accuracy": None,
        "test_split": run.splits.test_name,
        "train_images": len(run.splits.train),
        "photo_renderings": len(run.augment.photos),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(progress.train_seconds, 3),
        "seed": config.seed,
        "batch_size": recipe.batch_size,
        "lr": recipe.lr,
        "world_size": run.dist.world_size,
        "precision": "bf16" if run.bf16 else "fp32",
        "skipped_files": dataset.skipped,
        "torch": str(torch.__version__),
        **extra,
    }
    state_dict = {name: t.detach().clone() for name, t in run.model.state_dict().items()}
    return Checkpoint(
        run.model.config, state_dict, list(dataset.classes), dataset.preprocessing, training
    )


def _save_interrupted(run: Run) -> None:
    """Keeps the best checkpoint; with none saved yet, saves the current weights instead."""
    if not run.progress.best_epoch:
        save_checkpoint(_checkpoint(run, interrupted=True), run.output)
    log.warning(
        "interrupted after %d/%d epochs; %s is a valid checkpoint; continue with --resume",
        run.progress.epoch,
        run.config.recipe.epochs,
        run.output,
    )


def _batches(data: ImageSet, batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for start in range(0, len(data), batch):
        yield data.pixels[start : start + batch], data.labels[start : start + batch]


def _make_splits(dataset: Dataset, config: TrainConfig) -> Splits:
    train, val = dataset.train, dataset.val
    if val is None:
        kept, held = split_indices(len(train), config.val_fraction, config.seed)
        train, val = train.subset(kept), train.subset(held)
    if dataset.test is not None:
        return Splits(train, val, dataset.test, "test")
    return Splits(train, val, val, "val")


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


if __name__ == "__main__":
    sys.exit(main())
