"""Remake the README's screenshot: the real app, started as a user starts it, captioning a
photo in Chromium (Playwright). Run it after any change to the caption tab:

    python docs/screenshot.py [--photo PATH] [--out docs/images/caption-tab.png]

The default photo is COCO 000000163497 (giraffes, from coco_mini: the photo the previous
release called a cheetah) from ../shared/data, or scikit-image's coffee where that is absent.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import SHARED, free_port, start_app  # noqa: E402

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def default_photo(folder: Path) -> Path:
    coco = SHARED / "coco_mini" / "train2017" / "000000163497.jpg"
    if coco.is_file():
        return coco
    import skimage.data
    from PIL import Image

    path = folder / "coffee.jpg"
    Image.fromarray(skimage.data.coffee()).save(path)
    return path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--photo", type=Path, default=None)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "caption-tab.png")
    p.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = p.parse_args(argv)
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        photo = args.photo or default_photo(Path(tmp))
        port = free_port()
        app = start_app(port, batching=True)
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=args.chromium, headless=True, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(f"http://127.0.0.1:{port}", wait_until="networkidle")
                page.locator("#caption-files input[type=file]").set_input_files(str(photo))
                page.wait_for_timeout(500)
                page.locator("#caption-button").click()
                page.locator("#caption-output .caption").wait_for(timeout=120_000)
                page.locator("#caption-gallery img").first.wait_for(timeout=30_000)
                page.wait_for_timeout(1000)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.out), full_page=False)
                caption = page.locator("#caption-output .caption").inner_text().strip()
                browser.close()
        finally:
            app.terminate()
            app.wait(timeout=30)
    print(f"wrote {args.out}: {photo.name} -> {caption!r}")


if __name__ == "__main__":
    main()
