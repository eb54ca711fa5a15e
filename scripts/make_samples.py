"""Writes samples/: Fashion-MNIST test images as dataset-form PNGs and as product-photo JPEGs.

    .venv/bin/python scripts/make_samples.py [--data-dir /usr/share/datasets/fashion-mnist]

The first test image of each class is written twice: as the dataset has it (28x28 PNG) and
rendered as a product photo (a dark garment on a light, tinted background, enlarged, off-centre,
JPEG) by models/photos.py with a fixed seed. samples/index.json lists every file with its true
label, so the README's examples can be checked against it. The page at / offers the same
dataset-form PNGs from the package's own folder (service/static/samples/, package data, with
samples.json), so they are written there too.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from models.data import DEFAULT_FASHION_MNIST_DIR, load_fashion_mnist
from models.photos import render_photo_jpeg

SEED = 28
# Larger than the training renderings: a few hundred pixels, like a shop's picture.
PHOTO_SCALE = (8.0, 12.0)


def main(argv: list[str] | None = None) -> int:
    """Writes the samples and their index; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(DEFAULT_FASHION_MNIST_DIR))
    repo = Path(__file__).resolve().parents[1]
    parser.add_argument("--output", default=str(repo / "samples"))
    parser.add_argument("--page-output", default=str(repo / "service" / "static" / "samples"))
    args = parser.parse_args(argv)
    dataset = load_fashion_mnist(args.data_dir)
    assert dataset.test is not None
    output, page = Path(args.output), Path(args.page_output)
    output.mkdir(parents=True, exist_ok=True)
    page.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    index, page_index = [], []
    for label, name in enumerate(dataset.classes):
        position = int((dataset.test.labels == label).nonzero()[0])
        pixels = dataset.test.pixels[position, 0].numpy()
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        stem = f"{label}-{slug}"
        Image.fromarray(pixels, "L").save(output / f"{stem}.png", optimize=True)
        Image.fromarray(pixels, "L").save(page / f"{slug}.png", optimize=True)
        page_index.append({"file": f"{slug}.png", "label": name, "test_index": position})
        (output / f"{stem}-photo.jpg").write_bytes(render_photo_jpeg(pixels, rng, PHOTO_SCALE))
        for file, form in ((f"{stem}.png", "dataset"), (f"{stem}-photo.jpg", "photo")):
            index.append(
                {"file": file, "label": name, "index": label, "form": form, "test_image": position}
            )
    (output / "index.json").write_text(json.dumps(index, indent=2) + "\n")
    (page / "samples.json").write_text(json.dumps(page_index, indent=2) + "\n")
    print(f"wrote {len(index)} samples and index.json to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
