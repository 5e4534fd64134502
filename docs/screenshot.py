"""Remake the README's screenshots: the real app, started as a user starts it, captioning a
photo in Chromium (Playwright), on a laptop's screen (1280x900) and a phone's (390x844).
Run it after any change to the caption tab:

    python docs/screenshot.py [--photo PATH] [--out docs/images/caption-tab.png]

writes OUT and, beside it, OUT's name with ``-phone``. The default photo is COCO
000000163497 (giraffes, from coco_mini: the photo the previous release called a cheetah)
from ../shared/data, or the first example the app ships (webapp/examples) where that is
absent. Each shot is what the first screen shows after Caption, as a newcomer sees it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import SHARED, free_port, start_app  # noqa: E402

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENS = {"": {"viewport": {"width": 1280, "height": 900}},
           "-phone": {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}}


def default_photo() -> Path:
    coco = SHARED / "coco_mini" / "train2017" / "000000163497.jpg"
    return coco if coco.is_file() else sorted((ROOT / "webapp" / "examples").glob("*.jpg"))[0]


def shoot(browser, url: str, photo: Path, out: Path, screen: dict) -> str:
    """Open the app on ``screen``, caption ``photo``, save the first screen to ``out``."""
    context = browser.new_context(**screen)
    page = context.new_page()
    page.goto(url, wait_until="networkidle")
    page.locator("#caption-files input[type=file]").set_input_files(str(photo))
    page.wait_for_timeout(500)
    page.locator("#caption-button").click()
    caption = page.locator("#caption-output .caption")
    caption.wait_for(timeout=120_000)
    page.locator("#caption-output img").first.wait_for(timeout=30_000)
    page.wait_for_timeout(1000)
    box, height = caption.bounding_box(), screen["viewport"]["height"]
    if not 0 <= box["y"] <= box["y"] + box["height"] <= height:
        raise SystemExit(f"the caption is outside the first screen ({box}) at {screen['viewport']}")
    out.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(out), full_page=False)
    text = caption.inner_text().strip()
    context.close()
    return text


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--photo", type=Path, default=None)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "caption-tab.png")
    p.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = p.parse_args(argv)
    from playwright.sync_api import sync_playwright

    photo = args.photo or default_photo()
    port = free_port()
    app = start_app(port, batching=True)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, headless=True, args=CHROMIUM_ARGS)
            for suffix, screen in SCREENS.items():
                out = args.out.with_name(args.out.stem + suffix + args.out.suffix)
                caption = shoot(browser, f"http://127.0.0.1:{port}", photo, out, screen)
                print(f"wrote {out}: {photo.name} -> {caption!r}")
            browser.close()
    finally:
        app.terminate()
        app.wait(timeout=30)


if __name__ == "__main__":
    main()
