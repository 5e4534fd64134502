"""Turning an untrusted upload into a safe RGB image, or one clear error.

Every failure is an ``ImageError`` whose message is one sentence meant for the person who
uploaded the file. Memory stays bounded: the file size is checked before it is read, and
the pixel count is read from the header and checked before anything is decoded.

What is handled: EXIF orientation (applied), transparency (composited on white),
animations (first frame), palette, grey, 16-bit and CMYK images (converted to 8-bit RGB),
and JPEGs much larger than the model needs (decoded at a reduced scale when asked).
"""

from __future__ import annotations

import functools
import io
import os
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_BYTES = int(os.environ.get("CAPTIONER_MAX_UPLOAD_BYTES", 20 * 1024 * 1024))
MAX_PIXELS = int(os.environ.get("CAPTIONER_MAX_PIXELS", 40_000_000))
FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")

# Pillow's own bomb guard warns at MAX_IMAGE_PIXELS and raises at twice that; we check
# the header ourselves first, and make Pillow's guard an error at the same limit.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


class ImageError(ValueError):
    """An upload that cannot be turned into an image; the message says why, in one sentence."""


def load_image(source: str | os.PathLike | bytes | BinaryIO | Image.Image, *,
               max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS,
               draft_size: int | None = None) -> Image.Image:
    """Open ``source`` (a path, bytes, a binary file or a PIL image) as a loaded RGB image.

    ``draft_size``: when set, a large JPEG is decoded directly at a reduced scale that is
    still at least twice ``draft_size`` on each side, which is much faster.
    """
    if isinstance(source, Image.Image):
        image = source
    else:
        data = _read_limited(source, max_bytes)
        image = _open(data)
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageError("The image has no pixels.")
    if width * height > max_pixels:
        raise ImageError(f"The image is {width}x{height} pixels; the limit is {max_pixels:,} pixels.")
    try:
        if getattr(image, "is_animated", False):
            image.seek(0)
        if draft_size and image.format in ("JPEG", "MPO"):
            image.draft("RGB", (2 * draft_size, 2 * draft_size))
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
            image = ImageOps.exif_transpose(image)
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning,
            Image.DecompressionBombError, EOFError) as err:
        raise ImageError(f"The image file is damaged or truncated and cannot be decoded ({_short(err)}).") from err
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB; transparent pixels are composited on white."""
    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        image = _high_depth_to_l(image)
        mode = "L"
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode in ("LA", "La", "PA", "RGBa"):
        image = image.convert("RGBA")
    elif mode == "L" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    if image.mode != "RGB":
        image = image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV, RGBX, RGBA
    return image


def _read_limited(source: str | os.PathLike | bytes | BinaryIO, max_bytes: int) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise ImageError(f"No such file: {path}.")
        if not path.is_file():
            raise ImageError(f"{path} is not a file.")
        size = path.stat().st_size
        if size > max_bytes:
            raise ImageError(f"The file is {_mb(size)}; the limit is {_mb(max_bytes)}.")
        try:
            with open(path, "rb") as f:
                data = f.read(max_bytes + 1)
        except OSError as err:
            raise ImageError(f"Cannot read {path}: {err.strerror or err}.") from err
    else:
        data = source.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ImageError(f"The file is larger than the limit of {_mb(max_bytes)}.")
    if not data:
        raise ImageError("The file is empty.")
    return data


def _open(data: bytes) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data), formats=FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError(f"The image has too many pixels ({_short(err)}).") from err
    except UnidentifiedImageError as err:
        head = data[:512].lstrip().lower()
        if b"<svg" in head or (head.startswith(b"<?xml") and b"svg" in data[:4096].lower()):
            raise ImageError("SVG drawings are not supported; please upload a photo "
                             "(JPEG, PNG, WebP, GIF, BMP or TIFF).") from err
        if head.startswith((b"<!doctype", b"<html", b"<")):
            raise ImageError("The file is a text or HTML document, not an image.") from err
        raise ImageError("The file is not an image in a supported format (JPEG, PNG, WebP, GIF, BMP or TIFF).") from err
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageError(f"The image file is damaged and cannot be read ({_short(err)}).") from err


def _high_depth_to_l(image: Image.Image) -> Image.Image:
    """16-bit or 32-bit grey -> 8-bit grey, scaled to the image's actual value range."""
    array = np.asarray(image, dtype=np.float64)
    array = np.nan_to_num(array, nan=0.0, posinf=0.0, neginf=0.0)
    top = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
    if image.mode in ("I", "F") and array.max() <= 255 and array.min() >= 0:
        top = 255.0
    return Image.fromarray(np.clip(array / top * 255.0, 0, 255).round().astype(np.uint8), mode="L")


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MB"


def _short(err: BaseException) -> str:
    text = str(err).strip().rstrip(".") or type(err).__name__
    return text if len(text) <= 120 else text[:117] + "..."


def load_data_url(url: object, max_bytes: int = MAX_BYTES, **kwargs) -> Image.Image:
    """A photo a page sends as a data URL (``data:image/...;base64,...``: a webcam shot, a
    pasted photo, a drawing) -> a safe RGB image through ``load_image``, or ``ImageError``."""
    import base64
    import binascii

    if not isinstance(url, str) or not url.startswith("data:image/") or "," not in url:
        raise ImageError("it is not an image sent by the page")
    if len(url) > max_bytes * 4 // 3 + 100:
        raise ImageError(f"it is larger than {max_bytes // 1_000_000} MB")
    try:
        data = base64.b64decode(url.split(",", 1)[1], validate=True)
    except (binascii.Error, ValueError) as err:
        raise ImageError("its data is not valid base64") from err
    return load_image(data, **kwargs)


def image_key(path: str | os.PathLike) -> str:
    """A photo's identity: a hash of its bytes, the key of the feature and detection caches.
    It changes whenever the photo does, and survives a copy of the dataset to a new place or
    with new modification times (keyed by path and time, every copy meant extracting every
    photo's features again). Each file is read once per process while its path, size and
    modification time stay the same."""
    path = Path(path).resolve()
    stat = path.stat()
    return _content_key(str(path), stat.st_size, stat.st_mtime_ns)


@functools.cache
def _content_key(path: str, size: int, mtime_ns: int) -> str:
    import hashlib

    with open(path, "rb") as f:
        return f"sha256:{hashlib.file_digest(f, 'sha256').hexdigest()[:32]}|{size}"
