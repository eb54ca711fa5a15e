"""A deterministic corpus of malformed and unusual image files, a few hundred of them.

Real files of every format Pillow writes (allowed or not), then truncated, with flipped,
inserted or deleted bytes, with forged headers, doubled, padded and zeroed. The same seed
always gives the same files, so a failure names a file that can be rebuilt.
"""

from __future__ import annotations

import io
import random

from PIL import Image

from tests.images import encode, gradient
from tests.reliability import hostile

SEED = 6


def _other_formats() -> dict[str, bytes]:
    """Files in formats the service never decodes (they must get a 422)."""
    rgb, grey = gradient((20, 16), "RGB"), gradient((20, 16), "L")
    candidates: dict[str, tuple[Image.Image, str, dict[str, object]]] = {
        "pcx": (rgb, "PCX", {}),
        "sgi": (rgb, "SGI", {}),
        "xbm": (grey.convert("1"), "XBM", {}),
        "msp": (grey.convert("1"), "MSP", {}),
        "pdf": (rgb, "PDF", {}),
        "eps": (rgb, "EPS", {}),
        "dds": (rgb.convert("RGBA"), "DDS", {}),
        "icns": (gradient((16, 16), "RGBA"), "ICNS", {}),
        "qoi": (rgb, "QOI", {}),
        "jpeg2000": (rgb, "JPEG2000", {}),
        "blp": (rgb.convert("P"), "BLP", {}),
        "palm": (grey.convert("1"), "PALM", {}),
        "spider": (grey.convert("F"), "SPIDER", {}),
    }
    files = {}
    for name, (image, fmt, params) in candidates.items():
        try:
            files[name] = encode(image, fmt, **params)
        except (OSError, KeyError, ValueError):
            continue  # this Pillow build cannot write it
    files["svg"] = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'
    files["html"] = b"<!doctype html><img src=x onerror=alert(1)>"
    files["text"] = "not an image, just text ü".encode()
    return files


def _mutations(name: str, data: bytes, rng: random.Random) -> dict[str, bytes]:
    size = len(data)
    out = {
        f"{name}/truncated-1": data[:1],
        f"{name}/truncated-8": data[:8],
        f"{name}/truncated-quarter": data[: size // 4],
        f"{name}/truncated-half": data[: size // 2],
        f"{name}/truncated-last-byte": data[:-1],
        f"{name}/doubled": data + data,
        f"{name}/trailing-garbage": data + bytes(rng.randrange(256) for _ in range(512)),
        f"{name}/zeroed-body": data[:16] + b"\x00" * max(0, size - 16),
        f"{name}/ff-body": data[:16] + b"\xff" * max(0, size - 16),
    }
    for flips in (1, 4, 32):
        mutated = bytearray(data)
        for _ in range(flips):
            mutated[rng.randrange(size)] = rng.randrange(256)
        out[f"{name}/flipped-{flips}"] = bytes(mutated)
    cut = rng.randrange(size)
    out[f"{name}/deleted-chunk"] = data[:cut] + data[cut + max(1, size // 8) :]
    out[f"{name}/inserted-chunk"] = (
        data[:cut] + bytes(rng.randrange(256) for _ in range(64)) + (data[cut:])
    )
    return out


def _forged() -> dict[str, bytes]:
    files = {}
    for fmt, (make, forge, top) in hostile.FORGERS.items():
        for width, height in ((0, 0), (0, 16), (top, top), (1, top), (top, 1), (8000, 8000)):
            files[f"forged-{fmt.lower()}/{width}x{height}"] = forge(make(), width, height)
    return files


def _unusual_but_valid() -> dict[str, bytes]:
    files = {
        f"valid/exif-{orientation}": hostile.with_orientation("JPEG", orientation)
        for orientation in (*range(1, 9), 0, 9, 65535)
    }
    files["valid/1x1000"] = encode(gradient((1, 1000), "RGB"), "PNG")
    files["valid/1000x1"] = encode(gradient((1000, 1), "RGB"), "JPEG")
    files["valid/1x1"] = encode(Image.new("L", (1, 1), 7), "GIF")
    return files


def build() -> dict[str, bytes]:
    """name -> file bytes; the same every call."""
    rng = random.Random(SEED)
    bases = {**hostile.samples(), **_other_formats()}
    corpus = dict(bases)
    for name, data in bases.items():
        corpus.update(_mutations(name, data, rng))
    corpus.update(_forged())
    corpus.update(_unusual_but_valid())
    corpus["empty"] = b""
    corpus["one-zero-byte"] = b"\x00"
    # 810,000 legal pixels from a file of a few hundred bytes
    buffer = io.BytesIO()
    Image.new("L", (900, 900), 0).save(buffer, "PNG")
    corpus["png-900x900-zeros"] = buffer.getvalue()
    return corpus
