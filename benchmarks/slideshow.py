"""A slideshow as a Y4M video, for Chromium's fake camera
(``--use-fake-device-for-media-stream --use-file-for-fake-video-capture=FILE.y4m``): each
photo shown whole (letterboxed, never cropped) for ``--seconds`` seconds.

    python -m benchmarks.slideshow OUT.y4m [PHOTO ...] [--seconds 4] [--fps 5] [--size 480x360]

Without photos, the six examples the app ships (``webapp/examples``). Chromium loops the
file, so slide k is on screen from ``k * seconds`` (modulo the whole show) after the camera
opens. The browser tests and the live-mode screenshot use it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "webapp" / "examples"


def letterboxed(path: Path, width: int, height: int) -> Image.Image:
    """The photo whole, as large as fits ``width`` x ``height``, on black."""
    photo = Image.open(path).convert("RGB")
    photo.thumbnail((width, height), Image.Resampling.LANCZOS)
    frame = Image.new("RGB", (width, height))
    frame.paste(photo, ((width - photo.width) // 2, (height - photo.height) // 2))
    return frame


def yuv420(frame: Image.Image) -> bytes:
    """One frame as planar Y, U, V (BT.601, full range as Chromium's reader takes it), the
    chroma planes at half resolution."""
    y, u, v = (np.asarray(c, dtype=np.float32) for c in frame.convert("YCbCr").split())
    half = lambda c: c.reshape(c.shape[0] // 2, 2, c.shape[1] // 2, 2).mean(axis=(1, 3))  # noqa: E731
    return b"".join(np.clip(np.rint(p), 0, 255).astype(np.uint8).tobytes() for p in (y, half(u), half(v)))


def write_slideshow(out: Path, photos: list[Path] | None = None, seconds: float = 4.0, fps: int = 5,
                    size: tuple[int, int] = (480, 360)) -> Path:
    """Write ``photos`` (default: the app's examples) as a Y4M slideshow to ``out``."""
    photos = photos or sorted(EXAMPLES.glob("*.jpg"))
    width, height = (s // 2 * 2 for s in size)
    repeats = max(1, round(seconds * fps))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for path in photos:
            data = yuv420(letterboxed(path, width, height))
            f.write(b"FRAME\n" + data + b"".join(b"FRAME\n" + data for _ in range(repeats - 1)))
    tmp.replace(out)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("photos", type=Path, nargs="*")
    p.add_argument("--seconds", type=float, default=4.0, help="how long each photo is shown")
    p.add_argument("--fps", type=int, default=5)
    p.add_argument("--size", default="480x360", help="WIDTHxHEIGHT of the video")
    args = p.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    missing = [str(path) for path in args.photos if not path.is_file()]
    if missing:
        raise SystemExit(f"error: no such photo: {', '.join(missing)}")
    out = write_slideshow(args.out, args.photos or None, args.seconds, args.fps, (width, height))
    print(f"wrote {out} ({len(args.photos) or 6} slides of {args.seconds:g} s)")


if __name__ == "__main__":
    main()
