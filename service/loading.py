"""One checkpoint file -> a LoadedModel ready to serve (weights laid out, normalization folded)."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from models.checkpoint import Checkpoint, checkpoint_version, load_checkpoint
from models.cnn import ModelSummary
from service.batch_plan import BatchingPlan

log = logging.getLogger("convserve.engine")


@dataclass(frozen=True)
class LoadedModel:
    """One version of a served model; immutable, swapped whole on reload.

    `name` is the name it is served under (the file stem). `module` holds its weights in
    channels_last layout (see `prepare_module`); `scale` and `shift` fold the checkpoint's
    0-255 -> 0-1 -> mean/std normalization into one multiply-add.
    """

    checkpoint: Checkpoint
    module: nn.Module
    name: str
    version: str
    summary: ModelSummary
    file_signature: tuple[int, int, int]
    scale: torch.Tensor
    shift: torch.Tensor
    batching: BatchingPlan | None = None  # chosen once it is warmed up (service.batch_plan)

    @property
    def classes(self) -> list[str]:
        """Class names in output-index order."""
        return self.checkpoint.classes


def load_model(path: Path, name: str, signature: tuple[int, int, int]) -> LoadedModel:
    """The checkpoint at `path` (loaded with weights_only=True) ready to serve as `name`.

    Raises CheckpointError (or OSError) naming the file when it cannot be served.
    """
    started = time.perf_counter()
    version = checkpoint_version(path)
    checkpoint = load_checkpoint(path)
    module = checkpoint.build_model()
    summary = module.summary()
    scale, shift = normalization_constants(checkpoint)
    loaded = LoadedModel(
        checkpoint, prepare_module(module), name, version, summary, signature, scale, shift
    )
    log.info("loaded %s in %.2fs", path, time.perf_counter() - started)
    return loaded


def file_signature(path: Path) -> tuple[int, int, int]:
    """(inode, size, mtime) of `path`: changes whenever the file is replaced or rewritten."""
    stat = os.stat(path)
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


def prepare_module(module: nn.Module) -> nn.Module:
    """The eval-mode module with its weights in channels_last layout, ready to serve.

    With NCHW weights eager CPU max-pooling falls back to a slow scalar kernel; channels_last
    keeps every layer on the vectorized oneDNN/NHWC kernels (see bench/results.md).
    """
    return module.eval().to(memory_format=torch.channels_last)  # type: ignore[call-overload]


def normalization_constants(checkpoint: Checkpoint) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift), each (C, 1, 1): (x / 255 - mean) / std == x * scale + shift."""
    pre = checkpoint.preprocessing
    mean = torch.tensor(pre.mean, dtype=torch.float64).view(-1, 1, 1)
    std = torch.tensor(pre.std, dtype=torch.float64).view(-1, 1, 1)
    return (1.0 / (255.0 * std)).float(), (-mean / std).float()
