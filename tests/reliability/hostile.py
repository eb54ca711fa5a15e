"""Hostile and unusual image files, built in memory from real ones that Pillow writes.

Forgers rewrite the stored width and height of a real file (keeping checksums valid where the
format has them), `spinning_jpeg` makes a small progressive JPEG that keeps a decoder busy for
minutes, and `samples` gives small real files in every allowed format and many modes.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable

import numpy as np
from PIL import Image

from tests.images import encode, gradient


def animated(fmt: str, frames: int = 3, size: tuple[int, int] = (20, 16)) -> bytes:
    """An animated GIF, PNG (APNG) or WebP whose first frame is white, the others black."""
    images = [Image.new("RGB", size, (255, 255, 255))]
    images += [Image.new("RGB", size, (0, 0, 0)) for _ in range(frames - 1)]
    buffer = io.BytesIO()
    images[0].save(buffer, fmt, save_all=True, append_images=images[1:], duration=40, loop=0)
    return buffer.getvalue()


def noise(size: tuple[int, int], mode: str = "RGB", seed: int = 0) -> Image.Image:
    """Random pixels (so compressed files have real entropy-coded data)."""
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    shape = (size[1], size[0], channels) if channels > 1 else (size[1], size[0])
    pixels = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    return Image.fromarray(pixels, mode)


def palette_with_transparency(fmt: str) -> bytes:
    """A palette image whose index 0 is fully transparent."""
    image = gradient((20, 16), "L").convert("P")
    return encode(image, fmt, transparency=0)


def with_orientation(fmt: str, orientation: int) -> bytes:
    """A 24x16 image tagged with EXIF orientation `orientation` (any value, even invalid)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    image = gradient((24, 16), "RGB")
    return encode(image, fmt, exif=exif)


def samples() -> dict[str, bytes]:
    """Small real files: every allowed format, several modes, animation and EXIF."""
    rgb, grey = gradient((20, 16), "RGB"), gradient((20, 16), "L")
    files = {
        "png-rgb": encode(rgb, "PNG"),
        "png-grey": encode(grey, "PNG"),
        "png-16bit": encode(Image.fromarray(np.full((16, 20), 40000, np.uint16)), "PNG"),
        "png-rgba": encode(rgb.convert("RGBA"), "PNG"),
        "png-palette-transparent": palette_with_transparency("PNG"),
        "png-1bit": encode(grey.convert("1"), "PNG"),
        "png-interlaced": encode(noise((20, 16)), "PNG", optimize=False, interlace=1),
        "apng": animated("PNG"),
        "jpeg-rgb": encode(noise((24, 16)), "JPEG", quality=90),
        "jpeg-progressive": encode(noise((24, 16)), "JPEG", progressive=True),
        "jpeg-grey": encode(grey, "JPEG"),
        "jpeg-cmyk": encode(rgb.convert("CMYK"), "JPEG"),
        "jpeg-exif-6": with_orientation("JPEG", 6),
        "gif": encode(rgb, "GIF"),
        "gif-animated": animated("GIF"),
        "gif-transparent": palette_with_transparency("GIF"),
        "webp-lossy": encode(noise((20, 16)), "WEBP", quality=80),
        "webp-lossless": encode(rgb.convert("RGBA"), "WEBP", lossless=True),
        "webp-animated": animated("WEBP"),
        "tiff-raw": encode(rgb, "TIFF"),
        "tiff-lzw": encode(noise((20, 16)), "TIFF", compression="tiff_lzw"),
        "tiff-deflate-16bit": encode(
            Image.fromarray(np.arange(320, dtype=np.uint16).reshape(16, 20) * 200), "TIFF"
        ),
        "tiff-cmyk": encode(rgb.convert("CMYK"), "TIFF", compression="packbits"),
        "tiff-float": encode(grey.convert("F"), "TIFF"),
        "bmp-rgb": encode(rgb, "BMP"),
        "bmp-palette": encode(grey.convert("P"), "BMP"),
        "ico": encode(rgb, "ICO", sizes=[(16, 16)]),
        "ppm": encode(rgb, "PPM"),
        "pgm": encode(grey, "PPM"),
        "tga": encode(rgb, "TGA"),
        "tga-rle": encode(rgb, "TGA", compression="tga_rle"),
    }
    return files


# --- forged dimensions -------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def forge_png(data: bytes, width: int, height: int) -> bytes:
    """A real PNG whose IHDR claims width x height (CRC recomputed, so only the size lies)."""
    ihdr = bytearray(data[16:29])
    ihdr[0:8] = struct.pack(">II", width, height)
    return data[:8] + _png_chunk(b"IHDR", bytes(ihdr)) + data[33:]


def forge_gif(data: bytes, width: int, height: int) -> bytes:
    """A real GIF whose logical screen and first image descriptor claim width x height."""
    out = bytearray(data)
    out[6:10] = struct.pack("<HH", width, height)
    flags = out[10]
    descriptor = 13 + (3 * (2 << (flags & 7)) if flags & 0x80 else 0)
    while out[descriptor] == 0x21:  # skip extension blocks
        position = descriptor + 2
        while out[position]:
            position += out[position] + 1
        descriptor = position + 1
    if out[descriptor] == 0x2C:
        out[descriptor + 5 : descriptor + 9] = struct.pack("<HH", width, height)
    return bytes(out)


