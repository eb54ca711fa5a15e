"""samples/: what scripts/make_samples.py writes is what the repo holds, labels included."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from bench.server import REPO
from models.data import DEFAULT_FASHION_MNIST_DIR, FASHION_MNIST_CLASSES

SAMPLES = REPO / "samples"
PAGE_SAMPLES = REPO / "service" / "static" / "samples"


def test_the_index_names_every_sample_with_a_true_label() -> None:
    index = json.loads((SAMPLES / "index.json").read_text())
    assert {entry["file"] for entry in index} == {p.name for p in SAMPLES.glob("*.*")} - {
        "index.json"
    }
    for entry in index:
        assert FASHION_MNIST_CLASSES[entry["index"]] == entry["label"]
        with Image.open(SAMPLES / entry["file"]) as image:
            assert image.format == ("PNG" if entry["form"] == "dataset" else "JPEG")
            assert (image.size == (28, 28)) == (entry["form"] == "dataset")


@pytest.mark.skipif(not DEFAULT_FASHION_MNIST_DIR.is_dir(), reason="dataset-fashion-mnist absent")
def test_the_script_writes_the_committed_samples(tmp_path: Path) -> None:
    script = REPO / "scripts" / "make_samples.py"
    page = tmp_path / "page"
    subprocess.run(
        [sys.executable, str(script), "--output", str(tmp_path), "--page-output", str(page)],
        check=True,
        capture_output=True,
        env={"PYTHONPATH": str(REPO)},
    )
    assert (tmp_path / "index.json").read_text() == (SAMPLES / "index.json").read_text()
    for path in SAMPLES.glob("*.png"):
        assert (tmp_path / path.name).read_bytes() == path.read_bytes(), path.name
    for path in PAGE_SAMPLES.iterdir():
        assert (page / path.name).read_bytes() == path.read_bytes(), path.name
    for path in SAMPLES.glob("*.jpg"):  # JPEG bytes depend on the libjpeg build
        with Image.open(path) as committed, Image.open(tmp_path / path.name) as written:
            assert committed.size == written.size, path.name
