"""What survives an interrupted run: the progress so far and the state `--resume` continues from.

The state lives beside the checkpoint (checkpoints/model.pt -> checkpoints/model.state.pt), is
written atomically after every epoch and removed when the run finishes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.checkpoint import CheckpointError, save_atomic
from models.recipe import TrainConfig

STATE_VERSION = 2


@dataclass
class Progress:
    """The epochs done, their log lines, the best so far and the training time spent."""

    epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_accuracy: float = -1.0
    train_seconds: float = 0.0


def state_path(output: Path) -> Path:
    """The training state beside the checkpoint: checkpoints/model.pt -> model.state.pt."""
    return output.with_name(f"{output.stem}.state.pt")


def save_state(
    output: Path,
    config: TrainConfig,
    progress: Progress,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> None:
    """Writes everything needed to continue the run that writes `output`."""
    save_atomic(
        {
            "state_version": STATE_VERSION,
            "config": config.to_dict(),
            "progress": asdict(progress),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
        },
        state_path(output),
    )


def load_state(output: Path) -> dict[str, Any]:
    """The state saved by an interrupted run writing to `output` (weights_only loading).

    Raises CheckpointError when there is none or it is unreadable or of another version.
    """
    path = state_path(output)
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


def restore(
    state: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> Progress:
    """Loads the saved weights, optimizer and schedule into place; returns the saved progress."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return Progress(**state["progress"])