def forge_bmp(data: bytes, width: int, height: int) -> bytes:
    """A real BMP whose info header claims width x height (negative height: top-down)."""
    return data[:18] + struct.pack("<ii", width, height) + data[26:]


def forge_jpeg(data: bytes, width: int, height: int) -> bytes:
    """A real JPEG whose frame header (SOF0/SOF2) claims width x height."""
    for marker in (b"\xff\xc0", b"\xff\xc2"):
        at = data.find(marker)
        if at >= 0:
            return data[: at + 5] + struct.pack(">HH", height, width) + data[at + 9 :]
    raise ValueError("no SOF0/SOF2 marker")


def forge_tiff(data: bytes, width: int, height: int) -> bytes:
    """A real little-endian TIFF whose ImageWidth/ImageLength tags claim width x height."""
    out = bytearray(data)
    assert out[:4] == b"II*\x00"
    (ifd,) = struct.unpack_from("<I", out, 4)
    (count,) = struct.unpack_from("<H", out, ifd)
    for index in range(count):
        entry = ifd + 2 + 12 * index
        (tag,) = struct.unpack_from("<H", out, entry)
        if tag in (256, 257):
            value = width if tag == 256 else height
            struct.pack_into("<HHII", out, entry, tag, 4, 1, value)  # as a LONG
    return bytes(out)


def forge_tga(data: bytes, width: int, height: int) -> bytes:
    """A real TGA whose header claims width x height."""
    return data[:12] + struct.pack("<HH", width, height) + data[16:]


def forge_ppm(data: bytes, width: int, height: int) -> bytes:
    """A binary PPM header claiming width x height over the real file's pixel bytes."""
    header_end = data.index(b"255\n") + 4
    return f"P6\n{width} {height}\n255\n".encode() + data[header_end:]


def forge_webp(data: bytes, width: int, height: int) -> bytes:
    """A real extended (VP8X) WebP whose canvas claims width x height (1..2^24 each)."""
    at = data.find(b"VP8X")
    if at < 0:
        raise ValueError("not an extended WebP")
    out = bytearray(data)
    out[at + 12 : at + 15] = (max(width, 1) - 1).to_bytes(3, "little")
    out[at + 15 : at + 18] = (max(height, 1) - 1).to_bytes(3, "little")
    return bytes(out)


# format -> (a real file of it, its forger, the largest width/height the header can hold)
FORGERS: dict[str, tuple[Callable[[], bytes], Callable[[bytes, int, int], bytes], int]] = {
    "PNG": (lambda: encode(gradient((20, 16)), "PNG"), forge_png, 2**31 - 1),
    "GIF": (lambda: encode(gradient((20, 16)), "GIF"), forge_gif, 2**16 - 1),
    "BMP": (lambda: encode(gradient((20, 16), "RGB"), "BMP"), forge_bmp, 2**31 - 1),
    "JPEG": (lambda: encode(gradient((24, 16), "RGB"), "JPEG"), forge_jpeg, 2**16 - 1),
    "TIFF": (lambda: encode(gradient((20, 16), "RGB"), "TIFF"), forge_tiff, 2**32 - 1),
    "TGA": (lambda: encode(gradient((20, 16), "RGB"), "TGA"), forge_tga, 2**16 - 1),
    "PPM": (lambda: encode(gradient((20, 16), "RGB"), "PPM"), forge_ppm, 2**31 - 1),
    "WEBP": (lambda: animated("WEBP"), forge_webp, 2**24),
}


# --- a decoder that spins ------------------------------------------------------------------


def _jpeg_segments(data: bytes) -> list[tuple[int, bytes]]:
    """(marker, bytes) of each JPEG segment; a scan's segment includes its entropy-coded data."""
    segments = [(0xD8, data[:2])]
    position = 2
    while position < len(data):
        marker = data[position + 1]
        if marker == 0xD9:
            segments.append((marker, data[position : position + 2]))
            break
        (length,) = struct.unpack_from(">H", data, position + 2)
        end = position + 2 + length
        if marker == 0xDA:
            while not (data[end] == 0xFF and data[end + 1] not in (0, *range(0xD0, 0xD8))):
                end += 1
        segments.append((marker, data[position:end]))
        position = end
    return segments


def spinning_jpeg(size: tuple[int, int] = (6000, 6000), repeats: int = 20000) -> bytes:
    """A valid-looking progressive JPEG that repeats one cheap AC scan `repeats` times.

    Each repeat is about 60 bytes, yet libjpeg walks every block of the image for it: 20,000
    repeats of a 36-megapixel frame (1.3 MB) keep a decoder busy for minutes.
    """
    buffer = io.BytesIO()
    Image.new("L", size, 128).save(buffer, "JPEG", progressive=True, quality=90)
    segments = _jpeg_segments(buffer.getvalue())
    scans = [segment for marker, segment in segments if marker == 0xDA]

    def spectral_start(scan: bytes) -> int:
        return scan[5 + 2 * scan[4]]

    def approximation_high(scan: bytes) -> int:
        return scan[7 + 2 * scan[4]] >> 4

    ac_first = next(s for s in scans if spectral_start(s) > 0 and approximation_high(s) == 0)
    head = b"".join(segment for marker, segment in segments if marker not in (0xDA, 0xD9))
    return head + b"".join(scans) + ac_first * repeats + b"\xff\xd9"
