"""models.train: the entrypoint end to end on tiny data, interruption, resume, torchrun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from models import train as train_module
from models.augment import random_shift
from models.checkpoint import load_checkpoint
from models.cli import config_from_args, parse_args, pick_threads
from models.data import FASHION_MNIST_CLASSES
from models.recipe import PRESETS, TrainConfig
from models.train import main

REPO = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _train_args(data_dir: Path, output: Path, *extra: str) -> list[str]:
    return ["--data-dir", str(data_dir), "--output", str(output), *extra]


def _subprocess_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def test_training_writes_checkpoint_and_reports(tiny_checkpoint: Path) -> None:
    checkpoint = load_checkpoint(tiny_checkpoint)
    assert checkpoint.config.input_shape == (1, 28, 28)
    assert tuple(checkpoint.classes) == FASHION_MNIST_CLASSES
    assert checkpoint.preprocessing.mode == "L" and checkpoint.preprocessing.background == 0
    training = checkpoint.training
    for key in ("dataset", "epochs", "test_accuracy", "date", "preset", "seconds", "name"):
        assert key in training
    assert training["dataset"] == "fashion-mnist" and training["epochs"] == 2
    assert 0.0 <= training["test_accuracy"] <= 1.0
    assert training["test_split"] == "test" and training["world_size"] == 1
    folder = tiny_checkpoint.parent
    assert sorted(p.name for p in folder.iterdir()) == [
        "confusion-photo.png",
        "confusion.png",
        "curves.png",
        "feature-maps.png",
        "kernels.png",
        "metrics.json",
        "model.pt",
    ]
    for name in ("curves.png", "confusion.png", "confusion-photo.png"):
        assert (folder / name).read_bytes()[:8] == PNG_MAGIC
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] == training["test_accuracy"]
    assert set(metrics["test"]["per_class_accuracy"]) == set(FASHION_MNIST_CLASSES)
    confusion = metrics["test"]["confusion_matrix"]
    assert len(confusion) == 10 and sum(map(sum, confusion)) == metrics["images"]["test"] == 40
    assert [row["epoch"] for row in metrics["history"]] == [1, 2]
    assert metrics["model"]["parameters"] == checkpoint.build_model().summary().parameters
    assert metrics["timings"]["single_image_forward_ms"] > 0
    assert metrics["images"] == {"train": 108, "val": 12, "test": 40}
    photo = metrics["photo_test"]
    assert photo["accuracy"] == training["photo_test_accuracy"]
    assert set(photo["per_class_accuracy"]) == set(FASHION_MNIST_CLASSES)
    assert sum(map(sum, photo["confusion_matrix"])) == 40
    assert metrics["photo_renderings"] == training["photo_renderings"] == 27  # 108 / 4


def test_checkpoint_loads_with_plain_torch_weights_only(tiny_checkpoint: Path) -> None:
    payload = torch.load(tiny_checkpoint, weights_only=True)
    assert payload["input_shape"] == [1, 28, 28]


def test_rgb_folder_checkpoint(tiny_rgb_checkpoint: Path) -> None:
    checkpoint = load_checkpoint(tiny_rgb_checkpoint)
    assert checkpoint.config.input_shape == (3, 32, 32)
    assert checkpoint.classes == ["blue", "green", "red"]
    assert checkpoint.preprocessing.mode == "RGB"
    assert checkpoint.training["test_split"] == "val"  # a folder without test/ is tested on val


def test_training_learns_the_tiny_patterns(tiny_idx_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "model.pt"
    assert main(_train_args(tiny_idx_dir, output, "--epochs", "6", "--batch-size", "16")) == 0
    assert load_checkpoint(output).training["test_accuracy"] >= 0.9


def test_interrupt_keeps_a_valid_checkpoint_and_resume_finishes(
    tiny_idx_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    output = tmp_path / "model.pt"
    real_train_epoch = train_module.train_epoch

    def interrupted_at_epoch_3(run: Any, epoch: int) -> Any:
        if epoch == 3:
            raise KeyboardInterrupt
        return real_train_epoch(run, epoch)

    monkeypatch.setattr(train_module, "train_epoch", interrupted_at_epoch_3)
    assert main(_train_args(tiny_idx_dir, output, "--epochs", "4", "--seed", "5")) == 130
    assert load_checkpoint(output).training["epochs"] <= 2
    state = output.with_name("model.state.pt")
    assert state.is_file()
    monkeypatch.undo()
    # The command line differs, but --resume repeats the saved run (4 epochs, seed 5).
    assert main(_train_args(tiny_idx_dir, output, "--epochs", "99", "--resume")) == 0
    training = load_checkpoint(output).training
    assert (training["epochs"], training["seed"]) == (4, 5)
    assert training["test_accuracy"] is not None
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert [row["epoch"] for row in metrics["history"]] == [1, 2, 3, 4]
    assert not state.exists()


def test_interrupt_before_any_epoch_still_leaves_a_checkpoint(
    tiny_idx_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(run: Any, epoch: int) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "train_epoch", interrupted)
    output = tmp_path / "model.pt"
    assert main(_train_args(tiny_idx_dir, output)) == 130
    assert load_checkpoint(output).training["interrupted"] is True


def test_resume_without_state_is_a_clear_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert main(["--output", str(tmp_path / "model.pt"), "--resume"]) == 2
    assert "no training state to resume" in caplog.text


def test_missing_dataset_is_a_clear_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert main(_train_args(tmp_path / "nowhere", tmp_path / "model.pt")) == 2
    assert "train-images-idx3-ubyte" in caplog.text
    assert not (tmp_path / "model.pt").exists()


def test_ctrl_c_of_the_real_command_leaves_a_valid_checkpoint(
    tiny_idx_dir: Path, tmp_path: Path
) -> None:
    output = tmp_path / "model.pt"
    command = [sys.executable, "-m", "models.train", *_train_args(tiny_idx_dir, output)]
    process = subprocess.Popen(
        [*command, "--epochs", "2000"],
        env=_subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while not output.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert output.exists(), "no checkpoint after the first epoch"
        process.send_signal(signal.SIGINT)
        log, _ = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, log.decode()
    assert b"valid checkpoint" in log
    assert load_checkpoint(output).training["epochs"] >= 1


@pytest.mark.slow
def test_torchrun_two_processes(tiny_idx_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "model.pt"
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"),
        *("-m", "models.train", *_train_args(tiny_idx_dir, output, "--epochs", "2")),
    ]
    result = subprocess.run(
        command, env=_subprocess_env(), capture_output=True, text=True, timeout=240, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    checkpoint = load_checkpoint(output)
    assert checkpoint.training["world_size"] == 2 and checkpoint.training["epochs"] == 2
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["timings"]["processes"] == 2
    assert metrics["history"][0]["images_per_second"] > 0
    # Both ranks trained: the epoch covers the whole training split once (108 images).
    assert "2 process(es)" in result.stderr + result.stdout


def test_random_shift_moves_each_image_within_the_limit() -> None:
    torch.manual_seed(0)
    image = torch.zeros(1, 1, 5, 5, dtype=torch.uint8)
    image[0, 0, 2, 2] = 200
    shifted = random_shift(image.repeat(64, 1, 1, 1), limit=1, fill=7)
    for sample in shifted:
        bright = (sample[0] == 200).nonzero().tolist()
        assert len(bright) == 1 and all(1 <= v <= 3 for v in bright[0])
        assert set(sample.unique().tolist()) <= {0, 7, 200}
    assert len({tuple((s[0] == 200).nonzero()[0].tolist()) for s in shifted}) == 9


def test_config_round_trip_and_preset_overrides() -> None:
    args = parse_args(
        ["--preset", "best", "--epochs", "3", "--dataset", "mnist", "--image-size", "24x20"]
    )
    config = config_from_args(args)
    assert config.recipe.epochs == 3
    assert config.recipe.model == PRESETS["best"].model
    assert config.recipe.flip is False  # never mirror digits
    assert config.image_size == (24, 20)
    assert TrainConfig.from_dict(config.to_dict()) == config
    plain = config_from_args(parse_args(["--no-augment"]))
    assert (plain.recipe.flip, plain.recipe.shift, plain.recipe.photos) == (False, 0, 0.0)
    assert config_from_args(parse_args(["--no-photo"])).photo is False


@pytest.mark.parametrize(
    ("timings", "expected"),
    [({1: 0.060, 2: 0.035}, 2), ({1: 0.040, 2: 0.038}, 1), ({1: 0.030, 2: 0.120}, 1)],
)
def test_more_threads_must_clearly_win_the_trial(timings: dict[int, float], expected: int) -> None:
    choice = pick_threads(timings, "2 CPU(s) for 1 process(es)")
    assert choice.threads == expected
    assert "ms with 1" in choice.reason and "ms with 2" in choice.reason


def test_the_log_says_how_many_threads_and_why(
    tiny_idx_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    assert main(_train_args(tiny_idx_dir, tmp_path / "m.pt", "--epochs", "1")) == 0
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("torch threads")]
    assert len(lines) == 1 and "CPU(s)" in lines[0]


def test_main_restores_the_thread_count(tiny_idx_dir: Path, tmp_path: Path) -> None:
    before = torch.get_num_threads()
    assert (
        main(_train_args(tiny_idx_dir, tmp_path / "m.pt", "--epochs", "1", "--threads", "1")) == 0
    )
    assert torch.get_num_threads() == before
