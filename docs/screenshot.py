"""Remake the README's screenshots: the real app, started as a user starts it, captioning a
photo in Chromium (Playwright), on a laptop's screen (1280x900) and a phone's (390x844).
Run it after any change to the caption tab:

    python docs/screenshot.py [--photo PATH] [--out docs/images/caption-tab.png]

writes OUT and, beside it, OUT's name with ``-phone``. The default photo is COCO
000000163497 (giraffes, from coco_mini: the photo the previous release called a cheetah)
from ../shared/data, or the first example the app ships (webapp/examples) where that is
absent. Each shot is what the first screen shows after Caption, as a newcomer sees it.
``--live-out`` (default docs/images/live-mode.png) is live mode: Chromium's fake camera
playing the app's examples as a slideshow (``benchmarks/slideshow.py``), Live on, on a laptop
screen tall enough to show the camera under the controls; ``--no-live`` leaves it out.
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


def shoot_live(pw, chromium: str, url: str, out: Path, slide: int = 2, seconds: int = 4) -> str:
    """Live mode on the fake camera's slideshow: Live pressed, the shot taken while slide
    ``slide`` (the horses) is on and captioned."""
    import tempfile

    from benchmarks.common import write_slideshow

    with tempfile.TemporaryDirectory() as tmp:
        video = write_slideshow(Path(tmp) / "slides.y4m", seconds=seconds)
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS + [
            "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-video-capture={video}"])
        page = browser.new_page(viewport={"width": 1280, "height": 1180})
        page.goto(url, wait_until="networkidle")
        page.get_by_role("button", name="Read aloud").click()
        page.get_by_role("button", name="Live").click()
        page.wait_for_function(f"window.captionerLive.started && performance.now() - window.captionerLive.started > "
                               f"{(slide + 0.8) * seconds * 1000}", timeout=120_000, polling=100)
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out), full_page=False)
        text = page.locator("#caption-said").inner_text().strip()
        page.get_by_role("button", name="Live").click()
        browser.close()
    return text


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--photo", type=Path, default=None)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "caption-tab.png")
    p.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    p.add_argument("--live-out", type=Path, default=ROOT / "docs" / "images" / "live-mode.png")
    p.add_argument("--no-live", action="store_true", help="leave out the live-mode shot")
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
            if not args.no_live:
                said = shoot_live(pw, args.chromium, f"http://127.0.0.1:{port}", args.live_out)
                print(f"wrote {args.live_out}: live, the examples' slideshow -> {said!r}")
    finally:
        app.terminate()
        app.wait(timeout=30)


if __name__ == "__main__":
    main()
