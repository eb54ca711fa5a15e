"""The checkpoint format: one self-describing file, written atomically, loaded weights_only.

A checkpoint is a dict of plain types and tensors:
    format_version  int, FORMAT_VERSION
    config          CNNConfig.to_dict()
    state_dict      parameter and buffer tensors
    classes         class names in output-index order
    input_shape     [channels, height, width]
    preprocessing   Preprocessing.to_dict() (mode, size, mean, std, resampling, background,
                    photo conversion or None)
    training        summary: dataset, epochs, accuracy, date, ... (plain types)
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from models.cnn import CNN, CNNConfig
from models.transforms import Preprocessing

FORMAT_VERSION = 1
_REQUIRED = ("format_version", "config", "state_dict", "classes", "input_shape", "preprocessing")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


@dataclass
class Checkpoint:
    """A trained model with everything needed to serve it."""

    config: CNNConfig
    state_dict: dict[str, torch.Tensor]
    classes: list[str]
    preprocessing: Preprocessing
    training: dict[str, Any] = field(default_factory=dict)

    def build_model(self) -> CNN:
        """A CNN with these weights, in eval mode."""
        model = CNN(self.config)
        model.load_state_dict(self.state_dict)
        return model.eval()

    def to_payload(self) -> dict[str, Any]:
        """The dict that is written to disk."""
        return {
            "format_version": FORMAT_VERSION,
            "config": self.config.to_dict(),
            "state_dict": {k: v.detach().cpu().contiguous() for k, v in self.state_dict.items()},
            "classes": list(self.classes),
            "input_shape": list(self.config.input_shape),
            "preprocessing": self.preprocessing.to_dict(),
            "training": _plain(self.training, "training"),
        }


def save_checkpoint(checkpoint: Checkpoint, path: str | Path) -> None:
    """Writes to a temporary file beside `path`, fsyncs it, then renames it into place.

    A reader (or a crash) therefore sees either the old file or the complete new one.
    """
    save_atomic(checkpoint.to_payload(), path)


def save_atomic(payload: Any, path: str | Path) -> None:
    """torch.save of `payload` to `path` via a fsynced temporary file and a rename.

    The file is readable by everyone (0644). Used for checkpoints and the --resume state.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide the model from a non-root server
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Loads and validates a checkpoint; never executes pickled code.

    Raises CheckpointError naming the file for a missing, truncated, corrupt, malicious,
    wrong-version or inconsistent (shapes, classes, normalization) checkpoint.
    """
    source = Path(path)
    if not source.is_file():
        raise CheckpointError(f"{source}: no such checkpoint file")
    try:
        payload = torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{source}: refused, it holds objects that weights_only loading does not allow "
            f"(possibly code): {_first_line(exc)}"
        ) from exc
    except Exception as exc:  # any bytes at all: the unpickler raises IndexError, KeyError, ...
        raise CheckpointError(
            f"{source}: not a readable checkpoint (truncated or corrupt): {_first_line(exc)}"
        ) from exc
    return _validate(source, payload)


def checkpoint_version(path: str | Path) -> str:
    """Content hash of the checkpoint file (first 12 hex digits of its SHA-256)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:12]


def _validate(source: Path, payload: Any) -> Checkpoint:
    if not isinstance(payload, dict):
        found = type(payload).__name__
        raise CheckpointError(f"{source}: expected a checkpoint dict, found {found}")
    missing = [key for key in _REQUIRED if key not in payload]
    if missing:
        raise CheckpointError(f"{source}: missing fields {', '.join(missing)}")
    if payload["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{source}: format version {payload['format_version']!r} is not supported "
            f"(this build reads version {FORMAT_VERSION})"
        )
    try:
        config = CNNConfig.from_dict(payload["config"])
        preprocessing = Preprocessing.from_dict(payload["preprocessing"])
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{source}: invalid config or preprocessing: {exc}") from exc
    classes = payload["classes"]
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise CheckpointError(f"{source}: classes must be a list of strings")
    if len(classes) != config.num_classes:
        raise CheckpointError(
            f"{source}: {len(classes)} class names for a model with {config.num_classes} outputs"
        )
    if len(set(classes)) != len(classes):
        raise CheckpointError(f"{source}: class names are not unique")
    if list(payload["input_shape"]) != list(config.input_shape):
        raise CheckpointError(
            f"{source}: input_shape {payload['input_shape']} does not match the config "
            f"{list(config.input_shape)}"
        )
    if (preprocessing.channels, preprocessing.height, preprocessing.width) != config.input_shape:
        raise CheckpointError(
            f"{source}: preprocessing gives {preprocessing.mode} {preprocessing.height}x"
            f"{preprocessing.width} but the model takes {list(config.input_shape)}"
        )
    state_dict = payload["state_dict"]
    _check_state_dict(source, config, state_dict)
    training = payload.get("training") or {}
    return Checkpoint(config, state_dict, classes, preprocessing, dict(training))


def _check_state_dict(source: Path, config: CNNConfig, state_dict: Any) -> None:
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"{source}: state_dict is not a dict")
    expected = CNN(config).state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: state_dict does not match the config "
            f"(missing: {missing or 'none'}, unexpected: {unexpected or 'none'})"
        )
    for name, tensor in expected.items():
        found = state_dict[name]
        if not isinstance(found, torch.Tensor) or found.shape != tensor.shape:
            shape = tuple(found.shape) if isinstance(found, torch.Tensor) else type(found).__name__
            raise CheckpointError(
                f"{source}: tensor {name} has shape {shape}, the config needs {tuple(tensor.shape)}"
            )
        if found.is_floating_point() and not torch.isfinite(found).all():
            raise CheckpointError(f"{source}: tensor {name} holds NaN or infinite values")


def _plain(value: Any, where: str) -> Any:
    """`value` as the plain types weights_only loading accepts (str subclasses become str).

    Raises TypeError naming the entry for anything else, before a file is written.
    """
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, list | tuple):
        return [_plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, dict):
        return {_plain(key, where): _plain(item, f"{where}.{key}") for key, item in value.items()}
    raise TypeError(f"{where} is a {type(value).__name__}; checkpoints hold plain types only")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
