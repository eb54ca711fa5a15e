"""The `convserve-train` command line: its arguments, the run they describe, the thread count."""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from models.cnn import CNN
from models.recipe import PRESETS, TrainConfig

DEFAULT_OUTPUT = Path("checkpoints/model.pt")
_TRIAL_BATCH = 128
_TRIAL_ROUNDS = 3
# More threads must beat one thread by this factor to be chosen: a thread that waits for a
# core taken by another process stalls every step, so a tie goes to the single thread.
_TRIAL_MARGIN = 1.15


@dataclass(frozen=True)
class ThreadChoice:
    """The torch threads per process and why, in words for the log."""

    threads: int
    reason: str


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The parsed command line (argparse exits with status 2 on a bad one)."""
    return _parser().parse_args(argv)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The run the arguments describe: the preset with the command line's overrides."""
    recipe = PRESETS[args.preset]
    overrides = {
        name: getattr(args, name)
        for name in ("epochs", "batch_size", "lr")
        if getattr(args, name) is not None
    }
    if args.bf16 is not None:
        overrides["bf16"] = args.bf16
    if args.augment is False:
        overrides.update(flip=False, shift=0, photos=0.0)
    if args.dataset == "mnist":
        overrides["flip"] = False  # a mirrored digit is not the same digit
    return TrainConfig(
        dataset=args.dataset,
        data_dir=args.data_dir,
        preset=args.preset,
        recipe=replace(recipe, **overrides),
        seed=args.seed,
        val_fraction=args.val_fraction,
        image_size=args.image_size,
        mode=args.mode,
        photo=args.photo,
    )


def choose_threads(requested: int, local_processes: int) -> ThreadChoice:
    """`requested` threads when given (> 0); otherwise what a short trial shows is fastest.

    The CPUs this process may use are shared among this machine's training processes; when
    that leaves more than one, a few training steps of the default network are timed with one
    thread and with all of them, and the single thread wins unless the others are clearly
    faster (other programs busy on the cores make extra threads wait rather than help).
    """
    if requested > 0:
        return ThreadChoice(requested, "--threads")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    share = max(1, (cpus or 1) // local_processes)
    where = f"{cpus} CPU(s) for {local_processes} process(es)"
    if share == 1:
        return ThreadChoice(1, f"{where}: one each")
    timings = {threads: _trial_step_seconds(threads) for threads in (1, share)}
    return pick_threads(timings, where)


def pick_threads(timings: dict[int, float], where: str) -> ThreadChoice:
    """The thread count of the fastest trial, preferring fewer threads unless clearly beaten."""
    fewest = min(timings)
    best = min(
        timings, key=lambda threads: timings[threads] * (1 if threads == fewest else _TRIAL_MARGIN)
    )
    measured = ", ".join(f"{timings[t] * 1000:.0f} ms with {t}" for t in sorted(timings))
    return ThreadChoice(best, f"{where}; a trial training step took {measured}")


def _trial_step_seconds(threads: int) -> float:
    """Median time of a training step of the default network at `threads` torch threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    model = CNN(PRESETS["default"].model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    images = torch.randn(_TRIAL_BATCH, 1, 28, 28, generator=generator)
    labels = torch.randint(0, 10, (_TRIAL_BATCH,), generator=generator)
    timings = []
    try:
        for round_ in range(_TRIAL_ROUNDS + 1):
            started = time.perf_counter()
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if round_:  # the first step pays for allocations
                timings.append(time.perf_counter() - started)
    finally:
        torch.set_num_threads(previous)
    return statistics.median(timings)


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
        help="--no-augment turns off the preset's random flips, shifts and photo renderings",
    )
    parser.add_argument(
        "--photo",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="store the product-photo conversion in the checkpoint and train on photo "
        "renderings (default: on for fashion-mnist and mnist, off for folders)",
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
        help="torch threads per process (default: the CPUs divided among torchrun processes, "
        "or 1 when a short trial shows more threads are not faster)",
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
