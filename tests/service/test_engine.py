"""service.engine: the serving fast path computes what the plain eager model computes."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from models.checkpoint import load_checkpoint
from service.config import Settings
from service.engine import Engine, LoadedModel


def reference(checkpoint: Path, pixels: torch.Tensor) -> torch.Tensor:
    """The plain eager model: NCHW weights, Preprocessing.normalize, softmax."""
    loaded = load_checkpoint(checkpoint)
    model = loaded.build_model()
    with torch.no_grad():
        return torch.softmax(model(loaded.preprocessing.normalize(pixels)), dim=1)


def random_pixels(model: LoadedModel, count: int, seed: int) -> torch.Tensor:
    shape = model.checkpoint.config.input_shape
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, *shape), dtype=torch.uint8, generator=generator)


@pytest.fixture(params=["tiny_checkpoint", "tiny_rgb_checkpoint"])
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    """A started fp32 engine (default settings) on a grey or an RGB checkpoint."""
    path: Path = request.getfixturevalue(request.param)
    running = Engine(Settings(model_path=path, reload_interval_s=0))
    running.start()
    assert running.ready, running.load_error
    yield running
    running.stop()


@pytest.mark.parametrize("count", [1, 3, 32])
def test_fp32_forward_equals_the_plain_eager_model(engine: Engine, count: int) -> None:
    model = engine.model
    assert model is not None and engine.settings.precision == "fp32"
    pixels = random_pixels(model, count, seed=count)
    served = engine.forward(model, pixels)
    expected = reference(engine.settings.model_path, pixels)
    assert served.dtype == torch.float32 and served.shape == expected.shape
    torch.testing.assert_close(served, expected, rtol=1e-4, atol=1e-6)
    assert torch.equal(served.argmax(dim=1), expected.argmax(dim=1))


def test_batched_requests_get_the_eager_models_rows(engine: Engine) -> None:
    model = engine.model
    assert model is not None
    pixels = random_pixels(model, 40, seed=7)
    served_model = engine.default
    assert served_model is not None
    with ThreadPoolExecutor(4) as pool:
        answers = list(
            pool.map(
                lambda i: served_model.infer(lambda _model: pixels[i : i + 4]), range(0, 40, 4)
            )
        )
    assert all(answer.model is model for answer in answers)
    served = torch.cat([answer.probabilities for answer in answers])
    torch.testing.assert_close(
        served, reference(engine.settings.model_path, pixels), rtol=1e-4, atol=1e-6
    )


def test_a_model_folder_serves_each_file_under_its_stem(
    tiny_checkpoint: Path, tiny_rgb_checkpoint: Path, tmp_path: Path
) -> None:
    shutil.copy(tiny_checkpoint, tmp_path / "model.pt")
    shutil.copy(tiny_rgb_checkpoint, tmp_path / "rgb.pt")
    (tmp_path / "model.state.pt").write_bytes(b"resume state, not a checkpoint")
    engine = Engine(Settings(model_dir=tmp_path, reload_interval_s=0))
    engine.reload()
    assert sorted(engine.models) == ["model", "rgb"]
    assert engine.default is engine.get("model") and engine.ready
    rgb = engine.get("rgb")
    assert rgb is not None and rgb.current is not None
    assert rgb.current.classes == ["blue", "green", "red"]
    answer = rgb.infer(lambda model: torch.zeros((2, *model.checkpoint.config.input_shape)))
    assert answer.probabilities.shape == (2, 3) and answer.model is rgb.current

    # A bad file is refused and the old version serves on; a removed file is unloaded.
    serving = rgb.current
    (tmp_path / "rgb.pt").write_bytes(b"corrupt")
    assert not engine.reload()
    assert rgb.current is serving
    (tmp_path / "rgb.pt").unlink()
    engine.reload()
    assert sorted(engine.models) == ["model"] and rgb.current is None


def test_the_default_model_can_be_named(tiny_checkpoint: Path, tmp_path: Path) -> None:
    for name in ("a", "b"):
        shutil.copy(tiny_checkpoint, tmp_path / f"{name}.pt")
    engine = Engine(Settings(model_dir=tmp_path, reload_interval_s=0))
    engine.reload()
    assert engine.default is engine.get("a")
    named = Engine(Settings(model_dir=tmp_path, default_model="b", reload_interval_s=0))
    named.reload()
    assert named.default is named.get("b")
    missing = Engine(Settings(model_dir=tmp_path, default_model="c", reload_interval_s=0))
    missing.reload()
    assert missing.default is None and not missing.ready
    assert missing.load_error == "CONVSERVE_DEFAULT_MODEL 'c' is none of a, b"


def test_the_one_checkpoint_is_served_under_model_name(tiny_checkpoint: Path) -> None:
    engine = Engine(Settings(model_path=tiny_checkpoint, model_name="fashion", reload_interval_s=0))
    engine.reload()
    assert sorted(engine.models) == ["fashion"] and engine.default is engine.get("fashion")
    unnamed = Engine(Settings(model_path=tiny_checkpoint, reload_interval_s=0))
    unnamed.reload()
    assert sorted(unnamed.models) == [tiny_checkpoint.stem]


@pytest.mark.parametrize("name", ["", "a/b", "-x", "x" * 65])
def test_a_model_name_that_is_no_path_segment_is_refused(name: str) -> None:
    with pytest.raises(ValidationError):
        Settings(model_name=name)
