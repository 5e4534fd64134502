"""Hostile and unusual files, made on the spot, for the upload tests and the load test."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

PHOTO = Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8))


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A real, valid 30000x30000 grey PNG of zeros: under a megabyte on disk, 900 MB decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    compressor, parts, row = zlib.compressobj(9), [], b"\0" * (width + 1)
    for _ in range(height // 100):
        parts.append(compressor.compress(row * 100))
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")
