"""models.checkpoint: round trip, refusal of pickled code, clear errors for damaged files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.checkpoint import (
    FORMAT_VERSION,
    Checkpoint,
    CheckpointError,
    checkpoint_version,
    load_checkpoint,
    save_checkpoint,
)
from models.cnn import CNN, CNNConfig
from models.transforms import Preprocessing

CONFIG = CNNConfig(in_channels=1, height=12, width=12, num_classes=3, channels=(4, 8))
PRE = Preprocessing(mode="L", height=12, width=12, mean=(0.3,), std=(0.4,), background=0)


def _checkpoint(config: CNNConfig = CONFIG) -> Checkpoint:
    torch.manual_seed(0)
    state = CNN(config).state_dict()
    training = {"dataset": "unit", "epochs": 1, "test_accuracy": 0.5, "date": "2026-01-01"}
    return Checkpoint(config, state, ["a", "b", "c"], PRE, training)


def _payload(path: Path) -> dict[str, Any]:
    payload = torch.load(path, weights_only=True)
    assert isinstance(payload, dict)
    return payload


class _RunsCode:
    """Unpickling this runs `exec(code)`: what a malicious checkpoint would do."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (exec, (self.code,))


def test_round_trip_keeps_everything(tmp_path: Path) -> None:
    original = _checkpoint()
    path = tmp_path / "model.pt"
    save_checkpoint(original, path)
    loaded = load_checkpoint(path)
    assert loaded.config == original.config
    assert loaded.classes == original.classes
    assert loaded.preprocessing == original.preprocessing
    assert loaded.training == original.training
    for name, tensor in original.state_dict.items():
        assert torch.equal(loaded.state_dict[name], tensor)
    image = torch.randn(2, 1, 12, 12)
    with torch.inference_mode():
        assert torch.equal(loaded.build_model()(image), original.build_model()(image))
    assert _payload(path)["format_version"] == FORMAT_VERSION
    assert _payload(path)["input_shape"] == [1, 12, 12]


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "model.pt"
    save_checkpoint(_checkpoint(), path)
    save_checkpoint(_checkpoint(), path)
    assert os.listdir(path.parent) == ["model.pt"]


def test_training_summary_must_be_plain_types(tmp_path: Path) -> None:
    checkpoint = _checkpoint()
    checkpoint.training["version"] = torch.__version__  # a str subclass: stored as str
    save_checkpoint(checkpoint, tmp_path / "ok.pt")
    assert type(load_checkpoint(tmp_path / "ok.pt").training["version"]) is str
    checkpoint.training["when"] = object()
    with pytest.raises(TypeError, match=r"training\.when"):
        save_checkpoint(checkpoint, tmp_path / "bad.pt")
    assert not (tmp_path / "bad.pt").exists()


def test_version_is_a_content_hash(tmp_path: Path) -> None:
    save_checkpoint(_checkpoint(), tmp_path / "a.pt")
    save_checkpoint(_checkpoint(CNNConfig(height=12, width=12, num_classes=3)), tmp_path / "b.pt")
    version = checkpoint_version(tmp_path / "a.pt")
    assert len(version) == 12 and int(version, 16) >= 0
    assert version != checkpoint_version(tmp_path / "b.pt")


def test_pickled_code_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = _checkpoint().to_payload()
    payload["training"] = {"note": _RunsCode(f"open({str(marker)!r}, 'w').close()")}
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="refused") as raised:
        load_checkpoint(path)
    assert str(path) in str(raised.value)
    assert not marker.exists()
    # The file really is armed: a trusting (weights_only=False) load would have run the code.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_truncated_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    save_checkpoint(_checkpoint(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as raised:
        load_checkpoint(path)
    assert str(path) in str(raised.value)


# b"R" and b"\x80\x02}q\x00R": pickle opcodes that make torch's weights-only unpickler raise
# IndexError (seen with random bytes); the rest raised RuntimeError/EOFError/ValueError.
@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"R", b"\x80\x02}q\x00R"])
def test_garbage_is_a_clear_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=str(path)):
        load_checkpoint(path)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@settings(max_examples=200, deadline=None)
@given(content=st.binary(max_size=512))
def test_any_bytes_are_a_checkpoint_error(
    tmp_path_factory: pytest.TempPathFactory, content: bytes
) -> None:
    path = tmp_path_factory.mktemp("bytes") / "model.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_checkpoint(tmp_path / "absent.pt")


def test_wrong_shape_names_the_tensor_and_the_file(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    payload = _checkpoint().to_payload()
    wider = CNNConfig(height=12, width=12, num_classes=3, channels=(4, 16))
    payload["state_dict"] = CNN(wider).state_dict()
    torch.save(payload, path)
    with pytest.raises(CheckpointError) as raised:
        load_checkpoint(path)
    message = str(raised.value)
    assert str(path) in message
    assert "features.1.0.weight" in message and "(16, 4, 3, 3)" in message


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format_version": 99}, "format version 99 is not supported"),
        ({"classes": ["a", "b"]}, "2 class names for a model with 3 outputs"),
        ({"classes": ["a", "a", "b"]}, "not unique"),
        ({"input_shape": [3, 12, 12]}, "does not match the config"),
        ({"config": {"channels": [4], "height": 12, "width": 12, "bogus": 1}}, "invalid config"),
        ({"state_dict": {}}, "missing"),
    ],
)
def test_inconsistent_checkpoints_are_refused(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    path = tmp_path / "model.pt"
    torch.save({**_checkpoint().to_payload(), **change}, path)
    with pytest.raises(CheckpointError, match=message) as raised:
        load_checkpoint(path)
    assert str(path) in str(raised.value)


def test_non_finite_weights_are_refused(tmp_path: Path) -> None:
    checkpoint = _checkpoint()
    checkpoint.state_dict["classifier.1.bias"] = torch.full((3,), float("nan"))
    path = tmp_path / "model.pt"
    save_checkpoint(checkpoint, path)
    with pytest.raises(CheckpointError, match="NaN"):
        load_checkpoint(path)
