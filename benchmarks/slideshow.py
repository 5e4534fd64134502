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

from benchmarks.common import write_slideshow


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
