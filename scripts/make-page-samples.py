"""Writes service/static/samples/: the first Fashion-MNIST test image of each class, as PNGs.

Run once with the project's venv (`.venv/bin/python scripts/make-page-samples.py`) on a machine
with Debian's dataset-fashion-mnist; the result is committed, so the page never downloads data.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from PIL import Image

from models.data import load_fashion_mnist

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    """Writes one PNG per class and samples.json listing {file, label, index} in class order."""
    dataset = load_fashion_mnist()
    test = dataset.test
    assert test is not None
    out = REPO / "service" / "static" / "samples"
    out.mkdir(parents=True, exist_ok=True)
    manifest = []
    for label_index, label in enumerate(dataset.classes):
        image_index = int((test.labels == label_index).nonzero()[0])
        name = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-") + ".png"
        Image.fromarray(test.pixels[image_index, 0].numpy(), "L").save(out / name, optimize=True)
        manifest.append({"file": name, "label": label, "test_index": image_index})
    (out / "samples.json").write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    main()
